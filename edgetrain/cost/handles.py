"""Per-op cost rules: a table of handles keyed by ATen op (the fvcore / flop_counter idea).

A handle turns one dispatched op (its arguments and output, shapes only) into
:class:`OpCounts`: the layer kind and its forward, input-gradient and weight-gradient
MACs for the whole batch, as the spec's tables define them:

=============  ==============================  ===============  ===============
kind           forward                         input gradient   weight gradient
=============  ==============================  ===============  ===============
conv           c_in*c_out*T_k/g + c_out*o      c_in*c_out*T_k/g c_in*c_out*T_k/g
linear         c_in*c_out + c_out              c_in*c_out       c_in*c_out
activation     c*i                             0                -
pool           c*i                             c*i              -
batchnorm      2*c*i                           2*c*i            2*c*i
add            c*i                             0                -
=============  ==============================  ===============  ===============

Ops that only move or reshape data (views, concatenation, padding, copies) cost nothing
and are listed in :data:`FREE_OPS`. Anything in neither table is *unsupported*: it is
reported, never silently counted as zero.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from edgetrain.cost.taps import kernel_taps

__all__ = ["FREE_OPS", "HANDLES", "KINDS", "VIEW_OPS", "OpCounts"]

aten = torch.ops.aten

KINDS = ("conv", "linear", "activation", "pool", "batchnorm", "add")


@dataclass(frozen=True)
class OpCounts:
    """What one op costs for the whole batch (MACs).

    ``products`` and ``dense`` are for the matrix products of conv and linear ops:
    ``products`` the multiplications counted in ``forward`` (border-aware, without bias
    adds), ``dense`` the same with every kernel tap, as fvcore, ptflops and
    Torch-Pruning count them (0 for every other kind).
    """

    kind: str
    forward: int
    input_grad: int
    weight_grad: int = 0
    products: int = 0
    dense: int = 0


Handle = Callable[[tuple[Any, ...], dict[str, Any], Any], OpCounts]


def _numel(t: Any) -> int:
    return int(t.numel()) if isinstance(t, torch.Tensor) else 0


def _conv(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> OpCounts:
    x, w, bias, stride, padding, dilation, transposed, _, groups = args[:9]
    if transposed:
        # Every input position is scattered through all taps; the weight is laid out as
        # (c_in, c_out/g, *k), so its trailing dims already hold c_out/g and the kernel.
        macs = x.shape[0] * x.shape[1] * math.prod(w.shape[1:]) * math.prod(x.shape[2:])
        dense = macs
    else:
        n, c_in = x.shape[0], x.shape[1]
        c_out = w.shape[0]
        taps = kernel_taps(x.shape[2:], w.shape[2:], stride, padding, dilation)
        macs = n * c_in * c_out * taps // groups
        dense = _numel(out) * math.prod(w.shape[1:])  # every tap at every output
    bias_adds = _numel(out) if bias is not None else 0
    return OpCounts("conv", macs + bias_adds, macs, macs, macs, dense)


def _addmm(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> OpCounts:
    bias, x, w = args[:3]
    macs = x.shape[0] * x.shape[1] * w.shape[1]
    return OpCounts("linear", macs + _numel(out), macs, macs, macs, macs)


def _mm(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> OpCounts:
    x, w = args[:2]
    macs = x.shape[0] * x.shape[1] * w.shape[1]
    return OpCounts("linear", macs, macs, macs, macs, macs)


def _bmm(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> OpCounts:
    x, w = args[:2]
    macs = x.shape[0] * x.shape[1] * x.shape[2] * w.shape[2]
    return OpCounts("linear", macs, macs, macs, macs, macs)


def _mv(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> OpCounts:
    m = args[0] if len(args) == 2 else args[1]  # mv(mat, vec) / addmv(bias, mat, vec)
    macs = m.shape[0] * m.shape[1]
    return OpCounts("linear", macs + (_numel(out) if len(args) > 2 else 0), macs, macs, macs, macs)


def _baddbmm(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> OpCounts:
    _, x, w = args[:3]
    macs = x.shape[0] * x.shape[1] * x.shape[2] * w.shape[2]
    return OpCounts("linear", macs + _numel(out), macs, macs, macs, macs)


def _embedding(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> OpCounts:
    # a lookup: no MACs forward; the weight gradient adds each output row into its slot
    return OpCounts("linear", 0, 0, _numel(out))


def _pointwise(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> OpCounts:
    """An elementwise function whose backward multiplies by its derivative (exp, pow,
    sqrt, clamp, where ...): one op per element each way."""
    first = out[0] if isinstance(out, tuple | list) else out
    return OpCounts("add", _numel(first), _numel(first))


def _weight_norm(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> OpCounts:
    """``g * v / ||v||``: a norm, a division and a product per weight element."""
    n = 3 * _numel(args[0])
    return OpCounts("add", n, n)


def _compare(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> OpCounts:
    """Comparisons and rounding: one op per element, no gradient flows back."""
    return OpCounts("add", _numel(out), 0)


def _reduction(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> OpCounts:
    """Sum, max, norm ... over some dims: one op per input element each way."""
    n = _numel(args[0])
    return OpCounts("pool", n, n)


def _bilinear(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> OpCounts:
    n = 4 * _numel(out)  # four taps per output position
    return OpCounts("pool", n, n)


def _activation(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> OpCounts:
    return OpCounts("activation", _numel(args[0]), 0)


def _pool(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> OpCounts:
    n = _numel(args[0])
    return OpCounts("pool", n, n)


def _batchnorm(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> OpCounts:
    n = 2 * _numel(args[0])
    return OpCounts("batchnorm", n, n, n)


def _eltwise(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> OpCounts:
    first = out[0] if isinstance(out, tuple | list) else out
    return OpCounts("add", _numel(first), 0)


HANDLES: dict[Any, Handle] = {
    aten.convolution: _conv,
    aten.addmm: _addmm,
    aten.mm: _mm,
    aten.bmm: _bmm,
    aten.baddbmm: _baddbmm,
    aten.mv: _mv,
    aten.addmv: _mv,
    aten.embedding: _embedding,
    aten._weight_norm_interface: _weight_norm,
    aten.upsample_bilinear2d: _bilinear,
    aten._upsample_bilinear2d_aa: _bilinear,
    # elementwise functions with a derivative to apply in the backward
    **{
        getattr(aten, name): _pointwise
        for name in (
            "pow",
            "sqrt",
            "rsqrt",
            "exp",
            "log",
            "abs",
            "neg",
            "reciprocal",
            "clamp",
            "clamp_min",
            "clamp_max",
            "clamp_",
            "clamp_min_",
            "where",
            "maximum",
            "minimum",
            "sin",
            "cos",
            "erf",
            "softplus",
            "log_sigmoid_forward",
            "masked_fill",
            "masked_fill_",
            "lerp",
            "addcmul",
            "addcdiv",
            "remainder",
            "fmod",
            "mul",
            "mul_",
            "div",
            "div_",
        )
        if hasattr(aten, name)
    },
    **{
        getattr(aten, name): _compare
        for name in (
            "gt",
            "lt",
            "ge",
            "le",
            "eq",
            "ne",
            "floor",
            "ceil",
            "round",
            "sign",
            "logical_and",
            "logical_or",
            "logical_not",
            "bitwise_and",
            "bitwise_or",
        )
        if hasattr(aten, name)
    },
    # reductions
    **{
        getattr(aten, name): _reduction
        for name in (
            "sum",
            "amax",
            "amin",
            "max",
            "min",
            "norm",
            "linalg_vector_norm",
            "var",
            "var_mean",
            "std",
            "std_mean",
            "prod",
            "logsumexp",
            "cumsum",
        )
        if hasattr(aten, name)
    },
    # elementwise activations
    aten.relu: _activation,
    aten.relu_: _activation,
    aten.hardtanh: _activation,  # ReLU6
    aten.hardtanh_: _activation,
    aten.leaky_relu: _activation,
    aten.leaky_relu_: _activation,
    aten._prelu_kernel: _activation,
    aten.gelu: _activation,
    aten.silu: _activation,
    aten.silu_: _activation,
    aten.sigmoid: _activation,
    aten.sigmoid_: _activation,
    aten.tanh: _activation,
    aten.tanh_: _activation,
    aten.hardswish: _activation,
    aten.hardswish_: _activation,
    aten.hardsigmoid: _activation,
    aten.elu: _activation,
    aten.elu_: _activation,
    aten._softmax: _activation,
    aten._log_softmax: _activation,
    # the softmax of scaled_dot_product_attention's math path (torch >= 2.5)
    **({aten._safe_softmax: _activation} if hasattr(aten, "_safe_softmax") else {}),
    # pooling
    aten.max_pool2d_with_indices: _pool,
    aten.max_pool3d_with_indices: _pool,
    aten.avg_pool2d: _pool,
    aten.avg_pool3d: _pool,
    aten._adaptive_avg_pool2d: _pool,
    aten._adaptive_avg_pool3d: _pool,
    aten.adaptive_max_pool2d: _pool,
    aten.mean: _pool,  # global average pooling written as x.mean(dims)
    # normalisation
    aten._native_batch_norm_legit_no_training: _batchnorm,
    aten._native_batch_norm_legit: _batchnorm,
    aten._native_batch_norm_legit_functional: _batchnorm,
    aten.native_batch_norm: _batchnorm,
    aten.native_layer_norm: _batchnorm,
    aten.native_group_norm: _batchnorm,
    # sums of activations (residual adds): the gradient passes through unchanged
    aten.add: _eltwise,
    aten.add_: _eltwise,
    aten.sub: _eltwise,
    aten.sub_: _eltwise,
}

# Ops whose output shares its input's storage (no new buffer).
VIEW_OPS = frozenset(
    {
        aten.view,
        aten._unsafe_view,
        aten._reshape_alias,
        aten.t,
        aten.transpose,
        aten.permute,
        aten.expand,
        aten.slice,
        aten.select,
        aten.unsqueeze,
        aten.squeeze,
        aten.alias,
        aten.as_strided,
        aten.detach,
        aten.unflatten,
        aten.split,
        aten.split_with_sizes,
        aten.unsafe_split,  # a recurrent layer's gates
        aten.unsafe_split_with_sizes,
        aten.unsafe_chunk,
        aten.transpose_,  # in place on the metadata only
        aten.t_,
        aten.squeeze_,
        aten.unsqueeze_,
        aten.chunk,
        aten.unbind,
        aten.narrow,
        aten.lift_fresh,
    }
)

# Ops that cost no MACs: data movement, copies, constants.
FREE_OPS = VIEW_OPS | frozenset(
    {
        aten.clone,
        aten.cat,
        aten.stack,
        aten.constant_pad_nd,
        aten._to_copy,
        aten.copy_,
        aten.empty_like,
        aten.zeros_like,
        aten.ones_like,
        aten.zeros,
        aten.ones,
        aten.empty,
        aten.full,
        aten.fill_,
        aten.zero_,
        aten.new_zeros,
        aten.new_empty,
        aten.new_full,
        aten.scalar_tensor,
        aten.arange,
        aten.contiguous,
        aten.native_dropout,
        aten.flip,
        aten.roll,
        aten.repeat,
        aten.index_select,
        aten.gather,
        aten.pad,
        aten.reflection_pad1d,
        aten.reflection_pad2d,
        aten.replication_pad1d,
        aten.replication_pad2d,
        aten.upsample_nearest2d,
        aten.detach_,
        aten.pixel_shuffle,
        aten.pixel_unshuffle,
        aten.im2col,
        aten.col2im,
    }
)
