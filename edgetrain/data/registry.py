"""The data set registry: ``create(name, split, **kw)``, ``list_datasets()``, ``describe(name)``.

A registered builder has the signature ``builder(split, **options) -> ArrayDataset``.
Builders that read the user's files name those options in ``paths=(...)``: run configs
record them as absolute paths, so a run reopens from any folder.
Parametric families register with ``parametric=True`` and receive the part after the
colon as ``variant`` (``"ucr:GunPoint"`` -> ``variant="GunPoint"``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from edgetrain.data.base import ArrayDataset, DatasetInfo, check_split
from edgetrain.data.transforms import SHIFTS, build_augmentation
from edgetrain.errors import DataError
from edgetrain.registry import Registry

__all__ = ["DATASETS", "create", "describe", "list_datasets"]

DATASETS: Registry[ArrayDataset] = Registry("data set", prefix_sep=":")


def create(
    name: str,
    split: str = "train",
    *,
    shift: str | None = None,
    augment: Sequence[str | dict] | None = None,
    **options: Any,
) -> ArrayDataset:
    """Build split ``split`` of the data set ``name``.

    Args:
        name: a registry name (``edgetrain data list``), e.g. ``"digits-32"``, ``"ucr:GunPoint"``,
            or a data-set spec ``path/to/file.py:fn`` returning the user's own Datasets.
        split: ``"train"`` or ``"test"``.
        shift: optional domain shift applied to every input once (``"rotate180-invert"``).
        augment: optional augmentations applied per sample (``["crop", "flip"]``).
        **options: builder options, e.g. ``channels=3`` for ``digits-32``.

    Example:
        >>> ds = create("digits-32", "train", channels=3)
        >>> ds.info.input_shape
        (3, 32, 32)
    """
    check_split(split)
    from edgetrain.data.spec import is_data_spec, load_data_spec  # it uses this registry

    if is_data_spec(name):  # the user's own torch Datasets
        if shift is not None:
            raise DataError(
                f"data.shift '{shift}' needs a data set held in memory; apply it in '{name}'"
            )
        user = load_data_spec(name, split, **options)
        user.transform = build_augmentation(augment)
        return user  # type: ignore[return-value]  # an ArrayDataset in all but storage
    dataset = DATASETS.create(name, split=split, **options)
    if shift is not None:
        dataset = dataset.map_inputs(SHIFTS.entry(shift).fn)
    dataset.transform = build_augmentation(augment)
    return dataset


def describe(name: str, **options: Any) -> DatasetInfo:
    """The :class:`DatasetInfo` of ``name`` (builds the test split to read it)."""
    return create(name, "test", **options).info


def list_datasets(pattern: str = "*") -> list[str]:
    """Registered data set names matching a shell pattern."""
    return DATASETS.names(pattern)
