"""Net2Net: grow a trained network wider or deeper without changing what it computes.

Chen, Goodfellow & Shlens, "Net2Net: Accelerating Learning via Knowledge Transfer" (2016).

- :func:`widen` adds output channels to a conv/linear layer. A mapping ``g`` sends each
  new channel to a uniformly drawn old one (old channels map to themselves); producers
  (kernels, bias) and the following batch-norm (gamma, beta, running mean and variance)
  are copied by ``g``, and every consumer's input weights for a channel are divided by
  the number of channels that now carry the same signal. Channels coupled through a
  residual add (or any other tie) share one ``g``: the coupled layers come from
  Torch-Pruning's dependency graph, so any branching net works without per-architecture
  lists.
- :func:`deepen` inserts an identity-initialised conv + batch-norm after a layer, or an
  identity residual block (last batch-norm gamma zero) after a residual block.

Both are function preserving in eval mode (outputs agree to float rounding); in training
mode batch-norm uses batch statistics, so the grown layers are only approximately the
identity there. ``init="random"`` is the control: the same new shapes with fresh
weights, which does change the function.

Grown layers are new module objects: build the optimizer (and any DDP wrapper) after
growing. Forward hooks on replaced modules are not carried over.

Example:
    >>> import torch
    >>> from edgetrain.prune.grow import deepen, widen
    >>> from edgetrain.models import create
    >>> net = create("resnet20", num_classes=10).eval()
    >>> x = torch.randn(2, 3, 32, 32)
    >>> before = net(x)
    >>> _ = widen(net, "layer2.0.conv1", 48, generator=torch.Generator().manual_seed(0))
    >>> _ = deepen(net, "layer3.2")
    >>> torch.allclose(net(x), before, rtol=1e-4, atol=1e-5)
    True
"""

from __future__ import annotations

from edgetrain.prune.grow._common import GROW_INITS
from edgetrain.prune.grow.deepen import deepen
from edgetrain.prune.grow.ops import GROW_OPS, apply_grow_ops
from edgetrain.prune.grow.widen import widen

__all__ = ["GROW_INITS", "GROW_OPS", "apply_grow_ops", "deepen", "widen"]
