"""Signed manifests (`NB2PROD_SIGNING_KEY`): the stage runtime signs every manifest it
writes with HMAC-SHA256 and, with the key set, refuses to load an unsigned or wrongly
signed one.  Whoever can write the store can otherwise replace a joblib artifact *and*
its sha256, and loading it runs their code.
"""

from __future__ import annotations

import hashlib
import json
import pickle
from pathlib import Path
from types import SimpleNamespace

import pytest

from nb2prod import artifacts
from nb2prod.artifacts import ArtifactError, ManifestSignatureError
from tests.test_artifacts import _clean_runtime_state, stage  # noqa: F401 - fixtures
from tests.test_manifests import iris_dir, split_dirs  # noqa: F401 - fixtures

KEY = "correct horse battery staple"


class Marker:
    """Unpickling this runs `Path.touch(path)`: what a crafted artifact would do."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def craft(stage_dir: Path, name: str, marker: Path) -> None:
    """Swap artifact `name` for a code-running pickle and fix its sha256 and size."""
    manifest_path = stage_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    entry = manifest["artifacts"][name]
    payload = pickle.dumps(Marker(marker))
    (stage_dir / entry["file"]).write_bytes(payload)
    entry.update(format="pickle", sha256=hashlib.sha256(payload).hexdigest(),
                 bytes=len(payload))
    manifest_path.write_text(json.dumps(manifest))


@pytest.fixture
def signing(stage: SimpleNamespace, monkeypatch: pytest.MonkeyPatch  # noqa: F811
            ) -> SimpleNamespace:
    monkeypatch.setenv(artifacts.SIGNING_KEY_ENV, KEY)
    return stage


def test_saved_manifest_is_signed_and_loads(signing: SimpleNamespace) -> None:
    artifacts.save({"model": {"w": [1, 2]}})
    artifacts.save({"label": "setosa"})  # a second save re-signs the merged manifest
    manifest = json.loads((signing.dir / "manifest.json").read_text())
    assert manifest["signature"]["alg"] == "hmac-sha256"
    assert len(manifest["signature"]["value"]) == 64
    assert artifacts.load("model", producer="train") == {"w": [1, 2]}
    assert artifacts.load("label", producer="train") == "setosa"


def test_crafted_artifact_with_matching_sha256_is_refused(signing: SimpleNamespace,
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          tmp_path: Path) -> None:
    artifacts.save({"model": {"w": 1}})
    marker = tmp_path / "pwned"
    craft(signing.dir, "model", marker)
    with pytest.raises(ManifestSignatureError, match="wrong signature") as info:
        artifacts.load("model", producer="train")
    assert "\n" not in str(info.value) and "manifest.json" in str(info.value)
    assert not marker.exists()
    # The same store without a key: the sha256 matches, so the payload runs.  This is
    # the attack the key stops (and proves `craft` builds a working one).
    monkeypatch.delenv(artifacts.SIGNING_KEY_ENV)
    artifacts.load("model", producer="train")
    assert marker.exists()


def test_unsigned_manifest_is_refused(signing: SimpleNamespace,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(artifacts.SIGNING_KEY_ENV)
    artifacts.save({"a": 1})
    assert "signature" not in json.loads((signing.dir / "manifest.json").read_text())
    monkeypatch.setenv(artifacts.SIGNING_KEY_ENV, KEY)
    with pytest.raises(ManifestSignatureError, match="is not signed"):
        artifacts.load("a", producer="train")
    with pytest.raises(ManifestSignatureError, match="is not signed"):
        artifacts.save({"b": 2})  # never merge into (and so bless) an unsigned manifest


def test_manifest_signed_with_another_key_is_refused(signing: SimpleNamespace,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(artifacts.SIGNING_KEY_ENV, "another key")
    artifacts.save({"a": 1})
    monkeypatch.setenv(artifacts.SIGNING_KEY_ENV, KEY + "\n")  # a file-made Secret's newline
    with pytest.raises(ManifestSignatureError, match="wrong signature"):
        artifacts.load("a", producer="train")
    monkeypatch.setenv(artifacts.SIGNING_KEY_ENV, "another key\n")
    assert artifacts.load("a", producer="train") == 1


def test_edited_signed_field_is_refused(signing: SimpleNamespace) -> None:
    artifacts.save({"a": 1})
    path = signing.dir / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["artifacts"]["a"]["format"] = "pickle"  # any field, not only sha256
    path.write_text(json.dumps(manifest, indent=4))  # re-formatting alone would be fine
    with pytest.raises(ManifestSignatureError, match="wrong signature"):
        artifacts.load("a", producer="train")


def test_reformatted_signed_manifest_still_loads(signing: SimpleNamespace) -> None:
    artifacts.save({"a": [1.5, "x"]})
    path = signing.dir / "manifest.json"
    path.write_text(json.dumps(json.loads(path.read_text()), indent=None))
    assert artifacts.load("a", producer="train") == [1.5, "x"]


def test_empty_key_fails_closed(signing: SimpleNamespace,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(artifacts.SIGNING_KEY_ENV, "  \n")
    with pytest.raises(ArtifactError, match="NB2PROD_SIGNING_KEY is set but empty"):
        artifacts.save({"a": 1})
    assert not (signing.dir / "manifest.json").exists()


# -- in the cluster: the key comes from a Secret, by reference only ------------------------
def test_signing_secret_reaches_every_stage_pod_by_reference(iris_dir: Path) -> None:  # noqa: F811
    from nb2prod import manifests as m
    from nb2prod import retrain
    from nb2prod.errors import UserError
    from nb2prod.pipeline import load_pipeline
    from tests.test_manifests import container_of, options, set_ini

    def key_refs(container: dict) -> list[dict]:
        return [e for e in container["env"] if e["name"] == artifacts.SIGNING_KEY_ENV]

    p = m.plan(load_pipeline(iris_dir), options())
    assert key_refs(container_of(p.jobs["train"])) == []  # off unless configured
    set_ini(iris_dir / "nb2prod.ini", "artifacts", "SIGNING_SECRET", "nb2prod-signing")
    pipeline = load_pipeline(iris_dir)
    p = m.plan(pipeline, options())
    ref = {"name": artifacts.SIGNING_KEY_ENV, "valueFrom": {"secretKeyRef": {
        "name": "nb2prod-signing", "key": artifacts.SIGNING_KEY_ENV}}}
    assert key_refs(container_of(p.jobs["train"])) == [ref]
    assert key_refs(container_of(p.services["serve"][0])) == [ref]
    run = retrain.plan(pipeline, options()).job_spec["template"]["spec"]
    assert [key_refs(c) for c in run["initContainers"]] == [[ref]]
    assert key_refs(run["containers"][0]) == []  # promote-and-roll loads no artifacts
    set_ini(iris_dir / "nb2prod.ini", "artifacts", "SIGNING_SECRET", "keys:hmac")
    p = m.plan(load_pipeline(iris_dir), options())
    assert key_refs(container_of(p.services["serve"][0]))[0]["valueFrom"]["secretKeyRef"] == {
        "name": "keys", "key": "hmac"}
    set_ini(iris_dir / "nb2prod.ini", "artifacts", "SIGNING_SECRET", "Not A Name")
    with pytest.raises(UserError, match=r"\[artifacts\] SIGNING_SECRET"):
        m.plan(load_pipeline(iris_dir), options())
