"""Local modules and packages next to the notebook: which ones a stage needs, and their files.

DESIGN.md "Files and local code": a module or package beside the notebook that
the code imports (`import helpers`, `from mypkg.features import f`) is copied
into each stage that imports it, with everything it imports from the same
directory; the third-party imports inside it count toward the stage's
requirements.txt.  `LocalCode` finds modules on demand (a notebook directory
may be a big tree), reads each once, and follows imports between them.

Reads files, writes nothing.  Used by `render` (what to copy) and by the
requirements step (`third_party_imports`).
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from nb2prod.dataflow.declarative import is_optional_import
from nb2prod.requirements import Import

#: Never part of a local package (caches, checkpoints, hidden folders).
SKIPPED_PARTS = frozenset({"__pycache__", ".ipynb_checkpoints"})


@dataclass
class LocalModule:
    """One top-level local module or package: its files and what they import."""

    name: str
    files: dict[str, bytes]  # path relative to the notebook's directory -> content
    imports: list[Import] = field(default_factory=list)  # top-level module, file, line


class LocalCode:
    """The local modules of one directory, found by name and read once."""

    def __init__(self, directory: Path, ignore: Iterable[Path] = ()) -> None:
        self.directory = Path(directory)
        self.ignore = {Path(p).resolve() for p in ignore}
        self._found: dict[str, LocalModule | None] = {}

    def find(self, name: str) -> LocalModule | None:
        """The module `name` (top level) if it is a file or package beside the notebook."""
        if name not in self._found:
            self._found[name] = self._read(name)
        return self._found[name]

    def _read(self, name: str) -> LocalModule | None:
        if not name.isidentifier():
            return None
        module = self.directory / f"{name}.py"
        package = self.directory / name
        if module.is_file():
            files = {module.name: module.read_bytes()}
        elif package.is_dir() and package.resolve() not in self.ignore and any(package.rglob("*.py")):
            # a regular package, or a namespace package (a folder of modules)
            files = {
                p.relative_to(self.directory).as_posix(): p.read_bytes()
                for p in sorted(package.rglob("*.py"))
                if not SKIPPED_PARTS & set(p.relative_to(package).parts)
                and not any(part.startswith(".") for part in p.relative_to(package).parts)
            }
        else:
            return None
        imports = [site for rel, data in files.items() for site in _imports(data, rel)]
        return LocalModule(name, files, imports)

    def closure(self, names: Iterable[str]) -> list[LocalModule]:
        """The local modules among `names`, plus every local module they import, transitively."""
        todo = list(names)
        seen: dict[str, LocalModule] = {}
        while todo:
            name = todo.pop()
            if name in seen:
                continue
            module = self.find(name)
            if module is None:
                continue
            seen[name] = module
            todo += [site.module for site in module.imports if site.module not in seen]
        return [seen[n] for n in sorted(seen)]

    def third_party_imports(self, names: Iterable[str]) -> list[Import]:
        """Imports inside the local closure of `names` that are not local: they count
        toward the importing stage's requirements.txt (optional ones may be missing)."""
        modules = self.closure(names)
        local = {m.name for m in modules}
        return [site for m in modules for site in m.imports
                if site.module not in local and self.find(site.module) is None]


def _imports(source: bytes, rel: str) -> list[Import]:
    """The absolute imports in a module file, once per top-level name (relative ones
    stay inside it); one made only inside `try: ... except ImportError:` is optional."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return []
    optional = {id(node) for t in ast.walk(tree) if isinstance(t, ast.Try)
                and is_optional_import(t) for node in ast.walk(t)}
    found: dict[str, Import] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names = [node.module]
        else:
            continue
        for name in names:
            top = name.split(".")[0]
            site = Import(top, file=rel, line=node.lineno, optional=id(node) in optional)
            if top not in found or found[top].optional and not site.optional:
                found[top] = site
    return list(found.values())
