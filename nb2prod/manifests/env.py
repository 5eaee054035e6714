"""A pod's environment: nb2prod's settings as values, every credential as a secretKeyRef."""

from __future__ import annotations

from nb2prod.errors import Problem, UserError
from nb2prod.manifests.names import CONFIGMAP_KEY, DNS_SUBDOMAIN, Obj
from nb2prod.manifests.options import Options, store_mount
from nb2prod.manifests.paths import DEPS_DIR, TMP_DIR
from nb2prod.pipeline import Pipeline, StageSpec


def store_secret(env: str) -> bool:
    """Credentials every pod that reads the store needs (boto3's AWS_*, the signing key)."""
    return env.startswith("AWS_") or env == "NB2PROD_SIGNING_KEY"

#: The variable the stage runtime reads its manifest signing key from.
SIGNING_KEY_ENV = "NB2PROD_SIGNING_KEY"


def signing_secret(pipeline: Pipeline) -> tuple[str, str] | None:
    """`[artifacts] SIGNING_SECRET = name[:key]`: the Secret holding the manifest key.

    Every stage pod (batch and service) gets it as NB2PROD_SIGNING_KEY, so in-cluster
    runs sign what they save and services refuse unsigned or tampered manifests; the
    promote-and-roll step reads no artifacts and does not get it.
    """
    raw = pipeline.value("artifacts", "SIGNING_SECRET")
    if not raw:
        return None
    name, _, key = raw.partition(":")
    name, key = name.strip(), key.strip() or SIGNING_KEY_ENV
    if not DNS_SUBDOMAIN.match(name) or not CONFIGMAP_KEY.match(key):
        raise UserError(Problem(f"[artifacts] SIGNING_SECRET = {raw!r} is not a Secret name "
                                "(optionally NAME:KEY)", file=str(pipeline.root / "nb2prod.ini")))
    return name, key


def _secret_env(pipeline: Pipeline, stage: StageSpec | None) -> list[Obj]:
    """The stage's own `[secrets]`; pipeline-wide ones for batch stages and the promotion
    step, and for a service only the store's credentials (a service stage lists any
    other Secret it needs in its own config.ini)."""
    refs = {env: ref for env, ref in pipeline.secrets.items()
            if stage is None or stage.type == "batch" or store_secret(env)}
    if stage is not None:
        refs.update(stage.secrets)
        signing = signing_secret(pipeline)
        if signing is not None:
            refs[SIGNING_KEY_ENV] = signing
    return [{"name": env, "valueFrom": {"secretKeyRef": {"name": name, "key": key}}}
            for env, (name, key) in sorted(refs.items())]


def pod_env(pipeline: Pipeline, stage_name: str, opts: Options, extra: dict[str, str],
            stage: StageSpec | None) -> list[Obj]:
    """Plain settings first, then every `[secrets]` entry as a secretKeyRef (never a value)."""
    mount = store_mount(opts.store)
    values = {
        "NB2PROD_STORE": mount.uri,
        "NB2PROD_PIPELINE": pipeline.name,
        "NB2PROD_STAGE": stage_name,
        "HOME": TMP_DIR,
        # uid 1000 has no passwd entry in python:*-slim: getpass.getuser() needs USER.
        "USER": "nb2prod",
        "PYTHONUNBUFFERED": "1",
        "MPLBACKEND": "Agg",
        **extra,
    }
    if not opts.prebuilt:
        values["PYTHONPATH"] = DEPS_DIR
    if opts.endpoint_url:
        values["AWS_ENDPOINT_URL"] = opts.endpoint_url
    env = [{"name": k, "value": v} for k, v in values.items()]
    plain = set(values)
    for item in _secret_env(pipeline, stage):
        if item["name"] in plain:
            raise UserError(Problem(f"[secrets] {item['name']} clashes with a variable nb2prod "
                                    "sets itself", file=str(pipeline.root / "nb2prod.ini")))
        env.append(item)
    return env
