"""`nb2prod split` and `nb2prod check`: analyse, render, write atomically.

Writing goes through a temp dir beside the target and a rename, so a failed
split never leaves a half-written pipeline.  A record of what was generated
(`.nb2prod/split.json`: file hashes and config values) lets the next split
tell the user's edits from ours: edited config values are kept, edited
generated files are backed up before being replaced, files the user added are
carried over, and the run history under `.nb2prod/` is never touched.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from nb2prod.analysis import Analysis, analyze
from nb2prod.errors import Problem, UserError
from nb2prod.notebook import load_notebook
from nb2prod.pipeline import read_ini
from nb2prod.render import Config, Rendered, render

STATE_DIR = ".nb2prod"
RECORD = f"{STATE_DIR}/split.json"


@dataclass
class Report:
    """What split/check found and did; `to_dict` is the JSON the UI shows."""

    analysis: Analysis
    rendered: Rendered
    output: Path | None
    kept_edits: list[str] = field(default_factory=list)
    backed_up: list[str] = field(default_factory=list)
    stale: list[str] = field(default_factory=list)

    @property
    def warnings(self) -> list[Problem]:
        """The analysis' warnings and the input files' (absolute paths, large inputs)."""
        return [*self.analysis.warnings, *self.rendered.file_plan.warnings]

    def to_dict(self) -> dict:
        a = self.analysis
        return {
            "notebook": str(a.notebook.path),
            "output": str(self.output) if self.output else None,
            "stages": [
                {
                    "name": s.name,
                    "type": s.type,
                    "directory": s.directory,
                    "cells": s.cells,
                    "inputs": dict(s.inputs),
                    "outputs": list(s.outputs),
                    "files": self.rendered.file_plan.inputs.get(s.name, []),
                    "file_inputs": dict(s.file_inputs),
                    "metrics": list(s.metrics),
                    "requirements": self.rendered.requirements.get(s.name, []),
                    "after": [x for x, y in a.edges if y == s.name],
                }
                for s in a.stages
            ],
            "dag": [list(e) for e in a.edges],
            "warnings": [p.to_dict() for p in self.warnings],
            "kept_edits": self.kept_edits,
            "backed_up": self.backed_up,
            "stale": self.stale,
        }


def default_output(notebook: Path) -> Path:
    return notebook.parent / f"{notebook.stem}-pipeline"


def check_notebook(path: Path, templates: Path | None = None) -> Report:
    """Analyse and render in memory; write nothing."""
    path = Path(path)
    analysis = analyze(load_notebook(path))
    output = default_output(path)
    return Report(analysis, render(analysis, output, None, templates), None)


def split_notebook(path: Path, output: Path | None = None, force: bool = False,
                   templates: Path | None = None, check: bool = False) -> Report:
    """Split `path` into a pipeline directory (or, with `check`, compare against it)."""
    path = Path(path)
    output = Path(output) if output else default_output(path)
    if templates is not None and not Path(templates).is_dir():
        raise UserError(Problem("templates directory does not exist", file=str(templates)))
    exists = output.exists()
    if exists and not output.is_dir():
        raise UserError(Problem("exists and is not a directory; choose another -o",
                                file=str(output)))
    if exists and not (output / "nb2prod.ini").is_file() and any(output.iterdir()):
        raise UserError(Problem("exists and is not an nb2prod pipeline; choose another -o",
                                file=str(output)))
    if exists and not force and not check and any(output.iterdir()):
        raise UserError(Problem("output directory exists; use --force to update it "
                                "(your config.ini edits are kept)", file=str(output)))
    analysis = analyze(load_notebook(path))
    record = _read_record(output)
    user = _user_config_edits(output, record)
    rendered = render(analysis, output, user, templates)
    report = Report(analysis, rendered, output,
                    kept_edits=[f"{f} [{s}] {k}" for f, secs in user.items()
                                for s, keys in secs.items() for k in keys])
    if check:
        report.stale = _stale_files(output, rendered, record)
        return report
    report.backed_up = _write(output, rendered, record)
    return report


# -- the split record and user edits ----------------------------------------------
def _read_record(output: Path) -> dict:
    try:
        return json.loads((output / RECORD).read_text())
    except (OSError, ValueError):
        return {"files": {}, "configs": {}}


def _user_config_edits(output: Path, record: dict) -> dict[str, Config]:
    """Values in the on-disk .ini files that differ from what we generated last time."""
    edits: dict[str, Config] = {}
    for rel, generated in record.get("configs", {}).items():
        path = output / rel
        if not path.is_file():
            continue
        for section, items in read_ini(path).items():
            for key, value in items.items():
                if generated.get(section, {}).get(key) != value:
                    edits.setdefault(rel, {}).setdefault(section, {})[key] = value
    return edits


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _record_bytes(rendered: Rendered) -> bytes:
    record = {"files": {rel: _digest(data) for rel, data in sorted(rendered.files.items())},
              "configs": rendered.generated}
    return (json.dumps(record, indent=1, sort_keys=True) + "\n").encode()


def _stale_files(output: Path, rendered: Rendered, record: dict) -> list[str]:
    """Generated files that are missing or differ on disk, and ones no longer generated."""
    stale = []
    for rel, data in sorted(rendered.files.items()):
        path = output / rel
        if not path.is_file() or path.read_bytes() != data:
            stale.append(rel)
    stale += sorted(rel for rel in record.get("files", {})
                    if rel not in rendered.files and (output / rel).exists())
    return stale


# -- writing ---------------------------------------------------------------------------
def _write(output: Path, rendered: Rendered, record: dict) -> list[str]:
    """Write into a temp dir, carry over what is the user's, then swap it into place."""
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output.name}.tmp-", dir=output.parent))
    backed_up: list[str] = []
    try:
        for rel, data in rendered.files.items():
            target = tmp / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        if output.exists():
            backed_up = _carry_over(output, tmp, rendered, record)
        (tmp / STATE_DIR).mkdir(exist_ok=True)
        (tmp / RECORD).write_bytes(_record_bytes(rendered))
        moved = _move_state(output, tmp)
        try:
            _swap(tmp, output)
        except BaseException:
            _move_state(tmp, output, moved)
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return backed_up


def _move_state(src: Path, dst: Path, names: list[str] | None = None) -> list[str]:
    """Move run history and artifacts (possibly large) by rename, never by copy."""
    state = src / STATE_DIR
    if not state.is_dir():
        return []
    moved = []
    for entry in sorted(state.iterdir()) if names is None else [state / n for n in names]:
        if entry.name == "split.json" or not entry.exists():
            continue
        target = dst / STATE_DIR / entry.name
        if entry.name == "backup" and target.exists():
            for stamp in entry.iterdir():
                stamp.rename(target / stamp.name)
            continue
        entry.rename(target)
        moved.append(entry.name)
    return moved


def _carry_over(old: Path, new: Path, rendered: Rendered, record: dict) -> list[str]:
    """Keep run history, files the user added; back up generated files the user edited."""
    known = record.get("files", {})
    backed_up = []
    stamp = time.strftime("%Y%m%dT%H%M%S")
    for path in sorted(old.rglob("*")):
        rel = path.relative_to(old).as_posix()
        if path.is_dir() or rel == RECORD or "__pycache__" in path.parts:
            continue
        if rel.startswith(STATE_DIR + "/"):
            continue  # moved, not copied, by _move_state
        if rel not in known and rel not in rendered.files:
            target = new / rel  # a file the user added
        elif _digest(path.read_bytes()) != known.get(rel) and not rel.endswith(".ini") \
                and path.read_bytes() != rendered.files.get(rel):
            target = new / STATE_DIR / "backup" / stamp / rel  # a generated file the user edited
            backed_up.append(rel)
        else:
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
    return backed_up


def _swap(tmp: Path, output: Path) -> None:
    """Replace `output` by `tmp` with two renames; the old tree is removed last."""
    if not output.exists():
        tmp.rename(output)
        return
    old = output.with_name(f".{output.name}.old-{int(time.time() * 1000)}")
    output.rename(old)
    try:
        tmp.rename(output)
    except BaseException:
        old.rename(output)
        raise
    shutil.rmtree(old, ignore_errors=True)
