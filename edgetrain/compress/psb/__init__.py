"""Progressive stochastic binarization (PSB) of conv and linear layers.

After the paper "Progressive Stochastic Binarization of Deep Networks": every weight is
replaced at each forward by the mean of ``n`` random signed powers of two whose
expectation is the weight (the number format is in :mod:`edgetrain.compress.psb_format`).

:class:`PSBConv2d` and :class:`PSBLinear` are ``nn.Conv2d`` / ``nn.Linear`` that keep the
real weights as their parameters and draw a fresh weight sample at every forward, in
training and in evaluation alike. Options
(:class:`~edgetrain.compress.psb_format.PSBConfig`):

- ``samples``: ``n`` above; ``0`` uses the expected weight (the limit of many samples).
- ``fixed_point``: the fractional bits ``f`` of 16-bit fixed-point intermediates. The
  activations entering and leaving each PSB layer, and its bias, are rounded to the
  nearest multiple of ``2^-f`` and saturated to the int16 range, i.e. the signed
  ``Q(15-f).f`` format (``f = 8``: Q7.8, range ``[-128, 128)``, step ``1/256``). Products
  and the accumulator are exact, as in a wide accumulator that is rounded once when the
  layer's output is stored.
- ``prune``: the fraction of each layer's smallest-magnitude weights set to zero (for
  example 0.25 or 0.5); they stay zero through fine-tuning.
- ``p_bits``: ``p`` rounded to ``p_bits`` bits (multiples of ``2^-p_bits``; rounding up
  to 1 carries into the exponent), e.g. 4, 2 or 1.

Training runs through a straight-through estimator: the forward uses the sample, the
backward passes the gradient to the real weights as if the sample were the real weight
(rounding to fixed point is passed straight through too).

:func:`to_psb` converts a trained model in place, folding batch-norm into the preceding
layers first; :func:`operation_cost` counts the shifts and adds one forward needs. The
recipe's number format ``psb`` (``number_format: {method: psb, samples: 8}``, applied by
:func:`~edgetrain.compress.apply` after pruning) is registered in
:data:`~edgetrain.compress.number_formats.NUMBER_FORMATS`.

Modules: ``format`` (the number format), ``layers`` (PSB layers, :func:`to_psb`),
``cost`` (shifts and adds), ``number_format`` (the recipe method), ``grid`` (accuracy
against weight samples), ``attention`` (computational attention).
"""

from __future__ import annotations

from edgetrain.compress.psb.attention import (
    AttentionOutput,
    AttentionResult,
    attention_forward,
    evaluate_attention,
)
from edgetrain.compress.psb.cost import OperationCost, operation_cost
from edgetrain.compress.psb.format import PSBConfig
from edgetrain.compress.psb.grid import (
    PSBScore,
    SampleGrid,
    draw_sample_grid,
    finetune_psb,
    plot_sample_grid,
    psb_accuracy,
    sample_grid,
)
from edgetrain.compress.psb.layers import PSBConv2d, PSBLinear, psb_layers, set_samples, to_psb
from edgetrain.compress.psb.number_format import PSBReport, psb

__all__ = [
    "AttentionOutput",
    "AttentionResult",
    "OperationCost",
    "PSBConfig",
    "PSBConv2d",
    "PSBLinear",
    "PSBReport",
    "PSBScore",
    "SampleGrid",
    "attention_forward",
    "draw_sample_grid",
    "evaluate_attention",
    "finetune_psb",
    "operation_cost",
    "plot_sample_grid",
    "psb",
    "psb_accuracy",
    "psb_layers",
    "sample_grid",
    "set_samples",
    "to_psb",
]
