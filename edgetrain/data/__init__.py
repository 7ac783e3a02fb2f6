"""Data sets: a registry of offline sets (digits, UCR, synthesised keywords) and loaders
for the data users bring (CIFAR pickles, Speech Commands, image folders, ``.ts`` files).

Example:
    >>> from edgetrain import data
    >>> train = data.create("digits-32", "train", channels=3)
    >>> train.info.num_classes
    10
"""

from __future__ import annotations

from edgetrain.data.base import SPLITS, ArrayDataset, DatasetInfo, cache_dir
from edgetrain.data.registry import DATASETS, create, describe, list_datasets
from edgetrain.data.transforms import (
    SHIFTS,
    Compose,
    RandomCrop,
    RandomHorizontalFlip,
    build_augmentation,
    rotate180_invert,
)
from edgetrain.data.ucr import ucr_names

__all__ = [
    "DATASETS",
    "SHIFTS",
    "SPLITS",
    "ArrayDataset",
    "Compose",
    "DatasetInfo",
    "RandomCrop",
    "RandomHorizontalFlip",
    "build_augmentation",
    "cache_dir",
    "create",
    "describe",
    "list_datasets",
    "rotate180_invert",
    "ucr_names",
]
