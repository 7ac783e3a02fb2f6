"""L1 filter pruning: ranking and rounding, tied groups, physical removal on ResNets."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from edgetrain.compress import load_recipe
from edgetrain.compress.l1 import filter_scores, filters_to_remove, l1_filter
from edgetrain.errors import ConfigError
from edgetrain.models import create

pytest.importorskip("torch_pruning")


@pytest.mark.parametrize(
    ("scores", "sparsity", "removed"),
    [
        ([0.5, 0.1, 0.4, 0.2, 0.3], 0.5, [1, 3]),  # floor(2.5) = 2
        ([0.5, 0.1, 0.4, 0.2, 0.3], 0.19, []),  # floor(0.95) = 0
        ([0.4, 0.3, 0.2, 0.1], 0.99, [1, 2, 3]),  # at most n - 1
        ([0.5, 0.25, 0.25, 0.75], 0.25, [1, 2]),  # ties with the m-th smallest go too
        ([0.5, 0.25, 0.25, 0.25], 0.5, [1, 2, 3]),
        ([0.25, 0.25, 0.25, 0.25], 0.25, [0, 1, 2]),  # ties, still at most n - 1
        ([0.3, 0.2], 0.0, []),
        ([0.7], 0.9, []),  # a single filter always stays
    ],
)
def test_filters_to_remove_floor_cap_and_ties(scores, sparsity, removed):
    assert filters_to_remove(scores, sparsity) == removed
    assert filters_to_remove(torch.tensor(scores, dtype=torch.float64), sparsity) == removed


def test_sparsity_floors_as_written_despite_float_products():
    scores = [float(i) for i in range(100)]
    assert 0.29 * 100 < 29  # 28.999999999999996
    assert filters_to_remove(scores, 0.29) == list(range(29))


@pytest.mark.parametrize(
    ("n", "sparsity", "multiple", "kept"),
    [
        (16, 0.6, 8, 8),  # keep 7 -> 8
        (32, 0.3, 8, 24),  # keep 23 -> 24
        (64, 0.1, 8, 64),  # keep 58 -> 64: nothing removed
        (16, 0.5, 8, 8),  # already a multiple
        (6, 0.5, 8, 6),  # fewer filters than one block: all stay
        (32, 0.95, 8, 8),  # keep 2 -> 8
    ],
)
def test_multiple_of_rounds_the_kept_filters_up(n, sparsity, multiple, kept):
    scores = [float((7 * i) % n) for i in range(n)]  # a permutation of 0..n-1
    removed = filters_to_remove(scores, sparsity, multiple_of=multiple)
    assert n - len(removed) == kept
    # the weakest filters go first
    assert sorted(scores[i] for i in removed) == [float(v) for v in range(len(removed))]


def test_l1_filter_multiple_of_on_a_resnet():
    net = create("resnet20")
    (group,) = l1_filter(net, ["layer1.0.conv1"], 0.6, multiple_of=8)
    assert (group.before, group.after) == (16, 8)
    assert net.layer1[0].conv1.out_channels == 8
    with pytest.raises(ConfigError, match="multiple_of must be a positive whole number"):
        l1_filter(net, ["layer2.0.conv1"], 0.5, multiple_of=0)


def test_ranking_is_deterministic_and_stable():
    scores = torch.tensor([0.5, 0.25, 0.25, 0.25, 0.5, 0.75], dtype=torch.float64)
    first = filters_to_remove(scores, 0.5)
    assert first == [1, 2, 3]
    assert all(filters_to_remove(scores.clone(), 0.5) == first for _ in range(5))


def test_filter_scores_are_mean_absolute_weights():
    w = torch.zeros(3, 2, 2, 2)
    w[0] = 1.0
    w[1, 0] = -2.0  # half the entries: mean |w| = 1
    w[2, :, 0, 0] = 4.0  # a quarter: mean |w| = 1
    assert filter_scores(w).tolist() == [1.0, 1.0, 1.0]
    assert filter_scores(torch.tensor([[3.0, -1.0], [0.0, -0.5]])).tolist() == [2.0, 0.25]


class Chain(nn.Module):
    """conv(1->4) - bn - relu - conv(4->3) - pool - linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 1, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 3, 1)
        self.fc = nn.Linear(3, 2)
        self.input_shape = (1, 4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv2(torch.relu(self.bn(self.conv(x))))
        return self.fc(x.mean(dim=(2, 3)))


def _filled(shape: tuple[int, ...], values: list[float]) -> torch.Tensor:
    """Filters of constant |w| = values[i], with alternating signs (|w| must be used)."""
    w = torch.tensor(values).view(-1, *([1] * (len(shape) - 1))).expand(shape).clone()
    signs = torch.tensor([1.0, -1.0]).repeat(w[0].numel() // 2 + 1)[: w[0].numel()]
    return w * signs.view(w[0].shape)


def test_l1_filter_removes_the_weakest_filters_and_every_consumer_input():
    net = Chain()
    with torch.no_grad():
        net.conv.weight.copy_(_filled((4, 1, 1, 1), [0.3, -0.1, 0.2, 0.1]))
        net.bn.running_mean.copy_(torch.arange(4.0))
        net.bn.weight.copy_(torch.arange(4.0) + 10)
    original = copy.deepcopy(net)
    (group,) = l1_filter(net, ["conv"], 0.25)  # m = 1; filter 3 ties filter 1
    assert group.layers == ("conv",)
    assert (group.before, group.after, group.removed) == (4, 2, (1, 3))
    kept = [0, 2]
    assert torch.equal(net.conv.weight, original.conv.weight[kept])
    assert torch.equal(net.bn.running_mean, original.bn.running_mean[kept])
    assert torch.equal(net.bn.weight, original.bn.weight[kept])
    assert torch.equal(net.conv2.weight, original.conv2.weight[:, kept])
    assert net(torch.randn(2, 1, 4, 4)).shape == (2, 2)


def test_a_residual_group_is_ranked_by_the_mean_over_its_tied_producers():
    net = create("resnet_cifar", stages=1, blocks=[2], widths=[4], in_channels=1, input_size=8)
    stem, c2a, c2b = [0.25, 0.125, 0.75, 0.875], [0.875, 0.5, 0.125, 0.25], [0.75, 0.25, 0.25, 0.75]
    with torch.no_grad():
        net.conv1.weight.copy_(_filled((4, 1, 3, 3), stem))
        net.layer1[0].conv2.weight.copy_(_filled((4, 4, 3, 3), c2a))
        net.layer1[1].conv2.weight.copy_(_filled((4, 4, 3, 3), c2b))
    # Alone, the stem would lose channels 0 and 1, layer1.0.conv2 channels 2 and 3; the
    # group means are 0.625, 0.29, 0.375, 0.625: channels 1 and 2 go.
    assert filters_to_remove(stem, 0.5) == [0, 1]
    assert filters_to_remove(c2a, 0.5) == [2, 3]
    original = copy.deepcopy(net)
    (group,) = l1_filter(net, ["conv1", "layer1.0.conv2", "layer1.1.conv2"], 0.5)
    assert group.layers == ("conv1", "layer1.0.conv2", "layer1.1.conv2")
    assert group.removed == (1, 2)
    kept = [0, 3]
    assert torch.equal(net.conv1.weight, original.conv1.weight[kept])
    assert torch.equal(net.layer1[1].conv2.weight, original.layer1[1].conv2.weight[kept])
    assert torch.equal(net.layer1[0].conv1.weight, original.layer1[0].conv1.weight[:, kept])
    assert torch.equal(net.fc.weight, original.fc.weight[:, kept])


def test_tied_layers_listed_in_part_are_refused():
    net = create("resnet_cifar", stages=1, blocks=[2], widths=[4], in_channels=1, input_size=8)
    with pytest.raises(ConfigError, match="'layer1.0.conv2' shares its output channels with conv1"):
        l1_filter(net, ["layer1.0.conv2"], 0.5)
    with pytest.raises(ConfigError, match="'fc' is the model's output layer"):
        l1_filter(net, ["fc"], 0.5)
    assert net.conv1.out_channels == 4  # untouched


def _stage_layers(depth: int) -> tuple[list[str], list[str]]:
    n = (depth - 2) // 6
    residual = ["conv1", "layer2.0.shortcut.0", "layer3.0.shortcut.0"]
    residual += [f"layer{s}.{i}.conv2" for s in (1, 2, 3) for i in range(n)]
    inner = [f"layer{s}.{i}.conv1" for s in (1, 2, 3) for i in range(n)]
    return residual, inner


@pytest.mark.parametrize("depth", [20, 32, 56])
def test_thinned_resnet_equals_a_fresh_network_of_the_reduced_widths(depth):
    torch.manual_seed(depth)
    net = create(f"resnet{depth}")
    with torch.no_grad():  # running statistics that are not the defaults
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)
    original = copy.deepcopy(net)
    residual, inner = _stage_layers(depth)
    groups = l1_filter(net, residual + inner, 0.5)
    assert len(groups) == 3 + len(inner)  # one tied group per stage, one per inner conv
    assert {(g.before, g.after) for g in groups} == {(16, 8), (32, 16), (64, 32)}

    n = (depth - 2) // 6
    fresh = create("resnet_cifar", blocks=(n, n, n), widths=(8, 16, 32), shortcut="conv1x1").eval()
    state = net.state_dict()
    assert {k: v.shape for k, v in state.items()} == {
        k: v.shape for k, v in fresh.state_dict().items()
    }
    fresh.load_state_dict(state)
    x = torch.randn(2, 3, 32, 32)
    net.eval()
    torch.testing.assert_close(net(x), fresh(x), rtol=0, atol=0)

    # The kept filters are the original ones: outputs and inputs sliced alike.
    kept = {
        layer: [i for i in range(g.before) if i not in g.removed]
        for g in groups
        for layer in g.layers
    }
    previous = kept["conv1"]
    for s in (1, 2, 3):
        stage = kept["conv1"] if s == 1 else kept[f"layer{s}.0.shortcut.0"]
        for i in range(n):
            block_in = previous if i == 0 else stage
            for j, src in ((1, block_in), (2, kept[f"layer{s}.{i}.conv1"])):
                name = f"layer{s}.{i}.conv{j}"
                w0 = original.get_submodule(name).weight
                assert torch.equal(net.get_submodule(name).weight, w0[kept[name]][:, src])
        previous = stage
    assert torch.equal(net.fc.weight, original.fc.weight[:, previous])


def _randomised(name: str, **options) -> nn.Module:
    torch.manual_seed(0)
    net = create(name, num_classes=10, **options).eval()
    for m in net.modules():  # batch-norms that differ per channel, as after training
        if isinstance(m, nn.BatchNorm2d):
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.2, 0.2)
    return net


@pytest.mark.parametrize(
    ("name", "options"),
    [("resnet20", {}), ("mobilenet_v2", {"width_mult": 0.35}), ("ds_cnn", {"size": "S"})],
)
def test_group_importance_removes_what_torch_pruning_removes(name, options):
    import torch_pruning as tp

    from edgetrain import models

    net = _randomised(name, **options)
    example = torch.randn(2, *net.input_shape)
    theirs = copy.deepcopy(net)
    outputs = [theirs.get_submodule(n) for n in models.output_layers(theirs)]
    tp.pruner.MagnitudePruner(
        theirs,
        example,
        importance=tp.importance.GroupMagnitudeImportance(p=2),
        pruning_ratio=0.5,
        ignored_layers=outputs,
    ).step()
    ours = copy.deepcopy(net)
    layers = [n for n, m in ours.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    layers = [n for n in layers if n not in models.output_layers(ours)]
    l1_filter(ours, layers, 0.5, importance="group", example_input=example)
    mine, reference = ours.state_dict(), theirs.state_dict()
    assert mine.keys() == reference.keys()
    for key, value in reference.items():
        assert torch.equal(mine[key], value), key
    plain = copy.deepcopy(net)
    l1_filter(plain, layers, 0.5, example_input=example)  # Li et al.: another choice
    assert any(not torch.equal(plain.state_dict()[k], v) for k, v in mine.items())


def test_an_unknown_importance_is_one_line():
    with pytest.raises(ConfigError, match="unknown importance 'l2'.*choose one of: l1, group"):
        l1_filter(create("resnet20"), ["layer1.0.conv1"], 0.5, importance="l2")


class _Tokens(nn.Module):
    """Tokens through a residual self-attention (2 heads of 8) and a linear classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(6, 16)
        self.attn = nn.MultiheadAttention(16, 2, batch_first=True)
        self.fc = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        h = h + self.attn(h, h, h, need_weights=False)[0]
        return self.fc(h.mean(1))


def test_attention_loses_whole_heads_and_a_dead_head_goes_without_changing_outputs():
    torch.manual_seed(0)
    net = _Tokens().eval()
    head = slice(8, 16)  # head 1: its embedding channels, its output, its readers
    with torch.no_grad():
        net.embed.weight[head] = 0
        net.embed.bias[head] = 0
        net.attn.out_proj.weight[head] = 0
        net.attn.out_proj.bias[head] = 0
        net.attn.out_proj.weight[:, head] = 0
        net.fc.weight[:, head] = 0
    x = torch.randn(3, 5, 6)
    with torch.no_grad():
        before = net(x)
    [group] = l1_filter(net, ["embed"], 0.5, example_input=x[:1])
    assert group.removed == tuple(range(8, 16)) and group.after == 8
    assert (net.attn.num_heads, net.attn.head_dim, net.attn.embed_dim) == (1, 8, 8)
    with torch.no_grad():
        assert torch.allclose(net(x), before, atol=1e-5)


def test_vit_tiny_keeps_heads_of_equal_width_and_reopens_from_its_state_dict():
    from edgetrain.models.surgery import restore_architecture

    net = create("vit_tiny", depth=2).eval()
    layers = load_recipe(
        {
            "version": 1,
            "pruners": {"all": {"method": "l1_filter", "sparsity": 0.5, "layers": ["*"]}},
        }
    ).check(net, None)["all"]
    l1_filter(net, layers, 0.5)
    attention = [m for m in net.modules() if isinstance(m, nn.MultiheadAttention)]
    assert {(m.num_heads, m.head_dim, m.embed_dim) for m in attention} == {(2, 64, 128)}
    x = torch.randn(2, *net.input_shape)
    assert net(x).shape == (2, 10)
    fresh = create("vit_tiny", depth=2).eval()  # as a run reopens it: shapes from the state
    restore_architecture(fresh, net.state_dict())
    fresh.load_state_dict(net.state_dict())
    with torch.no_grad():
        assert torch.allclose(fresh(x), net(x), atol=1e-6)
    attention = [m for m in fresh.modules() if isinstance(m, nn.MultiheadAttention)]
    assert {(m.num_heads, m.head_dim) for m in attention} == {(2, 64)}
