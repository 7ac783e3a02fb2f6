"""Tests of the espeak-ng keyword data sets (tiny sizes, cache in a temporary folder)."""

from __future__ import annotations

import inspect
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from edgetrain import data
from edgetrain.data import keywords
from edgetrain.errors import ConfigError, DataError, MissingDependencyError

NAMES = ("keywords-en", "keywords-de", "keywords-en@8k", "keywords-de@8k")
SMALL = {"utterances_per_word": 3}

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs espeak-ng")


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv("EDGETRAIN_CACHE", str(folder))
    keywords._prepared.cache_clear()
    yield folder
    keywords._prepared.cache_clear()


def _use_cache(monkeypatch: pytest.MonkeyPatch, folder: Path) -> None:
    monkeypatch.setenv("EDGETRAIN_CACHE", str(folder))
    keywords._prepared.cache_clear()


def test_all_names_registered_with_at_least_100_utterances_by_default() -> None:
    assert set(NAMES) <= set(data.list_datasets("keywords*"))
    for name in NAMES:
        default = inspect.signature(data.DATASETS.entry(name).fn).parameters["utterances_per_word"]
        assert default.default >= 100


@needs_espeak
@pytest.mark.parametrize("name", NAMES)
def test_shapes_classes_and_split_sizes(name: str) -> None:
    train = data.create(name, "train", **SMALL)
    test = data.create(name, "test", **SMALL)
    language = name[len("keywords-") :][:2]
    info = train.info
    assert info.name == name and info.task == "classification"
    assert info.classes == keywords.WORDS[language] and info.num_classes == 8
    assert info.input_shape == (1, 32, 32)
    assert train.inputs.shape == (16, 1, 32, 32) and test.inputs.shape == (8, 1, 32, 32)
    assert info.split_sizes == {"train": 16, "test": 8} == test.info.split_sizes
    assert torch.bincount(train.targets).tolist() == [2] * 8
    assert torch.bincount(test.targets).tolist() == [1] * 8
    assert info.source.startswith("synthesised offline with espeak-ng 1.")
    assert info.extra["sample_rate"] == (8000 if name.endswith("@8k") else 16000)
    assert torch.isfinite(train.inputs).all()
    assert abs(float(train.inputs.mean())) < 1e-4
    assert float(train.inputs.std()) == pytest.approx(1.0, rel=0.05)


def test_class_order_matches_between_languages() -> None:
    assert " ".join(keywords.WORDS["en"]) == "go left right up down stop yes no"
    assert " ".join(keywords.WORDS["de"]) == "los links rechts rauf runter halt ja nein"


@needs_espeak
def test_same_seed_regenerates_identical_data_and_other_seed_differs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = data.create("keywords-en", "train", **SMALL).inputs
    _use_cache(monkeypatch, tmp_path / "fresh")
    monkeypatch.setattr(keywords, "_WORKERS", 1)  # same result whatever the parallelism
    again = data.create("keywords-en", "train", **SMALL).inputs
    assert torch.equal(first, again)
    other = data.create("keywords-en", "train", seed=1, **SMALL).inputs
    assert not torch.allclose(first, other)


@needs_espeak
def test_utterances_vary_voice_pitch_speed_amplitude(
    cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[str, str, int, int, int]] = []
    real = keywords._synthesise

    def spy(text: str, voice: str, pitch: int, speed: int, amplitude: int):
        calls.append((text, voice, pitch, speed, amplitude))
        return real(text, voice, pitch, speed, amplitude)

    monkeypatch.setattr(keywords, "_synthesise", spy)
    data.create("keywords-de", "train", utterances_per_word=6)
    assert len(calls) == 48
    assert {c[0] for c in calls} == set(keywords.WORDS["de"])
    assert all(c[1].startswith("de+") for c in calls)
    for column in range(1, 5):
        assert len({c[column] for c in calls}) > 5, f"argument {column} hardly varies"
    waves, _ = keywords._cached_waves(cache, "de", 6, 0)
    assert waves.shape == (48, 16000) and waves.dtype == np.int16
    assert len({w.tobytes() for w in waves}) == 48
    assert np.all(np.abs(waves[:, :50]).max(axis=1) > 0), "background noise covers the clip"


@needs_espeak
def test_cache_is_reused_across_features_splits_and_rates(
    cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data.create("keywords-en", "train", **SMALL)
    assert [p.name for p in cache.iterdir()] == ["keywords-en-u3-seed0-v1.npz"]

    def fail(*args, **kwargs):
        raise AssertionError("espeak-ng called although the cache holds the data")

    monkeypatch.setattr(keywords, "_synthesise", fail)
    keywords._prepared.cache_clear()
    spec = data.create("keywords-en@8k", "test", features="spectrogram", **SMALL)
    assert spec.info.extra["features"] == "spectrogram" and len(spec) == 8
    assert len(list(cache.iterdir())) == 1


@needs_espeak
def test_8k_variant_holds_the_same_utterances_with_other_features() -> None:
    wide = data.create("keywords-de", "train", **SMALL)
    narrow = data.create("keywords-de@8k", "train", **SMALL)
    assert torch.equal(wide.targets, narrow.targets)
    assert not torch.allclose(wide.inputs, narrow.inputs, atol=0.1)


@needs_espeak
def test_interrupted_generation_leaves_no_cache_file(
    cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = keywords._synthesise
    calls = []

    def flaky(*args):
        calls.append(args)
        if len(calls) > 5:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(keywords, "_synthesise", flaky)
    monkeypatch.setattr(keywords, "_WORKERS", 1)
    with pytest.raises(KeyboardInterrupt):
        data.create("keywords-en", "train", **SMALL)
    assert list(cache.iterdir()) == []


def test_missing_espeak_raises_install_hint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(MissingDependencyError, match="'espeak-ng' was not found.*apt-get install"):
        data.create("keywords-en", "train", **SMALL)


def test_bad_options_are_one_line_errors() -> None:
    with pytest.raises(DataError, match="test_fraction"):
        data.create("keywords-en", "train", test_fraction=1.5, **SMALL)
    with pytest.raises(DataError, match="unknown features 'mfcc'"):
        data.create("keywords-en", "train", features="mfcc", **SMALL)
    with pytest.raises(DataError, match="utterances_per_word"):
        data.create("keywords-en", "train", utterances_per_word=1)
    with pytest.raises(ConfigError, match="has no option 'sample_rate'"):
        data.create("keywords-en", "train", sample_rate=8000)


def test_corrupt_cache_file_is_named(cache: Path) -> None:
    cache.mkdir(parents=True)
    (cache / "keywords-en-u3-seed0-v1.npz").write_bytes(b"truncated")
    with pytest.raises(DataError, match="keywords-en-u3-seed0-v1.npz is unreadable"):
        data.create("keywords-en", "train", **SMALL)
