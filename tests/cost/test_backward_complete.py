"""The backward is complete: every product of the step is counted, checked against what
autograd runs (``torch.utils.flop_counter`` counts each matrix product of a real
backward), and nothing the model computes is left out silently."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from edgetrain.cost import ALL, analyze
from edgetrain.errors import EdgetrainError


class _AttentionBlock(nn.Module):
    """Single-head self-attention written with bmm (q k^T and attn v: activation x
    activation), no biases, so every product is a matrix product."""

    def __init__(self, d: int = 16) -> None:
        super().__init__()
        self.q = nn.Linear(d, d, bias=False)
        self.k = nn.Linear(d, d, bias=False)
        self.v = nn.Linear(d, d, bias=False)
        self.out = nn.Linear(d, d, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scores = torch.bmm(self.q(x), self.k(x).transpose(1, 2))
        return self.out(torch.bmm(scores, self.v(x)))


class _Einsum(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(8, 8, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.proj(x)
        return torch.einsum("bij,bkj->bik", h, h)


def _autograd_backward_macs(model: nn.Module, shape: tuple[int, ...]) -> int:
    """MACs of the matrix products autograd runs in the backward of a real step."""
    x = torch.randn(2, *shape)
    out = model(x)
    with FlopCounterMode(display=False) as counter:
        out.sum().backward()
    return counter.get_total_flops() // 2


@pytest.mark.parametrize(
    ("cls", "shape"), [(_AttentionBlock, (6, 16)), (_Einsum, (5, 8))], ids=["attention", "einsum"]
)
def test_activation_products_get_both_gradients_as_autograd_computes(cls, shape):
    model = cls()
    step = analyze(model, shape, plans=[ALL], batch_size=2, memory="layerwise").steps()[0]
    rows = analyze(model, shape, plans=[ALL], batch_size=2, memory="layerwise").by_layer(0)
    products = sum(r.input_grad + r.weight_grad for r in rows if r.kind == "linear")
    assert products == _autograd_backward_macs(model, shape)
    assert step.input_grad_macs >= products - step.weight_grad_macs


def test_a_weight_norm_layer_charges_its_parameters_gradient_and_update():
    model = nn.Sequential(
        nn.utils.parametrizations.weight_norm(nn.Linear(8, 4)), nn.ReLU(), nn.Linear(4, 2)
    )
    report = analyze(model, (8,), plans=[ALL, "first:1"], memory="layerwise")
    assert report.layer_order == ["0", "2"]
    every, first = report.steps()
    assert every.update_macs == sum(p.numel() for p in model.parameters())
    assert first.update_macs == sum(p.numel() for p in model[0].parameters())
    # the addmm's weight gradient (4 x 8) plus g * v / |v| for each of the 32 weights
    assert first.weight_grad_macs == 32 + 3 * 32


def test_a_pruning_mask_parametrization_is_charged_like_the_plain_layer():
    class Mask(nn.Module):
        def __init__(self, shape: tuple[int, ...]) -> None:
            super().__init__()
            self.register_buffer("mask", (torch.arange(math.prod(shape)) % 2).view(shape))

        def forward(self, w: torch.Tensor) -> torch.Tensor:
            return w * self.mask

    plain = nn.Linear(8, 4)
    masked = nn.Linear(8, 4)
    nn.utils.parametrize.register_parametrization(masked, "weight", Mask((4, 8)))
    a = analyze(plain, (8,), plans=[ALL], memory="layerwise").steps()[0]
    b = analyze(masked, (8,), plans=[ALL], memory="layerwise").steps()[0]
    assert b.update_macs == a.update_macs == 8 * 4 + 4
    assert b.weight_grad_macs == a.weight_grad_macs + 32  # the mask's product backward


def test_a_recurrent_layer_counts_every_time_step_and_the_initial_state():
    model = nn.LSTM(6, 5, batch_first=True)
    steps, batch = 7, 3
    report = analyze(model, (steps, 6), plans=[ALL], batch_size=batch, memory="layerwise")
    gates = 4 * 5
    # input and hidden projections of every step (the first one's from h0 = 0)
    products = steps * batch * gates * (6 + 5)
    assert report.total().forward_macs >= products
    assert report.steps()[0].update_macs == sum(p.numel() for p in model.parameters())
    assert not report.unsupported


def test_matrix_vector_products_are_counted():
    class MatVec(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.stack([torch.addmv(self.fc.bias, self.fc.weight, r) for r in x])

    step = analyze(MatVec(), (4,), plans=[ALL], batch_size=2, memory="layerwise").steps()[0]
    assert step.forward_macs == 2 * (12 + 3)
    assert step.weight_grad_macs == 2 * 12 and step.update_macs == 15


class _Everyday(nn.Module):
    """Ops a model may use beyond conv/linear: embedding, upsampling, pixel shuffle,
    elementwise functions and reductions."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(50, 16)
        self.conv = nn.Conv2d(4, 16, 3, padding=1)
        self.fc = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(x.flatten(1)[:, :4].abs().long() % 50)  # (B, 4, 16)
        image = tokens.view(-1, 4, 4, 4)
        up = nn.functional.interpolate(image, scale_factor=2, mode="bilinear")
        h = nn.functional.pixel_shuffle(self.conv(up), 2)  # (B, 4, 16, 16)
        h = torch.clamp(h, -3, 3).pow(2).sqrt() + torch.exp(-h.abs())
        pooled = torch.where(h > 1, h, h * 0.5).sum(dim=(2, 3)) / 256
        return self.fc(pooled.repeat(1, 4))


def test_everyday_ops_are_counted_and_strict_finds_no_silent_zero():
    report = analyze(_Everyday(), (8,), plans=[ALL], strict=True, memory="layerwise")
    assert not report.unsupported
    ops = {row.op for row in report.by_layer(0)}
    assert {"embedding", "upsample_bilinear2d", "pow", "sqrt", "exp", "clamp", "sum"} <= ops
    # the embedding is a weight layer: trained, updated
    (embedding,) = [r for r in report.by_layer(0) if r.op == "embedding"]
    assert embedding.trained and embedding.update == 50 * 16


def test_strict_mode_fails_on_an_op_it_cannot_count():
    class Sorts(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(8, 8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.sort(self.fc(x), dim=-1).values

    with pytest.raises(EdgetrainError, match=r"unsupported ops: sort \(in \(model\)\)"):
        analyze(Sorts(), (8,), strict=True)


@pytest.mark.parametrize("name", ["vgg_small", "resnet8", "ds_cnn", "mobilenet_v2"])
def test_the_dense_convention_counts_what_pytorch_counts_forward(name):
    """``macs="dense"``: conv and linear products with every kernel tap, as
    FlopCounterMode counts a real forward (FLOPs / 2)."""
    from edgetrain.models import create

    model = create(name).eval()
    shape = tuple(model.input_shape)
    dense = analyze(model, shape, memory="layerwise", macs="dense").total().forward_macs
    with FlopCounterMode(display=False) as counter:
        model(torch.randn(1, *shape))
    assert dense == counter.get_total_flops() // 2
    border = analyze(model, shape, memory="layerwise").total().forward_macs
    assert border != dense  # border taps, and activations/norms/pools, differ


def test_the_dense_backward_matches_autograd_on_a_plain_cnn():
    from edgetrain.models import create

    model = create("resnet8")
    shape = tuple(model.input_shape)
    step = analyze(model, shape, plans=[ALL], memory="layerwise", macs="dense").steps()[0]
    out = model(torch.randn(1, *shape))
    with FlopCounterMode(display=False) as counter:
        out.sum().backward()
    assert step.input_grad_macs + step.weight_grad_macs == counter.get_total_flops() // 2
