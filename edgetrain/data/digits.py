"""scikit-learn's bundled handwritten digits (UCI ML hand-written digits, Alpaydin & Kaynak 1998).

``digits``: the original 8x8 images (1 channel), or resized to ``size`` (bilinear) with 1
or 3 channels. ``digits-32``: the same images resized to 32x32, for the 32x32 image models
of the zoo. Pixel values
are scaled to [0, 1]. The train/test split is stratified and fixed by ``seed``.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

from edgetrain.data.base import ArrayDataset, DatasetInfo
from edgetrain.data.registry import DATASETS
from edgetrain.errors import DataError

_SOURCE = (
    "scikit-learn bundled copy of the UCI ML hand-written digits data set "
    "(E. Alpaydin, C. Kaynak, 1998; CC BY 4.0)"
)


@lru_cache(maxsize=8)
def _split_arrays(test_fraction: float, seed: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    images = (bunch.images / 16.0).astype(np.float32)
    targets = bunch.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(
        images, targets, test_size=test_fraction, stratify=targets, random_state=seed
    )
    return {"train": (x_tr, y_tr), "test": (x_te, y_te)}


def _build(
    name: str, split: str, size: int, channels: int, test_fraction: float, seed: int
) -> ArrayDataset:
    if channels not in (1, 3):
        raise DataError(f"{name}: channels must be 1 or 3, got {channels}")
    if isinstance(size, bool) or not isinstance(size, int) or size < 8:
        raise DataError(f"{name}: size must be a whole number of pixels >= 8, got {size!r}")
    if not 0.0 < test_fraction < 1.0:
        raise DataError(f"{name}: test_fraction must be in (0, 1), got {test_fraction}")
    arrays = _split_arrays(test_fraction, seed)
    images, targets = arrays[split]
    x = torch.from_numpy(images).unsqueeze(1)
    if size != 8:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        x = x.clamp_(0.0, 1.0)
    if channels == 3:
        x = x.expand(-1, 3, -1, -1).contiguous()
    info = DatasetInfo(
        name=name,
        task="classification",
        input_shape=(channels, size, size),
        classes=tuple(str(i) for i in range(10)),
        split_sizes={s: len(arrays[s][1]) for s in ("train", "test")},
        source=_SOURCE,
    )
    return ArrayDataset(x, torch.from_numpy(targets), info)


@DATASETS.register("digits", task="classification", offline=True)
def digits(
    split: str = "train",
    size: int = 8,
    channels: int = 1,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> ArrayDataset:
    """Handwritten digits, 8x8x1 (or resized to size x size, 1 or 3 channels), 10 classes
    (scikit-learn, offline)."""
    return _build("digits", split, size, channels, test_fraction, seed)


@DATASETS.register("digits-32", task="classification", offline=True)
def digits_32(
    split: str = "train", channels: int = 1, test_fraction: float = 0.2, seed: int = 0
) -> ArrayDataset:
    """Handwritten digits resized to 32x32, 1 or 3 channels, 10 classes (offline)."""
    return _build("digits-32", split, 32, channels, test_fraction, seed)
