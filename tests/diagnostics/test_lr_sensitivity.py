"""Learning-rate sensitivity: transition-model fits, the sweep and its Trainer callback."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from edgetrain.diagnostics import (
    LR_SENSITIVITY_FILE,
    TRANSITION_MODELS,
    LRSensitivity,
    fit_transition,
    fit_transition_models,
    log_rates,
    measure_lr_sensitivity,
    rate_for_distance,
    read_lr_sensitivity,
    transition_distance,
)
from edgetrain.engine import CALLBACKS, Trainer
from edgetrain.errors import ConfigError
from edgetrain.report.lr_sensitivity import plot_lr_sensitivity, sensitivity_grid
from edgetrain.runs import load_config

pytestmark = pytest.mark.usefixtures("single_thread")


def test_log_rates_are_fifty_log_uniform_rates_from_1e_minus_4_to_100() -> None:
    rates = np.asarray(log_rates())
    assert len(rates) == 50
    assert rates[0] == pytest.approx(1e-4) and rates[-1] == pytest.approx(1e2)
    assert np.allclose(np.diff(np.log(rates)), np.log(1e6) / 49)
    with pytest.raises(ConfigError, match="at least 2 rates"):
        log_rates(1)


@pytest.mark.parametrize(("mu", "sigma"), [(-2.0, 1.5), (0.7, 0.4), (-6.0, 3.0)])
def test_erf_fit_recovers_mu_and_sigma_of_a_synthetic_curve(mu: float, sigma: float) -> None:
    rates = log_rates()
    exact = transition_distance(rates, mu, sigma)
    fit = fit_transition(rates, exact)
    assert fit is not None and fit.model == "erf"
    # (D within 1e-12 of 0 or 1 loses digits in erfinv: hence 1e-4, not machine precision)
    assert fit.mu == pytest.approx(mu, abs=1e-4) and fit.sigma == pytest.approx(sigma, abs=1e-4)
    assert fit.rmse < 1e-6
    # Measured distances are shares of a finite batch: quantised, and 0 or 1 at the ends.
    quantised = np.round(exact * 2048) / 2048
    fit = fit_transition(rates, quantised)
    assert fit.mu == pytest.approx(mu, abs=0.05) and fit.sigma == pytest.approx(sigma, rel=0.05)
    assert fit.points == int(((quantised > 0) & (quantised < 1)).sum())


def test_erf_fit_needs_two_points_inside_the_transition() -> None:
    rates = [0.01, 0.1, 1.0, 10.0]
    assert fit_transition(rates, [0.0, 0.0, 1.0, 1.0]) is None
    assert fit_transition(rates, [0.0, 0.3, 1.0, 1.0]) is None
    assert fit_transition(rates, [0.9, 0.5, 0.1, 0.0]) is None  # falling: not a transition
    assert fit_transition(rates, [0.0, 0.3, 0.8, 1.0]) is not None


def test_rate_for_distance_inverts_the_transition() -> None:
    for d in (0.05, 0.25, 0.5, 0.88):
        rate = rate_for_distance(d, mu=-1.0, sigma=1.3)
        assert transition_distance([rate], -1.0, 1.3)[0] == pytest.approx(d)
    assert rate_for_distance(0.5, mu=-1.0, sigma=1.3) == pytest.approx(np.exp(-1.0))


@pytest.mark.parametrize(
    ("model", "mu", "sigma"), [("erf-power", 3.0, 0.8), ("arctan-power", -2.5, 4.0)]
)
def test_alternative_models_recover_their_parameters_and_fit_best(model, mu, sigma) -> None:
    rates = log_rates()
    d = TRANSITION_MODELS[model](rates, mu, sigma)
    fits = fit_transition_models(rates, d)
    assert set(fits) == {"erf", "erf-power", "arctan-power"}
    assert fits[model].mu == pytest.approx(mu, rel=1e-3)
    assert fits[model].sigma == pytest.approx(sigma, rel=1e-3)
    assert fits[model].rmse < 1e-6
    assert fits[model].rmse == min(f.rmse for f in fits.values() if f is not None)


def _mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4)
    )


def test_measure_lr_sensitivity_gives_a_rising_curve_and_changes_nothing(make_blobs) -> None:
    data = make_blobs(64)
    x, y = data.inputs, data.targets
    net = _mlp()
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    weights = {k: v.clone() for k, v in net.state_dict().items()}
    m = measure_lr_sensitivity(net, opt, x, y, rates=log_rates(30))
    assert all(torch.equal(weights[k], v) for k, v in net.state_dict().items())
    assert all(p.grad is None for p in net.parameters())
    assert opt.state_dict()["state"] == {}
    assert list(m.layers) == ["2", "4"] and len(m.distance) == 30
    assert m.distance[0] < 0.05 and m.distance[-1] > 0.9
    assert m.distance == [float(np.mean(v)) for v in zip(*m.layers.values(), strict=True)]
    fit = m.fits["erf"]
    assert fit is not None and fit.sigma > 0 and fit.rmse < 0.1
    # the fitted curve crosses 1/2 where the measured one does
    half = m.rates[int(np.argmax(np.asarray(m.distance) >= 0.5))]
    assert abs(np.log(half) - fit.mu) < 1.5


def _trainer(make_blobs, callbacks, tmp_path, epochs=2, **kw) -> Trainer:
    trainer = Trainer(
        _mlp(),
        make_blobs(64, seed=0),
        val_data=make_blobs(32, seed=1),
        optimizer=lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9),
        scheduler=lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=1, gamma=0.5),
        batch_size=16,
        callbacks=callbacks,
        run_dir=tmp_path / "run",
        device="cpu",
        progress=False,
        **kw,
    )
    trainer.fit(epochs)
    return trainer


def test_callback_measures_at_init_every_epoch_and_given_steps(make_blobs, tmp_path) -> None:
    cb = LRSensitivity(rates=12, at_steps=(6,))
    trainer = _trainer(make_blobs, [cb], tmp_path)
    path = tmp_path / "run" / LR_SENSITIVITY_FILE
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert [r["step"] for r in lines] == [0, 4, 6]  # 4 batches an epoch
    assert [r["epoch"] for r in lines] == [0.0, 1.0, 1.5]
    assert [r["lr"] for r in lines] == [0.05, 0.025, 0.025]  # the step scheduler's rates
    first = lines[0]
    assert len(first["rates"]) == 12 and len(first["distance"]) == 12
    assert set(first["layers"]) == {"2", "4"}
    assert set(first["fits"]) == {"erf", "erf-power", "arctan-power"}
    assert first["mu"] == first["fits"]["erf"]["mu"]
    assert all(f is None or f["rmse"] >= 0 for f in first["fits"].values())
    assert [m.to_json() for m in read_lr_sensitivity(tmp_path / "run")] == lines
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert records[0]["lr_sensitivity_mu"] == lines[0]["mu"]  # epoch 1: the init measurement
    assert records[1]["lr_sensitivity_sigma"] == lines[2]["sigma"]  # the epoch's last one
    grid = sensitivity_grid(read_lr_sensitivity(tmp_path / "run"))
    assert grid.distance.shape == (12, 3)
    assert [p.name for p in plot_lr_sensitivity(cb.measurements, tmp_path / "plots")] == [
        "lr_sensitivity.png",
        "lr_transition.png",
    ]
    assert trainer.state.epoch == 2


def test_a_rise_of_sigma_is_a_divergence_warning(make_blobs, tmp_path) -> None:
    cb = LRSensitivity(rates=12, every_epoch=False, at_steps=(0,), sigma_rise=3.0)
    cb.load_state_dict({"last_sigma": 1e-3})  # as if the previous measurement was sharp
    with pytest.warns(RuntimeWarning, match=r"sigma rose from 0\.001 to .*more than x3"):
        _trainer(make_blobs, [cb], tmp_path, epochs=1)
    assert cb.measurements[0].divergence_warning
    assert read_lr_sensitivity(tmp_path / "run")[0].divergence_warning
    assert cb.state_dict() == {"last_sigma": cb.measurements[0].sigma}


def test_callback_is_registered_and_checks_its_options() -> None:
    cfg = load_config(
        {
            "name": "t",
            "epochs": 1,
            "data": {"name": "digits"},
            "model": {"name": "vgg_small", "options": {"input_size": 8}},
            "callbacks": [{"name": "lr-sensitivity", "rates": 10, "at_steps": [0, 5]}],
        }
    )
    cb = CALLBACKS.create(cfg.callbacks[0].name, **cfg.callbacks[0].options)
    assert isinstance(cb, LRSensitivity) and len(cb.rates) == 10
    with pytest.raises(ConfigError, match="no measurement time"):
        LRSensitivity(every_epoch=False)
    with pytest.raises(ConfigError, match="sigma_rise must be > 1"):
        LRSensitivity(sigma_rise=1.0)
