"""Write a pipeline directory: one split at a time, crash-safe, run history in place.

Why it works this way:

* Run history and artifacts live in `DIR/.nb2prod/`; they can be large and are
  precious, so a split never moves them.  Only the entries split generates at
  the top of DIR (nb2prod.ini, the split record, the stage directories) are
  replaced, each by two renames.
* The new version of those entries is first staged complete under
  `DIR/.nb2prod/split-*/new/` (on DIR's own filesystem, also when DIR is a
  symlink to another one, so every rename is atomic).  Then a `COMMIT` file
  lists the swaps.  A split killed before COMMIT leaves the old pipeline
  untouched; one killed after it is finished ("rolled forward") by the next
  split.  Either way the pipeline is the old one or the new one, never a mix,
  once the next split has run, and `load_pipeline` refuses a half-swapped one.
* A first split (DIR does not exist) builds `.DIR.tmp-*` beside DIR and renames
  it into place; a leftover of a killed one holds nothing but generated files
  and is removed by the next split.  Leftovers of older nb2prod versions that
  moved history into such directories are moved back, or reported.
* An exclusive `flock` on DIR's parent directory serialises splits into DIR:
  the second waits (the CLI) or fails with one line (the JupyterLab handler).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from nb2prod import faults
from nb2prod.errors import Problem, UserError

STATE_DIR = ".nb2prod"
STAGING_GLOB = ("split-*", ".nb2prod-split-*")
COMMIT = "COMMIT"
#: State-dir entries that are split's own bookkeeping, not run history.
SPLIT_OWN = ("split.json", "split.lock")


@dataclass
class Plan:
    """What a split writes: new top-level entries, carried files, backups."""

    files: dict[str, bytes] = field(default_factory=dict)  # rel path -> content
    carried: dict[str, Path] = field(default_factory=dict)  # rel path -> existing file to keep
    backups: dict[str, Path] = field(default_factory=dict)  # rel path -> file to back up
    entries: list[str] = field(default_factory=list)  # top-level names replaced or removed
    stamp: str = ""  # backup directory name


# -- paths --------------------------------------------------------------------------------
def real_output(output: Path) -> Path:
    """The directory a split writes into: `output`, or what a symlink there points at.

    Refused with one line: a dangling symlink, a parent that is a file.
    """
    if output.is_symlink():
        if not output.exists():
            raise UserError(Problem(f"is a symlink to a missing path ({os.readlink(output)}); "
                                    "remove it or point it at a directory", file=str(output)))
        return output.resolve()
    absolute = Path(os.path.abspath(output))
    for ancestor in absolute.parents:
        if ancestor.exists():
            if not ancestor.is_dir():
                raise UserError(Problem(f"{ancestor} is not a directory", file=str(output)))
            break
    return absolute


def make_parents(target: Path, shown: Path) -> None:
    """Create the missing parents of `target` (errors as one line naming `shown`)."""
    with os_errors(shown):
        target.parent.mkdir(parents=True, exist_ok=True)
        if not os.access(target.parent, os.W_OK) and not target.exists():
            raise PermissionError(errno.EACCES, "permission denied", str(target.parent))


@contextlib.contextmanager
def os_errors(shown: Path) -> Iterator[None]:
    """Turn an OSError (read-only directory, full disk) into one line naming the path."""
    try:
        yield
    except OSError as exc:
        where = exc.filename or shown
        raise UserError(Problem(f"cannot write {where}: {exc.strerror or exc}",
                                file=str(shown))) from None


# -- the lock ------------------------------------------------------------------------------
@contextlib.contextmanager
def locked(target: Path, shown: Path, wait: bool = True,
           on_wait: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold an exclusive lock for writing `target` (a flock on its parent directory)."""
    fd = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            message = f"another nb2prod split is writing {shown}"
            if not wait:
                raise UserError(Problem(f"{message}; try again when it has finished",
                                        file=str(shown))) from None
            if on_wait:
                on_wait(f"{message}; waiting for it to finish")
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:
            pass  # a filesystem without flock: proceed unlocked, as before locks existed
        yield
    finally:
        os.close(fd)


# -- writing -------------------------------------------------------------------------------
def write(target: Path, plan: Plan) -> None:
    """Put `plan` into `target` (call with the lock held, after `recover`)."""
    if target.exists():
        _write_in_place(target, plan)
    else:
        _write_fresh(target, plan)


def _write_fresh(target: Path, plan: Plan) -> None:
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        _mode_of_mkdir(tmp)
        _populate(tmp, plan)
        faults.point("fresh-staged")
        tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _mode_of_mkdir(tmp: Path) -> None:
    """Give mkdtemp's directory (0700) the mode a plain `mkdir` gets under the user's umask.

    It becomes the pipeline directory; probed with a subdirectory, since reading the umask
    means setting it, which races with other threads (the JupyterLab server's).
    """
    probe = tmp / ".mode-probe"
    probe.mkdir()
    mode = probe.stat().st_mode & 0o7777
    probe.rmdir()
    os.chmod(tmp, mode)


def _staging_parent(target: Path) -> Path:
    """`.nb2prod/` when it is on the pipeline's filesystem (renames stay atomic), else DIR."""
    state = target / STATE_DIR
    state.mkdir(exist_ok=True)
    same = state.stat().st_dev == target.stat().st_dev and not state.is_symlink()
    return state if same else target


def _write_in_place(target: Path, plan: Plan) -> None:
    parent = _staging_parent(target)
    prefix = "split-" if parent.name == STATE_DIR else ".nb2prod-split-"
    staging = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    try:
        _populate(staging / "new", plan)
        for rel, source in plan.backups.items():
            _carry(source, staging / "backup" / rel)
        faults.point("staged")
        journal = {"entries": plan.entries, "backup": plan.stamp}
        (staging / f"{COMMIT}.part").write_text(json.dumps(journal))
        (staging / f"{COMMIT}.part").rename(staging / COMMIT)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    faults.point("committed")
    _roll_forward(target, staging)


def _populate(root: Path, plan: Plan) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for rel, data in plan.files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    for rel, source in plan.carried.items():
        _carry(source, root / rel)


def _carry(source: Path, target: Path) -> None:
    """Keep a file: a hard link where possible (no copy of big data), else a copy."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if source.is_symlink():
        os.symlink(os.readlink(source), target)
        return
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def _roll_forward(target: Path, staging: Path) -> None:
    """Do (or finish) the swaps COMMIT lists; idempotent, so a killed run can be resumed."""
    journal = json.loads((staging / COMMIT).read_text())
    new, trash = staging / "new", staging / "trash"
    trash.mkdir(exist_ok=True)
    for number, name in enumerate(journal["entries"], start=1):
        fresh, current, old = new / name, target / name, trash / name
        if os.path.lexists(fresh):
            if os.path.lexists(current) and not os.path.lexists(old):
                current.rename(old)
            fresh.rename(current)
        elif os.path.lexists(current) and not os.path.lexists(old):
            current.rename(old)  # an entry no longer generated
        faults.point(f"swapped-{number}")
    backup = staging / "backup"
    if backup.is_dir() and journal.get("backup"):
        keep = target / STATE_DIR / "backup" / journal["backup"]
        keep.parent.mkdir(parents=True, exist_ok=True)
        if not keep.exists():
            backup.rename(keep)
    legacy = target / STATE_DIR / "split.json"
    if legacy.is_file():
        legacy.unlink()
    faults.point("swapped-all")
    shutil.rmtree(staging, ignore_errors=True)


# -- recovery ------------------------------------------------------------------------------
def pending_split(target: Path) -> Path | None:
    """A committed but unfinished split of `target` (the pipeline is half-swapped)."""
    for parent in (target / STATE_DIR, target):
        for pattern in STAGING_GLOB:
            for staging in parent.glob(pattern):
                if (staging / COMMIT).is_file():
                    return staging
    return None


def recover(target: Path) -> list[str]:
    """Finish or remove what killed splits left; say what was done (call with the lock)."""
    notes: list[str] = []
    for leftover in _beside(target, "old") + _beside(target, "tmp"):
        notes += _recover_beside(target, leftover)
    if not target.is_dir():
        return notes
    for parent in (target / STATE_DIR, target):
        for pattern in STAGING_GLOB:
            for staging in sorted(parent.glob(pattern)):
                if not staging.is_dir() or staging.is_symlink():
                    continue
                if (staging / COMMIT).is_file():
                    _roll_forward(target, staging)
                    notes.append(f"finished an interrupted split of {target}")
                else:
                    shutil.rmtree(staging, ignore_errors=True)
                    notes.append(f"removed {staging.name}, left by an interrupted split")
    return notes


def _beside(target: Path, kind: str) -> list[Path]:
    return sorted(p for p in target.parent.glob(f".{target.name}.{kind}-*")
                  if p.is_dir() and not p.is_symlink())


def _history(directory: Path) -> list[Path]:
    state = directory / STATE_DIR
    if not state.is_dir():
        return []
    return sorted(e for e in state.iterdir()
                  if e.name not in SPLIT_OWN and not e.name.startswith("split-"))


def _recover_beside(target: Path, leftover: Path) -> list[str]:
    """A `.DIR.tmp-*` / `.DIR.old-*`: removed, history in it moved back first."""
    if not target.exists() and leftover.name.startswith(f".{target.name}.old-"):
        leftover.rename(target)  # killed between the two renames of an old-style swap
        return [f"restored {target} from {leftover.name}, left by an interrupted split"]
    history = _history(leftover)
    kept = []
    for entry in history:
        home = target / STATE_DIR / entry.name
        if target.is_dir() and not os.path.lexists(home):
            home.parent.mkdir(exist_ok=True)
            entry.rename(home)
        else:
            kept.append(entry.name)
    if kept:
        return [(f"{leftover} (left by an interrupted split) holds run history that is also "
                 f"in {target}/{STATE_DIR} ({', '.join(kept)}): merge or delete it by hand")]
    shutil.rmtree(leftover, ignore_errors=True)
    moved = f"; moved its run history back into {target}/{STATE_DIR}" if history else ""
    return [f"removed {leftover.name}, left by an interrupted split{moved}"]
