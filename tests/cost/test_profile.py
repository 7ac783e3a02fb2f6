"""Device profiles: the built-ins, the calibrated estimate of a step, files and errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from torch import nn

from edgetrain.cost import ALL, DeviceProfile, analyze, list_profiles, load_profile
from edgetrain.errors import ConfigError


def _net() -> nn.Sequential:
    # conv 1->2 (3x3, p=1) on 4x4, ReLU, linear 32->3
    return nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(32, 3))


def _error(profile: str | Path) -> str:
    with pytest.raises(ConfigError) as info:
        load_profile(profile)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_builtins_are_listed() -> None:
    assert {"reference", "cortex-m4-fp32"} <= set(list_profiles())


def test_reference_is_all_ones_without_offset() -> None:
    p = load_profile("reference")
    assert p.offset_per_step == 0 and p.e_mac_pj == 3.2 and p.bytes_per_element == 4
    for term in ("forward", "input_grad", "weight_grad", "update"):
        for kind in ("conv", "linear", "activation", "pool", "batchnorm", "add"):
            assert p.multiplier(term, kind) == 1.0 and p.call_offset(term, kind) == 0.0


def test_cortex_m4_multipliers() -> None:
    p = load_profile("cortex-m4-fp32")
    assert p.offset_per_step == 375 and p.peak_macs_per_s == 72e6
    assert p.multiplier("input_grad", "conv") == p.multiplier("weight_grad", "linear") == 1.3
    assert p.multiplier("forward", "activation") == 1.5
    assert p.multiplier("forward", "conv") == p.multiplier("update", "conv") == 1.0


def test_reference_estimate_is_the_raw_count() -> None:
    report = analyze(_net(), (1, 4, 4), plans=[ALL])
    step = report.steps()[0]
    assert step.estimated_ops == step.step_macs == 874
    assert step.estimated_seconds is None  # no peak MAC/s in the reference profile


def test_cortex_m4_estimate_of_a_step_by_hand() -> None:
    report = analyze(_net(), (1, 4, 4), plans=[ALL], profile="cortex-m4-fp32")
    step = report.steps()[0]
    # conv: T = (3*4 - 2)^2 = 100; 1*2*100 = 200 MACs + 32 bias adds; 20 params
    # relu: 32; linear: 32*3 = 96 + 3 bias adds; 99 params
    assert (step.forward_macs, step.input_grad_macs) == (232 + 32 + 99, 96)
    assert (step.weight_grad_macs, step.update_macs) == (200 + 96, 20 + 99)
    assert step.step_macs == 874
    forward = 232 + 1.5 * 32 + 99  # ReLU x1.5
    gradients = 1.3 * 96 + 1.3 * (200 + 96)  # input and weight gradients x1.3
    expected = 375 + forward + gradients + 119  # + offset per step + updates x1
    assert expected == pytest.approx(1382.6)
    assert step.estimated_ops == pytest.approx(expected)
    assert step.estimated_seconds == pytest.approx(expected / 72e6)
    # inference: no per-step offset, forward only
    assert report.total().estimated_ops == pytest.approx(forward)


def test_per_call_offsets_are_charged_per_op_that_runs() -> None:
    profile = DeviceProfile(
        name="calls",
        multipliers={"forward": {"conv": 2.0}},
        per_call={"forward": {"default": 10.0}, "input_grad": {"activation": 7.0}},
    )
    step = analyze(_net(), (1, 4, 4), plans=[ALL], profile=profile).steps()[0]
    # forward: conv 232*2, relu 32, linear 99, + 10 per each of the 3 ops;
    # the relu's input gradient (0 MACs) runs: + 7; gradients and updates x1
    assert step.estimated_ops == pytest.approx(2 * 232 + 32 + 99 + 30 + 7 + 96 + 296 + 119)


@pytest.mark.parametrize("suffix", ["yaml", "json"])
def test_a_profile_file_round_trips(tmp_path: Path, suffix: str) -> None:
    profile = DeviceProfile(
        name="board",
        description="a test board",
        bytes_per_element=2,
        e_mac_pj=1.5,
        e_byte_pj=0.25,
        peak_macs_per_s=1e9,
        offset_per_step=12.5,
        multipliers={"forward": {"default": 1.0, "conv": 2.0}, "update": {"linear": 3.0}},
        per_call={"input_grad": {"pool": 4.0}},
    )
    path = profile.save(tmp_path / f"board.{suffix}")
    if suffix == "json":
        assert json.loads(path.read_text())["multipliers"]["forward"]["conv"] == 2.0
    assert load_profile(path) == profile
    assert load_profile(str(path)) == profile
    assert load_profile(profile) is profile


def test_a_profile_file_drives_the_estimate(tmp_path: Path) -> None:
    path = DeviceProfile(name="x", offset_per_step=100).save(tmp_path / "x.yaml")
    step = analyze(_net(), (1, 4, 4), plans=[ALL], profile=path).steps()[0]
    assert step.estimated_ops == 874 + 100


def test_an_unknown_name_lists_the_builtins() -> None:
    message = _error("cortex-m5")
    assert "'cortex-m5'" in message and "cortex-m4-fp32, reference" in message


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    assert f"'{missing}'" in _error(missing)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("name: x\nmultipliers:\n  backward: {default: 1.0}\n", ["multipliers", "'backward'"]),
        ("name: x\nper_call:\n  fwd: {conv: 1.0}\n", ["per_call", "'fwd'", "input_grad"]),
        ("name: x\ne_mac: 3.2\n", ["unknown key 'e_mac'", "valid keys:", "e_mac_pj"]),
        ("name: x\nbytes_per_element: 0\n", ["bytes_per_element", "greater than or equal to 1"]),
        ("description: no name\n", ["missing required key 'name'"]),
    ],
)
def test_invalid_profiles_give_one_line_errors(
    tmp_path: Path, text: str, expected: list[str]
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    message = _error(path)
    assert f"profile '{path}'" in message
    for part in expected:
        assert part in message, (part, message)


def test_malformed_yaml_gives_a_one_line_error(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("name: x\nmultipliers: [1,\n")
    assert "invalid YAML at line 3, column 1" in _error(path)


def test_per_parameter_costs_are_charged_per_layer_and_term_that_runs() -> None:
    profile = DeviceProfile(
        name="memory-bound",
        per_param={"forward": {"linear": 2.0}, "weight_grad": {"conv": 0.5}},
    )
    report = analyze(_net(), (1, 4, 4), plans=[ALL], profile=profile)
    step = report.steps()[0]
    conv, linear = 2 * 9 + 2, 32 * 3 + 3  # parameters of the two layers
    assert step.estimated_ops == pytest.approx(874 + 2.0 * linear + 0.5 * conv)
    # inference: the forward's share only
    assert report.total().estimated_ops == pytest.approx(232 + 32 + 99 + 2.0 * linear)
