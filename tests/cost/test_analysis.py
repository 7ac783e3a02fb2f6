"""``analyze``: the spec's worked check, the plan rules, meta-device tracing, unsupported
ops, energy and the exports of a :class:`CostReport`."""

from __future__ import annotations

import csv
import doctest
import importlib
import io
import json
import sys
from collections.abc import Callable

import pytest
import torch
from torch import nn

from edgetrain.cost import ALL, CostReport, analyze
from edgetrain.errors import EdgetrainError, MissingDependencyError
from edgetrain.models import create

VGG_LAYERS = ["conv1", "conv2", "conv3", "conv4", "conv5", "conv6", "fc"]


@pytest.fixture(scope="module")
def vgg() -> nn.Module:
    return create("vgg_small")


@pytest.fixture(scope="module")
def vgg_report(vgg: nn.Module) -> CostReport:
    return analyze(vgg, (3, 32, 32), plans=[["conv6", "fc"], ["conv5"], "last:2", "last:3"])


def _one_line_error(fn: Callable[..., object], *args: object, **kwargs: object) -> str:
    with pytest.raises(EdgetrainError) as info:
        fn(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


# ------------------------------------------------------------------ the worked check
def test_vgg_small_params_and_torchinfo_mult_adds(vgg_report: CostReport) -> None:
    # params: 448 + 2,320 + 4,640 + 9,248 + 18,496 + 36,928 + 10,250
    assert vgg_report.params == 82_330 == vgg_report.trainable_params
    # params x output positions: 448*1024 + 2320*1024 + 4640*256 + 9248*256 + 18496*64
    # + 36928*64 + 10250*1
    assert vgg_report.torchinfo_mult_adds == 9_947_146
    assert vgg_report.layer_order == VGG_LAYERS


def test_vgg_small_border_aware_forward(vgg_report: CostReport) -> None:
    # T_k: 94^2 = 8836 at 32x32, 46^2 = 2116 at 16x16, 22^2 = 484 at 8x8; plus bias adds
    convs = [
        3 * 16 * 8836 + 16 * 1024,
        16 * 16 * 8836 + 16 * 1024,
        16 * 32 * 2116 + 32 * 256,
        32 * 32 * 2116 + 32 * 256,
        32 * 64 * 484 + 64 * 64,
        64 * 64 * 484 + 64 * 64,
    ]
    relus = 2 * 16384 + 2 * 8192 + 2 * 4096
    pools = 16384 + 8192 + 4096
    fc = 1024 * 10 + 10
    assert sum(convs) + relus + pools + fc == 9_063_626
    assert vgg_report.total().forward_macs == 9_063_626


def test_vgg_small_training_conv6_and_fc(vgg_report: CostReport) -> None:
    step = vgg_report.steps()[0]
    fc = 10_240 + 10_240 + 10_250  # input grad + weight grad + update (1024*10 + 10)
    pool3 = 64 * 8 * 8  # c*i backward
    relu6 = 0
    conv6 = 64 * 64 * 22 * 22 + 36_928  # weight grad 1,982,464 + update; no input grad
    assert fc + pool3 + relu6 + conv6 == 2_054_218
    assert step.backward_macs == 2_054_218
    assert step.input_grad_macs == 10_240 + 4096
    assert step.weight_grad_macs == 10_240 + 1_982_464
    assert step.update_macs == 10_250 + 36_928
    assert step.forward_macs == 9_063_626
    rows = {r.name: r for r in vgg_report.by_layer(0)}
    assert (rows["conv6"].input_grad, rows["conv6"].weight_grad) == (0, 1_982_464)
    assert rows["relu6"].input_grad == 0 and rows["pool3"].input_grad == 4096


# ----------------------------------------------------------------------- plan rules
def test_layers_below_the_lowest_trained_one_cost_forward_only(vgg_report: CostReport) -> None:
    rows = vgg_report.by_layer(0)
    below = rows[: [r.name for r in rows].index("conv6")]
    assert [r.name for r in below][-1] == "relu5"
    for r in below:
        assert r.forward > 0
        assert (r.input_grad, r.weight_grad, r.update) == (0, 0, 0), r.name
        assert (r.stored_activations, r.gradient_buffers) == (0, 0), r.name


def test_frozen_layers_above_the_lowest_trained_one_pass_gradients(
    vgg_report: CostReport,
) -> None:
    rows = {r.name: r for r in vgg_report.by_layer(1)}  # plan ["conv5"]
    assert (rows["conv5"].input_grad, rows["conv5"].weight_grad) == (0, 32 * 64 * 484)
    assert rows["conv5"].update == 18_496
    # conv6 is frozen but its input gradient is needed by conv5: 64*64*484
    assert (rows["conv6"].input_grad, rows["conv6"].weight_grad, rows["conv6"].update) == (
        1_982_464,
        0,
        0,
    )
    assert (rows["fc"].input_grad, rows["fc"].weight_grad, rows["fc"].update) == (10_240, 0, 0)
    step = vgg_report.steps()[1]
    # conv5 w-grad + update, relu5 0, conv6 input grad, relu6 0, pool3 4096, fc input grad
    assert step.backward_macs == 991_232 + 18_496 + 1_982_464 + 4096 + 10_240


def test_last_n_picks_the_last_conv_and_linear_layers(vgg_report: CostReport) -> None:
    steps = vgg_report.steps()
    assert steps[2].plan == "last:2" and steps[0].plan == "conv6,fc"
    assert steps[2].backward_macs == steps[0].backward_macs == 2_054_218
    # last:3 adds conv5: its weight grad and update, and conv6's input grad
    assert steps[3].backward_macs == 2_054_218 + 991_232 + 18_496 + 1_982_464


def test_all_is_every_parameter_that_requires_grad() -> None:
    model = create("vgg_small")
    model.conv1.requires_grad_(False)
    others = VGG_LAYERS[1:]
    report = analyze(model, (3, 32, 32), plans=[ALL, others])
    everything, explicit = report.steps()
    assert report.trainable_params == 82_330 - 448
    assert everything.update_macs == 82_330 - 448 == explicit.update_macs
    assert everything.to_dict() | {"plan": "x"} == explicit.to_dict() | {"plan": "x"}
    rows = {r.name: r for r in report.by_layer(0)}
    assert (rows["conv1"].weight_grad, rows["conv1"].update) == (0, 0)
    assert rows["conv2"].input_grad == 0  # conv2 is now the lowest trained layer


def test_a_plan_can_be_a_comma_list_or_patterns(vgg: nn.Module) -> None:
    report = analyze(vgg, (3, 32, 32), plans=["conv6,fc", ["re:conv[6]", "fc"]])
    assert [s.backward_macs for s in report.steps()] == [2_054_218, 2_054_218]


def test_training_a_residual_conv2_does_not_reach_the_shortcut_path() -> None:
    net = create("resnet_cifar", stages=1, blocks=[1], widths=[16])
    report = analyze(net, (3, 32, 32), plans=[["layer1.0.conv2"]])
    rows = report.by_layer()
    names = [r.name for r in rows]
    conv2 = names.index("layer1.0.conv2")
    # the stem output feeds both the block's conv1 and the identity shortcut: nothing below
    # conv2 computes a backward term
    for r in rows[:conv2]:
        assert (r.input_grad, r.weight_grad, r.update) == (0, 0, 0), r.name
    by_name = dict(zip(names, rows, strict=True))
    # conv2 16->16 at 32x32: weight grad 16*16*94^2, update 16*16*9, no input grad
    assert (by_name["layer1.0.conv2"].input_grad, by_name["layer1.0.conv2"].weight_grad) == (
        0,
        2_262_016,
    )
    # bn2 input grad 2*16*1024; add 0; relu 0; global pool 16*1024; fc input grad 16*10
    assert report.steps()[0].backward_macs == 2_262_016 + 2304 + 32_768 + 16_384 + 160


def test_the_shortcut_conv_after_a_trained_conv2_computes_no_input_gradient() -> None:
    # In resnet20's layer2.0 the 1x1 shortcut conv runs after conv2 in forward order but
    # reads the block input, which does not depend on conv2.
    report = analyze(create("resnet20"), (3, 32, 32), plans=[["layer2.0.conv2"]])
    rows = {r.name: r for r in report.by_layer()}
    for name in ("layer2.0.shortcut.0", "layer2.0.shortcut.1", "layer2.0.conv1"):
        assert (rows[name].input_grad, rows[name].weight_grad) == (0, 0), name
    assert rows["layer2.0.bn2"].input_grad == 2 * 32 * 16 * 16
    assert rows["layer2.1.conv1"].input_grad == 32 * 32 * 46 * 46


def test_an_unknown_layer_in_a_plan_is_named_with_the_layers(vgg: nn.Module) -> None:
    message = _one_line_error(analyze, vgg, (3, 32, 32), plans=[["conv9"]])
    assert "'conv9'" in message
    assert "conv1, conv2, conv3, conv4, conv5, conv6, fc" in message


def test_first_n_picks_the_first_layers(vgg: nn.Module) -> None:
    first, named = analyze(vgg, (3, 32, 32), plans=["first:2", ["conv1", "conv2"]]).steps()
    assert first.update_macs == named.update_macs and first.step_macs == named.step_macs


class _RootParameters(nn.Module):
    """A layer whose weights sit on the root module itself, then a linear."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(8, 4))
        self.bias = nn.Parameter(torch.zeros(8))
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(nn.functional.linear(x, self.weight, self.bias)))


def test_parameters_on_the_root_module_are_the_layer_named_model() -> None:
    report = analyze(_RootParameters(), (4,), plans=["last:2", "first:1", ["(model)"], "last:1"])
    assert report.layer_order == ["(model)", "fc"]
    both, first, root, last = report.steps()
    assert both.update_macs == 8 * 4 + 8 + 8 * 3 + 3
    assert first.update_macs == root.update_macs == 8 * 4 + 8
    assert first.weight_grad_macs == 8 * 4 and first.input_grad_macs == 8 * 3
    assert last.update_macs == 8 * 3 + 3


@pytest.mark.parametrize(
    "plan", ["last:0", "last:8", "last:two", "last:-1", "first:0", "first:9", "first:x"]
)
def test_a_bad_last_n_is_refused(vgg: nn.Module, plan: str) -> None:
    message = _one_line_error(analyze, vgg, (3, 32, 32), plans=[plan])
    assert f"'{plan}'" in message and "1..7" in message


def test_an_empty_plan_and_bad_arguments_are_refused(vgg: nn.Module) -> None:
    assert "empty plan" in _one_line_error(analyze, vgg, (3, 32, 32), plans=[[]])
    message = _one_line_error(analyze, vgg, (3, 32, 32), optimizer="rmsprop")
    assert "'rmsprop'" in message and "sgd, momentum, adam" in message
    assert "batch size" in _one_line_error(analyze, vgg, (3, 32, 32), batch_size=0)


# ---------------------------------------------------------------------------- energy
def test_energy_is_macs_times_e_mac() -> None:
    net = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    report = analyze(net, (4,), plans=[["2"]], batch_size=4)
    inference, step = report.total(), report.steps()[0]
    # forward per sample: 12 + 3, 3, 6 + 2 = 26; batch of 4 -> 104 MACs * 3.2 pJ
    assert inference.forward_macs == 104
    assert inference.energy_nj == pytest.approx(104 * 3.2 / 1000)
    # training the last linear: + weight grad 4*6 + update 8 = 136 MACs per step
    assert step.step_macs == 136
    assert step.energy_nj == pytest.approx(136 * 3.2 / 1000)
    assert step.energy_nj_per_sample == pytest.approx(136 * 3.2 / 1000 / 4)
    # 10 samples at batch 4: 3 steps
    assert step.energy_nj_per_epoch(10) == pytest.approx(3 * 136 * 3.2 / 1000)


def test_energy_per_byte_adds_the_bytes_moved() -> None:
    from edgetrain.cost import DeviceProfile

    net = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    profile = DeviceProfile(name="bytes", e_mac_pj=2.0, e_byte_pj=0.5)
    step = analyze(net, (4,), plans=[ALL], profile=profile, memory="layerwise").steps()[0]
    # 73 MACs (see test_memory: 26 forward + 6 + 18 + 23) and 248 bytes (naive)
    assert (step.step_macs, step.memory_bytes) == (73, 248)
    assert step.energy_nj == pytest.approx((73 * 2.0 + 248 * 0.5) / 1000)


# ------------------------------------------------------------------ meta and strict
def test_a_meta_resnet56_is_analysed_without_memory() -> None:
    model = create("resnet56", device="meta")
    report = analyze(model, (3, 32, 32))
    assert all(p.device.type == "meta" for p in model.parameters())
    # stem 432 + 32; stage 1: 9 * (2*2304 + 64) = 42,048; stage 2: 4608 + 9216 + 128 + 512
    # + 64 + 8 * (2*9216 + 128) = 163,008; stage 3: 18,432 + 36,864 + 256 + 2048 + 128
    # + 8 * (2*36,864 + 256) = 649,600; fc 650
    assert report.params == sum(p.numel() for p in model.parameters()) == 855_770
    # stem conv, 54 block convs, 2 shortcut convs, fc
    assert len(report.layer_order) == 1 + 3 * 9 * 2 + 2 + 1


def test_a_meta_model_costs_what_the_real_one_costs() -> None:
    real = analyze(create("resnet20"), (3, 32, 32), plans=["last:3"], optimizer="adam")
    meta = analyze(
        create("resnet20", device="meta"), (3, 32, 32), plans=["last:3"], optimizer="adam"
    )
    assert meta.to_dict() == real.to_dict()


@pytest.mark.parametrize("training", [True, False])
def test_a_real_model_is_left_untouched(
    make_tiny_net: Callable[..., nn.Module], training: bool
) -> None:
    model = make_tiny_net()
    model.train(training)
    before = {k: (v.data_ptr(), v.clone()) for k, v in model.state_dict().items()}
    analyze(model, (1, 8, 8), plans=[ALL])
    assert all(m.training == training for m in model.modules())
    after = model.state_dict()
    for k, (ptr, value) in before.items():
        assert after[k].data_ptr() == ptr and torch.equal(after[k], value), k
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


class _Spectral(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cummax(self.fc(x), -1).values + torch.fft.rfft(x, n=14).abs()


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.mix = _Spectral()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mix(x)


def test_unsupported_ops_are_listed_and_strict_mode_raises() -> None:
    report = analyze(_Net(), (8,))
    ops = [op for op, _ in report.unsupported]
    assert "cummax" in ops and "_fft_r2c" in ops
    assert ("cummax", "mix") in report.unsupported
    assert (
        "Unsupported ops (not counted):" in report.summary() and "cummax in mix" in report.summary()
    )
    # the supported part is still counted: linear 64 + 8, the abs 8, the add 8
    assert report.total().forward_macs == 72 + 8 + 8
    message = _one_line_error(analyze, _Net(), (8,), strict=True)
    assert "cummax (in mix)" in message and "_fft_r2c (in mix)" in message


def test_a_supported_model_lists_nothing(vgg_report: CostReport) -> None:
    assert vgg_report.unsupported == []
    assert "Unsupported" not in vgg_report.summary()


# ---------------------------------------------------------------------------- exports
def test_json_export_has_the_documented_keys(vgg_report: CostReport) -> None:
    data = json.loads(vgg_report.to_json())
    assert set(data) >= {
        "model",
        "input_shape",
        "batch_size",
        "profile",
        "optimizer",
        "params",
        "trainable_params",
        "torchinfo_mult_adds",
        "unsupported",
        "inference",
        "conventional",
        "steps",
        "cycle",
        "layers",
    }
    assert data["input_shape"] == [3, 32, 32] and data["profile"] == "reference"
    assert data["params"] == 82_330 and data["torchinfo_mult_adds"] == 9_947_146
    assert [s["backward_macs"] for s in data["steps"]][0] == 2_054_218
    assert data["cycle"]["steps"] == 4
    layer = data["layers"][0]
    for key in (
        "name",
        "module_type",
        "in_shape",
        "out_shape",
        "params",
        "forward",
        "input_grad",
        "weight_grad",
        "update",
        "stored_activations",
        "gradient_buffers",
    ):
        assert key in layer, key
    assert layer["name"] == "conv1" and layer["in_shape"] == [1, 3, 32, 32]


def test_csv_export_has_a_header_and_one_row_per_layer(vgg_report: CostReport) -> None:
    rows = list(csv.DictReader(io.StringIO(vgg_report.to_csv())))
    # 6 convs + 6 ReLUs + 3 pools + fc (flatten is a free view)
    assert len(rows) == len(vgg_report.by_layer()) == 16
    assert rows[0]["name"] == "conv1" and rows[0]["in_shape"] == "1x3x32x32"
    assert rows[-1]["name"] == "fc" and rows[-1]["update"] == "10250"


def test_summary_mentions_params_and_mult_adds(vgg_report: CostReport) -> None:
    text = vgg_report.summary()
    assert "Total params: 82,330" in text
    assert "Total mult-adds (torchinfo count): 9,947,146" in text
    assert "Forward MACs (border-aware): 9,063,626" in text
    # weights: 82,330 * 4 bytes = 0.31 MB
    assert "Params size (MB): 0.31" in text


def test_to_frame_returns_a_dataframe_when_pandas_is_installed(vgg_report: CostReport) -> None:
    pd = pytest.importorskip("pandas")
    frame = vgg_report.to_frame()
    assert isinstance(frame, pd.DataFrame) and len(frame) == 16
    assert frame["weight_grad"].sum() == 10_240 + 1_982_464


def test_to_frame_without_pandas_names_the_extra(
    vgg_report: CostReport, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "pandas", None)  # makes `import pandas` fail
    with pytest.raises(MissingDependencyError, match=r"edgetrain\[analysis\]"):
        vgg_report.to_frame()


# -------------------------------------------------------------------- docstring examples
@pytest.mark.parametrize(
    "module",
    [
        "edgetrain.cost",
        "edgetrain.cost.taps",
        "edgetrain.cost.plans",
        "edgetrain.cost.analysis",
        "edgetrain.cost.profile",
    ],
)
def test_docstring_examples_hold(module: str) -> None:
    failed, attempted = doctest.testmod(importlib.import_module(module))
    assert attempted > 0 and failed == 0
