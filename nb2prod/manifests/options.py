"""What a deploy needs beyond the pipeline directory: the store, the image, the run."""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

from nb2prod.errors import Problem, UserError
from nb2prod.manifests.names import DNS_LABEL
from nb2prod.manifests.paths import STORE_DIR


@dataclass(frozen=True)
class StoreMount:
    """How pods reach the artifact store: the in-pod URI plus volumes for `pvc://`."""

    uri: str
    claim: str | None = None


def store_mount(uri: str) -> StoreMount:
    """`s3://` as given; `pvc://CLAIM/path` mounted at /nb2prod/store; `file://` refused.

    A `file://` path names a directory on the deploying machine, which no pod can
    see; refusing it beats Jobs that "succeed" into an emptyDir.
    """
    scheme, sep, rest = uri.partition("://")
    scheme = scheme.lower() if sep else "file"
    if scheme == "file":
        raise UserError(Problem(
            f"artifact store {uri} is a local directory that pods cannot reach; deploy with "
            "--store s3://bucket/prefix or pvc://CLAIM/path (or set [artifacts] STORE)"))
    if scheme == "pvc":
        claim, _, path = rest.partition("/")
        if not DNS_LABEL.match(claim):
            raise UserError(Problem(f"artifact store {uri}: expected pvc://CLAIM/path with a "
                                    "valid PersistentVolumeClaim name"))
        path = path.strip("/")
        return StoreMount(f"file://{STORE_DIR}" + (f"/{path}" if path else ""), claim)
    if scheme == "s3":
        if not rest.split("/")[0]:
            raise UserError(Problem(f"artifact store {uri}: expected s3://bucket/prefix"))
        return StoreMount(uri)
    raise UserError(Problem(f"artifact store {uri}: deploy supports s3:// and pvc:// stores"))


@dataclass(frozen=True)
class Options:
    """Everything about one deploy that is not in the pipeline directory."""

    namespace: str
    store: str
    run_id: str
    image: str | None = None           # --image: dependencies preinstalled
    params: dict[str, Any] = field(default_factory=dict)
    endpoint_url: str | None = None    # AWS_ENDPOINT_URL for S3-compatible stores
    #: stage -> {relative path: {sha256, bytes}}: input files its pods fetch from the store
    files: dict[str, dict[str, dict]] = field(default_factory=dict)
    boto3_requirement: str = "boto3"   # added to pip installs when the store is s3://

    @property
    def prebuilt(self) -> bool:
        return bool(self.image)


def default_boto3_requirement() -> str:
    """boto3 pinned to the deploying environment's version (what the store was tested with)."""
    try:
        return f"boto3=={metadata.version('boto3')}"
    except metadata.PackageNotFoundError:
        return "boto3"
