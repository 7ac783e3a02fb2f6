"""CIFAR-10 and CIFAR-100 (A. Krizhevsky, "Learning Multiple Layers of Features from Tiny
Images", 2009), read from the official python pickle batches.

The batches are read with numpy alone (no torchvision). They are pickles, and a pickle can
run arbitrary code, so they go through an unpickler that resolves only the few globals the
official files use (numpy's array reconstructor, ``ndarray``, ``dtype``) and refuses
everything else with a :class:`~edgetrain.errors.DataError`. ``download=True`` fetches the
official archive, checks its md5 and extracts it safely; nothing is downloaded otherwise.
Images are float32 in [0, 1] with shape (3, 32, 32).
"""

from __future__ import annotations

import hashlib
import os
import pickle
import tarfile
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import IO, Any

import numpy as np
import torch

from edgetrain.data.base import ArrayDataset, DatasetInfo, cache_dir, check_split
from edgetrain.data.registry import DATASETS
from edgetrain.errors import DataError, one_line

try:  # numpy 2 moved the array reconstructor; files written by numpy 1 name the old module
    from numpy._core.multiarray import _reconstruct
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]

__all__ = ["cifar10", "cifar100"]

_SOURCE = (
    "A. Krizhevsky, Learning Multiple Layers of Features from Tiny Images, 2009 "
    "(https://www.cs.toronto.edu/~kriz/cifar.html)"
)


@dataclass(frozen=True)
class _Archive:
    """Where one CIFAR variant is published and how its extracted folder is laid out."""

    name: str
    url: str
    md5: str
    folder: str
    splits: dict[str, tuple[str, ...]]
    meta: str


_CIFAR10 = _Archive(
    name="cifar10",
    url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    md5="c58f30108f718f92721af3b95e74349a",
    folder="cifar-10-batches-py",
    splits={"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)},
    meta="batches.meta",
)
_CIFAR100 = _Archive(
    name="cifar100",
    url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
    md5="eb9058c3a382ffc7106e4002c42a8d85",
    folder="cifar-100-python",
    splits={"train": ("train",), "test": ("test",)},
    meta="meta",
)


def _latin1_encode(text: str, encoding: str = "utf-8") -> bytes:
    # Python 3 pickles bytes under protocol 2 as _codecs.encode(text, "latin1"); no other use.
    if encoding.replace("-", "").replace("_", "").lower() != "latin1":
        raise DataError(f"refusing to unpickle _codecs.encode with encoding '{encoding}'")
    return text.encode("latin1")


_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1_encode,
}


class _BatchUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists, strings, numbers and numpy arrays; refuses any other global."""

    def __init__(self, file: IO[bytes], path: Path) -> None:
        super().__init__(file, encoding="bytes")
        self._path = path

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise DataError(
                f"{self._path}: refusing to unpickle '{module}.{name}'; a CIFAR batch holds "
                "only numpy arrays, lists and dicts, so this is not an official CIFAR file"
            ) from None


def _load_pickle(path: Path) -> dict[str, Any]:
    """Read one batch or meta file into a dict with ``str`` keys."""
    try:
        with path.open("rb") as f:
            obj = _BatchUnpickler(f, path).load()
    except DataError:
        raise
    except FileNotFoundError:
        raise DataError(f"{path} is missing; the CIFAR folder is incomplete") from None
    except Exception as exc:  # a damaged pickle can fail in many ways; all mean "bad file"
        raise DataError(f"{path} is not a readable CIFAR pickle ({one_line(exc)})") from exc
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a pickled dict, found {type(obj).__name__}")
    return {k.decode("latin1") if isinstance(k, bytes) else str(k): v for k, v in obj.items()}


def _read_batches(
    folder: Path, files: tuple[str, ...], label_key: str
) -> tuple[np.ndarray, np.ndarray]:
    images, labels = [], []
    for name in files:
        path = folder / name
        batch = _load_pickle(path)
        data, targets = batch.get("data"), batch.get(label_key)
        if (
            not isinstance(data, np.ndarray)
            or data.dtype != np.uint8
            or data.ndim != 2
            or data.shape[1] != 3 * 32 * 32
            or not isinstance(targets, list | np.ndarray)
            or len(targets) != len(data)
        ):
            raise DataError(
                f"{path}: expected 'data' as uint8 array (N, 3072) and '{label_key}' with N "
                f"entries; found keys {sorted(batch)}"
            )
        images.append(data)
        labels.append(np.asarray(targets, dtype=np.int64))
    return np.concatenate(images), np.concatenate(labels)


def _split_size(folder: Path, files: tuple[str, ...], label_key: str) -> int:
    # Size of the split not being built; one batch in memory at a time, no concatenation.
    labels = (_load_pickle(folder / name).get(label_key) for name in files)
    return sum(0 if x is None else len(x) for x in labels)


def _class_names(path: Path, key: str) -> tuple[str, ...]:
    names = _load_pickle(path).get(key)
    if not isinstance(names, list) or not names:
        raise DataError(f"{path}: expected a list of class names under '{key}'")
    return tuple(n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in names)


def _fetch(url: str, path: Path) -> str:
    """Stream ``url`` into ``path`` and return the md5 hex digest of what was written."""
    digest = hashlib.md5(usedforsecurity=False)
    try:
        with urllib.request.urlopen(url, timeout=60) as response, path.open("wb") as out:
            while chunk := response.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
    except OSError as exc:  # URLError is an OSError
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        why = one_line(reason) if isinstance(reason, BaseException) else str(reason)
        raise DataError(
            f"could not download {url} ({why}); check the network connection "
            "or download and extract the archive by hand"
        ) from exc
    return digest.hexdigest()


def _safe_extract(archive: Path, target: Path, url: str) -> None:
    """Extract a tar archive, refusing absolute paths, ``..``, links and special files."""
    try:
        with tarfile.open(archive) as tar:
            for member in tar.getmembers():
                name = member.name
                unsafe = (
                    PurePosixPath(name).is_absolute()
                    or PureWindowsPath(name).is_absolute()
                    or ".." in PurePosixPath(name.replace("\\", "/")).parts
                    or not (member.isfile() or member.isdir())
                )
                if unsafe:
                    raise DataError(
                        f"{url}: refusing to extract '{name}' (absolute path, '..', link or "
                        "special file); the archive is not the official one"
                    )
            if hasattr(tarfile, "data_filter"):
                tar.extractall(target, filter="data")
            else:  # pragma: no cover - Python without extraction filters; checked above
                tar.extractall(target)
    except tarfile.TarError as exc:
        raise DataError(f"{url} is not a valid tar archive ({one_line(exc)})") from exc


def _download_and_extract(url: str, md5: str, dest: Path) -> None:
    """Fetch the tar archive at ``url``, check its md5 and move its top-level entries into ``dest``.

    Everything happens in a temporary folder inside ``dest``, so an interrupted or corrupted
    download never leaves a half-extracted data set where the loader looks, and the final
    move is a rename on the same file system.
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest, prefix=".download-") as tmp:
        archive = Path(tmp) / "archive"
        digest = _fetch(url, archive)
        if digest != md5:
            raise DataError(
                f"checksum mismatch for {url}: md5 {digest}, expected {md5}; the download is "
                "corrupted or incomplete, try again"
            )
        extracted = Path(tmp) / "extracted"
        _safe_extract(archive, extracted, url)
        entries = sorted(extracted.iterdir()) if extracted.is_dir() else []
        for entry in entries:
            if (dest / entry.name).exists():
                raise DataError(f"{dest / entry.name} already exists; remove it and try again")
        for entry in entries:
            os.replace(entry, dest / entry.name)


def _build(
    archive: _Archive,
    split: str,
    root: str | os.PathLike[str] | None,
    download: bool,
    label_key: str,
    names_key: str,
    extra: dict[str, Any],
) -> ArrayDataset:
    check_split(split)
    base = Path(root).expanduser() if root is not None else cache_dir() / "cifar"
    folder = base / archive.folder
    if not folder.is_dir():
        if not download:
            raise DataError(
                f"{archive.name}: folder {folder} not found; pass download=True to fetch "
                f"{archive.url}, or extract that archive into {base}"
            )
        _download_and_extract(archive.url, archive.md5, base)
        if not folder.is_dir():
            raise DataError(f"{archive.url} did not contain the folder {archive.folder}/")
    classes = _class_names(folder / archive.meta, names_key)
    data, labels = _read_batches(folder, archive.splits[split], label_key)
    if labels.size and (labels.min() < 0 or labels.max() >= len(classes)):
        raise DataError(
            f"{folder}: labels range over {labels.min()}..{labels.max()} but "
            f"{archive.meta} names {len(classes)} classes"
        )
    other = "test" if split == "train" else "train"
    sizes = {split: len(labels), other: _split_size(folder, archive.splits[other], label_key)}
    info = DatasetInfo(
        name=archive.name,
        task="classification",
        input_shape=(3, 32, 32),
        classes=classes,
        split_sizes={s: sizes[s] for s in ("train", "test")},
        source=_SOURCE,
        extra={"root": str(folder), **extra},
    )
    images = torch.from_numpy(data.reshape(-1, 3, 32, 32)).float().div_(255.0)
    return ArrayDataset(images, torch.from_numpy(labels), info)


@DATASETS.register("cifar10", task="classification", offline=False, paths=("root",))
def cifar10(
    split: str = "train", root: str | os.PathLike[str] | None = None, download: bool = False
) -> ArrayDataset:
    """CIFAR-10, 32x32x3, 10 classes, from the python pickle batches (50,000 / 10,000).

    Args:
        split: ``"train"`` (``data_batch_1`` .. ``data_batch_5``) or ``"test"`` (``test_batch``).
        root: folder holding ``cifar-10-batches-py/``; default ``<cache_dir()>/cifar``.
        download: fetch and verify the official archive when the folder is missing.

    Example:
        >>> ds = cifar10("test", root="~/data")  # doctest: +SKIP
        >>> ds.info.classes[:3], ds[0][0].shape  # doctest: +SKIP
        (('airplane', 'automobile', 'bird'), torch.Size([3, 32, 32]))
    """
    return _build(_CIFAR10, split, root, download, "labels", "label_names", {})


@DATASETS.register("cifar100", task="classification", offline=False, paths=("root",))
def cifar100(
    split: str = "train",
    root: str | os.PathLike[str] | None = None,
    download: bool = False,
    labels: str = "fine",
) -> ArrayDataset:
    """CIFAR-100, 32x32x3, 100 fine (or 20 coarse) classes, from the python pickles.

    Args:
        split: ``"train"`` or ``"test"``.
        root: folder holding ``cifar-100-python/``; default ``<cache_dir()>/cifar``.
        download: fetch and verify the official archive when the folder is missing.
        labels: ``"fine"`` (100 classes) or ``"coarse"`` (20 superclasses).

    Example:
        >>> ds = cifar100("train", root="~/data", labels="coarse")  # doctest: +SKIP
        >>> ds.info.num_classes  # doctest: +SKIP
        20
    """
    if labels not in ("fine", "coarse"):
        raise DataError(f"cifar100: labels must be 'fine' or 'coarse', got '{labels}'")
    return _build(
        _CIFAR100,
        split,
        root,
        download,
        f"{labels}_labels",
        f"{labels}_label_names",
        {"labels": labels},
    )
