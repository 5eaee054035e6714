"""The runtime's exceptions (what a stage's failure message is made of) and their one-line
texts."""

from __future__ import annotations

import json


# -- errors ------------------------------------------------------------------------
class ArtifactError(Exception):
    """Base of every runtime error; the message is one line fit for a stage log."""


class ArtifactIntegrityError(ArtifactError):
    """A stored artifact's bytes do not match the sha256/size in its manifest.

    Raised instead of deserializing, because unpickling corrupted or swapped bytes
    either fails obscurely or, worse, silently hands a stage the wrong model.
    """


class ManifestSignatureError(ArtifactIntegrityError):
    """A manifest is unsigned or wrongly signed while ``NB2PROD_SIGNING_KEY`` is set."""


class ArtifactNotFoundError(ArtifactError, FileNotFoundError):
    """A manifest or artifact is missing (e.g. the producer stage never ran)."""


class ArtifactVersionWarning(UserWarning):
    """An artifact was written with a different library version than the reader has."""


# -- run-stage ------------------------------------------------------------------------
def first_line(source: str, limit: int = 60) -> str:
    """A cell's first non-blank line, shortened: what a user recognises the cell by."""
    line = next((text.strip() for text in source.splitlines() if text.strip()), "")
    return line if len(line) <= limit else line[: limit - 1].rstrip() + "…"


def cell_label(index: int, line: str | None = None) -> str:
    """How messages name a cell: `cell 5 ("model.fit(X, y)")`.

    `index` counts from 0 over all cells, markdown included (nbformat's order); users see
    the number JupyterLab's status bar shows ("Cell 5/9"), which counts the same cells
    from 1, and the first line of the cell's source, which survives cells moving.
    """
    quoted = f" ({json.dumps(line, ensure_ascii=False)})" if line else ""
    return f"cell {index + 1}{quoted}"


def _first_line(exc: BaseException) -> str:
    """An exception's first line (its repr when it has no text), for result records."""
    return str(exc).splitlines()[0] if str(exc) else repr(exc)


def _one_line(exc: BaseException) -> str:
    """An exception's whole text on one line (its type when it has none), for stderr."""
    return str(exc).replace("\n", " ") or type(exc).__name__
