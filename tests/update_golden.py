"""Regenerate the golden split output of every example notebook: `python tests/update_golden.py`.

tests/test_golden.py splits each notebook of `example_notebooks/` into a temp dir and
compares every generated file, byte for byte, with `tests/data/golden/<example>/`.
Both sides go through `normalise()` first, which removes what legitimately varies with
the environment the split runs in:

* `requirements.txt`: pins `name==<version>` become `name==*` (versions of the installed
  distributions);
* jupytext `.py` renderings: the `jupytext_version:` header line becomes `jupytext_version: *`;
* `nb2prod_runtime/<module>.py` (the runtime, once per pipeline): a marker line; the test
  checks separately that each is exactly the text of `nb2prod/runtime/<module>.py`;
* nb2prod's own version string (`nb2prod.__version__`) becomes `<nb2prod-version>`, so a
  version bump alone does not invalidate the golden files;
* `.nb2prod/` (run state, git-ignored) and the split record `nb2prod.split.json` (hashes of
  the files above, so it varies with the pins) are not part of the golden tree.

Run this script after an intended change to the generated files and review the diff.
"""

from __future__ import annotations

import re
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
EXAMPLES_DIR = REPO / "example_notebooks"
GOLDEN_DIR = REPO / "tests" / "data" / "golden"

#: golden directory name → example notebook file
EXAMPLES = {
    "iris": "iris.ipynb",
    "wine_parallel": "wine_parallel.ipynb",
    "diabetes": "diabetes.py",
}

STATE_DIR = ".nb2prod"
RECORD_FILE = "nb2prod.split.json"
RUNTIME_DIR = "nb2prod_runtime"
RUNTIME_MARKER = "# <nb2prod/runtime/{}, verbatim: compared separately by test_golden.py>\n"
VERSION_MARKER = "<nb2prod-version>"

_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._\-\[\],]*)==\S+$", re.MULTILINE)
_JUPYTEXT_VERSION = re.compile(r"^(#\s+jupytext_version:) .*$", re.MULTILINE)


def split_example(example: str, workdir: Path) -> Path:
    """Copy the example notebook into `workdir` and split it beside itself; return the dir.

    Splitting a copy keeps `NOTEBOOK = ../<file>` in nb2prod.ini independent of where the
    repository and the temp dir are.
    """
    from nb2prod.split import split_notebook

    source = EXAMPLES_DIR / EXAMPLES[example]
    workdir.mkdir(parents=True, exist_ok=True)
    notebook = workdir / source.name
    shutil.copyfile(source, notebook)
    output = workdir / f"{notebook.stem}-pipeline"
    split_notebook(notebook, output)
    return output


def tree(root: Path, include_state: bool = False) -> dict[str, bytes]:
    """Every file under `root` by POSIX relative path (state and record left out by default)."""
    files = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_dir() or "__pycache__" in path.parts:
            continue
        if not include_state and (rel == STATE_DIR or rel.startswith(STATE_DIR + "/")
                                  or rel == RECORD_FILE):
            continue
        files[rel] = path.read_bytes()
    return files


def normalise(rel: str, data: bytes) -> bytes:
    """The environment-independent form of one generated file (see the module docstring)."""
    from nb2prod import __version__

    text = data.decode("utf-8")
    name = rel.rsplit("/", 1)[-1]
    if rel.startswith(RUNTIME_DIR + "/"):
        text = RUNTIME_MARKER.format(name)
    elif name == "requirements.txt":
        text = _PIN.sub(r"\1==*", text)
    elif name.endswith(".py"):
        text = _JUPYTEXT_VERSION.sub(r"\1 *", text)
    text = text.replace(__version__, VERSION_MARKER)
    return text.encode("utf-8")


def normalised_tree(root: Path) -> dict[str, bytes]:
    return {rel: normalise(rel, data) for rel, data in tree(root).items()}


def golden_tree(example: str) -> dict[str, bytes]:
    return tree(GOLDEN_DIR / example)


def write_golden(example: str, files: dict[str, bytes]) -> Path:
    target = GOLDEN_DIR / example
    if target.exists():
        shutil.rmtree(target)
    for rel, data in files.items():
        path = target / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return target


def main(argv: list[str] | None = None) -> int:
    names = list(argv if argv is not None else sys.argv[1:]) or list(EXAMPLES)
    unknown = [n for n in names if n not in EXAMPLES]
    if unknown:
        print(f"unknown example(s): {', '.join(unknown)}; have {', '.join(EXAMPLES)}",
              file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        for example in names:
            output = split_example(example, Path(tmp) / example)
            target = write_golden(example, normalised_tree(output))
            print(f"{example}: {len(tree(target))} files -> {target.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
