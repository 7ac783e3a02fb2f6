"""``fold_batchnorm``: eval-mode outputs are unchanged and batch-norms become identities."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from edgetrain.finetune import fold_batchnorm
from edgetrain.models import create

pytestmark = pytest.mark.usefixtures("single_thread")

_BN = nn.modules.batchnorm._BatchNorm


def _randomise_batchnorms(model: nn.Module, seed: int = 0) -> None:
    """Statistics and affine parameters far from the identity, so a wrong fold shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, _BN):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.5)
                m.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.5)


def _relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.mark.parametrize(
    ("name", "options", "count"),
    [("resnet20", {}, 21), ("fcn1d", {"length": 32}, 3), ("vgg11_b", {"input_size": 32}, 9)],
)
def test_folding_keeps_eval_outputs_and_replaces_every_batchnorm(name, options, count):
    torch.manual_seed(0)
    model = create(name, **options)
    _randomise_batchnorms(model)
    batchnorms = [n for n, m in model.named_modules() if isinstance(m, _BN)]
    assert len(batchnorms) == count
    model.eval()
    x = torch.randn(2, *model.input_shape)
    with torch.no_grad():
        before = model(x)

    folded = fold_batchnorm(model)

    assert sorted(folded) == sorted(batchnorms)
    modules = dict(model.named_modules())
    assert all(isinstance(modules[n], nn.Identity) for n in folded)
    assert not any(isinstance(m, _BN) for m in model.modules())
    model.eval()
    with torch.no_grad():
        after = model(x)
    assert _relative_error(after, before) < 1e-5


def test_a_conv_without_bias_gains_one_holding_the_shift():
    model = create("vgg11_b", input_size=32)
    assert model.conv1.bias is None
    _randomise_batchnorms(model)
    bn = model.bn1
    expected_scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    expected_bias = bn.bias - bn.running_mean * expected_scale
    weight = model.conv1.weight.detach().clone()
    fold_batchnorm(model)
    assert isinstance(model.conv1.bias, nn.Parameter)
    assert model.conv1.bias.requires_grad
    torch.testing.assert_close(model.conv1.bias.detach(), expected_bias.detach())
    torch.testing.assert_close(
        model.conv1.weight.detach(), weight * expected_scale.detach().reshape(-1, 1, 1, 1)
    )
    assert any(p is model.conv1.bias for p in model.parameters())


def test_a_model_without_input_shape_needs_one():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4))
    with pytest.raises(ValueError, match="needs input_shape"):
        fold_batchnorm(model)
    assert fold_batchnorm(model, (1, 8, 8)) == ["1"]
    assert isinstance(model[1], nn.Identity)


def test_linear_batchnorm1d_pair_is_folded():
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 5), nn.BatchNorm1d(5), nn.ReLU())
    _randomise_batchnorms(model, seed=3)
    x = torch.randn(4, 3, 4)
    model.eval()
    with torch.no_grad():
        before = model(x)
    assert fold_batchnorm(model, (3, 4)) == ["2"]
    with torch.no_grad():
        assert _relative_error(model(x), before) < 1e-5


def test_a_batchnorm_after_a_nonlinearity_is_not_folded():
    x = torch.randn(2, 1, 8, 8)
    for seed, (first, second) in enumerate(
        [(nn.ReLU(), nn.Tanh()), (nn.Tanh(), nn.ReLU()), (nn.Sigmoid(), nn.Tanh())]
    ):
        torch.manual_seed(seed)
        model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), first, second, nn.BatchNorm2d(4))
        _randomise_batchnorms(model, seed)
        model.eval()
        with torch.no_grad():
            before = model(x)
        assert fold_batchnorm(model, (1, 8, 8)) == []
        with torch.no_grad():
            assert _relative_error(model(x), before) < 1e-5


class _DenseBlock(nn.Module):
    """conv -> bn, and the conv's output also concatenated (DenseNet-style)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.head = nn.Conv2d(8, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return self.head(torch.cat([torch.relu(self.bn(y)), y], dim=1))


class _PreActivation(nn.Module):
    """out = conv(x); out + relu(bn(out)): the conv's output is the residual too."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(4)  # this pair is a plain conv-BN and folds

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return self.bn2(self.conv2(out + torch.relu(self.bn(out))))


class _Shared(nn.Module):
    """One conv-BN pair run twice."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 3, padding=1)
        self.bn = nn.BatchNorm2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(self.bn(self.conv(x))))


@pytest.mark.parametrize(
    ("model", "folded", "needle"),
    [
        (_DenseBlock, [], "the output of 'conv' also feeds another op"),
        (_PreActivation, ["bn2"], "the output of 'conv' also feeds another op"),
        (_Shared, [], "runs more than once per forward"),
    ],
)
def test_a_shared_output_is_never_folded(model, folded, needle) -> None:
    torch.manual_seed(0)
    net = model()
    for m in net.modules():  # statistics far from identity, so a wrong fold shows
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
            m.weight.data.uniform_(0.5, 2)
    net.eval()
    x = torch.randn(3, 2, 6, 6)
    before = net(x)
    with pytest.warns(RuntimeWarning, match=needle):
        assert fold_batchnorm(net, (2, 6, 6)) == folded
    assert torch.allclose(net(x), before, atol=1e-5)
