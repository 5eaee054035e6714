"""The Kubernetes objects of a deploy, checked field by field and against the schemas.

`nb2prod.manifests` is pure, so everything here runs without a cluster: the
bundled examples are split once per module and turned into objects; each
object must validate in strict mode (unknown keys rejected) for Kubernetes
1.28 and the newest schema kubernetes-validate ships.  The stand-in tests in
test_deploy.py then prove the objects actually run.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from nb2prod import manifests as m
from nb2prod import serve
from nb2prod.errors import UserError
from nb2prod.pipeline import load_pipeline

EXAMPLES = Path(__file__).resolve().parents[1] / "example_notebooks"
RUN = "20260101t000000-abcd"
LABEL_KEYS = {"app.kubernetes.io/name", "app.kubernetes.io/instance",
              "app.kubernetes.io/component", "app.kubernetes.io/part-of",
              "app.kubernetes.io/managed-by"}


@pytest.fixture(scope="module")
def split_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from nb2prod.split import split_notebook

    out = {}
    for name in ("iris", "wine_parallel"):
        target = tmp_path_factory.mktemp("split") / f"{name}-pipeline"
        split_notebook(EXAMPLES / f"{name}.ipynb", target)
        out[name] = target
    return out


@pytest.fixture
def iris_dir(split_dirs: dict[str, Path], tmp_path: Path) -> Path:
    """A private copy of the iris pipeline that a test may edit."""
    target = tmp_path / "iris-pipeline"
    shutil.copytree(split_dirs["iris"], target)
    return target


def options(**kw: object) -> m.Options:
    base: dict = {"namespace": "ml", "store": "s3://bucket/prefix", "run_id": RUN}
    base.update(kw)
    return m.Options(**base)  # type: ignore[arg-type]


def set_ini(path: Path, section: str, key: str, value: str) -> None:
    """Edit one key of an .ini file the way a user would (text, comments kept)."""
    lines = path.read_text().splitlines()
    out, in_section, done = [], False, False
    for line in lines:
        stripped = line.strip()
        if stripped.startswith("["):
            if in_section and not done:
                out.append(f"{key} = {value}")
                done = True
            in_section = stripped == f"[{section}]"
        elif in_section and stripped.split("=")[0].strip() == key:
            out.append(f"{key} = {value}")
            done = True
            continue
        out.append(line)
    if not done:
        if not in_section:
            out.append(f"[{section}]")
        out.append(f"{key} = {value}")
    path.write_text("\n".join(out) + "\n")


def env_of(container: dict) -> dict[str, object]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def spec_selector(deployment: dict) -> dict:
    return deployment["spec"]["selector"]["matchLabels"]


def container_of(obj: dict) -> dict:
    return obj["spec"]["template"]["spec"]["containers"][0]


# -- schemas ------------------------------------------------------------------------------
@pytest.mark.parametrize("image", [None, "registry.example/iris:1"])
@pytest.mark.parametrize("store", ["s3://bucket/prefix", "pvc://models/iris"])
def test_every_object_validates_strictly(split_dirs: dict[str, Path], image: str | None,
                                         store: str) -> None:
    kv = pytest.importorskip("kubernetes_validate")
    from kubernetes_validate import utils

    versions = ["1.28.0", utils.latest_version()]
    assert versions[1] != versions[0]
    for directory in split_dirs.values():
        objects = m.plan(load_pipeline(directory), options(image=image, store=store)).objects()
        assert objects
        for version in versions:
            for obj in objects:
                kv.validate(obj, version, strict=True)


def test_record_job_and_claim_reader_validate(iris_dir: Path) -> None:
    """The Jobs/pods deploy and `runs` make besides the plan: same hardening, valid."""
    kv = pytest.importorskip("kubernetes_validate")
    from kubernetes_validate import utils

    from nb2prod.runners import claim

    pipeline = load_pipeline(iris_dir)
    opts = options(store="pvc://models/iris")
    code = m.stage_code(pipeline.stages["train"])
    job = m.record_job(pipeline, code, opts, {"status": "failed", "reason": "why"})
    script = container_of(job)["command"][2]
    assert "-m nb2prod_runtime record --pipeline iris --run-id" in script
    assert '--values \'{"reason": "why", "status": "failed"}\'' in script
    reader = claim.reader_pod(pipeline, opts)
    assert reader["spec"]["volumes"][0]["persistentVolumeClaim"] == {
        "claimName": "models", "readOnly": True}
    assert reader["spec"]["containers"][0]["command"][-2:] == ["/nb2prod/store/iris", "iris"]
    for obj in (job, reader):
        for version in ("1.28.0", utils.latest_version()):
            kv.validate(obj, version, strict=True)
        pod = obj["spec"]["template"]["spec"] if obj["kind"] == "Job" else obj["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["containers"][0]["securityContext"] == m.CONTAINER_SECURITY


def test_ingress_validates(iris_dir: Path) -> None:
    kv = pytest.importorskip("kubernetes_validate")
    set_ini(iris_dir / "stage-2-serve/config.ini", "service", "INGRESS", "true")
    set_ini(iris_dir / "stage-2-serve/config.ini", "service", "INGRESS_HOST", "iris.example.com")
    objs = m.plan(load_pipeline(iris_dir), options()).services["serve"]
    assert [o["kind"] for o in objs] == ["Deployment", "Service", "NetworkPolicy", "Ingress"]
    ing = objs[3]
    rule = ing["spec"]["rules"][0]
    assert rule["host"] == "iris.example.com"
    assert rule["http"]["paths"][0]["path"] == "/predict"
    assert rule["http"]["paths"][0]["backend"]["service"]["name"] == "iris-serve"
    kv.validate(ing, "1.28.0", strict=True)


def test_render_yaml_round_trips(split_dirs: dict[str, Path]) -> None:
    import yaml

    objects = m.plan(load_pipeline(split_dirs["wine_parallel"]), options()).objects()
    text = m.to_yaml(objects, header="# rendered\n")
    assert text.startswith("# rendered\n---\n")
    assert list(yaml.safe_load_all(text)) == objects
    assert "&id" not in text  # no YAML anchors: kubectl users read this


# -- labels and names ---------------------------------------------------------------------
def test_every_object_is_labelled(split_dirs: dict[str, Path]) -> None:
    pipeline = load_pipeline(split_dirs["wine_parallel"])
    p = m.plan(pipeline, options())
    for obj in p.objects():
        lbls = obj["metadata"]["labels"]
        if obj["kind"] == "Namespace":  # shared by pipelines: never deleted with one
            assert lbls["app.kubernetes.io/managed-by"] == "nb2prod"
            assert "app.kubernetes.io/instance" not in lbls
            continue
        assert LABEL_KEYS <= set(lbls), obj["kind"]
        assert lbls["app.kubernetes.io/instance"] == pipeline.name
        assert lbls["app.kubernetes.io/managed-by"] == "nb2prod"
        assert lbls["app.kubernetes.io/part-of"] == "nb2prod"
        assert obj["metadata"]["namespace"] == "ml"
    for stage, job in p.jobs.items():
        assert job["metadata"]["labels"]["nb2prod.io/run-id"] == RUN
        assert job["metadata"]["labels"]["app.kubernetes.io/component"] == stage
        assert job["spec"]["template"]["metadata"]["labels"]["nb2prod.io/run-id"] == RUN
    kinds = {o["metadata"]["labels"]["app.kubernetes.io/component"]
             for o in p.setup if o["kind"] != "ConfigMap"}
    assert kinds == {"rbac"}
    assert {o["metadata"]["labels"]["app.kubernetes.io/component"]
            for o in p.setup if o["kind"] == "ConfigMap"} == {"code", "runtime"}


def test_underscores_become_dashes_and_names_fit(split_dirs: dict[str, Path]) -> None:
    pipeline = load_pipeline(split_dirs["wine_parallel"])
    p = m.plan(pipeline, options())
    names = [o["metadata"]["name"] for o in p.objects()]
    assert all("_" not in n for n in names)
    job = p.jobs["train_forest"]["metadata"]["name"]
    assert job.startswith("wine-parallel-train-forest-") and len(job) <= 63
    assert m.job_name(pipeline, "train_forest", "other-run") != job
    assert m.job_name(pipeline, "train_forest", RUN) == job  # deterministic per run
    long = "x" * 40
    assert len(m.job_name(pipeline, long, RUN)) <= 63
    assert m.promote_job_name(pipeline, RUN) != m.job_name(pipeline, "promote", RUN)


def test_pipeline_name_must_suit_kubernetes(iris_dir: Path) -> None:
    set_ini(iris_dir / "nb2prod.ini", "project", "NAME", "9lives")
    with pytest.raises(UserError, match="NAME = '9lives'"):
        m.plan(load_pipeline(iris_dir), options())


# -- code ConfigMaps ------------------------------------------------------------------------
def test_configmap_holds_every_file_named_by_content(iris_dir: Path) -> None:
    pipeline = load_pipeline(iris_dir)
    p = m.plan(pipeline, options())
    cms = {o["metadata"]["labels"].get("nb2prod.io/stage"): o for o in p.setup
           if o["kind"] == "ConfigMap"}
    runtime = cms.pop(None)  # the runtime: once per pipeline, not in any stage's ConfigMap
    assert runtime["metadata"]["labels"]["app.kubernetes.io/component"] == "runtime"
    assert sorted(runtime["data"]) == sorted(
        f"nb2prod_runtime__{f.name}" for f in (iris_dir / "nb2prod_runtime").glob("*.py"))
    assert runtime["data"]["nb2prod_runtime__stores.py"] == \
        (iris_dir / "nb2prod_runtime/stores.py").read_text()
    volumes = p.jobs["train"]["spec"]["template"]["spec"]["volumes"]
    runtime_volume = next(v for v in volumes if v["name"] == "runtime")
    assert runtime_volume["configMap"]["name"] == runtime["metadata"]["name"]
    assert {"key": "nb2prod_runtime____init__.py", "path": "nb2prod_runtime/__init__.py"} in \
        runtime_volume["configMap"]["items"]
    train = cms["train"]
    assert train["immutable"] is True
    files = {f.name for f in (iris_dir / "stage-1-train").iterdir() if f.is_file()}
    assert set(train["data"]) == files | {"nb2prod_files.json"}  # + the files plan
    assert json.loads(train["data"]["nb2prod_files.json"]) == {"files": {}, "upstream": []}
    assert json.loads(cms["serve"]["data"]["nb2prod_files.json"])["upstream"] == ["train"]
    assert train["data"]["config.ini"] == (iris_dir / "stage-1-train/config.ini").read_text()
    assert "app.py" in cms["serve"]["data"]
    name = train["metadata"]["name"]
    assert name.startswith("iris-train-") and len(name.rsplit("-", 1)[1]) == 10
    # unchanged files -> same name (a re-deploy reuses it); any change -> a new one
    assert m.plan(pipeline, options(run_id="another")).setup == p.setup
    (iris_dir / "stage-1-train/train.py").write_text("# edited\n")
    again = m.plan(load_pipeline(iris_dir), options())
    new = next(o for o in again.setup if o["kind"] == "ConfigMap"
           and o["metadata"]["labels"].get("nb2prod.io/stage") == "train")
    assert new["metadata"]["name"] != name
    job_volume = again.jobs["train"]["spec"]["template"]["spec"]["volumes"][0]
    assert job_volume["configMap"]["name"] == new["metadata"]["name"]


def test_binary_and_nested_files(iris_dir: Path) -> None:
    stage_dir = iris_dir / "stage-1-train"
    (stage_dir / "weights.bin").write_bytes(bytes(range(256)))
    (stage_dir / "lib").mkdir()
    (stage_dir / "lib" / "helpers.py").write_text("X = 1\n")
    (stage_dir / "__pycache__").mkdir()
    (stage_dir / "__pycache__" / "x.pyc").write_bytes(b"\0")
    (stage_dir / ".ipynb_checkpoints").mkdir()
    (stage_dir / ".ipynb_checkpoints" / "train-checkpoint.ipynb").write_text("{}")
    p = m.plan(load_pipeline(iris_dir), options())
    cm = next(o for o in p.setup if o["kind"] == "ConfigMap"
          and o["metadata"]["labels"].get("nb2prod.io/stage") == "train")
    assert "weights.bin" in cm["binaryData"] and "weights.bin" not in cm["data"]
    assert cm["data"]["lib__helpers.py"] == "X = 1\n"
    assert not any("pyc" in k or "checkpoint" in k for k in (*cm["data"], *cm["binaryData"]))
    items = p.jobs["train"]["spec"]["template"]["spec"]["volumes"][0]["configMap"]["items"]
    assert {"key": "lib__helpers.py", "path": "lib/helpers.py"} in items
    assert {"key": "weights.bin", "path": "weights.bin"} in items


def test_code_over_one_mib_is_refused_naming_the_stage(iris_dir: Path) -> None:
    (iris_dir / "stage-1-train" / "data.csv").write_text("1,2,3\n" * 200_000)
    with pytest.raises(UserError) as info:
        m.plan(load_pipeline(iris_dir), options())
    text = str(info.value)
    assert "stage 'train'" in text and "data.csv" in text and "\n" not in text


# -- stores ---------------------------------------------------------------------------------
@pytest.mark.parametrize("uri", ["file:///tmp/store", "file://.nb2prod/artifacts", "/abs/dir"])
def test_file_store_refused_in_one_line(iris_dir: Path, uri: str) -> None:
    with pytest.raises(UserError) as info:
        m.plan(load_pipeline(iris_dir), options(store=uri))
    assert "pods cannot reach" in str(info.value) and "\n" not in str(info.value)


def test_pvc_store_mounts_the_claim(iris_dir: Path) -> None:
    p = m.plan(load_pipeline(iris_dir), options(store="pvc://models/team/iris"))
    spec = p.jobs["train"]["spec"]["template"]["spec"]
    assert {"name": "store", "persistentVolumeClaim": {"claimName": "models"}} in spec["volumes"]
    mounts = {v["name"]: v["mountPath"] for v in spec["containers"][0]["volumeMounts"]}
    assert mounts["store"] == "/nb2prod/store"
    assert env_of(spec["containers"][0])["NB2PROD_STORE"] == "file:///nb2prod/store/team/iris"
    # no boto3 needed for a volume store
    assert "boto3" not in spec["containers"][0]["command"][2]


def test_s3_store_and_endpoint(iris_dir: Path) -> None:
    p = m.plan(load_pipeline(iris_dir), options(endpoint_url="http://minio:9000",
                                                boto3_requirement="boto3==1.2.3"))
    c = container_of(p.jobs["train"])
    env = env_of(c)
    assert env["NB2PROD_STORE"] == "s3://bucket/prefix"
    assert env["AWS_ENDPOINT_URL"] == "http://minio:9000"
    assert "boto3==1.2.3" in c["command"][2]


# -- batch Jobs -----------------------------------------------------------------------------
def test_batch_job_settings(iris_dir: Path) -> None:
    cfg = iris_dir / "stage-1-train/config.ini"
    set_ini(cfg, "batch", "RETRIES", "4")
    set_ini(cfg, "batch", "MAX_COMPLETION_TIME_SECONDS", "600")
    set_ini(cfg, "default", "CPU_REQUEST", "0.25")
    set_ini(cfg, "default", "MEMORY_REQUEST_MB", "300")
    set_ini(cfg, "default", "CPU_LIMIT", "2")
    set_ini(cfg, "default", "MEMORY_LIMIT_MB", "2048")
    set_ini(cfg, "default", "GPU", "1")
    job = m.plan(load_pipeline(iris_dir), options(params={"max_iter": 50})).jobs["train"]
    spec = job["spec"]
    assert spec["backoffLimit"] == 4
    assert spec["activeDeadlineSeconds"] == 600
    assert spec["ttlSecondsAfterFinished"] == 7 * 24 * 3600
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    c = pod["containers"][0]
    assert c["resources"] == {
        "requests": {"cpu": "250m", "memory": "300Mi", "ephemeral-storage": "1024Mi"},
        "limits": {"cpu": "2", "memory": "2048Mi", "ephemeral-storage": "8192Mi",
                   "nvidia.com/gpu": "1"}}
    assert c["image"] == "python:3.11-slim"
    env = env_of(c)
    assert env["NB2PROD_RUN_ID"] == RUN
    assert env["NB2PROD_PIPELINE"] == "iris" and env["NB2PROD_STAGE"] == "train"
    assert json.loads(env["NB2PROD_PARAMS"]) == {"max_iter": 50}
    assert c["command"][:2] == ["sh", "-c"]
    assert c["command"][2].rstrip().endswith("exec python -m nb2prod_runtime run-stage")


def test_limit_below_request_is_a_config_error(iris_dir: Path) -> None:
    cfg = iris_dir / "stage-1-train/config.ini"
    set_ini(cfg, "default", "CPU_LIMIT", "0.1")
    with pytest.raises(UserError, match="config.ini"):
        m.plan(load_pipeline(iris_dir), options())


def test_image_precedence(iris_dir: Path) -> None:
    pipeline = load_pipeline(iris_dir)
    assert container_of(m.plan(pipeline, options()).jobs["train"])["image"] == "python:3.11-slim"
    set_ini(iris_dir / "nb2prod.ini", "kubernetes", "IMAGE", "python:3.12-slim")
    set_ini(iris_dir / "stage-1-train/config.ini", "default", "IMAGE", "ghcr.io/me/train:2")
    pipeline = load_pipeline(iris_dir)
    p = m.plan(pipeline, options())
    assert container_of(p.jobs["train"])["image"] == "ghcr.io/me/train:2"
    assert container_of(p.services["serve"][0])["image"] == "python:3.12-slim"
    p = m.plan(pipeline, options(image="registry/x:1"))
    assert {container_of(o)["image"] for o in (p.jobs["train"], p.services["serve"][0],
                                              p.promote)} == {"registry/x:1"}


def test_pod_hardening(split_dirs: dict[str, Path]) -> None:
    p = m.plan(load_pipeline(split_dirs["iris"]), options())
    for obj in (*p.jobs.values(), p.promote, p.services["serve"][0]):
        pod = obj["spec"]["template"]["spec"]
        assert pod["securityContext"] == {
            "runAsNonRoot": True, "runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 1000,
            "seccompProfile": {"type": "RuntimeDefault"}}
        assert pod["automountServiceAccountToken"] is False
        assert pod["serviceAccountName"] == "iris-stages"
        c = pod["containers"][0]
        assert c["securityContext"] == {"allowPrivilegeEscalation": False,
                                        "capabilities": {"drop": ["ALL"]},
                                        "readOnlyRootFilesystem": True, "runAsNonRoot": True}
        mounts = {v["mountPath"]: v for v in c["volumeMounts"]}
        assert mounts["/nb2prod/code"]["readOnly"] is True
        writable = {v["name"] for v in pod["volumes"] if "emptyDir" in v}
        assert {"tmp", "work", "deps"} <= writable
        assert {mounts[p]["name"] for p in ("/tmp", "/nb2prod/work", "/nb2prod/deps")} == {
            "tmp", "work", "deps"}
        assert env_of(c)["HOME"] == "/tmp"


def test_default_image_script_pip_installs_into_an_emptydir(split_dirs: dict[str, Path]
                                                            ) -> None:
    p = m.plan(load_pipeline(split_dirs["iris"]), options(boto3_requirement="boto3==9"))
    job_script = container_of(p.jobs["train"])["command"][2]
    lines = job_script.strip().splitlines()
    assert lines[0] == "set -eu"
    assert lines[1] == "find /nb2prod/work -mindepth 1 -type d -exec chmod u+w {} +"
    assert lines[2] == "find /nb2prod/work -mindepth 1 -delete"
    assert lines[3] == "cp -rL /nb2prod/code/* /nb2prod/runtime/* /nb2prod/work/"
    assert lines[4] == "cd /nb2prod/work"
    assert lines[5] == "if [ ! -f /nb2prod/deps/.nb2prod-installed ]; then"
    assert lines[6].strip().startswith("python -m pip install --no-cache-dir")
    assert "--target /nb2prod/deps -r requirements.txt boto3==9" in lines[6]
    assert lines[-1] == "exec python -m nb2prod_runtime run-stage"
    assert env_of(container_of(p.jobs["train"]))["PYTHONPATH"] == "/nb2prod/deps"
    promote = container_of(p.promote)["command"][2]
    assert "-r requirements.txt" not in promote and "boto3==9" in promote
    for obj in (p.jobs["train"], p.promote, p.services["serve"][0]):
        script = container_of(obj)["command"][2]
        subprocess.run(["sh", "-n", "-c", script], check=True)  # valid shell
    # --image: dependencies are in the image; nothing is installed, no PYTHONPATH
    p = m.plan(load_pipeline(split_dirs["iris"]), options(image="reg/iris:1"))
    script = container_of(p.jobs["train"])["command"][2]
    assert "pip" not in script
    assert "PYTHONPATH" not in env_of(container_of(p.jobs["train"]))
    volumes = {v["name"] for v in p.jobs["train"]["spec"]["template"]["spec"]["volumes"]}
    assert "deps" not in volumes


def test_startup_script_runs_the_stage_from_a_writable_copy(tmp_path: Path) -> None:
    """Execute the generated shell with the container paths pointed at temp dirs."""
    code, work = tmp_path / "code", tmp_path / "work"
    code.mkdir()
    work.mkdir()
    (code / "..data").mkdir()  # what a ConfigMap volume has besides the files
    (code / "x.txt").write_text("hello")
    (code / "sub").mkdir()
    (code / "sub" / "y.txt").write_text("nested")
    runtime = tmp_path / "runtime"  # the runtime ConfigMap, items restoring the package
    (runtime / "..data").mkdir(parents=True)
    (runtime / "nb2prod_runtime").mkdir()
    (runtime / "nb2prod_runtime" / "stores.py").write_text("S = 1\n")
    script = m.startup_script("sh -c 'cat x.txt sub/y.txt; touch written'",
                                options(image="img"))
    script = script.replace(m.CODE_DIR, str(code)).replace(m.WORK_DIR, str(work))
    script = script.replace(m.RUNTIME_MOUNT, str(runtime))
    out = subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout == "hellonested"
    assert (work / "written").exists() and not (work / "..data").exists()
    assert (work / "nb2prod_runtime" / "stores.py").read_text() == "S = 1\n"


def runtime_mount(tmp_path: Path) -> Path:
    """What the runtime ConfigMap's volume looks like: `nb2prod_runtime/` (items), 0444."""
    mount = tmp_path / "runtime"
    (mount / "..data").mkdir(parents=True)
    (mount / "nb2prod_runtime").mkdir()
    (mount / "nb2prod_runtime" / "__init__.py").write_text("")
    (mount / "nb2prod_runtime" / "__init__.py").chmod(0o444)
    return mount


def localize(script: str, paths: dict[str, Path]) -> str:
    """The container paths of a startup script pointed at local dirs (in one pass)."""
    pattern = "|".join(re.escape(k) for k in sorted(paths, key=len, reverse=True))
    return re.sub(pattern, lambda match: str(paths[match.group(0)]), script)


def foreign_mount_point(path: Path) -> None:
    """An emptyDir as a node makes it: world-writable, owned by someone else than the
    container's user (who may write in it, but not chmod it)."""
    from tests.kube.podenv import foreign

    foreign(path)


def test_startup_script_survives_a_restart_in_the_same_pod(tmp_path: Path) -> None:
    """A second start finds the first one's read-only copies (ConfigMap files are 0444)
    and its finished pip install in the emptyDirs: it must start all the same."""
    from tests.kube.podrunner import without_root_powers

    code, work, deps, tmp = (tmp_path / n for n in ("code", "work", "deps", "tmp"))
    for d in (code, work, deps, tmp):
        d.mkdir()
        foreign_mount_point(d)
    (code / "app.py").write_text("x = 1\n")
    (code / "requirements.txt").write_text("")
    for f in code.iterdir():
        f.chmod(0o444)
    runtime = runtime_mount(tmp_path)
    script = m.startup_script("sh -c 'cat app.py; echo run >> stale.txt; ls'", options())
    fake_pip = tmp_path / "bin"
    fake_pip.mkdir()
    (fake_pip / "python").write_text("#!/bin/sh\necho pip-ran >> " + str(tmp / "pip-calls") + "\n")
    (fake_pip / "python").chmod(0o755)
    script = localize(script, {m.CODE_DIR: code, m.WORK_DIR: work, m.DEPS_DIR: deps,
                               m.TMP_DIR: tmp, m.RUNTIME_MOUNT: runtime})
    env = {"PATH": f"{fake_pip}:/usr/bin:/bin"}
    argv = without_root_powers(["sh", "-c", script], env)  # as the pod's uid 1000 would
    outputs = [subprocess.run(argv, capture_output=True, text=True, env=env, check=True).stdout
               for _ in range(2)]
    assert outputs[0] == outputs[1] == \
        "x = 1\napp.py\nnb2prod_runtime\nrequirements.txt\nstale.txt\n"
    assert oct((work / "app.py").stat().st_mode & 0o777) == "0o444"  # as the copy was
    assert (tmp / "pip-calls").read_text() == "pip-ran\n"  # installed once per pod


def test_failed_pip_install_names_the_network_error_and_image(tmp_path: Path) -> None:
    code, work, tmp = (tmp_path / n for n in ("code", "work", "tmp"))
    for d in (code, work, tmp, tmp_path / "deps"):
        d.mkdir()
    (code / "requirements.txt").write_text("ipykernel==7.4.0\n")
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "python").write_text(
        "#!/bin/sh\n"
        "echo \"WARNING: Retrying (Retry(total=0, connect=None, read=None, redirect=None, "
        "status=None)) after connection broken by 'NewConnectionError('<pip._vendor.urllib3."
        "connection.HTTPSConnection object at 0x7f>: Failed to establish a new connection: "
        "[Errno -3] Temporary failure in name resolution')': /simple/ipykernel/\"\n"
        "echo 'ERROR: Could not find a version that satisfies the requirement ipykernel==7.4.0 "
        "(from versions: none)'\n"
        "echo 'ERROR: No matching distribution found for ipykernel==7.4.0'\nexit 1\n")
    (fake / "python").chmod(0o755)
    script = m.startup_script("echo never", options())
    script = localize(script, {m.CODE_DIR: code, m.WORK_DIR: work, m.TMP_DIR: tmp,
                               m.DEPS_DIR: tmp_path / "deps",
                               m.RUNTIME_MOUNT: runtime_mount(tmp_path)})
    out = subprocess.run(["sh", "-c", script], capture_output=True, text=True,
                         env={"PATH": f"{fake}:/usr/bin:/bin"}, check=False)
    assert out.returncode == 1 and "never" not in out.stdout
    assert "No matching distribution" in out.stdout  # pip's own output is shown
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("nb2prod: pip could not install the requirements (Failed to "
                           "establish a new connection: [Errno -3] Temporary failure in name "
                           "resolution)")
    assert "from PyPI at start" in last and "--image" in last


def test_promote_job(iris_dir: Path) -> None:
    set_ini(iris_dir / "nb2prod.ini", "promotion", "METRIC", "accuracy")
    set_ini(iris_dir / "nb2prod.ini", "promotion", "MIN", "0.9")
    p = m.plan(load_pipeline(iris_dir), options())
    job = p.promote
    assert job["metadata"]["labels"]["app.kubernetes.io/component"] == "promote"
    assert job["metadata"]["labels"]["nb2prod.io/run-id"] == RUN
    script = container_of(job)["command"][2]
    assert script.rstrip().endswith(
        f"exec python -m nb2prod_runtime promote --pipeline iris --run-id {RUN} "
        "--metric accuracy --min 0.9")
    set_ini(iris_dir / "nb2prod.ini", "promotion", "MIN", "high")
    with pytest.raises(UserError, match="MIN"):
        m.plan(load_pipeline(iris_dir), options())


# -- secrets --------------------------------------------------------------------------------
def test_secrets_only_as_secret_key_refs(iris_dir: Path) -> None:
    set_ini(iris_dir / "nb2prod.ini", "secrets", "AWS_ACCESS_KEY_ID", "s3-credentials")
    set_ini(iris_dir / "nb2prod.ini", "secrets", "AWS_SECRET_ACCESS_KEY", "s3-credentials")
    set_ini(iris_dir / "stage-2-serve/config.ini", "secrets", "NB2PROD_API_TOKEN",
            "api:token")
    p = m.plan(load_pipeline(iris_dir), options())
    train, serve = container_of(p.jobs["train"]), container_of(p.services["serve"][0])
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in serve["env"] if "valueFrom" in e}
    assert refs == {
        "AWS_ACCESS_KEY_ID": {"name": "s3-credentials", "key": "AWS_ACCESS_KEY_ID"},
        "AWS_SECRET_ACCESS_KEY": {"name": "s3-credentials", "key": "AWS_SECRET_ACCESS_KEY"},
        "NB2PROD_API_TOKEN": {"name": "api", "key": "token"},
    }
    train_refs = {e["name"] for e in train["env"] if "valueFrom" in e}
    assert train_refs == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    assert all("value" not in e for e in serve["env"] if "valueFrom" in e)
    set_ini(iris_dir / "nb2prod.ini", "secrets", "NB2PROD_STORE", "x")
    with pytest.raises(UserError, match="NB2PROD_STORE"):
        m.plan(load_pipeline(iris_dir), options())


def test_each_stage_gets_only_its_secrets(iris_dir: Path) -> None:
    set_ini(iris_dir / "nb2prod.ini", "secrets", "AWS_ACCESS_KEY_ID", "s3-credentials")
    set_ini(iris_dir / "nb2prod.ini", "secrets", "WAREHOUSE_PASSWORD", "warehouse")
    set_ini(iris_dir / "stage-1-train/config.ini", "secrets", "LABELS_TOKEN", "labels")
    p = m.plan(load_pipeline(iris_dir), options())

    def refs(obj: dict) -> set[str]:
        return {e["name"] for e in container_of(obj)["env"] if "valueFrom" in e}

    assert refs(p.jobs["train"]) == {"AWS_ACCESS_KEY_ID", "WAREHOUSE_PASSWORD", "LABELS_TOKEN"}
    assert refs(p.promote) == {"AWS_ACCESS_KEY_ID", "WAREHOUSE_PASSWORD"}
    assert refs(p.services["serve"][0]) == {"AWS_ACCESS_KEY_ID"}  # the store's only
    set_ini(iris_dir / "stage-2-serve/config.ini", "secrets", "WAREHOUSE_PASSWORD", "warehouse")
    p = m.plan(load_pipeline(iris_dir), options())
    assert refs(p.services["serve"][0]) == {"AWS_ACCESS_KEY_ID", "WAREHOUSE_PASSWORD"}


# -- services -------------------------------------------------------------------------------
def test_deployment_and_service(iris_dir: Path) -> None:
    cfg = iris_dir / "stage-2-serve/config.ini"
    set_ini(cfg, "service", "REPLICAS", "3")
    set_ini(cfg, "service", "PORT", "9090")
    set_ini(cfg, "service", "WORKERS", "4")
    set_ini(cfg, "service", "MAX_STARTUP_TIME_SECONDS", "77")
    p = m.plan(load_pipeline(iris_dir), options(run_id="run-7"))
    dep, svc = p.services["serve"][:2]
    assert [o["kind"] for o in p.services["serve"]] == [  # INGRESS = false
        "Deployment", "Service", "NetworkPolicy"]
    policy = p.services["serve"][2]["spec"]
    assert policy["podSelector"]["matchLabels"] == spec_selector(p.services["serve"][0])
    assert policy["policyTypes"] == ["Ingress"]
    assert policy["ingress"] == [{"ports": [{"protocol": "TCP", "port": 9090}]}]
    assert dep["metadata"]["name"] == svc["metadata"]["name"] == "iris-serve"
    spec = dep["spec"]
    assert spec["replicas"] == 3
    assert spec["strategy"] == {"type": "RollingUpdate",
                                "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}
    assert spec["progressDeadlineSeconds"] == 77
    sel = spec["selector"]["matchLabels"]
    tmpl = spec["template"]
    assert sel.items() <= tmpl["metadata"]["labels"].items()
    assert svc["spec"]["selector"] == sel
    assert "nb2prod.io/run-id" not in sel  # selectors are immutable: never per run
    assert tmpl["metadata"]["annotations"]["nb2prod.io/model-run-id"] == "run-7"
    assert len(tmpl["metadata"]["annotations"]["nb2prod.io/code-hash"]) == 64
    c = tmpl["spec"]["containers"][0]
    assert c["ports"] == [{"name": "http", "containerPort": 9090, "protocol": "TCP"}]
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    # liveness checks gunicorn's socket, not a worker: a busy worker is not killed
    assert c["livenessProbe"]["tcpSocket"] == {"port": "http"}
    assert c["livenessProbe"]["initialDelaySeconds"] >= 77
    assert env_of(c)["MODEL_RUN_ID"] == "run-7"
    # the very settings of a local `nb2prod run` (serve.gunicorn_options), bound to 0.0.0.0
    settings = " ".join(serve.gunicorn_options(9090, 4, "0.0.0.0", shm=True))
    assert f"exec python -m gunicorn --chdir /nb2prod/work {settings} app:app" in c["command"][2]
    assert "--bind 0.0.0.0:9090 --workers 4" in settings
    assert "--worker-class gthread --threads 4 --keep-alive 5" in settings
    assert tmpl["spec"]["terminationGracePeriodSeconds"] > serve.GRACEFUL_TIMEOUT
    assert tmpl["spec"]["restartPolicy"] == "Always"
    assert svc["spec"]["type"] == "ClusterIP"
    assert svc["spec"]["ports"] == [{"name": "http", "port": 80, "targetPort": "http",
                                     "protocol": "TCP"}]
    assert m.service_url(load_pipeline(iris_dir), load_pipeline(iris_dir).stages["serve"],
                         "ml") == "http://iris-serve.ml.svc.cluster.local/predict"


def test_scratch_space_limits_namespace_labels_and_network_policy_switch(iris_dir: Path
                                                                        ) -> None:
    set_ini(iris_dir / "stage-1-train/config.ini", "default", "EPHEMERAL_STORAGE_MB", "2048")
    p = m.plan(load_pipeline(iris_dir), options())
    train = p.jobs["train"]["spec"]["template"]["spec"]
    res = train["containers"][0]["resources"]
    assert res["requests"]["ephemeral-storage"] == "2048Mi"
    assert res["limits"]["ephemeral-storage"] == "8192Mi"
    sizes = {v["name"]: v["emptyDir"]["sizeLimit"] for v in train["volumes"] if "emptyDir" in v}
    assert sizes == {"work": "8192Mi", "tmp": "8192Mi", "deps": "8192Mi"}
    promote = container_of(p.promote)["resources"]
    assert promote["limits"]["ephemeral-storage"] == "1Gi"
    labels = p.namespace["metadata"]["labels"]
    assert {labels[f"pod-security.kubernetes.io/{k}"] for k in ("enforce", "audit", "warn")} \
        == {"restricted"}
    set_ini(iris_dir / "stage-1-train/config.ini", "default", "EPHEMERAL_STORAGE_LIMIT_MB", "100")
    with pytest.raises(UserError, match="EPHEMERAL_STORAGE_LIMIT_MB"):
        m.plan(load_pipeline(iris_dir), options())
    set_ini(iris_dir / "stage-1-train/config.ini", "default", "EPHEMERAL_STORAGE_LIMIT_MB", "4096")
    set_ini(iris_dir / "nb2prod.ini", "kubernetes", "NETWORK_POLICY", "false")
    p = m.plan(load_pipeline(iris_dir), options())
    assert [o["kind"] for o in p.services["serve"]] == ["Deployment", "Service"]


@pytest.mark.parametrize(("image", "policy"), [
    ("python:3.11-slim", "IfNotPresent"), ("reg.example/iris", "Always"),
    ("reg.example:5000/iris:latest", "Always"), ("reg.example:5000/iris:3", "IfNotPresent"),
    ("reg.example/iris@sha256:" + "a" * 64, "IfNotPresent")])
def test_image_pull_policy_follows_the_reference(iris_dir: Path, image: str, policy: str
                                                 ) -> None:
    p = m.plan(load_pipeline(iris_dir), options(image=image))
    assert {(container_of(o)["image"], container_of(o)["imagePullPolicy"])
            for o in (p.jobs["train"], p.promote, p.services["serve"][0])} == {(image, policy)}


def test_image_digest_and_pull_policy_are_checked(iris_dir: Path) -> None:
    with pytest.raises(UserError, match="REPO@sha256"):
        m.plan(load_pipeline(iris_dir), options(image="reg/iris@sha256:abc"))
    set_ini(iris_dir / "nb2prod.ini", "kubernetes", "IMAGE_PULL_POLICY", "Never")
    p = m.plan(load_pipeline(iris_dir), options(image="reg/iris"))
    assert container_of(p.jobs["train"])["imagePullPolicy"] == "Never"
    set_ini(iris_dir / "nb2prod.ini", "kubernetes", "IMAGE_PULL_POLICY", "sometimes")
    with pytest.raises(UserError, match="IMAGE_PULL_POLICY"):
        m.plan(load_pipeline(iris_dir), options())


def test_privileged_port_refused(iris_dir: Path) -> None:
    set_ini(iris_dir / "stage-2-serve/config.ini", "service", "PORT", "80")
    with pytest.raises(UserError, match="PORT = 80"):
        m.plan(load_pipeline(iris_dir), options())


# -- RBAC -----------------------------------------------------------------------------------
def test_rbac_is_minimal(split_dirs: dict[str, Path], iris_dir: Path) -> None:
    p = m.plan(load_pipeline(split_dirs["iris"]), options())
    by_kind = {}
    for obj in p.setup:
        by_kind.setdefault(obj["kind"], []).append(obj)
    accounts = {o["metadata"]["name"]: o for o in by_kind["ServiceAccount"]}
    assert accounts["iris-stages"]["automountServiceAccountToken"] is False
    assert "iris-roller" in accounts
    (role,) = by_kind["Role"]
    assert role["rules"] == [{"apiGroups": ["apps"], "resources": ["deployments"],
                              "resourceNames": ["iris-serve"], "verbs": ["get", "patch"]},
                             {"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]},
                             {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]}]
    (binding,) = by_kind["RoleBinding"]
    assert binding["roleRef"]["name"] == "iris-roller"
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "iris-roller",
                                    "namespace": "ml"}]
    # a pipeline without services gets no Role at all (empty resourceNames = every object)
    shutil.rmtree(iris_dir / "stage-2-serve")
    set_ini(iris_dir / "nb2prod.ini", "workflow", "DAG", "train")
    p = m.plan(load_pipeline(iris_dir), options())
    assert {o["kind"] for o in p.setup} == {"ServiceAccount", "ConfigMap"}
    assert not p.services


def test_claim_snapshot_parsing() -> None:
    """What the reader pod printed becomes a store `list_runs` reads, or one clear error."""
    from nb2prod import artifacts
    from nb2prod.errors import PipelineFailure
    from nb2prod.runners import claim

    run = {"run_id": "r1", "status": "succeeded", "started": 1.0, "finished": 2.0}
    printed = json.dumps({"keys": ["iris/latest.json", "iris/runs/r1/run.json",
                                   "iris/runs/r1/train/model.joblib"],
                          "files": {"iris/latest.json": json.dumps({"run_id": "r1"}),
                                    "iris/runs/r1/run.json": json.dumps(run)}})
    store = claim.parse("pvc://models/", "Succeeded", "some noise\n" + printed + "\n")
    (found,) = artifacts.list_runs(store, "iris")
    assert (found["run_id"], found["status"], found["latest"]) == ("r1", "succeeded", True)
    assert found["stage_dirs"] == ["train"]
    with pytest.raises(PipelineFailure, match="reading pvc://models/: python: can't open"):
        claim.parse("pvc://models/", "Failed", "python: can't open file\n")


def test_dockerfile_preinstalls_every_stages_requirements(iris_dir: Path,
                                                         capsys: pytest.CaptureFixture[str]
                                                         ) -> None:
    from nb2prod import cli

    pipeline = load_pipeline(iris_dir)
    wanted = set()
    for stage in pipeline.stages.values():
        wanted |= {line.strip() for line in (stage.directory / "requirements.txt").read_text()
                   .splitlines() if line.strip() and not line.startswith("#")}
    text = m.dockerfile(pipeline, "pvc://models/iris", "boto3==9")
    lines = text.splitlines()
    assert "FROM python:3.11-slim" in lines and lines[-1] == "USER 1000:1000"
    installed = {line.strip().rstrip(" \\") for line in lines if line.startswith("      ")}
    assert installed == wanted and "gunicorn" in " ".join(installed)
    assert "boto3==9" in m.dockerfile(pipeline, "s3://bucket/x", "boto3==9")
    assert cli.main(["render", str(iris_dir), "--dockerfile"]) == 0
    assert capsys.readouterr().out == m.dockerfile(pipeline, pipeline.store_uri(None),
                                                   m.default_boto3_requirement())
