"""Tests of the Speech Commands v2 loader on a tiny folder of sine-wave WAVs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.io import wavfile

from edgetrain import data
from edgetrain.data import speech_commands as sc
from edgetrain.errors import DataError

TONES = {"yes": 400.0, "no": 1200.0, "up": 3000.0}  # one pitch per word
PER_WORD = 4


def _tone(freq: float, rate: int, seconds: float = 1.0) -> np.ndarray:
    t = np.arange(round(rate * seconds)) / rate
    return (0.5 * np.sin(2 * np.pi * freq * t) * 32767).astype(np.int16)


@pytest.fixture(autouse=True)
def _fresh() -> None:
    sc._prepared.cache_clear()


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """Three words x 4 clips; file 0 of each word is in testing, file 1 in validation."""
    folder = tmp_path / "speech_commands_v0.02"
    for word, freq in TONES.items():
        (folder / word).mkdir(parents=True)
        for i in range(PER_WORD):
            wavfile.write(folder / word / f"spk{i}_nohash_0.wav", 16000, _tone(freq, 16000))
    # An odd file: half a second at 8 kHz, to be resampled and padded.
    wavfile.write(folder / "up" / "spk3_nohash_0.wav", 8000, _tone(TONES["up"], 8000, 0.5))
    (folder / "_background_noise_").mkdir()
    wavfile.write(folder / "_background_noise_" / "white_noise.wav", 16000, _tone(50.0, 16000))
    (folder / "testing_list.txt").write_text("".join(f"{w}/spk0_nohash_0.wav\n" for w in TONES))
    (folder / "validation_list.txt").write_text("".join(f"{w}/spk1_nohash_0.wav\n" for w in TONES))
    return folder


def test_default_words_splits_and_shapes(root: Path) -> None:
    train = data.create("speech-commands", "train", root=str(root))
    test = data.create("speech-commands", "test", root=str(root))
    info = train.info
    assert info.classes == ("no", "up", "yes"), "sorted word folders, _background_noise_ left out"
    assert info.input_shape == (1, 32, 32) and info.task == "classification"
    assert info.split_sizes == {"train": 9, "test": 3}
    assert train.inputs.shape == (9, 1, 32, 32) and test.inputs.shape == (3, 1, 32, 32)
    assert test.targets.tolist() == [0, 1, 2]
    assert torch.bincount(train.targets).tolist() == [3, 3, 3]
    assert "Speech Commands" in info.source and str(root) in info.source
    assert torch.isfinite(train.inputs).all()
    assert abs(float(train.inputs.mean())) < 1e-4


def test_validation_drop_keeps_the_official_train_split(root: Path) -> None:
    train = data.create("speech-commands", "train", root=str(root), validation="drop")
    assert train.info.split_sizes == {"train": 6, "test": 3}
    assert train.info.extra["validation"] == "drop"


@pytest.mark.parametrize("words", ["yes,no", ["yes", "no"]])
def test_word_subset_in_given_order(root: Path, words: str | list[str]) -> None:
    test = data.create("speech-commands", "test", root=str(root), words=words)
    assert test.info.classes == ("yes", "no")
    assert test.targets.tolist() == [0, 1], "labels follow the given word order"
    rows = test.inputs[:, 0].mean(dim=2).argmax(dim=1)
    assert rows[0] < rows[1], "the 400 Hz word ('yes') sits below the 1200 Hz word ('no')"


def test_other_rate_and_short_file_are_resampled_and_padded(root: Path) -> None:
    train = data.create("speech-commands", "train", root=str(root), words=["up"])
    odd, regular = train.inputs[-1, 0], train.inputs[0, 0]
    # Same tone, so the same frequency rows; the padded half second is silent.
    assert int(odd.mean(dim=1).argmax()) == int(regular.mean(dim=1).argmax())
    assert odd[:, -4:].mean() < regular[:, -4:].mean()
    narrow = data.create("speech-commands", "train", root=str(root), sample_rate=8000)
    assert narrow.info.extra["sample_rate"] == 8000 and narrow.inputs.shape == (9, 1, 32, 32)
    assert not torch.allclose(narrow.inputs, data.create("speech-commands", root=str(root)).inputs)


def test_spectrogram_features(root: Path) -> None:
    test = data.create("speech-commands", "test", root=str(root), features="spectrogram")
    assert test.inputs.shape == (3, 1, 32, 32) and test.info.extra["features"] == "spectrogram"


def _one_line(exc: pytest.ExceptionInfo[DataError]) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


def test_missing_folder_names_the_layout(tmp_path: Path) -> None:
    with pytest.raises(DataError) as exc:
        data.create("speech-commands", "train", root=str(tmp_path / "nowhere"))
    message = _one_line(exc)
    assert "nowhere not found" in message and "<root>/<word>/*.wav" in message
    assert "testing_list.txt" in message
    with pytest.raises(DataError, match="needs root="):
        data.create("speech-commands", "train")


def test_malformed_folders(root: Path, tmp_path: Path) -> None:
    (root / "validation_list.txt").unlink()
    data.create("speech-commands", "test", root=str(root))  # not needed unless dropped
    with pytest.raises(DataError, match="validation_list.txt not found"):
        data.create("speech-commands", "test", root=str(root), validation="drop")
    (root / "testing_list.txt").unlink()
    with pytest.raises(DataError, match="testing_list.txt not found"):
        data.create("speech-commands", "test", root=str(root))

    empty = tmp_path / "empty"
    (empty / "_background_noise_").mkdir(parents=True)
    (empty / "testing_list.txt").write_text("")
    with pytest.raises(DataError) as exc:
        data.create("speech-commands", "train", root=str(empty))
    assert "no word folders" in _one_line(exc)


def test_bad_options(root: Path) -> None:
    with pytest.raises(DataError, match="no word folder left in .*available: no, up, yes"):
        data.create("speech-commands", "train", root=str(root), words="yes,left")
    with pytest.raises(DataError, match="validation must be train or drop"):
        data.create("speech-commands", "train", root=str(root), validation="keep")
    with pytest.raises(DataError, match="unknown features"):
        data.create("speech-commands", "train", root=str(root), features="mfcc")


def test_corrupt_wav_is_named(root: Path) -> None:
    (root / "no" / "broken_nohash_0.wav").write_bytes(b"RIFF....garbage")
    with pytest.raises(DataError, match="broken_nohash_0.wav"):
        data.create("speech-commands", "train", root=str(root))
