"""Tests of the UCR sets shipped with aeon and of the ``.ts`` file loader."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from edgetrain import data
from edgetrain.data import ucr
from edgetrain.errors import DataError, EdgetrainError

pytest.importorskip("aeon")

_HEADER = """# a tiny two-channel problem
@problemName Tiny
@timeStamps false
@missing false
@univariate false
@dimensions 2
@equalLength {equal}
{length}@classLabel true Up Down
@data
"""


def _ts(path: Path, rows: list[str], equal: bool = True, length: int | None = 4) -> Path:
    header = _HEADER.format(
        equal=str(equal).lower(), length=f"@seriesLength {length}\n" if length else ""
    )
    path.write_text(header + "\n".join(rows) + "\n")
    return path


@pytest.fixture
def tiny(tmp_path: Path) -> tuple[Path, Path]:
    train = _ts(tmp_path / "Tiny_TRAIN.ts", ["1,2,3,4:4,3,2,1:Up", "2,2,2,2:0,1,0,1:Down"])
    test = _ts(tmp_path / "Tiny_TEST.ts", ["0,0,0,8:1,1,1,1:Down"])
    return train, test


def test_gunpoint_matches_the_archive() -> None:
    train = data.create("ucr:GunPoint", "train")
    test = data.create("ucr:GunPoint", "test")
    assert len(train) == 50 and len(test) == 150
    assert train.info.split_sizes == {"train": 50, "test": 150}
    assert train.info.input_shape == (1, 150) and train.inputs.shape == (50, 1, 150)
    assert train.info.classes == ("1", "2") and set(test.targets.tolist()) == {0, 1}
    assert train.inputs.dtype == torch.float32
    assert torch.allclose(train.inputs.mean(-1), torch.zeros(50, 1), atol=1e-5)
    assert torch.allclose(train.inputs.std(-1, unbiased=False), torch.ones(50, 1), atol=1e-4)


def test_raw_values_and_labels_match_the_file_text() -> None:
    ds = data.create("ucr:GunPoint", "train", znormalize=False)
    lines = Path(ds.info.extra["train_path"]).read_text().splitlines()
    first = lines[lines.index("@data") + 1].split(":")
    np.testing.assert_allclose(ds.inputs[0, 0].numpy(), np.array(first[0].split(","), float), 1e-6)
    assert ds.info.classes[int(ds.targets[0])] == first[1]


def test_italy_power_demand() -> None:
    ds = data.create("ucr:ItalyPowerDemand", "test")
    assert ds.info.split_sizes == {"train": 67, "test": 1029}
    assert ds.info.input_shape == (1, 24) and ds.info.num_classes == 2


def test_multivariate_class_names_keep_their_spelling_and_sort_as_strings() -> None:
    ds = data.create("ucr:BasicMotions", "train")
    assert ds.info.input_shape == (6, 100)
    assert ds.info.classes == ("Badminton", "Running", "Standing", "Walking")
    assert ds.info.split_sizes == {"train": 40, "test": 40}
    assert torch.bincount(ds.targets).tolist() == [10, 10, 10, 10]


def test_unequal_lengths_are_zero_padded_to_the_longest() -> None:
    ds = data.create("ucr:JapaneseVowels", "train")
    assert ds.info.input_shape == (12, 29) and ds.info.num_classes == 9
    assert ds.info.extra["padded"] and ds.info.extra["min_length"] == 7
    tails = (ds.inputs[:, :, -5:] == 0).all(dim=(1, 2))
    assert 0 < int(tails.sum()) < len(ds)  # short series are padded, the longest are not


def test_names_available_offline_are_the_classification_problems() -> None:
    names = data.ucr_names()
    for name in ("GunPoint", "ItalyPowerDemand", "ArrowHead", "OSULeaf", "BasicMotions"):
        assert name in names
    assert "Covid3Month" not in names and "CardanoSentiment" not in names  # regression


def test_unknown_name_lists_the_offline_names_in_one_line() -> None:
    with pytest.raises(EdgetrainError) as err:
        data.create("ucr:NoSuchSet", "train")
    message = str(err.value)
    assert "'NoSuchSet'" in message and "GunPoint" in message and "ts-file" in message
    assert "\n" not in message


def test_names_are_matched_without_case() -> None:
    assert data.describe("ucr:gunpoint").name == "ucr:GunPoint"


def test_ts_file_values_labels_and_znormalisation(tiny: tuple[Path, Path]) -> None:
    train_path, test_path = tiny
    raw = data.create(
        "ts-file", "train", train_path=train_path, test_path=test_path, znormalize=False
    )
    assert raw.info.classes == ("Down", "Up") and raw.targets.tolist() == [1, 0]
    assert raw.info.input_shape == (2, 4) and raw.info.split_sizes == {"train": 2, "test": 1}
    assert raw.inputs[0].tolist() == [[1, 2, 3, 4], [4, 3, 2, 1]]

    ds = data.create("ts-file", "train", train_path=train_path, test_path=test_path)
    ramp = (np.array([1, 2, 3, 4]) - 2.5) / np.std([1, 2, 3, 4])
    np.testing.assert_allclose(ds.inputs[0, 0].numpy(), ramp, rtol=1e-6)
    assert ds.inputs[1, 0].tolist() == [0, 0, 0, 0]  # a constant channel is centred, not NaN
    test = data.create("ts-file", "test", train_path=train_path, test_path=test_path)
    assert test.targets.tolist() == [0]


def test_ts_file_unequal_lengths(tmp_path: Path) -> None:
    rows = ["1,2,3:3,2,1:Up", "1,2,3,4,5:5,4,3,2,1:Down"]
    train = _ts(tmp_path / "U_TRAIN.ts", rows, equal=False, length=None)
    test = _ts(tmp_path / "U_TEST.ts", ["1,2:2,1:Up"], equal=False, length=None)
    ds = data.create("ts-file", "train", train_path=train, test_path=test, znormalize=False)
    assert ds.info.input_shape == (2, 5) and ds.info.extra["min_length"] == 2
    assert ds.inputs[0].tolist() == [[1, 2, 3, 0, 0], [3, 2, 1, 0, 0]]


@pytest.mark.parametrize(
    ("rows", "header_change", "pattern"),
    [
        (["1,2,3,4:4,3,2,1:Left"], None, "label 'left' is not declared"),
        (["1,2,x,4:4,3,2,1:Up"], None, "cannot read .* as a .ts file"),
        (["1,2,?,4:4,3,2,1:Up"], None, "missing values"),
        (["1,2,3,4:4,3,2,1:0.5"], ("@classLabel true Up Down", "@targetLabel true"), "regression"),
    ],
)
def test_bad_ts_files_are_one_data_error_line(
    tiny: tuple[Path, Path], rows: list[str], header_change: tuple | None, pattern: str
) -> None:
    train, test = tiny
    _ts(train, rows)
    if header_change:
        train.write_text(train.read_text().replace(*header_change))
    with pytest.raises(DataError, match=pattern) as err:
        data.create("ts-file", "train", train_path=train, test_path=test)
    assert "\n" not in str(err.value)


def test_ts_file_needs_existing_paths(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    with pytest.raises(DataError, match="pass both train_path"):
        data.create("ts-file", "train", train_path=tiny[0])
    with pytest.raises(DataError, match="absent.ts not found"):
        data.create("ts-file", "train", train_path=tiny[0], test_path=tmp_path / "absent.ts")


def test_shipped_folder_is_found_inside_the_aeon_package() -> None:
    import aeon

    assert Path(aeon.__file__).parent in ucr._aeon_data_dir().parents
