"""nb2prod's stage runtime: artifact stores, save/load with manifests, metrics, promotion,
running a stage, serving one.

This package is copied once into every generated pipeline directory as
``nb2prod_runtime/`` (and shipped to the cluster as one ConfigMap), so a stage runs
(locally under papermill, or in a bare ``python:3.11-slim`` pod) without nb2prod
installed.  That is why its modules import only the standard library at module level
and each other relatively: numpy, pandas, pyarrow and joblib are imported when an object
of that kind is saved or loaded, boto3 only when an ``s3://`` store is used, Flask only
by ``web`` (service stages).  It must never import the ``nb2prod`` package.

Layout inside a store (keys are ``/``-separated)::

    <pipeline>/latest.json                          {"run_id": ..., "promoted_at": ...}
    <pipeline>/runs/<run_id>/run.json               run status, written by runners / promote
    <pipeline>/runs/<run_id>/<stage>/manifest.json  one entry per saved artifact
    <pipeline>/runs/<run_id>/<stage>/metrics.json   {metric: number}
    <pipeline>/runs/<run_id>/<stage>/<name>.<ext>   the artifacts

Generated stage cells call ``import nb2prod_runtime as _nb2prod`` and the names below;
``python -m nb2prod_runtime promote --pipeline P --run-id R [--metric M --min X]`` applies
the promotion gate in-cluster and moves ``latest.json``.
"""

from __future__ import annotations

from .errors import (
    ArtifactError,
    ArtifactIntegrityError,
    ArtifactNotFoundError,
    ArtifactVersionWarning,
    ManifestSignatureError,
    cell_label,
    first_line,
)
from .files import (
    FILES_PLAN,
    Snapshot,
    expect_file,
    files_key,
    prepare_workdir,
    record_files,
    snapshot,
)
from .kernel import (
    HtmlRenderer,
)
from .metrics import (
    SAMPLE_REQUEST,
    promote,
    promotion_passes,
    read_sample,
    record_metrics,
    record_sample,
    sample_rows,
)
from .runs import (
    list_runs,
    new_run_id,
    read_latest,
    read_run_metrics,
    record_run,
    upload_file,
    write_latest,
)
from .serializers import (
    SERIALIZER_ENTRY_POINTS,
    JoblibSerializer,
    JsonSerializer,
    KerasSerializer,
    LightGBMSerializer,
    NumpySerializer,
    PandasParquetSerializer,
    PandasPickleSerializer,
    PolarsSerializer,
    Serializer,
    TorchSerializer,
    XGBoostSerializer,
    register_serializer,
)
from .signing import (
    SIGNATURE,
    SIGNING_KEY_ENV,
    read_manifest,
    sign_manifest,
    verify_manifest,
    write_manifest,
)
from .stage import (
    execute_in_workdir,
    execute_notebook,
    log_stage_output,
    main,
    run_stage,
    start_kernel,
)
from .stage_env import (
    Context,
    context,
    current_input_run_id,
)
from .stores import (
    DEFAULT_STORE,
    LATEST,
    LATEST_JSON,
    MANIFEST,
    MANUAL_RUN_ID,
    METRICS,
    RUN_JSON,
    FileStore,
    S3Store,
    Store,
    StoreFactory,
    absolute_store_uri,
    open_store,
    read_json,
    register_store,
    registered_schemes,
    run_prefix,
    write_json,
)
from .values import (
    load,
    save,
)

__all__ = [
    "DEFAULT_STORE",
    "FILES_PLAN",
    "LATEST",
    "LATEST_JSON",
    "MANIFEST",
    "MANUAL_RUN_ID",
    "METRICS",
    "RUN_JSON",
    "SAMPLE_REQUEST",
    "SERIALIZER_ENTRY_POINTS",
    "SIGNATURE",
    "SIGNING_KEY_ENV",
    "ArtifactError",
    "ArtifactIntegrityError",
    "ArtifactNotFoundError",
    "ArtifactVersionWarning",
    "Context",
    "FileStore",
    "HtmlRenderer",
    "JoblibSerializer",
    "JsonSerializer",
    "KerasSerializer",
    "LightGBMSerializer",
    "ManifestSignatureError",
    "NumpySerializer",
    "PandasParquetSerializer",
    "PandasPickleSerializer",
    "PolarsSerializer",
    "S3Store",
    "Serializer",
    "Snapshot",
    "Store",
    "StoreFactory",
    "TorchSerializer",
    "XGBoostSerializer",
    "absolute_store_uri",
    "cell_label",
    "context",
    "current_input_run_id",
    "execute_in_workdir",
    "execute_notebook",
    "expect_file",
    "files_key",
    "first_line",
    "list_runs",
    "load",
    "log_stage_output",
    "main",
    "new_run_id",
    "open_store",
    "prepare_workdir",
    "promote",
    "promotion_passes",
    "read_json",
    "read_latest",
    "read_manifest",
    "read_run_metrics",
    "read_sample",
    "record_files",
    "record_metrics",
    "record_run",
    "record_sample",
    "register_serializer",
    "register_store",
    "registered_schemes",
    "run_prefix",
    "run_stage",
    "sample_rows",
    "save",
    "sign_manifest",
    "snapshot",
    "start_kernel",
    "upload_file",
    "verify_manifest",
    "write_json",
    "write_latest",
    "write_manifest",
]
