"""The last step of an in-cluster run: promotion gate, then roll the serving Deployments.

Shipped into the run pod as ``nb2prod_roller.py`` next to the ``nb2prod_runtime`` package
(the stage runtime), so nothing has to be published: it uses only the standard
library (``urllib``/``ssl``) and the pod's own service-account token.  That
account's Role allows ``get`` and ``patch`` on the pipeline's Deployments, and
``list pods`` and ``get pods/log`` in its namespace (to say why a roll-out failed,
as ``deploy`` does), nothing else, which is all this needs:

1. ``python -m nb2prod_runtime promote --json``: gate the run on ``[promotion]``
   and, if it passes, write ``latest.json``;
2. for each service Deployment: a JSON patch (guarded by ``resourceVersion``)
   that sets the new pod template (serving the run id) and the replica count,
   keeping the old template in an annotation;
3. poll until the rollout is available; if it is not within its progress
   deadline, read the failing new pod's state and log tail (:func:`with_pod_problem`)
   and patch the previous template back.

The outcome goes to the container's termination message as JSON, which is
where ``nb2prod history`` reads it from (no access to the store needed).
Exit codes: 0 promoted and rolled, 3 below the promotion gate, 1 failure.

:func:`rollout_verdict`, :func:`template_hash` and the failure wording
(:func:`with_pod_problem` and its helpers) are also used by the deploying machine
(``nb2prod.runners.kubernetes``): one definition for both.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from typing import Any

Obj = dict[str, Any]

RUN_ID_PLACEHOLDER = "__NB2PROD_RUN_ID__"
MODEL_RUN_ID = "nb2prod.io/model-run-id"
PREVIOUS_TEMPLATE = "nb2prod.io/previous-template"
TEMPLATE_HASH = "nb2prod.io/template-hash"
PREVIOUS_REPLICAS = "nb2prod.io/previous-replicas"
NOT_PROMOTED = 3
MESSAGE_LIMIT = 4096  # what the kubelet keeps of a termination message
POLL_SECONDS = 2.0
DEADLINE_SLACK = 120.0


# -- shared with the deploying machine ------------------------------------------------------
def template_hash(template: Obj) -> str:
    """Stable short hash of a pod template (which template a Deployment was given)."""
    return hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:16]


def rollout_verdict(dep: Obj) -> tuple[bool, str] | None:
    """(True, "") when the Deployment's current template is fully rolled out, (False, why)
    on a progress deadline, None while still in progress."""
    meta, spec, status = dep["metadata"], dep.get("spec") or {}, dep.get("status") or {}
    if int(status.get("observedGeneration", 0)) < int(meta.get("generation", 0)):
        return None  # the controller has not seen this spec yet: its conditions are stale
    conditions = {c.get("type"): c for c in status.get("conditions") or []}
    progressing = conditions.get("Progressing")
    if progressing and progressing.get("status") == "False" and \
            progressing.get("reason") == "ProgressDeadlineExceeded":
        return False, (f"rollout of {meta['name']} did not become ready within "
                       f"{spec.get('progressDeadlineSeconds', '?')}s (ProgressDeadlineExceeded: "
                       f"{progressing.get('message', '')})")
    replicas = int(spec.get("replicas", 1))
    if int(status.get("updatedReplicas", 0)) < replicas:
        return None
    if int(status.get("replicas", 0)) > replicas:
        return None  # old pods still being removed
    if int(status.get("availableReplicas", 0)) < replicas:
        return None
    return True, ""


#: Waiting reasons that will not resolve by themselves: fail the stage now, not at the deadline.
STUCK_REASONS = frozenset({"ErrImagePull", "ImagePullBackOff", "CreateContainerConfigError",
                           "InvalidImageName", "CreateContainerError"})


def summary_line(lines: Sequence[str]) -> str | None:
    """The runtime's own one-line verdict (`nb2prod: stage 'x' failed in cell 3: ...`)."""
    for line in reversed(lines):
        text = line.strip()
        if text.startswith(("nb2prod:", "promoted run", "not promoted:", "error: promote")):
            return text
    return None


def stuck_reason(pod: Obj) -> str | None:
    """`Reason: message` when a pod cannot start and waiting will not help."""
    status = pod.get("status") or {}
    for cs in (status.get("initContainerStatuses") or []) + (status.get("containerStatuses") or []):
        waiting = (cs.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") in STUCK_REASONS:
            return f"{waiting['reason']}: {waiting.get('message', '')}".strip().rstrip(":")
    scheduled = next((c for c in status.get("conditions") or []
                      if c.get("type") == "PodScheduled"), None)
    if scheduled and scheduled.get("status") == "False" and scheduled.get("reason") == "Unschedulable":
        return f"Unschedulable: {scheduled.get('message', '')}".strip().rstrip(":")
    return None


def last_lines(text: str, count: int = 3) -> list[str]:
    """nb2prod's own verdict in a log (also behind a logger's prefix), else its last lines."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    own = summary_line(lines) or next((line[line.index("nb2prod: "):] for line in reversed(lines)
                                       if "nb2prod: " in line), None)
    return [own] if own else lines[-count:]


def pod_problem(pod: Obj) -> tuple[str, str | None, bool] | None:
    """(what is wrong, container, whether its log is the previous instance's) for a pod that
    does not become ready, from its container statuses; None when nothing is wrong yet."""
    status = pod.get("status") or {}
    for cs in (status.get("initContainerStatuses") or []) + (status.get("containerStatuses") or []):
        state, last = cs.get("state") or {}, cs.get("lastState") or {}
        waiting = state.get("waiting") or {}
        term = state.get("terminated") or last.get("terminated") or {}
        failed = term and int(term.get("exitCode", 0)) != 0
        if waiting.get("reason") in (*STUCK_REASONS, "CrashLoopBackOff") or failed:
            parts = [f"container {cs['name']}: {waiting.get('reason') or 'terminated'}"]
            if term:
                parts.append(f"exit code {term.get('exitCode')} ({term.get('reason', 'Error')})")
            if cs.get("restartCount"):
                parts.append(f"{cs['restartCount']} restart(s)")
            text = ", ".join(parts)
            message = str(term.get("message") or "")
            if message:
                return f"{text}; last lines: {' | '.join(last_lines(message))}", None, False
            return text, cs["name"], "terminated" not in state
        if "running" in state and not cs.get("ready"):
            return f"container {cs['name']} runs but is not ready (readiness probe)", \
                cs["name"], False
    reason = stuck_reason(pod)
    return (reason, None, False) if reason else None


#: Reads a container's log: (pod, container, previous instance?) -> its text.
ReadLog = Callable[[str, str, bool], str]


def with_pod_problem(why: str, pods: Iterable[Obj], read_log: ReadLog) -> str:
    """`why` plus what is wrong with one of a failed roll-out's new pods: the container's
    state, exit code and its last log lines (termination message, else the log's tail).

    The deploying machine and the in-cluster roller both say it this way; each passes
    its own way of reading a log.  A log that cannot be read leaves the state alone.
    """
    for pod in sorted(pods, key=lambda p: p["metadata"]["name"]):
        found = pod_problem(pod)
        if not found:
            continue
        text, container, previous = found
        name = pod["metadata"]["name"]
        if container is not None:
            try:
                tail = last_lines(read_log(name, container, previous))
            except Exception:  # noqa: BLE001 - the state alone still says a lot
                tail = []
            if tail:
                text += f"; last log lines: {' | '.join(tail)}"
        return f"{why} -- pod {name}: {text}"
    return why


# -- the API, with the pod's own identity ----------------------------------------------------
class ApiError(Exception):
    """A non-2xx answer of the Kubernetes API (status code and its message)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status


class Api:
    """Minimal in-cluster client: HTTPS to the API server, bearer token, cluster CA."""

    def __init__(self, credentials: str, namespace: str) -> None:
        host = os.environ.get("KUBERNETES_SERVICE_HOST", "")
        port = os.environ.get("KUBERNETES_SERVICE_PORT_HTTPS") or \
            os.environ.get("KUBERNETES_SERVICE_PORT", "443")
        if not host:
            raise ApiError(0, "KUBERNETES_SERVICE_HOST is not set: not running in a cluster")
        host = f"[{host}]" if ":" in host else host
        self.base = f"https://{host}:{port}"
        self.credentials = credentials
        self.namespace = namespace
        self.context = ssl.create_default_context(cafile=os.path.join(credentials, "ca.crt"))

    def _token(self) -> str:
        # Re-read each time: projected tokens are rotated by the kubelet.
        with open(os.path.join(self.credentials, "token"), encoding="utf-8") as fh:
            return fh.read().strip()

    def request(self, method: str, name: str, body: Any = None,
                content_type: str = "application/json") -> Obj:
        """One call on deployments/NAME (see :meth:`call`)."""
        data = self.call(method, f"/apis/apps/v1/namespaces/{self.namespace}/deployments/{name}",
                         body, content_type)
        return json.loads(data or b"{}")

    def call(self, method: str, path: str, body: Any = None,
             content_type: str = "application/json") -> bytes:
        """One API call (the raw answer), retried on connection errors, 429 and 5xx."""
        url = self.base + path
        data = json.dumps(body).encode() if body is not None else None
        for attempt in range(6):
            req = urllib.request.Request(url, data=data, method=method, headers={
                "Authorization": f"Bearer {self._token()}", "Accept": "application/json",
                **({"Content-Type": content_type} if data is not None else {})})
            try:
                with urllib.request.urlopen(req, context=self.context, timeout=30) as resp:
                    return resp.read()
            except urllib.error.HTTPError as exc:
                message = exc.read().decode("utf-8", "replace")
                try:
                    message = json.loads(message).get("message", message)
                except ValueError:
                    pass
                if exc.code not in (429, 500, 502, 503, 504) or attempt == 5:
                    raise ApiError(exc.code, message) from None
            except (urllib.error.URLError, OSError) as exc:
                if attempt == 5:
                    raise ApiError(0, f"cannot reach the API server: {exc}") from None
            time.sleep(min(0.5 * 2 ** attempt, 8.0))
        raise AssertionError("unreachable")

    def pods(self, labels: dict[str, str]) -> list[Obj]:
        """The namespace's pods with these labels (the Role's ``list pods``)."""
        selector = urllib.parse.quote(",".join(f"{k}={v}" for k, v in sorted(labels.items())))
        data = self.call("GET", f"/api/v1/namespaces/{self.namespace}/pods?labelSelector={selector}")
        return list(json.loads(data or b"{}").get("items") or [])

    def log(self, pod: str, container: str, previous: bool) -> str:
        """The last lines of a container's log (the Role's ``get pods/log``)."""
        query = urllib.parse.urlencode({"container": container, "tailLines": 20,
                                        "previous": str(previous).lower()})
        data = self.call("GET", f"/api/v1/namespaces/{self.namespace}/pods/{pod}/log?{query}")
        return data.decode("utf-8", "replace")


def failing_pods(api: Api, template: Obj, run_id: str) -> list[Obj]:
    """The pods of `template` (by its labels) that serve `run_id`: the roll-out's new pods."""
    labels = (template.get("metadata") or {}).get("labels") or {}
    return [p for p in api.pods(labels)
            if (p["metadata"].get("annotations") or {}).get(MODEL_RUN_ID) == run_id]


# -- rolling one Deployment -------------------------------------------------------------------
def _pointer(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")


def patch_template(api: Api, name: str, template: Obj, replicas: int,
                   remember_previous: bool, progress_deadline: int | None = None) -> Obj:
    """Give Deployment `name` this pod template and replica count; returns the old object.

    A JSON patch with a ``test`` of the resourceVersion: a concurrent change makes
    it fail (409/422) instead of being overwritten, and the read is retried.
    """
    for _ in range(5):
        current = api.request("GET", name)
        notes = dict(current["metadata"].get("annotations") or {})
        new_hash = template_hash(template)
        if remember_previous and notes.get(TEMPLATE_HASH) != new_hash:
            notes[PREVIOUS_TEMPLATE] = json.dumps(current["spec"]["template"], sort_keys=True)
            notes[PREVIOUS_REPLICAS] = str(current["spec"].get("replicas", 1))
        notes[TEMPLATE_HASH] = new_hash
        ops = [
            {"op": "test", "path": "/metadata/resourceVersion",
             "value": current["metadata"]["resourceVersion"]},
            {"op": "replace", "path": "/spec/template", "value": template},
            {"op": "replace", "path": "/spec/replicas", "value": replicas},
            {"op": "add", "path": "/metadata/annotations", "value": notes},
        ]
        if progress_deadline is not None:
            ops.append({"op": "add", "path": "/spec/progressDeadlineSeconds",
                        "value": progress_deadline})
        try:
            api.request("PATCH", name, ops, "application/json-patch+json")
            return current
        except ApiError as exc:
            if exc.status not in (409, 422):
                raise
    raise ApiError(409, f"Deployment {name} kept changing while being patched")


def wait_available(api: Api, name: str, wanted_hash: str, deadline: float) -> tuple[bool, str]:
    """Poll until the rollout of `wanted_hash` is complete or fails (``rollout_verdict``)."""
    limit = time.monotonic() + deadline
    while time.monotonic() < limit:
        dep = api.request("GET", name)
        if (dep["metadata"].get("annotations") or {}).get(TEMPLATE_HASH) != wanted_hash:
            return False, f"Deployment {name} was changed by someone else during the rollout"
        verdict = rollout_verdict(dep)
        if verdict is not None:
            return verdict
        time.sleep(POLL_SECONDS)
    return False, f"Deployment {name} not available after {deadline:.0f}s"


def roll(api: Api, name: str, wanted: Obj, run_id: str, log: Any = print) -> Obj:
    """Roll one Deployment to `run_id`; put the previous template back if that fails."""
    template = json.loads(json.dumps(wanted["template"]).replace(RUN_ID_PLACEHOLDER, run_id))
    replicas = int(wanted["replicas"])
    progress = int(wanted.get("progressDeadlineSeconds", 600))
    deadline = progress + DEADLINE_SLACK
    log(f"rolling Deployment {name} to run {run_id} ({replicas} replica(s))")
    before = patch_template(api, name, template, replicas, remember_previous=True,
                            progress_deadline=progress)
    ok, why = wait_available(api, name, template_hash(template), deadline)
    if ok:
        log(f"Deployment {name} serves run {run_id}")
        return {"status": "serving", "model_run_id": run_id}
    try:
        why = with_pod_problem(why, failing_pods(api, template, run_id), api.log)
    except ApiError as exc:  # the roll-back matters more than the detail
        log(f"cannot read the new pods of {name}: {exc}")
    previous = before["spec"]["template"]
    restored = (previous.get("metadata", {}).get("annotations") or {}).get(MODEL_RUN_ID, "?")
    log(f"rollout of {name} failed: {why}; rolling back to run {restored}")
    patch_template(api, name, previous, int(before["spec"].get("replicas", 1)),
                   remember_previous=False,
                   progress_deadline=before["spec"].get("progressDeadlineSeconds"))
    back, back_why = wait_available(api, name, template_hash(previous), deadline)
    if not back:
        log(f"rollback of {name} not complete: {back_why}")
    return {"status": "rolled_back", "model_run_id": restored, "message": why}


# -- termination message ----------------------------------------------------------------------
def write_termination_message(record: Obj) -> None:
    """Leave `record` as this container's termination message (trimmed to the kubelet's limit)."""
    path = os.environ.get("NB2PROD_TERMINATION_LOG")
    if not path:
        return
    text = json.dumps(record, sort_keys=True, default=str)
    if len(text.encode()) > MESSAGE_LIMIT:
        record = {k: v for k, v in record.items() if k != "metrics"}
        record["metrics_truncated"] = True
        text = json.dumps(record, sort_keys=True, default=str)
    if len(text.encode()) > MESSAGE_LIMIT:  # a long failure: the reason repeats each message
        record["rolled"] = {n: {k: v for k, v in r.items() if k != "message"}
                            for n, r in (record.get("rolled") or {}).items()}
        excess = len(json.dumps(record, sort_keys=True, default=str).encode()) - MESSAGE_LIMIT
        if excess > 0:
            reason = str(record.get("reason", ""))
            record["reason"] = reason[:max(0, len(reason) - excess - 8)] + " ..."
        text = json.dumps(record, sort_keys=True, default=str)
    try:
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(text)
    except OSError as exc:
        print(f"nb2prod: cannot write the termination message to {path}: {exc}", file=sys.stderr)


# -- main ---------------------------------------------------------------------------------------
def promote(args: argparse.Namespace) -> tuple[int, Obj]:
    """Run the runtime's promotion gate; (exit code, its JSON verdict)."""
    cmd = [sys.executable, "-m", "nb2prod_runtime", "promote", "--pipeline", args.pipeline,
           "--run-id", args.run_id, "--json"]
    if args.metric:
        cmd += ["--metric", args.metric]
    if args.minimum is not None:
        cmd += ["--min", args.minimum]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    sys.stderr.write(proc.stderr)
    verdict: Obj = {}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("{"):
            try:
                verdict = json.loads(line)
                break
            except ValueError:
                continue
    if not verdict:
        error = (proc.stderr.strip().splitlines() or ["promote printed nothing"])[-1]
        verdict = {"reason": error}
    print(verdict.get("reason", ""), flush=True)
    return proc.returncode, verdict


def main(argv: list[str] | None = None) -> int:
    """Gate, promote and roll; see the module docstring for exit codes."""
    parser = argparse.ArgumentParser(prog="nb2prod_roller.py", description=__doc__.split("\n")[0])
    parser.add_argument("--pipeline", required=True)
    parser.add_argument("--run-id", required=True)
    parser.add_argument("--metric", default=None)
    parser.add_argument("--min", dest="minimum", default=None)
    parser.add_argument("--plan", required=True, help="roll.json: Deployment -> wanted spec")
    parser.add_argument("--credentials", required=True,
                        help="directory with the service-account token and ca.crt")
    parser.add_argument("--namespace", default=os.environ.get("NB2PROD_NAMESPACE", ""))
    args = parser.parse_args(argv)
    record: Obj = {"run_id": args.run_id, "step": "promote"}
    code, verdict = promote(args)
    record.update(metrics=verdict.get("metrics") or {}, reason=verdict.get("reason", ""))
    if code == NOT_PROMOTED:
        record.update(status="not_promoted", promoted=False)
        write_termination_message(record)
        return NOT_PROMOTED
    if code != 0:
        record.update(status="failed", promoted=False)
        write_termination_message(record)
        return 1
    record.update(promoted=True, step="roll", rolled={})
    try:
        with open(args.plan, encoding="utf-8") as fh:
            plan: dict[str, Obj] = json.load(fh)
        api = Api(args.credentials, args.namespace) if plan else None
        for name, wanted in plan.items():
            record["rolled"][name] = roll(api, name, wanted, args.run_id)  # type: ignore[arg-type]
    except (ApiError, OSError, ValueError, KeyError) as exc:
        record.update(status="failed", reason=f"rolling out: {exc}")
        print(f"nb2prod: roll failed: {exc}", file=sys.stderr, flush=True)
        return finish_rollout(args, record)
    failed = {n: r for n, r in record["rolled"].items() if r["status"] != "serving"}
    if failed:
        record.update(status="failed", reason="; ".join(
            f"{n}: {r['message']}; rolled back to run {r['model_run_id']}"
            for n, r in failed.items()))
        return finish_rollout(args, record)
    record["status"] = "succeeded"
    return finish_rollout(args, record)


def finish_rollout(args: argparse.Namespace, record: Obj) -> int:
    """Report a promoted run's roll-out: termination message, and run.json in the store.

    run.json already holds the promotion verdict; adding the roll-out's outcome
    there keeps the store a complete record after the cluster has deleted the
    Job (CronJob history limits).  Failing to write it only costs that record.
    """
    write_termination_message(record)
    values: Obj = {"status": record["status"], "rollout": record.get("rolled") or {}}
    if record["status"] != "succeeded":
        values["reason"] = record.get("reason", "")
    cmd = [sys.executable, "-m", "nb2prod_runtime", "record", "--pipeline", args.pipeline,
           "--run-id", args.run_id, "--values", json.dumps(values, sort_keys=True, default=str)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        print(f"nb2prod: the roll-out was not recorded in run.json: {proc.stderr.strip()}",
              file=sys.stderr, flush=True)
    return 0 if record["status"] == "succeeded" else 1


if __name__ == "__main__":
    sys.exit(main())
