"""README.md answers a newcomer's next question: it must agree with the CLI and the package.

The Commands block lists every command with every option it has (click is the source of
truth); the extras the README tells people to install exist in pyproject.toml.
"""

from __future__ import annotations

import re
from pathlib import Path

import click
import pytest

from nb2prod.cli import cli

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text(encoding="utf-8")


def commands_block() -> dict[str, str]:
    """`nb2prod NAME ...` lines of README's Commands block (continuations joined), by NAME."""
    block = README.split("## Commands", 1)[1].split("```", 2)[1]
    found: dict[str, str] = {}
    name = None
    for line in block.splitlines():
        if line.startswith("nb2prod "):
            name = line.split()[1]
            found[name] = line
        elif name and line.startswith(" "):
            found[name] += " " + line.strip()
    return found


def test_the_commands_block_lists_every_command() -> None:
    assert sorted(commands_block()) == sorted(cli.commands)


@pytest.mark.parametrize("name", sorted(cli.commands))
def test_the_commands_block_lists_every_option(name: str) -> None:
    line = commands_block()[name]
    for param in cli.commands[name].params:
        if not isinstance(param, click.Option) or param.name == "help" or param.hidden:
            continue  # hidden options are internal (e.g. deploy --events for JupyterLab)
        spellings = [o for o in param.opts if o.startswith("--")] + list(param.opts)
        assert any(re.search(rf"(?<![\w-]){re.escape(o)}(?![\w-])", line) for o in spellings), \
            f"README's Commands block: `nb2prod {name}` lacks {param.opts[0]}: {line}"


def test_namespace_is_shown_as_optional_since_nb2prod_ini_can_set_it() -> None:
    for line in commands_block().values():
        if "-n NS" in line or "--namespace" in line:
            assert "[-n NS]" in line, line
    assert "unless `[kubernetes] NAMESPACE` in nb2prod.ini sets it" in " ".join(README.split())


def test_the_extras_the_readme_installs_exist() -> None:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        from pip._vendor import tomli as tomllib
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    named = set(re.findall(r"\.\[([a-z,]+)\]", README))
    assert named, "README installs no extra?"
    for group in named:
        for extra in group.split(","):
            assert extra in extras, f"README installs .[{extra}], pyproject.toml has no such extra"
    assert any(req.startswith("jupyterlab") for req in extras["jupyter"])


def test_prerequisites_gate_and_troubleshooting_are_there() -> None:
    assert "Python 3.10 or newer" in README and "git clone" in README and "venv" in README
    assert "The promotion gate is off by default" in README
    trouble = README.split("## Troubleshooting", 1)[1].split("\n## ", 1)[0]
    for topic in ("log.txt", "--port", "A stage fails", "request_id"):
        assert topic in trouble, topic
