"""The serializer registry: one small class per library, chosen by the value's type
(looked up by class name along the MRO, so choosing imports nothing); plugins come
from the `nb2prod.serializers` entry point group."""

from __future__ import annotations

import io
import json
import math
import os
import platform
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ArtifactError, ArtifactVersionWarning, _first_line


# -- serialization ---------------------------------------------------------------
def _is_exact_json(value: Any, path: set[int] | None = None) -> bool:
    """True when ``json.loads(json.dumps(value)) == value`` with identical types.

    Exact type checks on purpose: tuples, numpy scalars (a ``float`` subclass),
    IntEnums, non-str dict keys and NaN would all come back different.
    """
    kind = type(value)
    if value is None or kind in (bool, int, str):
        return True
    if kind is float:
        return math.isfinite(value)
    if kind is list or kind is dict:
        path = path or set()
        if id(value) in path:
            return False  # a cycle
        path.add(id(value))
        try:
            if kind is list:
                return all(_is_exact_json(item, path) for item in value)
            return all(type(k) is str and _is_exact_json(v, path) for k, v in value.items())
        finally:
            path.discard(id(value))
    return False


def _module_version(name: str) -> str | None:
    module = sys.modules.get(name)
    version = getattr(module, "__version__", None)
    return version if isinstance(version, str) else None


def _versions(value: Any, libraries: list[str]) -> dict[str, str]:
    versions = {"python": platform.python_version()}
    top = (type(value).__module__ or "").split(".")[0]
    candidates = list(libraries)
    if top and top != "builtins":
        candidates.append(top)
    for name in candidates:
        version = _module_version(name)
        if version:
            versions[name] = version
    return versions


def _has_pyarrow() -> bool:
    import importlib.util

    return importlib.util.find_spec("pyarrow") is not None


# -- serializer registry ------------------------------------------------------------
# One small class per library, chosen by the value's type: each serializer names
# the classes it handles ("xgboost.DMatrix": top-level package and class, or the
# full "xgboost.core.DMatrix"), matched along
# the value's MRO, so choosing one imports nothing (a DMatrix can only exist if
# xgboost is already imported) and subclasses are covered.  Several serializers may
# claim one type; the first whose ``dump`` does not decline wins, so pandas tries
# parquet, then pickle.  Anything unclaimed goes to joblib.  More serializers come
# from the ``nb2prod.serializers`` entry point group (tried before the built-ins)
# or ``register_serializer``; a serializer needs only the attributes and methods of
# ``Serializer`` (no import of this module), since a stage knows it as
# ``nb2prod_runtime`` and a developer as ``nb2prod.runtime``.

#: Entry point group whose objects (Serializer-like classes or instances) are registered.
SERIALIZER_ENTRY_POINTS = "nb2prod.serializers"


class Serializer:
    """Saves values of some types as bytes in one format, and loads them back.

    ``dump`` returns the bytes, or ``(bytes, extra)`` where ``extra`` is a dict of
    JSON values kept in the manifest entry and handed back to ``load``.  Raising
    ``NotImplementedError`` declines the value: the next serializer for its type
    tries, and the reason is kept in the manifest as ``<format>_error``.
    """

    format: str = ""                    # the manifest's "format"; unique per serializer
    ext: str = "bin"                    # artifact file extension
    types: tuple[str, ...] = ()         # "package.Class" or "module.Class", along the MRO
    libraries: tuple[str, ...] = ()     # modules whose versions the manifest records

    def accepts(self, value: Any) -> bool:
        """A finer check once one of ``types`` matched."""
        return True

    def dump(self, value: Any) -> bytes | tuple[bytes, dict]:
        raise NotImplementedError

    def load(self, data: bytes, entry: dict) -> Any:
        raise NotImplementedError


def _via_file(write: Callable[[str], Any], name: str) -> bytes:
    """Bytes of what ``write(path)`` writes, for libraries that only save to a path."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="nb2prod-save-") as tmp:
        path = os.path.join(tmp, name)
        write(path)
        return Path(path).read_bytes()


def _from_file(data: bytes, name: str, read: Callable[[str], Any]) -> Any:
    """``read(path)`` of a temp file holding ``data``; ``read`` must not keep the path."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="nb2prod-load-") as tmp:
        path = os.path.join(tmp, name)
        Path(path).write_bytes(data)
        return read(path)


class JsonSerializer(Serializer):
    """Builtins that survive a JSON round trip with identical types (see ``_is_exact_json``)."""

    format, ext = "json", "json"
    types = tuple(f"builtins.{t}" for t in ("dict", "list", "str", "int", "float", "bool",
                                             "NoneType"))

    def accepts(self, value: Any) -> bool:
        return _is_exact_json(value)

    def dump(self, value: Any) -> bytes:
        return json.dumps(value, allow_nan=False).encode("utf-8")

    def load(self, data: bytes, entry: dict) -> Any:
        return json.loads(data)


class NumpySerializer(Serializer):
    """Plain ndarrays as ``.npy`` without pickle (object arrays and subclasses: joblib)."""

    format, ext, types, libraries = "npy", "npy", ("numpy.ndarray",), ("numpy",)

    def accepts(self, value: Any) -> bool:
        return _names(type(value))[1] == "numpy.ndarray" and not value.dtype.hasobject

    def dump(self, value: Any) -> bytes:
        import numpy as np

        buf = io.BytesIO()
        np.save(buf, value, allow_pickle=False)
        return buf.getvalue()

    def load(self, data: bytes, entry: dict) -> Any:
        import numpy as np

        return np.load(io.BytesIO(data), allow_pickle=False)


_PANDAS_TYPES = ("pandas.DataFrame", "pandas.Series")


class PandasParquetSerializer(Serializer):
    """DataFrames and Series as parquet when pyarrow is importable and accepts them.

    pyarrow refuses e.g. non-string column names and mixed-type object columns;
    declining then lets the pickle serializer keep those exact.
    """

    format, ext, types, libraries = "parquet", "parquet", _PANDAS_TYPES, ("pandas", "pyarrow")

    def accepts(self, value: Any) -> bool:
        return _has_pyarrow() and (not _is_series(value) or _is_exact_json(value.name))

    def dump(self, value: Any) -> tuple[bytes, dict]:
        is_series = _is_series(value)
        extra: dict[str, Any] = {"pandas_type": "Series" if is_series else "DataFrame"}
        frame = value
        if is_series:
            extra["series_name"] = value.name
            frame = value.to_frame(name="__nb2prod_series__")
        buf = io.BytesIO()
        try:
            frame.to_parquet(buf, engine="pyarrow")
        except (ValueError, TypeError, NotImplementedError, LookupError, OverflowError) as exc:
            # pyarrow's ArrowInvalid/ArrowTypeError/... subclass these
            raise NotImplementedError(f"{type(exc).__name__}: {exc}") from exc
        return buf.getvalue(), extra

    def load(self, data: bytes, entry: dict) -> Any:
        import pandas as pd

        frame = pd.read_parquet(io.BytesIO(data), engine="pyarrow")
        if entry.get("pandas_type") == "Series":
            series = frame.iloc[:, 0]
            series.name = entry.get("series_name")
            return series
        return frame


def _is_a(value: Any, qualified_name: str) -> bool:
    """isinstance by class name, so the class's library need not be imported."""
    return any(qualified_name in _names(cls) for cls in type(value).__mro__)


def _names(cls: type) -> tuple[str, str]:
    """``module.Class`` and ``package.Class``: libraries move classes between modules
    across versions (pandas 3 says ``pandas.DataFrame``, 2.x ``pandas.core.frame``)."""
    module = cls.__module__ or ""
    return f"{module}.{cls.__qualname__}", f"{module.split('.')[0]}.{cls.__qualname__}"


def _is_series(value: Any) -> bool:
    return _is_a(value, _PANDAS_TYPES[1])


class PandasPickleSerializer(Serializer):
    """What parquet cannot hold, exactly, with pandas' own pickle support."""

    format, ext, types, libraries = "pickle", "pkl", _PANDAS_TYPES, ("pandas", "numpy")

    def dump(self, value: Any) -> tuple[bytes, dict]:
        import pickle

        return (pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL),
                {"pandas_type": "Series" if _is_series(value) else "DataFrame"})

    def load(self, data: bytes, entry: dict) -> Any:
        import pickle

        if "pandas" in entry.get("versions", {}):
            import pandas  # noqa: F401 - make sure pandas' unpickling hooks are available
        return pickle.loads(data)


class XGBoostSerializer(Serializer):
    """``Booster`` as UBJSON (xgboost's model format); ``DMatrix`` (unpicklable) as its binary."""

    format, ext, libraries = "xgboost", "xgb", ("xgboost",)
    types = ("xgboost.Booster", "xgboost.DMatrix")

    def dump(self, value: Any) -> tuple[bytes, dict]:
        if _is_a(value, self.types[0]):
            return bytes(value.save_raw("ubj")), {"xgboost_type": "Booster"}
        return _via_file(value.save_binary, "data.buffer"), {"xgboost_type": "DMatrix"}

    def load(self, data: bytes, entry: dict) -> Any:
        import xgboost as xgb

        if entry.get("xgboost_type") == "DMatrix":
            return _from_file(data, "data.buffer", xgb.DMatrix)  # reads the file eagerly
        booster = xgb.Booster()
        booster.load_model(bytearray(data))
        return booster


class LightGBMSerializer(Serializer):
    """``Booster`` as LightGBM's text model; a constructed ``Dataset`` as its binary.

    A Dataset that was never constructed holds only its raw inputs (and can be
    pickled, keeping the binning to the stage that trains): it goes to joblib.
    """

    format, ext, libraries = "lightgbm", "lgb", ("lightgbm",)
    types = ("lightgbm.Booster", "lightgbm.Dataset")

    def accepts(self, value: Any) -> bool:
        return _is_a(value, self.types[0]) or getattr(value, "_handle", None) is not None

    def dump(self, value: Any) -> tuple[bytes, dict]:
        if _is_a(value, self.types[0]):
            # Every iteration, and the early-stopping results the text model leaves out
            # (a Booster read back from text says best_iteration = -1).
            best_score = {data: {metric: float(score) for metric, score in scores.items()}
                          for data, scores in (value.best_score or {}).items()}
            return value.model_to_string(num_iteration=-1).encode("utf-8"), {
                "lightgbm_type": "Booster", "best_iteration": int(value.best_iteration),
                "best_score": best_score}
        params = value.params if _is_exact_json(value.params) else {}
        # Binned with these params: loading with others would make LightGBM refuse training.
        return (_via_file(value.save_binary, "data.bin"),
                {"lightgbm_type": "Dataset", "lightgbm_params": params})

    def load(self, data: bytes, entry: dict) -> Any:
        import lightgbm as lgb

        if entry.get("lightgbm_type") == "Dataset":
            params = {"verbose": -1, **(entry.get("lightgbm_params") or {})}
            return _from_file(data, "data.bin", lambda path: lgb.Dataset(
                path, params=params).construct())
        import collections

        booster = lgb.Booster(model_str=data.decode("utf-8"))
        booster.best_iteration = entry.get("best_iteration", -1)
        booster.best_score = collections.defaultdict(collections.OrderedDict, {
            data: collections.OrderedDict(scores)
            for data, scores in (entry.get("best_score") or {}).items()})
        return booster


class TorchSerializer(Serializer):
    """Tensors and modules with ``torch.save``; tensors load with ``weights_only``.

    A module is saved whole, so (as with joblib) its class must be importable or
    defined in the stage that loads it.
    """

    format, ext, libraries = "torch", "pt", ("torch",)
    types = ("torch.Tensor", "torch.nn.modules.module.Module")

    def dump(self, value: Any) -> tuple[bytes, dict]:
        import torch

        buf = io.BytesIO()
        torch.save(value, buf)
        kind = "tensor" if isinstance(value, torch.Tensor) else "module"
        return buf.getvalue(), {"torch_type": kind}

    def load(self, data: bytes, entry: dict) -> Any:
        import torch

        where = None if torch.cuda.is_available() else "cpu"  # a CPU pod reads GPU tensors
        return torch.load(io.BytesIO(data), map_location=where,
                          weights_only=entry.get("torch_type") == "tensor")


class KerasSerializer(Serializer):
    """Keras models in the native ``.keras`` format (Keras 3; also tf.keras / tf_keras)."""

    format, ext, libraries = "keras", "keras", ("keras", "tensorflow", "tf_keras")
    types = ("keras.Model", "tf_keras.Model")

    def dump(self, value: Any) -> tuple[bytes, dict]:
        module = type(value).__module__.split(".")[0]
        return _via_file(value.save, "model.keras"), {"keras_module": module}

    def load(self, data: bytes, entry: dict) -> Any:
        import importlib

        keras = importlib.import_module(entry.get("keras_module") or "keras")
        return _from_file(data, "model.keras", keras.models.load_model)


class PolarsSerializer(Serializer):
    """Polars DataFrames and Series as Arrow IPC (exact dtypes, no pandas round trip)."""

    format, ext, libraries = "polars", "arrow", ("polars",)
    types = ("polars.DataFrame", "polars.Series")

    def dump(self, value: Any) -> tuple[bytes, dict]:
        is_series = _is_a(value, self.types[1])
        buf = io.BytesIO()
        (value.to_frame() if is_series else value).write_ipc(buf)
        return buf.getvalue(), {"polars_type": "Series" if is_series else "DataFrame"}

    def load(self, data: bytes, entry: dict) -> Any:
        import polars as pl

        frame = pl.read_ipc(io.BytesIO(data))
        return frame.to_series() if entry.get("polars_type") == "Series" else frame


class JoblibSerializer(Serializer):
    """Everything no other serializer claimed (scikit-learn models, tuples, numpy scalars...)."""

    format, ext, libraries = "joblib", "joblib", ("joblib", "numpy")

    def dump(self, value: Any) -> bytes:
        import joblib

        buf = io.BytesIO()
        joblib.dump(value, buf)
        return buf.getvalue()

    def load(self, data: bytes, entry: dict) -> Any:
        import joblib

        return joblib.load(io.BytesIO(data))


_FALLBACK = JoblibSerializer()
_BY_FORMAT: dict[str, Any] = {}
_BY_TYPE: dict[str, list[Any]] = {}
_PLUGINS_LOADED = False


def register_serializer(serializer: Any, first: bool = True) -> None:
    """Add a serializer (an instance, or a class to instantiate) for its ``types``.

    ``first`` puts it ahead of the ones already registered for those types, so a
    plugin can replace a built-in choice.
    """
    if isinstance(serializer, type):
        serializer = serializer()
    if not getattr(serializer, "format", "") or not getattr(serializer, "types", ()):
        raise ValueError(f"serializer {serializer!r} needs a 'format' and 'types'")
    _BY_FORMAT[serializer.format] = serializer
    for name in serializer.types:
        claimed = _BY_TYPE.setdefault(name, [])
        claimed.insert(0, serializer) if first else claimed.append(serializer)


for _builtin in (JsonSerializer, NumpySerializer, PandasParquetSerializer,
                 PandasPickleSerializer, XGBoostSerializer, LightGBMSerializer,
                 TorchSerializer, KerasSerializer, PolarsSerializer):
    register_serializer(_builtin, first=False)
_BY_FORMAT[_FALLBACK.format] = _FALLBACK


def serializer_libraries() -> frozenset[str]:
    """The modules the registered serializers write with (their ``libraries``): a stage
    that saves or loads values may need them whether or not its own code imports them
    (split pins the ones a stage's imports lead to)."""
    return frozenset(lib for serializer in _BY_FORMAT.values() for lib in serializer.libraries)


def _load_plugins() -> None:
    """Register the ``nb2prod.serializers`` entry points, once per process.

    A plugin that fails to load is reported as a warning and skipped: the
    built-in serializers still work.
    """
    global _PLUGINS_LOADED
    if _PLUGINS_LOADED:
        return
    _PLUGINS_LOADED = True
    from importlib.metadata import entry_points

    for point in entry_points(group=SERIALIZER_ENTRY_POINTS):
        try:
            register_serializer(point.load())
        except Exception as exc:  # noqa: BLE001 - a broken plugin must not break saving
            warnings.warn(f"serializer entry point {point.name!r} ({point.value}) "
                          f"not loaded: {_first_line(exc)}", stacklevel=2)


def _candidates(value: Any) -> list[Any]:
    """Serializers claiming ``value``'s type (nearest class first), then joblib."""
    _load_plugins()
    found: list[Any] = []
    for cls in type(value).__mro__:
        for name in _names(cls):
            for serializer in _BY_TYPE.get(name, ()):
                if serializer not in found and serializer.accepts(value):
                    found.append(serializer)
    return [*found, _FALLBACK]


@dataclass
class _Serialized:
    data: bytes
    format: str
    ext: str
    libraries: list[str]
    extra: dict[str, Any]


def _serialize(value: Any) -> _Serialized:
    """The first serializer for ``value``'s type that does not decline it."""
    declined: dict[str, Any] = {}
    for serializer in _candidates(value):
        try:
            out = serializer.dump(value)
        except NotImplementedError as exc:
            if serializer is _FALLBACK:
                raise
            declined[f"{serializer.format}_error"] = _first_line(exc)[:300]
            continue
        data, extra = out if isinstance(out, tuple) else (out, {})
        return _Serialized(bytes(data), serializer.format, serializer.ext,
                           list(serializer.libraries), {**declined, **extra})
    raise AssertionError("unreachable: joblib is the last candidate")


def _deserialize(data: bytes, entry: dict) -> Any:
    fmt = entry.get("format")
    serializer = _BY_FORMAT.get(fmt)  # type: ignore[arg-type]
    if serializer is None:
        _load_plugins()
        serializer = _BY_FORMAT.get(fmt)  # type: ignore[arg-type]
    if serializer is None:
        raise ArtifactError(f"artifact {entry.get('name')!r} has unknown format {fmt!r}: "
                            "written by a newer nb2prod, or by a serializer plugin "
                            f"(entry point group '{SERIALIZER_ENTRY_POINTS}') not installed here")
    return serializer.load(data, entry)


def _unsaveable(name: str, value: Any, exc: BaseException) -> ArtifactError:
    """The producing stage's error: the variable, its type, and what to do about it."""
    kind = f"{type(value).__module__}.{type(value).__qualname__}"
    return ArtifactError(
        f"cannot save {name!r} ({kind}) for the stages that read it: {_first_line(exc)}. "
        f"Create {name!r} in the stage that uses it (or in a 'functions' cell), turn it "
        "into data that can be saved (arrays, data frames, dicts, fitted models), or "
        f"register a serializer for {kind} (entry point group '{SERIALIZER_ENTRY_POINTS}')")


def _warn_versions(entry: dict) -> None:
    for name, wanted in sorted(entry.get("versions", {}).items()):
        if name == "python":
            continue
        have = _module_version(name)
        if have and have != wanted:
            warnings.warn(
                f"artifact {entry.get('name')!r} was written with {name} {wanted}, "
                f"loading it with {name} {have}", ArtifactVersionWarning, stacklevel=3)
