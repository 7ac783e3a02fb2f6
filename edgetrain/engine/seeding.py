"""Seeds and determinism.

The Trainer reseeds every random generator at the start of each epoch from
``(seed, epoch)``. Data order, augmentation and dropout of epoch ``e`` therefore depend
only on the seed and ``e``, which is what makes a resumed run identical to an
uninterrupted one without saving generator states.
"""

from __future__ import annotations

import os
import random

import numpy as np
import torch

__all__ = ["epoch_seed", "seed_everything", "set_deterministic"]


def epoch_seed(seed: int, epoch: int) -> int:
    """A 63-bit seed derived from the run seed and the epoch index."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1, dtype=np.uint64)[0] >> 1)


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's (CPU and CUDA) generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def set_deterministic(enabled: bool = True) -> None:
    """Ask torch for deterministic kernels (slower on GPU; errors on ops that have none)."""
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(enabled, warn_only=False)
    torch.backends.cudnn.deterministic = enabled
    torch.backends.cudnn.benchmark = not enabled and torch.backends.cudnn.benchmark
