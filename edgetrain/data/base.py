"""What every data set exposes: :class:`DatasetInfo` and an in-memory :class:`ArrayDataset`."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

__all__ = ["SPLITS", "ArrayDataset", "DatasetInfo", "cache_dir", "check_split"]

SPLITS = ("train", "test")


@dataclass(frozen=True)
class DatasetInfo:
    """Static facts about a data set, printed by ``edgetrain data describe``."""

    name: str
    task: str
    input_shape: tuple[int, ...]
    classes: tuple[str, ...]
    split_sizes: dict[str, int]
    source: str
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["input_shape"] = list(self.input_shape)
        d["classes"] = list(self.classes)
        return d


class ArrayDataset(Dataset):
    """A split held in memory as one input tensor and one integer target tensor.

    Args:
        inputs: float tensor ``(N, *input_shape)``.
        targets: int64 tensor ``(N,)``.
        info: facts about the whole data set (all splits).
        transform: optional per-sample callable applied in ``__getitem__`` (augmentation).
    """

    def __init__(
        self,
        inputs: torch.Tensor,
        targets: torch.Tensor,
        info: DatasetInfo,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        if len(inputs) != len(targets):
            raise ValueError(f"{len(inputs)} inputs but {len(targets)} targets")
        self.inputs = inputs
        self.targets = targets.long()
        self.info = info
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.inputs[index]
        if self.transform is not None:
            x = self.transform(x)
        return x, self.targets[index]

    def map_inputs(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> ArrayDataset:
        """A new data set with ``fn`` applied once to the whole input tensor."""
        return ArrayDataset(fn(self.inputs), self.targets, self.info, self.transform)


def cache_dir() -> Path:
    """Folder for generated data: ``$EDGETRAIN_CACHE`` or ``~/.cache/edgetrain``."""
    root = os.environ.get("EDGETRAIN_CACHE")
    path = Path(root) if root else Path.home() / ".cache" / "edgetrain"
    path.mkdir(parents=True, exist_ok=True)
    return path


def check_split(split: str, splits: tuple[str, ...] = SPLITS) -> None:
    """Raise a one-line error for a split name the data set does not have."""
    from edgetrain.errors import DataError

    if split not in splits:
        raise DataError(f"unknown split '{split}'; choose one of: {', '.join(splits)}")
