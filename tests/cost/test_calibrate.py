"""Calibration: the least-squares fit on synthetic timings, and one real quick run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from edgetrain.cost import ALL, DeviceProfile, analyze, load_profile, resolve_plan
from edgetrain.cost import calibrate as calibration
from edgetrain.cost.calibrate import Measurement, calibrate, fit_profile

RATE = 1e-10  # seconds per forward-convolution MAC: 10 GMAC/s
SIZES = (10_000, 100_000, 1_000_000, 10_000_000)

# (term, kind) -> (a seconds per MAC, b seconds per call)
TRUTH = {
    ("forward", "conv"): (RATE, 2e-6),
    ("input_grad", "conv"): (1.5 * RATE, 5e-6),
    ("weight_grad", "conv"): (2.0 * RATE, 1e-6),
    ("update", "conv"): (4.0 * RATE, 3e-7),
    ("forward", "activation"): (2.5 * RATE, 1e-7),
    ("forward", "linear"): (0.5 * RATE, 0.0),
}


def _synthetic(truth: dict[tuple[str, str], tuple[float, float]]) -> list[Measurement]:
    return [
        Measurement(kind, term, macs, a * macs + b)
        for (term, kind), (a, b) in truth.items()
        for macs in SIZES
    ]


def test_fit_recovers_multipliers_and_offsets() -> None:
    # a ReLU's input gradient counts 0 MACs: only a per-call cost of 0.8 us
    zero = [Measurement("activation", "input_grad", 0, 8e-7) for _ in SIZES]
    profile = fit_profile(_synthetic(TRUTH) + zero, step_seconds=3e-5, name="synthetic")
    assert profile.name == "synthetic"
    assert profile.peak_macs_per_s == pytest.approx(1e10)
    # the per-step offset in forward-conv MACs: 3e-5 s / 1e-10 s
    assert profile.offset_per_step == pytest.approx(300_000)
    for (term, kind), (a, b) in TRUTH.items():
        # multiplier a / a_conv_forward; per-call offset b in forward-conv MACs (b / RATE)
        assert profile.multiplier(term, kind) == pytest.approx(a / RATE, rel=1e-3), (term, kind)
        assert profile.call_offset(term, kind) == pytest.approx(b / RATE, rel=1e-3, abs=1.0)
    assert profile.multiplier("input_grad", "activation") == 0.0
    assert profile.call_offset("input_grad", "activation") == pytest.approx(8000)
    # kinds that were not measured keep the neutral defaults
    assert profile.multiplier("update", "batchnorm") == 1.0
    assert profile.call_offset("update", "batchnorm") == 0.0


def test_the_fit_is_close_under_noise() -> None:
    rng = np.random.default_rng(0)
    noisy = [
        Measurement(m.kind, m.term, m.macs, m.seconds * (1 + 0.02 * rng.standard_normal()))
        for m in _synthetic(TRUTH)
    ]
    profile = fit_profile(noisy)
    assert profile.multiplier("weight_grad", "conv") == pytest.approx(2.0, rel=0.1)
    assert profile.multiplier("forward", "activation") == pytest.approx(2.5, rel=0.1)


def test_a_negative_call_cost_is_refitted_through_the_origin() -> None:
    # seconds = 3e-10 * MACs - 1e-6: the intercept would be negative
    rows = [Measurement("linear", "weight_grad", m, 3 * RATE * m - 1e-6) for m in SIZES]
    profile = fit_profile(_synthetic({("forward", "conv"): (RATE, 0.0)}) + rows)
    assert profile.call_offset("weight_grad", "linear") == 0.0
    mean_rate = np.mean([r.seconds / r.macs for r in rows])
    assert profile.multiplier("weight_grad", "linear") == pytest.approx(mean_rate / RATE, rel=1e-3)


def test_a_fit_needs_forward_convolutions() -> None:
    with pytest.raises(ValueError, match="forward convolution"):
        fit_profile(_synthetic({("forward", "linear"): (RATE, 1e-6)}))


def test_a_quick_calibration_of_this_machine(single_thread: None, tmp_path: Path) -> None:
    profile = calibrate(quick=True)
    assert profile.name == "host-cpu"
    assert profile.peak_macs_per_s is not None and profile.peak_macs_per_s > 1e8
    assert profile.offset_per_step > 0
    # A ReLU's or an add's input gradient counts 0 MACs: fitted as a per-call cost only.
    # Every other term gets a positive rate (noisy tiny layers fall back to a rate through
    # the origin rather than a clamped zero).
    zero_mac_terms = {("input_grad", "activation"), ("input_grad", "add")}
    for term, table in profile.multipliers.items():
        for kind, value in table.items():
            if (term, kind) in zero_mac_terms:
                assert value == 0.0 and profile.call_offset(term, kind) > 0, (term, kind)
            else:
                assert value > 0, (term, kind)
    assert set(profile.multipliers["weight_grad"]) >= {"conv", "linear", "batchnorm"}
    assert profile.multiplier("forward", "conv") == 1.0
    assert all(v >= 0 for table in profile.per_call.values() for v in table.values())
    # the profile is usable as a file
    path = profile.save(tmp_path / "host-cpu.yaml")
    assert load_profile(path) == profile
    step = analyze(nn.Sequential(nn.Linear(8, 4)), (8,), plans=[ALL], profile=path).steps()[0]
    assert step.estimated_seconds is not None and step.estimated_seconds > 0


def test_a_per_parameter_rate_is_separated_from_the_mac_rate() -> None:
    # a linear layer read from memory: 4e-10 s per parameter whatever the batch, plus
    # 0.5e-10 s per MAC; three batch sizes make the two rates identifiable
    rows = [
        Measurement("linear", "forward", batch * n, 0.5 * RATE * batch * n + 4 * RATE * n, n)
        for n in (10_000, 500_000, 2_000_000)
        for batch in (1, 8, 32)
    ]
    profile = fit_profile(_synthetic({("forward", "conv"): (RATE, 0.0)}) + rows)
    assert profile.multiplier("forward", "linear") == pytest.approx(0.5, rel=1e-3)
    assert profile.param_cost("forward", "linear") == pytest.approx(4.0, rel=1e-3)
    assert profile.call_offset("forward", "linear") == pytest.approx(0.0, abs=1.0)
    # without a parameter count (or with a single batch size) the old fit is used
    assert profile.param_cost("forward", "conv") == 0.0
    single = [m for m in rows if m.macs == m.params]
    again = fit_profile(_synthetic({("forward", "conv"): (RATE, 0.0)}) + single)
    assert again.param_cost("forward", "linear") == 0.0


# ---------------------------------------------------------------- anchoring on a model
def _net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Dropout(0.2), nn.Flatten(), nn.Linear(144, 3)
    )


@pytest.mark.parametrize("measured_ms", [5.0, 1e-4])
def test_an_offset_anchored_profile_predicts_the_measured_step(monkeypatch, measured_ms) -> None:
    timed: list[list[frozenset[str]]] = []

    def fake_steps_seconds(model, input_shape, plans, batch_size=1, min_seconds=1.0, copies=1):
        timed.append([frozenset(p) for p in plans])
        return [measured_ms / 1e3] * len(plans)

    monkeypatch.setattr(calibration, "model_steps_seconds", fake_steps_seconds)
    profile = DeviceProfile(name="t", peak_macs_per_s=1e9, offset_per_step=50.0)
    net = _net()
    anchored = calibration.anchor_profile(profile, net, (1, 8, 8), plan="last:1", anchor="offset")
    assert timed == [[frozenset({"4.weight", "4.bias"})]]
    predicted = analyze(net, (1, 8, 8), plans=["last:1"], profile=anchored).steps()[0]
    if measured_ms > 1e-3:  # the residual becomes the per-step offset
        assert predicted.estimated_seconds == pytest.approx(measured_ms / 1e3, rel=1e-6)
        assert anchored.offset_per_step > profile.offset_per_step
    else:  # a step faster than the layer terms: the offset stops at zero
        assert anchored.offset_per_step == 0.0
    assert "anchored on a measured Sequential 1x8x8 last:1 step" in anchored.description
    # nothing but the offset and the description changes
    same = anchored.model_copy(update={"offset_per_step": 50.0, "description": ""})
    assert same == profile


def _deep() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3),
        nn.ReLU(), nn.Dropout(0.2), nn.Flatten(), nn.Linear(8 * 4 * 4, 3),
    )  # fmt: skip


@pytest.mark.parametrize("fixed_s, scale", [(2e-4, 1.7), (0.0, 0.8)])
def test_a_scale_anchored_profile_fits_steps_that_end_early(monkeypatch, fixed_s, scale) -> None:
    """Steps whose time is a fixed part plus a multiple of the layer terms: the fit finds
    both from the last 1..N layers' steps, and then predicts a step it never timed."""
    profile = DeviceProfile(name="t", peak_macs_per_s=1e8, offset_per_step=1e3)
    net, shape = _deep(), (1, 10, 10)
    order = analyze(net, shape, plans=[]).layer_order

    def truth(plan) -> float:
        est = analyze(net, shape, plans=[plan], profile=profile).steps()[0].estimated_seconds
        return fixed_s + scale * (est - profile.offset_per_step / 1e8)

    timed: list[list[frozenset[str]]] = []

    def fake_steps_seconds(model, input_shape, plans, batch_size=1, min_seconds=1.0, copies=1):
        timed.append([frozenset(p) for p in plans])
        names = {frozenset(resolve_plan(net, [m], order)): m for m in order}
        out = []
        for params in plans:
            layers = [m for key, m in names.items() if key <= frozenset(params)]
            out.append(truth(layers))
        return out

    monkeypatch.setattr(calibration, "model_steps_seconds", fake_steps_seconds)
    anchored = calibration.anchor_profile(profile, net, shape, plan=ALL, anchor="scale")
    (plans,) = timed
    assert len(plans) == 4 and plans[0] == resolve_plan(net, ALL, order)
    assert sorted(len(p) for p in plans) == [2, 4, 6, 8]  # the last 1..4 layers
    # a plan that is no suffix: the first and the last layer
    other = [order[0], order[-1]]
    got = analyze(net, shape, plans=[other], profile=anchored).steps()[0].estimated_seconds
    assert got == pytest.approx(truth(other), rel=1e-4)
    assert anchored.multiplier("forward", "conv") == pytest.approx(scale, rel=1e-4)
    assert anchored.offset_per_step == pytest.approx(fixed_s * 1e8, abs=1.0)
    assert f"layer terms x{scale:.3f}" in anchored.description
    with pytest.raises(ValueError, match="unknown anchor 'both'"):
        calibration.anchor_profile(profile, net, shape, anchor="both")


def test_a_layers_anchored_profile_fits_each_layer_of_the_plan(monkeypatch, tmp_path) -> None:
    """Steps in which each layer's gradients run at their own speed (one conv's input
    gradient faster than timed alone, another's weight gradient slower, the linear
    layer slower, the activation backward slower still): the fit finds them from the
    suffix, single-layer and all-but-one steps and predicts steps it never timed,
    where one common factor cannot."""
    profile = DeviceProfile(name="t", peak_macs_per_s=1e8, offset_per_step=1e3)
    net, shape = _deep(), (1, 10, 10)
    order = analyze(net, shape, plans=[]).layer_order
    fixed_s = 3e-4
    truth_profile = calibration._grouped(
        profile.model_copy(update={"offset_per_step": fixed_s * 1e8}),
        {"other backward": 2.0, "linear weight_grad": 1.5, "linear input_grad": 1.5},
    ).model_copy(
        update={
            "layer_factors": {
                "2": {"input_grad": 0.5, "weight_grad": 1.2, "update": 1.2},
                "4": {"input_grad": 0.8, "weight_grad": 1.9, "update": 1.9},
            }
        }
    )

    def truth(plan) -> float:
        return analyze(net, shape, plans=[plan], profile=truth_profile).steps()[0].estimated_seconds

    timed: list[list[frozenset[str]]] = []

    def fake_steps_seconds(model, input_shape, plans, batch_size=1, min_seconds=1.0, copies=1):
        timed.append([frozenset(p) for p in plans])
        names = {frozenset(resolve_plan(net, [m], order)): m for m in order}
        return [truth([m for key, m in names.items() if key <= frozenset(ps)]) for ps in plans]

    monkeypatch.setattr(calibration, "model_steps_seconds", fake_steps_seconds)
    fitted = calibration.anchor_profile(profile, net, shape, plan=ALL)
    scale = calibration.anchor_profile(profile, net, shape, plan=ALL, anchor="scale")
    plans = timed[0]
    assert len(plans) == len(set(plans)) == 10  # 4 suffixes, 3 more singles, 3 all-but-one
    assert frozenset({"0.weight", "0.bias"}) in plans  # the first layer alone
    assert "fitted to 10 measured steps" in fitted.description
    assert set(fitted.layer_factors) == set(order)
    for other in ([order[0], order[-1]], [order[1]], order[1:3], [order[0], order[2]]):
        want = truth(other)
        got = analyze(net, shape, plans=[other], profile=fitted).steps()[0].estimated_seconds
        common = analyze(net, shape, plans=[other], profile=scale).steps()[0].estimated_seconds
        assert got == pytest.approx(want, rel=0.01)
        assert abs(common - want) > 3 * abs(got - want)
    assert fitted.layer_factor("2", "input_grad") * fitted.multiplier(
        "input_grad", "conv"
    ) == pytest.approx(0.5, rel=0.05)
    # the profile is data: it round-trips through its file
    assert load_profile(fitted.save(tmp_path / "p.yaml")) == fitted


def test_steps_are_timed_in_turn(single_thread: None) -> None:
    net = _deep()
    last, both = {"8.weight", "8.bias"}, {"0.weight", "0.bias", "8.weight", "8.bias"}
    fast, slow = calibration.model_steps_seconds(net, (1, 10, 10), [last, both], min_seconds=0.1)
    assert 0 < fast < slow


def test_group_factors_are_fitted_to_the_savings_and_match_the_plan_step() -> None:
    """What each step saves fixes the factors (held only weakly to the common one); the
    offset then makes the plan's own step (the first) exact, noise or not, so a
    schedule's relative saving comes out as measured."""
    groups = {
        "forward": [1.0, 1.0, 1.0, 1.0],
        "other backward": [1.0, 0.8, 0.3, 0.0],
        "a weight_grad": [2.0, 0.0, 2.0, 0.0],
        "b weight_grad": [3.0, 3.0, 0.0, 0.0],
    }
    truth = {"other backward": 2.0, "a weight_grad": 1.5, "b weight_grad": 0.5}
    fixed = 0.2 + 1.2 * 1.0  # offset plus the forward at the common factor

    def steps(noise: float) -> list[float]:
        out = [fixed + sum(truth[g] * groups[g][i] for g in truth) for i in range(4)]
        out[1] *= 1 + noise
        return out

    factors, offset = calibration._fit_groups(groups, steps(0.0), common=1.2)
    for group, value in truth.items():
        assert factors[group] == pytest.approx(value, rel=0.1)
    assert factors["forward"] == 1.2 and offset == pytest.approx(0.2, rel=0.1)
    for noise in (0.0, 0.02):
        measured = steps(noise)
        factors, offset = calibration._fit_groups(groups, measured, common=1.2)
        first = offset + sum(factors[g] * groups[g][0] for g in groups)
        assert first == pytest.approx(measured[0], rel=1e-9)
    # nothing but the forward to fit: every factor keeps the common one
    only, rest = calibration._fit_groups({"forward": [2.0, 2.0]}, [3.0, 3.1], common=1.0)
    assert only == {"common": 1.0, "forward": 1.0} and rest == pytest.approx(1.0)


def test_copies_are_timed_in_turn_and_pooled(monkeypatch) -> None:
    """Each copy is a fresh model (its own memory layout); a plan's time is the median
    over every copy's steps, so one copy whose layout slows a plan does not decide it."""
    per_copy = iter([[[1.0, 1.0, 1.0], [5.0]], [[2.0], [6.0]], [[9.0], [7.0]]])
    seen = []

    def fake_plan_steps(model, input_shape, plans, batch_size, min_seconds, seed=0):
        seen.append(min_seconds)
        return next(per_copy)

    monkeypatch.setattr(calibration, "_plan_steps", fake_plan_steps)
    got = calibration.model_steps_seconds(_net(), (1, 8, 8), [{"a"}, {"b"}], 1, 0.5, copies=3)
    assert got == [1.0, 6.0]  # medians of [1, 1, 1, 2, 9] and [5, 6, 7]
    assert seen == [0.5, 0.5, 0.5]


def test_a_model_step_is_timed_on_a_copy(single_thread: None) -> None:
    net = _net()
    net[0].requires_grad_(False)
    before = [p.detach().clone() for p in net.parameters()]
    seconds = calibration.model_step_seconds(net, (1, 8, 8), {"4.weight"}, min_seconds=0.02)
    assert seconds > 0
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters(), strict=True))
    assert [p.requires_grad for p in net.parameters()] == [False, False, True, True]
    with pytest.raises(ValueError, match="updates no parameters"):
        calibration.model_step_seconds(net, (1, 8, 8), set(), min_seconds=0.02)


def test_rounds_are_fitted_by_their_median() -> None:
    clean = _synthetic(TRUTH)
    skewed = [Measurement(m.kind, m.term, m.macs, 3 * m.seconds, m.params) for m in clean]
    slower = [Measurement(m.kind, m.term, m.macs, 1.01 * m.seconds, m.params) for m in clean]
    merged = calibration.median_measurements([clean, skewed, slower])
    assert [m.seconds for m in merged] == [1.01 * m.seconds for m in clean]
    assert fit_profile(merged).multiplier("input_grad", "conv") == pytest.approx(1.5, rel=1e-3)
    with pytest.raises(ValueError, match="same configurations"):
        calibration.median_measurements([clean, clean[1:]])
    with pytest.raises(ValueError, match="rounds must be >= 1"):
        calibrate(quick=True, rounds=0)


class _RootAttention(nn.Module):
    """A root parameter, a depthwise conv, a concat, LayerNorm, attention, functional GELU."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1))
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.norm = nn.LayerNorm(16)
        self.attn = nn.MultiheadAttention(16, 2, batch_first=True)
        self.fc = nn.Linear(16 * 8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.gelu(self.stem(x)) * self.scale
        x = torch.cat([self.dw(x), x], 1)[:, :8]
        x = self.norm(nn.functional.adaptive_avg_pool2d(x, 4).flatten(2))
        x, _ = self.attn(x, x, x)
        return self.fc(x.flatten(1))


def test_anchoring_a_model_beyond_the_zoo(monkeypatch) -> None:
    timed: list[list[frozenset[str]]] = []

    def fake_steps_seconds(model, input_shape, plans, batch_size=1, min_seconds=1.0, copies=1):
        timed.append([frozenset(p) for p in plans])
        return [1e-3 * (1 + len(p) / 10) for p in plans]

    monkeypatch.setattr(calibration, "model_steps_seconds", fake_steps_seconds)
    profile = DeviceProfile(name="t", peak_macs_per_s=1e9, offset_per_step=1e3)
    net, shape = _RootAttention(), (3, 8, 8)
    calibration.anchor_profile(profile, net, shape, plan=ALL)
    everything = frozenset(n for n, _ in net.named_parameters())
    first, *suffixes = timed[-1]
    assert first == everything and suffixes  # the root weight and LayerNorm train in it
    assert all("scale" not in p and p < everything for p in suffixes)
    assert frozenset({"fc.weight", "fc.bias"}) in suffixes
    # one conv/linear layer in the plan: offset anchoring on the plan's own step
    anchored = calibration.anchor_profile(profile, net, shape, plan=["(model)", "fc"])
    assert timed[-1] == [frozenset({"scale", "fc.weight", "fc.bias"})]
    assert "anchored on a measured _RootAttention 3x8x8 (model),fc step" in anchored.description
