"""The Jinja environment generated files come from.

Templates ship inside the wheel (`nb2prod/stage_templates`; in a source
checkout, the top-level `stage_templates/`).  `--templates DIR` puts a user's
directory first, so overriding one template does not mean copying them all.
"""

from __future__ import annotations

from pathlib import Path

import jinja2

PACKAGE_DIR = Path(__file__).resolve().parent


def default_templates_dir() -> Path:
    """`nb2prod/stage_templates` in a wheel, `stage_templates/` in a checkout."""
    for candidate in (PACKAGE_DIR / "stage_templates", PACKAGE_DIR.parent / "stage_templates"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError("nb2prod's stage_templates directory is missing from the install")


def environment(user_dir: Path | None = None) -> jinja2.Environment:
    """A strict environment: an undefined variable in a template is a bug, not ''."""
    loaders: list[jinja2.BaseLoader] = []
    if user_dir is not None:
        loaders.append(jinja2.FileSystemLoader(str(user_dir)))
    loaders.append(jinja2.FileSystemLoader(str(default_templates_dir())))
    return jinja2.Environment(
        loader=jinja2.ChoiceLoader(loaders),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )


def check_templates(user_dir: Path | None) -> None:
    """Refuse a missing `--templates` dir or one whose templates do not parse, up front."""
    from nb2prod.errors import Problem, UserError

    if user_dir is None:
        return
    if not Path(user_dir).is_dir():
        raise UserError(Problem("templates directory does not exist", file=str(user_dir)))
    env = environment(user_dir)
    for path in sorted(Path(user_dir).rglob("*.j2")):
        name = path.relative_to(user_dir).as_posix()
        try:
            env.get_template(name)
        except jinja2.TemplateSyntaxError as exc:
            raise UserError(Problem(f"template error: {exc.message}, line {exc.lineno}",
                                    file=str(path))) from None
        except UnicodeDecodeError:
            raise UserError(Problem("template is not UTF-8 text", file=str(path))) from None


def render_template(env: jinja2.Environment, name: str, **values: object) -> str:
    """Render one template; a template's own mistake is a user error naming it."""
    from nb2prod.errors import Problem, UserError

    try:
        template = env.get_template(name)
    except jinja2.TemplateSyntaxError as exc:
        raise UserError(Problem(f"template error: {exc.message}, line {exc.lineno}",
                                file=exc.filename or name)) from None
    try:
        return template.render(**values)
    except jinja2.TemplateError as exc:  # e.g. a variable the template expects is not there
        raise UserError(Problem(f"template error: {exc}",
                                file=template.filename or name)) from None
