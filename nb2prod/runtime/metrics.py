"""Run metrics, the sample request of a served model, and the promotion gate that
moves `latest.json`."""

from __future__ import annotations

import json
import math
import numbers
from typing import Any

from .errors import ArtifactNotFoundError
from .runs import _utcnow, read_run_metrics, write_latest
from .stores import (
    METRICS,
    RUN_JSON,
    Store,
    _stage_prefix,
    open_store,
    read_json,
    run_prefix,
    write_json,
)
from .values import _write_context


def _metric_value(value: Any) -> int | float | None:
    """A finite real number as int/float, else None (bools, strings, NaN, arrays...)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None  # numpy bool_ is not Real; numpy ints/floats are
    if isinstance(value, numbers.Integral):
        return int(value)
    number = float(value)
    return number if math.isfinite(number) else None


def record_metrics(values: dict[str, object]) -> dict:
    """Merge the real, finite numbers of ``values`` into the stage's metrics.json.

    The metrics cell passes every name the notebook's metrics cell referenced;
    non-numbers are dropped quietly rather than failing a finished stage.
    Returns what was recorded.
    """
    recorded = {}
    for name, value in values.items():
        number = _metric_value(value)
        if isinstance(name, str) and number is not None:
            recorded[name] = number
    if not recorded:
        return recorded
    ctx = _write_context("record metrics")
    store = open_store(ctx.store)
    key = f"{_stage_prefix(ctx.pipeline, ctx.run_id, ctx.stage)}/{METRICS}"
    current = read_json(store, key, default={})
    merged = {**(current if isinstance(current, dict) else {}), **recorded}
    write_json(store, key, merged, atomic=True)
    return recorded


SAMPLE_REQUEST = "sample_request.json"


def sample_rows(value: object, rows: int = 2, records: bool = False) -> list | None:
    """The first `rows` rows of `value` as plain JSON values (None when it has no rows).

    A DataFrame gives lists of values, or `{column: value}` records when `records`; a
    numpy array (anything with `shape` and `tolist`) its first rows; a list its first items.
    """
    if hasattr(value, "iloc") and hasattr(value, "to_json"):  # pandas
        head = value.iloc[:rows]
        if records and hasattr(head, "columns"):
            return json.loads(head.to_json(orient="records"))
        return json.loads(head.to_json(orient="values"))
    if hasattr(value, "shape") and callable(getattr(value, "tolist", None)):
        if not getattr(value, "shape", ()):
            return None
        return value[:rows].tolist()
    if isinstance(value, (list, tuple)) and value:
        return json.loads(json.dumps(list(value[:rows]), default=str))
    return None


def record_sample(value: object, key: str | None = None, records: bool = False) -> object:
    """Store a request the service can answer: the first rows of the data a model was fit on.

    `nb2prod run` prints it in its curl hint and sends it with `--smoke` (nb2prod.sample).
    Never fails the stage: a value with no rows, or one JSON cannot hold, records nothing.
    """
    try:
        rows = sample_rows(value, records=records)
        if not rows:
            return None
        payload = {key: rows} if key else rows
        json.dumps(payload, allow_nan=False)
    except (TypeError, ValueError):
        return None
    ctx = _write_context("record the sample request")
    key_path = f"{_stage_prefix(ctx.pipeline, ctx.run_id, ctx.stage)}/{SAMPLE_REQUEST}"
    write_json(open_store(ctx.store), key_path, payload, atomic=True)
    return payload


def read_sample(store: Store, pipeline: str, run_id: str, stages: list[str]) -> object | None:
    """The sample request recorded by the first of `stages` (DAG order) in run `run_id`."""
    for stage in stages:
        payload = read_json(store, f"{_stage_prefix(pipeline, run_id, stage)}/{SAMPLE_REQUEST}",
                            default=None)
        if payload:
            return payload
    return None


# -- promotion ---------------------------------------------------------------------
def promotion_passes(metrics: dict[str, Any], metric: str | None,
                     minimum: float | None) -> tuple[bool, str]:
    """Apply the ``[promotion] METRIC/MIN`` gate; returns (passed, one-line reason).

    ``metrics`` is ``{stage: {name: value}}`` (a run) or flat ``{name: value}``.
    ``METRIC`` may be qualified as ``stage.name`` when several stages record the
    same name; an unqualified name recorded with different values by several
    stages fails rather than guessing which one the user meant.
    """
    if not metric:
        if minimum is not None:
            return False, f"promotion MIN = {minimum:g} is set without a METRIC"
        return True, "no promotion gate"
    found: list[tuple[str, Any]] = []  # (stage or "", value)
    qualified_stage, _, qualified_name = metric.partition(".")
    for key, value in metrics.items():
        if isinstance(value, dict):
            if metric in value:
                found.append((key, value[metric]))
            elif qualified_name and key == qualified_stage and qualified_name in value:
                found.append((key, value[qualified_name]))
        elif key == metric:
            found.append(("", value))
    if not found:
        return False, f"metric '{metric}' was not recorded by any stage"
    numbers_found = [(stage, _metric_value(value)) for stage, value in found]
    if len({value for _, value in numbers_found}) > 1:
        where = ", ".join(f"{stage or '?'}={value}" for stage, value in numbers_found)
        return False, (f"metric '{metric}' recorded by several stages with different values "
                       f"({where}); set METRIC = stage.{metric}")
    stage, value = numbers_found[-1]
    where = f" (stage {stage})" if stage else ""
    if value is None:
        return False, f"metric '{metric}'{where} is not a finite number: {found[-1][1]!r}"
    if minimum is None:
        return True, f"{metric} = {value:g}{where}, no minimum set"
    if value >= minimum:
        return True, f"{metric} = {value:g} >= {minimum:g}{where}"
    return False, f"{metric} = {value:g} < minimum {minimum:g}{where}"


def promote(store: Store | str, pipeline: str, run_id: str, metric: str | None = None,
            minimum: float | None = None) -> tuple[bool, str]:
    """Gate a finished run and, if it passes, point latest.json at it.

    Merges the decision into the run's run.json with the keys the local runner
    uses (``promoted``, ``reason``, ``metrics``; ``status`` defaults to
    ``succeeded``, since promote only runs after every batch stage succeeded) plus
    ``promotion`` details, then writes latest.json last.
    """
    store = open_store(store)
    if not store.list(run_prefix(pipeline, run_id) + "/"):
        raise ArtifactNotFoundError(f"run '{run_id}' of pipeline '{pipeline}' not found in "
                                    f"{store.uri}")
    metrics = read_run_metrics(store, pipeline, run_id)
    passed, reason = promotion_passes(metrics, metric, minimum)
    run_key = f"{run_prefix(pipeline, run_id)}/{RUN_JSON}"
    record = read_json(store, run_key, default=None)
    record = record if isinstance(record, dict) else {}
    record.setdefault("status", "succeeded")
    record.update(run_id=run_id, pipeline=pipeline, metrics=metrics, promoted=passed,
                  reason=reason, promotion={"metric": metric, "min": minimum, "at": _utcnow()})
    write_json(store, run_key, record, atomic=True)
    if passed:
        write_latest(store, pipeline, run_id)
    return passed, reason
