"""Benchmark `nb2prod deploy` on the Kubernetes stand-in: Job handoff latency and overhead.

Two numbers, both measured in the same run:

* **handoff latency**: from the moment a Job's `Complete` condition is visible
  through the API (seen by an independent watch in this process) to the moment
  the next stage's Job exists (its ADDED event on the same watch).  This is the
  cost of nb2prod's watch-driven DAG driver; target <= 0.5 s.  A driver that
  polls every N seconds would show ~N/2 here.
* **deploy wall time vs the sum of stage run times**: wall time of the whole
  `deploy` (setup, Jobs, promotion, rollout) against the sum (and the
  critical path) of the stages' own papermill run times, read from each
  stage's `result.json` in the store.

The pipeline is generated: a chain `s1 >> s2 >> ... >> sN` plus a fan-out
`s1 >> b1, b2 >> join`, each stage a cheap cell, so the numbers measure
orchestration rather than model training.  Pods run this interpreter (the
stand-in's process kubelet), the store is moto's S3 server.

Usage: python benchmarks/bench_deploy.py [--chain 4] [--repeats 2] [--root DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def make_notebook(path: Path, chain: int) -> None:
    """Chain s1..sN, plus b1 and b2 reading s1 and a join reading both."""
    cells = [("parameters", "n = 3"), ("imports", "import math")]
    cells.append(("stage:s1", "v1 = list(range(n))"))
    for i in range(2, chain + 1):
        cells.append((f"stage:s{i}", f"v{i} = [math.sqrt(x) for x in v{i - 1}]"))
    cells += [("stage:b1", "left = sum(v1)"), ("stage:b2", "right = max(v1)"),
              ("stage:join", "both = left + right")]
    nb_cells = [{"cell_type": "code", "id": f"c{i}", "source": src, "outputs": [],
                 "execution_count": None, "metadata": {"tags": [tag]}}
                for i, (tag, src) in enumerate(cells)]
    nb = {"cells": nb_cells, "nbformat": 4, "nbformat_minor": 5,
          "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3",
                                      "language": "python"}}}
    path.write_text(json.dumps(nb))


class JobObserver(threading.Thread):
    """Independent watch on Jobs: when each was ADDED and when it became Complete."""

    def __init__(self, api_client, namespace: str) -> None:
        super().__init__(daemon=True)
        from kubernetes import client, watch

        self.batch = client.BatchV1Api(api_client)
        self.watch = watch.Watch()
        self.namespace = namespace
        self.added: dict[str, float] = {}
        self.complete: dict[str, float] = {}

    def run(self) -> None:
        try:
            self._observe()
        except Exception:  # noqa: BLE001, S110 - the stand-in shut down under the watch
            pass

    def _observe(self) -> None:
        for event in self.watch.stream(self.batch.list_namespaced_job, self.namespace,
                                       timeout_seconds=3600):
            now = time.time()
            job = event["raw_object"]
            name = job["metadata"]["name"]
            self.added.setdefault(name, now)
            for cond in (job.get("status") or {}).get("conditions") or []:
                if cond["type"] == "Complete" and cond["status"] == "True":
                    self.complete.setdefault(name, now)

    def stop(self) -> None:
        self.watch.stop()


def one_deploy(standin, directory: Path, store: str, s3, bucket: str) -> dict:
    from nb2prod.pipeline import load_pipeline
    from nb2prod.runners import kubernetes as kube

    pipeline = load_pipeline(directory)
    observer = JobObserver(standin.api_client(), "bench")
    observer.start()
    time.sleep(0.3)
    started = time.perf_counter()
    result = kube.deploy(directory, "bench", image="python:3.11-slim", store=store)
    wall = time.perf_counter() - started
    observer.stop()
    if result["status"] != "succeeded":
        raise SystemExit(f"deploy failed: {result['reason']}")
    jobs = {name: info["job"] for name, info in result["stages"].items()}
    handoffs = []
    for stage in pipeline.batch:
        preds = pipeline.predecessors(stage)
        if not preds:
            continue
        last_done = max(observer.complete[jobs[p]] for p in preds)
        handoffs.append(observer.added[jobs[stage]] - last_done)
    promote = jobs["(promote)"]
    handoffs.append(observer.added[promote] - max(observer.complete[jobs[s]]
                                                  for s in pipeline.batch))
    run_times: dict[str, float] = {}
    for stage in pipeline.batch:
        key = f"artifacts/{pipeline.name}/runs/{result['run_id']}/{stage}/result.json"
        record = json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
        run_times[stage] = record["finished"] - record["started"]

    def path_length(stage: str) -> float:
        preds = pipeline.predecessors(stage)
        return run_times[stage] + (max(path_length(p) for p in preds) if preds else 0.0)

    critical = max(path_length(s) for s in pipeline.batch)
    return {"wall": wall, "handoffs": handoffs, "sum": sum(run_times.values()),
            "critical": critical, "jobs": result["seconds"]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--chain", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--root", default=None,
                        help="stand-in state directory (default: a temporary one)")
    args = parser.parse_args()

    import boto3
    import moto.server
    from kubernetes import client

    from nb2prod.split import split_notebook
    from tests.kube.standin import KubeStandIn

    server = moto.server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    os.environ.update(AWS_ENDPOINT_URL=f"http://{host}:{port}", AWS_ACCESS_KEY_ID="bench",
                      AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1")
    s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
    bucket = "nb2prod-bench"
    s3.create_bucket(Bucket=bucket)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        make_notebook(work / "bench.ipynb", args.chain)
        directory = work / "bench-pipeline"
        split_notebook(work / "bench.ipynb", directory)
        text = (directory / "nb2prod.ini").read_text().replace(
            "[secrets]\n", "[secrets]\nAWS_ACCESS_KEY_ID = s3\nAWS_SECRET_ACCESS_KEY = s3\n"
            "AWS_DEFAULT_REGION = s3\n")
        (directory / "nb2prod.ini").write_text(text)
        root = Path(args.root) if args.root else work / "standin"
        with KubeStandIn(root=root) as standin:
            os.environ["KUBECONFIG"] = str(standin.kubeconfig)
            core = client.CoreV1Api(standin.api_client())
            core.create_namespace({"metadata": {"name": "bench"}})
            core.create_namespaced_secret("bench", {"metadata": {"name": "s3"}, "stringData": {
                "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
                "AWS_DEFAULT_REGION": "us-east-1"}})
            results = [one_deploy(standin, directory, f"s3://{bucket}/artifacts", s3, bucket)
                       for _ in range(args.repeats)]
    server.stop()
    handoffs = [h for r in results for h in r["handoffs"]]
    stages = args.chain + 3
    print(f"pipeline: chain of {args.chain} + fan-out of 2 + join ({stages} batch stages), "
          f"{args.repeats} deploys")
    print(f"handoff Complete -> next Job created: median {statistics.median(handoffs):.3f} s, "
          f"max {max(handoffs):.3f} s over {len(handoffs)} handoffs (target <= 0.5 s)")
    for i, r in enumerate(results, 1):
        print(f"deploy {i}: wall {r['wall']:.1f} s; stage run times: sum {r['sum']:.1f} s, "
              f"critical path {r['critical']:.1f} s; wall / critical path "
              f"{r['wall'] / r['critical']:.2f}x, wall / sum {r['wall'] / r['sum']:.2f}x")


if __name__ == "__main__":
    main()
