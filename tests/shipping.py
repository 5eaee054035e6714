"""Test helper: the runtime written into a directory exactly as split ships it."""

from __future__ import annotations

from pathlib import Path

from nb2prod.runtime_copy import runtime_files


def ship_runtime(directory: Path) -> Path:
    """`directory/nb2prod_runtime/` (a pipeline dir, or a stage dir as in a pod)."""
    for rel, data in runtime_files().items():
        (directory / rel).parent.mkdir(parents=True, exist_ok=True)
        (directory / rel).write_bytes(data)
    return directory
