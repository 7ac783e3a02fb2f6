"""Net2Net growth: widen and deepen keep the function (eval mode), on plain and residual nets."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

from edgetrain import models
from edgetrain.cost import analyze
from edgetrain.errors import EdgetrainError
from edgetrain.models import parameter_layers

pytest.importorskip("torch_pruning")

from edgetrain.prune.grow import deepen, widen  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_thread")

RTOL = 1e-5  # relative to the norm of the whole output tensor


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _rel(after: torch.Tensor, before: torch.Tensor) -> float:
    return float((after - before).norm() / before.norm())


def _trained_like(model: nn.Module, seed: int = 0) -> nn.Module:
    """Batch-norms with distinct, non-trivial statistics and affine parameters, eval mode.

    Fresh batch-norms are the identity (gamma 1, beta 0, mean 0, var 1), which would hide
    a batch-norm copied by the wrong mapping.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                c = m.num_features
                m.running_mean.copy_(torch.rand(c, generator=g) - 0.5)
                m.running_var.copy_(0.5 + torch.rand(c, generator=g))
                m.weight.copy_(0.5 + torch.rand(c, generator=g))
                m.bias.copy_(0.6 * torch.rand(c, generator=g) - 0.3)
            elif isinstance(m, nn.Linear) and m.bias is not None:
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
    return model.eval()


def _model(name: str, **kw: object) -> nn.Module:
    torch.manual_seed(0)
    return _trained_like(models.create(name, **kw))


def _input(model: nn.Module, n: int = 3) -> torch.Tensor:
    return torch.randn(n, *model.input_shape, generator=torch.Generator().manual_seed(1))


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# Small inputs keep every case well under a second.
PLAIN = {
    "small_cnn": {"input_size": 16},
    "vgg_small": {"input_size": 16},
    "kws_cnn": {"input_size": 16},
    "fcn1d": {"length": 32},
    "resnet20": {"input_size": 8},
}


# ------------------------------------------------------------------------------ widen
@pytest.mark.parametrize(
    ("name", "layer", "width", "consumers"),
    [
        # conv -> pool -> flatten -> linear: one channel is H*W input features of fc1
        ("small_cnn", "conv6", 150, {"fc1": 150 * 2 * 2}),
        ("small_cnn", "conv2", 40, {"conv3": 40}),
        ("small_cnn", "fc1", 160, {"fc": 160}),
        ("vgg_small", "conv1", 20, {"conv2": 20}),
        ("vgg_small", "conv6", 80, {"fc": 80 * 2 * 2}),
        ("kws_cnn", "conv2", 70, {"fc1": 70 * 6 * 6}),
        ("kws_cnn", "conv1", 40, {"conv2": 40}),
        ("fcn1d", "conv2", 21, {"conv3": 21}),
        ("fcn1d", "conv3", 11, {"fc": 11}),
    ],
)
def test_widen_preserves_the_function_of_plain_nets(
    name: str, layer: str, width: int, consumers: dict[str, int]
) -> None:
    model = _model(name, **PLAIN[name])
    x = _input(model)
    with torch.no_grad():
        before = model(x)
    assert widen(model, layer, width, generator=_gen()) is model
    grown = model.get_submodule(layer)
    assert grown.weight.shape[0] == width
    for consumer, features in consumers.items():
        assert model.get_submodule(consumer).weight.shape[1] == features
    with torch.no_grad():
        after = model(x)
    assert after.shape == before.shape
    assert _rel(after, before) < RTOL


def test_widen_copies_producer_kernels_and_divides_consumers_by_the_replication_count() -> None:
    model = _model("vgg_small", **PLAIN["vgg_small"])
    w1, b1, w2 = model.conv1.weight.clone(), model.conv1.bias.clone(), model.conv2.weight.clone()
    widen(model, "conv1", 24, generator=_gen(3))
    new_w1, new_b1, new_w2 = model.conv1.weight, model.conv1.bias, model.conv2.weight
    assert torch.equal(new_w1[:16], w1) and torch.equal(new_b1[:16], b1)
    # each new channel copies exactly one old channel
    src = [int((w1 == new_w1[j]).flatten(1).all(1).nonzero()) for j in range(16, 24)]
    counts = torch.bincount(torch.tensor(list(range(16)) + src), minlength=16)
    for j in range(24):
        s = j if j < 16 else src[j - 16]
        assert torch.allclose(new_w2[:, j], w2[:, s] / counts[s])


def test_widen_grows_every_layer_tied_at_a_residual_node_with_one_mapping() -> None:
    model = _model("resnet20", **PLAIN["resnet20"])
    x = _input(model)
    with torch.no_grad():
        before = model(x)
    widen(model, "layer2.1.conv2", 40, generator=_gen())
    get = model.get_submodule
    # producers into the stage-2 residual stream, their batch-norms, all its consumers
    for i in range(3):
        assert get(f"layer2.{i}.conv2").out_channels == 40
        assert get(f"layer2.{i}.bn2").num_features == 40
        assert get(f"layer2.{i}.conv1").out_channels == 32  # inner width untouched
    assert get("layer2.0.shortcut.0").out_channels == 40
    assert get("layer2.0.shortcut.1").num_features == 40
    assert get("layer2.1.conv1").in_channels == get("layer2.2.conv1").in_channels == 40
    assert get("layer3.0.conv1").in_channels == get("layer3.0.shortcut.0").in_channels == 40
    assert get("layer2.0.conv1").in_channels == 16 and get("fc").in_features == 64
    # one mapping g: new channel j carries the same source in every tied batch-norm
    bns = ["layer2.0.bn2", "layer2.1.bn2", "layer2.2.bn2", "layer2.0.shortcut.1"]
    for j in range(32, 40):
        sources = set()
        for name in bns:
            bn = get(name)
            stats = torch.stack([bn.weight, bn.bias, bn.running_mean, bn.running_var], 1)
            sources.add(int((stats[:32] == stats[j]).all(1).nonzero()))
        assert len(sources) == 1
    with torch.no_grad():
        after = model(x)
    assert _rel(after, before) < RTOL


def test_widen_the_stem_of_a_resnet_grows_the_whole_first_stage() -> None:
    model = _model("resnet20", **PLAIN["resnet20"])
    x = _input(model)
    with torch.no_grad():
        before = model(x)
    widen(model, "conv1", 24, generator=_gen())
    assert model.bn1.num_features == 24
    assert all(model.get_submodule(f"layer1.{i}.conv2").out_channels == 24 for i in range(3))
    assert model.get_submodule("layer2.0.shortcut.0").in_channels == 24
    with torch.no_grad():
        assert _rel(model(x), before) < RTOL


def test_widen_parameter_count_follows_from_the_new_channels() -> None:
    model = _model("vgg_small", **PLAIN["vgg_small"])
    before = _params(model)
    widen(model, "conv1", 20, generator=_gen())  # 16 -> 20 channels: q = 4
    q, k = 4, 3 * 3
    assert _params(model) == before + q * (3 * k + 1) + 16 * q * k
    before = _params(model)
    widen(model, "conv6", 80, generator=_gen())
    # conv6 64 -> 80 (3x3 over 64 inputs, bias), fc reads 80*2*2 features (10 classes)
    assert _params(model) == before + 16 * (64 * k + 1) + 10 * 16 * 2 * 2


def test_widen_with_noise_is_close_but_not_exact() -> None:
    model = _model("small_cnn", **PLAIN["small_cnn"])
    x = _input(model)
    with torch.no_grad():
        before = model(x)
    widen(model, "conv4", 96, noise=0.05, generator=_gen())
    with torch.no_grad():
        diff = _rel(model(x), before)
    assert 1e-5 < diff < 0.2


def test_widen_random_init_control_has_the_same_shapes_and_changes_the_function() -> None:
    ref = _model("resnet20", **PLAIN["resnet20"])
    model = _model("resnet20", **PLAIN["resnet20"])
    x = _input(model)
    with torch.no_grad():
        before = model(x)
    widen(ref, "layer3.0.conv1", 80, generator=_gen())
    widen(model, "layer3.0.conv1", 80, generator=_gen(), init="random")
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    assert shapes == {k: v.shape for k, v in ref.state_dict().items()}
    old = model.get_submodule("layer3.0.conv1").weight[:64]
    assert torch.equal(old, ref.get_submodule("layer3.0.conv1").weight[:64])
    with torch.no_grad():
        assert _rel(model(x), before) > 1e-3


def test_widen_keeps_hyper_parameters_flags_and_module_names() -> None:
    model = _model("resnet20", **PLAIN["resnet20"])
    model.requires_grad_(False)  # a fully frozen model, grown under no_grad, still traces
    model.fc.requires_grad_(True)
    names = [n for n, _ in model.named_modules()]
    with torch.no_grad():
        widen(model, "layer2.0.conv1", 48, generator=_gen())
        deepen(model, "layer2.0.conv2")
    conv = model.get_submodule("layer2.0.conv1")
    assert (conv.stride, conv.padding, conv.bias) == ((2, 2), (1, 1), None)
    assert not conv.weight.requires_grad and not conv.training
    # widened layers keep their flags; the layers deepen adds are new and trainable
    assert [n for n, p in model.named_parameters() if p.requires_grad] == [
        "layer2.0.bn2.conv.weight",
        "layer2.0.bn2.bn.weight",
        "layer2.0.bn2.bn.bias",
        "fc.weight",
        "fc.bias",
    ]
    assert model.get_submodule("layer2.0.bn1").eps == 1e-5
    assert set(names) <= {n for n, _ in model.named_modules()}


def test_widen_a_model_without_input_shape_takes_an_example_input() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 5 * 5, 3),
    )
    net = _trained_like(net)
    x = torch.randn(2, 1, 5, 5)
    with torch.no_grad():
        before = net(x)
    with pytest.raises(EdgetrainError, match="example_input"):
        widen(net, "0", 6)
    widen(net, "0", 6, example_input=torch.zeros(1, 1, 5, 5), generator=_gen())
    assert net[4].in_features == 6 * 25
    with torch.no_grad():
        assert _rel(net(x), before) < RTOL


class _OffsetNet(nn.Module):
    """conv -> a bare per-channel offset parameter -> ReLU -> conv -> pool -> linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(2, 4, 3, padding=1)
        self.offset = nn.Parameter(torch.linspace(-0.5, 0.5, 4))
        self.conv2 = nn.Conv2d(4, 3, 3, padding=1)
        self.fc = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv1(x) + self.offset.view(1, -1, 1, 1))
        return self.fc(self.conv2(x).mean((2, 3)))


def test_widen_gathers_bare_per_channel_parameters_tied_to_the_layer() -> None:
    torch.manual_seed(0)
    net = _OffsetNet().eval()
    x = torch.randn(2, 2, 6, 6)
    with torch.no_grad():
        before = net(x)
    widen(net, "conv1", 7, example_input=torch.zeros(1, 2, 6, 6), generator=_gen())
    assert net.offset.shape == (7,) and isinstance(net.offset, nn.Parameter)
    assert net.conv2.in_channels == 7
    with torch.no_grad():
        assert _rel(net(x), before) < RTOL


class _CatNet(nn.Module):
    """Two branches concatenated, one batch-norm over the concatenation, conv, flatten, fc."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(2, 3, 3, padding=1)
        self.b = nn.Conv2d(2, 4, 1)
        self.bn = nn.BatchNorm2d(7)
        self.c = nn.Conv2d(7, 5, 3)
        self.fc = nn.Linear(5 * 4 * 4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn(torch.cat([self.a(x), self.b(x)], 1)))
        return self.fc(self.c(y).flatten(1))


@pytest.mark.parametrize("layer", ["a", "b"])
def test_widen_a_branch_of_a_concatenation_inserts_its_channels_in_place(layer: str) -> None:
    torch.manual_seed(0)
    net = _trained_like(_CatNet())
    x = torch.randn(3, 2, 6, 6)
    with torch.no_grad():
        before = net(x)
    bn_mean = net.bn.running_mean.clone()
    widen(net, layer, 9, example_input=torch.zeros(1, 2, 6, 6), generator=_gen())
    assert net.bn.num_features == net.c.in_channels == 7 + (6 if layer == "a" else 5)
    # the other branch's channels keep their statistics, after the widened branch
    other = bn_mean[3:] if layer == "a" else bn_mean[:3]
    got = net.bn.running_mean[9:] if layer == "a" else net.bn.running_mean[:3]
    assert torch.equal(got, other)
    with torch.no_grad():
        assert _rel(net(x), before) < RTOL


@pytest.mark.parametrize(
    ("make", "args", "match"),
    [
        (lambda: _model("vgg_small"), ("nope", 20), "no layer 'nope'"),
        (lambda: _model("vgg_small"), ("relu1", 20), "name a convolution"),
        (lambda: _model("vgg_small"), ("conv1", 8), "below the 16 channels"),
        (lambda: _model("vgg_small"), ("fc", 12), "output"),
        (lambda: _model("vgg_small"), ("conv1", 20, 0.0, None, "copy"), "unknown grow init"),
    ],
)
def test_widen_rejects_bad_requests_with_one_line(
    make: Callable[[], nn.Module], args: tuple, match: str
) -> None:
    with pytest.raises(EdgetrainError, match=match) as info:
        widen(make(), *args)
    assert "\n" not in str(info.value)


def test_widen_rejects_grouped_convolutions() -> None:
    net = nn.Sequential(nn.Conv2d(4, 4, 3, groups=2), nn.ReLU(), nn.Conv2d(4, 2, 1))
    with pytest.raises(EdgetrainError, match="grouped"):
        widen(net, "0", 6, example_input=torch.zeros(1, 4, 5, 5))
    net = nn.Sequential(
        nn.Conv2d(4, 4, 1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1, groups=4), nn.Conv2d(4, 2, 1)
    )
    with pytest.raises(EdgetrainError, match="grouped"):
        widen(net, "0", 6, example_input=torch.zeros(1, 4, 5, 5))


def test_widen_refuses_norms_that_mix_channels() -> None:
    net = nn.Sequential(nn.Conv2d(2, 4, 1), nn.GroupNorm(2, 4), nn.ReLU(), nn.Conv2d(4, 2, 1))
    with pytest.raises(EdgetrainError, match="GroupNorm"):
        widen(net, "0", 6, example_input=torch.zeros(1, 2, 3, 3))


def test_widen_equal_width_is_a_no_op() -> None:
    model = _model("vgg_small", **PLAIN["vgg_small"])
    conv = model.conv2
    widen(model, "conv2", 16)
    assert model.conv2 is conv


# ----------------------------------------------------------------------------- deepen
@pytest.mark.parametrize(
    ("name", "after", "wrapped", "children"),
    [
        ("vgg_small", "conv2", "conv2", ["base", "relu", "conv"]),  # no batch-norm
        ("fcn1d", "conv2", "bn2", ["base", "relu", "conv", "bn"]),  # Conv1d + BatchNorm1d
        ("small_cnn", "fc1", "fc1", ["base", "relu", "fc"]),  # linear -> ReLU
        ("resnet20", "conv1", "bn1", ["base", "relu", "conv", "bn"]),
        ("resnet20", "layer2.1.conv1", "layer2.1.bn1", ["base", "relu", "conv", "bn"]),
        # the last batch-norm of a residual branch feeds the add: no ReLU may be added
        ("resnet20", "layer2.1.conv2", "layer2.1.bn2", ["base", "conv", "bn"]),
    ],
)
def test_deepen_inserts_an_identity_layer(
    name: str, after: str, wrapped: str, children: list[str]
) -> None:
    model = _model(name, **PLAIN[name])
    x = _input(model)
    original = model.get_submodule(wrapped)
    with torch.no_grad():
        before = model(x)
    assert deepen(model, after) is model
    block = model.get_submodule(wrapped)
    assert isinstance(block, nn.Sequential)
    assert [n for n, _ in block.named_children()] == children
    assert block.base is original
    new = block.fc if "fc" in children else block.conv
    c = new.weight.shape[0]
    assert new.weight.shape[1] == c
    if "bn" in children:
        assert new.bias is None
        bn = block.bn
        assert torch.allclose(bn.weight, torch.sqrt(bn.running_var + bn.eps))
        assert torch.equal(bn.bias, bn.running_mean)
    with torch.no_grad():
        after_out = model(x)
    assert _rel(after_out, before) < RTOL
    # the grown model trains: one backward pass reaches the new layer
    model.train()
    model(x).sum().backward()
    assert new.weight.grad is not None


def test_deepen_sees_a_functional_relu_and_needs_an_example_input_without_input_shape(
    make_tiny_net: Callable[..., nn.Module],
) -> None:
    net = _trained_like(make_tiny_net())  # conv -> bn -> torch.relu -> dropout -> fc
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        before = net(x)
    with pytest.raises(EdgetrainError, match="example_input"):
        deepen(net, "conv")
    deepen(net, "conv", example_input=torch.zeros(1, 1, 8, 8))
    assert [n for n, _ in net.bn.named_children()] == ["base", "relu", "conv", "bn"]
    with torch.no_grad():
        assert _rel(net(x), before) < RTOL


def test_deepen_conv_layer_parameter_count_and_kernel() -> None:
    model = _model("fcn1d", **PLAIN["fcn1d"])
    before = _params(model)
    deepen(model, "conv2")  # 16 channels, kernel 5, with batch-norm
    assert _params(model) == before + 16 * 16 * 5 + 2 * 16
    conv = model.bn2.conv
    assert (conv.kernel_size, conv.padding, conv.stride) == ((5,), (2,), (1,))
    assert torch.equal(conv.weight[:, :, 2], torch.eye(16))
    assert conv.weight[:, :, [0, 1, 3, 4]].abs().sum() == 0


def test_deepen_residual_inserts_a_zero_gamma_block_with_resnet_cifar_names() -> None:
    model = _model("resnet20", **PLAIN["resnet20"])
    x = _input(model)
    with torch.no_grad():
        before = model(x)
    params = _params(model)
    moved = model.layer2[2]
    deepen(model, "layer2.1")  # kind="auto" sees a residual block
    assert len(model.layer2) == 4 and model.layer2[3] is moved
    new = model.layer2[2]
    assert not hasattr(new, "shortcut")
    assert new.conv1.stride == (1, 1) and new.conv1.in_channels == 32
    assert torch.count_nonzero(new.bn2.weight) == 0 and torch.count_nonzero(new.bn2.bias) == 0
    assert _params(model) == params + 2 * (32 * 32 * 9 + 2 * 32)
    with torch.no_grad():
        assert _rel(model(x), before) < RTOL
    # the grown net is the member of the family with one more block in stage 2
    direct = models.create(
        "resnet_cifar", blocks=(3, 4, 3), shortcut="conv1x1", input_size=8
    ).state_dict()
    grown = model.state_dict()
    assert {k: v.shape for k, v in grown.items()} == {k: v.shape for k, v in direct.items()}


def test_deepen_random_init_control_changes_the_function() -> None:
    for after in ("layer1.2", "layer1.2.conv1"):
        model = _model("resnet20", **PLAIN["resnet20"])
        x = _input(model)
        with torch.no_grad():
            before = model(x)
        deepen(model, after, init="random", generator=_gen())
        with torch.no_grad():
            assert _rel(model(x), before) > 1e-3


def test_deepen_rejects_bad_requests_with_one_line() -> None:
    model = _model("resnet20", **PLAIN["resnet20"])
    cases = [
        (("layer9.0",), "no layer 'layer9.0'"),
        (("layer1.0.conv1", "residual"), "not a residual block"),
        (("layer1.0.relu",), "name a convolution"),
        (("conv1", "wide"), "unknown deepen kind"),
        (("conv1", "auto", "zeros"), "unknown grow init"),
    ]
    for args, match in cases:
        with pytest.raises(EdgetrainError, match=match) as info:
            deepen(model, *args)
        assert "\n" not in str(info.value)


# ---------------------------------------------------- grown models in the rest of the tool
def _grown_resnet() -> nn.Module:
    model = _model("resnet20", **PLAIN["resnet20"])
    widen(model, "layer2.1.conv2", 40, generator=_gen())
    widen(model, "layer1.0.conv1", 24, generator=_gen(1))
    deepen(model, "layer2.0.conv1")
    deepen(model, "layer3.1")
    return model


def test_grown_models_work_with_parameter_layers_and_the_cost_model() -> None:
    base = _model("resnet20", **PLAIN["resnet20"])
    model = _grown_resnet()
    names = [n for n, _ in parameter_layers(model)]
    assert names[0] == "conv1" and names[-1] == "fc"
    i = names.index("layer2.0.bn1.conv")
    assert names[i - 1] == "layer2.0.conv1" and names[i + 1] == "layer2.0.conv2"
    assert "layer3.2.conv1" in names and len(names) == len(parameter_layers(base)) + 3
    shape = model.input_shape
    grown_cost, base_cost = analyze(model, shape), analyze(base, shape)
    assert grown_cost.params == _params(model)
    assert grown_cost.total().forward_macs > base_cost.total().forward_macs
    assert not grown_cost.unsupported


def test_grown_state_dict_reloads_after_replaying_the_growth() -> None:
    model = _grown_resnet()
    x = _input(model)
    state = model.state_dict()
    fresh = models.create("resnet20", input_size=8)
    widen(fresh, "layer2.1.conv2", 40)
    widen(fresh, "layer1.0.conv1", 24)
    deepen(fresh, "layer2.0.conv1")
    deepen(fresh, "layer3.1")
    fresh.load_state_dict(state, strict=True)
    fresh.eval()
    with torch.no_grad():
        assert torch.equal(fresh(x), model(x))
