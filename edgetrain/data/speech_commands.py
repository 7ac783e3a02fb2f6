"""Google Speech Commands (Warden 2018, arXiv:1804.03209), read from the user's v2 folder.

The v2 layout is one folder of 1 s, 16 kHz WAV files per word, ``_background_noise_``,
and two lists of relative paths, ``testing_list.txt`` and ``validation_list.txt``. Files
in the testing list form the test split; every other file of the chosen words forms the
train split. The official validation files join train by default (this project's splits
are train and test; the trainer holds out its own validation data); ``validation="drop"``
leaves them out, so that train equals the official train split. Clips are resampled to
``sample_rate`` when needed, padded or cut to 1 s, and turned into the same ``(1, 32, 32)``
features as the synthesised keyword sets (:mod:`edgetrain.data.audio`).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.progress import track

from edgetrain.data.audio import (
    check_features,
    extract_features,
    fix_length,
    read_wav,
    resample,
    standardize,
)
from edgetrain.data.base import ArrayDataset, DatasetInfo
from edgetrain.data.registry import DATASETS
from edgetrain.errors import DataError

__all__ = ["speech_commands"]

_LAYOUT = (
    "expected the Speech Commands v2 layout: <root>/<word>/*.wav (1 s, 16 kHz) "
    "with <root>/testing_list.txt and <root>/validation_list.txt"
)
_SOURCE = "Google Speech Commands v2 (P. Warden, 2018; CC BY 4.0)"
_VALIDATION = ("train", "drop")
_CHUNK = 512  # files decoded before their features are computed, bounds memory
_PROGRESS_FROM = 2000  # files; smaller sets load too fast for a progress bar to help


def _read_list(path: Path) -> set[str]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return {line.strip().replace("\\", "/") for line in lines if line.strip()}


def _word_folders(root: Path) -> list[str]:
    """Sorted word folders holding WAVs; ``_``-prefixed folders (background noise) are not words."""
    return sorted(
        p.name
        for p in root.iterdir()
        if p.is_dir() and not p.name.startswith(("_", ".")) and any(p.glob("*.wav"))
    )


def _select_words(root: Path, words: Sequence[str] | str | None) -> tuple[str, ...]:
    available = _word_folders(root)
    if not available:
        raise DataError(f"speech-commands: no word folders with .wav files in {root}; {_LAYOUT}")
    if words is None:
        return tuple(available)
    chosen = tuple(w.strip() for w in words.split(",")) if isinstance(words, str) else tuple(words)
    missing = [w for w in chosen if w not in available]
    if missing or not chosen:
        raise DataError(
            f"speech-commands: no word folder {', '.join(missing) or '(none chosen)'} in {root}; "
            f"available: {', '.join(available)}"
        )
    if len(set(chosen)) != len(chosen):
        raise DataError(f"speech-commands: words repeat a name: {', '.join(chosen)}")
    return chosen


def _load_features(paths: list[Path], sample_rate: int, features: str) -> np.ndarray:
    out = np.empty((len(paths), 1, 32, 32), dtype=np.float32)
    chunks = range(0, len(paths), _CHUNK)
    for start in track(
        chunks,
        description="reading speech-commands",
        console=Console(stderr=True),
        disable=len(paths) < _PROGRESS_FROM,
    ):
        clips = []
        for path in paths[start : start + _CHUNK]:
            samples, rate = read_wav(path)
            clips.append(fix_length(resample(samples, rate, sample_rate), sample_rate))
        batch = np.stack(clips) if clips else np.empty((0, sample_rate), np.float32)
        out[start : start + len(clips)] = extract_features(batch, sample_rate, features)
    return out


@lru_cache(maxsize=2)
def _prepared(
    root: Path, words: tuple[str, ...], sample_rate: int, features: str, validation: str
) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], float, float]:
    testing = _read_list(root / "testing_list.txt")
    validating = _read_list(root / "validation_list.txt") if validation == "drop" else set()
    files: dict[str, list[Path]] = {"train": [], "test": []}
    labels: dict[str, list[int]] = {"train": [], "test": []}
    for label, word in enumerate(words):
        for path in sorted((root / word).glob("*.wav")):
            relative = f"{word}/{path.name}"
            if relative in validating:
                continue
            split = "test" if relative in testing else "train"
            files[split].append(path)
            labels[split].append(label)
    x = {s: _load_features(files[s], sample_rate, features) for s in files}
    scaled, mean, std = standardize(x)
    splits = {s: (scaled[s], np.asarray(labels[s], dtype=np.int64)) for s in files}
    return splits, mean, std


@DATASETS.register("speech-commands", task="classification", offline=False, paths=("root",))
def speech_commands(
    split: str = "train",
    root: str | Path | None = None,
    words: Sequence[str] | str | None = None,
    sample_rate: int = 16000,
    features: str = "logmel",
    validation: str = "train",
) -> ArrayDataset:
    """Google Speech Commands v2 from a local folder, 1x32x32, any subset of words.

    Args:
        split: ``"train"`` or ``"test"`` (the files named in ``testing_list.txt``).
        root: the folder holding one sub-folder per word and the two list files.
        words: the words to keep, in class order (a list or ``"yes,no"``); default every
            word folder in sorted order.
        sample_rate: rate the clips are resampled to before features are computed.
        features: ``"logmel"`` or ``"spectrogram"``.
        validation: ``"train"`` puts the validation list into train; ``"drop"`` leaves it out.

    Example:
        >>> ds = speech_commands("train", root="speech_commands_v0.02", words="yes,no")
        >>> ds.info.classes, ds.info.input_shape
        (('yes', 'no'), (1, 32, 32))
    """
    if validation not in _VALIDATION:
        raise DataError(
            f"speech-commands: validation must be {' or '.join(_VALIDATION)}, got '{validation}'"
        )
    if root is None:
        raise DataError(f"speech-commands needs root=<folder>; {_LAYOUT}")
    folder = Path(root).expanduser().resolve()
    if not folder.is_dir():
        raise DataError(f"speech-commands: folder {folder} not found; {_LAYOUT}")
    needed = ["testing_list.txt"] + (["validation_list.txt"] if validation == "drop" else [])
    for name in needed:
        if not (folder / name).is_file():
            raise DataError(f"speech-commands: {folder / name} not found; {_LAYOUT}")
    if sample_rate <= 0:
        raise DataError(f"speech-commands: sample_rate must be positive, got {sample_rate}")
    check_features(features)
    chosen = _select_words(folder, words)
    splits, mean, std = _prepared(folder, chosen, sample_rate, features, validation)
    inputs, targets = splits[split]
    info = DatasetInfo(
        name="speech-commands",
        task="classification",
        input_shape=(1, 32, 32),
        classes=chosen,
        split_sizes={s: len(splits[s][1]) for s in ("train", "test")},
        source=f"{_SOURCE}, read from {folder}",
        extra={
            "sample_rate": sample_rate,
            "features": features,
            "validation": validation,
            "mean": mean,
            "std": std,
        },
    )
    return ArrayDataset(torch.from_numpy(inputs), torch.from_numpy(targets), info)
