"""The promotion gate's verdict on a run, in the words every listing of runs uses.

A run the gate held back is recorded as `succeeded` with `promoted: false`; its
status alone reads like a promoted run, so `nb2prod runs`, `nb2prod status` and
the JupyterLab panel add this verdict.  Pure and light (no runner imported):
`status` uses it on Kubernetes annotations.
"""

from __future__ import annotations


def promotion_verdict(record: dict) -> str:
    """"not promoted: WHY" for a run whose batch stages all succeeded but which the
    promotion gate held back; "" for any other run."""
    if record.get("promoted") is not False or record.get("status") not in (
            "succeeded", "not_promoted"):
        return ""
    reason = record.get("reason")
    return f"not promoted: {reason}" if isinstance(reason, str) and reason else "not promoted"
