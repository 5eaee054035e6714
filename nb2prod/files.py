"""The files a notebook's code names: path literals, what each stage reads and writes.

Pure: source text in, paths out; the filesystem is consulted only through the
`Lookup` callable the caller passes (`nb2prod.workdir.lookup` on the notebook's
directory), so the rules are testable without files.

DESIGN.md "Files and local code": a string literal (also inside `Path(...)`,
`os.path.join(...)`, `Path("a") / "b"` and the literal head of an f-string)
that resolves from the notebook's directory to an existing file or directory is
an input file of the stage whose code names it, unless an earlier stage writes
it: then it is a data edge, like a variable.  A literal is *written* when it is
the path argument of a known writer (`df.to_csv(...)`, `joblib.dump(m, ...)`,
`plt.savefig(...)`, `open(..., "w")` ...): one table below.  Absolute paths, `~`
and paths leaving the directory get a warning naming the cell.
"""

from __future__ import annotations

import ast
import contextlib
import fnmatch
import posixpath
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from nb2prod.dataflow.source import PYTHON_CELL_MAGICS, python_source
from nb2prod.errors import Problem

#: Inputs above this size (all stages together) get a warning: read them from the store.
LARGE_INPUT_BYTES = 100 * 1024 * 1024

#: Writers: call name (function or method) -> positional indexes that may hold the path.
#: Keyword arguments named in PATH_KEYWORDS count too.
WRITERS: dict[str, tuple[int, ...]] = {
    **{name: (0,) for name in (
        "to_csv", "to_parquet", "to_json", "to_excel", "to_pickle", "to_feather", "to_hdf",
        "to_html", "to_xml", "to_stata", "to_latex", "to_markdown", "to_orc", "to_netcdf",
        "write_csv", "write_parquet", "write_json", "write_ndjson", "write_ipc", "sink_parquet",
        "savefig", "imsave", "imwrite", "save_model", "save_weights", "save_pretrained",
        "savez", "savez_compressed", "savetxt", "tofile", "write_image", "write_html",
        "makedirs", "mkdir", "to_file", "export_model", "export")},
    # np.save(path, arr) and model.save(path), but torch.save(obj, path), joblib.dump(obj, path)
    "save": (0, 1), "dump": (1,), "dump_model": (0,),
}
#: Methods that write the path they are called on: `Path("out.txt").write_text(...)`.
RECEIVER_WRITERS = frozenset({"write_text", "write_bytes", "mkdir", "touch"})
PATH_KEYWORDS = frozenset({"path", "path_or_buf", "path_or_buffer", "fname", "filename", "file",
                           "filepath", "filepath_or_buffer", "excel_writer", "f", "fp",
                           "save_path", "output_path", "io"})
#: Calls whose arguments are paths for sure (a warning about `/abs` or `~` needs this or
#: an existing path: the string "/predict" elsewhere is a route, not a file).
PATH_CALLS = frozenset({"open", "Path", "PurePath", "PosixPath", "join", "exists", "isfile",
                        "isdir", "listdir", "glob", "scandir", "walk", "load", "loadtxt",
                        "genfromtxt", "imread", "read", "File", "Dataset", "load_model",
                        "DMatrix", "Booster", "fromfile", "mmap", "copy", "copyfile"})
#: String methods (and `re` functions): their literal receiver and arguments are text to
#: search or cut, never paths (`c.replace("/", "_")`, `s.split("/")`, `"/".join(parts)`).
#: `format` is not here: `"data/{}.csv".format(i)` spells a path.
STRING_METHODS = frozenset({
    "replace", "split", "rsplit", "partition", "rpartition", "startswith", "endswith",
    "strip", "lstrip", "rstrip", "removeprefix", "removesuffix", "find", "rfind", "index",
    "rindex", "count", "join", "translate", "maketrans", "contains", "match", "fullmatch",
    "search", "sub", "subn", "findall", "finditer", "compile", "escape"})
#: Receivers of those names that are not strings: `os.replace(a, b)` renames a file.
_NOT_STRINGS = frozenset({"os", "shutil", "posixpath", "pathlib"})
_PATH_CONSTRUCTORS = frozenset({"Path", "PurePath", "PosixPath", "PurePosixPath"})
_WINDOWS_ABSOLUTE = re.compile(r"^[A-Za-z]:[\\/]")
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


@dataclass(frozen=True)
class Literal:
    """A string literal that may name a path, as written (`text`) and where."""

    text: str
    write: bool = False
    file_context: bool = False  # an argument of a call that surely takes a path


@dataclass(frozen=True)
class CellPaths:
    """Path literals of one cell: read ones and written ones."""

    literals: tuple[Literal, ...] = ()
    escapes: tuple[str, ...] = ()  # `Path().absolute().parents[1]`: computed from the cwd

    @property
    def writes(self) -> set[str]:
        return {p for p in (normalize(x.text) for x in self.literals if x.write) if p}

    @property
    def reads(self) -> set[str]:
        return {p for p in (normalize(x.text) for x in self.literals if not x.write) if p}


@dataclass(frozen=True)
class Entry:
    """What the lookup found at a relative path."""

    path: str
    is_dir: bool
    bytes: int


#: relative path (posix) -> Entry if it exists inside the notebook's directory, else None.
Lookup = Callable[[str], "Entry | None"]
#: Absolute or `~` path -> True when it exists on this machine.
Exists = Callable[[str], bool]


@dataclass
class FilePlan:
    """Per stage: input files (relative paths; a directory ends in '/'), file edges, warnings."""

    inputs: dict[str, list[str]] = field(default_factory=dict)
    writes: dict[str, list[str]] = field(default_factory=dict)
    edges: list[tuple[str, str, str]] = field(default_factory=list)  # producer, consumer, path
    warnings: list[Problem] = field(default_factory=list)
    total_bytes: int = 0


# -- one cell ------------------------------------------------------------------------
def cell_paths(source: str) -> CellPaths:
    """The string literals of a cell that may be paths, read or written (magics allowed)."""
    try:
        tree = ast.parse(python_source(source))
    except SyntaxError:
        return CellPaths()
    walker = _LiteralWalker()
    walker.visit(tree)
    return CellPaths(tuple(walker.found), tuple(walker.escapes))


def normalize(text: str) -> str | None:
    """A relative literal as a normalized posix path inside the directory, else None."""
    if not _plausible(text) or text.startswith(("/", "~")) or _WINDOWS_ABSOLUTE.match(text):
        return None
    path = posixpath.normpath(text.replace("\\", "/"))
    if path in (".", "") or path == ".." or path.startswith("../"):
        return None
    return path


def _plausible(text: str) -> bool:
    return (0 < len(text) < 1024 and "\n" not in text and "\0" not in text
            and not _URL.match(text) and text.strip() == text)


class _LiteralWalker(ast.NodeVisitor):
    """Collects path-like literals; a composed path (Path("a") / "b") is one literal."""

    def __init__(self) -> None:
        self.found: list[Literal] = []
        self.escapes: list[str] = []

    def visit_Attribute(self, node: ast.Attribute) -> None:
        if node.attr in ("parent", "parents") and _is_cwd(node.value):
            self.escapes.append(ast.unparse(node))
            return
        self.generic_visit(node)

    def add(self, text: str | None, write: bool = False, context: bool = False) -> None:
        if text is not None and _plausible(text):
            self.found.append(Literal(text, write, context))

    def visit_Constant(self, node: ast.Constant) -> None:
        if isinstance(node.value, str):
            self.add(node.value)

    def visit_JoinedStr(self, node: ast.JoinedStr) -> None:
        self.add(_literal(node))
        for value in node.values:
            if isinstance(value, ast.FormattedValue):
                self.visit(value.value)  # not its format spec: never a path

    def visit_BinOp(self, node: ast.BinOp) -> None:
        composed = _literal(node) if isinstance(node.op, ast.Div) else None
        if composed is not None:
            self.add(composed, context=True)
            return
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        name = _call_name(node.func)
        if name == "run_line_magic" and len(node.args) == 2:  # %time df = read_csv(...)
            magic, body = (_literal(arg) for arg in node.args)
            if magic in PYTHON_CELL_MAGICS and body is not None:
                with contextlib.suppress(SyntaxError, ValueError):
                    self.visit(ast.parse(body))
                return
        composed = _literal(node) if name in _PATH_CONSTRUCTORS or _is_os_path_join(node) else None
        if composed is not None:
            self.add(composed, context=True)
            return
        if _string_call(node):
            for part in [node.func.value, *node.args, *(k.value for k in node.keywords)]:
                if _literal(part) is None:
                    self.visit(part)
            return
        written = _written_args(node, name)
        if isinstance(node.func, ast.Attribute):
            receiver = _literal(node.func.value)
            if receiver is not None and (name in RECEIVER_WRITERS or _opens_for_writing(node)):
                self.add(receiver, write=True, context=True)
                for arg in [*node.args, *(k.value for k in node.keywords)]:
                    self.visit(arg)
                return
            self.visit(node.func.value)
        context = name in PATH_CALLS or name in WRITERS or name.startswith(("read_", "load_"))
        for arg in node.args:
            text = _literal(arg)
            if text is not None:
                self.add(text, write=arg in written, context=context)
            else:
                self.visit(arg)
        for keyword in node.keywords:
            text = _literal(keyword.value)
            if text is not None and (keyword.arg in PATH_KEYWORDS or keyword.value in written):
                self.add(text, write=keyword.value in written, context=context)
            elif text is None:
                self.visit(keyword.value)


def _is_cwd(node: ast.expr) -> bool:
    """`Path()`, `Path(".")`, `Path.cwd()`, `os.getcwd()`, also `.absolute()`/`.resolve()`d."""
    if not isinstance(node, ast.Call):
        return False
    name = _call_name(node.func)
    if name in ("absolute", "resolve") and isinstance(node.func, ast.Attribute):
        return _is_cwd(node.func.value)
    if name in _PATH_CONSTRUCTORS:
        return not node.args or (len(node.args) == 1 and (_literal(node.args[0]) in (".", "")
                                                          or _is_cwd(node.args[0])))
    return name in ("cwd", "getcwd") and not node.args


def _call_name(func: ast.expr) -> str:
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return func.attr
    return ""


def _string_call(node: ast.Call) -> bool:
    """`c.replace("/", "_")`, `"/".join(parts)`, `re.sub("/", "_", s)`: text, not paths;
    not `os.replace(...)`, nor a method of a path (`Path("a").replace("b")`)."""
    func = node.func
    if not isinstance(func, ast.Attribute) or func.attr not in STRING_METHODS:
        return False
    receiver = func.value
    if isinstance(receiver, ast.Name) and receiver.id in _NOT_STRINGS:
        return False
    if isinstance(receiver, ast.Call) and _call_name(receiver.func) in _PATH_CONSTRUCTORS:
        return False
    return not (_is_os_path_join(node) or isinstance(receiver, ast.BinOp)
                and isinstance(receiver.op, ast.Div))


def _is_os_path_join(node: ast.Call) -> bool:
    func = node.func
    return (isinstance(func, ast.Attribute) and func.attr == "join"
            and isinstance(func.value, ast.Attribute) and func.value.attr == "path")


def _written_args(node: ast.Call, name: str) -> list[ast.expr]:
    """The argument nodes of `node` that a writer call writes to."""
    if name == "open" and _opens_for_writing(node) and node.args:
        return [node.args[0]]
    positions = WRITERS.get(name)
    if positions is None:
        return []
    found = [node.args[i] for i in positions if i < len(node.args)]
    found += [k.value for k in node.keywords if k.arg in PATH_KEYWORDS]
    return [arg for arg in found if _literal(arg) is not None]


def _opens_for_writing(node: ast.Call) -> bool:
    """`open(p, "w")`, `open(p, mode="ab")`, `Path(p).open("w")`."""
    if _call_name(node.func) != "open":
        return False
    position = 1 if isinstance(node.func, ast.Name) else 0
    mode = node.args[position] if len(node.args) > position else None
    mode = next((k.value for k in node.keywords if k.arg == "mode"), mode)
    return (isinstance(mode, ast.Constant) and isinstance(mode.value, str)
            and any(c in mode.value for c in "wax+"))


def _literal(node: ast.expr) -> str | None:
    """The path a literal expression spells; for partly literal ones, its literal head."""
    if isinstance(node, ast.Constant):
        return node.value if isinstance(node.value, str) else None
    if isinstance(node, ast.JoinedStr):
        head = ""
        for value in node.values:
            if not isinstance(value, ast.Constant):
                # f"data/{name}.csv": the directory part only
                return head.rsplit("/", 1)[0] + "/" if "/" in head else None
            head += str(value.value)
        return head
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
        left, right = _literal(node.left), _literal(node.right)
        if left is None:
            return None
        return posixpath.join(left, right) if right is not None else left
    if isinstance(node, ast.Call) and (_call_name(node.func) in _PATH_CONSTRUCTORS
                                       or _is_os_path_join(node)):
        parts: list[str] = []
        for arg in node.args:
            text = _literal(arg)
            if text is None:
                break
            parts.append(text)
        return posixpath.join(*parts) if parts else None
    return None


# -- the notebook ----------------------------------------------------------------------
StageCells = list[tuple[str, int, CellPaths]]  # (stage, cell index, paths) in notebook order


def _nothing(path: str) -> None:
    return None


def _never(path: str) -> bool:
    return False


def plan(stage_cells: StageCells, lookup: Lookup = _nothing, exists: Exists = _never,
         include: Iterable[str] = (), exclude: Iterable[str] = (),
         services: Iterable[str] = (), file: str | None = None) -> FilePlan:
    """Input files per stage, file data edges and warnings (DESIGN.md "Files and local code").

    Without `lookup` nothing exists (only the edges are meaningful).  `include` are
    paths already expanded from `[files] INCLUDE` (every stage gets them); `exclude`
    are `[files] EXCLUDE` globs, matched against relative paths.  Files written by a
    service stage provide nothing to other stages (like its variables).
    """
    exclude = list(exclude)
    services = set(services)
    result = FilePlan()
    written: dict[str, list[tuple[int, str]]] = {}  # path -> (cell, stage) writing it
    warned: set[tuple[int, str]] = set()
    for stage, index, paths in stage_cells:
        result.inputs.setdefault(stage, [])
        result.writes.setdefault(stage, [])
        for literal in paths.literals:
            message = _outside_warning(literal, lookup, exists)
            if message and (index, literal.text) not in warned:
                warned.add((index, literal.text))
                result.warnings.append(Problem(message, cell=index, file=file))
        for expr in paths.escapes:
            result.warnings.append(Problem(
                f"'{expr}' leaves the notebook's directory: a stage's working directory holds "
                "only what is beside the notebook; put the file there and use a relative path",
                cell=index, file=file))
        for path in sorted(paths.reads):
            producer = _last_writer(written, path, stage)
            if producer is not None:
                edge = (producer, stage, path)
                if edge not in result.edges:
                    result.edges.append(edge)
                continue
            if path in result.writes[stage] or _excluded(path, exclude):
                continue
            entry = lookup(path)
            if entry is not None:
                _add(result.inputs[stage], entry.path + ("/" if entry.is_dir else ""))
        for path in sorted(paths.writes):
            if stage not in services:
                written.setdefault(path, []).append((index, stage))
            _add(result.writes[stage], path)
    for stage in result.inputs:
        for path in include:
            if not _excluded(path, exclude):
                _add(result.inputs[stage], path)
        result.inputs[stage] = _minimal(result.inputs[stage])
    result.total_bytes = _total_bytes({p for paths in result.inputs.values() for p in paths},
                                      lookup)
    if result.total_bytes > LARGE_INPUT_BYTES:
        result.warnings.append(Problem(
            f"input files total {result.total_bytes / 1024 / 1024:.0f} MB: every stage run "
            "copies them; consider reading them from the artifact store (or s3://) directly, "
            "or leave them out with [files] EXCLUDE", file=file))
    return result


def _add(items: list[str], path: str) -> None:
    if path not in items:
        items.append(path)


def _minimal(paths: list[str]) -> list[str]:
    """Sorted, without paths inside a listed directory."""
    dirs = [p for p in paths if p.endswith("/")]
    return sorted(p for p in set(paths)
                  if not any(p != d and p.startswith(d) for d in dirs))


def _excluded(path: str, patterns: list[str]) -> bool:
    bare = path.rstrip("/")
    return any(fnmatch.fnmatch(bare, pat.rstrip("/")) or fnmatch.fnmatch(bare + "/", pat)
               for pat in patterns)


def excluded(path: str, patterns: Iterable[str]) -> bool:
    """True when `[files] EXCLUDE` globs leave `path` (or a directory holding it) out."""
    parts = path.split("/")
    pats = list(patterns)
    return any(_excluded("/".join(parts[:i]), pats) for i in range(1, len(parts) + 1))


def _last_writer(written: dict[str, list[tuple[int, str]]], path: str, reader: str) -> str | None:
    """The last other stage that wrote `path`, a directory holding it, or a file inside it."""
    found: tuple[int, str] | None = None
    for target, writers in written.items():
        if target == path or path.startswith(target + "/") or target.startswith(path + "/"):
            for index, stage in writers:
                if stage != reader and (found is None or index > found[0]):
                    found = (index, stage)
    return found[1] if found else None


def _outside_warning(literal: Literal, lookup: Lookup, exists: Exists) -> str | None:
    text = literal.text
    if not _plausible(text):
        return None
    if text.startswith("/") or _WINDOWS_ABSOLUTE.match(text):
        what = "an absolute path"
    elif text == "~" or text.startswith("~/"):
        what = "a path in the home directory"
    elif (posixpath.normpath(text.replace("\\", "/")) + "/").startswith("../"):
        what = "a path outside the notebook's directory"
    else:
        return None
    if not (literal.file_context or exists(text)):
        return None
    return (f"'{text}' is {what}: it will not exist in the stage's working directory on "
            "another machine; put the file next to the notebook and use a relative path")


def _total_bytes(paths: set[str], lookup: Lookup) -> int:
    total = 0
    for path in paths:
        entry = lookup(path.rstrip("/"))
        total += entry.bytes if entry else 0
    return total
