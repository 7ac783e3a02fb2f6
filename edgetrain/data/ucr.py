"""UCR/UEA time-series classification sets (Dau et al. 2019; Bagnall et al. 2018) in the
``.ts`` format: the ones aeon ships in its wheel (``ucr:<Name>``) and users' own files
(``ts-file``).

``ucr:<Name>`` reads ``aeon/datasets/data/<Name>/<Name>_TRAIN.ts`` and ``_TEST.ts`` from
the installed aeon package and never downloads; :func:`ucr_names` lists the classification
problems found there (GunPoint, ItalyPowerDemand, ArrowHead, OSULeaf, BasicMotions,
JapaneseVowels, ...). Files are parsed by aeon's own reader, ``load_from_ts_file`` (extra
``timeseries``).

Inputs are float32 ``(channels, length)``. Each channel of each series is z-normalised by
default, as is usual for UCR. Labels map to 0..K-1 in the order of the class names sorted
as strings; the names are the labels as the file writes them (aeon lowercases labels, so
their spelling is taken from the ``@classLabel`` header). Series of unequal length
(JapaneseVowels, PickupGestureWiimoteZ) are zero-padded at the end to the longest series of
either split, after z-normalisation, so the padding sits at the series mean; aeon also ships
equal-length versions of both (``JapaneseVowels_eq``, ``PickupGestureWiimoteZ_eq``).
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from edgetrain._optional import require
from edgetrain.data.base import ArrayDataset, DatasetInfo, check_split
from edgetrain.data.registry import DATASETS
from edgetrain.errors import DataError, EdgetrainError, UnknownNameError, one_line

__all__ = ["ts_file", "ucr", "ucr_names"]

_SOURCE = (
    "UCR/UEA time series classification archive (www.timeseriesclassification.com), "
    "copy shipped in the aeon package"
)


def _header(path: Path) -> dict[str, str]:
    """The ``@tag value`` lines of a ``.ts`` header up to ``@data``, tags lowercased."""
    tags: dict[str, str] = {}
    try:
        with path.open(encoding="utf-8") as f:
            for raw in f:
                parts = raw.strip().split(maxsplit=1)
                if not parts or parts[0].startswith("#"):
                    continue
                tag = parts[0].lower()
                if tag == "@data":
                    return tags
                tags[tag] = parts[1] if len(parts) > 1 else ""
    except FileNotFoundError:
        raise DataError(f"{path} not found; pass the path of a UCR/UEA .ts file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {path} ({one_line(exc)})") from exc
    raise DataError(f"{path} has no @data line; it is not a .ts file")


def _declared_classes(path: Path, tags: dict[str, str]) -> list[str]:
    if tags.get("@targetlabel", "").lower().startswith("true"):
        raise DataError(f"{path} is a regression problem (@targetLabel); only classification works")
    tokens = tags.get("@classlabel", "").split()
    if len(tokens) < 2 or tokens[0].lower() != "true":
        raise DataError(f"{path} declares no classes; expected a header line @classLabel true a b")
    return tokens[1:]


def _aeon_data_dir() -> Path:
    aeon = require("aeon", extra="timeseries")
    return Path(str(resources.files(aeon) / "datasets" / "data"))


def _shipped() -> dict[str, Path]:
    """Classification problems aeon ships, mapped to their ``_TRAIN.ts`` file."""
    problems: dict[str, Path] = {}
    for train in sorted(_aeon_data_dir().glob("*/*_TRAIN.ts")):
        name = train.name[: -len("_TRAIN.ts")]
        if not train.with_name(f"{name}_TEST.ts").is_file():
            continue
        tokens = _header(train).get("@classlabel", "").split()
        if tokens and tokens[0].lower() == "true":
            problems[name] = train
    return problems


def ucr_names() -> list[str]:
    """Names of the UCR/UEA classification sets readable offline (shipped with aeon).

    Example:
        >>> "GunPoint" in ucr_names()
        True
    """
    return sorted(_shipped())


def _read_ts(path: Path) -> tuple[list[np.ndarray], list[str], list[str]]:
    """Series ``(channels, length)``, labels as spelled in the header, and declared classes."""
    classes = _declared_classes(path, _header(path))
    datasets = require("aeon.datasets", extra="timeseries", package="aeon")
    try:
        x, y = datasets.load_from_ts_file(str(path))
    except EdgetrainError:
        raise
    except Exception as exc:  # aeon reports malformed files as OSError, ValueError, IndexError
        raise DataError(f"cannot read {path} as a .ts file ({one_line(exc)})") from exc
    spelled = {c.lower(): c for c in classes}
    labels = []
    for value in y:
        label = spelled.get(str(value).lower())
        if label is None:
            raise DataError(f"{path}: label '{value}' is not declared in @classLabel")
        labels.append(label)
    series = [np.asarray(s, dtype=np.float64) for s in x]
    return series, labels, classes


def _znormalize(series: np.ndarray) -> np.ndarray:
    mean = series.mean(axis=-1, keepdims=True)
    std = series.std(axis=-1, keepdims=True)
    # A constant series has no scale to remove; centring it is all z-normalisation can do.
    return (series - mean) / np.where(std > 1e-8, std, 1.0)


def _build(
    name: str, split: str, train_path: Path, test_path: Path, znormalize: bool, source: str
) -> ArrayDataset:
    check_split(split)
    loaded = {"train": _read_ts(train_path), "test": _read_ts(test_path)}
    all_series = [s for series, _, _ in loaded.values() for s in series]
    if not loaded["train"][0] or not loaded["test"][0]:
        raise DataError(f"{name}: {train_path} or {test_path} holds no series")
    channels = sorted({s.shape[0] for s in all_series})
    if len(channels) > 1:
        raise DataError(f"{name}: series have different numbers of channels: {channels}")
    if any(np.isnan(s).any() for s in all_series):
        raise DataError(f"{name}: the files contain missing values; fill or interpolate them first")
    lengths = [s.shape[1] for s in all_series]
    length = max(lengths)
    classes = tuple(sorted(set(loaded["train"][2]) | set(loaded["test"][2])))
    index = {c: i for i, c in enumerate(classes)}
    series, labels, _ = loaded[split]
    inputs = np.zeros((len(series), channels[0], length), dtype=np.float32)
    for row, s in zip(inputs, series, strict=True):
        row[:, : s.shape[1]] = _znormalize(s) if znormalize else s
    info = DatasetInfo(
        name=name,
        task="classification",
        input_shape=(channels[0], length),
        classes=classes,
        split_sizes={s: len(loaded[s][1]) for s in ("train", "test")},
        source=source,
        extra={
            "train_path": str(train_path),
            "test_path": str(test_path),
            "znormalize": znormalize,
            "min_length": min(lengths),
            "padded": min(lengths) != length,
        },
    )
    targets = torch.tensor([index[c] for c in labels], dtype=torch.int64)
    return ArrayDataset(torch.from_numpy(inputs), targets, info)


@DATASETS.register("ucr", parametric=True, task="classification", offline=True)
def ucr(split: str = "train", variant: str | None = None, znormalize: bool = True) -> ArrayDataset:
    """A UCR/UEA time-series set shipped with aeon, e.g. ``ucr:GunPoint`` (offline).

    Args:
        split: ``"train"`` or ``"test"`` (the archive's own split).
        variant: the problem name (the text after ``ucr:``); :func:`ucr_names` lists them.
        znormalize: z-normalise each channel of each series.

    Example:
        >>> from edgetrain import data
        >>> ds = data.create("ucr:GunPoint", "train")
        >>> ds.info.input_shape, ds.info.split_sizes
        ((1, 150), {'train': 50, 'test': 150})
    """
    shipped = _shipped()
    by_lower = {n.lower(): n for n in shipped}
    name = by_lower.get((variant or "").lower())
    if name is None:
        what = (
            f"unknown UCR data set '{variant}'" if variant else "name a UCR set, e.g. ucr:GunPoint"
        )
        raise UnknownNameError(
            f"{what}; available offline: {', '.join(sorted(shipped))} "
            "(for other UCR/UEA sets use 'ts-file' with train_path=... and test_path=...)"
        )
    train = shipped[name]
    test = train.with_name(f"{name}_TEST.ts")
    return _build(f"ucr:{name}", split, train, test, znormalize, f"{_SOURCE} ({name})")


@DATASETS.register(
    "ts-file", task="classification", offline=False, paths=("train_path", "test_path")
)
def ts_file(
    split: str = "train",
    train_path: str | os.PathLike[str] | None = None,
    test_path: str | os.PathLike[str] | None = None,
    znormalize: bool = True,
) -> ArrayDataset:
    """A classification problem from your own UCR/UEA ``.ts`` files (train and test file).

    Args:
        split: ``"train"`` or ``"test"``.
        train_path: the ``<Name>_TRAIN.ts`` file.
        test_path: the ``<Name>_TEST.ts`` file.
        znormalize: z-normalise each channel of each series.

    Example:
        >>> ds = ts_file("test", "Wafer_TRAIN.ts", "Wafer_TEST.ts")  # doctest: +SKIP
        >>> ds.info.classes  # doctest: +SKIP
        ('-1', '1')
    """
    if train_path is None or test_path is None:
        raise DataError("ts-file: pass both train_path=<..._TRAIN.ts> and test_path=<..._TEST.ts>")
    train, test = Path(train_path).expanduser(), Path(test_path).expanduser()
    return _build("ts-file", split, train, test, znormalize, f"user .ts files {train}, {test}")
