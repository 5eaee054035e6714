"""Imports → pinned distributions, from installed metadata (no hand-written table).

`importlib.metadata.packages_distributions()` knows that `sklearn` comes from
scikit-learn and `yaml` from PyYAML; pinning to the installed version makes the
stage reproduce the authoring environment.
"""

from __future__ import annotations

import functools
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import metadata

from nb2prod.errors import Problem

#: What the generated code itself needs, by stage type.
RUNTIME_REQUIREMENTS = {
    "batch": ("papermill", "ipykernel", "nbconvert", "joblib"),
    "service": ("flask", "gunicorn", "joblib"),
}


@dataclass(frozen=True)
class Import:
    """One import of a top-level module, located for messages."""

    module: str
    cell: int | None = None
    file: str | None = None  # the notebook, or a local module file next to it
    line: int | None = None  # in a local module file
    optional: bool = False  # inside `try: ... except ImportError:`


@dataclass(frozen=True)
class Resolution:
    """Pinned requirement lines, problems for imports nothing provides, and notes
    for optional imports left out because they are not installed."""

    lines: tuple[str, ...]
    problems: tuple[Problem, ...]
    notes: tuple[Problem, ...] = ()


@functools.lru_cache(maxsize=1)
def _distributions() -> dict[str, list[str]]:
    return metadata.packages_distributions()


@functools.cache
def pin(distribution: str) -> str:
    """`name==version` for an installed distribution (its canonical spelling)."""
    dist = metadata.distribution(distribution)
    return f"{dist.metadata['Name']}=={dist.version}"


def needed_libraries(modules: Iterable[str], libraries: Iterable[str]) -> set[str]:
    """Which of `libraries` (what serializers write with) a stage importing `modules`
    needs pinned: those it imports, and those a distribution it imports requires
    (pandas and scikit-learn require numpy: their values are saved with it).  Only
    installed ones: a library not installed here wrote nothing here."""
    installed = _distributions()
    modules = set(modules)
    required: set[str] = set()
    for module in modules:
        for dist in installed.get(module, ()):
            required |= _requires(dist)
    return {lib for lib in set(libraries) if lib in installed and (
        lib in modules or any(_canonical(d) in required for d in installed[lib]))}


@functools.cache
def _requires(distribution: str) -> frozenset[str]:
    """Canonical names of the distributions `distribution` requires (not its extras)."""
    try:
        lines = metadata.requires(distribution) or []
    except metadata.PackageNotFoundError:
        return frozenset()
    names = set()
    for line in lines:
        requirement, _, marker = line.partition(";")
        if re.search(r"\bextra\s*==", marker):
            continue
        found = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
        if found:
            names.add(_canonical(found.group(1)))
    return frozenset(names)


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def is_stdlib(module: str) -> bool:
    return module in sys.stdlib_module_names or module in sys.builtin_module_names


def resolve(
    imports: Iterable[tuple[str, int] | Import],
    stage_type: str,
    overrides: dict[str, str],
    local_modules: set[str] = frozenset(),  # type: ignore[assignment]
    file: str | None = None,
    settings_file: str = "nb2prod.ini",
) -> Resolution:
    """Map imports (`Import`s, or `(module, cell)` of notebook `file`) to sorted,
    pinned requirement lines.

    `overrides` is `[requirements]` of nb2prod.ini: import name → requirement
    line (or empty to ignore), for imports not installed where split runs;
    `settings_file` is the nb2prod.ini a missing import's message tells the
    user to edit.  `local_modules` are modules next to the notebook: not
    distributions.  An import that is optional everywhere it is made and not
    installed is left out with a note instead of being a problem.
    """
    sites = [i if isinstance(i, Import) else Import(i[0], cell=i[1], file=file) for i in imports]
    required = {site.module for site in sites if not site.optional}
    found: dict[str, str] = {}
    problems: list[Problem] = []
    notes: list[Problem] = []
    for site in sites:
        module = site.module
        if module in overrides:
            if overrides[module].strip():
                line = overrides[module].strip()
                found[_requirement_name(line)] = line
            continue
        if is_stdlib(module) or module in local_modules or module == "nb2prod_runtime":
            continue
        dists = _distributions().get(module)
        if not dists:
            where = f" (line {site.line})" if site.line else ""
            if site.optional and module in required:
                continue  # a required import of it reports the problem
            if module not in required:
                note = Problem(f"optional import '{module}'{where} is not installed here: left "
                               "out of requirements.txt", cell=site.cell, file=site.file)
                if note not in notes:
                    notes.append(note)
                continue
            problems.append(Problem(
                f"import '{module}'{where} is not installed here, so its version cannot be "
                f"pinned: install it, or add '{module} = DISTRIBUTION==VERSION' (empty value: "
                f"leave it out) under [requirements] in {settings_file}",
                cell=site.cell, file=site.file))
            continue
        for dist in sorted(set(dists)):
            line = pin(dist)
            found[_requirement_name(line)] = line
    for dist in RUNTIME_REQUIREMENTS.get(stage_type, ()):
        line = pin(dist)
        found.setdefault(_requirement_name(line), line)
    return Resolution(tuple(found[k] for k in sorted(found)), tuple(problems), tuple(notes))


def _requirement_name(line: str) -> str:
    for sep in ("==", ">=", "<=", "~=", "!=", ">", "<", "[", ";", " "):
        line = line.split(sep)[0]
    return line.strip().lower().replace("_", "-")
