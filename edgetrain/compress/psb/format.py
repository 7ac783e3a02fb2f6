"""The number format of progressive stochastic binarization (PSB).

After the paper "Progressive Stochastic Binarization of Deep Networks". A weight
``w != 0`` is written ``w = s * 2^e * (1 + p)`` with ``s`` its sign, ``e = floor(log2|w|)``
and ``p = |w| / 2^e - 1`` in ``[0, 1)``. One *sample* of it is ``s * 2^e * (1 + B)`` with
``B ~ Bernoulli(p)``: a signed power of two (``2^e`` or ``2^(e+1)``), so multiplying an
activation by it is a shift, and its expectation is ``w``. With ``n`` samples the layer
uses ``s * 2^e * (1 + K / n)``, ``K ~ Binomial(n, p)`` (the mean of ``n`` one-sample
weights): still unbiased, with relative standard deviation
``sqrt(p (1 - p) / n) / (1 + p) <= 1 / sqrt(8 n)`` (the worst case is ``p = 1/3``).
Zero weights stay zero; exact powers of two (``p = 0``) are never random.

Around the format: ``p`` rounded to fewer bits (:func:`quantize_p`), 16-bit fixed-point
intermediates (:func:`to_fixed_point`), magnitude pruning (:func:`prune_mask`), and
:class:`PSBConfig`, the settings of a PSB layer (:mod:`edgetrain.compress.psb`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from edgetrain.errors import ConfigError

__all__ = [
    "FIXED_POINT_BITS",
    "PSBConfig",
    "decompose",
    "max_relative_std",
    "prune_mask",
    "quantize_p",
    "relative_std",
    "sample_weights",
    "to_fixed_point",
]

FIXED_POINT_BITS = 16


@dataclass(frozen=True)
class PSBConfig:
    """How a PSB layer samples and rounds (the options are described in
    :mod:`edgetrain.compress.psb`).

    Attributes:
        samples: weight samples per forward (``n``); 0 uses the expected weight.
        fixed_point: fractional bits of the 16-bit fixed-point intermediates, or None
            for float.
        prune: fraction of the smallest-magnitude weights set to zero, in ``[0, 1)``.
        p_bits: bits kept of ``p``, or None for all.

    Raises:
        ConfigError: one line naming the bad option and its valid range.
    """

    samples: int = 8
    fixed_point: int | None = None
    prune: float = 0.0
    p_bits: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.samples, bool) or not isinstance(self.samples, int) or self.samples < 0:
            raise ConfigError(
                f"psb samples must be an integer >= 0 (weight samples per forward; 0 uses the "
                f"expected weights), got {self.samples!r}"
            )
        frac = self.fixed_point
        if frac is not None and (
            isinstance(frac, bool) or not isinstance(frac, int) or not 0 <= frac < FIXED_POINT_BITS
        ):
            raise ConfigError(
                f"psb fixed_point must be the number of fractional bits of the 16-bit format, "
                f"an integer in [0, {FIXED_POINT_BITS - 1}] (8 is Q7.8), or null for float; "
                f"got {frac!r}"
            )
        if isinstance(self.prune, bool) or not isinstance(self.prune, int | float):
            raise ConfigError(f"psb prune must be a fraction in [0, 1), got {self.prune!r}")
        if not 0.0 <= self.prune < 1.0:
            raise ConfigError(
                f"psb prune must be in [0, 1) (the fraction of each layer's smallest weights "
                f"set to zero, e.g. 0.25 or 0.5), got {self.prune!r}"
            )
        bits = self.p_bits
        if bits is not None and (
            isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 16
        ):
            raise ConfigError(
                f"psb p_bits must be an integer in [1, 16] (bits kept of the mantissa "
                f"fraction p, e.g. 4, 2 or 1) or null for all; got {bits!r}"
            )


def decompose(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(s, e, p)`` with ``w = s * 2^e * (1 + p)``, ``s`` in {-1, 0, 1}, ``p`` in [0, 1).

    ``e`` is returned as a float tensor of integers; zeros get ``s = 0``, ``p = 0``.

    Example:
        >>> s, e, p = decompose(torch.tensor([3.0, -0.375, 0.0]))
        >>> s.tolist(), e.tolist(), p.tolist()
        ([1.0, -1.0, 0.0], [1.0, -2.0, -1.0], [0.5, 0.5, 0.0])
    """
    mantissa, exponent = torch.frexp(w.abs())  # |w| = m * 2^x exactly, m in [0.5, 1)
    p = torch.where(w == 0, torch.zeros_like(mantissa), 2 * mantissa - 1)
    return torch.sign(w), (exponent - 1).to(w.dtype), p


def quantize_p(p: torch.Tensor, bits: int) -> torch.Tensor:
    """``p`` rounded to the nearest multiple of ``2^-bits`` (1.0 carries into ``e``)."""
    scale = float(2**bits)
    return torch.round(p * scale) / scale


def sample_weights(
    w: torch.Tensor,
    samples: int,
    p_bits: int | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One draw of ``s * 2^e * (1 + Binomial(samples, p) / samples)`` for every weight.

    Args:
        w: real weights.
        samples: ``n``; 0 returns the expected value (``w`` with ``p`` rounded).
        p_bits: round ``p`` to this many bits first.
        generator: random source (default: torch's global one).

    Example:
        >>> sample_weights(torch.tensor([0.5, -2.0, 0.0]), samples=4).tolist()
        [0.5, -2.0, 0.0]
    """
    return _draw(*_split(w, p_bits), samples, generator)


def _split(w: torch.Tensor, p_bits: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(s * 2^e, p)`` of ``w``, with ``p`` rounded to ``p_bits`` bits."""
    s, e, p = decompose(w)
    if p_bits is not None:
        p = quantize_p(p, p_bits)
    return torch.ldexp(s, e), p


# Up to this many samples, summing Bernoulli draws is cheaper than torch.binomial.
_BERNOULLI_MAX = 8


def _draw(
    base: torch.Tensor,
    p: torch.Tensor,
    samples: int,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """``base * (1 + K / samples)`` with ``K ~ Binomial(samples, p)`` (``p`` when 0)."""
    if samples == 0:
        return base * (1 + p)
    if samples <= _BERNOULLI_MAX:
        hits = torch.bernoulli(p.expand(samples, *p.shape), generator=generator).sum(0)
    else:
        hits = torch.binomial(torch.full_like(p, float(samples)), p, generator=generator)
    return base * (1 + hits / samples)


def relative_std(w: torch.Tensor, samples: int) -> torch.Tensor:
    """Standard deviation of an ``samples``-sample weight over ``|w|``: ``sqrt(p(1-p)/n)/(1+p)``
    (0 for zero weights)."""
    _, _, p = decompose(w)
    return torch.sqrt(p * (1 - p) / samples) / (1 + p)


def max_relative_std(samples: int) -> float:
    """The bound ``1 / sqrt(8 n)`` on :func:`relative_std` (reached at ``p = 1/3``)."""
    return 1.0 / math.sqrt(8 * samples)


def to_fixed_point(x: torch.Tensor, frac_bits: int, bits: int = FIXED_POINT_BITS) -> torch.Tensor:
    """``x`` in the signed ``Q(bits-1-f).f`` format (round to nearest, saturate), with a
    straight-through gradient.

    Example:
        >>> to_fixed_point(torch.tensor([0.3, 200.0, -1e4]), 8).tolist()
        [0.30078125, 127.99609375, -128.0]
    """
    scale = float(2**frac_bits)
    limit = float(2 ** (bits - 1))
    q = torch.clamp(torch.round(x.detach() * scale), -limit, limit - 1) / scale
    return x + (q - x).detach()


def prune_mask(w: torch.Tensor, fraction: float) -> torch.Tensor:
    """Boolean mask keeping all but the ``floor(fraction * numel)`` smallest ``|w|``."""
    mask = torch.ones_like(w, dtype=torch.bool)
    k = int(fraction * w.numel())
    if k:
        drop = w.detach().abs().flatten().topk(k, largest=False).indices
        mask.view(-1)[drop] = False
    return mask
