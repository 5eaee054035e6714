"""Unit tests of nb2prod/tags.py: the tag vocabulary, Kale's aliases, hints, typo warnings."""

from __future__ import annotations

import pytest

from nb2prod.tags import CellTags, cpu_cores, memory_mb, parse_tags, suggest


def _clean(tags: CellTags) -> None:
    assert tags.errors == [], tags.errors
    assert tags.warnings == [], tags.warnings


# -- the vocabulary ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("tag", "role"),
    [
        ("parameters", "parameters"),
        ("pipeline-parameters", "parameters"),  # Kale
        ("imports", "imports"),
        ("functions", "functions"),
        ("skip", "skip"),
    ],
)
def test_role_tags(tag: str, role: str) -> None:
    tags = parse_tags([tag])
    _clean(tags)
    assert tags.role == role
    assert tags.stage is None
    assert tags.metrics is False


@pytest.mark.parametrize("tag", ["metrics", "pipeline-metrics"])
def test_metrics_tags(tag: str) -> None:
    tags = parse_tags([tag])
    _clean(tags)
    assert tags.metrics is True
    assert tags.role is None and tags.stage is None


@pytest.mark.parametrize(
    ("tag", "stage", "stage_type"),
    [
        ("stage:train", "train", "batch"),
        ("stage:prep_data-2", "prep_data-2", "batch"),
        ("train", "train", "batch"),
        ("step:load", "load", "batch"),  # Kale
        ("block:load", "load", "batch"),  # Kale
        ("serve", "serve", "service"),
        ("serve:api", "api", "service"),
        ("stage:" + "a" * 40, "a" * 40, "batch"),
    ],
)
def test_stage_tags(tag: str, stage: str, stage_type: str) -> None:
    tags = parse_tags([tag])
    _clean(tags)
    assert (tags.stage, tags.stage_type) == (stage, stage_type)
    assert tags.role is None


@pytest.mark.parametrize("tag", ["after:load", "prev:load"])
def test_after_and_kale_prev(tag: str) -> None:
    tags = parse_tags(["stage:train", tag])
    _clean(tags)
    assert tags.after == ["load"]
    assert tags.stage == "train"


def test_several_after_tags_keep_order() -> None:
    tags = parse_tags(["stage:report", "after:b", "prev:a"])
    _clean(tags)
    assert tags.after == ["b", "a"]


def test_whitespace_around_tags_is_ignored() -> None:
    assert parse_tags(["  stage:train "]) == CellTags(stage="train", stage_type="batch")
    assert parse_tags([" imports", ""]) == CellTags(role="imports")


def test_papermill_injected_parameters_tag_is_ignored() -> None:
    tags = parse_tags(["injected-parameters"])
    _clean(tags)
    assert tags == CellTags()


# -- resource hints → config.ini keys ---------------------------------------------------------
@pytest.mark.parametrize(
    ("tag", "hints"),
    [
        ("cpu:250m", {"CPU_REQUEST": "0.25"}),
        ("cpu:2", {"CPU_REQUEST": "2"}),
        ("cpu:0.5", {"CPU_REQUEST": "0.5"}),
        ("memory:2Gi", {"MEMORY_REQUEST_MB": "2048"}),
        ("memory:512Mi", {"MEMORY_REQUEST_MB": "512"}),
        ("memory:512", {"MEMORY_REQUEST_MB": "512"}),
        ("memory:1G", {"MEMORY_REQUEST_MB": "954"}),
        ("gpu:1", {"GPU": "1"}),
        ("image:registry.example.com/team/train:1.2", {"IMAGE": "registry.example.com/team/train:1.2"}),
        # Kale's limit:RESOURCE:QUANTITY
        ("limit:nvidia.com/gpu:1", {"GPU": "1"}),
        ("limit:amd.com/gpu:2", {"GPU": "2"}),
        ("limit:memory:2Gi", {"MEMORY_REQUEST_MB": "2048"}),
        ("limit:cpu:500m", {"CPU_REQUEST": "0.5"}),
    ],
)
def test_hints_map_to_config_keys(tag: str, hints: dict[str, str]) -> None:
    tags = parse_tags(["stage:train", tag])
    _clean(tags)
    assert tags.hints == hints


def test_secret_tag() -> None:
    tags = parse_tags(["stage:train", "secret:s3-credentials:access-key:AWS_ACCESS_KEY_ID"])
    _clean(tags)
    assert tags.secrets == [("s3-credentials", "access-key", "AWS_ACCESS_KEY_ID")]


def test_hints_accumulate_on_one_cell() -> None:
    tags = parse_tags(["stage:train", "cpu:1", "limit:memory:1Gi", "limit:nvidia.com/gpu:1"])
    _clean(tags)
    assert tags.hints == {"CPU_REQUEST": "1", "MEMORY_REQUEST_MB": "1024", "GPU": "1"}


@pytest.mark.parametrize(
    ("tag", "fragment"),
    [
        ("cpu:lots", "CPU quantity"),
        ("memory:huge", "memory quantity"),
        ("gpu:one", "whole number of GPUs"),
        ("image:", "image reference"),
        ("secret:only:two", "secret:NAME:KEY:ENV"),
    ],
)
def test_bad_hint_values_are_errors(tag: str, fragment: str) -> None:
    tags = parse_tags(["stage:train", tag])
    assert len(tags.errors) == 1
    assert fragment in tags.errors[0]
    assert tag in tags.errors[0]
    assert tags.hints == {}


def test_unknown_kale_limit_resource_warns() -> None:
    tags = parse_tags(["stage:train", "limit:ephemeral-storage:1Gi"])
    assert tags.errors == []
    assert tags.hints == {}
    assert len(tags.warnings) == 1 and "ephemeral-storage" in tags.warnings[0]


@pytest.mark.parametrize(
    ("quantity", "mb"),
    [("2Gi", 2048), ("512Mi", 512), ("1Ti", 2**20), ("1024Ki", 1), ("500M", 477), ("512", 512),
     ("1.5Gi", 1536), ("1073741824", 1024), ("lots", None), ("2XB", None)],
)
def test_memory_mb(quantity: str, mb: int | None) -> None:
    assert memory_mb(quantity) == mb


@pytest.mark.parametrize(
    ("quantity", "cores"),
    [("500m", "0.5"), ("1000m", "1"), ("2", "2"), ("0.25", "0.25"), ("x", None), ("-1", None)],
)
def test_cpu_cores(quantity: str, cores: str | None) -> None:
    assert cpu_cores(quantity) == cores


# -- names -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("tag", "hint"),
    [
        ("stage:Train", "stage:train"),
        ("stage:my stage", "stage:my-stage"),
        ("after:Load", "after:load"),
        ("serve:My API", "serve:my-api"),
        ("stage:" + "a" * 41, None),
    ],
)
def test_invalid_stage_names_are_errors(tag: str, hint: str | None) -> None:
    tags = parse_tags([tag])
    assert tags.stage is None and tags.after == []
    assert len(tags.errors) == 1
    assert "lowercase letters, digits" in tags.errors[0]
    if hint is not None:
        assert f"try '{hint}'" in tags.errors[0]


@pytest.mark.parametrize("tag", ["stage:inspect", "block:types", "serve:random"])
def test_stage_names_that_shadow_a_standard_module_are_errors(tag: str) -> None:
    """The stage's NAME.py is on its kernel's import path: `inspect.py` killed the kernel."""
    tags = parse_tags([tag])
    prefix, name = tag.split(":")
    assert tags.stage is None
    expected = (f"tag '{tag}': a stage named '{name}' would shadow Python's '{name}' module "
                f"(the stage's {name}.py is on its import path); try '{prefix}:{name}-step'")
    assert tags.errors == [expected]
    assert parse_tags(["stage:test"]).stage == "test"  # stdlib's test package: never imported


@pytest.mark.parametrize("tag", ["stage:", "step:"])
def test_empty_batch_stage_name_is_an_error(tag: str) -> None:
    tags = parse_tags([tag])
    assert tags.stage is None
    assert tags.errors == [f"tag '{tag}' has an empty stage name"]


# -- two stage tags, conflicting roles -------------------------------------------------------
@pytest.mark.parametrize(
    "tags",
    [["stage:a", "stage:b"], ["train", "stage:evaluate"], ["serve", "stage:a"],
     ["step:a", "block:b"], ["stage:a", "serve:a"]],
)
def test_two_stage_tags_on_one_cell_is_an_error(tags: list[str]) -> None:
    parsed = parse_tags(tags)
    assert len(parsed.errors) == 1
    assert parsed.errors[0].startswith("two stage tags on one cell")
    assert tags[1] in parsed.errors[0]


def test_the_same_stage_twice_is_not_an_error() -> None:
    tags = parse_tags(["step:load", "block:load", "stage:load"])
    _clean(tags)
    assert tags.stage == "load"


def test_two_roles_on_one_cell_is_an_error() -> None:
    tags = parse_tags(["imports", "functions"])
    assert tags.errors == ["tags 'imports' and 'functions' cannot be on the same cell"]


# -- typos warn with the likely meaning -----------------------------------------------------
@pytest.mark.parametrize(
    ("tag", "meant"),
    [
        ("Stage:x", "stage:x"),
        ("stage train", "stage:train"),
        ("stage_train", "stage:train"),
        ("stage=train", "stage:train"),
        ("trian", "train"),
        ("Train", "train"),
        ("paramters", "parameters"),
        ("import", "imports"),
        ("function", "functions"),
        ("metric", "metrics"),
        ("afterr:load", "after:load"),
        ("STEP:load", "step:load"),
    ],
)
def test_typos_warn_with_the_likely_meaning(tag: str, meant: str) -> None:
    tags = parse_tags([tag])
    assert tags.errors == []
    assert tags.stage is None and tags.role is None and not tags.metrics
    assert tags.warnings == [f"tag '{tag}' is not an nb2prod tag; did you mean '{meant}'?"]
    assert suggest(tag) == meant


def test_serve_with_empty_name_warns_and_reads_as_serve() -> None:
    tags = parse_tags(["serve:"])
    assert tags.errors == []
    assert (tags.stage, tags.stage_type) == ("serve", "service")
    assert len(tags.warnings) == 1
    assert "'serve:'" in tags.warnings[0] and "empty name" in tags.warnings[0]


# -- tags of other tools are ignored ----------------------------------------------------------
@pytest.mark.parametrize(
    "tag",
    [
        "hide-input", "hide-output", "hide-cell", "remove-input", "remove-output", "remove-cell",
        "raises-exception", "full-width", "margin", "scroll-output", "output_scroll",
        "skip-execution", "thebe-init", "nbval-skip", "nbval-ignore-output", "export",
        "annotation:sidecar.istio.io/inject:false", "label:team:ml", "injected-parameters",
    ],
)
def test_other_tools_tags_are_ignored(tag: str) -> None:
    tags = parse_tags([tag])
    assert tags == CellTags(), f"{tag!r} was not ignored: {tags}"
    assert parse_tags(["stage:train", tag]) == CellTags(stage="train", stage_type="batch")


@pytest.mark.parametrize("tag", ["stage", "block", "step", "after", "Stage"])
def test_a_stage_tag_without_its_name_is_flagged(tag: str) -> None:
    parsed = parse_tags([tag])
    assert parsed.stage is None
    assert parsed.warnings == [
        f"tag '{tag}' is not an nb2prod tag; did you mean '{tag.lower()}:NAME'?"]
    assert parse_tags(["cpu"]).warnings == []  # resource hints are not stage names


@pytest.mark.parametrize(("tag", "typo"), [("trian", True), ("Stage:train", True),
                                           ("sevre", True), ("Imports", False),
                                           ("hide-input", False)])
def test_stage_typos_are_marked(tag: str, typo: bool) -> None:
    tags = parse_tags([tag])
    assert bool(tags.stage_typos) is typo
    assert tags.stage_typos == (tags.warnings if typo else [])
