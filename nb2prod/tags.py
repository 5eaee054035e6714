"""Cell tags: nb2prod's vocabulary, Kale's aliases, and typo detection.

Tags are the whole user interface of the splitter, so a typo must not pass
silently (``Stage:train`` would otherwise put the cell in the stage above)
while tags of other tools (``hide-input``, ``remove-cell``...) must be ignored.
"""

from __future__ import annotations

import difflib
import re
import sys
from dataclasses import dataclass, field

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,39}$")

ROLE_TAGS = {
    "parameters": "parameters",
    "pipeline-parameters": "parameters",  # Kale
    "imports": "imports",
    "functions": "functions",
    "skip": "skip",
}
METRICS_TAGS = {"metrics", "pipeline-metrics"}
BATCH_PREFIXES = ("stage", "step", "block")  # step/block: Kale
AFTER_PREFIXES = ("after", "prev")  # prev: Kale
HINT_PREFIXES = ("cpu", "memory", "gpu", "image", "secret", "limit")
IGNORED = {"injected-parameters"}  # papermill's own
NO_CACHE_TAG = "no-cache"  # the stage always runs (reads live data): config.ini [batch] CACHE
STAGE_STARTS = {"train", "serve", *BATCH_PREFIXES}  # tags (or prefixes) that start a stage


@dataclass
class CellTags:
    """What a cell's tags say, normalised."""

    role: str | None = None  # parameters | imports | functions | skip
    stage: str | None = None
    stage_type: str | None = None  # batch | service
    after: list[str] = field(default_factory=list)
    metrics: bool = False
    hints: dict[str, str] = field(default_factory=dict)  # config.ini keys
    secrets: list[tuple[str, str, str]] = field(default_factory=list)  # (secret, key, env)
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    #: the warnings about tags that look like a mistyped stage tag (``trian``,
    #: ``Stage:train``): an error where the cell would otherwise belong to no stage
    stage_typos: list[str] = field(default_factory=list)


def parse_tags(tags: list[str]) -> CellTags:
    """Normalise one cell's tags; problems are collected, not raised."""
    out = CellTags()
    for raw in tags:
        tag = raw.strip()
        if not tag or tag in IGNORED:
            continue
        key, _, value = tag.partition(":")
        if tag in ROLE_TAGS:
            _set_role(out, ROLE_TAGS[tag], tag)
        elif tag in METRICS_TAGS:
            out.metrics = True
        elif tag == NO_CACHE_TAG:
            out.hints["CACHE"] = "false"
        elif tag == "train":
            _set_stage(out, "train", "batch", tag)
        elif tag == "serve" or key == "serve":
            name = value or "serve"
            if tag != "serve" and not value:
                out.warnings.append("tag 'serve:' has an empty name; read as 'serve'")
                name = "serve"
            _set_stage(out, name, "service", tag)
        elif key in BATCH_PREFIXES and ":" in tag:
            if not value:
                out.errors.append(f"tag '{tag}' has an empty stage name")
            else:
                _set_stage(out, value, "batch", tag)
        elif key in AFTER_PREFIXES and ":" in tag:
            if _valid_name(out, value, tag):
                out.after.append(value)
        elif key in HINT_PREFIXES and ":" in tag:
            _hint(out, key, value, tag)
        else:
            suggestion = suggest(tag)
            if suggestion:
                message = f"tag '{tag}' is not an nb2prod tag; did you mean '{suggestion}'?"
                out.warnings.append(message)
                if suggestion.partition(":")[0] in STAGE_STARTS:
                    out.stage_typos.append(message)
    return out


def suggest(tag: str) -> str | None:
    """The nb2prod tag a foreign-looking tag was probably meant to be, if any."""
    lowered = tag.strip().lower()
    simple = sorted(ROLE_TAGS) + sorted(METRICS_TAGS) + ["train", "serve", NO_CACHE_TAG]
    prefixes = list(BATCH_PREFIXES) + list(AFTER_PREFIXES) + list(HINT_PREFIXES) + ["serve"]
    if lowered in simple:
        return lowered  # only the case differed
    if lowered in BATCH_PREFIXES + AFTER_PREFIXES:
        return f"{lowered}:NAME"  # a bare `stage`/`block`: the name was forgotten
    for prefix in prefixes:
        rest = lowered[len(prefix):]
        if lowered.startswith(prefix) and rest[:1] in (":", " ", "=", "_", "-") and rest[1:].strip():
            return f"{prefix}:{rest[1:].strip(' :=')}"
    key, sep, value = lowered.partition(":")
    if not sep:
        close = difflib.get_close_matches(lowered, simple, n=1, cutoff=0.8)
        return close[0] if close else None
    close = difflib.get_close_matches(key, prefixes, n=1, cutoff=0.75)
    return f"{close[0]}:{value}" if close else None


def _set_role(out: CellTags, role: str, tag: str) -> None:
    if out.role and out.role != role:
        out.errors.append(f"tags '{out.role}' and '{tag}' cannot be on the same cell")
    out.role = role


#: Standard-library modules no kernel or runtime imports: fine as stage names.
_HARMLESS_MODULE_NAMES = frozenset({"test", "this", "antigravity", "idlelib", "turtledemo"})


def _shadows_a_module(name: str) -> bool:
    """A stage's ``NAME.py`` sits on its kernel's import path: a standard-library name
    (``inspect``, ``types``, ``random``...) would be imported instead of the module and
    kill the kernel at start-up."""
    return (name in sys.stdlib_module_names and name not in _HARMLESS_MODULE_NAMES) \
        or name == "nb2prod_runtime"


def _valid_name(out: CellTags, name: str, tag: str) -> bool:
    if NAME_RE.match(name) and _shadows_a_module(name):
        out.errors.append(
            f"tag '{tag}': a stage named '{name}' would shadow Python's '{name}' module "
            f"(the stage's {name}.py is on its import path); try '{tag.split(':')[0]}:{name}-step'")
        return False
    if NAME_RE.match(name):
        return True
    hint = re.sub(r"[^a-z0-9_-]+", "-", name.lower()).strip("-")[:40]
    out.errors.append(
        f"tag '{tag}': stage names use lowercase letters, digits, '-' and '_' (at most 40)"
        + (f"; try '{tag.split(':')[0]}:{hint}'" if hint else "")
    )
    return False


def _set_stage(out: CellTags, name: str, stage_type: str, tag: str) -> None:
    if not _valid_name(out, name, tag):
        return
    if out.stage and (out.stage, out.stage_type) != (name, stage_type):
        out.errors.append(f"two stage tags on one cell: '{out.stage}' and '{tag}'")
        return
    out.stage, out.stage_type = name, stage_type


_QUANTITY = re.compile(r"^([0-9]*\.?[0-9]+)([a-zA-Z]*)$")
_MEMORY_FACTORS = {
    "": 1 / 2**20, "k": 1e3 / 2**20, "m": 1e6 / 2**20, "g": 1e9 / 2**20, "t": 1e12 / 2**20,
    "ki": 1 / 2**10, "mi": 1.0, "gi": 2**10, "ti": 2**20, "mb": 1.0, "gb": 2**10,
}


def memory_mb(quantity: str) -> int | None:
    """Kubernetes memory quantity ('2Gi', '500M', '512') as MiB; None if unreadable."""
    match = _QUANTITY.match(quantity.strip())
    if not match:
        return None
    number, unit = float(match.group(1)), match.group(2).lower()
    factor = _MEMORY_FACTORS.get(unit)
    if factor is None:
        return None
    if unit == "" and number < 65536:  # a bare small number means MiB to a human
        factor = 1.0
    return max(1, round(number * factor))


def cpu_cores(quantity: str) -> str | None:
    """Kubernetes CPU quantity ('500m', '0.5', '2') as a decimal core count."""
    quantity = quantity.strip()
    if re.fullmatch(r"[0-9]+m", quantity):
        return f"{int(quantity[:-1]) / 1000:g}"
    if re.fullmatch(r"[0-9]*\.?[0-9]+", quantity):
        return f"{float(quantity):g}"
    return None


def _hint(out: CellTags, key: str, value: str, tag: str) -> None:
    if key == "limit":  # Kale: limit:RESOURCE:Q, e.g. limit:nvidia.com/gpu:1
        resource, _, quantity = value.rpartition(":")
        key = {"memory": "memory", "cpu": "cpu"}.get(resource, "gpu" if "gpu" in resource else "")
        value = quantity
        if not key:
            out.warnings.append(f"tag '{tag}': unknown resource '{resource}' ignored")
            return
    if key == "cpu":
        cores = cpu_cores(value)
        if cores is None:
            out.errors.append(f"tag '{tag}': CPU quantity like '500m' or '2' expected")
        else:
            out.hints["CPU_REQUEST"] = cores
    elif key == "memory":
        mb = memory_mb(value)
        if mb is None:
            out.errors.append(f"tag '{tag}': memory quantity like '512Mi' or '2Gi' expected")
        else:
            out.hints["MEMORY_REQUEST_MB"] = str(mb)
    elif key == "gpu":
        if not value.isdigit():
            out.errors.append(f"tag '{tag}': a whole number of GPUs expected")
        else:
            out.hints["GPU"] = value
    elif key == "image":
        if not value or any(c.isspace() for c in value):
            out.errors.append(f"tag '{tag}': an image reference expected")
        else:
            out.hints["IMAGE"] = value
    elif key == "secret":
        parts = value.split(":")
        if len(parts) != 3 or not all(parts):
            out.errors.append(f"tag '{tag}': expected secret:NAME:KEY:ENV")
        else:
            out.secrets.append((parts[0], parts[1], parts[2]))
