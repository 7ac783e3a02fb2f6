"""Tests of the audio front end: WAV reading, resampling, length fixing, mel filters, features."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.io import wavfile

from edgetrain.data.audio import (
    extract_features,
    fix_length,
    mel_filterbank,
    read_wav,
    resample,
    standardize,
)
from edgetrain.errors import DataError


def _tone(freq: float, rate: int, seconds: float = 1.0) -> np.ndarray:
    t = np.arange(round(rate * seconds)) / rate
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


@pytest.mark.parametrize(("rate", "n_fft"), [(16000, 512), (8000, 256)])
def test_mel_filterbank_is_a_row_of_triangles(rate: int, n_fft: int) -> None:
    fb = mel_filterbank(rate, n_fft, 32)
    assert fb.shape == (32, n_fft // 2 + 1)
    assert fb.min() >= 0.0 and fb.max() <= 1.0
    peaks = fb.argmax(axis=1)
    assert np.all(np.diff(peaks) > 0), "filter centres must rise with the filter index"
    for row, peak in zip(fb, peaks, strict=True):
        assert row[peak] > 0.5
        assert np.all(np.diff(row[: peak + 1]) >= 0) and np.all(np.diff(row[peak:]) <= 0)


def test_mel_filterbank_sums_to_one_between_first_and_last_centre() -> None:
    fb = mel_filterbank(16000, 512, 32)
    peaks = fb.argmax(axis=1)
    inside = fb[:, peaks[0] + 1 : peaks[-1]].sum(axis=0)
    np.testing.assert_allclose(inside, 1.0, atol=1e-5)
    assert fb[:, 0].sum() == 0.0, "DC lies below fmin=20 Hz"


def test_mel_filterbank_rejects_fmax_above_nyquist() -> None:
    with pytest.raises(ValueError, match="fmax"):
        mel_filterbank(8000, 256, 32, fmax=6000.0)


@pytest.mark.parametrize(("orig", "target"), [(22050, 16000), (16000, 8000), (8000, 16000)])
def test_resample_length_and_pitch(orig: int, target: int) -> None:
    out = resample(_tone(440.0, orig), orig, target)
    assert out.shape == (target,) and out.dtype == np.float32
    spectrum = np.abs(np.fft.rfft(out))
    assert np.fft.rfftfreq(len(out), 1 / target)[spectrum.argmax()] == pytest.approx(440.0, abs=1.0)


def test_resample_batch_and_same_rate() -> None:
    x = np.stack([_tone(300.0, 16000), _tone(600.0, 16000)])
    assert resample(x, 16000, 8000).shape == (2, 8000)
    np.testing.assert_array_equal(resample(x, 16000, 16000), x)


@pytest.mark.parametrize(
    ("length", "offset", "expected"),
    [
        (5, 0, [1, 2, 3, 0, 0]),
        (2, 0, [1, 2]),
        (5, 3, [0, 0, 0, 1, 2]),
        (3, -1, [2, 3, 0]),
        (3, 7, [0, 0, 0]),
    ],
)
def test_fix_length(length: int, offset: int, expected: list[int]) -> None:
    out = fix_length(np.array([1.0, 2.0, 3.0]), length, offset)
    np.testing.assert_array_equal(out, expected)


def test_read_wav_scales_integer_pcm_and_mixes_channels(tmp_path) -> None:
    wavfile.write(tmp_path / "a.wav", 16000, np.array([-32768, 0, 16384], dtype=np.int16))
    samples, rate = read_wav(tmp_path / "a.wav")
    assert rate == 16000 and samples.dtype == np.float32
    np.testing.assert_allclose(samples, [-1.0, 0.0, 0.5])

    wavfile.write(tmp_path / "b.wav", 8000, np.array([0, 128, 255], dtype=np.uint8))
    np.testing.assert_allclose(read_wav(tmp_path / "b.wav")[0], [-1.0, 0.0, 127 / 128])

    stereo = np.array([[0.5, -0.5], [1.0, 0.0]], dtype=np.float32)
    wavfile.write(tmp_path / "c.wav", 22050, stereo)
    samples, rate = read_wav(tmp_path / "c.wav")
    assert rate == 22050
    np.testing.assert_allclose(samples, [0.0, 0.5])


def test_read_wav_names_a_malformed_file(tmp_path) -> None:
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not a wav file at all")
    with pytest.raises(DataError, match="bad.wav"):
        read_wav(bad)


@pytest.mark.parametrize("features", ["logmel", "spectrogram"])
@pytest.mark.parametrize("rate", [16000, 8000])
def test_features_shape_and_frequency_axis(features: str, rate: int) -> None:
    waves = np.stack([_tone(300.0, rate), _tone(3000.0, rate), np.zeros(rate, np.float32)])
    x = extract_features(waves, rate, features)
    assert x.shape == (3, 1, 32, 32) and x.dtype == np.float32
    assert np.isfinite(x).all()
    low_row, high_row = (int(x[i, 0].mean(axis=1).argmax()) for i in (0, 1))
    assert low_row < high_row, "frequency axis must run from low to high"
    assert np.allclose(x[2], -80.0), "digital silence sits at the -80 dB floor"


def test_same_tone_lands_higher_at_8k() -> None:
    # The filterbank ends at Nyquist, so 8 kHz and 16 kHz images differ: the transfer scenario.
    rows = [
        int(extract_features(_tone(2000.0, r)[None], r)[0, 0].mean(axis=1).argmax())
        for r in (16000, 8000)
    ]
    assert rows[1] > rows[0]


def test_unknown_features_is_a_data_error() -> None:
    with pytest.raises(DataError, match="logmel, spectrogram"):
        extract_features(np.zeros((1, 8000), np.float32), 8000, "mfcc")


def test_standardize_fits_on_train_only() -> None:
    splits, mean, std = standardize({"train": np.array([1.0, 3.0]), "test": np.array([7.0])})
    assert (mean, std) == (2.0, 1.0)
    np.testing.assert_allclose(splits["train"], [-1.0, 1.0])
    np.testing.assert_allclose(splits["test"], [5.0])
    constant, _, std = standardize({"train": np.full(4, 3.0)})
    assert std == 1.0 and np.all(constant["train"] == 0.0)
