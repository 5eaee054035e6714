"""What a deploy is given: namespace, store, run id, parameters, endpoint, input files.

Checked before anything is created (bad input is one line, exit 2), from the
pipeline, the command line and the deploying environment; shared by `deploy`
and the in-cluster runs (`schedule`, `deploy --no-wait`).  Input files go to
the store here, content-addressed, because pods fetch them from there.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from nb2prod import manifests, workdir
from nb2prod.errors import Problem, UserError
from nb2prod.pipeline import Pipeline, notebook_parameters, run_parameters
from nb2prod.settings import checked_option, endpoint_url, image_ref


def _params(pipeline: Pipeline, params: Mapping[str, object] | Sequence[str] | None
            ) -> dict[str, object]:
    """`--param k=v` strings (typed like the notebook defaults) or an already typed mapping."""
    if params is None:
        return run_parameters(pipeline, [])
    if isinstance(params, Mapping):
        values = run_parameters(pipeline, [])
        defaults: dict[str, object] = {}
        for stage in pipeline.stages.values():
            defaults.update(notebook_parameters(stage))
        for key, value in params.items():
            if key not in defaults:
                raise UserError(Problem(f"parameter '{key}' is not in the notebook's parameters "
                                        f"cell (known: {', '.join(sorted(defaults)) or 'none'})"))
            values[key] = value
        return values
    return run_parameters(pipeline, list(params))


def deploy_endpoint(pipeline: Pipeline) -> str | None:
    """The S3 endpoint the pods get; one with credentials in it is refused, never copied."""
    for name in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"):
        if os.environ.get(name):
            where, value = name, os.environ[name]
            break
    else:
        where, value = "[artifacts] ENDPOINT_URL", pipeline.value("artifacts", "ENDPOINT_URL")
    if not value:
        return None
    try:
        endpoint_url(value)
    except ValueError as exc:  # the value itself is not shown: it may hold a password
        raise UserError(Problem(f"{where}: {exc}")) from None
    return value


def options_for(pipeline: Pipeline, namespace: str, *, image: str | None = None,
                store: str | None = None, params: Mapping[str, object] | Sequence[str] | None
                = None, run_id: str | None = None) -> manifests.Options:
    """Deploy options from the pipeline, the command line and the deploying environment."""
    from nb2prod import artifacts

    if not namespace:
        namespace = pipeline.value("kubernetes", "NAMESPACE")
    if not namespace:
        raise UserError(Problem("--namespace is required (or set [kubernetes] NAMESPACE in "
                                "nb2prod.ini)"))
    if not manifests.DNS_LABEL.match(namespace) or len(namespace) > 63:
        raise UserError(Problem(f"--namespace {namespace}: not a valid namespace name "
                                "(lowercase letters, digits and '-')"))
    endpoint = deploy_endpoint(pipeline)
    checked_option(image_ref, image or None, "--image")
    return manifests.Options(
        namespace=namespace, store=pipeline.store_uri(store),
        run_id=run_id or artifacts.new_run_id(), image=image or None,
        params=_params(pipeline, params), endpoint_url=endpoint,
        boto3_requirement=manifests.default_boto3_requirement(),
        files=described_files(pipeline))


def described_files(pipeline: Pipeline) -> dict[str, dict[str, dict]]:
    """Each stage's FILES as `{rel: {sha256, bytes}}`; a file several stages use is hashed
    once per deploy (the cache keys use these digests too: `cache.cache_plan`)."""
    seen: dict[Path, dict] = {}
    found: dict[str, dict[str, dict]] = {}
    for name in pipeline.order:
        files = workdir.stage_files(pipeline, name)
        new = {rel: path for rel, path in files.items() if path not in seen}
        seen.update(zip(new.values(), workdir.describe(new).values()))
        found[name] = {rel: seen[path] for rel, path in files.items()}
    return found


def upload_input_files(pipeline: Pipeline, opts: manifests.Options) -> int:
    """Put the stages' input files in the store, content-addressed; returns how many were new.

    Pods fetch them from there by sha256 (DESIGN.md "Files and local code"), so
    this machine must be able to write the store: a `pvc://` claim it cannot reach
    is refused when there are files to ship.
    """
    from nb2prod import artifacts

    sources: dict[str, Path] = {}
    for name, described in opts.files.items():
        found = workdir.stage_files(pipeline, name) if described else {}
        for rel, entry in described.items():
            sources.setdefault(entry["sha256"], found[rel])
    if not sources:
        return 0
    if manifests.store_mount(opts.store).claim:
        raise UserError(Problem(
            f"stages need input files ({len(sources)}), which deploy puts in the store, but "
            f"{opts.store} is a claim this machine cannot write: use an s3:// store, or leave "
            "them out of FILES ([files] EXCLUDE) and bake them into --image"))
    uploaded = 0
    try:
        store = artifacts.open_store(opts.store)
        for sha, path in sorted(sources.items()):
            key = artifacts.files_key(pipeline.name, sha)
            if not store.exists(key):
                store.upload(key, path)
                uploaded += 1
    except Exception as exc:  # noqa: BLE001 - credentials, network, bucket: one line
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(Problem(f"cannot put the input files in the store {opts.store}: "
                                f"{first}")) from None
    return uploaded


