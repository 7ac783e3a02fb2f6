"""Image folders users bring: one sub-folder of ``.png``/``.jpg``/``.jpeg``/``.bmp`` files per
class, read with Pillow.

Two layouts are understood:

- ``root/<class>/*.png``: split per class into train and test (stratified, fixed by ``seed``).
- ``root/train/<class>/*.png`` and ``root/test/<class>/*.png``: used as they are; the
  classes are those of ``train/`` and ``test/`` may not add new ones.

Class names are the sub-folder names, sorted; hidden folders and other files are ignored.
Images become float32 tensors in [0, 1] with 1 (grayscale) or 3 (RGB) channels, optionally
resized to ``size`` x ``size`` (bilinear); without ``size`` all images must share one size.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from edgetrain.data.base import ArrayDataset, DatasetInfo, check_split
from edgetrain.data.registry import DATASETS
from edgetrain.errors import DataError

__all__ = ["image_folder"]

_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")

_Item = tuple[Path, int]


def _scan(folder: Path) -> dict[str, list[Path]]:
    """Map each class sub-folder of ``folder`` (sorted) to its image files (sorted)."""
    class_dirs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise DataError(
            f"image-folder: {folder} has no class sub-folders; expected {folder}/<class>/*.png"
        )
    files: dict[str, list[Path]] = {}
    for class_dir in class_dirs:
        images = sorted(
            p for p in class_dir.iterdir() if p.is_file() and p.suffix.lower() in _SUFFIXES
        )
        if not images:
            raise DataError(
                f"image-folder: class folder {class_dir} holds no {'/'.join(_SUFFIXES)} files"
            )
        files[class_dir.name] = images
    return files


def _stratified_split(
    files: dict[str, list[Path]], test_fraction: float, seed: int
) -> dict[str, list[_Item]]:
    """Send ``round(n * test_fraction)`` images of each class to test, at least one when the
    class has two or more images and never all of them, chosen at random for ``seed``."""
    rng = np.random.default_rng(seed)
    splits: dict[str, list[_Item]] = {"train": [], "test": []}
    for label, paths in enumerate(files.values()):
        n = len(paths)
        n_test = min(max(round(n * test_fraction), 1), n - 1)
        for rank, index in enumerate(rng.permutation(n)):
            splits["test" if rank < n_test else "train"].append((paths[index], label))
    return splits


def _presplit(root: Path) -> tuple[tuple[str, ...], dict[str, list[_Item]]]:
    train, test = _scan(root / "train"), _scan(root / "test")
    unknown = sorted(set(test) - set(train))
    if unknown:
        raise DataError(
            f"image-folder: {root / 'test'} has classes missing from {root / 'train'}: "
            f"{', '.join(unknown)}"
        )
    classes = tuple(train)
    index = {name: i for i, name in enumerate(classes)}
    splits = {
        "train": [(p, index[c]) for c, paths in train.items() for p in paths],
        "test": [(p, index[c]) for c, paths in test.items() for p in paths],
    }
    return classes, splits


def _check_same_size(path: Path, other: Path) -> None:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as a, Image.open(other) as b:
            sizes = a.size, b.size
    except (OSError, UnidentifiedImageError):
        return  # the split that holds it says so when it is read
    if sizes[0] != sizes[1]:
        raise DataError(
            f"image-folder: {other} is {sizes[1][0]}x{sizes[1][1]} but {path} is "
            f"{sizes[0][0]}x{sizes[0][1]} (train and test differ); pass size=N to resize all "
            "to NxN"
        )


_SIXTEEN_BIT = frozenset({"I;16", "I;16B", "I;16L", "I;16N"})


def _read_images(items: list[_Item], size: int | None, channels: int) -> torch.Tensor:
    from PIL import Image, UnidentifiedImageError

    mode = "L" if channels == 1 else "RGB"
    arrays: list[np.ndarray] = []
    for path, _ in items:
        try:
            with Image.open(path) as opened:
                if opened.mode in _SIXTEEN_BIT:
                    # 16-bit grey (PNG): scaled to 0..255 as floats; converting to 8-bit
                    # "L" would clip every value above 255 to white
                    grey = np.asarray(opened, dtype=np.float32) * (255.0 / 65535.0)
                    image = Image.fromarray(grey, mode="F")
                else:
                    image = opened.convert(mode)
        except (OSError, UnidentifiedImageError) as exc:
            raise DataError(f"image-folder: cannot read image {path} ({exc})") from exc
        if size is not None and image.size != (size, size):
            image = image.resize((size, size), Image.Resampling.BILINEAR)
        array = np.asarray(image, dtype=np.float32) / 255.0
        if array.ndim == 2 and channels == 3:
            array = np.repeat(array[..., None], 3, axis=2)
        array = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
        if arrays and array.shape != arrays[0].shape:
            first = items[0][0]
            raise DataError(
                f"image-folder: {path} is {array.shape[2]}x{array.shape[1]} but {first} is "
                f"{arrays[0].shape[2]}x{arrays[0].shape[1]}; pass size=N to resize all to NxN"
            )
        arrays.append(array)
    return torch.from_numpy(np.stack(arrays))


@DATASETS.register("image-folder", task="classification", offline=False, paths=("root",))
def image_folder(
    split: str = "train",
    root: str | os.PathLike[str] | None = None,
    size: int | None = None,
    channels: int = 3,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> ArrayDataset:
    """Images in ``root/<class>/`` (or ``root/train/<class>/`` + ``root/test/<class>/``).

    Args:
        split: ``"train"`` or ``"test"``.
        root: the folder of class sub-folders (required).
        size: resize every image to ``size`` x ``size``; ``None`` keeps the files' size.
        channels: 1 (grayscale) or 3 (RGB).
        test_fraction: share of each class held out for test (ignored with train/test folders).
        seed: seed of the split (ignored with train/test folders).

    Example:
        >>> ds = image_folder("train", root="photos", size=32)  # doctest: +SKIP
        >>> ds.info.input_shape, ds.info.classes  # doctest: +SKIP
        ((3, 32, 32), ('cat', 'dog'))
    """
    check_split(split)
    if root is None:
        raise DataError("image-folder: pass root=<folder with one sub-folder of images per class>")
    if channels not in (1, 3):
        raise DataError(f"image-folder: channels must be 1 or 3, got {channels}")
    if size is not None and size < 1:
        raise DataError(f"image-folder: size must be a positive number of pixels, got {size}")
    if not 0.0 < test_fraction < 1.0:
        raise DataError(f"image-folder: test_fraction must be in (0, 1), got {test_fraction}")
    base = Path(root).expanduser()
    if not base.is_dir():
        raise DataError(
            f"image-folder: folder {base} not found; expected {base}/<class>/*.png (or "
            f"{base}/train/<class>/ and {base}/test/<class>/)"
        )
    if (base / "train").is_dir() and (base / "test").is_dir():
        layout = "train/test folders"
        classes, splits = _presplit(base)
    else:
        layout = f"split per class, test_fraction={test_fraction}, seed={seed}"
        files = _scan(base)
        classes = tuple(files)
        splits = _stratified_split(files, test_fraction, seed)
    items = splits[split]
    if not items:
        raise DataError(
            f"image-folder: the {split} split of {base} is empty; each class needs at least "
            "two images to be split"
        )
    inputs = _read_images(items, size, channels)
    other = splits["test" if split == "train" else "train"]
    if size is None and other:  # the other split must match too (a header read only)
        _check_same_size(items[0][0], other[0][0])
    info = DatasetInfo(
        name="image-folder",
        task="classification",
        input_shape=tuple(inputs.shape[1:]),
        classes=classes,
        split_sizes={s: len(splits[s]) for s in ("train", "test")},
        source=f"user image folder {base}",
        extra={"root": str(base), "layout": layout},
    )
    targets = torch.tensor([label for _, label in items], dtype=torch.int64)
    return ArrayDataset(inputs, targets, info)
