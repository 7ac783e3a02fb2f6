"""Tests of run configs: one-line errors naming the bad key, typed overrides, round trips."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from edgetrain.engine.rundir import RunDirectory
from edgetrain.errors import ConfigError
from edgetrain.runs import RunConfig, apply_overrides, load_config

BASE: dict[str, Any] = {
    "name": "digits-test",
    "epochs": 2,
    "data": {"name": "digits", "batch_size": 32},
    "model": {"name": "vgg_small", "options": {"input_size": 8}},
    "optimizer": {"name": "sgd", "lr": 0.1},
}


def _tree(**changes: Any) -> dict[str, Any]:
    tree = copy.deepcopy(BASE)
    for dotted, value in changes.items():
        *parents, key = dotted.split("__")
        node = tree
        for p in parents:
            node = node.setdefault(p, {})
        node[key] = value
    return tree


def _error(source: Any, overrides: list[str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(source, overrides)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_a_valid_recipe_loads_with_defaults_filled_in() -> None:
    config = load_config(_tree())
    assert isinstance(config, RunConfig)
    assert config.data.eval_batch_size == 256 and config.seed == 0 and config.scheduler is None
    assert config.optimizer.name == "sgd" and config.optimizer.options == {"lr": 0.1}


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"epoch": 3}, ["'epoch'", "the top level", "epochs"]),
        ({"data__batchsize": 3}, ["'batchsize'", "in data", "batch_size"]),
        ({"model__init": "x.pt"}, ["'init'", "in model", "init_from"]),
        ({"data__name": "digitz"}, ["data.name", "'digitz'", "digits-32"]),
        ({"model__name": "vgg"}, ["model.name", "'vgg'", "vgg_small"]),
        ({"optimizer": {"name": "sgdd"}}, ["optimizer", "'sgdd'", "adam, adamw", "sgd"]),
        ({"scheduler": {"name": "cos"}}, ["scheduler", "'cos'", "cosine"]),
        ({"callbacks": [{"name": "early"}]}, ["callbacks", "'early'", "early-stopping"]),
        ({"data__augment": ["blur"]}, ["data.augment", "'blur'", "crop, flip"]),
        ({"data__shift": "rotate"}, ["data.shift", "'rotate'", "rotate180-invert"]),
        ({"model__options": {"width": 2}}, ["model", "'width'", "in_channels"]),
        ({"data__options": {"chanels": 3}}, ["data", "'chanels'", "test_fraction"]),
        ({"optimizer": {"name": "sgd", "lrr": 0.1}}, ["optimizer", "'lrr'", "momentum"]),
        ({"scheduler": {"name": "step", "stepsize": 2}}, ["scheduler", "'stepsize'", "step_size"]),
        (
            {"callbacks": [{"name": "early-stopping", "patiense": 2}]},
            ["callbacks", "'patiense'", "patience"],
        ),
        ({"data__augment": [{"name": "crop", "pad": 2}]}, ["data.augment", "'pad'", "padding"]),
        ({"epochs": "three"}, ["epochs", "integer", "'three'"]),
        ({"data__batch_size": 0}, ["data.batch_size", "greater than or equal to 1"]),
        ({"deterministic": "sometimes"}, ["deterministic", "'sometimes'"]),
        ({"name": "has space"}, ["name", "'has space'"]),
    ],
)
def test_errors_are_one_line_naming_the_key_and_the_choices(
    changes: dict[str, Any], expected: list[str]
) -> None:
    message = _error(_tree(**changes))
    for part in expected:
        assert part in message, (part, message)


def test_a_missing_required_section_is_named() -> None:
    tree = _tree()
    del tree["model"]
    assert _error(tree) == "run config: missing required key 'model'"


def test_malformed_yaml_names_the_file_and_the_line(tmp_path: Path) -> None:
    path = tmp_path / "recipe.yaml"
    path.write_text("name: x\nepochs: 2\ndata:\n  name: digits\n  augment: [flip\nmodel: {}\n")
    message = _error(path)
    assert str(path) in message and "line 6" in message and "invalid YAML" in message


def test_a_recipe_that_is_not_a_mapping_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "list.yaml"
    path.write_text("- name: x\n")
    assert "must be a YAML mapping" in _error(path)


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    assert f"'{missing}' not found" in _error(missing)


def test_a_recipe_file_loads_like_its_mapping(tmp_path: Path) -> None:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(_tree()))
    assert load_config(path) == load_config(_tree())


# ------------------------------------------------------------------------ overrides
def test_overrides_parse_typed_values() -> None:
    config = load_config(
        _tree(),
        [
            "optimizer.lr=0.5",
            "optimizer.nesterov=true",
            "data.augment=[flip]",
            "data.batch_size=16",
            "seed=7",
            "model.options.num_classes=10",
            "scheduler.name=step",
        ],
    )
    assert config.optimizer.options == {"lr": 0.5, "nesterov": True}
    assert isinstance(config.optimizer.options["lr"], float)
    assert config.data.augment == ["flip"] and config.data.batch_size == 16 and config.seed == 7
    assert config.model.options == {"input_size": 8, "num_classes": 10}
    assert config.scheduler is not None and config.scheduler.name == "step"


def test_overrides_apply_to_the_tree_in_order() -> None:
    tree = apply_overrides({"a": {"b": 1}}, ["a.b=2", "a.c=[1, x]", "a.b=3", "d="])
    assert tree == {"a": {"b": 3, "c": [1, "x"]}, "d": None}


def test_typed_keyword_overrides_win_and_none_is_ignored() -> None:
    config = load_config(_tree(), ["epochs=5"], epochs=9, seed=None)
    assert config.epochs == 9 and config.seed == 0


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("epochs", "must look like key.sub=value"),
        ("=3", "must look like key.sub=value"),
        ("name.first=x", "'name' is not a section"),
        ("data.batch_size=many", "data.batch_size"),
        ("optimizer.lrr=0.1", "'lrr'"),
    ],
)
def test_bad_overrides_are_one_line(override: str, expected: str) -> None:
    assert expected in _error(_tree(), [override])


def test_scientific_notation_is_a_float() -> None:
    config = load_config(_tree(), ["optimizer.lr=1e-3"])
    assert config.optimizer.options["lr"] == pytest.approx(0.001)


@pytest.mark.parametrize(
    ("section", "reserved"),
    [
        ({"scheduler": {"name": "step", "epochs": 3}}, "epochs"),
        ({"optimizer": {"name": "sgd", "params": []}}, "params"),
    ],
)
def test_arguments_filled_in_by_the_engine_are_not_user_options(
    section: dict[str, Any], reserved: str
) -> None:
    message = _error(_tree(**section))
    assert f"'{reserved}'" in message
    assert reserved not in message.split("valid options:")[-1]


# ----------------------------------------------------------------------- round trip
def test_to_dict_round_trips_through_load_config_and_yaml(tmp_path: Path) -> None:
    config = load_config(
        _tree(
            scheduler={"name": "onecycle", "pct_start": 0.2},
            callbacks=[{"name": "early-stopping", "patience": 3}],
            data__augment=["flip", {"name": "crop", "padding": 2}],
            model__freeze=["conv1"],
        )
    )
    resolved = config.to_dict()
    assert resolved["data"]["eval_batch_size"] == 256  # defaults are written out
    assert load_config(resolved) == config
    run = RunDirectory(tmp_path)
    run.write_config(resolved)
    assert load_config(run.config_path) == config
    assert load_config(run.config_path).to_dict() == resolved


def test_full_applies_the_recipes_full_section_and_refuses_without_one() -> None:
    from edgetrain.recipes import RECIPES

    for name in RECIPES.names():
        short = load_config(RECIPES.path(name))
        long = load_config(RECIPES.path(name), full=True)
        assert long.epochs > short.epochs, name
    long = load_config(RECIPES.path("keywords-pretrain"), full=True)
    assert long.data.options["utterances_per_word"] > 100
    with pytest.raises(ConfigError, match="no 'full:' section"):
        load_config(_tree(), full=True)


def test_load_config_does_not_modify_the_callers_mapping() -> None:
    tree = _tree()
    before = repr(tree)
    load_config(tree, ["optimizer.lr=0.5", "data.batch_size=3"])
    assert repr(tree) == before


def test_a_global_batch_is_divided_across_processes_and_said_when_absent(monkeypatch):
    from edgetrain.runs.build import _process_batch

    tree = _tree()
    tree["data"].pop("batch_size", None)
    tree["data"]["global_batch_size"] = 32
    data = load_config(tree).data
    assert data.process_batch_size(1) == 32 and data.process_batch_size(4) == 8
    with pytest.raises(ConfigError, match="global_batch_size 32 does not divide across 3"):
        data.process_batch_size(3)
    both = _tree()
    both["data"].update(batch_size=16, global_batch_size=32)
    assert "not both" in _error(both)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    assert _process_batch(load_config(tree)) == 16
    per_process = load_config(_tree(data__batch_size=16))
    with pytest.warns(UserWarning, match="per process: 2 processes train with a global batch"):
        assert _process_batch(per_process) == 16


@pytest.mark.parametrize(("scaling", "lr"), [("none", 0.1), ("linear", 0.4), ("sqrt", 0.2)])
def test_the_learning_rate_scales_with_the_processes_when_asked(monkeypatch, scaling, lr):
    from edgetrain.runs.build import _scaled_lr

    config = load_config(_tree(lr_world_scaling=scaling))
    assert _scaled_lr(config, {"lr": 0.1, "momentum": 0.9})["lr"] == 0.1  # one process
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert _scaled_lr(config, {"lr": 0.1, "momentum": 0.9}) == {"lr": lr, "momentum": 0.9}
    if scaling != "none":
        with pytest.raises(ConfigError, match="scales optimizer.lr, which the recipe does not"):
            _scaled_lr(config, {"momentum": 0.9})


def test_thesis_protocol_recipes() -> None:
    """Plain SGD at batch 1 with the LR halved on a plateau; the keyword data at the
    thesis' sizes (6,400/1,600 pre-training, 480/160 fine-tuning utterances)."""
    from edgetrain import data
    from edgetrain.recipes import RECIPES

    for name in ("digits-finetune-thesis", "keywords-finetune-thesis"):
        config = load_config(RECIPES.path(name))
        assert config.data.batch_size == 1, name
        assert config.optimizer.name == "sgd" and set(config.optimizer.options) == {"lr"}, name
        assert config.scheduler is not None and config.scheduler.name == "plateau", name
        assert config.scheduler.options["factor"] == 0.5, name
    pretrain = load_config(RECIPES.path("keywords-pretrain-thesis")).data.options
    words = 8
    train = words * round(pretrain["utterances_per_word"] * (1 - pretrain["test_fraction"]))
    assert (train, words * pretrain["utterances_per_word"] - train) == (6400, 1600)
    finetune = load_config(RECIPES.path("keywords-finetune-thesis")).data
    info = data.describe(finetune.name, **finetune.options)
    assert info.split_sizes == {"train": 480, "test": 160}
