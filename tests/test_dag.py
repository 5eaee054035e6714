"""Unit tests of nb2prod/dag.py: Bodywork's DAG syntax, topological order, cycles."""

from __future__ import annotations

import itertools

import pytest

from nb2prod.dag import (
    CycleError,
    ancestors,
    descendants,
    find_cycle,
    format_dag,
    parse_dag,
    topological_order,
)


def test_parse_bodywork_chain_with_fan_out_and_fan_in() -> None:
    stages, edges = parse_dag("a >> b,c >> d")
    assert stages == ["a", "b", "c", "d"]
    assert edges == [("a", "b"), ("a", "c"), ("b", "d"), ("c", "d")]


def test_parse_whitespace_is_free() -> None:
    assert parse_dag("a>>b , c>>d") == parse_dag("a >> b,c >> d")


def test_parse_one_edge_per_line() -> None:
    text = "prepare >> train_forest\nprepare >> train_logreg\ntrain_forest >> evaluate\n" \
           "train_logreg >> evaluate\nevaluate >> serve\n"
    stages, edges = parse_dag(text)
    assert stages == ["prepare", "train_forest", "train_logreg", "evaluate", "serve"]
    assert edges == [("prepare", "train_forest"), ("prepare", "train_logreg"),
                     ("train_forest", "evaluate"), ("train_logreg", "evaluate"),
                     ("evaluate", "serve")]


def test_parse_semicolons_comments_blank_lines_and_duplicates() -> None:
    stages, edges = parse_dag("a >> b; b >> c\n\n# a comment\na >> b  # again\n")
    assert stages == ["a", "b", "c"]
    assert edges == [("a", "b"), ("b", "c")]


def test_parse_lone_stage() -> None:
    assert parse_dag("train") == (["train"], [])
    assert parse_dag("") == ([], [])


@pytest.mark.parametrize("text", ["a >> >> b", ">> a", "a >>", "a >> ,"])
def test_parse_empty_step_is_an_error(text: str) -> None:
    with pytest.raises(ValueError, match="empty step"):
        parse_dag(text)


@pytest.mark.parametrize(
    ("stages", "edges"),
    [
        (["a"], []),
        (["a", "b", "c", "d"], [("a", "b"), ("a", "c"), ("b", "d"), ("c", "d")]),
        (["x", "y", "z"], [("x", "z")]),
    ],
)
def test_format_then_parse_round_trips(stages: list[str], edges: list[tuple[str, str]]) -> None:
    text = format_dag(stages, edges)
    parsed_stages, parsed_edges = parse_dag(text)
    assert set(parsed_stages) == set(stages)
    assert set(parsed_edges) == set(edges)


def test_format_is_one_edge_per_line_in_stage_order_then_lone_stages() -> None:
    stages = ["a", "b", "c", "lone"]
    text = format_dag(stages, [("b", "c"), ("a", "c"), ("a", "b"), ("a", "b")])
    assert text == "a >> b\na >> c\nb >> c\nlone"


def test_topological_order_respects_edges_and_keeps_given_order_for_ties() -> None:
    stages = ["serve", "evaluate", "train_b", "train_a", "prepare"]
    edges = [("prepare", "train_a"), ("prepare", "train_b"), ("train_a", "evaluate"),
             ("train_b", "evaluate"), ("evaluate", "serve")]
    order = topological_order(stages, edges)
    assert order == ["prepare", "train_b", "train_a", "evaluate", "serve"]


def test_topological_order_includes_stages_only_named_in_edges() -> None:
    assert topological_order(["b"], [("a", "b")]) == ["a", "b"]


def _assert_is_cycle(cycle: list[str], edges: list[tuple[str, str]], members: set[str]) -> None:
    assert cycle[0] == cycle[-1]
    assert set(cycle) == members
    assert len(cycle) == len(members) + 1
    for a, b in itertools.pairwise(cycle):
        assert (a, b) in edges, f"{a} >> {b} is not an edge: {cycle}"


@pytest.mark.parametrize(
    ("stages", "edges", "members"),
    [
        (["a", "b"], [("a", "b"), ("b", "a")], {"a", "b"}),
        (["a", "b", "c"], [("a", "b"), ("b", "c"), ("c", "a")], {"a", "b", "c"}),
        (["a"], [("a", "a")], {"a"}),
        # a stage before and a stage after the cycle are not part of it
        (["start", "end", "x", "y"], [("start", "x"), ("x", "y"), ("y", "x"), ("y", "end")],
         {"x", "y"}),
        (["end", "x", "y"], [("x", "y"), ("y", "x"), ("y", "end")], {"x", "y"}),
    ],
)
def test_cycle_is_an_error_naming_the_cycle(stages: list[str], edges: list[tuple[str, str]],
                                            members: set[str]) -> None:
    with pytest.raises(CycleError) as info:
        topological_order(stages, edges)
    _assert_is_cycle(info.value.cycle, edges, members)
    assert str(info.value) == "cycle in stage DAG: " + " >> ".join(info.value.cycle)


def test_cycle_from_parsed_bodywork_syntax() -> None:
    stages, edges = parse_dag("load >> train >> evaluate\nevaluate >> load")
    with pytest.raises(CycleError) as info:
        topological_order(stages, edges)
    _assert_is_cycle(info.value.cycle, edges, {"load", "train", "evaluate"})


def test_find_cycle_directly() -> None:
    cycle = find_cycle(["b", "c"], [("a", "b"), ("b", "c"), ("c", "b")])
    _assert_is_cycle(cycle, [("b", "c"), ("c", "b")], {"b", "c"})


def test_ancestors_and_descendants() -> None:
    _, edges = parse_dag("a >> b,c >> d\nd >> e\nx >> e")
    assert ancestors("d", edges) == {"a", "b", "c"}
    assert ancestors("e", edges) == {"a", "b", "c", "d", "x"}
    assert ancestors("a", edges) == set()
    assert descendants("a", edges) == {"b", "c", "d", "e"}
    assert descendants("e", edges) == set()
    assert descendants("x", edges) == {"e"}
