"""Per-round ratios: each side against its baseline of the same round, then the median; the
baselines' constants the figures restate."""

from __future__ import annotations

import ast
import math
from pathlib import Path

from bench.figures import median_ratios, met_targets, per_round_ratios

from bench import figures


def runs(*values):
    return [{"rate": v} for v in values]


def test_each_round_is_divided_by_its_own_baseline():
    per_round = per_round_ratios({"tp": runs(80, 90, 200), "floor": runs(100, 100, 400)}, "rate",
                                 {"tp_vs_floor": ("tp", "floor")})
    assert per_round == {"tp_vs_floor": [0.8, 0.9, 0.5]}
    assert median_ratios(per_round) == {"tp_vs_floor": 0.8}
    # not the ratio of the medians (90 / 100), which mixes rounds
    assert median_ratios(per_round)["tp_vs_floor"] != 0.9


def test_missing_rounds_are_skipped_and_none_left_is_nan():
    per_round = per_round_ratios({"a": [{"rate": 10}, {"rate": None}, {"rate": 30}],
                                  "b": [{"rate": 20}, {"rate": 10}, {"rate": 0}]}, "rate",
                                 {"a_vs_b": ("a", "b")})
    assert per_round == {"a_vs_b": [0.5, None, None]}
    assert median_ratios(per_round) == {"a_vs_b": 0.5}
    assert math.isnan(median_ratios({"x": [None, None]})["x"])


def test_even_number_of_rounds_takes_the_middle_mean():
    assert median_ratios({"x": [1.0, 2.0, 3.0, 4.0]}) == {"x": 2.5}


def test_targets_are_met_at_or_above_and_never_by_nan():
    assert met_targets({"a": 0.8, "b": 1.29}, {"a": 0.8, "b": 1.3}) == {"a": True, "b": False}
    assert met_targets({"a": float("nan")}, {"a": 0.8}) == {"a": False}


def test_floor_list_is_the_one_the_floor_pushes_to() -> None:
    """``figures.FLOOR_LIST`` restates ``baseline/floor.py``'s ``LIST`` (which connects to
    Redis on import, so it is read here from the source)."""
    source = Path(figures.__file__).with_name("baseline") / "floor.py"
    tree = ast.parse(source.read_text())
    lists = [node.value.value for node in tree.body if isinstance(node, ast.Assign)
             and any(isinstance(t, ast.Name) and t.id == "LIST" for t in node.targets)]
    assert lists == [figures.FLOOR_LIST]
