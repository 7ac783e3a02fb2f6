"""Tests of the model zoo: the registry contract, parameter counts, layer order, freezing."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from edgetrain import models
from edgetrain.errors import ConfigError, EdgetrainError, UnknownNameError
from edgetrain.models import WEIGHT_LAYER_TYPES, freeze, parameter_layers, select_modules

ALL_MODELS = models.list_models()

pytestmark = pytest.mark.usefixtures("single_thread")


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _num_classes(model: nn.Module) -> int:
    return model.parameter_layers()[-1][1].out_features


def test_registry_holds_the_zoo_of_the_spec() -> None:
    expected = {"vgg_small", "vgg11_b", "kws_cnn", "fcn1d", "small_cnn", "resnet_cifar"}
    assert expected | {"resnet8", "resnet20", "resnet32", "resnet56"} <= set(ALL_MODELS)
    assert models.list_models("resnet*") == [
        "resnet20",
        "resnet32",
        "resnet56",
        "resnet8",
        "resnet_cifar",
    ]


# ------------------------------------------------------------------ registry contract
@pytest.mark.parametrize("name", ALL_MODELS)
def test_builds_with_defaults_and_maps_a_batch_to_class_scores(name: str) -> None:
    model = models.create(name).eval()
    assert model.input_shape and all(isinstance(d, int) and d > 0 for d in model.input_shape)
    with torch.no_grad():
        out = model(torch.randn(2, *model.input_shape))
    assert out.shape == (2, _num_classes(model))
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", ALL_MODELS)
def test_builds_on_the_meta_device_without_storage(name: str) -> None:
    model = models.create(name, device="meta")
    tensors = [*model.parameters(), *model.buffers()]
    assert tensors and all(t.is_meta for t in tensors)
    assert _params(model) == _params(models.create(name))
    out = model(torch.empty(2, *model.input_shape, device="meta"))
    assert out.is_meta and out.shape == (2, _num_classes(model))


@pytest.mark.parametrize("name", ALL_MODELS)
def test_parameter_layers_are_all_weight_layers_in_call_order_output_last(name: str) -> None:
    model = models.create(name).eval()
    layers = model.parameter_layers()
    registered = {n for n, m in model.named_modules() if isinstance(m, WEIGHT_LAYER_TYPES)}
    assert {n for n, _ in layers} == registered and len(layers) == len(registered)
    assert model.feature_layers() == [n for n, _ in layers]

    # Independent of the meta-device tracing: hook a real forward and record the calls.
    called: list[str] = []
    outputs: dict[str, torch.Tensor] = {}
    handles = []
    for n, m in layers:
        handles.append(m.register_forward_hook(lambda _m, _i, o, n=n: called.append(n)))
        handles.append(m.register_forward_hook(lambda _m, _i, o, n=n: outputs.update({n: o})))
    with torch.no_grad():
        out = model(torch.randn(2, *model.input_shape))
    for h in handles:
        h.remove()
    # Attention's out_proj is used by nn.MultiheadAttention's functional forward, never
    # called as a module; every other layer is called, in the listed order.
    assert called == [n for n, _ in layers if not n.endswith("attn.out_proj")]
    # "Output layer last": the last listed layer computes the model's output.
    last_name, last = layers[-1]
    assert isinstance(last, nn.Linear) and torch.equal(outputs[last_name], out)


def test_parameter_layers_of_a_plain_module_fall_back_to_registration_order() -> None:
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2, 3))
    assert [n for n, _ in parameter_layers(net)] == ["0", "3"]
    assert [n for n, _ in parameter_layers(net, (1, 3, 3))] == ["0", "3"]


def test_parameter_layers_follow_the_forward_not_the_registration() -> None:
    class Swapped(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.head = nn.Linear(4, 2)
            self.body = nn.Linear(3, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.body(x))

    net = Swapped()
    assert [n for n, _ in parameter_layers(net)] == ["head", "body"]
    assert [n for n, _ in parameter_layers(net, (3,))] == ["body", "head"]
    assert all(not p.is_meta for p in net.parameters())  # tracing leaves the model alone


# --------------------------------------------------------------------- spec numbers
@pytest.mark.parametrize(
    ("name", "options", "expected"),
    [
        ("vgg_small", {"in_channels": 3, "num_classes": 10}, 82_330),
        ("kws_cnn", {"num_classes": 8}, 1_625_608),
        (
            "resnet_cifar",
            {"stages": 3, "blocks": [5, 5, 5], "widths": [16, 32, 64], "shortcut": "conv3x3"},
            487_386,
        ),
        (
            "resnet_cifar",
            {"stages": 1, "blocks": [1], "widths": [16], "shortcut": "conv3x3"},
            5_306,
        ),
        # ResNet-32 with the parameter-free "option A" shortcuts of He et al.: the classic 0.46M.
        (
            "resnet_cifar",
            {"stages": 3, "blocks": [5, 5, 5], "widths": [16, 32, 64], "shortcut": "pad"},
            464_154,
        ),
    ],
)
def test_parameter_counts_from_the_spec(name: str, options: dict, expected: int) -> None:
    assert _params(models.create(name, **options)) == expected


def test_small_cnn_has_about_550k_parameters() -> None:
    model = models.create("small_cnn")
    assert model.input_shape == (1, 32, 32)
    assert abs(_params(model) - 550_000) / 550_000 < 0.01
    assert sum(isinstance(m, nn.Conv2d) for m in model.modules()) == 6
    assert sum(isinstance(m, nn.Linear) for m in model.modules()) == 2


def test_fcn1d_is_microcontroller_sized() -> None:
    model = models.create("fcn1d")
    assert 800 <= _params(model) <= 1_500
    assert all(isinstance(m, nn.Conv1d | nn.Linear) for _, m in model.parameter_layers())


def test_kws_cnn_matches_the_tutorial_layout() -> None:
    model = models.create("kws_cnn")
    assert model.feature_layers() == ["conv1", "conv2", "fc1", "fc"]
    assert model.conv1.padding == (0, 0) and model.fc1.out_features == 128
    assert [m.p for m in model.modules() if isinstance(m, nn.Dropout)] == [0.25, 0.5]


def test_resnet_presets_use_1x1_shortcuts() -> None:
    r20 = models.create("resnet20")
    assert _params(r20) == 272_474
    assert r20.layer2[0].shortcut[0].kernel_size == (1, 1)
    assert [len(models.create(f"resnet{d}").layer1) for d in (8, 20, 32, 56)] == [1, 3, 5, 9]
    assert _params(models.create("resnet8")) == 78_042


# ------------------------------------------------------------------- resnet naming
def test_resnet_module_names_follow_the_cifar_convention() -> None:
    tiny = models.create("resnet_cifar", stages=1, blocks=[1], widths=[16], shortcut="conv3x3")
    names = [n for n, m in tiny.named_modules() if list(m.parameters(recurse=False))]
    # A block that keeps the shape has an identity shortcut (no module).
    expected = ["conv1", "bn1", "layer1.0.conv1", "layer1.0.bn1", "layer1.0.conv2"]
    assert names == [*expected, "layer1.0.bn2", "fc"]

    model = models.create(
        "resnet_cifar", stages=3, blocks=[5, 5, 5], widths=[16, 32, 64], shortcut="conv3x3"
    )
    pattern = re.compile(r"conv1|bn1|fc|layer[123]\.[0-4]\.(conv[12]|bn[12]|shortcut\.[01])")
    names = [n for n, m in model.named_modules() if list(m.parameters(recurse=False))]
    assert len(names) == 2 + 3 * 5 * 4 + 2 * 2 + 1
    assert all(pattern.fullmatch(n) for n in names), names
    assert [n for n in names if "shortcut" in n] == [
        "layer2.0.shortcut.0",
        "layer2.0.shortcut.1",
        "layer3.0.shortcut.0",
        "layer3.0.shortcut.1",
    ]


def test_resnet_parameter_layers_put_the_shortcut_after_the_block_convs() -> None:
    model = models.create(
        "resnet_cifar", stages=3, blocks=[2, 2, 2], widths=[16, 32, 64], shortcut="conv3x3"
    )
    names = model.feature_layers()
    expected = ["conv1"]
    for s in (1, 2, 3):
        for i in (0, 1):
            expected += [f"layer{s}.{i}.conv1", f"layer{s}.{i}.conv2"]
            if s > 1 and i == 0:
                expected.append(f"layer{s}.{i}.shortcut.0")
    assert names == [*expected, "fc"]
    assert model.layer2[0].shortcut[0].kernel_size == (3, 3)
    assert isinstance(model.layer2[0].shortcut[1], nn.BatchNorm2d)


def test_pad_shortcut_has_no_parameters_and_keeps_the_output_shape() -> None:
    model = models.create("resnet_cifar", blocks=[1, 1, 1], shortcut="pad").eval()
    assert not list(model.layer2[0].shortcut.parameters())
    assert "layer2.0.shortcut.0" not in model.feature_layers()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_resnet_rejects_inconsistent_stage_lists() -> None:
    with pytest.raises(ValueError, match="one entry per stage"):
        models.create("resnet_cifar", stages=2, blocks=[1, 1, 1], widths=[16, 32])
    with pytest.raises(ValueError, match="shortcut must be one of"):
        models.create("resnet_cifar", shortcut="conv5x5")


# --------------------------------------------------------------- freeze and select
def test_freeze_by_name_and_regex() -> None:
    model = models.create("vgg_small")
    assert freeze(model, ["conv1", "re:conv[23]"]) == ["conv1", "conv2", "conv3"]
    frozen = {n.rsplit(".", 1)[0] for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {"conv1", "conv2", "conv3"}


def test_regex_patterns_match_whole_names_and_reach_nested_modules() -> None:
    model = models.create("resnet20")
    chosen = [n for n, _ in select_modules(model, [r"re:layer2\.0\.(conv|shortcut)\d?"])]
    assert chosen == ["layer2.0.conv1", "layer2.0.conv2", "layer2.0.shortcut"]
    with pytest.raises(EdgetrainError):  # fullmatch: 'conv' alone names no module
        select_modules(model, ["re:conv"])


def test_freezing_a_container_freezes_everything_inside() -> None:
    model = models.create("resnet20")
    freeze(model, ["layer1"])
    assert all(not p.requires_grad for p in model.layer1.parameters())
    assert all(p.requires_grad for p in model.layer2.parameters())


@pytest.mark.parametrize("pattern", ["conv9", "re:fc[0-9]+", ""])
def test_unknown_layer_name_is_one_line_listing_the_layers(pattern: str) -> None:
    model = models.create("vgg_small")
    with pytest.raises(EdgetrainError) as info:
        freeze(model, ["conv1", pattern])
    message = str(info.value)
    assert "\n" not in message and f"'{pattern}'" in message
    assert "conv1, conv2, conv3, conv4, conv5, conv6, fc" in message
    assert all(p.requires_grad for p in model.parameters())  # nothing frozen on error


# -------------------------------------------------------------------------- errors
def test_unknown_model_name_lists_the_choices() -> None:
    with pytest.raises(UnknownNameError) as info:
        models.create("resnet18")
    message = str(info.value)
    assert "'resnet18'" in message and "\n" not in message
    assert all(name in message for name in ALL_MODELS)
    assert isinstance(info.value, KeyError)  # callers may catch it as a lookup failure


def test_unknown_option_lists_the_valid_options() -> None:
    with pytest.raises(ConfigError) as info:
        models.create("vgg_small", num_class=10)
    message = str(info.value)
    assert "'num_class'" in message and "\n" not in message
    assert "in_channels, num_classes, input_size" in message
