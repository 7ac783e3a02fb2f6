"""Every registered data set honours the contract; parametrised over the registry."""

from __future__ import annotations

import shutil

import pytest
import torch

from edgetrain import data
from edgetrain.errors import DataError, UnknownNameError

# Options that keep generated sets tiny in tests; parametric entries need a variant.
TEST_OPTIONS = {
    "keywords-en": {"utterances_per_word": 2},
    "keywords-de": {"utterances_per_word": 2},
    "keywords-en@8k": {"utterances_per_word": 2},
    "keywords-de@8k": {"utterances_per_word": 2},
}
VARIANTS = {"ucr": "ucr:GunPoint"}
OFFLINE = [e.name for e in data.DATASETS if e.meta.get("offline")]
NEEDS_FILES = [e.name for e in data.DATASETS if not e.meta.get("offline")]


@pytest.fixture(autouse=True)
def _cache(monkeypatch, tmp_path_factory):
    monkeypatch.setenv("EDGETRAIN_CACHE", str(tmp_path_factory.mktemp("cache")))


@pytest.mark.parametrize("name", OFFLINE)
def test_offline_entry_contract(name):
    if name.startswith("keywords") and shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed")
    full = VARIANTS.get(name, name)
    options = TEST_OPTIONS.get(name, {})
    splits = {s: data.create(full, s, **options) for s in data.SPLITS}
    info = splits["train"].info
    assert info == splits["test"].info
    assert info.task == "classification" and info.source
    assert info.num_classes >= 2
    for split, ds in splits.items():
        assert len(ds) == info.split_sizes[split] > 0
        x, y = ds[0]
        assert tuple(x.shape) == info.input_shape
        assert x.dtype == torch.float32 and torch.isfinite(ds.inputs).all()
        assert int(ds.targets.min()) >= 0 and int(ds.targets.max()) < info.num_classes
    # every class appears in training
    assert set(splits["train"].targets.tolist()) == set(range(info.num_classes))
    assert data.describe(full, **options) == info


@pytest.mark.parametrize("name", NEEDS_FILES)
def test_file_loaders_name_the_missing_input(name, tmp_path):
    missing = tmp_path / "absent"
    options = {
        "ts-file": {"train_path": missing / "a_TRAIN.ts", "test_path": missing / "a_TEST.ts"},
        "arrays": {"path": str(missing / "train.npz")},
        "csv": {"path": str(missing / "train.csv")},
    }.get(name, {"root": missing})
    with pytest.raises(DataError) as err:
        data.create(name, "train", **options)
    message = str(err.value)
    assert "\n" not in message and "absent" in message


def test_unknown_name_and_split():
    with pytest.raises(UnknownNameError, match="choose one of: .*digits-32"):
        data.create("digit")
    with pytest.raises(DataError, match="unknown split 'val'"):
        data.create("digits", "val")


def test_digits_32_channels_and_split_are_deterministic():
    a = data.create("digits-32", "train", channels=3)
    b = data.create("digits-32", "train", channels=3)
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.targets, b.targets)
    assert a.inputs.shape == (1437, 3, 32, 32)
    assert torch.equal(a.inputs[:, 0], a.inputs[:, 2])
    c = data.create("digits-32", "train", seed=1)
    assert not torch.equal(c.targets, a.targets)
    # stratified: class shares in train and test differ by < 1 sample per class
    test = data.create("digits-32", "test")
    for k in range(10):
        share_train = (a.targets == k).float().mean()
        share_test = (test.targets == k).float().mean()
        assert abs(share_train - share_test) < 0.01


def test_digits_resize_to_any_size_with_one_or_three_channels():
    small = data.create("digits", "test")
    assert small.inputs.shape == (360, 1, 8, 8) and small.info.input_shape == (1, 8, 8)
    mid = data.create("digits", "test", size=16, channels=3)
    assert mid.inputs.shape == (360, 3, 16, 16) and mid.info.input_shape == (3, 16, 16)
    assert torch.equal(mid.targets, small.targets)  # the same images, resized
    big = data.create("digits", "test", size=32)
    assert torch.equal(big.inputs, data.create("digits-32", "test").inputs)
    with pytest.raises(DataError, match="size must be a whole number of pixels >= 8, got 4"):
        data.create("digits", "test", size=4)


def test_rotate180_invert_is_an_exact_involution_on_digits():
    base = data.create("digits-32", "test")
    shifted = data.create("digits-32", "test", shift="rotate180-invert")
    assert torch.allclose(shifted.inputs, 1.0 - base.inputs.flip(-1).flip(-2))
    assert torch.allclose(data.rotate180_invert(shifted.inputs), base.inputs)
    assert torch.equal(shifted.targets, base.targets)


def test_augmentations_preserve_shape_and_follow_the_global_seed():
    ds = data.create("digits-32", "train", augment=["flip", {"name": "crop", "padding": 4}])
    torch.manual_seed(3)
    first = torch.stack([ds[i][0] for i in range(16)])
    torch.manual_seed(3)
    again = torch.stack([ds[i][0] for i in range(16)])
    assert torch.equal(first, again) and first.shape == (16, 1, 32, 32)
    assert not torch.equal(first, ds.inputs[:16])  # something moved


def test_random_crop_keeps_content_within_padding():
    x = torch.zeros(1, 8, 8)
    x[0, 3, 3] = 1.0
    crop = data.RandomCrop(padding=2)
    for seed in range(20):
        torch.manual_seed(seed)
        y = crop(x)
        assert y.shape == x.shape and y.sum() <= 1.0
        if y.sum() == 1.0:
            r, c = (y[0] == 1.0).nonzero()[0].tolist()
            assert abs(r - 3) <= 2 and abs(c - 3) <= 2


def test_flip_probability_extremes():
    x = torch.arange(6.0).reshape(1, 2, 3)
    assert torch.equal(data.RandomHorizontalFlip(1.0)(x), x.flip(-1))
    assert torch.equal(data.RandomHorizontalFlip(0.0)(x), x)
