"""The content of a file or directory tree as one digest, fast on a re-run.

The stage cache keys a stage by the data behind its path parameters
(`DATA_DIR=/mnt/data`): a file by its sha256, a directory by the sha256 over
its files' relative names (sorted) and their sha256s.  Symlinks are followed;
a directory reached again through a link to one of its ancestors is marked, not
walked (no endless loop), a dangling link or a FIFO is marked, never opened; a glob pattern
(`/mnt/data/*.csv`) that names no path itself is described by its matches.
An entry that cannot be read makes the path `Unreadable`: the stage then is not
cached, since what it would read is unknown.

Reading a large data directory on every run would make the cache slow where it
should be fast, so each file's sha256 is memoised by (device, inode, size,
mtime_ns, ctime_ns), as git's index does, in a small per-user file
(`$XDG_CACHE_HOME/nb2prod/file-digests.json`, written atomically; a pod's is
gone with the pod).  A write that changes neither size nor mtime still moves
ctime; and like git's "racily clean" entries, a file changed within
`RACY_NS` of the moment it was hashed is never memoised (a second write in the
same timestamp tick would look unchanged), so it is read again next time.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import stat
import threading
import time
from pathlib import Path

from .stores import replace_file

#: Files older than this when hashed are memoised (timestamp granularity, with room).
RACY_NS = 2_000_000_000
#: A tree with more files is not hashed (a parameter naming `/` or $HOME): not cached.
MAX_FILES = 100_000  # entries: files, directories, links
#: At most this many digests are kept (the ones used by this process win).
MAX_MEMO = 200_000
_CHUNK = 1 << 20
#: Kernel file systems: their "files" may block when read (/proc/kmsg) or never end.
VIRTUAL = ("/proc", "/sys", "/dev")


class Unreadable(Exception):
    """The content behind a path cannot be known; `str()` says which entry and why."""


def _memo_path() -> Path:
    """`NB2PROD_DIGEST_MEMO` names the file itself: a test suite (or a CI job) keeps
    its memo away from the user's ~/.cache without moving XDG_CACHE_HOME, which other
    libraries (matplotlib's font cache) also live in."""
    if os.environ.get("NB2PROD_DIGEST_MEMO"):
        return Path(os.environ["NB2PROD_DIGEST_MEMO"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "nb2prod" / "file-digests.json"


def _signature(st: os.stat_result) -> list[int]:
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


class DigestMemo:
    """sha256 of files by path and stat signature; `save` merges into the file on disk.

    Shared by the threads of one process (a local run keys stages in parallel).
    """

    def __init__(self, path: Path | None = None, clock=time.time_ns) -> None:
        self.path = _memo_path() if path is None else path
        self.clock = clock
        self.hashed = 0  # files read (not found in the memo) by this object
        self._entries: dict[str, list] | None = None
        self._new: dict[str, list] = {}
        self._lock = threading.Lock()
        self._saving = threading.Lock()  # one merge-and-replace at a time in this process

    def _load(self) -> dict[str, list]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            files = data.get("files") if isinstance(data, dict) and data.get("schema") == 1 \
                else None
            return files if isinstance(files, dict) else {}
        except (OSError, ValueError):
            return {}

    def digest(self, path: str, st: os.stat_result) -> str:
        """The sha256 of regular file `path` whose `os.stat` is `st`."""
        sig = _signature(st)
        with self._lock:
            if self._entries is None:
                self._entries = self._load()
            known = self._new.get(path) or self._entries.get(path)
        if isinstance(known, list) and known[:5] == sig and isinstance(known[5], str):
            return known[5]
        started = self.clock()
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            while chunk := fh.read(_CHUNK):
                digest.update(chunk)
        after = os.stat(path)
        value = digest.hexdigest()
        with self._lock:
            self.hashed += 1
            if _signature(after) == sig and max(sig[3], sig[4]) + RACY_NS < started:
                self._new[path] = [*sig, value]
        return value

    def save(self) -> None:
        """Merge this process's new digests into the file (best effort, atomic)."""
        with self._lock:
            if not self._new:
                return
            new, self._new = self._new, {}
            if self._entries is not None:
                self._entries.update(new)
        with self._saving:
            self._replace(new)

    def _replace(self, new: dict[str, list]) -> None:
        entries = {**self._load(), **new}
        if len(entries) > MAX_MEMO:
            entries = dict(list(entries.items())[-MAX_MEMO:])  # newest insertions last
        with contextlib.suppress(OSError):
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            replace_file(self.path, json.dumps({"schema": 1, "files": entries},
                                               separators=(",", ":")).encode("utf-8"),
                         mode=0o600)


_shared: DigestMemo | None = None
_shared_lock = threading.Lock()


def shared_memo() -> DigestMemo:
    """The process's memo over the per-user file (created on first use)."""
    global _shared
    with _shared_lock:
        if _shared is None or _shared.path != _memo_path():
            _shared = DigestMemo()
        return _shared


def describe_path(path: str, memo: DigestMemo) -> dict:
    """{"kind": "file"|"dir"|"glob"|"missing"|"special", "sha256"?, "entries"?} of `path`
    (symlinks followed); raises `Unreadable`.

    A path that does not exist but is a glob pattern (`/mnt/data/*.csv`, what
    `glob.glob(DATA_GLOB)` would read) is described by its matches, each as a path.
    """
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        if glob.has_magic(path):
            return _describe_glob(path, memo)
        return {"kind": "missing"}
    except OSError as exc:
        raise Unreadable(f"{path} cannot be read ({exc.strerror or exc})") from None
    _refuse_virtual(path)
    if stat.S_ISREG(st.st_mode):
        return {"kind": "file", "sha256": _file_digest(path, st, memo)}
    if not stat.S_ISDIR(st.st_mode):
        return {"kind": "special"}
    lines: list[str] = []
    _walk(path, "", memo, lines, [(st.st_dev, st.st_ino)])
    tree = hashlib.sha256("".join(lines).encode("utf-8", "surrogateescape")).hexdigest()
    return {"kind": "dir", "sha256": tree, "entries": len(lines)}


def _describe_glob(pattern: str, memo: DigestMemo) -> dict:
    matches = sorted(glob.glob(pattern, recursive=True))
    if len(matches) > MAX_FILES:
        raise Unreadable(f"{pattern} matches more than {MAX_FILES} paths")
    lines = [f"{m}\0{json.dumps(describe_path(m, memo), sort_keys=True)}\n" for m in matches]
    tree = hashlib.sha256("".join(lines).encode("utf-8", "surrogateescape")).hexdigest()
    return {"kind": "glob", "sha256": tree, "entries": len(lines)}


def _refuse_virtual(path: str) -> None:
    real = os.path.realpath(path)
    if any(real == root or real.startswith(root + "/") for root in VIRTUAL):
        raise Unreadable(f"{path} is on a kernel file system ({real})")


def _file_digest(path: str, st: os.stat_result, memo: DigestMemo) -> str:
    try:
        return memo.digest(path, st)
    except OSError as exc:
        raise Unreadable(f"{path} cannot be read ({exc.strerror or exc})") from None


def _walk(directory: str, rel: str, memo: DigestMemo, lines: list[str],
          ancestors: list[tuple[int, int]]) -> None:
    """Append `rel-name NUL kind NUL sha256 LF` for every entry under `directory`, sorted."""
    try:
        with os.scandir(directory) as it:
            names = sorted(entry.name for entry in it)
    except OSError as exc:
        raise Unreadable(f"{directory} cannot be read ({exc.strerror or exc})") from None
    for name in names:
        full, sub = os.path.join(directory, name), f"{rel}{name}"
        if len(lines) >= MAX_FILES:
            raise Unreadable(f"{directory} holds more than {MAX_FILES} entries")
        try:
            child = os.stat(full)
        except (FileNotFoundError, NotADirectoryError):
            lines.append(f"{sub}\0missing\0\n")  # a dangling link: its target may appear
            continue
        except OSError as exc:
            raise Unreadable(f"{full} cannot be read ({exc.strerror or exc})") from None
        if stat.S_ISREG(child.st_mode):
            lines.append(f"{sub}\0file\0{_file_digest(full, child, memo)}\n")
        elif stat.S_ISDIR(child.st_mode):
            ident = (child.st_dev, child.st_ino)
            if ident in ancestors:  # a link back up the tree
                lines.append(f"{sub}\0loop\0\n")
                continue
            lines.append(f"{sub}/\0dir\0\n")
            _refuse_virtual(full)
            _walk(full, f"{sub}/", memo, lines, [*ancestors, ident])
        else:
            lines.append(f"{sub}\0special\0\n")
