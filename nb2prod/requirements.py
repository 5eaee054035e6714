"""Imports → pinned distributions, from installed metadata (no hand-written table).

`importlib.metadata.packages_distributions()` knows that `sklearn` comes from
scikit-learn and `yaml` from PyYAML; pinning to the installed version makes the
stage reproduce the authoring environment.
"""

from __future__ import annotations

import functools
import sys
from dataclasses import dataclass
from importlib import metadata

from nb2prod.errors import Problem

#: What the generated code itself needs, by stage type.
RUNTIME_REQUIREMENTS = {
    "batch": ("papermill", "ipykernel", "nbconvert", "joblib"),
    "service": ("flask", "gunicorn", "joblib"),
}


@dataclass(frozen=True)
class Resolution:
    """Pinned requirement lines, and problems for imports nothing provides."""

    lines: tuple[str, ...]
    problems: tuple[Problem, ...]


@functools.lru_cache(maxsize=1)
def _distributions() -> dict[str, list[str]]:
    return metadata.packages_distributions()


@functools.cache
def pin(distribution: str) -> str:
    """`name==version` for an installed distribution (its canonical spelling)."""
    dist = metadata.distribution(distribution)
    return f"{dist.metadata['Name']}=={dist.version}"


def is_stdlib(module: str) -> bool:
    return module in sys.stdlib_module_names or module in sys.builtin_module_names


def resolve(
    imports: list[tuple[str, int]],
    stage_type: str,
    overrides: dict[str, str],
    local_modules: set[str] = frozenset(),  # type: ignore[assignment]
    file: str | None = None,
) -> Resolution:
    """Map `(module, cell)` imports to sorted, pinned requirement lines.

    `overrides` is `[requirements]` of nb2prod.ini: import name → requirement
    line (or empty to ignore), for imports not installed where split runs.
    `local_modules` are modules found next to the notebook: not distributions.
    """
    found: dict[str, str] = {}
    problems: list[Problem] = []
    for module, cell in imports:
        if module in overrides:
            if overrides[module].strip():
                line = overrides[module].strip()
                found[_requirement_name(line)] = line
            continue
        if is_stdlib(module) or module in local_modules or module == "nb2prod_runtime":
            continue
        dists = _distributions().get(module)
        if not dists:
            problems.append(Problem(
                f"import '{module}' is not installed here, so its version cannot be pinned; "
                f"install it or map it under [requirements] in nb2prod.ini",
                cell=cell, file=file))
            continue
        for dist in sorted(set(dists)):
            line = pin(dist)
            found[_requirement_name(line)] = line
    for dist in RUNTIME_REQUIREMENTS.get(stage_type, ()):
        line = pin(dist)
        found.setdefault(_requirement_name(line), line)
    return Resolution(tuple(found[k] for k in sorted(found)), tuple(problems))


def _requirement_name(line: str) -> str:
    for sep in ("==", ">=", "<=", "~=", "!=", ">", "<", "[", ";", " "):
        line = line.split(sep)[0]
    return line.strip().lower().replace("_", "-")
