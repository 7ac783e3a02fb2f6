"""Data-set specs: ``path/to/file.py:callable`` or ``package.module:callable`` returning
the user's own ``torch.utils.data.Dataset`` objects.

The callable is called with the data set's options as keyword arguments and returns the
train and test splits, as a pair or as ``{"train": ..., "test": ...}``. Each split is a
map-style data set of ``(input, label)`` pairs with integer labels. What the engine needs
to know is read from the data: the input shape from the first sample, the classes from
the splits' ``classes`` attribute (torchvision's convention) or from the labels.

Example recipe section::

    data: {name: ./mydata.py:load, options: {root: /data/sensors}}
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import torch
from torch.utils.data import Dataset

from edgetrain._callables import import_callable
from edgetrain.data.base import DatasetInfo, check_split
from edgetrain.data.registry import DATASETS
from edgetrain.errors import DataError, one_line
from edgetrain.registry import check_kwargs

__all__ = ["UserDataset", "is_data_spec", "load_data_spec"]


def is_data_spec(name: str) -> bool:
    """Whether ``name`` names a callable (``file.py:fn``, ``module:fn``) rather than a
    registered data set (``digits``, or a family member such as ``ucr:GunPoint``)."""
    head, sep, _ = name.rpartition(":")
    if not sep or not head:
        return False
    if head.endswith(".py") or "/" in head or "\\" in head:
        return True
    return head not in DATASETS.names()


class UserDataset(Dataset):
    """A user's split with the :class:`DatasetInfo` the engine reads, and an optional
    per-sample transform (augmentation)."""

    def __init__(
        self,
        dataset: Dataset[Any],
        info: DatasetInfo,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        self.dataset = dataset
        self.info = info
        self.transform = transform

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.dataset[index]
        x = torch.as_tensor(x, dtype=torch.float32)
        if self.transform is not None:
            x = self.transform(x)
        return x, torch.as_tensor(y, dtype=torch.int64)


_LOADED: dict[tuple[str, str | None, str], dict[str, Dataset[Any]]] = {}


def load_data_spec(name: str, split: str, **options: Any) -> UserDataset:
    """Split ``split`` of the data-set spec ``name`` (the callable runs once per options).

    Raises:
        DataError: a callable that fails, returns something other than two data sets, or
            data sets whose samples are not ``(input, integer label)`` pairs, in one line.
    """
    check_split(split)
    found = import_callable(name, "data-set spec")
    key = (found.text, found.sha256, json.dumps(options, sort_keys=True, default=str))
    if key not in _LOADED:
        options = check_kwargs(found.fn, options, f"data set '{found.text}'")
        try:
            result = found.fn(**options)
        except Exception as exc:
            raise DataError(
                f"data set '{found.text}' failed: {type(exc).__name__}: {one_line(exc)}"
            ) from exc
        _LOADED[key] = _splits(found.text, result)
    splits = _LOADED[key]
    return UserDataset(splits[split], _info(found.text, splits))


def _splits(name: str, result: Any) -> dict[str, Dataset[Any]]:
    if isinstance(result, dict) and set(result) >= {"train", "test"}:
        pair = (result["train"], result["test"])
    elif isinstance(result, tuple | list) and len(result) == 2:
        pair = tuple(result)
    else:
        raise DataError(
            f"data set '{name}' returned a {type(result).__name__}; return (train, test) or "
            "{'train': ..., 'test': ...} of torch Datasets"
        )
    for split, ds in zip(("train", "test"), pair, strict=True):
        if not hasattr(ds, "__getitem__") or not hasattr(ds, "__len__"):
            raise DataError(
                f"data set '{name}': the {split} split is a {type(ds).__name__}, not a "
                "map-style torch Dataset (with __getitem__ and __len__)"
            )
        if len(ds) == 0:
            raise DataError(f"data set '{name}': the {split} split is empty")
    return {"train": pair[0], "test": pair[1]}


def _labels(name: str, split: str, ds: Dataset[Any]) -> list[int]:
    labels = getattr(ds, "targets", None)
    if labels is None:
        labels = [_sample(name, split, ds, i)[1] for i in range(len(ds))]  # type: ignore[arg-type]
    out = []
    for y in labels:
        value = torch.as_tensor(y)
        if value.numel() != 1 or value.is_floating_point():
            raise DataError(
                f"data set '{name}': {split} labels must be integer class indices, got {y!r}"
            )
        out.append(int(value))
    return out


def _sample(name: str, split: str, ds: Dataset[Any], index: int) -> tuple[Any, Any]:
    item = ds[index]
    if not isinstance(item, tuple | list) or len(item) != 2:
        raise DataError(
            f"data set '{name}': {split} samples must be (input, label) pairs, got a "
            f"{type(item).__name__}"
        )
    return item[0], item[1]


def _info(name: str, splits: dict[str, Dataset[Any]]) -> DatasetInfo:
    x, _ = _sample(name, "train", splits["train"], 0)
    shape = tuple(torch.as_tensor(x).shape)
    classes = getattr(splits["train"], "classes", None)
    labels = {s: _labels(name, s, ds) for s, ds in splits.items()}
    if classes is None:
        count = max(max(v) for v in labels.values()) + 1
        classes = [str(i) for i in range(count)]
    bad = [v for v in (*labels["train"], *labels["test"]) if not 0 <= v < len(classes)]
    if bad:
        raise DataError(
            f"data set '{name}': label {bad[0]} is outside the {len(classes)} classes "
            f"(0..{len(classes) - 1})"
        )
    if len(set(labels["train"])) < 2:
        raise DataError(f"data set '{name}': the train split holds one class; give two or more")
    return DatasetInfo(
        name=name,
        task="classification",
        input_shape=shape,
        classes=tuple(str(c) for c in classes),
        split_sizes={s: len(ds) for s, ds in splits.items()},  # type: ignore[arg-type]
        source=f"user data set {name}",
    )
