"""Border-aware kernel taps ``T_k`` of a convolution.

Near a padded border a kernel does not apply all of its taps: the ones that fall on
padding multiply zeros and are not computed. For one spatial dimension with input
length ``i``, kernel ``k``, stride ``s``, padding ``p`` and dilation ``d``::

    t = sum over output positions o of #{ j in [0, k) : 0 <= o*s - p + j*d < i }

and ``T_k`` is the product of ``t`` over the spatial dimensions. With ``p = 0`` it equals
``k * o``; for ``k = 3, p = 1, s = 1`` it is ``3i - 2``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["conv_output_length", "kernel_taps", "taps_1d"]


def conv_output_length(i: int, k: int, s: int = 1, p: int = 0, d: int = 1) -> int:
    """Output length of a convolution along one dimension (PyTorch's formula)."""
    return (i + 2 * p - d * (k - 1) - 1) // s + 1


def taps_1d(i: int, k: int, s: int = 1, p: int = 0, d: int = 1) -> int:
    """Kernel taps that land inside the input, summed over all output positions.

    Example:
        >>> taps_1d(32, 3, 1, 1)  # 3*32 - 2
        94
        >>> taps_1d(32, 3, 1, 0) == 3 * 30
        True
    """
    if min(i, k, s, d) < 1 or p < 0 or conv_output_length(i, k, s, p, d) < 1:
        raise ValueError(f"invalid convolution geometry i={i} k={k} s={s} p={p} d={d}")
    out = conv_output_length(i, k, s, p, d)
    total = 0
    for o in range(out):
        start = o * s - p
        first = max(0, math.ceil(-start / d))  # smallest j with start + j*d >= 0
        last = min(k - 1, (i - 1 - start) // d)  # largest j with start + j*d <= i-1
        total += max(0, last - first + 1)
    return total


def kernel_taps(
    spatial: Sequence[int],
    kernel: Sequence[int],
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
) -> int:
    """``T_k``: the product of :func:`taps_1d` over the spatial dimensions.

    Example:
        >>> kernel_taps((32, 32), (3, 3), (1, 1), (1, 1), (1, 1)) == (3 * 32 - 2) ** 2
        True
    """
    n = len(spatial)
    if not (len(kernel) == len(stride) == len(padding) == len(dilation) == n):
        raise ValueError("kernel, stride, padding and dilation need one entry per dimension")
    result = 1
    for args in zip(spatial, kernel, stride, padding, dilation, strict=True):
        result *= taps_1d(*args)
    return result
