"""The user's own arrays and tables as data sets: ``arrays`` (NumPy ``.npz`` / ``.npy``)
and ``csv`` (feature columns and a label column, for tabular and time-series rows).

Both take a test file, or split the one file per class (``test_fraction``, ``seed``).
Labels may be integers or strings; the classes are their sorted distinct values, and
the targets their positions in that list, so labels need not be ``0..K-1``.

Example recipe section::

    data: {name: arrays, options: {path: data/train.npz, test_path: data/test.npz}}
    data: {name: csv, options: {path: sensors.csv, label: activity, shape: [3, 128]}}
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgetrain.data.base import ArrayDataset, DatasetInfo, check_split
from edgetrain.data.registry import DATASETS
from edgetrain.errors import DataError

__all__ = ["arrays", "csv_table"]

Arrays = tuple[np.ndarray, np.ndarray]


def _file(what: str, path: str | Path | None, option: str, suffixes: tuple[str, ...]) -> Path:
    if path is None:
        raise DataError(f"{what}: pass {option}=<{' or '.join(suffixes)} file>")
    p = Path(path).expanduser()
    if not p.is_file():
        raise DataError(f"{what}: {option} file '{p}' not found; check the path")
    if p.suffix.lower() not in suffixes:
        raise DataError(f"{what}: {option} '{p}' is not a {' or '.join(suffixes)} file")
    return p


def _check_pair(what: str, x: np.ndarray, y: np.ndarray, where: Path) -> Arrays:
    if y.ndim != 1:
        raise DataError(
            f"{what}: labels in '{where}' have shape {y.shape}; give one label per sample (shape N)"
        )
    if len(x) != len(y):
        raise DataError(f"{what}: '{where}' has {len(x)} inputs but {len(y)} labels")
    if x.ndim < 2:
        raise DataError(f"{what}: inputs in '{where}' have shape {x.shape}; give (N, ...)")
    if not np.issubdtype(x.dtype, np.number):
        raise DataError(f"{what}: inputs in '{where}' are {x.dtype}, not numbers")
    x = x.astype(np.float32, copy=False)
    if not np.isfinite(x).all():
        bad = int(np.argwhere(~np.isfinite(x).reshape(len(x), -1).all(axis=1))[0, 0])
        raise DataError(f"{what}: sample {bad} of '{where}' holds NaN or infinity; clean it")
    return x, y


def _classes(what: str, labels: np.ndarray) -> tuple[str, ...]:
    values = sorted({v.item() if hasattr(v, "item") else v for v in labels}, key=_label_key)
    if len(values) < 2:
        raise DataError(
            f"{what}: the labels hold {len(values)} class ({values[0] if values else '-'}); "
            "a classifier needs at least two"
        )
    return tuple(str(v) for v in values)


def _label_key(value: Any) -> tuple[int, Any]:
    # Numbers in numeric order, then strings: "2" < "10" as the user means them.
    return (0, value) if isinstance(value, int | float) else (1, str(value))


def _targets(what: str, labels: np.ndarray, classes: tuple[str, ...]) -> torch.Tensor:
    index = {c: i for i, c in enumerate(classes)}
    names = [str(v.item() if hasattr(v, "item") else v) for v in labels]
    unknown = sorted(set(names) - set(index))
    if unknown:
        raise DataError(
            f"{what}: test labels {', '.join(unknown[:3])} are not among the training "
            f"classes ({', '.join(classes[:8])}); give both splits the same classes"
        )
    return torch.tensor([index[n] for n in names], dtype=torch.int64)


def _split(what: str, x: np.ndarray, y: np.ndarray, test_fraction: float, seed: int) -> dict:
    from sklearn.model_selection import train_test_split

    if not 0.0 < test_fraction < 1.0:
        raise DataError(f"{what}: test_fraction must be in (0, 1), got {test_fraction}")
    _, counts = np.unique(y.astype(str), return_counts=True)
    stratify = y if counts.min() >= 2 else None  # a class with one sample cannot be split
    try:
        x_tr, x_te, y_tr, y_te = train_test_split(
            x, y, test_size=test_fraction, stratify=stratify, random_state=seed
        )
    except ValueError as exc:
        raise DataError(f"{what}: cannot split {len(y)} samples: {exc}") from None
    return {"train": (x_tr, y_tr), "test": (x_te, y_te)}


def _dataset(
    what: str,
    split: str,
    pairs: dict[str, Arrays],
    source: str,
    layout: str,
    shape: Sequence[int] | None,
) -> ArrayDataset:
    classes = _classes(what, pairs["train"][1])
    x, y = pairs[split]
    if shape is not None:
        per_sample = int(np.prod(x.shape[1:]))
        if int(np.prod(shape)) != per_sample:
            raise DataError(
                f"{what}: shape {list(shape)} holds {int(np.prod(shape))} values but each "
                f"sample has {per_sample}; give a shape whose product is {per_sample}"
            )
        x = x.reshape(len(x), *shape)
    info = DatasetInfo(
        name=what,
        task="classification",
        input_shape=tuple(int(d) for d in x.shape[1:]),
        classes=classes,
        split_sizes={s: len(pairs[s][1]) for s in ("train", "test")},
        source=source,
        extra={"layout": layout},
    )
    return ArrayDataset(torch.from_numpy(np.ascontiguousarray(x)), _targets(what, y, classes), info)


# ------------------------------------------------------------------------- arrays
@lru_cache(maxsize=8)
def _read_arrays(path: Path, labels: Path | None, stamp: tuple[float, ...]) -> Arrays:
    what = "arrays"
    if path.suffix.lower() == ".npz":
        with np.load(path, allow_pickle=False) as data:
            missing = [k for k in ("x", "y") if k not in data.files]
            if missing:
                raise DataError(
                    f"{what}: '{path}' has no '{missing[0]}' array (it holds "
                    f"{', '.join(data.files) or 'nothing'}); save it with "
                    "np.savez(path, x=..., y=...)"
                )
            x, y = data["x"], data["y"]
    else:
        if labels is None:
            raise DataError(
                f"{what}: '{path}' holds inputs only; pass labels=<.npy file of the labels>"
            )
        x = np.load(path, allow_pickle=False)
        y = np.load(labels, allow_pickle=False)
    return _check_pair(what, x, y, path)


def _load_arrays(path: Path, labels: Path | None) -> Arrays:
    stamp = tuple(p.stat().st_mtime for p in (path, labels) if p is not None)
    try:
        return _read_arrays(path, labels, stamp)
    except ValueError as exc:  # object arrays need pickle, which is never loaded
        raise DataError(f"arrays: cannot read '{path}' without pickle ({exc})") from None


@DATASETS.register(
    "arrays",
    task="classification",
    offline=False,
    paths=("path", "labels", "test_path", "test_labels"),
)
def arrays(
    split: str = "train",
    path: str | None = None,
    labels: str | None = None,
    test_path: str | None = None,
    test_labels: str | None = None,
    test_fraction: float = 0.2,
    seed: int = 0,
    shape: list[int] | None = None,
) -> ArrayDataset:
    """NumPy arrays: ``.npz`` with ``x`` and ``y``, or an ``.npy`` of inputs and one of labels.

    Args:
        split: ``"train"`` or ``"test"``.
        path: the training ``.npz`` (or ``.npy`` of inputs, shaped ``(N, ...)``).
        labels: the ``.npy`` of labels that goes with an ``.npy`` of inputs.
        test_path / test_labels: the test split in the same form; without them the
            training file is split per class.
        test_fraction / seed: the split's test share and seed.
        shape: one sample's shape to reshape the inputs to (e.g. ``[1, 28, 28]``).

    Example:
        >>> ds = arrays("train", path="train.npz", test_path="test.npz")  # doctest: +SKIP
    """
    check_split(split)
    source = _file("arrays", path, "path", (".npz", ".npy"))
    label_file = None if labels is None else _file("arrays", labels, "labels", (".npy",))
    train = _load_arrays(source, label_file)
    if test_path is not None:
        test_file = _file("arrays", test_path, "test_path", (".npz", ".npy"))
        test_label_file = (
            None if test_labels is None else _file("arrays", test_labels, "test_labels", (".npy",))
        )
        pairs = {"train": train, "test": _load_arrays(test_file, test_label_file)}
        layout = f"train {source.name}, test {test_file.name}"
    else:
        pairs = _split("arrays", *train, test_fraction, seed)
        layout = f"split per class, test_fraction={test_fraction}, seed={seed}"
    if pairs["train"][0].shape[1:] != pairs["test"][0].shape[1:]:
        raise DataError(
            f"arrays: train samples have shape {pairs['train'][0].shape[1:]} but test samples "
            f"{pairs['test'][0].shape[1:]}; give both splits the same sample shape"
        )
    return _dataset("arrays", split, pairs, f"user arrays {source}", layout, shape)


# ---------------------------------------------------------------------------- csv
@lru_cache(maxsize=8)
def _read_table(
    path: Path, label: str, features: tuple[str, ...] | None, stamp: float
) -> tuple[Arrays, tuple[str, ...]]:
    what = "csv"
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    if not rows:
        raise DataError(f"{what}: '{path}' is empty; give a header row and one row per sample")
    header, body = [h.strip() for h in rows[0]], [r for r in rows[1:] if any(c.strip() for c in r)]
    if label not in header:
        raise DataError(
            f"{what}: '{path}' has no label column '{label}' (columns: "
            f"{', '.join(header[:10])}); pass label=<column>"
        )
    columns = list(features) if features is not None else [h for h in header if h != label]
    unknown = [c for c in columns if c not in header]
    if unknown:
        raise DataError(f"{what}: '{path}' has no feature column '{unknown[0]}'")
    if not columns:
        raise DataError(f"{what}: '{path}' has no feature columns besides '{label}'")
    at = [header.index(c) for c in columns]
    li = header.index(label)
    x = np.empty((len(body), len(at)), dtype=np.float32)
    for r, row in enumerate(body):
        if len(row) != len(header):
            raise DataError(
                f"{what}: row {r + 2} of '{path}' has {len(row)} fields, the header {len(header)}"
            )
        for c, i in enumerate(at):
            try:
                x[r, c] = float(row[i])
            except ValueError:
                raise DataError(
                    f"{what}: row {r + 2} of '{path}', column '{columns[c]}': {row[i]!r} is not "
                    "a number; list numeric columns in features"
                ) from None
    labels = [row[li].strip() for row in body]
    y = np.array([int(v) if v.lstrip("-").isdigit() else v for v in labels], dtype=object)
    if all(isinstance(v, int) for v in y):
        y = y.astype(np.int64)
    return _check_pair(what, x, y, path), tuple(columns)


@DATASETS.register("csv", task="classification", offline=False, paths=("path", "test_path"))
def csv_table(
    split: str = "train",
    path: str | None = None,
    label: str = "label",
    features: list[str] | None = None,
    test_path: str | None = None,
    test_fraction: float = 0.2,
    seed: int = 0,
    shape: list[int] | None = None,
) -> ArrayDataset:
    """A CSV table with a header: numeric feature columns and a label column.

    Args:
        split: ``"train"`` or ``"test"``.
        path: the training table.
        label: the label column (integers or names).
        features: the feature columns in order (default: every other column).
        test_path: the test table (same columns); without it the table is split per class.
        test_fraction / seed: the split's test share and seed.
        shape: one sample's shape, e.g. ``[3, 128]`` for 3 channels of a 128-step series
            stored as 384 columns channel by channel; default ``[features]``.

    Example:
        >>> ds = csv_table("train", path="iris.csv", label="species")  # doctest: +SKIP
    """
    check_split(split)
    source = _file("csv", path, "path", (".csv",))
    chosen = None if features is None else tuple(features)
    train, columns = _read_table(source, label, chosen, source.stat().st_mtime)
    if test_path is not None:
        test_file = _file("csv", test_path, "test_path", (".csv",))
        test, _ = _read_table(test_file, label, columns, test_file.stat().st_mtime)
        pairs = {"train": train, "test": test}
        layout = f"train {source.name}, test {test_file.name}"
    else:
        pairs = _split("csv", *train, test_fraction, seed)
        layout = f"split per class, test_fraction={test_fraction}, seed={seed}"
    return _dataset("csv", split, pairs, f"user table {source}", layout, shape)
