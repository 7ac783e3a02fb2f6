"""Channel union, function-preserving channel removal, dead residual blocks and the
optimizer state carried through a reconfiguration."""

from __future__ import annotations

import copy
from collections.abc import Iterable

import pytest
import torch
from torch import nn

from edgetrain import models
from edgetrain.errors import ConfigError

pytest.importorskip("torch_pruning")

from edgetrain.models.surgery import ResidualBypass, restore_architecture  # noqa: E402
from edgetrain.models.vgg import VGG  # noqa: E402
from edgetrain.prune import (  # noqa: E402
    ChannelGroup,
    channel_groups,
    dead_channels,
    reconfigure,
    sparsify,
)

pytestmark = pytest.mark.usefixtures("single_thread")

RTOL = 1e-5  # relative to the norm of the whole output tensor
BN = nn.modules.batchnorm._BatchNorm


# ------------------------------------------------------------------ helpers
def _rel(after: torch.Tensor, before: torch.Tensor) -> float:
    return float((after - before).detach().norm() / before.detach().norm())


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _trained_like(model: nn.Module, seed: int = 0) -> nn.Module:
    """Distinct batch-norm statistics and affine parameters (fresh ones are the identity,
    which would hide a batch-norm sliced by the wrong indices), non-zero biases; eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, BN):
                c = m.num_features
                m.running_mean.copy_(torch.rand(c, generator=g) - 0.5)
                m.running_var.copy_(0.5 + torch.rand(c, generator=g))
                m.weight.copy_(0.5 + torch.rand(c, generator=g))
                m.bias.copy_(0.6 * torch.rand(c, generator=g) - 0.3)
            elif isinstance(m, nn.Linear | nn.Conv1d | nn.Conv2d) and m.bias is not None:
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
    return model.eval()


def _input(model: nn.Module, n: int = 3, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, *model.input_shape, generator=torch.Generator().manual_seed(seed))


def _group(groups: list[ChannelGroup], name: str, role: str = "out") -> ChannelGroup:
    """The group holding ``name``'s channels on the ``role`` side."""
    found = [g for g in groups if any(m.name == name and m.role == role for m in g.members)]
    assert len(found) == 1, (name, role, [g.root for g in groups])
    return found[0]


def _zero(group: ChannelGroup, channels: Iterable[int], only: Iterable[str] | None = None) -> None:
    """Zero the weights of ``channels`` (group channel numbers) in every conv/linear member
    of ``group`` (or only in the layers named in ``only``)."""
    chosen = set(channels)
    names = None if only is None else set(only)
    with torch.no_grad():
        for m in group.weight_members():
            if names is not None and m.name not in names:
                continue
            idx = [i for i, r in zip(m.idxs, m.root_idxs, strict=True) if r in chosen]
            m.module.weight.index_fill_(0 if m.role == "out" else 1, torch.tensor(idx), 0.0)


def _removed_indices(plan: list[tuple[ChannelGroup, list[int]]]) -> dict[tuple[str, int], set]:
    """``(module name, dim) -> indices`` that removing ``plan``'s channels takes away."""
    removed: dict[tuple[str, int], set] = {}
    for group, dead in plan:
        for m in group.members:
            dim = 0 if m.role == "out" else 1
            idx = {i for i, r in zip(m.idxs, m.root_idxs, strict=True) if r in set(dead)}
            removed.setdefault((m.name, dim), set()).update(idx)
    return removed


def _slice(name: str, value: torch.Tensor, removed: dict[tuple[str, int], set]) -> torch.Tensor:
    """``value`` (parameter/buffer/optimizer tensor called ``name``) without removed indices."""
    module, _, kind = name.rpartition(".")
    if not isinstance(value, torch.Tensor) or value.dim() == 0:
        return value
    dims = (0, 1) if kind == "weight" and value.dim() >= 2 else (0,)
    for dim in dims:
        gone = removed.get((module, dim), set())
        keep = [i for i in range(value.shape[dim]) if i not in gone]
        value = value.index_select(dim, torch.tensor(keep, dtype=torch.long))
    return value


def _chain() -> nn.Module:
    """conv1 (1->4) - bn1 - relu - conv2 (4->4) - bn2 - relu - pool - fc (4->3)."""

    class Chain(nn.Module):
        input_shape = (1, 6, 6)

        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(1, 4, 3, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(4)
            self.conv2 = nn.Conv2d(4, 4, 3, padding=1, bias=False)
            self.bn2 = nn.BatchNorm2d(4)
            self.fc = nn.Linear(4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = torch.relu(self.bn1(self.conv1(x)))
            x = torch.relu(self.bn2(self.conv2(x)))
            return self.fc(x.mean((2, 3)))

    torch.manual_seed(0)
    return _trained_like(Chain())


def _tiny_resnet(**kw) -> nn.Module:
    options = {"stages": 1, "blocks": [2], "widths": [4], "in_channels": 1, "num_classes": 3}
    torch.manual_seed(0)
    return _trained_like(models.create("resnet_cifar", **{**options, "input_size": 8, **kw}))


# ------------------------------------------------------------------ sparsify
def test_sparsify_zeroes_small_weights_and_counts_only_new_zeros():
    net = _chain()
    with torch.no_grad():
        net.conv1.weight.fill_(1.0)
        net.conv1.weight[0, 0, 0, :] = torch.tensor([1e-5, -5e-5, 0.0])
    assert sparsify(net, threshold=1e-4) == 2
    assert int((net.conv1.weight == 0).sum()) == 3
    assert sparsify(net, threshold=1e-4) == 0
    assert bool((net.bn1.weight != 0).all())  # batch-norm parameters are not weights


# ------------------------------------------------------------------ channel union
def test_consumer_zero_input_channel_is_kept_while_its_producer_is_alive():
    net = _chain()
    group = _group(channel_groups(net), "conv1")
    _zero(group, [1], only=["conv2"])
    assert dead_channels(group) == []
    result = reconfigure(net, threshold=0)
    assert not result.changed
    assert net.conv1.out_channels == net.conv2.in_channels == net.bn1.num_features == 4


def test_producer_zero_output_channel_is_kept_while_a_consumer_reads_it():
    net = _chain()
    group = _group(channel_groups(net), "conv1")
    _zero(group, [1], only=["conv1"])
    assert dead_channels(group) == []
    assert not reconfigure(net, threshold=0).changed


def test_channel_zero_in_producer_and_consumer_is_removed():
    net = _chain()
    x = _input(net)
    group = _group(channel_groups(net), "conv1")
    _zero(group, [1])
    assert dead_channels(group) == [1]
    kept = [0, 2, 3]
    conv2_in = net.conv2.weight[:, kept].clone()
    bn1 = {k: getattr(net.bn1, k)[kept].clone() for k in ("weight", "running_mean", "running_var")}
    before = net(x)
    result = reconfigure(net, threshold=0)
    assert result.changed and result.removed_channels == 1
    assert result.channels_before == {"conv1": 4, "conv2": 4, "fc": 3}
    assert result.channels_after == {"conv1": 3, "conv2": 4, "fc": 3}
    assert net.conv1.out_channels == net.conv2.in_channels == net.bn1.num_features == 3
    assert torch.equal(net.conv2.weight, conv2_in)
    for k, v in bn1.items():
        assert torch.equal(getattr(net.bn1, k), v), k
    assert _rel(net(x), before) < RTOL
    assert result.params_after < result.params_before
    assert result.macs_after < result.macs_before


def test_threshold_zeroes_before_the_channel_union():
    net = _chain()
    group = _group(channel_groups(net), "conv2")
    _zero(group, [0, 3])
    with torch.no_grad():
        net.fc.weight[:, 2] = 1e-6  # below the threshold: the channel dies only through it
        net.conv2.weight[2] = 2e-6
    result = reconfigure(net, threshold=1e-4)
    assert result.zeroed == net.fc.out_features + net.conv2.weight[0].numel()
    assert result.channels_after["conv2"] == 1
    assert net.fc.in_features == 1


# The residual group of a one-stage ResNet without shortcut convs: the stem, both blocks'
# last convs (producers) and both blocks' first convs plus the classifier (consumers).
RESIDUAL_MEMBERS = [
    "conv1",
    "layer1.0.conv1",
    "layer1.0.conv2",
    "layer1.1.conv1",
    "layer1.1.conv2",
    "fc",
]


def test_the_residual_group_ties_every_layer_at_the_add():
    group = _group(channel_groups(_tiny_resnet()), "conv1")
    assert sorted(m.name for m in group.weight_members()) == sorted(RESIDUAL_MEMBERS)
    assert set(group.layer_names("out")) >= {"bn1", "layer1.0.bn2", "layer1.1.bn2"}


@pytest.mark.parametrize("spared", RESIDUAL_MEMBERS)
def test_residual_channel_alive_in_one_member_is_kept(spared):
    net = _tiny_resnet()
    group = _group(channel_groups(net), "conv1")
    _zero(group, [2], only=[n for n in RESIDUAL_MEMBERS if n != spared])
    assert dead_channels(group) == []
    result = reconfigure(net, threshold=0)
    assert not result.changed
    assert result.channels_after == result.channels_before


def test_residual_channel_zero_in_every_member_is_removed_everywhere():
    net = _tiny_resnet()
    x = _input(net)
    group = _group(channel_groups(net), "conv1")
    _zero(group, [2])
    before = net(x)
    result = reconfigure(net, threshold=0)
    assert result.removed_channels == 3  # the stem and both blocks' last convs
    for name in ("conv1", "layer1.0.conv2", "layer1.1.conv2"):
        assert net.get_submodule(name).out_channels == 3, name
    for name in ("layer1.0.conv1", "layer1.1.conv1"):
        assert net.get_submodule(name).in_channels == 3, name
    for name in ("bn1", "layer1.0.bn2", "layer1.1.bn2"):
        assert net.get_submodule(name).num_features == 3, name
    assert net.fc.in_features == 3
    assert net.layer1[0].conv1.out_channels == 4  # inner channels untouched
    assert _rel(net(x), before) < RTOL


def test_a_fully_dead_plain_layer_keeps_one_channel():
    torch.manual_seed(0)
    net = _trained_like(models.create("vgg_small", input_size=8))
    x = _input(net)
    group = _group(channel_groups(net), "conv2")
    _zero(group, range(group.size))
    before = net(x)
    result = reconfigure(net, threshold=0)
    assert result.channels_after["conv2"] == 1 and net.conv3.in_channels == 1
    assert result.bypassed == []
    assert _rel(net(x), before) < RTOL


# ------------------------------------------------------------------ every zoo model
def _random_removal(model: nn.Module, seed: int = 0) -> int:
    """Zero about a third of every group's channels (at least one, never all); returns the
    output channels the removal must take away over all conv/linear layers."""
    g = torch.Generator().manual_seed(seed)
    expected = 0
    for group in channel_groups(model):
        k = max(1, group.size // 3)
        _zero(group, torch.randperm(group.size, generator=g)[:k].tolist())
        expected += k * sum(1 for m in group.weight_members() if m.role == "out")
    return expected


@pytest.mark.parametrize("name", models.list_models())
def test_reconfigure_preserves_the_function_of_every_zoo_model(name):
    torch.manual_seed(0)
    model = _trained_like(models.create(name))
    try:
        expected = _random_removal(model)
    except ConfigError as exc:
        pytest.skip(f"the dependency graph cannot trace {name}: {exc}")
    x = _input(model, n=2)
    with torch.no_grad():
        before = model(x)
    result = reconfigure(model, threshold=0)
    with torch.no_grad():
        after = model(x)
    assert _rel(after, before) < RTOL
    assert result.removed_channels == expected > 0
    assert sum(result.channels_after.values()) < sum(result.channels_before.values())
    assert result.params_after == _params(model) < result.params_before
    assert result.macs_after < result.macs_before
    assert result.bypassed == []
    assert list(result.channels_after.values())[-1] == list(result.channels_before.values())[-1]
    # the zoo entry and the pruned state dict alone rebuild the pruned model
    fresh = restore_architecture(models.create(name), model.state_dict())
    fresh.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.equal(fresh.eval()(x), after)


@pytest.mark.parametrize("shortcut", ["conv1x1", "conv3x3"])
def test_reconfigure_resnet_with_conv_shortcuts(shortcut):
    net = _tiny_resnet(stages=2, blocks=[1, 2], widths=[4, 8], shortcut=shortcut)
    x = _input(net)
    groups = channel_groups(net)
    stage2 = _group(groups, "layer2.0.shortcut.0")
    assert {"layer2.0.conv2", "layer2.1.conv2", "fc"} <= set(stage2.layer_names())
    expected = _random_removal(net, seed=3)
    before = net(x)
    result = reconfigure(net, threshold=0)
    assert result.removed_channels == expected
    shortcut_conv = net.layer2[0].shortcut[0]
    assert shortcut_conv.out_channels == net.layer2[0].conv2.out_channels < 8
    assert shortcut_conv.in_channels == net.conv1.out_channels < 4
    assert net.layer2[0].shortcut[1].num_features == shortcut_conv.out_channels
    assert _rel(net(x), before) < RTOL


def test_a_channel_padding_shortcut_is_refused_before_anything_changes():
    net = _tiny_resnet(stages=2, blocks=[1, 1], widths=[4, 8], shortcut="pad")
    shapes = {k: v.shape for k, v in net.state_dict().items()}
    with torch.no_grad():
        net.conv1.weight[1] = 0.0
        net.layer1[0].conv1.weight[:, 1] = 0.0
    with pytest.raises(ConfigError, match=r"'layer2.0.shortcut' \(_PadShortcut\)"):
        channel_groups(net)
    with pytest.raises(ConfigError, match="shortcut='conv1x1'"):
        reconfigure(net, threshold=0)
    assert {k: v.shape for k, v in net.state_dict().items()} == shapes
    net(_input(net))  # still a working model


# ------------------------------------------------------------------ dead residual blocks
@pytest.mark.parametrize("block", ["layer1.1", "layer2.0"])
def test_a_residual_block_whose_inner_channels_died_is_bypassed(block):
    net = _tiny_resnet(stages=2, blocks=[2, 2], widths=[4, 8], shortcut="conv1x1")
    x = _input(net)
    had_shortcut = hasattr(net.get_submodule(block), "shortcut")
    group = _group(channel_groups(net), f"{block}.conv1")
    _zero(group, range(group.size))
    before = net(x)
    params = _params(net)
    result = reconfigure(net, threshold=0)
    assert result.bypassed == [block]
    bypass = net.get_submodule(block)
    assert isinstance(bypass, ResidualBypass)
    assert hasattr(bypass, "shortcut") == had_shortcut
    assert f"{block}.conv1" not in result.channels_after
    assert _params(net) == result.params_after < params
    assert result.macs_after < result.macs_before
    assert _rel(net(x), before) < RTOL
    # the pruned model still trains, the offset as a bias
    net.train()
    net(x).sum().backward()
    assert bypass.offset.bias.grad is not None
    # and its shape is rebuilt from the state dict and the bypassed names alone
    fresh = models.create(
        "resnet_cifar",
        stages=2,
        blocks=[2, 2],
        widths=[4, 8],
        shortcut="conv1x1",
        in_channels=1,
        num_classes=3,
        input_size=8,
    )
    restore_architecture(fresh, net.state_dict(), result.bypassed)
    fresh.load_state_dict(net.state_dict())
    net.eval()
    assert torch.equal(fresh.eval()(x), net(x))


def test_both_blocks_of_a_stage_can_be_bypassed_in_one_step():
    net = _tiny_resnet()
    x = _input(net)
    groups = channel_groups(net)
    for block in ("layer1.0", "layer1.1"):
        group = _group(groups, f"{block}.conv1")
        _zero(group, range(group.size))
    before = net(x)
    result = reconfigure(net, threshold=0)
    assert sorted(result.bypassed) == ["layer1.0", "layer1.1"]
    assert _rel(net(x), before) < RTOL


def test_bottleneck_blocks_bypass_only_when_the_last_conv_reads_nothing():
    net = _tiny_resnet(widths=[2], bottleneck=True)
    x = _input(net)
    groups = channel_groups(net)
    first = _group(groups, "layer1.1.conv1")  # read by conv2: the branch stays alive
    _zero(first, range(first.size))
    before = net(x)
    result = reconfigure(net, threshold=0)
    assert result.bypassed == [] and result.channels_after["layer1.1.conv1"] == 1
    assert _rel(net(x), before) < RTOL
    second = _group(channel_groups(net), "layer1.1.conv2")  # read by conv3, the last
    _zero(second, range(second.size))
    before = net(x)
    result = reconfigure(net, threshold=0)
    assert result.bypassed == ["layer1.1"]
    assert _rel(net(x), before) < RTOL


# ------------------------------------------------------------------ optimizer state
def _resnet_case() -> tuple[nn.Module, dict[tuple[str, str], list[int]], nn.Module]:
    """A two-stage ResNet, the channels to remove (by a member of each group) and the
    same architecture built directly at the reduced widths."""
    torch.manual_seed(0)
    kw = {"stages": 2, "blocks": [1, 1], "in_channels": 1, "num_classes": 3, "input_size": 8}
    big = models.create("resnet_cifar", widths=[4, 8], shortcut="conv1x1", **kw)
    plan = {
        ("conv1", "out"): [1],
        ("layer1.0.conv1", "out"): [2],
        ("layer2.0.conv1", "out"): [0, 5],
        ("layer2.0.conv2", "out"): [3, 6],
    }
    small = models.create("resnet_cifar", widths=[3, 6], shortcut="conv1x1", **kw)
    return big, plan, small


def _vgg_case() -> tuple[nn.Module, dict[tuple[str, str], list[int]], nn.Module]:
    """conv 4 - pool - conv 6 - flatten (2x2 positions per channel) - fc1 5 - fc; remove a
    conv channel feeding the flatten so each removal takes 4 input features of fc1."""
    torch.manual_seed(0)
    kw = {"in_channels": 1, "num_classes": 3, "input_size": 4, "batch_norm": True}
    big = VGG([4, "M", 6], hidden=(5,), **kw)
    plan = {("conv1", "out"): [0], ("conv2", "out"): [2, 4], ("fc1", "out"): [1]}
    small = VGG([3, "M", 4], hidden=(4,), **kw)
    return big, plan, small


OPTIMIZERS = {
    "sgd": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=1e-3),
    "adam": lambda p: torch.optim.Adam(p, lr=0.01, weight_decay=1e-3),
}
STATE_KEYS = {"sgd": ["momentum_buffer"], "adam": ["exp_avg", "exp_avg_sq"]}


def _step(model: nn.Module, optimizer: torch.optim.Optimizer, seed: int) -> float:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(6, *model.input_shape, generator=g)
    y = torch.randint(0, 3, (6,), generator=g)
    model.train()
    optimizer.zero_grad(set_to_none=True)
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    optimizer.step()
    return float(loss.detach())


def _by_name(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, dict]:
    return {n: optimizer.state[p] for n, p in model.named_parameters() if p in optimizer.state}


@pytest.mark.parametrize("case", [_resnet_case, _vgg_case], ids=["resnet", "vgg-flatten"])
@pytest.mark.parametrize("opt_name", ["sgd", "adam"])
def test_optimizer_state_is_sliced_and_training_continues_as_a_fresh_small_model(case, opt_name):
    model, plan_by_member, small = case()
    optimizer = OPTIMIZERS[opt_name](model.parameters())
    for seed in range(2):
        _step(model, optimizer, seed)

    groups = channel_groups(model)
    plan = [(_group(groups, name, role), dead) for (name, role), dead in plan_by_member.items()]
    for group, dead in plan:
        _zero(group, dead)
    removed = _removed_indices(plan)
    old_weights = {k: v.clone() for k, v in model.state_dict().items()}
    old_state = copy.deepcopy(_by_name(model, optimizer))
    assert set(old_state) == {n for n, _ in model.named_parameters()}

    result = reconfigure(model, optimizer, threshold=0)
    assert result.changed and result.bypassed == []

    # the optimizer trains exactly the model's current parameters, each once
    listed = [p for g in optimizer.param_groups for p in g["params"]]
    assert len(listed) == len({id(p) for p in listed}) == len(list(model.parameters()))
    assert {id(p) for p in listed} == {id(p) for p in model.parameters()}
    assert {id(p) for p in optimizer.state} <= {id(p) for p in model.parameters()}

    # weights, buffers and state of kept channels are the old ones, pruned ones gone
    expected_weights = {k: _slice(k, v, removed) for k, v in old_weights.items()}
    for k, v in model.state_dict().items():
        assert torch.equal(v, expected_weights[k]), k
    new_state = _by_name(model, optimizer)
    assert set(new_state) == set(old_state)
    expected_state = {
        name: {k: _slice(name, v, removed) for k, v in state.items()}
        for name, state in old_state.items()
    }
    for name, state in new_state.items():
        for key in STATE_KEYS[opt_name]:
            assert state[key].shape == dict(model.named_parameters())[name].shape, (name, key)
            assert torch.equal(state[key], expected_state[name][key]), (name, key)
        if opt_name == "adam":
            assert float(state["step"]) == float(old_state[name]["step"]) == 2.0

    # THE KEY PROPERTY: the next steps equal those of the small model built directly,
    # given the same weights and the same (independently sliced) optimizer state
    assert {k: v.shape for k, v in small.state_dict().items()} == {
        k: v.shape for k, v in model.state_dict().items()
    }
    small.load_state_dict(expected_weights)
    small_opt = OPTIMIZERS[opt_name](small.parameters())
    for name, p in small.named_parameters():
        small_opt.state[p] = copy.deepcopy(expected_state[name])
    for seed in (10, 11):
        loss_pruned = _step(model, optimizer, seed)
        loss_small = _step(small, small_opt, seed)
        assert loss_pruned == pytest.approx(loss_small, rel=1e-6)
    small_params = dict(small.named_parameters())
    for name, p in model.named_parameters():
        torch.testing.assert_close(p, small_params[name], rtol=0, atol=1e-6)


def test_bypass_moves_the_block_parameters_out_of_the_optimizer_and_the_offset_in():
    net = _tiny_resnet()
    optimizer = OPTIMIZERS["sgd"](net.parameters())
    _step(net, optimizer, 0)
    group = _group(channel_groups(net), "layer1.1.conv1")
    _zero(group, range(group.size))
    reconfigure(net, optimizer, threshold=0)
    listed = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert listed == {id(p) for p in net.parameters()}
    offset = net.layer1[1].offset.bias
    assert offset not in optimizer.state  # new: no momentum yet
    _step(net, optimizer, 1)
    assert "momentum_buffer" in optimizer.state[offset]


def test_dead_channels_under_a_layer_norm_are_kept_with_a_warning() -> None:
    """A LayerNorm normalises over every channel, dead ones included: removing one
    would change the output."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.ReLU(), nn.Linear(8, 3)).eval()
    with torch.no_grad():  # channel 2 is dead in every weight, as group lasso leaves it
        for t in (net[0].weight[2], net[0].bias[2], net[1].weight[2], net[1].bias[2]):
            t.zero_()
        net[3].weight[:, 2] = 0
    x = torch.randn(5, 4)
    before = net(x)
    with pytest.warns(RuntimeWarning, match="dead channels of '0' kept: 1 normalises across"):
        result = reconfigure(net, None, x[:1])
    assert result.channels_after == result.channels_before
    assert torch.equal(net(x), before)
