"""Sweep config validation: each mistake gives one line naming the key and the fix."""

from __future__ import annotations

import pytest

from edgetrain.compress.recipe import load_recipe
from edgetrain.errors import ConfigError
from edgetrain.search import load_sweep
from edgetrain.search.space import constraint_values, grid_size

BASE = {
    "name": "s",
    "metric": {"name": "latency_ms"},
    "recipe": "r.yaml",
    "model": "runs/m",
    "parameters": {"s1.sparsity": {"min": 0.0, "max": 0.9}},
}
RECIPE = load_recipe(
    {
        "version": 1,
        "pruners": {"s1": {"method": "l1_filter", "sparsity": 0.5, "layers": ["a"]}},
        "finetune": {"epochs": 1, "lr": 0.01},
    }
)


def _load(**changes):
    return load_sweep({**BASE, **changes})[0]


def test_defaults_and_directions():
    cfg = _load(metric=[{"name": "latency_ms"}, {"name": "top1"}], method="nsga2")
    assert cfg.directions == ["minimize", "maximize"]
    assert cfg.budget.trials == 20 and cfg.runtime.threads == 1
    assert _load(metric="top1").directions == ["maximize"]
    assert _load(metric={"name": "top1", "goal": "minimize"}).directions == ["minimize"]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"metirc": 1}, "unknown key 'metirc'"),
        ({"metric": {"name": "speed"}}, "unknown metric 'speed'; choose one of: top1"),
        ({"constraints": [{"name": "top1", "min": 0.85}]}, "top1 is in percent (0-100); write 85"),
        ({"constraints": [{"name": "top1"}]}, "constraint on 'top1' needs min or max"),
        ({"method": "nsga2"}, "nsga2 is multi-objective"),
        ({"method": "grid"}, "method grid needs values: [...] for every parameter; s1.sparsity"),
        ({"method": "anneal"}, "method"),
        ({"parameters": {"x": {"min": 1.0}}}, "a range needs both min and max"),
        ({"parameters": {"x": {"min": 0.0, "max": 1.0, "log": True}}}, "log: true needs min > 0"),
        ({"parameters": {"x": {"min": 2, "max": 1}}}, "min 2 must be below max 1"),
        ({"parameters": {"x": {"values": [1], "min": 0, "max": 1}}}, "give exactly one of"),
        ({"budget": {"trials": 0}}, "budget.trials"),
        ({"runtime": {"name": "tflite"}}, "unknown runtime 'tflite'"),
    ],
)
def test_bad_configs_give_one_line(changes, message):
    with pytest.raises(ConfigError) as err:
        _load(**changes)
    text = str(err.value)
    assert message in text and "\n" not in text


def test_parameters_must_name_recipe_keys():
    _load().check(RECIPE)
    with pytest.raises(ConfigError, match="parameters.s2.sparsity: .*names neither a pruner"):
        _load(parameters={"s2.sparsity": {"min": 0.0, "max": 0.5}}).check(RECIPE)
    with pytest.raises(ConfigError, match=r"parameters.s1.sparsity: .*\[0, 1\)"):
        _load(parameters={"s1.sparsity": {"min": 0.0, "max": 1.0}}).check(RECIPE)
    with pytest.raises(ConfigError, match="parameters.finetune.epochs"):
        _load(parameters={"finetune.epochs": {"values": [1, -1]}}).check(RECIPE)


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_sweep(tmp_path / "none.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad.yaml': invalid YAML at line 2, column 1"):
        load_sweep(bad)


def test_integer_ranges_and_grid_size():
    cfg = _load(
        method="grid",
        parameters={
            "finetune.epochs": {"values": [0, 1, 2]},
            "s1.sparsity": {"values": [0.1, 0.5]},
        },
    )
    assert grid_size(cfg.parameters) == 6
    spec = _load(parameters={"finetune.epochs": {"min": 0, "max": 4}}).parameters["finetune.epochs"]
    assert spec.is_int and spec.example() == 0


def test_constraint_values_follow_optunas_sign_convention():
    cfg = _load(constraints=[{"name": "top1", "min": 90}, {"name": "latency_ms", "max": 2.0}])
    assert constraint_values(cfg.constraints, {"top1": 92.0, "latency_ms": 1.5}) == [-2.0, -0.5]
    assert constraint_values(cfg.constraints, {"top1": 85.0, "latency_ms": 3.0}) == [5.0, 1.0]
    assert constraint_values(cfg.constraints, {"top1": 95.0}) == [-5.0, float("inf")]


def test_throughput_runs_only_when_a_metric_or_constraint_needs_them():
    assert _load().runtime_settings()["throughput_batch"] is None
    assert _load(metric="throughput").runtime_settings()["throughput_batch"] == 32
    bounded = _load(constraints=[{"name": "throughput", "min": 100}])
    assert bounded.runtime_settings()["throughput_batch"] == 32
    given = _load(metric="throughput", runtime={"throughput_batch": 8})
    assert given.runtime_settings()["throughput_batch"] == 8
