"""`nb2prod split` and `nb2prod check`: analyse, render, write safely.

The split record (`nb2prod.split.json`, committed with the pipeline; see
`nb2prod.record`) lets the next split tell the user's edits from ours: edited
config values and the user's comments in `.ini` files are kept (and follow a
renamed stage), edited generated files are backed up before being replaced,
files the user added are carried over, and the run history under `.nb2prod/`
never moves.  Writing is `nb2prod.writer`: locked, staged, crash-safe.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from nb2prod import fresh_split, writer
from nb2prod.analysis import Analysis, analyze
from nb2prod.errors import Problem, UserError
from nb2prod.fresh_split import default_output
from nb2prod.notebook import load_notebook
from nb2prod.pipeline import read_ini
from nb2prod.record import (
    RECORD_FILE,
    comment_digests,
    digest,
    file_digest,
    keep_comments,
    match_stages,
    read_record,
    record_bytes,
    user_edits,
)
from nb2prod.render import Config, Rendered, render
from nb2prod.templates import check_templates

STATE_DIR = writer.STATE_DIR
SETTINGS = "nb2prod.ini"  # next to the notebook: settings that work on a first split


@dataclass
class Report:
    """What split/check found and did; `to_dict` is the JSON the UI shows."""

    analysis: Analysis
    rendered: Rendered
    output: Path | None
    kept_edits: list[str] = field(default_factory=list)
    backed_up: list[str] = field(default_factory=list)
    stale: list[str] = field(default_factory=list)
    recovered: list[str] = field(default_factory=list)  # leftovers of killed splits handled
    orphans: list[str] = field(default_factory=list)  # old stage dirs kept for the user's files
    renamed: dict[str, str] = field(default_factory=dict)  # new stage dir -> old one

    @property
    def warnings(self) -> list[Problem]:
        """The analysis' warnings, the input files' (absolute paths, large inputs) and the
        requirements' (optional imports left out)."""
        return self.analysis.notebook.locate([*self.analysis.warnings,
                                              *self.rendered.file_plan.warnings,
                                              *self.rendered.warnings])

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
            "no_stage": [{"cell": i, "why": why} for i, why in a.unassigned.items()],
            "warnings": [p.to_dict() for p in self.warnings],
            "kept_edits": self.kept_edits,
            "backed_up": self.backed_up,
            "stale": self.stale,
            "recovered": self.recovered,
            "orphans": self.orphans,
            "renamed": self.renamed,
        }


def _plain_path(path: Path, what: str) -> None:
    """Refuse control characters (a newline would be written raw into nb2prod.ini)."""
    text = str(Path(os.path.abspath(path)))
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in text):
        shown = text.encode("unicode_escape").decode("ascii")
        raise UserError(Problem(f"the {what} path contains a control character (a newline?); "
                                "rename it", file=shown))


def check_notebook(path: Path, templates: Path | None = None) -> Report:
    """Analyse and render in memory; write nothing."""
    path = Path(path)
    _plain_path(path, "notebook")
    check_templates(templates)
    analysis = analyze(load_notebook(path))
    output = default_output(path)
    rendered = render(analysis, output, None, templates, notebook_settings(path, output))
    return Report(analysis, rendered, None)


def notebook_settings(notebook: Path, output: Path) -> Config:
    """nb2prod.ini next to the notebook (`[requirements]`, `[files]`...), unless it is
    the pipeline's own; its values count as generated, so they follow the file."""
    path = notebook.parent / SETTINGS
    if not path.is_file() or path.resolve() == (output / "nb2prod.ini").resolve():
        return {}
    return read_ini(path)


def split_notebook(path: Path, output: Path | None = None, force: bool = False,
                   templates: Path | None = None, check: bool = False, *, wait: bool = True,
                   on_wait: Callable[[str], None] | None = None) -> Report:
    """Split `path` into a pipeline directory (or, with `check`, compare against it).

    Another split writing the same directory is waited for (`wait`, with
    `on_wait(message)` said first) or refused with one line.
    """
    path = Path(path)
    output = Path(output) if output else default_output(path)
    _plain_path(path, "notebook")
    _plain_path(output, "output")
    check_templates(templates)
    target = writer.real_output(output)
    _preflight(target, output, force, check)
    analysis = analyze(load_notebook(path))
    if check:
        report, files, _ = _prepare(analysis, target, output, templates, read_record(target))
        report.stale = _stale_files(target, files, read_record(target))
        return report
    writer.make_parents(target, output)
    with writer.locked(target, output, wait, on_wait):
        with writer.os_errors(output):
            recovered = writer.recover(target)
        _preflight(target, output, force, check)  # the split we waited for may have made it
        fresh_split.forget(target)  # what `run NOTEBOOK` took as fresh is about to change
        record = read_record(target)
        report, files, renamed = _prepare(analysis, target, output, templates, record)
        report.recovered = recovered
        plan = _plan(target, files, record, renamed, report)
        with writer.os_errors(output):
            writer.write(target, plan)
    return report


def changed_source(root: Path, notebook: str, recorded_sha256: str) -> Path | None:
    """The notebook pipeline `root` was split from, if it changed in a way split would write.

    `notebook` and `recorded_sha256` are nb2prod.ini's `[project] NOTEBOOK` (relative to
    `root`) and `SOURCE_SHA256`.  Same bytes: fresh, at the cost of one hash.  Different
    bytes (saving in JupyterLab changes outputs and execution counts too) are stale only
    when a split would change a generated file, as `split --check` decides.  A notebook
    that is not there (a pipeline committed on its own) is never stale.
    """
    from nb2prod.pipeline import source_changed_bytes

    path = source_changed_bytes(root, notebook, recorded_sha256)
    return None if path is None else split_would_change(path, root, recorded_sha256)


def split_would_change(path: Path, root: Path, recorded_sha256: str) -> Path | None:
    """`path` (a notebook whose bytes differ from `recorded_sha256`) if a split of it
    would change a generated file of pipeline `root`; the costly half of `changed_source`."""
    try:
        notebook_now = load_notebook(path)
        target = writer.real_output(Path(root))
        record = read_record(target)
        _, files, _ = _prepare(analyze(notebook_now), target, Path(root), None, record)
    except UserError:
        return path  # it no longer even splits: certainly not what the pipeline holds
    # The recorded hash itself is the one line of nb2prod.ini that changes with any save.
    ini = files.get("nb2prod.ini")
    if ini is not None:
        files["nb2prod.ini"] = ini.replace(notebook_now.sha256.encode(), recorded_sha256.encode())
    return path if _stale_files(target, files, record) else None


def _preflight(target: Path, output: Path, force: bool, check: bool) -> None:
    if not target.exists():
        return
    if not target.is_dir():
        raise UserError(Problem("exists and is not a directory; choose another -o",
                                file=str(output)))
    entries = [p for p in target.iterdir() if p.name != STATE_DIR]
    if not (target / "nb2prod.ini").is_file() and entries:
        raise UserError(Problem("exists and is not an nb2prod pipeline; choose another -o",
                                file=str(output)))
    if not force and not check and entries:
        raise UserError(Problem("output directory exists; use --force to update it "
                                "(your config.ini edits are kept)", file=str(output)))


def _prepare(analysis: Analysis, target: Path, output: Path, templates: Path | None,
             record: dict) -> tuple[Report, dict[str, bytes], dict[str, str]]:
    """Render with the user's edits merged in; the files, record included."""
    if not record and (target / "nb2prod.ini").is_file():
        record = _assumed_record(target)
    mapping = match_stages(record, analysis) if target.is_dir() else {}
    edits = user_edits(target, record, mapping)
    rendered = render(analysis, output, edits.values, templates,
                      notebook_settings(analysis.notebook.path, target))
    files = dict(rendered.files)
    comments: dict[str, list[str]] = {}
    for rel in rendered.configs:
        text = files[rel].decode("utf-8")
        comments[rel] = comment_digests(text)
        if rel in edits.comments:
            ours = set(record.get("comments", {}).get(edits.origin.get(rel, rel), []))
            files[rel] = keep_comments(text, edits.comments[rel], ours).encode("utf-8")
    files[RECORD_FILE] = record_bytes(analysis, files, rendered.generated, comments)
    renamed = {new: old for new, old in mapping.items() if new != old}
    report = Report(analysis, rendered, output, renamed=renamed)
    for rel, sections in edits.values.items():
        generated = rendered.generated.get(rel, {})
        for section, keys in sections.items():
            for key, value in keys.items():
                if generated.get(section, {}).get(key) != value and \
                        rendered.configs.get(rel, {}).get(section, {}).get(key) == value:
                    origin = edits.origin.get(rel)
                    report.kept_edits.append(f"{rel} [{section}] {key}"
                                             + (f" (from {origin})" if origin else ""))
    return report, files, renamed


def _assumed_record(target: Path) -> dict:
    """No record (an old pipeline, or one copied without it): every value may be an edit."""
    configs = {p.relative_to(target).as_posix(): {}
               for p in [target / "nb2prod.ini", *sorted(target.glob("stage-*/config.ini"))]
               if p.is_file()}
    stage_dirs = sorted(p.name for p in target.glob("stage-*") if p.is_dir())
    return {"configs": configs, "assumed_stage_dirs": stage_dirs}


# -- what to write ---------------------------------------------------------------------------
def _stale_files(target: Path, files: dict[str, bytes], record: dict) -> list[str]:
    """Generated files that are missing or differ on disk, and ones no longer generated."""
    stale = []
    for rel, data in sorted(files.items()):
        if rel == RECORD_FILE:
            continue  # bookkeeping: an out-of-date record is not a stale pipeline
        path = target / rel
        if not path.is_file() or path.read_bytes() != data:
            stale.append(rel)
    stale += sorted(rel for rel in record.get("files", {})
                    if rel not in files and (target / rel).exists())
    return stale


def _tree(directory: Path) -> list[Path]:
    """Files under `directory` (symlinks not followed, caches left out)."""
    if directory.is_file() or directory.is_symlink():
        return [directory]
    found = []
    for root, dirs, names in os.walk(directory):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        found += [Path(root) / n for n in names]
        found += [Path(root) / d for d in dirs if (Path(root) / d).is_symlink()]
    return sorted(found)


#: What older layouts generated and this one does not: always nb2prod's, never carried over
#: as the user's (a stage dir's `nb2prod_runtime.py` would shadow `<pipeline>/nb2prod_runtime/`).
_LEGACY = re.compile(r"^stage-[^/]+/nb2prod_runtime\.py$")


def _plan(target: Path, files: dict[str, bytes], record: dict, renamed: dict[str, str],
          report: Report) -> writer.Plan:
    """Generated files, the user's files carried over, edited generated files backed up."""
    plan = writer.Plan(files=files, stamp=time.strftime("%Y%m%dT%H%M%S"))
    if not target.exists():
        return plan
    known = {rel for rel in record.get("files", {})} | set(files)
    moved = {old: new for new, old in renamed.items()}
    new_tops = {rel.split("/", 1)[0] for rel in files}
    assumed = set(record.get("assumed_stage_dirs", []))  # no record: whole dirs are ours
    tops = {rel.split("/", 1)[0] for rel in known} | set(moved) | assumed
    stage_tops = sorted(t for t in tops if t.startswith("stage-"))
    plan.entries = stage_tops + sorted(t for t in tops if not t.startswith("stage-"))
    for top in plan.entries:
        entry = target / top
        if entry.is_symlink():
            raise UserError(Problem(f"{top} is a symlink; split replaces this generated "
                                    "entry: remove the link", file=str(report.output)))
        if not entry.exists():
            continue
        for path in _tree(entry):
            rel = path.relative_to(target).as_posix()
            if rel in known or _LEGACY.match(rel) or (
                    top in assumed and top not in new_tops | set(moved)):
                data = path.read_bytes() if path.is_file() and not path.is_symlink() else None
                if data is not None and rel != RECORD_FILE and data != files.get(rel) and \
                        file_digest(record, rel) != digest(data):  # the record is ours
                    plan.backups[rel] = path  # a generated file the user edited
                    report.backed_up.append(rel)
                continue
            head, _, rest = rel.partition("/")
            new_rel = f"{moved[head]}/{rest}" if head in moved and rest else rel
            if new_rel in files:
                plan.backups[rel] = path  # the user's file where one is generated now
                report.backed_up.append(rel)
                continue
            plan.carried[new_rel] = path
    for top in stage_tops:
        if top in new_tops or top in moved:
            continue
        kept = sorted(rel for rel in plan.carried if rel.startswith(top + "/"))
        if kept:
            report.orphans.append(f"{top}/ is no longer a stage; kept for your files: "
                                  + ", ".join(rel.split("/", 1)[1] for rel in kept))
    return plan
