"""apply(): report numbers, the ruined flag, compressed checkpoints, fine-tuning runs."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import yaml

from edgetrain.compress import (
    CompressReport,
    apply,
    finetune,
    finetune_config,
    is_ruined,
    load_recipe,
    save_compressed,
)
from edgetrain.compress.finetune import COMPRESSED_CHECKPOINT
from edgetrain.cost import analyze
from edgetrain.engine import load_checkpoint
from edgetrain.errors import ConfigError
from edgetrain.models import create
from edgetrain.runs import load_config, load_trained_model, resume_run

pytest.importorskip("torch_pruning")

pytestmark = pytest.mark.usefixtures("single_thread")

HALVE_RESNET20 = {
    "version": 1,
    "pruners": {
        "residual": {
            "method": "l1_filter",
            "sparsity": 0.5,
            "layers": ["conv1", "layer*.*.conv2", "layer*.0.shortcut.0"],
        },
        "inner": {"method": "l1_filter", "sparsity": 0.5, "layers": ["layer*.*.conv1"]},
    },
}


def _params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_report_numbers_match_a_network_built_at_the_reduced_widths():
    net = create("resnet20")
    original = copy.deepcopy(net)
    same, report = apply(net, HALVE_RESNET20)
    assert same is net
    fresh = create("resnet_cifar", blocks=(3, 3, 3), widths=(8, 16, 32), shortcut="conv1x1")
    assert report.params_before == _params(original) == 272_474
    assert report.params_after == _params(net) == _params(fresh)
    assert report.macs_before == analyze(original, (3, 32, 32)).total().forward_macs
    assert report.macs_after == analyze(fresh, (3, 32, 32)).total().forward_macs
    assert 0.2 < report.macs_ratio < 0.3  # every conv has half its inputs and outputs
    assert report.filters_before["conv1"] == 16 and report.filters_after["conv1"] == 8
    assert report.filters_before["fc"] == report.filters_after["fc"] == 10
    assert report.filters_kept["layer3.2.conv1"] == (64, 32)
    assert "fc" not in report.filters_kept
    residual, inner = report.pruners
    assert (residual.label, residual.method, residual.sparsity) == ("residual", "l1_filter", 0.5)
    assert len(residual.groups) == 3 and len(inner.groups) == 9
    assert residual.groups[0].layers == (
        "conv1",
        "layer1.0.conv2",
        "layer1.1.conv2",
        "layer1.2.conv2",
    )
    assert inner.layers[0] == "layer1.0.conv1"
    assert all(len(g.removed) == g.before - g.after for g in residual.groups + inner.groups)

    data = json.loads(json.dumps(report.to_dict()))
    assert data["pruners"][0]["groups"][0]["after"] == 8
    assert data["macs_after"] == report.macs_after and data["ruined"] is False
    summary = report.summary()
    assert "layer1.0.conv1: 16 -> 8 filters" in summary
    assert "params 272,474 -> " in summary and "inference MACs" in summary


def test_apply_takes_recipes_as_text_and_paths(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(HALVE_RESNET20))
    _, from_path = apply(create("resnet20"), path)
    _, from_text = apply(create("resnet20"), path.read_text())
    assert from_path.macs_after == from_text.macs_after


def test_a_bad_recipe_leaves_the_model_untouched():
    net = create("resnet20")
    before = copy.deepcopy(net.state_dict())
    recipe = copy.deepcopy(HALVE_RESNET20)
    recipe["pruners"]["residual"]["layers"] = ["conv1", "layer1.0.conv2"]
    with pytest.raises(ConfigError, match="shares its output channels"):
        apply(net, recipe)
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_ruined_means_chance_level_accuracy():
    assert is_ruined(10.0, 10) and is_ruined(11.0, 10)
    assert not is_ruined(11.5, 10)
    assert not is_ruined(10.5, 10, tolerance=0.0)
    assert is_ruined(50.9, 2) and not is_ruined(52.0, 2)
    report = CompressReport({}, {}, 10, 5, 100, 50, top1_before=90.0)
    assert report.mark_ruined(10.3, 10) is True
    assert (report.top1_after, report.num_classes, report.ruined) == (10.3, 10, True)
    assert "top-1 90.00 -> 10.30 RUINED" in report.summary()
    assert report.mark_ruined(80.0, 10) is False and not report.to_dict()["ruined"]


def test_compressed_checkpoint_reloads_alone(tmp_path):
    net, _ = apply(create("resnet20"), "resnet20-l1")
    path = save_compressed(net, tmp_path / "c.pt", {"name": "resnet20", "options": {}})
    assert load_checkpoint(path)["architecture"] == {
        "name": "resnet20",
        "options": {},
        "pruned": True,
        "bypassed": [],
    }
    loaded = load_trained_model(path)
    assert loaded.layer1[0].conv1.out_channels == net.layer1[0].conv1.out_channels == 7
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(loaded(x), net.eval()(x), rtol=0, atol=0)


TINY_MODEL = {
    "name": "resnet_cifar",
    "options": {
        "stages": 2,
        "blocks": [1, 1],
        "widths": [8, 8],
        "in_channels": 1,
        "num_classes": 10,
        "input_size": 8,
    },
}


@pytest.fixture
def tiny_config():
    return load_config(
        {
            "name": "tiny",
            "epochs": 3,
            "data": {"name": "digits", "batch_size": 64},
            "model": TINY_MODEL,
            "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4},
            "scheduler": {"name": "onecycle"},
            "callbacks": [{"name": "early-stopping", "patience": 2}],
        }
    )


FINETUNE = {
    "epochs": 1,
    "lr": 0.02,
    "scheduler": {"name": "exponential", "gamma": 0.5, "start_epoch": 1},
}


def test_finetune_config_keeps_the_run_and_takes_the_recipe_settings(tiny_config):
    recipe = load_recipe({"version": 1, "finetune": {**FINETUNE, "batch_size": 16}})
    cfg = finetune_config(tiny_config, recipe.finetune, "c.pt", name="tiny-c")
    assert (cfg.name, cfg.epochs, cfg.model.init_from) == ("tiny-c", 1, "c.pt")
    assert cfg.optimizer.name == "sgd"
    assert cfg.optimizer.options == {"lr": 0.02, "momentum": 0.9, "weight_decay": 1e-4}
    assert cfg.scheduler.name == "exponential"
    assert cfg.scheduler.options == {"gamma": 0.5, "start_epoch": 1}
    assert cfg.callbacks == [] and cfg.data.batch_size == 16
    adam = load_recipe({"version": 1, "finetune": {**FINETUNE, "optimizer": {"name": "adam"}}})
    assert finetune_config(tiny_config, adam.finetune, "c.pt").optimizer.options == {"lr": 0.02}
    none = load_recipe({"version": 1, "finetune": {"epochs": 0, "lr": 0.1}})
    with pytest.raises(ConfigError, match="finetune.epochs is 0"):
        finetune_config(tiny_config, none.finetune, "c.pt")


def test_finetune_writes_a_run_directory_that_reloads_and_resumes(tiny_config, tmp_path):
    torch.manual_seed(0)
    net = create(TINY_MODEL["name"], **TINY_MODEL["options"])
    recipe = load_recipe(
        {
            "version": 1,
            "pruners": {
                "all": {
                    "method": "l1_filter",
                    "sparsity": 0.5,
                    "layers": ["re:.*conv\\d", "layer2.0.shortcut.0"],
                }
            },
            "finetune": FINETUNE,
        }
    )
    net, _ = apply(net, recipe)
    pruned = copy.deepcopy(net.state_dict())
    out = tmp_path / "tiny-c"
    result = finetune(net, recipe.finetune, tiny_config, architecture=TINY_MODEL, run_dir=out)
    assert result.run_dir == out and len(result.history) == 1
    assert result.final_top1 == result.best_top1 == result.history[0]["val_top1"]
    assert all(torch.equal(pruned[k], v) for k, v in net.state_dict().items())  # a copy trained

    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["model"]["init_from"] == str(out / COMPRESSED_CHECKPOINT)
    assert config["callbacks"] == [] and config["scheduler"]["start_epoch"] == 1
    ckpt = load_checkpoint(out / "checkpoints" / "last.pt")
    assert ckpt["architecture"]["pruned"] is True
    tuned = load_trained_model(out, prefer="last")
    assert tuned.layer1[0].conv1.out_channels == 4
    x = torch.randn(2, 1, 8, 8)
    torch.testing.assert_close(tuned(x), result.model(x))

    resumed = resume_run(out, epochs=2, progress=False)
    assert resumed.summary["epochs_finished"] == 2
    assert load_trained_model(out, prefer="last").layer1[0].conv1.out_channels == 4


def test_shipped_resnet56_reference_gives_the_published_weights_and_macs():
    """``resnet56-a2``: 851,504 -> 570,704 conv/linear weights, 46 % fewer dense MACs."""

    def weights(net: torch.nn.Module) -> int:
        kinds = (torch.nn.Conv2d, torch.nn.Linear)
        return sum(m.weight.numel() for m in net.modules() if isinstance(m, kinds))

    net = create("resnet56")
    dense_before = analyze(net, (3, 32, 32), macs="dense").total().forward_macs
    assert weights(net) == 851_504
    pruned, report = apply(net, "resnet56-a2")
    assert weights(pruned) == 570_704
    kept = {n: m.out_channels for n, m in pruned.named_modules() if n.endswith(".conv1")}
    assert sorted(kept[f"layer1.{i}.conv1"] for i in range(9)) == [5] * 9
    assert sorted(kept[f"layer2.{i}.conv1"] for i in range(9)) == [13] * 6 + [32] * 3
    assert sorted(kept[f"layer3.{i}.conv1"] for i in range(9)) == [39] * 6 + [52] + [64] * 2
    dense_after = analyze(pruned, (3, 32, 32), macs="dense").total().forward_macs
    assert dense_before == 125_747_840
    assert 1 - dense_after / dense_before == pytest.approx(0.461, abs=0.001)
    assert report.macs_ratio < 0.54  # the border-aware count: 116.0 M -> 62.1 M
