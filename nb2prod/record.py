"""The split record: what split generated last time, so the next split can tell edits apart.

It lives in `nb2prod.split.json` at the pipeline's root and is meant to be
committed with the pipeline (unlike `.nb2prod/`, the ignorable local state):
in a fresh clone, `split --force` still knows which config values the user
edited.  It holds, per generated file, a short hash; per `.ini`, the values and
the comment lines split generated; per stage, its directory and a hash of each
of its cells, so that edits follow a stage that was renamed or renumbered.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from nb2prod.analysis import Analysis
from nb2prod.errors import Problem, UserError
from nb2prod.pipeline import read_ini

RECORD_FILE = "nb2prod.split.json"
LEGACY_RECORD = ".nb2prod/split.json"
FORMAT = 2
Config = dict[str, dict[str, str]]


def digest(data: bytes) -> str:
    """A short content hash: enough to notice an edit, short enough to diff."""
    return hashlib.sha256(data).hexdigest()[:16]


def read_record(target: Path) -> dict:
    """The record of the last split into `target` (empty when there is none)."""
    for rel in (RECORD_FILE, LEGACY_RECORD):
        path = target / rel
        if not path.is_file():
            continue
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise UserError(Problem(f"unreadable split record ({exc}; a merge conflict?): fix "
                                    "it, or delete it to treat every file as generated",
                                    file=str(path))) from None
        if not isinstance(record, dict):
            raise UserError(Problem("unreadable split record (not a JSON object): fix it, or "
                                    "delete it", file=str(path)))
        return record
    return {}


def record_bytes(analysis: Analysis, files: dict[str, bytes], configs: dict[str, Config],
                 comments: dict[str, list[str]]) -> bytes:
    """The record of this split: deterministic, so committing it shows real changes only."""
    record = {
        "format": FORMAT,
        "stages": [{"name": s.name, "directory": s.directory, "type": s.type,
                    "cells": [cell_digest(analysis, i) for i in s.cells]}
                   for s in analysis.stages],
        "files": {rel: digest(data) for rel, data in sorted(files.items())},
        "configs": configs,
        "comments": comments,
    }
    return (json.dumps(record, indent=1, sort_keys=True) + "\n").encode()


def cell_digest(analysis: Analysis, index: int) -> str:
    source = next(c.source for c in analysis.notebook.cells if c.index == index)
    return digest(source.encode())[:12]


def file_digest(record: dict, rel: str) -> str | None:
    """The recorded hash of `rel`; older records kept full sha256 hashes."""
    value = record.get("files", {}).get(rel)
    return value[:16] if isinstance(value, str) else None


# -- which old stage is which new stage ----------------------------------------------------
def _old_stages(record: dict) -> list[dict]:
    if isinstance(record.get("stages"), list):
        return [s for s in record["stages"] if isinstance(s, dict) and "directory" in s]
    stages = []  # a format-1 record: stage directories from its config paths
    for rel, config in record.get("configs", {}).items():
        if rel.endswith("/config.ini"):
            directory = rel.split("/", 1)[0]
            stages.append({"directory": directory, "cells": [],
                           "name": config.get("default", {}).get("NAME", directory),
                           "type": config.get("default", {}).get("STAGE_TYPE", "")})
    return sorted(stages, key=lambda s: _position(s["directory"]))


def _position(directory: str) -> int:
    match = re.match(r"stage-(\d+)-", directory)
    return int(match.group(1)) if match else 0


def match_stages(record: dict, analysis: Analysis) -> dict[str, str]:
    """New stage directory -> old one: same name, else the same cells, else same position."""
    old = _old_stages(record)
    mapping: dict[str, str] = {}
    free = list(old)
    new = analysis.stages
    cells = {s.directory: {cell_digest(analysis, i) for i in s.cells} for s in new}

    def take(stage, candidate) -> None:
        mapping[stage.directory] = candidate["directory"]
        free.remove(candidate)

    for stage in new:
        same = [o for o in free if o.get("name") == stage.name]
        if same:
            take(stage, same[0])
    for stage in new:
        if stage.directory in mapping:
            continue
        shared = [(len(cells[stage.directory] & set(o.get("cells", []))), o) for o in free]
        best = max(shared, key=lambda pair: pair[0], default=(0, None))
        if best[0]:
            take(stage, best[1])
    for index, stage in enumerate(new):
        if stage.directory in mapping:
            continue
        at = [o for o in free if _position(o["directory"]) == index + 1
              and o.get("type") in (stage.type, "")]
        if at:
            take(stage, at[0])
    return mapping


# -- the user's edits ----------------------------------------------------------------------
@dataclass
class Edits:
    """Config values and comments the user changed, keyed by the new file's path."""

    values: dict[str, Config] = field(default_factory=dict)
    comments: dict[str, str] = field(default_factory=dict)  # new rel -> on-disk text
    origin: dict[str, str] = field(default_factory=dict)  # new rel -> old rel, if renamed


def user_edits(target: Path, record: dict, renamed: dict[str, str]) -> Edits:
    """Values in the on-disk .ini files that differ from what the record says we wrote."""
    edits = Edits()
    new_of_old = {old: new for new, old in renamed.items()}
    for rel, generated in record.get("configs", {}).items():
        path = target / rel
        if not path.is_file():
            continue
        top, _, rest = rel.partition("/")
        new_rel = f"{new_of_old[top]}/{rest}" if rest and top in new_of_old else rel
        if rest and top not in new_of_old:
            continue  # a stage that is gone: its file is backed up, not merged
        if new_rel != rel:
            edits.origin[new_rel] = rel
        try:
            edits.comments[new_rel] = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            pass  # read_ini below names the file
        for section, items in read_ini(path).items():
            for key, value in items.items():
                if generated.get(section, {}).get(key) != value:
                    edits.values.setdefault(new_rel, {}).setdefault(section, {})[key] = value
    return edits


# -- comments the user wrote into an .ini ---------------------------------------------------
_SECTION = re.compile(r"\s*\[([^\]]+)\]")
_KEY = re.compile(r"([^=:\s;#][^=:]*?)\s*[=:]")
_INLINE = re.compile(r"\s[;#]")


def _is_comment(line: str) -> bool:
    return line.strip().startswith((";", "#"))


def comment_digests(text: str) -> list[str]:
    """Hashes of the comment lines split generated (so they are never taken as the user's)."""
    return sorted({digest(line.strip().encode())[:8] for line in text.splitlines()
                   if _is_comment(line)})


def _walk(text: str):
    """(section, key or None, line, kind) for each line; kind: comment|section|key|other."""
    section = None
    for line in text.splitlines():
        if _is_comment(line):
            yield section, None, line, "comment"
        elif (m := _SECTION.match(line)) and not line.startswith((" ", "\t")):
            section = m.group(1).strip()
            yield section, None, line, "section"
        elif (m := _KEY.match(line)) and not line.startswith((" ", "\t")):
            yield section, m.group(1).strip(), line, "key"
        else:
            yield section, None, line, "other"


def keep_comments(generated: str, on_disk: str, ours: set[str]) -> str:
    """`generated` with the comments the user added to `on_disk` put back where they were.

    A comment block goes before the key (or section header) that followed it; an
    inline `; comment` after a value stays on that key's line; a block whose
    anchor is gone goes to the end.
    """
    ours = ours | set(comment_digests(generated))
    blocks: dict[tuple, list[str]] = {}
    inline: dict[tuple, str] = {}
    pending: list[str] = []
    for section, key, line, kind in _walk(on_disk):
        if kind == "comment":
            if digest(line.strip().encode())[:8] not in ours:
                pending.append(line)
            continue
        if kind == "key":
            match = _INLINE.search(line)
            if match:
                inline[(section, key)] = line[match.start():].rstrip()
        if kind in ("key", "section") and pending:
            blocks.setdefault((section, key), []).extend(pending)
            pending = []
    out: list[str] = []
    for section, key, line, kind in _walk(generated):
        if kind in ("key", "section"):
            out += blocks.pop((section, key), [])
        if kind == "key" and (section, key) in inline and not _INLINE.search(line):
            line += inline[(section, key)]
        out.append(line)
    leftover = [line for lines in blocks.values() for line in lines] + pending
    text = "\n".join(out + leftover)
    return text + "\n" if generated.endswith("\n") else text
