"""ActCoolLR: cooling plans, the rate formula, temperature tracking, divergence, config."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from edgetrain.diagnostics import (
    ACTCOOL_FILE,
    ActCoolLR,
    DivergenceError,
    cooling_plan,
    lr_for_temperature,
    read_actcool,
    target_probability,
)
from edgetrain.diagnostics.actcool import _plateau_onset
from edgetrain.engine import LR_CONTROLLERS, Callback, Trainer
from edgetrain.errors import ConfigError, EdgetrainError
from edgetrain.runs import load_config

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.mark.parametrize("plan", ["power", "late-power", "linear-probability"])
def test_every_plan_starts_at_t_start_and_ends_cold(plan: str) -> None:
    target = cooling_plan(plan, t_start=3.17, gamma=4.0)
    assert target(0.0) == pytest.approx(3.17)
    assert target(1.0) == 0.0
    values = [target(s) for s in np.linspace(0, 1, 21)]
    assert values == sorted(values, reverse=True)


def test_plan_shapes_between_the_ends() -> None:
    assert cooling_plan("power", 3.0, 2.0)(0.5) == pytest.approx(3.0 * 0.5**2)
    assert cooling_plan("late-power", 3.0, 2.0)(0.5) == pytest.approx(3.0 * (1 - 0.5**2))
    half = cooling_plan("linear-probability", 3.0, 2.0)(0.5)
    assert target_probability(half) == pytest.approx(target_probability(3.0) / 2)
    with pytest.raises(EdgetrainError, match="unknown cooling plan 'cosine'"):
        cooling_plan("cosine")


def test_rate_formula_probability_and_clamp() -> None:
    assert target_probability(3.17) == pytest.approx(0.99 * (1 - 2**-3.17))
    # P = 1/2 sits at the transition's centre: lr = e^mu
    t_half = -math.log2(1 - 0.5 / 0.99)
    assert lr_for_temperature(t_half, mu=-2.0, sigma=1.7) == pytest.approx(math.exp(-2.0))
    assert lr_for_temperature(0.0, mu=-2.0, sigma=1.0) == 1e-10  # P = 0: clamped
    assert lr_for_temperature(0.0, mu=-2.0, sigma=1.0, min_lr=1e-6) == 1e-6
    assert math.isnan(lr_for_temperature(1.0, mu=math.nan, sigma=1.0))


def _mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 4)
    )


def _fit(make_blobs, controller: Callback, epochs: int = 3, seed: int = 0, **kw) -> Trainer:
    kw.setdefault("optimizer", lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9))
    trainer = Trainer(
        _mlp(seed),
        kw.pop("data", None) or make_blobs(512, seed=seed),
        val_data=make_blobs(128, seed=99),
        batch_size=32,
        callbacks=[controller, *kw.pop("callbacks", [])],
        device="cpu",
        progress=False,
        seed=seed,
        **kw,
    )
    trainer.fit(epochs)
    return trainer


@pytest.mark.parametrize("seed", [0, 1])
def test_measured_temperature_follows_the_plan(make_blobs, seed: int) -> None:
    controller = ActCoolLR(probing_step_size=2)
    trainer = _fit(make_blobs, controller, seed=seed)
    probed = [r for r in controller.rows if "d" in r]
    assert len(probed) == 24  # 16 steps an epoch, every second one probed
    target = np.asarray([target_probability(r["t_target"]) for r in probed])
    measured = np.asarray([r["d"] for r in probed])
    hot = target > 0.05  # below that, one batch cannot resolve the target
    assert hot.sum() >= 12
    assert np.median(np.abs(measured - target)[hot]) < 0.15
    assert np.corrcoef(target[hot], measured[hot])[0, 1] > 0.8
    t_plan = np.asarray([-math.log2(1 - p) for p in target])
    t_measured = np.asarray([r["t_measured"] for r in probed])
    assert np.median(np.abs(t_measured - t_plan)[hot]) < 0.4
    # the rate falls with the plan to the floor; the run learned the task
    lrs = [r["lr"] for r in controller.rows]
    assert lrs[-1] < max(lrs) / 20
    assert trainer.state.history[-1]["val_top1"] > 90
    record = trainer.state.history[0]
    assert {"actcool_lr", "actcool_t_target", "actcool_t_measured", "actcool_mu"} <= set(record)


def test_refit_from_far_off_starting_values_finds_the_same_transition(make_blobs) -> None:
    fits = []
    for mu, sigma in ((-1.0, 1.0), (-15.0, 0.5), (8.0, 3.0)):
        controller = ActCoolLR(mu=mu, sigma=sigma, probing_step_size=1000)
        _fit(make_blobs, controller, epochs=1)
        assert controller.refits == 1 and controller.rows[0]["refit"]
        fits.append((controller.mu, controller.sigma))
    mus, sigmas = zip(*fits, strict=True)
    assert max(mus) - min(mus) < 0.3
    assert max(sigmas) / min(sigmas) < 1.3


def test_a_saturating_curve_has_a_plateau_onset() -> None:
    rising = {0.1: 0.1, 0.2: 0.3, 0.4: 0.5, 0.8: 0.7, 1.6: 0.9}
    assert _plateau_onset(rising) is None
    flat = {0.1: 0.2, 0.2: 0.5, 0.4: 0.6, 0.8: 0.695, 1.6: 0.7, 3.2: 0.702, 6.4: 0.703}
    assert _plateau_onset(flat) == 0.8
    assert _plateau_onset({1.0: 0.0, 2.0: 0.0, 4.0: 0.0, 8.0: 0.0}) is None  # before the rise


def test_a_rate_above_1e10_aborts_with_one_clear_line(make_blobs) -> None:
    controller = ActCoolLR(mu=30.0, fit_at_start=False)
    with pytest.raises(DivergenceError, match=r"learning rate .* at step 0 .*diverged") as info:
        _fit(make_blobs, controller, epochs=1)
    assert "\n" not in str(info.value)


def test_a_nan_loss_aborts_with_one_clear_line(make_blobs) -> None:
    data = make_blobs(64)
    data.inputs[:, 0, 0, 0] = math.nan
    controller = ActCoolLR(fit_at_start=False)
    with pytest.raises(DivergenceError, match=r"training loss is nan at step 0") as info:
        _fit(make_blobs, controller, epochs=1, data=data)
    assert "\n" not in str(info.value)


def test_a_scheduler_is_refused(make_blobs) -> None:
    with pytest.raises(ConfigError, match="remove the scheduler"):
        _fit(
            make_blobs,
            ActCoolLR(),
            scheduler=lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=1),
        )


class _StopAfterFirstEpoch(Callback):
    def on_epoch_end(self, trainer, model):
        trainer.state.stop_requested = True


def test_resumed_run_continues_exactly(make_blobs, tmp_path) -> None:
    def trainer(run: str, callbacks: list[Callback]) -> Trainer:
        return Trainer(
            _mlp(),
            make_blobs(256),
            val_data=make_blobs(64, seed=1),
            optimizer=lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9),
            batch_size=32,
            callbacks=[ActCoolLR(probing_step_size=3), *callbacks],
            run_dir=tmp_path / run,
            device="cpu",
            progress=False,
        )

    straight = trainer("a", [])
    straight.fit(2)
    first = trainer("b", [_StopAfterFirstEpoch()])
    first.fit(2)
    assert first.state.epoch == 1
    resumed = trainer("b", [])
    resumed.load_checkpoint(tmp_path / "b" / "checkpoints" / "last.pt")
    resumed.fit(2)
    for k, v in straight.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k
    rows = read_actcool(tmp_path / "a")
    assert rows == read_actcool(tmp_path / "b")
    assert [r["step"] for r in rows] == list(range(16))
    lines = (tmp_path / "a" / ACTCOOL_FILE).read_text().splitlines()
    assert json.loads(lines[0])["refit"] is True


BASE = {
    "name": "t",
    "epochs": 1,
    "data": {"name": "digits"},
    "model": {"name": "vgg_small", "options": {"input_size": 8}},
}


def test_lr_control_from_yaml_names_the_registered_controller() -> None:
    cfg = load_config({**BASE, "lr_control": "actcool"})
    assert cfg.lr_control is not None and cfg.lr_control.name == "actcool"
    assert cfg.to_dict()["lr_control"] == {"name": "actcool"}
    cfg = load_config(
        {**BASE, "lr_control": {"name": "actcool", "t_start": 2.5, "plan": "late-power"}}
    )
    controller = LR_CONTROLLERS.create(cfg.lr_control.name, **cfg.lr_control.options)
    assert isinstance(controller, ActCoolLR)
    assert (controller.t_start, controller.plan_name) == (2.5, "late-power")


@pytest.mark.parametrize(
    ("lr_control", "message"),
    [
        ("actcol", "lr_control: unknown LR controller 'actcol'; choose one of: actcool"),
        ({"name": "actcool", "tstart": 2}, "LR controller 'actcool' has no option 'tstart'"),
        ({"name": "actcool", "gamma": "hot"}, "option 'gamma'"),
    ],
)
def test_lr_control_typos_give_one_line(lr_control, message) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        load_config({**BASE, "lr_control": lr_control})
    assert "\n" not in str(info.value)


def test_lr_control_and_scheduler_are_refused_together() -> None:
    with pytest.raises(ConfigError) as info:
        load_config({**BASE, "lr_control": "actcool", "scheduler": {"name": "onecycle"}})
    assert str(info.value) == (
        "run config: lr_control 'actcool' sets the learning rate every step and cannot be "
        "combined with scheduler 'onecycle'; remove the scheduler (--set scheduler=null)"
    )


# ------------------------------------------------------- control, refit rule, D floor
def test_mean_temperature_is_the_default_control_and_distance_an_option(make_blobs) -> None:
    from edgetrain.diagnostics import temperature_distance

    assert ActCoolLR().control == "temperature"
    hot = {"a": 0.1, "b": 0.9}
    # the mean temperature weighs the hot layer more than the mean distance does
    assert temperature_distance(hot) > 0.5 == sum(hot.values()) / 2
    by_temperature = ActCoolLR(probing_step_size=4)
    by_distance = ActCoolLR(probing_step_size=4, control="distance")
    _fit(make_blobs, by_temperature, epochs=1)
    _fit(make_blobs, by_distance, epochs=1)
    # same plan, same start: controlling the mean temperature picks the lower first rate
    assert by_temperature.rows[0]["lr"] < by_distance.rows[0]["lr"]
    with pytest.raises(ConfigError, match="control must be one of temperature, distance"):
        ActCoolLR(control="entropy")


def test_refit_after_exactly_max_jumps(make_blobs) -> None:
    controller = ActCoolLR(mu_jump=0.0, max_jumps=2, probing_step_size=1, fit_at_start=False)
    _fit(make_blobs, controller, epochs=1)
    refits = [r["step"] for r in controller.rows if r.get("refit")]
    # every probe counts as a jump: after a re-fit at step s, the probes of steps s and
    # s + 1 make max_jumps = 2 jumps, so the next re-fit comes before step s + 2
    assert refits[1] - refits[0] == 2


def test_d_floor_at_tiny_rates_warns_once_and_is_left_out_of_the_fit(make_blobs) -> None:
    """Zero biases and all-zero samples put pre-activations exactly at 0: any step of
    the bias flips their pattern, so D stays above 0 at any rate."""
    from edgetrain.diagnostics import FloorWarning

    blobs = make_blobs(256, seed=0)
    blobs.inputs[::4] = 0.0  # a quarter of the samples are all zero
    net = _mlp(0)
    for m in net.modules():
        if isinstance(m, nn.Linear):
            nn.init.zeros_(m.bias)
    controller = ActCoolLR(probing_step_size=1000)
    trainer = Trainer(
        net,
        blobs,
        batch_size=32,
        callbacks=[controller],
        optimizer=lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9),
        device="cpu",
        progress=False,
    )
    with pytest.warns(FloorWarning, match=r"D stays at 0\.\d+ even at learning rate") as seen:
        trainer.fit(1)
    assert len([w for w in seen if issubclass(w.category, FloorWarning)]) == 1
    assert controller.floor is not None and controller.floor >= 0.02
    assert controller.rows[0]["d_floor"] == controller.floor
    # a clean model sees no floor and no warning
    import warnings

    clean = ActCoolLR(probing_step_size=1000)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FloorWarning)
        _fit(make_blobs, clean, epochs=1)
    assert clean.floor is not None and clean.floor < 0.02


def test_max_rise_limits_how_far_one_measurement_raises_the_rate() -> None:
    """A measured D far below the model's raises mu by the whole gap; with max_rise the
    rate rises at most that factor, and the full move still counts as a jump."""
    free, limited = ActCoolLR(), ActCoolLR(max_rise=2.0)
    for c in (free, limited):
        c.mu, c.sigma, c.lr, c.target = -2.0, 1.5, 0.1, 2.0
    before = lr_for_temperature(2.0, -2.0, 1.5)
    for c in (free, limited):
        c._update(0.001, samples=1000)  # far fewer changes than the target's
    assert lr_for_temperature(2.0, free.mu, free.sigma) > 50 * before
    assert lr_for_temperature(2.0, limited.mu, limited.sigma) == pytest.approx(2 * before)
    assert free.jumps == limited.jumps == 1
    # a measurement above the model's lowers mu in full either way
    for c in (free, limited):
        c.mu = -2.0
        c._update(0.999, samples=1000)
    assert limited.mu == free.mu < -2.0
    with pytest.raises(ConfigError, match=r"max_rise must be > 1 \(or unset\), got 1"):
        ActCoolLR(max_rise=1.0)
    cfg = load_config({**BASE, "lr_control": {"name": "actcool", "max_rise": 3}})
    assert cfg.lr_control is not None
    assert LR_CONTROLLERS.create(cfg.lr_control.name, **cfg.lr_control.options).max_rise == 3
