"""Tests of the image-folder loader on small PNG/BMP files written with Pillow."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from edgetrain import data
from edgetrain.errors import DataError


def _image(path: Path, red: int, size: tuple[int, int] = (8, 6)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (red, 40, 200)).save(path)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """Two classes of five uniform images; the red value names the image (cat 0-40, dog 100-140)."""
    for i in range(5):
        _image(tmp_path / "cat" / f"{i}.png", 10 * i)
        _image(tmp_path / "dog" / f"{i}.png", 100 + 10 * i)
    (tmp_path / "dog" / "0.png").rename(tmp_path / "dog" / "0.BMP")  # suffix case ignored
    (tmp_path / "dog" / "notes.txt").write_text("not an image")
    _image(tmp_path / ".thumbnails" / "x.png", 255)
    return tmp_path


def _reds(ds: data.ArrayDataset) -> set[int]:
    return {round(v) for v in (ds.inputs[:, 0, 0, 0] * 255).tolist()}


def test_split_is_stratified_disjoint_and_complete(root: Path) -> None:
    train = data.create("image-folder", "train", root=root)
    test = data.create("image-folder", "test", root=root)
    assert train.info.classes == ("cat", "dog")
    assert train.info.split_sizes == {"train": 8, "test": 2}
    assert train.inputs.shape == (8, 3, 6, 8) and train.info.input_shape == (3, 6, 8)
    assert sorted(test.targets.tolist()) == [0, 1]
    assert _reds(train) | _reds(test) == {0, 10, 20, 30, 40, 100, 110, 120, 130, 140}
    assert not _reds(train) & _reds(test)
    for ds in (train, test):  # labels follow the folder each image came from
        for red, label in zip(
            (ds.inputs[:, 0, 0, 0] * 255).tolist(), ds.targets.tolist(), strict=True
        ):
            assert label == (1 if red >= 100 else 0)


def test_pixels_are_scaled_to_unit_range(root: Path) -> None:
    ds = data.create("image-folder", "train", root=root)
    assert torch.allclose(ds.inputs[:, 1], torch.full_like(ds.inputs[:, 1], 40 / 255))
    assert torch.allclose(ds.inputs[:, 2], torch.full_like(ds.inputs[:, 2], 200 / 255))


def test_split_is_deterministic_for_a_seed_and_changes_with_it(root: Path) -> None:
    first = _reds(data.create("image-folder", "test", root=root, seed=3))
    again = _reds(data.create("image-folder", "test", root=root, seed=3))
    assert first == again
    others = {
        frozenset(_reds(data.create("image-folder", "test", root=root, seed=s))) for s in range(6)
    }
    assert len(others) > 1


def test_resize_and_grayscale(tmp_path: Path) -> None:
    for i in range(2):
        _image(tmp_path / "a" / f"{i}.png", 0)
        _image(tmp_path / "b" / f"{i}.png", 250)
    ds = data.create("image-folder", "test", root=tmp_path, size=4, channels=1)
    assert ds.inputs.shape == (2, 1, 4, 4) and ds.info.input_shape == (1, 4, 4)
    for image, label in zip(ds.inputs, ds.targets.tolist(), strict=True):
        red = 250 * label  # ITU-R 601 luma, as Pillow converts RGB to L
        grey = (0.299 * red + 0.587 * 40 + 0.114 * 200) / 255
        assert torch.allclose(image, torch.full_like(image, grey), atol=1 / 255)


def test_mixed_sizes_need_a_size(root: Path) -> None:
    _image(root / "cat" / "big.png", 50, size=(16, 16))
    with pytest.raises(DataError, match="pass size=N") as err:
        data.create("image-folder", "train", root=root)
    assert "\n" not in str(err.value)
    ds = data.create("image-folder", "train", root=root, size=16)
    assert ds.inputs.shape[1:] == (3, 16, 16)


def test_train_and_test_folders_are_used_as_they_are(tmp_path: Path) -> None:
    for i in range(3):
        _image(tmp_path / "train" / "a" / f"{i}.png", i)
        _image(tmp_path / "train" / "b" / f"{i}.png", 100 + i)
    _image(tmp_path / "test" / "b" / "0.png", 200)
    train = data.create("image-folder", "train", root=tmp_path)
    test = data.create("image-folder", "test", root=tmp_path)
    assert train.info.classes == ("a", "b") and test.info.split_sizes == {"train": 6, "test": 1}
    assert test.targets.tolist() == [1] and _reds(test) == {200}
    _image(tmp_path / "test" / "c" / "0.png", 1)
    with pytest.raises(DataError, match="classes missing from .*: c"):
        data.create("image-folder", "test", root=tmp_path)


@pytest.mark.parametrize(
    ("setup", "options", "pattern"),
    [
        (None, {}, "pass root="),
        ("missing", {}, "not found; expected"),
        ("no-classes", {}, "has no class sub-folders"),
        ("empty-class", {}, "holds no .png"),
        ("corrupt", {}, "cannot read image"),
        ("ok", {"channels": 2}, "channels must be 1 or 3"),
        ("ok", {"test_fraction": 1.0}, "test_fraction must be in"),
    ],
)
def test_bad_input_is_one_data_error_line(
    tmp_path: Path, setup: str | None, options: dict, pattern: str
) -> None:
    folder = tmp_path / "images"
    if setup != "missing":
        folder.mkdir()
    if setup in ("empty-class", "corrupt", "ok"):
        _image(folder / "a" / "0.png", 1)
        _image(folder / "a" / "1.png", 2)
    if setup == "empty-class":
        (folder / "b").mkdir()
    if setup == "corrupt":  # a class of one image always lands in train
        (folder / "b").mkdir()
        (folder / "b" / "0.png").write_bytes(b"\x89PNG not really")
    root = None if setup is None else folder
    with pytest.raises(DataError, match=pattern) as err:
        data.create("image-folder", "train", root=root, **options)
    assert "\n" not in str(err.value)


def test_sixteen_bit_grey_images_keep_their_range(tmp_path: Path) -> None:
    import numpy as np

    for cls, level in (("dark", 10_000), ("light", 50_000)):
        for i in range(2):
            pixels = np.full((6, 6), level, dtype=np.uint16)
            path = tmp_path / cls / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(path)  # a 16-bit PNG
            assert Image.open(path).mode.startswith("I;16")
    for channels in (1, 3):
        ds = data.create("image-folder", "test", root=tmp_path, channels=channels)
        assert ds.inputs.shape[1] == channels
        for image, label in zip(ds.inputs, ds.targets.tolist(), strict=True):
            level = (10_000, 50_000)[label] / 65535  # not clipped to 1.0
            assert torch.allclose(image, torch.full_like(image, level), atol=1e-4)


def test_train_and_test_images_of_different_sizes_need_a_size(tmp_path: Path) -> None:
    for i in range(2):
        _image(tmp_path / "train" / "a" / f"{i}.png", i)  # 8x8
        _image(tmp_path / "test" / "a" / f"{i}.png", i, size=(12, 12))
    for split in ("train", "test"):
        with pytest.raises(DataError, match=r"\(train and test differ\); pass size=N"):
            data.create("image-folder", split, root=tmp_path)
    assert data.create("image-folder", "test", root=tmp_path, size=8).inputs.shape[2:] == (8, 8)
