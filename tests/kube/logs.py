"""Container logs kept the way the CRI does: one timestamped record per line.

Records carry their RFC 3339 timestamp (for ``timestamps``/``sinceTime``) and
a partial-line flag (output not ending in a newline), so the API can render
``kubectl logs`` output faithfully, including while ``follow`` streams.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from .util import iso_nano


@dataclass(frozen=True)
class LogRecord:
    """One line of container output."""

    timestamp: str
    partial: bool
    data: bytes

    def render(self, timestamps: bool) -> bytes:
        """The bytes the log endpoint returns for this record."""
        prefix = self.timestamp.encode() + b" " if timestamps else b""
        return prefix + self.data + (b"" if self.partial else b"\n")


class LogFile:
    """Append-only log of one container instance, readable while being written."""

    def __init__(self, path: Path, streams: int = 2) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._file = path.open("ab")
        self._cond = threading.Condition()
        self._open_streams = streams
        self.closed = False

    def append(self, data: bytes, partial: bool = False) -> None:
        """Add one record (``data`` must not contain a newline)."""
        with self._cond:
            self._file.write(f"{iso_nano()} {'P' if partial else 'F'} ".encode() + data + b"\n")
            self._file.flush()
            self._cond.notify_all()

    def stream_done(self) -> None:
        """One of stdout/stderr reached EOF; the log is finished when both have."""
        with self._cond:
            self._open_streams -= 1
            if self._open_streams <= 0 and not self.closed:
                self.closed = True
                self._file.close()
            self._cond.notify_all()

    def finished(self) -> bool:
        """Whether no more output can arrive (the container instance ended)."""
        return self.closed

    def wait(self, timeout: float) -> None:
        """Block until new output or the end of the log (or timeout)."""
        with self._cond:
            if not self.closed:
                self._cond.wait(timeout)

    def read(self, offset: int) -> tuple[list[LogRecord], int]:
        """Complete records after byte ``offset`` and the offset after them."""
        with self._cond, self.path.open("rb") as fh:
            fh.seek(offset)
            raw = fh.read()
        end = raw.rfind(b"\n") + 1
        records = []
        for line in raw[:end].split(b"\n")[:-1]:
            ts, flag, data = line.split(b" ", 2)
            records.append(LogRecord(ts.decode(), flag == b"P", data))
        return records, offset + end

    def tail_text(self, lines: int = 80, limit: int = 2048) -> str:
        """The last ``limit`` bytes of the last ``lines`` lines of output, as the kubelet takes them
        for FallbackToLogsOnError termination messages."""
        records, _ = self.read(0)
        return b"".join(r.render(False) for r in records[-lines:])[-limit:].decode(errors="replace")


def pump(stream: IO[bytes], log: LogFile) -> None:
    """Copy a process pipe into ``log`` line by line until EOF (runs in its own thread)."""
    buf = b""
    try:
        while True:
            chunk = stream.read1(65536) if hasattr(stream, "read1") else stream.read(65536)
            if not chunk:
                break
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                log.append(line)
            if len(buf) >= 16384:  # the CRI flushes long partial lines too
                log.append(buf, partial=True)
                buf = b""
        if buf:
            log.append(buf, partial=True)
    finally:
        stream.close()
        log.stream_done()
