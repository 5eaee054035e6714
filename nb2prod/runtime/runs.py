"""Runs in a store: run ids, `latest.json`, `run.json` records and their listing
(`nb2prod runs`), the metrics of a run."""

from __future__ import annotations

import datetime as _dt
import os
import secrets
from typing import Any

from .errors import ArtifactError, cell_label
from .stores import (
    LATEST_JSON,
    METRICS,
    RESULT,
    RUN_JSON,
    Store,
    _check_segment,
    open_store,
    read_json,
    run_prefix,
    write_json,
)


def _utcnow() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def new_run_id() -> str:
    """Sortable, DNS-1123-friendly run id: UTC timestamp plus a random suffix.

    Lexical order is chronological (``list_runs`` sorts on it) and the value can
    be embedded in Kubernetes object names and labels as is.
    """
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dt%H%M%S")
    return f"{stamp}-{secrets.token_hex(2)}"


def read_latest(store: Store | str, pipeline: str) -> dict | None:
    """Contents of ``<pipeline>/latest.json``, or None when no run was promoted yet."""
    data = read_json(store, f"{_check_segment(pipeline, 'pipeline name')}/{LATEST_JSON}",
                     default=None)
    if data is None:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("run_id"), str):
        raise ArtifactError(f"{open_store(store).url(pipeline + '/' + LATEST_JSON)} "
                            "has no string 'run_id'")
    return data


def write_latest(store: Store | str, pipeline: str, run_id: str, **extra: Any) -> dict:
    """Point ``latest.json`` at ``run_id``, atomically.

    Call it last, after every stage succeeded and the gate passed: serving stages
    read it, so it must never name a run that is incomplete.
    """
    run_prefix(pipeline, run_id)  # validates both
    record = {**extra, "run_id": run_id, "promoted_at": _utcnow()}
    write_json(store, f"{pipeline}/{LATEST_JSON}", record, atomic=True)
    return record


def list_runs(store: Store | str, pipeline: str) -> list[dict]:
    """One dict per run found in the store, oldest first.

    Each is the run's ``run.json`` (if any; runners write ``status``, ``stages``,
    ``metrics``, ``promoted``...) plus derived ``run_id``, ``stage_dirs`` (stage
    directories present in the store) and ``latest`` (latest.json points at it).
    Keys from run.json win over the derived ones.  In-cluster runs have no
    runner writing ``stages``: those come from each stage's ``result.json``
    (written by ``run-stage``), so a run that failed in a pod, long after the
    cluster forgot its Job, still shows which stage failed and why.
    """
    store = open_store(store)
    base = f"{_check_segment(pipeline, 'pipeline name')}/runs/"
    stage_dirs: dict[str, set[str]] = {}
    for key in store.list(base):
        parts = key[len(base):].split("/")
        run = stage_dirs.setdefault(parts[0], set())
        if len(parts) >= 3:
            run.add(parts[1])
    latest = read_latest(store, pipeline)
    latest_id = latest["run_id"] if latest else None
    runs = []
    for run_id in sorted(stage_dirs):
        info = read_json(store, f"{base}{run_id}/{RUN_JSON}", default=None)
        if info is not None and not (isinstance(info, dict)
                                     and info.get("run_id", run_id) == run_id):
            raise ArtifactError(f"{store.url(f'{base}{run_id}/{RUN_JSON}')} is not the record "
                                f"of run {run_id} (expected an object with \"run_id\": "
                                f"\"{run_id}\")")
        record = dict(info) if isinstance(info, dict) else {}
        if "stages" not in record:
            _add_stage_results(store, f"{base}{run_id}", sorted(stage_dirs[run_id]), record)
        record.setdefault("run_id", run_id)
        record.setdefault("stage_dirs", sorted(stage_dirs[run_id]))
        record.setdefault("latest", run_id == latest_id)
        runs.append(record)
    # Local run ids sort by time; in-cluster ones (Job names) need their start time.
    return sorted(runs, key=lambda r: (r["started"] if isinstance(r.get("started"), (int, float))
                                       else 0, r["run_id"]))


def _add_stage_results(store: Store, prefix: str, stages: list[str], record: dict) -> None:
    """Fill `stages`, `status`, `started`, `finished` of a run from its stages' result.json."""
    found = {}
    for stage in stages:
        result = read_json(store, f"{prefix}/{stage}/{RESULT}", default=None)
        if not isinstance(result, dict) or "status" not in result:
            continue
        entry = {k: result[k] for k in ("status", "started", "finished", "cell", "cached_from")
                 if k in result}
        if result["status"] != "succeeded":
            entry["reason"] = _failure_reason(result)
        found[stage] = entry
    if not found:
        return
    record["stages"] = found
    times = [v for e in found.values() for k, v in e.items()
             if k in ("started", "finished") and isinstance(v, (int, float))]
    if times:
        record.setdefault("started", min(times))
        record.setdefault("finished", max(times))
    failed = [name for name, e in found.items() if e["status"] != "succeeded"]
    if failed:
        record.setdefault("status", "failed")
        record.setdefault("reason", f"stage '{failed[0]}' {found[failed[0]]['reason']}")
    else:
        # Every stage that left a result succeeded, but nobody promoted the run (yet).
        record.setdefault("status", "incomplete")


def record_run(store: Store | str, pipeline: str, run_id: str, values: dict) -> dict:
    """Merge `values` into a run's run.json (atomically); returns the new record.

    The in-cluster roll step uses it to leave the roll-out's outcome next to the
    promotion verdict, so the store alone tells what became of every run.
    """
    store = open_store(store)
    key = f"{run_prefix(pipeline, run_id)}/{RUN_JSON}"
    record = read_json(store, key, default=None)
    record = record if isinstance(record, dict) else {}
    record.update(values)
    write_json(store, key, record, atomic=True)
    return record


def upload_file(store: Store | str, key: str, path: str | os.PathLike[str]) -> None:
    """Copy a local file (executed notebook, HTML, log) into the store."""
    open_store(store).upload(key, path)


def read_run_metrics(store: Store | str, pipeline: str, run_id: str) -> dict[str, dict]:
    """``{stage: metrics}`` from every ``<stage>/metrics.json`` of a run."""
    store = open_store(store)
    base = run_prefix(pipeline, run_id) + "/"
    found: dict[str, dict] = {}
    for key in store.list(base):
        parts = key[len(base):].split("/")
        if len(parts) == 2 and parts[1] == METRICS:
            data = read_json(store, key, default={})
            if isinstance(data, dict):
                found[parts[0]] = data
    return found


def _failure_reason(result: dict) -> str:
    cell = result.get("cell")
    where = f" in {cell_label(cell, result.get('cell_line'))}" if cell is not None else ""
    evalue = str(result.get("evalue", "")).replace("\n", " ")[:500]
    return f"failed{where}: {result.get('ename')}: {evalue}"
