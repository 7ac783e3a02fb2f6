"""Keyword spotting data sets synthesised offline with the espeak-ng speech synthesiser.

``keywords-en`` (go, left, right, up, down, stop, yes, no) and ``keywords-de`` (los, links,
rechts, rauf, runter, halt, ja, nein; the same class order) at 16 kHz, and their ``@8k``
variants: the same utterances resampled to 8 kHz. Each utterance draws, from a generator
seeded by (seed, language, word, utterance index), a voice variant (m1-m7, f1-f4), pitch,
speed and amplitude for espeak-ng, a random position inside a 1 s window, and coloured
background noise (white, pink or brown) at an SNR of 5-30 dB. The 16 kHz waveforms are
generated once into :func:`edgetrain.data.cache_dir` (one file per language, utterance
count and seed, shared by both sample rates, feature kinds and splits); features and the
stratified train/test split are computed from the cache on every load.
"""

from __future__ import annotations

import os
import re
import struct
import subprocess
import zipfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.progress import track

from edgetrain._atomic import atomic_writer
from edgetrain._optional import require_program
from edgetrain.data.audio import check_features, extract_features, fix_length, resample, standardize
from edgetrain.data.base import ArrayDataset, DatasetInfo, cache_dir
from edgetrain.data.registry import DATASETS
from edgetrain.errors import DataError

__all__ = ["WORDS"]

WORDS: dict[str, tuple[str, ...]] = {
    "en": ("go", "left", "right", "up", "down", "stop", "yes", "no"),
    "de": ("los", "links", "rechts", "rauf", "runter", "halt", "ja", "nein"),
}

_RATE = 16000  # generation and cache rate; the @8k variants resample from it
_VARIANTS = tuple(f"m{i}" for i in range(1, 8)) + tuple(f"f{i}" for i in range(1, 5))
_PITCH = (20, 80)  # espeak-ng -p, 0-99
_SPEED = (130, 210)  # espeak-ng -s, words per minute
_AMPLITUDE = (60, 140)  # espeak-ng -a, 0-200
_SNR_DB = (5.0, 30.0)
_NOISE_EXPONENTS = (0.0, 1.0, 2.0)  # power spectrum ~ 1/f^beta: white, pink, brown
_GENERATOR_VERSION = 1  # bump when synthesis changes, so stale caches are not reused
_WORKERS = 2


def _synthesise(
    text: str, voice: str, pitch: int, speed: int, amplitude: int
) -> tuple[np.ndarray, int]:
    """Run espeak-ng once; return int16 samples and their sample rate."""
    cmd = ["espeak-ng", "-v", voice, "-p", str(pitch), "-s", str(speed), "-a", str(amplitude)]
    try:
        raw = subprocess.run([*cmd, "--stdout", text], capture_output=True, check=True).stdout
    except subprocess.CalledProcessError as exc:
        message = exc.stderr.decode(errors="replace").strip()
        raise DataError(f"espeak-ng failed on {text!r} with voice {voice}: {message}") from exc
    # espeak-ng streams the WAV with unknown (0xFFFFFFFF) sizes, so read the header by hand.
    rate = struct.unpack_from("<I", raw, 24)[0]
    data = raw.find(b"data") + 8
    return np.frombuffer(raw[data : len(raw) - (len(raw) - data) % 2], dtype="<i2"), rate


def _espeak_version() -> str:
    out = subprocess.run(["espeak-ng", "--version"], capture_output=True, text=True).stdout
    match = re.search(r"\d+\.\d+(\.\d+)?", out)
    return match.group(0) if match else "unknown version"


def _coloured_noise(rng: np.random.Generator, length: int, exponent: float) -> np.ndarray:
    spectrum = np.fft.rfft(rng.standard_normal(length))
    freqs = np.fft.rfftfreq(length)
    freqs[0] = freqs[1]
    noise = np.fft.irfft(spectrum / freqs ** (exponent / 2.0), n=length)
    return noise / np.sqrt(np.mean(noise**2))


def _utterance(language: str, word_index: int, index: int, seed: int) -> np.ndarray:
    """One 1 s, 16 kHz int16 utterance, fully determined by its arguments."""
    rng = np.random.default_rng([seed, zlib.crc32(language.encode()), word_index, index])
    voice = f"{language}+{_VARIANTS[rng.integers(len(_VARIANTS))]}"
    pitch, speed, amplitude = (
        int(rng.integers(lo, hi + 1)) for lo, hi in (_PITCH, _SPEED, _AMPLITUDE)
    )
    pcm, rate = _synthesise(WORDS[language][word_index], voice, pitch, speed, amplitude)
    speech = resample(pcm.astype(np.float32) / 32768.0, rate, _RATE)
    peak = np.abs(speech).max(initial=0.0)
    if peak == 0.0:
        raise DataError(f"espeak-ng produced silence for {WORDS[language][word_index]!r} ({voice})")
    loud = np.flatnonzero(np.abs(speech) > 0.01 * peak)
    speech = speech[loud[0] : loud[-1] + 1]  # trim espeak's leading and trailing silence
    slack = _RATE - len(speech)
    offset = int(rng.integers(0, slack + 1)) if slack >= 0 else -int(rng.integers(0, -slack + 1))
    clip = fix_length(speech, _RATE, offset)
    snr_db = rng.uniform(*_SNR_DB)
    noise = _coloured_noise(rng, _RATE, float(rng.choice(_NOISE_EXPONENTS)))
    clip = clip + noise * np.sqrt(np.mean(speech**2) / 10.0 ** (snr_db / 10.0))
    return np.clip(np.round(clip * 32767.0), -32768, 32767).astype(np.int16)


def _generate(language: str, utterances_per_word: int, seed: int) -> np.ndarray:
    jobs = [(w, i) for w in range(len(WORDS[language])) for i in range(utterances_per_word)]
    pool = ThreadPoolExecutor(max_workers=min(_WORKERS, os.cpu_count() or 1))
    try:
        clips = pool.map(lambda job: _utterance(language, job[0], job[1], seed), jobs)
        rows = list(
            track(
                clips,
                total=len(jobs),
                description=f"synthesising keywords-{language}",
                console=Console(stderr=True),
            )
        )
    finally:
        # On Ctrl-C, drop the queued utterances instead of synthesising all of them.
        pool.shutdown(wait=True, cancel_futures=True)
    return np.stack(rows)


def _cached_waves(
    folder: Path, language: str, utterances_per_word: int, seed: int
) -> tuple[np.ndarray, str]:
    """The ``(words * utterances, 16000)`` int16 waveforms and the espeak-ng version."""
    stem = f"keywords-{language}-u{utterances_per_word}-seed{seed}-v{_GENERATOR_VERSION}"
    path = folder / f"{stem}.npz"
    if path.exists():
        try:
            with np.load(path) as cached:
                return cached["waves"], str(cached["espeak_version"])
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
            raise DataError(f"cache file {path} is unreadable ({exc}); delete it") from exc
    require_program("espeak-ng")
    version = _espeak_version()
    waves = _generate(language, utterances_per_word, seed)
    # An interrupted write leaves no complete-looking file.
    with atomic_writer(path, "wb") as f:
        np.savez(f, waves=waves, espeak_version=np.array(version))
    return waves, version


def _test_mask(words: int, utterances_per_word: int, test_fraction: float, seed: int) -> np.ndarray:
    """Stratified split: the same number of test utterances for every word, chosen at random."""
    n_test = min(max(round(utterances_per_word * test_fraction), 1), utterances_per_word - 1)
    rng = np.random.default_rng([seed, 1])
    mask = np.zeros((words, utterances_per_word), dtype=bool)
    for row in mask:
        row[rng.permutation(utterances_per_word)[:n_test]] = True
    return mask.reshape(-1)


@lru_cache(maxsize=4)
def _prepared(
    folder: Path,
    language: str,
    rate: int,
    utterances_per_word: int,
    seed: int,
    test_fraction: float,
    features: str,
) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], str, float, float]:
    waves, version = _cached_waves(folder, language, utterances_per_word, seed)
    clips = resample(waves.astype(np.float32) / 32768.0, _RATE, rate)
    x = extract_features(clips, rate, features)
    y = np.repeat(np.arange(len(WORDS[language]), dtype=np.int64), utterances_per_word)
    test = _test_mask(len(WORDS[language]), utterances_per_word, test_fraction, seed)
    scaled, mean, std = standardize({"train": x[~test], "test": x[test]})
    splits = {"train": (scaled["train"], y[~test]), "test": (scaled["test"], y[test])}
    return splits, version, mean, std


def _build(
    name: str,
    language: str,
    rate: int,
    split: str,
    utterances_per_word: int,
    seed: int,
    test_fraction: float,
    features: str,
) -> ArrayDataset:
    if utterances_per_word < 2:
        raise DataError(f"{name}: utterances_per_word must be >= 2, got {utterances_per_word}")
    if not 0.0 < test_fraction < 1.0:
        raise DataError(f"{name}: test_fraction must be in (0, 1), got {test_fraction}")
    check_features(features)
    splits, version, mean, std = _prepared(
        cache_dir(), language, rate, utterances_per_word, seed, test_fraction, features
    )
    inputs, targets = splits[split]
    info = DatasetInfo(
        name=name,
        task="classification",
        input_shape=(1, 32, 32),
        classes=WORDS[language],
        split_sizes={s: len(splits[s][1]) for s in ("train", "test")},
        source=(
            f"synthesised offline with espeak-ng {version} ({language} voices m1-m7/f1-f4, "
            f"random pitch, speed, amplitude, 1 s time shift, 5-30 dB coloured noise; seed {seed})"
        ),
        extra={
            "sample_rate": rate,
            "features": features,
            "utterances_per_word": utterances_per_word,
            "mean": mean,
            "std": std,
        },
    )
    return ArrayDataset(torch.from_numpy(inputs), torch.from_numpy(targets), info)


def _variant(name: str, language: str, rate: int, doc: str):  # noqa: ANN202 - a builder
    def builder(
        split: str = "train",
        utterances_per_word: int = 100,
        seed: int = 0,
        test_fraction: float = 0.2,
        features: str = "logmel",
    ) -> ArrayDataset:
        return _build(
            name, language, rate, split, utterances_per_word, seed, test_fraction, features
        )

    builder.__name__ = builder.__qualname__ = name.replace("-", "_").replace("@", "_")
    builder.__doc__ = doc
    return DATASETS.register(name, task="classification", offline=True)(builder)


keywords_en = _variant(
    "keywords-en",
    "en",
    16000,
    "English keywords synthesised with espeak-ng, 16 kHz, 1x32x32, 8 classes (offline).",
)
keywords_de = _variant(
    "keywords-de",
    "de",
    16000,
    "German keywords synthesised with espeak-ng, 16 kHz, 1x32x32, 8 classes (offline).",
)
keywords_en_8k = _variant(
    "keywords-en@8k",
    "en",
    8000,
    "English keywords resampled to 8 kHz, 1x32x32, 8 classes (offline).",
)
keywords_de_8k = _variant(
    "keywords-de@8k",
    "de",
    8000,
    "German keywords resampled to 8 kHz, 1x32x32, 8 classes (offline).",
)
