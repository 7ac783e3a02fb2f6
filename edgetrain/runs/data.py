"""The configured data set of a run, split by split."""

from __future__ import annotations

from edgetrain import data as data_sets
from edgetrain.data import ArrayDataset
from edgetrain.runs.config import DataConfig

__all__ = ["build_data"]


def build_data(data: DataConfig, split: str, augment: bool = False) -> ArrayDataset:
    """The configured data set's ``split`` (``"train"``/``"test"`` or the config's own
    split names), shifted as configured; augmented only when ``augment`` is set."""
    name = {"train": data.train_split, "test": data.eval_split}.get(split, split)
    extra = {"augment": data.augment or None} if augment else {}
    return data_sets.create(data.name, name, shift=data.shift, **extra, **data.options)
