"""Throughput and latency of the generated service app vs a hand-written minimal Flask app.

Both serve the same iris model (trained once here with `nb2prod run --no-serve`) under
identical gunicorn settings (`nb2prod.serve.gunicorn_command`: same workers, same flags),
one after the other, in alternating rounds so that drift in machine load hits both
alike.  Load comes from a second process on loopback: `wrk` when it is on PATH (Debian:
`apt-get install wrk`), else a bounded Python load generator (N threads, http.client;
gunicorn's sync workers close every connection, so each request reconnects either way).

Prints requests/s and p50/p99 latency per round and the medians, then the ratio
generated/baseline (target >= 0.95).

Usage: python benchmarks/bench_serve.py [--duration 10] [--rounds 3] [--connections 8]
                                        [--workers 2] [--loadgen auto|wrk|python]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

from _common import machine

from nb2prod import serve

ROOT = Path(__file__).resolve().parents[1]
PAYLOAD = {"instances": [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5]]}
EXPECTED = {"predictions": ["setosa", "virginica", "versicolor"]}

#: The baseline: what someone would write by hand to serve the same joblib model.
BASELINE_APP = textwrap.dedent('''
    import json
    import os

    import joblib
    import numpy as np
    from flask import Flask, jsonify, request

    HERE = os.path.dirname(os.path.abspath(__file__))
    model = joblib.load(os.path.join(HERE, "model.joblib"))
    with open(os.path.join(HERE, "species.json")) as fh:
        species = json.load(fh)

    app = Flask(__name__)


    @app.post("/predict")
    def predict():
        X = np.asarray(request.get_json()["instances"], dtype=float)
        return jsonify({"predictions": [species[i] for i in model.predict(X)]})


    @app.get("/readyz")
    def readyz():  # echoes the start's nonce, as nb2prod.serve.wait_ready checks
        return jsonify({"status": "ready", "instance": os.environ.get("NB2PROD_INSTANCE")})
''')

WRK_SCRIPT = textwrap.dedent('''
    wrk.method = "POST"
    wrk.headers["Content-Type"] = "application/json"
    wrk.body = '%s'
''')


# --------------------------------------------------------------------------- set-up


def nb2prod(*args: str, cwd: Path) -> None:
    subprocess.run([sys.executable, "-m", "nb2prod", *args], cwd=cwd, check=True,
                   stdout=subprocess.DEVNULL)


def prepare(work: Path) -> tuple[Path, Path, str]:
    """Split and train iris; return (generated stage dir, baseline dir, store URI)."""
    shutil.copy(ROOT / "example_notebooks" / "iris.ipynb", work)
    nb2prod("split", "iris.ipynb", cwd=work)
    nb2prod("run", "iris-pipeline", "--no-serve", cwd=work)
    pipeline = work / "iris-pipeline"
    store = pipeline / ".nb2prod" / "artifacts"
    run_id = json.loads((store / "iris" / "latest.json").read_text())["run_id"]
    train = store / "iris" / "runs" / run_id / "train"
    baseline = work / "baseline"
    baseline.mkdir()
    shutil.copy(train / "model.joblib", baseline)
    shutil.copy(train / "species.json", baseline)
    (baseline / "app.py").write_text(BASELINE_APP)
    return pipeline / "stage-2-serve", baseline, f"file://{store}"


def start(stage_dir: Path, workers: int, store_uri: str) -> tuple[subprocess.Popen, int]:
    port = serve.free_port()
    env = {"NB2PROD_STORE": store_uri, "NB2PROD_PIPELINE": "iris", "NB2PROD_STAGE": "serve"}
    proc = serve.start_service(stage_dir, port, env, workers)
    try:
        serve.wait_ready(f"http://127.0.0.1:{port}", 120, proc)
        # Every worker starts up on its own: ask until each has answered a prediction.
        for _ in range(20 * workers):
            status, body = post(port)
            assert status == 200 and json.loads(body) == EXPECTED, (status, body)
    except BaseException:
        serve.stop_service(proc)
        raise
    return proc, port


def post(port: int) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("POST", "/predict", body=json.dumps(PAYLOAD),
                     headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


# --------------------------------------------------------------------------- load


def server_cpu_seconds(master_pid: int) -> float:
    """User+system CPU of a gunicorn master's worker processes (Linux /proc).

    CPU per request does not depend on how busy the rest of the machine is, unlike
    requests/s on a shared 2-core box, so it is printed next to the throughput.
    """
    total = 0
    tick = os.sysconf("SC_CLK_TCK")
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == master_pid:  # ppid
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / tick


def wrk_round(port: int, duration: float, connections: int, script: Path) -> dict:
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{duration:g}s", "--latency", "-s", str(script),
         f"http://127.0.0.1:{port}/predict"], check=True, capture_output=True, text=True).stdout

    def ms(label: str) -> float:
        match = re.search(rf"^\s*{label}%\s+([\d.]+)(us|ms|s)\s*$", out, re.MULTILINE)
        if not match:
            raise RuntimeError(f"no {label}% in wrk output:\n{out}")
        scale = {"us": 1e-3, "ms": 1.0, "s": 1e3}[match[2]]
        return float(match[1]) * scale

    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1])
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)
    return {"rps": rps, "p50": ms("50"), "p99": ms("99"),
            "errors": int(errors[1]) if errors else 0,
            "socket_errors": socket_errors[1] if socket_errors else ""}


def python_load(port: int, duration: float, connections: int) -> dict:
    """Runs in the load-generator process: N threads posting until `duration` is up."""
    body = json.dumps(PAYLOAD).encode()
    latencies: list[list[float]] = [[] for _ in range(connections)]
    errors = [0] * connections
    deadline = time.perf_counter() + duration

    def worker(i: int) -> None:
        conn = None
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                conn.request("POST", "/predict", body=body,
                             headers={"Content-Type": "application/json"})
                response = conn.getresponse()
                response.read()
                if response.status != 200:
                    errors[i] += 1
                if response.will_close:
                    conn.close()
                    conn = None
            except OSError:
                errors[i] += 1
                conn = None
                continue
            latencies[i].append(time.perf_counter() - t0)

    start_time = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start_time
    allv = sorted(v for lst in latencies for v in lst)
    return {"rps": len(allv) / elapsed, "p50": allv[len(allv) // 2] * 1e3,
            "p99": allv[min(len(allv) - 1, int(len(allv) * 0.99))] * 1e3,
            "errors": sum(errors), "socket_errors": ""}


def python_round(port: int, duration: float, connections: int) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--load-port", str(port), "--duration", str(duration),
         "--connections", str(connections)], check=True, capture_output=True, text=True).stdout
    return json.loads(out)


# --------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers (both apps)")
    parser.add_argument("--loadgen", choices=("auto", "wrk", "python"), default="auto")
    parser.add_argument("--load-port", type=int, help=argparse.SUPPRESS)  # load process mode
    args = parser.parse_args()
    if args.load_port:
        print(json.dumps(python_load(args.load_port, args.duration, args.connections)))
        return
    loadgen = args.loadgen
    if loadgen == "auto":
        loadgen = "wrk" if shutil.which("wrk") else "python"
    print(f"machine: {machine()}")
    print(f"load: {loadgen}, {args.connections} connections, {args.duration:g}s x "
          f"{args.rounds} rounds per app; gunicorn --workers {args.workers} (sync), "
          f"both apps")
    with tempfile.TemporaryDirectory(prefix="nb2prod-bench-serve-") as tmp:
        work = Path(tmp)
        generated_dir, baseline_dir, store_uri = prepare(work)
        script = work / "post.lua"
        script.write_text(WRK_SCRIPT % json.dumps(PAYLOAD))
        apps = {"generated": generated_dir, "baseline": baseline_dir}
        results: dict[str, list[dict]] = {name: [] for name in apps}
        servers = {}
        try:
            for name, directory in apps.items():
                servers[name] = start(directory, args.workers, store_uri)
            for i in range(args.rounds):
                order = list(apps) if i % 2 == 0 else list(reversed(apps))
                for name in order:
                    port = servers[name][1]
                    # 1 s warm-up per round, not counted.
                    pid = servers[name][0].pid
                    if loadgen == "wrk":
                        wrk_round(port, 1, args.connections, script)
                        cpu0 = server_cpu_seconds(pid)
                        r = wrk_round(port, args.duration, args.connections, script)
                    else:
                        python_round(port, 1, args.connections)
                        cpu0 = server_cpu_seconds(pid)
                        r = python_round(port, args.duration, args.connections)
                    r["cpu_ms"] = (server_cpu_seconds(pid) - cpu0) * 1e3 / max(
                        1.0, r["rps"] * args.duration)
                    results[name].append(r)
                    print(f"round {i + 1} {name:9s} {r['rps']:8.1f} req/s  p50 {r['p50']:6.2f} ms"
                          f"  p99 {r['p99']:7.2f} ms  server CPU {r['cpu_ms']:.2f} ms/req"
                          f"  errors {r['errors']}"
                          f"{'  socket errors ' + r['socket_errors'] if r['socket_errors'] else ''}")
        finally:
            for proc, _ in servers.values():
                serve.stop_service(proc)
    keys = ("rps", "p50", "p99", "cpu_ms")
    med = {name: {k: statistics.median(r[k] for r in rs) for k in keys}
           for name, rs in results.items()}
    for name, m in med.items():
        print(f"median    {name:9s} {m['rps']:8.1f} req/s  p50 {m['p50']:6.2f} ms"
              f"  p99 {m['p99']:7.2f} ms  server CPU {m['cpu_ms']:.2f} ms/req")
    gen, base = med["generated"], med["baseline"]
    print(f"ratio generated/baseline requests/s: {gen['rps'] / base['rps']:.3f} "
          f"(target >= 0.95); p50 {gen['p50'] / base['p50']:.2f}x, "
          f"p99 {gen['p99'] / base['p99']:.2f}x")
    print(f"ratio by server CPU per request (baseline/generated, load-independent): "
          f"{base['cpu_ms'] / gen['cpu_ms']:.3f}")


if __name__ == "__main__":
    main()
