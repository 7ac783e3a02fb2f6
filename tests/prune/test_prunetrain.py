"""PruneTrain through the Trainer: per-epoch architecture metrics, reloading the pruned
model from its checkpoint, resuming a pruned run exactly, and the two penalty modes."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from edgetrain import models
from edgetrain.engine import Callback, Trainer
from edgetrain.runs import load_trained_model

pytest.importorskip("torch_pruning")

from edgetrain.models.surgery import ResidualBypass  # noqa: E402
from edgetrain.prune import PruneTrain, channel_groups, group_lasso  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_thread")

ARCH: dict[str, Any] = {
    "name": "resnet_cifar",
    "options": {
        "stages": 1,
        "blocks": [2],
        "widths": [4],
        "in_channels": 1,
        "num_classes": 4,
        "input_size": 8,
    },
}
METRICS = ("channels", "params", "inference_macs", "train_macs", "baseline_train_macs")

# epoch -> (layer whose output channels name the group, channels to zero; None: all)
PLAN: dict[int, list[tuple[str, list[int] | None]]] = {
    1: [("conv1", [1]), ("layer1.0.conv1", [0, 2])],  # residual channel + inner channels
    2: [("layer1.1.conv1", None)],  # every inner channel: the block is bypassed
}


class ZeroChannels(Callback):
    """At the end of the planned epochs, zero whole channels (every conv/linear weight
    touching them) before PruneTrain, which runs after this callback, reconfigures."""

    def __init__(self, plan: dict[int, list[tuple[str, list[int] | None]]]) -> None:
        self.plan = plan

    def on_epoch_end(self, trainer: Trainer, model: nn.Module) -> None:
        steps = self.plan.get(trainer.state.epoch, [])
        groups = channel_groups(model) if steps else []
        for layer, channels in steps:
            group = next(
                g for g in groups if any(m.name == layer and m.role == "out" for m in g.members)
            )
            chosen = set(range(group.size) if channels is None else channels)
            with torch.no_grad():
                for m in group.weight_members():
                    idx = [i for i, r in zip(m.idxs, m.root_idxs, strict=True) if r in chosen]
                    dim = 0 if m.role == "out" else 1
                    m.module.weight.index_fill_(dim, torch.tensor(idx), 0.0)


def _model(arch: dict[str, Any] = ARCH) -> nn.Module:
    torch.manual_seed(0)
    return models.create(arch["name"], **arch["options"])


def _trainer(
    run_dir: Path | None,
    data: tuple[Any, Any],
    plan: dict | None = None,
    callbacks: Iterable[Callback] | None = None,
    **prune: Any,
) -> Trainer:
    train, val = data
    if callbacks is None:
        settings = {"ratio": 0.2, "interval": 1, **prune}
        callbacks = [ZeroChannels(PLAN if plan is None else plan), PruneTrain(**settings)]
    return Trainer(
        _model(),
        train,
        val_data=val,
        optimizer=lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=1e-4),
        batch_size=8,
        device="cpu",
        progress=False,
        seed=7,
        run_dir=run_dir,
        callbacks=list(callbacks),
        architecture=ARCH,
    )


@pytest.fixture
def data(make_blobs):
    return make_blobs(32, seed=0), make_blobs(16, seed=1)


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _without_times(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if not k.endswith("_time")} for r in history]


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ------------------------------------------------------------------ end to end
def test_prunetrain_shrinks_the_model_and_logs_its_architecture_every_epoch(data, tmp_path):
    run = tmp_path / "run"
    trainer = _trainer(run, data)
    start_params = _params(trainer.model)
    trainer.fit(3)
    model = trainer.model
    assert model is trainer.model and isinstance(model.layer1[1], ResidualBypass)
    assert model.conv1.out_channels == 3 and model.layer1[0].conv1.out_channels == 2

    records = _lines(run / "metrics.jsonl")
    assert [r["epoch"] for r in records] == [1, 2, 3]
    for r in records:
        assert all(k in r for k in METRICS), r.keys()
        assert r["lasso_lambda"] > 0 and r["group_lasso"] > 0
        assert r["reconfigured"] is True
        assert r["baseline_train_macs"] == records[0]["baseline_train_macs"]
    assert records[0]["params"] == start_params  # epoch 1 trained the unpruned model
    assert records[0]["train_macs"] == records[0]["baseline_train_macs"]
    # each epoch's reconfiguration shrinks what the next epoch trains
    assert records[0]["params_after"] == records[1]["params"] < start_params
    assert records[1]["params_after"] == records[2]["params"] < records[1]["params"]
    assert records[2]["params_after"] == records[2]["params"] == _params(model)
    for key in ("train_macs", "inference_macs"):
        values = [r[key] for r in records]
        assert values == sorted(values, reverse=True) and len(set(values)) == 3, key
    assert records[0]["removed_channels"] == 3 + 2  # stem + 2 last convs; 2 inner
    # channels per layer: those each epoch trained, and those its reconfiguration left
    assert records[0]["channels"]["conv1"] == 4 and records[0]["channels"]["fc"] == 4
    assert records[1]["channels"] == records[0]["channels_after"]
    assert records[0]["channels_after"] == {
        "conv1": 3,
        "layer1.0.conv1": 2,
        "layer1.0.conv2": 3,
        "layer1.1.conv1": 4,
        "layer1.1.conv2": 3,
        "fc": 4,
    }
    assert records[2]["channels_after"] == {
        "conv1": 3,
        "layer1.0.conv1": 2,
        "layer1.0.conv2": 3,
        "fc": 4,
    }

    ckpt = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["architecture"]["pruned"] is True
    assert ckpt["architecture"]["bypassed"] == ["layer1.1"]
    assert ckpt["architecture"]["name"] == "resnet_cifar"
    prune_state = next(v for k, v in ckpt["callbacks"].items() if "PruneTrain" in k)
    assert [h["epoch"] for h in prune_state["history"]] == [1, 2, 3]


def test_the_pruned_checkpoint_reloads_into_the_pruned_shape(data, tmp_path):
    run = tmp_path / "run"
    trainer = _trainer(run, data)
    trainer.fit(3)
    reloaded = load_trained_model(run, prefer="last")
    assert isinstance(reloaded.layer1[1], ResidualBypass)
    assert {k: v.shape for k, v in reloaded.state_dict().items()} == {
        k: v.shape for k, v in trainer.model.state_dict().items()
    }
    x = torch.randn(5, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    trainer.model.eval()
    with torch.no_grad():
        assert torch.equal(reloaded(x), trainer.model(x))


def test_a_resumed_pruned_run_ends_where_an_uninterrupted_one_ends(data, tmp_path):
    full = _trainer(tmp_path / "full", data)
    full.fit(3)

    run = tmp_path / "split"
    _trainer(run, data).fit(2)
    resumed = _trainer(run, data)  # a freshly built, unpruned model
    assert not isinstance(resumed.model.layer1[1], ResidualBypass)
    resumed.load_checkpoint(run / "checkpoints" / "last.pt")
    assert isinstance(resumed.model.layer1[1], ResidualBypass)
    assert resumed.architecture["bypassed"] == ["layer1.1"]
    resumed.fit(3)

    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    ids = {id(p): n for n, p in resumed.model.named_parameters()}
    moments = {ids[id(p)]: s["momentum_buffer"] for p, s in resumed.optimizer.state.items()}
    params = dict(full.model.named_parameters())
    for name, buf in moments.items():
        assert torch.equal(buf, full.optimizer.state[params[name]]["momentum_buffer"]), name
    assert _without_times(resumed.state.history) == _without_times(full.state.history)
    logged = _lines(run / "metrics.jsonl")
    assert [r["epoch"] for r in logged] == [1, 2, 3]
    assert _without_times(logged) == _without_times(_lines(tmp_path / "full" / "metrics.jsonl"))


def test_blocks_bypassed_in_reverse_order_resume_exactly(data, tmp_path):
    """Parameters the optimizer gains at different reconfigurations (the offsets of blocks
    bypassed later) must be matched to their saved state on resume."""
    plan = {1: [("layer1.1.conv1", None)], 2: [("layer1.0.conv1", None)]}
    full = _trainer(tmp_path / "full", data, plan=plan)
    full.fit(3)
    run = tmp_path / "split"
    _trainer(run, data, plan=plan).fit(2)
    resumed = _trainer(run, data, plan=plan)
    resumed.load_checkpoint(run / "checkpoints" / "last.pt")
    resumed.fit(3)
    assert isinstance(full.model.layer1[0], ResidualBypass)
    a, b = full.model.state_dict(), resumed.model.state_dict()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_threshold_and_ratio_alone_prune_within_a_few_epochs(data):
    trainer = _trainer(None, data, plan={}, ratio=0.9, threshold=0.1)
    start = _params(trainer.model)
    trainer.fit(3)
    assert _params(trainer.model) < start
    assert sum(r.get("removed_channels", 0) for r in trainer.state.history) > 0


def test_stop_epoch_ends_the_reconfigurations(data):
    plan = {1: [("layer1.0.conv1", [0])], 2: [("layer1.0.conv1", [1])]}
    trainer = _trainer(None, data, plan=plan, stop_epoch=1)
    trainer.fit(2)
    assert trainer.model.layer1[0].conv1.out_channels == 3  # the epoch-2 zeros stay
    assert "reconfigured" not in trainer.state.history[1]


# ------------------------------------------------------------------ penalty modes
def _one_step(make_blobs, penalty: str) -> tuple[Trainer, PruneTrain]:
    torch.manual_seed(0)
    prune = PruneTrain(ratio=0.3, interval=100, penalty=penalty)
    trainer = Trainer(
        _model(),
        make_blobs(8, seed=0),
        optimizer=lambda p: torch.optim.SGD(p, lr=0.1),
        batch_size=8,
        device="cpu",
        progress=False,
        seed=3,
        callbacks=[prune],
        architecture=ARCH,
    )
    trainer.fit(1)
    return trainer, prune


def test_penalty_on_the_gradient_equals_penalty_on_the_loss(make_blobs):
    by_loss, cb_loss = _one_step(make_blobs, "loss")
    by_grad, cb_grad = _one_step(make_blobs, "grad")
    assert cb_loss.lam == pytest.approx(cb_grad.lam, rel=1e-12) and cb_loss.lam > 0
    grad_params = dict(by_grad.model.named_parameters())
    for name, p in by_loss.model.named_parameters():
        torch.testing.assert_close(p, grad_params[name], rtol=0, atol=1e-6, msg=name)
    a, b = by_loss.state.history[0], by_grad.state.history[0]
    assert a["group_lasso"] == pytest.approx(b["group_lasso"], rel=1e-6)
    # the logged loss includes the penalty only in "loss" mode
    assert a["train_loss"] == pytest.approx(b["train_loss"] + cb_loss.lam * a["group_lasso"])


def test_one_step_is_sgd_on_task_loss_plus_lambda_times_group_lasso(make_blobs):
    trained, cb = _one_step(make_blobs, "loss")
    model = _model()
    x, y = make_blobs(8, seed=0).inputs, make_blobs(8, seed=0).targets
    model.train()
    task = nn.functional.cross_entropy(model(x), y)
    gl = group_lasso(model)
    assert cb.lam == pytest.approx(0.3 * float(task.detach()) / (0.7 * float(gl.detach())))
    (task + cb.lam * gl).backward()
    trained_params = dict(trained.model.named_parameters())
    with torch.no_grad():
        for name, p in model.named_parameters():
            torch.testing.assert_close(
                trained_params[name], p - 0.1 * p.grad, rtol=0, atol=1e-6, msg=name
            )
