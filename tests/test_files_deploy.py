"""`deploy` with input files on the Kubernetes stand-in: through the store, by sha256.

The notebook of tests/test_files_run.py (data/train.csv and labels.json beside
it, a local package, a CSV and a joblib file passed between stages as files).
`deploy` puts the input files in the (moto S3) store under
`<pipeline>/files/<sha256>`; each pod fetches its own before its notebook runs
and restores what earlier stages wrote, so the service answers what the
notebook's `predict` answered.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import pytest

from nb2prod.errors import UserError
from tests.kube.standin import KubeStandIn
from tests.s3server import S3Server, s3_env, s3_server  # noqa: F401
from tests.test_deploy import (  # noqa: F401
    NS,
    cluster,
    create_secret,
    deploy,
    predict,
    split,
    use_secret_credentials,
)
from tests.test_files_run import PAYLOAD, whole_notebook, write_project

pytest_plugins = ["tests.kube.fixtures"]
pytestmark = pytest.mark.timeout(600)


def test_deploy_ships_input_files_through_the_store(
        cluster: tuple[KubeStandIn, str], s3_env: S3Server, tmp_path: Path) -> None:  # noqa: F811
    standin, store = cluster
    notebook = write_project(tmp_path)
    directory = split(notebook, tmp_path / "churn-pipeline")
    use_secret_credentials(directory)
    create_secret(standin, NS, "testing")
    result = deploy(directory, store)
    assert result["status"] == "succeeded", result

    bucket = store.split("/")[2]
    keys = {o["Key"] for o in s3_env.client().list_objects_v2(Bucket=bucket)["Contents"]}
    for rel in ("data/train.csv", "labels.json"):
        digest = hashlib.sha256((tmp_path / rel).read_bytes()).hexdigest()
        assert f"artifacts/churn/files/{digest}" in keys, rel
    manifest = json.loads(s3_env.client().get_object(
        Bucket=bucket, Key=f"artifacts/churn/runs/{result['run_id']}/train/manifest.json"
    )["Body"].read())
    assert list(manifest["files"]) == ["models/model.joblib"]

    status, answer = predict(standin, "churn-serve", PAYLOAD)
    assert status == 200, answer
    _, predicted = whole_notebook(notebook)
    assert answer == predicted


def test_deploy_refuses_files_it_cannot_put_in_a_pvc_store(kube_standin: KubeStandIn,
                                                           tmp_path: Path) -> None:
    from kubernetes import client
    from kubernetes.client.rest import ApiException

    from nb2prod.runners import kubernetes as kube

    directory = split(write_project(tmp_path), tmp_path / "churn-pipeline")
    core = client.CoreV1Api(kube_standin.api_client())
    claim = {"metadata": {"name": "claim"},
             "spec": {"accessModes": ["ReadWriteMany"],
                      "resources": {"requests": {"storage": "1Gi"}}}}
    # The claim exists (an earlier test of the session may have made the namespace):
    # what is refused is shipping files into it from this machine.
    for create, args in ((core.create_namespace, ({"metadata": {"name": NS}},)),
                         (core.create_namespaced_persistent_volume_claim, (NS, claim))):
        try:
            create(*args)
        except ApiException as exc:
            assert exc.status == 409, exc
    with pytest.raises(UserError, match="input files"):
        kube.deploy(directory, NS, image="python:3.11-slim", store="pvc://claim/artifacts")


def test_render_puts_the_files_its_pods_fetch_in_the_store(
        s3_env: S3Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: F811
    from nb2prod import cli

    directory = split(write_project(tmp_path), tmp_path / "churn-pipeline")
    bucket = s3_env.make_bucket()
    assert cli.main(["render", str(directory), "-n", NS, "--store", f"s3://{bucket}/a",
                     "-o", str(tmp_path / "out.yaml")]) == 0
    keys = {o["Key"] for o in s3_env.client().list_objects_v2(Bucket=bucket)["Contents"]}
    digest = hashlib.sha256((tmp_path / "labels.json").read_bytes()).hexdigest()
    assert f"a/churn/files/{digest}" in keys
    assert digest in (tmp_path / "out.yaml").read_text()  # the plan in the ConfigMap
    assert cli.main(["render", str(directory), "-n", NS, "--store", "pvc://claim/a",
                     "-o", str(tmp_path / "pvc.yaml")]) == 0
    assert "warning:" in capsys.readouterr().err


def test_an_in_cluster_run_fetches_its_files_in_every_stage(
        cluster: tuple[KubeStandIn, str], tmp_path: Path,  # noqa: F811
        capsys: pytest.CaptureFixture[str]) -> None:
    """`deploy --no-wait` (what a CronJob runs): one Job, the stages as init containers."""
    from tests.test_deploy import run_cli
    from tests.test_schedule import served_run, wait_job

    standin, store = cluster
    notebook = write_project(tmp_path)
    directory = split(notebook, tmp_path / "churn-pipeline")
    use_secret_credentials(directory)
    create_secret(standin, NS, "testing")
    code, output = run_cli(["deploy", str(directory), "-n", NS, "--image", "python:3.11-slim",
                            "--store", store, "--no-wait"], capsys)
    assert code == 0, output
    run = output.split("run ", 1)[1].split(" ", 1)[0]
    job = wait_job(standin, run)
    assert any(c["type"] == "Complete" and c["status"] == "True"
               for c in job["status"]["conditions"]), job["status"]
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and served_run(standin, "churn-serve")[0] != run:
        time.sleep(0.3)
    assert served_run(standin, "churn-serve")[0] == run
    _, predicted = whole_notebook(notebook)
    status, answer = (0, None)
    deadline = time.monotonic() + 120  # its own: the notebook's run above took its time
    while time.monotonic() < deadline:
        status, answer = predict(standin, "churn-serve", PAYLOAD)
        if status == 200:
            break
        time.sleep(0.5)
    assert (status, answer) == (200, predicted)


def test_deploy_hashes_a_file_several_stages_use_once(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from nb2prod import cache, workdir
    from nb2prod.pipeline import load_pipeline
    from nb2prod.runners import kubernetes as kube
    from tests.test_manifests import set_ini

    directory = split(write_project(tmp_path), tmp_path / "churn-pipeline")
    pipeline = load_pipeline(directory)
    # The cache key's files part is the same from deploy's digests as hashed afresh by `run`.
    described = kube.options_for(pipeline, NS, store="s3://bucket/prefix").files
    assert any(described.values())
    for name in pipeline.order:
        assert cache.cache_plan(pipeline, pipeline.stages[name], {}, described[name]) == \
            cache.cache_plan(pipeline, pipeline.stages[name], {})
    for name in pipeline.batch:  # every batch stage names the same file
        set_ini(pipeline.stages[name].directory / "config.ini", "default", "FILES",
                "labels.json")
    hashed: list[Path] = []
    real = workdir.sha256_file

    def counting(path: Path) -> str:
        hashed.append(Path(path))
        return real(path)

    monkeypatch.setattr(workdir, "sha256_file", counting)
    opts = kube.options_for(load_pipeline(directory), NS, store="s3://bucket/prefix")
    assert len(pipeline.batch) >= 2
    assert hashed == [(tmp_path / "labels.json").resolve()]
    digest = hashlib.sha256((tmp_path / "labels.json").read_bytes()).hexdigest()
    for name in pipeline.batch:
        assert opts.files[name] == {"labels.json": {
            "sha256": digest, "bytes": (tmp_path / "labels.json").stat().st_size}}
