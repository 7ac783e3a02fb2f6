"""The ``LayerSchedule`` callback in a real :class:`Trainer` (batch size 1, plain SGD, as in
the spec's seed experiments): skipped layers stay put, no graph below the lowest active
layer, per-layer rates, gradient dropout, dataset shifting and the registry entry."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from edgetrain import models
from edgetrain.engine import CALLBACKS, Callback, Trainer, build_scheduler
from edgetrain.errors import EdgetrainError
from edgetrain.finetune import LayerSchedule, Schedule, optimise_placement
from edgetrain.runs import build_trainer, load_config

pytestmark = pytest.mark.usefixtures("single_thread")

LR = 0.1
SHAPE = (1, 8, 8)
FORWARD_ORDER = ["conv1", "conv2", "conv3", "conv4", "conv5", "conv6", "fc"]


def _vgg(seed: int = 0) -> nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return models.create("vgg_small", in_channels=1, input_size=8, num_classes=4)


def _trainer(model: nn.Module, data: Any, callbacks: list[Callback], **kw: Any) -> Trainer:
    kw.setdefault("optimizer", lambda params: torch.optim.SGD(params, lr=LR))
    return Trainer(
        model, data, batch_size=1, callbacks=callbacks, progress=False, device="cpu", **kw
    )


class StepRecorder(Callback):
    """Per training step: which layers require grad at forward time, whether each layer's
    output carries a graph, the weights before and after, the gradients after backward and
    right before the optimizer step. Placed after the ``LayerSchedule``."""

    def __init__(self, layers: list[str]) -> None:
        self.layers = layers
        self.steps: list[dict[str, Any]] = []
        self._step: dict[str, Any] = {}

    def _weights(self, model: nn.Module) -> dict[str, torch.Tensor]:
        modules = dict(model.named_modules())
        return {n: modules[n].weight.detach().clone() for n in self.layers}

    def on_fit_start(self, trainer, model):
        for name, module in model.named_modules():
            if name in self.layers:
                module.register_forward_hook(
                    lambda _m, _i, out, n=name: self._step["graph"].__setitem__(
                        n, out.requires_grad
                    )
                )

    def on_batch_start(self, trainer, model, batch, index):
        self._step = {"epoch": trainer.state.epoch, "index": index, "graph": {}}

    def before_forward(self, trainer, model, inputs):
        modules = dict(model.named_modules())
        self._step["requires_grad"] = {
            n: all(p.requires_grad for p in modules[n].parameters()) for n in self.layers
        }
        self._step["before"] = self._weights(model)

    def after_backward(self, trainer, model):
        modules = dict(model.named_modules())
        self._step["grad"] = {
            n: None if modules[n].weight.grad is None else modules[n].weight.grad.clone()
            for n in self.layers
        }

    def before_optimizer_step(self, trainer, model, optimizer):
        modules = dict(model.named_modules())
        self._step["stepped_grad"] = {
            n: None if modules[n].weight.grad is None else modules[n].weight.grad.clone()
            for n in self.layers
        }

    def on_batch_end(self, trainer, model, outputs, loss):
        self._step["after"] = self._weights(model)
        self._step["lrs"] = [g["lr"] for g in trainer.optimizer.param_groups]
        self.steps.append(self._step)


def _run(schedule: Schedule | str, data: Any, epochs: int = 1, **kw: Any):
    net = _vgg()
    cb = LayerSchedule(schedule)
    recorder = StepRecorder(FORWARD_ORDER)
    trainer = _trainer(net, data, [cb, recorder], **kw)
    trainer.fit(epochs)
    return cb, recorder, trainer


# ------------------------------------------------------------------ which layers move
def test_skipped_layers_are_bit_identical_and_active_layers_change(make_blobs):
    cb, rec, _ = _run("4421", make_blobs(8, shape=SHAPE), epochs=2)
    assert cb.layers == ["fc", "conv6", "conv5", "conv4"]
    assert len(rec.steps) == 16
    for step in rec.steps:
        for name in FORWARD_ORDER:
            same = torch.equal(step["before"][name], step["after"][name])
            assert same != step["requires_grad"][name], (step["epoch"], step["index"], name)
        for name in ("conv1", "conv2", "conv3"):  # below the schedule: frozen
            assert not step["requires_grad"][name]
    # first epoch: step t uses column t mod T
    for step in rec.steps[:8]:
        active = [step["requires_grad"][n] for n in cb.layers]
        assert active == Schedule.parse("4421").active(step["index"])
    # every row is updated s/T of the time
    updates = [sum(s["requires_grad"][n] for s in rec.steps) for n in cb.layers]
    assert updates == [16, 16, 8, 4]


def test_no_graph_below_the_lowest_active_layer(make_blobs):
    _, rec, _ = _run("4421", make_blobs(8, shape=SHAPE))
    saw_top_only = False
    for step in rec.steps:
        active = [step["requires_grad"][n] for n in FORWARD_ORDER]
        lowest = active.index(True)
        for i, name in enumerate(FORWARD_ORDER):
            assert step["graph"][name] == (i >= lowest), (step["index"], name)
            assert (step["grad"][name] is None) == (not active[i]), (step["index"], name)
        if FORWARD_ORDER[lowest] == "conv6":
            saw_top_only = True
            assert all(step["grad"][n] is None for n in FORWARD_ORDER[:5])
    assert saw_top_only


def test_after_fit_every_scheduled_layer_is_trainable_again(make_blobs):
    _, rec, trainer = _run("4421", make_blobs(8, shape=SHAPE))
    last = rec.steps[-1]["requires_grad"]
    assert not last["conv5"] and not last["conv4"]  # the last step trained the top rows only
    trainable = [trainer.model.get_submodule(n).weight.requires_grad for n in FORWARD_ORDER]
    assert trainable == [False, False, False, True, True, True, True]


# ------------------------------------------------------------------ per-layer rates
@pytest.mark.parametrize(
    "schedule",
    [
        Schedule.parse("4444_lr4421"),
        Schedule.parse("4421_lr4444"),
        Schedule.from_matrix(["1111", [0.5, 0, 0.5, 0], [0, 0, 0, 3.0]], name="rates"),
    ],
    ids=str,
)
def test_update_is_lr_times_rate_times_grad_for_plain_sgd(make_blobs, schedule):
    cb, rec, trainer = _run(schedule, make_blobs(8, shape=SHAPE))
    checked = 0
    for step in rec.steps:
        for name, rate, active in zip(
            cb.layers, schedule.rates, schedule.active(step["index"]), strict=True
        ):
            if not active:
                assert torch.equal(step["before"][name], step["after"][name])
                continue
            grad = step["grad"][name]
            change = step["after"][name] - step["before"][name]
            expected = -LR * rate * grad
            ulp = 1e-6 * step["before"][name].abs().max().item()
            torch.testing.assert_close(change, expected, rtol=1e-3, atol=ulp)
            assert change.norm() / (LR * grad.norm()) == pytest.approx(rate, rel=1e-3)
            checked += 1
        assert step["lrs"] == [LR] * len(step["lrs"])  # restored after the step
    assert checked == sum(sum(schedule.active(i)) for i in range(8))


def test_rates_with_an_optimizer_object_built_outside_is_a_one_line_error(make_blobs):
    data = make_blobs(4, shape=SHAPE)
    net = _vgg()
    trainer = _trainer(
        net,
        data,
        [LayerSchedule("4444_lr4421")],
        optimizer=torch.optim.SGD(net.parameters(), lr=LR),
    )
    before = [p.detach().clone() for p in net.parameters()]
    with pytest.raises(EdgetrainError, match="per-layer") as info:
        trainer.fit(1)
    assert "\n" not in str(info.value) and "4444_lr4421" in str(info.value)
    assert trainer.state.global_step == 0
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters(), strict=True))
    # without rates an optimizer object is fine
    net = _vgg()
    opt = torch.optim.SGD(net.parameters(), lr=LR)
    assert _trainer(net, data, [LayerSchedule("4421")], optimizer=opt).fit(1).global_step == 4


def test_per_step_lr_scheduler_keeps_working_with_rates(make_blobs):
    _, _, trainer = _run(
        "4444_lr4421",
        make_blobs(8, shape=SHAPE),
        epochs=2,
        scheduler=lambda opt, steps_per_epoch: build_scheduler(opt, "onecycle", 2, steps_per_epoch),
    )
    lrs = [g["lr"] for g in trainer.optimizer.param_groups]
    assert lrs == pytest.approx([trainer.scheduler.get_last_lr()[0]] * len(lrs))


# ------------------------------------------------------------------ gradient dropout
def test_rdo_keeps_each_gradient_element_with_probability_s_over_T(make_blobs):
    schedule = Schedule.parse("4421_rdo")
    cb, rec, _ = _run(schedule, make_blobs(16, shape=SHAPE))
    for name, keep in zip(cb.layers, schedule.keep, strict=True):
        kept = total = 0
        for step in rec.steps:
            assert step["requires_grad"][name]  # rdo trains every layer every step
            raw, used = step["grad"][name], step["stepped_grad"][name]
            if keep == 1.0:
                assert torch.equal(raw, used)
                continue
            nonzero = raw != 0
            survived = used != 0
            assert torch.equal(used[survived], raw[survived])  # kept, not rescaled
            kept += int((survived & nonzero).sum())
            total += int(nonzero.sum())
        if keep < 1.0:
            assert total > 10_000
            std = math.sqrt(keep * (1 - keep) / total)
            assert abs(kept / total - keep) < 5 * std, (name, kept / total, keep)


# ------------------------------------------------------------------ dataset shifting
@pytest.mark.parametrize("text", ["4421", "4211_m", "8421"])
def test_every_row_sees_every_sample_within_T_epochs(make_blobs, text):
    n = 8
    schedule = Schedule.parse(text)
    t = schedule.cycle_length
    loader = DataLoader(make_blobs(n, shape=SHAPE), batch_size=1, shuffle=False)
    cb, rec, _ = _run(schedule, loader, epochs=t)
    seen = {name: set() for name in cb.layers}
    first_epoch = {name: set() for name in cb.layers}
    for step in rec.steps:
        for name in cb.layers:
            if step["requires_grad"][name]:
                seen[name].add(step["index"])
                if step["epoch"] == 0:
                    first_epoch[name].add(step["index"])
    assert all(seen[name] == set(range(n)) for name in cb.layers), seen
    # without the shift the rarest row would meet only n*s/T fixed samples
    rarest = cb.layers[-1]
    assert len(first_epoch[rarest]) == n * sum(cb.schedule.pattern[-1]) // t < n


def test_column_names_the_step_the_schedule_applies(make_blobs):
    """``LayerSchedule.column`` is the column of the running step: the layers that
    require grad at forward time are exactly that column's rows."""

    class Columns(Callback):
        def __init__(self, schedule: LayerSchedule) -> None:
            self.schedule, self.seen = schedule, []

        def before_forward(self, trainer, model, inputs):
            active = tuple(int(all(p.requires_grad for p in ps)) for ps in self.schedule.params)
            self.seen.append((trainer.state.epoch, self.schedule.column, active))

    cb = LayerSchedule("4211")
    columns = Columns(cb)
    _trainer(_vgg(), make_blobs(6, shape=SHAPE), [cb, columns]).fit(2)
    assert len(columns.seen) == 12
    for step, (epoch, column, active) in enumerate(columns.seen):
        assert column == (step % 6 + epoch) % 4  # shifted by one step per epoch
        assert active == tuple(row[column] for row in cb.schedule.pattern)


# ------------------------------------------------------------------ set-up
def test_fold_bn_happens_before_the_optimizer_is_built(make_blobs):
    net = models.create("fcn1d", length=16)
    cb = LayerSchedule("4421")
    trainer = _trainer(net, make_blobs(6, num_classes=2, shape=(1, 16)), [cb])
    assert not any(isinstance(m, nn.BatchNorm1d) for m in net.modules())
    assert cb.layers == ["fc", "conv3", "conv2", "conv1"]
    in_optimizer = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert all(id(p) in in_optimizer for p in net.parameters())
    # no per-layer rates: one group (an extra group per layer would cost time every step)
    assert len(trainer.optimizer.param_groups) == 1
    bias = net.conv1.bias.detach().clone()
    trainer.fit(1)
    assert not torch.equal(bias, net.conv1.bias)  # the folded-in bias is trained


def test_layers_below_the_schedule_and_frozen_rows_never_train(make_blobs):
    net = _vgg()
    trainer = _trainer(net, make_blobs(4, shape=SHAPE), [LayerSchedule("4440")])
    frozen = {n: m.weight.detach().clone() for n, m in net.named_children() if n[:4] == "conv"}
    trainer.fit(1)
    for name in ("conv1", "conv2", "conv3", "conv4"):
        assert torch.equal(frozen[name], getattr(net, name).weight), name
        assert not getattr(net, name).weight.requires_grad
    for name in ("conv5", "conv6"):
        assert not torch.equal(frozen[name], getattr(net, name).weight), name


def test_m_schedule_gets_the_cost_model_placement(make_blobs):
    net = _vgg()
    cb = LayerSchedule("42211_m")
    _trainer(net, make_blobs(4, shape=SHAPE), [cb])
    assert cb.schedule == optimise_placement(Schedule.parse("42211_m"), _vgg(), SHAPE)
    assert [sum(r) for r in cb.schedule.pattern] == [4, 2, 2, 1, 1]


def test_too_many_rows_is_a_one_line_error(make_blobs):
    with pytest.raises(EdgetrainError, match="8 rows but the model has only 7"):
        _trainer(_vgg(), make_blobs(4, shape=SHAPE), [LayerSchedule("44444444")])


# ------------------------------------------------------------------ registry and config
def _recipe(schedule: str) -> dict[str, Any]:
    return {
        "name": "tiny-schedule",
        "epochs": 1,
        "device": "cpu",
        "data": {"name": "digits", "options": {"test_fraction": 0.9}, "batch_size": 16},
        "model": {"name": "vgg_small", "options": {"input_size": 8}},
        "optimizer": {"name": "sgd", "lr": 0.05},
        "callbacks": [{"name": "layer-schedule", "schedule": schedule}],
    }


def test_layer_schedule_is_registered_and_runs_from_a_config():
    assert "layer-schedule" in CALLBACKS
    assert isinstance(CALLBACKS.create("layer-schedule", schedule="4421"), LayerSchedule)
    trainer = build_trainer(load_config(_recipe("4444_lr4421")), None, progress=False)
    (cb,) = [c for c in trainer.callbacks if isinstance(c, LayerSchedule)]
    assert cb.schedule.mode == "pllr"
    assert [g["layer"] for g in trainer.optimizer.param_groups] == [
        "fc",
        "conv6",
        "conv5",
        "conv4",
        "(frozen)",
    ]
    conv3 = trainer.model.conv3.weight.detach().clone()
    conv4 = trainer.model.conv4.weight.detach().clone()
    state = trainer.fit(1)
    assert state.epoch == 1 and math.isfinite(state.history[0]["train_loss"])
    assert torch.equal(conv3, trainer.model.conv3.weight)
    assert not torch.equal(conv4, trainer.model.conv4.weight)


def test_bad_schedule_in_a_config_is_a_one_line_error():
    config = load_config(_recipe("4451"))
    with pytest.raises(EdgetrainError, match="updated 5 times") as info:
        build_trainer(config, None, progress=False)
    assert "\n" not in str(info.value)
