"""Activation patterns (APs): which units of a ReLU layer are on for an input.

The AP of an input at a ReLU layer is the bit vector ``pre-activation > 0``; every
spatial position of a conv layer is one sample, so an ``(N, C, H, W)`` input gives
``N*H*W`` patterns of ``C`` bits. Watching how many distinct patterns a data set
produces, and how they move during training, shows how much a step really changed the
network's discrete decisions (activation regions as in Hanin & Rolnick, "Deep ReLU
Networks Have Surprisingly Few Activation Patterns", NeurIPS 2019).

Patterns are read by a forward *pre*-hook on each activation module (so in-place ReLUs
are seen before they overwrite their input), which packs the bits into int64 words, 64
channels per word (:func:`pack_bits`, :func:`pack_pre_activation`); :func:`hash_words`
turns the words of a sample into one int64 key that is the same on every device and in
every run. :func:`capture_patterns` returns the packed patterns of one forward pass;
:class:`~edgetrain.diagnostics.recorder.PatternRecorder` counts them over many.

Activations written as functions (``F.relu(x)``, ``F.gelu(x)``) are sites too, found by
one meta-device forward (:mod:`edgetrain.diagnostics.sites`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from edgetrain.diagnostics.sites import (
    ACTIVATION_TYPES,
    ActivationMarker,
    ActivationWatch,
    activation_layers,
    activation_layouts,
)

__all__ = [
    "ACTIVATION_TYPES",
    "ActivationMarker",
    "activation_layers",
    "capture_patterns",
    "hash_words",
    "pack_bits",
    "activation_layouts",
    "pack_pre_activation",
    "pattern_samples",
]

_WORD_BITS = 64


def pattern_samples(pre_activation: torch.Tensor) -> torch.Tensor:
    """Bool APs ``(samples, channels)`` of a pre-activation with channels on dim 1.

    ``(N, C)`` stays; ``(N, C, *spatial)`` gives one sample per position,
    ``(N * prod(spatial), C)``.
    """
    on = pre_activation.detach() > 0
    if on.dim() == 1:
        return on.unsqueeze(1)
    if on.dim() > 2:
        on = on.movedim(1, -1)
    return on.reshape(-1, on.shape[-1])


def pack_bits(bits: torch.Tensor) -> torch.Tensor:
    """Pack bool rows ``(S, C)`` into int64 words ``(S, ceil(C / 64))``.

    Channel ``c`` is bit ``c % 64`` of word ``c // 64`` (bit 63 makes a word negative);
    missing channels of the last word are 0.

    Example:
        >>> pack_bits(torch.tensor([[True, False, True], [False, True, False]]))
        tensor([[5],
                [2]])
    """
    if bits.dim() != 2:
        raise ValueError(f"pack_bits expects (samples, channels), got shape {tuple(bits.shape)}")
    return pack_pre_activation(bits)


def pack_pre_activation(pre_activation: torch.Tensor) -> torch.Tensor:
    """Packed APs ``(samples, words)`` straight from a pre-activation, channels on dim 1.

    The same words as ``pack_bits(pattern_samples(x))``, about 8x faster on conv
    outputs: bits are gathered into bytes in the tensor's own layout (channel ``c`` is
    bit ``c % 8`` of byte ``c // 8``), and only the 8x smaller byte tensor is moved to
    sample-major order, where eight little-endian bytes are one int64 word.
    """
    x = pre_activation.detach()
    if x.dim() == 1:
        x = x.unsqueeze(1)
    channels = x.shape[1]
    words = max(1, math.ceil(channels / _WORD_BITS))
    on = (x > 0).view(torch.uint8)  # one pass over the activation; 0/1 bytes
    octets = torch.zeros((x.shape[0], words * 8, *x.shape[2:]), dtype=torch.uint8, device=x.device)
    for bit in range(min(8, channels)):
        part = on[:, bit::8]  # channels bit, bit + 8, ...: bit ``bit`` of bytes 0, 1, ...
        octets[:, : part.shape[1]] |= part << bit if bit else part
    # reshape first: a (N, 1, 1, 8) tensor can be "contiguous" with strides that no
    # byte-to-int64 view accepts
    packed = octets.movedim(1, -1).reshape(-1, words * 8).contiguous().view(torch.int64)
    if not _LITTLE_ENDIAN:
        packed = _byteswap(packed)
    return packed


def _byteswap(words: torch.Tensor) -> torch.Tensor:
    shape = words.shape
    swapped = words.view(torch.uint8).reshape(-1, 8).flip(-1).contiguous()
    return swapped.view(torch.int64).reshape(shape)


_LITTLE_ENDIAN = torch.tensor([1], dtype=torch.int64).view(torch.uint8)[0].item() == 1


def _signed(value: int) -> int:
    """A 64-bit constant as the int64 torch stores (two's complement)."""
    return value - (1 << 64) if value >= 1 << 63 else value


_MIX1 = _signed(0xFF51AFD7ED558CCD)
_MIX2 = _signed(0xC4CEB9FE1A85EC53)
_GOLDEN = _signed(0x9E3779B97F4A7C15)
_LOW31 = (1 << 31) - 1


def _fmix64_(x: torch.Tensor) -> torch.Tensor:
    """MurmurHash3's 64-bit finaliser, in place (multiplications wrap modulo 2^64;
    ``(x >> 33) & _LOW31`` is the logical shift torch lacks for int64)."""
    x ^= (x >> 33) & _LOW31
    x *= _MIX1
    x ^= (x >> 33) & _LOW31
    x *= _MIX2
    x ^= (x >> 33) & _LOW31
    return x


def hash_words(words: torch.Tensor) -> torch.Tensor:
    """One int64 key per row of packed words ``(S, W)``: a fixed 64-bit hash.

    ``key = fmix64(... fmix64(fmix64(G ^ w_0) ^ w_1) ... ^ w_last)`` with MurmurHash3's
    finaliser ``fmix64`` (a bijection of 64-bit integers) and a fixed odd constant
    ``G``. The same words always give the same key, on every device and in every run,
    so bucket tables of two measurements compare bucket by bucket.

    Example:
        >>> keys = hash_words(torch.tensor([[5], [2], [5]]))
        >>> bool(keys[0] == keys[2]) and bool(keys[0] != keys[1])
        True
    """
    if words.dim() != 2:
        raise ValueError(f"hash_words expects (samples, words), got shape {tuple(words.shape)}")
    key = words[:, 0] ^ _GOLDEN  # a new tensor: the in-place mixing below is safe
    _fmix64_(key)
    for w in range(1, words.shape[1]):
        key ^= words[:, w]
        _fmix64_(key)
    return key


@torch.no_grad()
def capture_patterns(
    model: nn.Module, inputs: torch.Tensor, layers: Iterable[str] | None = None
) -> dict[str, torch.Tensor]:
    """Packed APs of one forward pass: layer -> int64 words ``(samples, words)``.

    The model runs as it is (train or eval mode, no gradients). An activation site
    reached several times in one pass contributes the samples of every call, in order.
    Activations after linear, recurrent or attention layers give one pattern per token.

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 3), nn.ReLU())
        >>> capture_patterns(net, torch.randn(5, 2))["1"].shape
        torch.Size([5, 1])
    """
    shape = tuple(inputs.shape[1:])
    sites = activation_layers(model, layers, input_shape=shape)
    layouts = activation_layouts(model, sites, shape)
    parts: dict[str, list[torch.Tensor]] = {name: [] for name in sites}

    def seen(name: str, x: torch.Tensor) -> None:
        if x.dim() > 2 and layouts[name] == -1:
            x = x.movedim(-1, 1)
        parts[name].append(pack_pre_activation(x))

    watch = ActivationWatch(model, sites, seen)
    try:
        model(inputs)
    finally:
        watch.remove()
    return {n: torch.cat(p) for n, p in parts.items() if p}
