"""Audio front end shared by the keyword data sets: WAV reading, resampling and features.

A clip becomes a ``(1, 32, 32)`` image: a short-time Fourier transform (25 ms Hann window,
10 ms hop) gives a power spectrogram, which is either projected onto a mel filterbank
(``"logmel"``, HTK mel scale, 20 Hz to Nyquist) or kept on its linear frequency axis
(``"spectrogram"``, a magnitude spectrogram), pooled to 32x32 by averaging power, and
converted to decibels. Because the window and hop are fixed in milliseconds and the
filterbank ends at Nyquist, 8 kHz and 16 kHz clips give differently laid out images, which
is what makes the 16 kHz -> 8 kHz transfer scenario need conv adaptation. Data sets
standardise features with their train split's mean and standard deviation
(:func:`standardize`).
"""

from __future__ import annotations

import math
import wave
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy.io import wavfile
from scipy.signal import resample_poly

from edgetrain.errors import DataError

__all__ = [
    "FEATURES",
    "check_features",
    "extract_features",
    "fix_length",
    "mel_filterbank",
    "read_wav",
    "resample",
    "standardize",
]

FEATURES = ("logmel", "spectrogram")

_WINDOW_S = 0.025
_HOP_S = 0.010
_FMIN = 20.0
_FLOOR = 1e-8  # power floor: -80 dB below full scale, keeps digital silence finite
_CHUNK = 256  # clips per STFT batch, bounds peak memory on large data sets


def read_wav(path: str | Path) -> tuple[np.ndarray, int]:
    """Read a WAV file as mono float32 in [-1, 1] and its sample rate.

    Integer PCM (8, 16, 24 or 32 bit) is scaled to [-1, 1]; float files are kept as they
    are; several channels are averaged.

    Example:
        >>> samples, rate = read_wav("speech_commands/yes/0a7c2a8d_nohash_0.wav")
        >>> samples.dtype, rate
        (dtype('float32'), 16000)
    """
    try:
        rate, data = wavfile.read(str(path))
    except (OSError, ValueError, wave.Error) as exc:
        raise DataError(f"cannot read WAV file {path}: {exc}") from exc
    if data.dtype == np.uint8:
        samples = (data.astype(np.float32) - 128.0) / 128.0
    elif np.issubdtype(data.dtype, np.integer):
        samples = data.astype(np.float32) / float(-np.iinfo(data.dtype).min)
    else:
        samples = data.astype(np.float32)
    if samples.ndim == 2:
        samples = samples.mean(axis=1)
    return samples, int(rate)


def resample(samples: np.ndarray, orig_rate: int, target_rate: int) -> np.ndarray:
    """Resample along the last axis with a polyphase filter (``scipy.signal.resample_poly``).

    Example:
        >>> resample(np.zeros(22050, np.float32), 22050, 16000).shape
        (16000,)
    """
    if orig_rate == target_rate:
        return samples.astype(np.float32, copy=False)
    g = math.gcd(orig_rate, target_rate)
    out = resample_poly(samples, target_rate // g, orig_rate // g, axis=-1)
    return out.astype(np.float32, copy=False)


def fix_length(samples: np.ndarray, length: int, offset: int = 0) -> np.ndarray:
    """A 1-D array of ``length`` samples holding ``samples`` shifted right by ``offset``.

    Samples that land outside ``[0, length)`` are cut, the rest is zero: ``offset=0`` pads
    or crops at the end, a positive offset delays the clip, a negative one cuts its start.

    Example:
        >>> fix_length(np.array([1.0, 2.0, 3.0]), 5, offset=1)
        array([0., 1., 2., 3., 0.])
    """
    out = np.zeros(length, dtype=samples.dtype)
    start, stop = max(offset, 0), min(offset + len(samples), length)
    if stop > start:
        out[start:stop] = samples[start - offset : stop - offset]
    return out


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    return 2595.0 * np.log10(1.0 + hz / 700.0)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


def mel_filterbank(
    sample_rate: int, n_fft: int, n_mels: int, fmin: float = _FMIN, fmax: float | None = None
) -> np.ndarray:
    """Triangular mel filters (HTK mel scale) as a ``(n_mels, n_fft // 2 + 1)`` matrix.

    Filter ``k`` rises from mel point ``k`` to ``k + 1`` and falls to ``k + 2``, with peak
    1, the points evenly spaced in mel from ``fmin`` to ``fmax`` (default Nyquist). Between
    the first and last centre the filters sum to exactly 1.

    Example:
        >>> mel_filterbank(16000, 512, 32).shape
        (32, 257)
    """
    fmax = sample_rate / 2.0 if fmax is None else fmax
    if not 0.0 <= fmin < fmax <= sample_rate / 2.0:
        raise ValueError(f"need 0 <= fmin < fmax <= {sample_rate / 2}, got {fmin}, {fmax}")
    points = _mel_to_hz(
        np.linspace(_hz_to_mel(np.array(fmin)), _hz_to_mel(np.array(fmax)), n_mels + 2)
    )
    freqs = np.linspace(0.0, sample_rate / 2.0, n_fft // 2 + 1)
    left, centre, right = points[:-2, None], points[1:-1, None], points[2:, None]
    rising = (freqs - left) / (centre - left)
    falling = (right - freqs) / (right - centre)
    return np.maximum(0.0, np.minimum(rising, falling)).astype(np.float32)


def check_features(features: str) -> None:
    """Raise a one-line :class:`DataError` for an unknown feature name."""
    if features not in FEATURES:
        raise DataError(f"unknown features '{features}'; choose one of: {', '.join(FEATURES)}")


def extract_features(
    waves: np.ndarray, sample_rate: int, features: str = "logmel", size: int = 32
) -> np.ndarray:
    """Log-mel or magnitude spectrograms of equal-length clips, pooled to ``size x size``.

    Args:
        waves: float array ``(N, L)`` of clips in [-1, 1].
        sample_rate: their sample rate in Hz.
        features: ``"logmel"`` (``size`` mel bands) or ``"spectrogram"`` (linear frequency).
        size: side of the output image.

    Returns:
        float32 array ``(N, 1, size, size)`` in decibels, frequency on axis 2 (low first),
        time on axis 3.

    Example:
        >>> extract_features(np.zeros((2, 16000), np.float32), 16000).shape
        (2, 1, 32, 32)
    """
    check_features(features)
    win_length = round(_WINDOW_S * sample_rate)
    hop = round(_HOP_S * sample_rate)
    n_fft = 1 << (win_length - 1).bit_length()
    window = torch.hann_window(win_length)
    mel = (
        torch.from_numpy(mel_filterbank(sample_rate, n_fft, size)) if features == "logmel" else None
    )
    out = np.empty((len(waves), 1, size, size), dtype=np.float32)
    for start in range(0, len(waves), _CHUNK):
        x = torch.as_tensor(np.asarray(waves[start : start + _CHUNK], dtype=np.float32))
        spec = torch.stft(
            x, n_fft, hop_length=hop, win_length=win_length, window=window, return_complex=True
        )
        power = spec.real.square() + spec.imag.square()  # (n, n_fft // 2 + 1, frames)
        if mel is not None:
            power = torch.matmul(mel, power)
        pooled = F.adaptive_avg_pool2d(power.unsqueeze(1), (size, size))
        out[start : start + len(x)] = (10.0 * torch.log10(pooled.clamp_min(_FLOOR))).numpy()
    return out


def standardize(
    features: dict[str, np.ndarray], fit_on: str = "train"
) -> tuple[dict[str, np.ndarray], float, float]:
    """Shift and scale every split by the mean and standard deviation of split ``fit_on``.

    Returns:
        The standardised splits, the mean and the standard deviation (for ``info.extra``).

    Example:
        >>> x = {"train": np.array([1.0, 3.0]), "test": np.array([5.0])}
        >>> scaled, mean, std = standardize(x)
        >>> scaled["test"], mean, std
        (array([3.], dtype=float32), 2.0, 1.0)
    """
    reference = features[fit_on]
    mean = float(reference.mean()) if reference.size else 0.0
    std = float(reference.std()) if reference.size else 1.0
    std = std if std > 0.0 else 1.0
    scaled = {k: ((v - mean) / std).astype(np.float32) for k, v in features.items()}
    return scaled, mean, std
