"""Where a stage reads and writes: the stage directory, its config.ini and the
`NB2PROD_*` environment, resolved per call; the input run pinned per process."""

from __future__ import annotations

import configparser
import os
from dataclasses import dataclass
from pathlib import Path

from .errors import ArtifactError, ArtifactNotFoundError
from .runs import read_latest
from .stores import (
    DEFAULT_STORE,
    LATEST,
    LATEST_JSON,
    MANUAL_RUN_ID,
    absolute_store_uri,
    open_store,
)


# -- context ------------------------------------------------------------------------
@dataclass(frozen=True)
class Context:
    """Where this stage reads and writes: resolved once per call from env + config.ini."""

    store: str          # absolute for file:// stores
    pipeline: str
    stage: str
    run_id: str
    input_run_id: str


def _env(name: str) -> str | None:
    value = os.environ.get(name, "").strip()
    return value or None


def _stage_dir() -> Path:
    """The stage directory: `NB2PROD_STAGE_DIR` (kernels in a working directory, services),
    else the cwd (papermill and `run-stage` run there).

    The runtime sits beside the stage directories (`<pipeline>/nb2prod_runtime/`), so
    its own location says nothing about which stage it serves.
    """
    explicit = _env("NB2PROD_STAGE_DIR")  # set for kernels running in a working directory
    if explicit and (Path(explicit) / "config.ini").is_file():
        return Path(explicit)
    cwd = Path.cwd()
    if (cwd / "config.ini").is_file():
        return cwd
    return cwd


def _config(stage_dir: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(inline_comment_prefixes=(";", "#"), interpolation=None)
    path = stage_dir / "config.ini"
    if path.is_file():
        try:
            parser.read(path, encoding="utf-8")
        except configparser.Error as exc:
            raise ArtifactError(f"{path}: cannot parse: {exc}".replace("\n", " ")) from None
    return parser


_PINNED_LATEST: dict[tuple[str, str], str] = {}


def _resolve_input_run_id(store_uri: str, pipeline: str, refresh: bool = False) -> str:
    explicit = _env("MODEL_RUN_ID") or _env("NB2PROD_INPUT_RUN_ID") or _env("NB2PROD_RUN_ID")
    if explicit and explicit != LATEST:
        return explicit
    if not pipeline:
        if explicit == LATEST:
            raise ArtifactError("run id 'latest' requested but the pipeline name is unknown "
                                "(set NB2PROD_PIPELINE or [default] PIPELINE in config.ini)")
        return MANUAL_RUN_ID
    # Pin the answer for the life of the process: every load() of one stage (and
    # every request of a server) must read the same run even if a scheduled run
    # moves latest.json meanwhile.
    pin = (store_uri, pipeline)
    if pin in _PINNED_LATEST and not refresh:
        return _PINNED_LATEST[pin]
    latest = read_latest(store_uri, pipeline)
    if latest is None:
        if explicit == LATEST:
            raise ArtifactNotFoundError(
                f"run id 'latest' requested but no run of pipeline '{pipeline}' was promoted "
                f"yet ({open_store(store_uri).url(pipeline + '/' + LATEST_JSON)} missing)")
        return MANUAL_RUN_ID
    _PINNED_LATEST[pin] = latest["run_id"]
    return latest["run_id"]


def _base_context() -> tuple[str, str, str, str]:
    stage_dir = _stage_dir()
    config = _config(stage_dir)
    store = (_env("NB2PROD_STORE") or config.get("artifacts", "STORE", fallback="").strip()
             or DEFAULT_STORE)
    store = absolute_store_uri(store, stage_dir)
    pipeline = _env("NB2PROD_PIPELINE") or config.get("default", "PIPELINE", fallback="").strip()
    stage = _env("NB2PROD_STAGE") or config.get("default", "NAME", fallback="").strip()
    run_id = _env("NB2PROD_RUN_ID") or MANUAL_RUN_ID
    return store, pipeline, stage, run_id


def context() -> Context:
    """The stage's context from ``NB2PROD_*`` env vars, defaulting to ./config.ini.

    Read on every call (cheap) so tests and long-lived servers see env changes;
    only the ``latest.json`` fallback for the input run is pinned per process.
    """
    store, pipeline, stage, run_id = _base_context()
    return Context(store, pipeline, stage, run_id, _resolve_input_run_id(store, pipeline))


def current_input_run_id(refresh: bool = False) -> str:
    """Run whose artifacts ``load`` reads.

    ``MODEL_RUN_ID``, else ``NB2PROD_INPUT_RUN_ID``, else ``NB2PROD_RUN_ID``, else
    the run ``latest.json`` points at, else ``manual``.  The value ``latest`` in
    any of the variables means "the promoted run" (an error if there is none).
    ``refresh`` re-reads latest.json instead of the per-process pinned answer.
    """
    store, pipeline, _, _ = _base_context()
    return _resolve_input_run_id(store, pipeline, refresh=refresh)


def _require(ctx: Context, what: str) -> None:
    missing = [(env, key) for env, key, value in (("NB2PROD_PIPELINE", "PIPELINE", ctx.pipeline),
                                                  ("NB2PROD_STAGE", "NAME", ctx.stage))
               if not value]
    if missing:
        raise ArtifactError(
            f"cannot {what}: {' and '.join(env for env, _ in missing)} not set and no "
            f"config.ini [default] {' / '.join(key for _, key in missing)} in {_stage_dir()}")
