"""`nb2prod run --store s3://bucket/prefix` against moto's standalone S3 server over HTTP.

The runner, every stage kernel and the gunicorn service are separate processes that find
the server through AWS_ENDPOINT_URL and dummy credentials in their environment, exactly
as they would find MinIO.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterator

import pytest

from tests.s3server import S3Server, s3_server  # noqa: F401
from tests.test_run_e2e import (
    EXAMPLES,
    Served,
    clean_env,
    eventually_ready,
    http,
    nb2prod,
    start_serving,
)

PREFIX = "team/ml"


@pytest.fixture(scope="module")
def s3_run(s3_server: S3Server,  # noqa: F811
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Served, str, dict]]:
    bucket = s3_server.make_bucket()
    work = tmp_path_factory.mktemp("iris-s3")
    shutil.copy(EXAMPLES / "iris.ipynb", work)
    split = nb2prod("split", "iris.ipynb", cwd=work)
    assert split.returncode == 0, split.stderr
    env = clean_env(**s3_server.env)
    served = start_serving("run", "iris-pipeline", "--store", f"s3://{bucket}/{PREFIX}",
                           cwd=work, pipeline_dir=work / "iris-pipeline", env=env)
    try:
        yield served, bucket, env
    finally:
        served.command.stop()


def objects(s3_server: S3Server, bucket: str) -> dict[str, bytes]:  # noqa: F811
    client = s3_server.client()
    found = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for item in page.get("Contents", []):
            found[item["Key"]] = client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
    return found


def test_s3_store_holds_artifacts_manifests_and_latest(
        s3_run: tuple[Served, str, dict], s3_server: S3Server) -> None:  # noqa: F811
    served, bucket, _ = s3_run
    stored = objects(s3_server, bucket)
    run = f"{PREFIX}/iris/runs/{served.run_id}"
    for key in (f"{run}/run.json", f"{run}/train/manifest.json", f"{run}/train/metrics.json",
                f"{run}/train/model.joblib", f"{run}/train/species.json",
                f"{run}/train/train.ipynb", f"{run}/train/train.html",
                f"{run}/train/log.txt", f"{PREFIX}/iris/latest.json"):
        assert key in stored, sorted(stored)
    assert all(key.startswith(f"{PREFIX}/iris/") for key in stored), sorted(stored)
    assert json.loads(stored[f"{PREFIX}/iris/latest.json"])["run_id"] == served.run_id
    manifest = json.loads(stored[f"{run}/train/manifest.json"])
    assert set(manifest["artifacts"]) == {"model", "species"}
    for entry in manifest["artifacts"].values():
        data = stored[f"{run}/train/{entry['file']}"]
        assert hashlib.sha256(data).hexdigest() == entry["sha256"]
        assert len(data) == entry["bytes"]
    record = json.loads(stored[f"{run}/run.json"])
    assert record["status"] == "succeeded" and record["promoted"] is True
    assert record["store"] == f"s3://{bucket}/{PREFIX}"
    # Nothing went to the default file store.
    assert not (served.pipeline_dir / ".nb2prod" / "artifacts" / "iris").exists()


def test_s3_served_predictions_and_info(s3_run: tuple[Served, str, dict]) -> None:
    served, bucket, env = s3_run
    status, _, body = served.predict(
        {"instances": [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5]]})
    assert (status, body) == (200, {"predictions": ["setosa", "virginica", "versicolor"]})
    eventually_ready(served.base)  # probes need no token
    status, _, info = http(served.base + "/info")
    assert status == 200 and info["run_id"] == served.run_id == served.served_run_id
    listing = nb2prod("runs", served.pipeline_dir, "--store", f"s3://{bucket}/{PREFIX}",
                      cwd=served.pipeline_dir.parent, env=env)
    assert listing.returncode == 0, listing.stderr
    row = next(line for line in listing.stdout.splitlines() if served.run_id in line)
    assert "(latest)" in row and "succeeded" in row and "accuracy=" in row
