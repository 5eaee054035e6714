"""Read a split pipeline directory back: what the runners execute.

The runners never re-analyse the notebook: they run what is on disk, edits
included (a user may change RETRIES, PORT or the DAG by hand), so the
directory is the one source of truth for `run`, `deploy` and `render`.
"""

from __future__ import annotations

import ast
import configparser
import json
from dataclasses import dataclass, field
from pathlib import Path

from nb2prod import dag
from nb2prod.errors import Problem, UserError

Config = dict[str, dict[str, str]]


def read_ini(path: Path) -> Config:
    """An .ini file as nested dicts, keys case-preserved; parse errors name the file."""
    parser = configparser.ConfigParser(interpolation=None, inline_comment_prefixes=(";", "#"))
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    try:
        with open(path, encoding="utf-8") as fh:
            parser.read_file(fh)
    except OSError as exc:
        raise UserError(Problem(f"cannot read: {exc.strerror}", file=str(path))) from None
    except UnicodeDecodeError as exc:
        line = exc.object[:exc.start].count(b"\n") + 1
        raise UserError(Problem(f"not UTF-8 text: byte 0x{exc.object[exc.start]:02x} on line "
                                f"{line}", file=str(path))) from None
    except configparser.Error as exc:
        first = str(exc).splitlines()[0]
        raise UserError(Problem(f"cannot parse: {first}", file=str(path))) from None
    return {s: dict(parser[s]) for s in parser.sections()}


def parse_secrets(config: Config) -> dict[str, tuple[str, str]]:
    """`[secrets] ENV = name[:key]` as ENV -> (secret name, key); the key defaults to ENV."""
    found = {}
    for env, ref in config.get("secrets", {}).items():
        name, _, key = ref.strip().partition(":")
        found[env] = (name, key or env)
    return found


@dataclass(frozen=True)
class StageSpec:
    """One stage directory and its config.ini."""

    name: str
    directory: Path
    type: str
    executable: str
    config: Config

    def value(self, section: str, key: str, default: str = "") -> str:
        return self.config.get(section, {}).get(key, default).strip()

    def number(self, section: str, key: str, default: float) -> float:
        raw = self.value(section, key)
        if not raw:
            return default
        try:
            return float(raw)
        except ValueError:
            raise UserError(Problem(f"[{section}] {key} = {raw!r} is not a number",
                                    file=str(self.directory / "config.ini"))) from None

    def integer(self, section: str, key: str, default: int) -> int:
        return int(self.number(section, key, default))

    def flag(self, section: str, key: str) -> bool:
        return self.value(section, key).lower() in ("1", "true", "yes", "on")

    def names(self, key: str) -> list[str]:
        return [n.strip() for n in self.value("default", key).split(",") if n.strip()]

    @property
    def secrets(self) -> dict[str, tuple[str, str]]:
        return parse_secrets(self.config)


@dataclass(frozen=True)
class Pipeline:
    """A pipeline directory: stages, DAG and the project settings of nb2prod.ini."""

    root: Path
    name: str
    config: Config
    stages: dict[str, StageSpec]
    edges: list[dag.Edge]
    order: list[str] = field(default_factory=list)

    def value(self, section: str, key: str, default: str = "") -> str:
        return self.config.get(section, {}).get(key, default).strip()

    @property
    def batch(self) -> list[str]:
        return [s for s in self.order if self.stages[s].type == "batch"]

    @property
    def services(self) -> list[str]:
        return [s for s in self.order if self.stages[s].type == "service"]

    def store_uri(self, override: str | None = None) -> str:
        """The artifact store; a relative file:// path is relative to the pipeline dir."""
        uri = override or self.value("artifacts", "STORE") or "file://.nb2prod/artifacts"
        if override:
            from nb2prod.settings import checked_option, store

            checked_option(store, override, "--store")
        if uri.startswith("file://") and not uri.startswith("file:///"):
            return "file://" + str((self.root / uri[len("file://"):]).resolve())
        if "://" not in uri:
            return "file://" + str(Path(uri).resolve())
        return uri

    def predecessors(self, stage: str) -> list[str]:
        return [a for a, b in self.edges if b == stage]

    @property
    def notebook(self) -> Path | None:
        rel = self.value("project", "NOTEBOOK")
        return (self.root / rel).resolve() if rel else None

    @property
    def parameters(self) -> dict[str, str]:
        return dict(self.config.get("parameters", {}))

    @property
    def secrets(self) -> dict[str, tuple[str, str]]:
        return parse_secrets(self.config)


def _not_a_pipeline(given: Path) -> Problem:
    """Why `given` cannot be opened as a pipeline, and what to type instead."""
    if not given.exists():
        return Problem("no such file or directory", file=str(given))
    if given.is_file():
        from nb2prod.notebook import TEXT_SUFFIXES

        if given.suffix in (".ipynb", *TEXT_SUFFIXES):
            pipeline = given.parent / f"{given.stem}-pipeline"
            return Problem(f"a notebook, not a pipeline directory; give its pipeline directory "
                           f"({pipeline}, written by `nb2prod split {given}`)", file=str(given))
        return Problem("not a pipeline directory", file=str(given))
    return Problem("not a pipeline directory (no nb2prod.ini); run `nb2prod split NOTEBOOK` "
                   "first", file=str(given))


def load_pipeline(root: Path, validate: bool = True) -> Pipeline:
    """Read `root/nb2prod.ini` and every stage's config.ini; UserError on anything wrong.

    `validate` checks every value against `nb2prod.settings` (all commands that
    run or render; `delete`/`status` skip it so a broken pipeline can still be removed).
    """
    given = Path(root)
    root = given.resolve()
    ini = root / "nb2prod.ini"
    if not ini.is_file():
        raise UserError(_not_a_pipeline(given))
    from nb2prod.writer import pending_split

    if pending_split(root):
        raise UserError(Problem("a split of this pipeline was interrupted half-way; run "
                                "`nb2prod split NOTEBOOK -o DIR --force` to finish it",
                                file=str(root)))
    config = read_ini(ini)
    stages: dict[str, StageSpec] = {}
    for cfg in sorted(root.glob("stage-*/config.ini"), key=_stage_sort_key):
        stage_config = read_ini(cfg)
        default = stage_config.get("default", {})
        name = default.get("NAME") or cfg.parent.name.split("-", 2)[-1]
        kind = default.get("STAGE_TYPE", "batch").strip()
        if kind not in ("batch", "service"):
            raise UserError(Problem(f"STAGE_TYPE = {kind!r}: expected batch or service",
                                    file=str(cfg)))
        executable = (default.get("EXECUTABLE") or default.get("EXECUTABLE_SCRIPT")
                      or f"{name}.ipynb").strip()
        if not (cfg.parent / executable).is_file():
            raise UserError(Problem(f"EXECUTABLE = {executable}: no such file", file=str(cfg)))
        stages[name] = StageSpec(name, cfg.parent, kind, executable, stage_config)
    if not stages:
        raise UserError(Problem("no stage directories (stage-N-NAME/config.ini)", file=str(root)))
    try:
        listed, edges = dag.parse_dag(config.get("workflow", {}).get("DAG", ""))
    except ValueError as exc:
        raise UserError(Problem(f"[workflow] DAG: {exc}", file=str(ini))) from None
    unknown = [s for s in listed if s not in stages]
    if unknown:
        raise UserError(Problem(f"[workflow] DAG names unknown stage '{unknown[0]}'",
                                file=str(ini)))
    try:
        order = dag.topological_order(list(stages), edges)
    except dag.CycleError as exc:
        raise UserError(Problem(f"[workflow] DAG: {exc}", file=str(ini))) from None
    name = config.get("project", {}).get("NAME", root.name)
    pipeline = Pipeline(root, name, config, stages, edges, order)
    if validate:
        from nb2prod.settings import validate as check_values

        check_values(pipeline)
    return pipeline


def _stage_sort_key(path: Path) -> tuple[int, str]:
    parts = path.parent.name.split("-", 2)
    return (int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0, path.parent.name)


# -- parameters ------------------------------------------------------------------------
def notebook_parameters(stage: StageSpec) -> dict[str, object]:
    """Default values of the stage notebook's `parameters` cell (literals only)."""
    try:
        nb = json.loads((stage.directory / stage.executable).read_text())
    except (OSError, ValueError):
        return {}
    for cell in nb.get("cells", []):
        if "parameters" in cell.get("metadata", {}).get("tags", []):
            source = "".join(cell.get("source", ""))
            return _literal_assignments(source)
    return {}


def _literal_assignments(source: str) -> dict[str, object]:
    values: dict[str, object] = {}
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return values
    for node in tree.body:
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            try:
                value = ast.literal_eval(node.value) if node.value is not None else None
            except ValueError:
                value = None
            for target in targets:
                if isinstance(target, ast.Name):
                    values[target.id] = value
    return values


def coerce_parameter(name: str, raw: str, default: object, where: str) -> object:
    """`--param k=v` text typed like the notebook's default value."""
    try:
        if isinstance(default, bool):
            lowered = raw.strip().lower()
            if lowered not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            return lowered in ("true", "1", "yes")
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
        if isinstance(default, str):
            return raw
        if isinstance(default, (list, dict, tuple)) or default is None:
            try:
                return ast.literal_eval(raw)
            except (ValueError, SyntaxError):
                if default is None:
                    return raw
                raise
    except (ValueError, SyntaxError):
        kind = type(default).__name__
        raise UserError(Problem(f"parameter {name}={raw!r}: expected {kind} like the "
                                f"notebook default {default!r}", file=where)) from None
    return raw


def run_parameters(pipeline: Pipeline, cli_params: list[str]) -> dict[str, object]:
    """Overrides to inject: nb2prod.ini [parameters], then `--param k=v`, typed."""
    defaults: dict[str, object] = {}
    for stage in pipeline.stages.values():
        defaults.update(notebook_parameters(stage))
    raw: list[tuple[str, str, str]] = [
        (k, v, str(pipeline.root / "nb2prod.ini")) for k, v in pipeline.parameters.items()
    ]
    for item in cli_params:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(Problem(f"--param {item!r}: expected NAME=VALUE"))
        raw.append((key.strip(), value, "--param"))
    params: dict[str, object] = {}
    for key, value, where in raw:
        if key not in defaults:
            known = ", ".join(sorted(defaults)) or "none"
            raise UserError(Problem(f"parameter '{key}' is not in the notebook's parameters "
                                    f"cell (known: {known})", file=where))
        params[key] = coerce_parameter(key, value, defaults[key], where)
    return params


def source_changed_bytes(root: Path, notebook: str, recorded_sha256: str) -> Path | None:
    """The notebook a pipeline was split from, if its bytes differ from the recorded hash.

    The cheap half of `split.changed_source`, here so that `nb2prod run DIR` on a fresh
    pipeline (the usual case) hashes the notebook without importing split, the analysis,
    the renderer and Jinja.  A notebook that is not there (a pipeline committed on its
    own) or no record of it: None.
    """
    import hashlib

    path = Path(root) / notebook
    if not notebook or not recorded_sha256 or not path.is_file():
        return None
    if hashlib.sha256(path.read_bytes()).hexdigest() == recorded_sha256:
        return None
    return path
