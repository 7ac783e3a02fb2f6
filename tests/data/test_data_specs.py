"""Data-set specs: the user's own torch Datasets from file.py:callable."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from edgetrain import data
from edgetrain.errors import DataError
from edgetrain.runs import load_config

SOURCE = """
import torch
from torch.utils.data import Dataset, TensorDataset

def pair(n=24):
    x, y = torch.randn(n, 2, 5), torch.arange(n) % 3
    return TensorDataset(x, y), TensorDataset(x[:6], y[:6])

class Named(Dataset):
    classes = ["cat", "dog"]
    def __len__(self):
        return 4
    def __getitem__(self, i):
        return [float(i), 1.0], i % 2

def as_dict():
    return {"train": Named(), "test": Named()}

def one_split():
    return TensorDataset(torch.zeros(2, 3), torch.tensor([0, 1]))

def float_labels():
    d = TensorDataset(torch.zeros(2, 3), torch.tensor([0.0, 1.0]))
    return d, d

def too_high():
    d = Named()
    d.classes = ["only"]
    return d, d

def single_class():
    d = TensorDataset(torch.zeros(3, 3), torch.zeros(3, dtype=torch.long))
    return d, d

def broken():
    raise FileNotFoundError("no /data/sensors")
"""


@pytest.fixture
def source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "mydata.py"
    path.write_text(SOURCE)
    monkeypatch.chdir(tmp_path)
    return path


def test_a_pair_of_tensor_datasets_with_the_info_read_from_the_data(source: Path) -> None:
    train = data.create("./mydata.py:pair", "train", n=30)
    test = data.create("./mydata.py:pair", "test", n=30)
    assert (len(train), len(test)) == (30, 6)
    assert train.info.input_shape == (2, 5) and train.info.classes == ("0", "1", "2")
    x, y = train[4]
    assert x.dtype == torch.float32 and y.dtype == torch.int64 and int(y) == 1


def test_a_dict_of_datasets_with_named_classes(source: Path) -> None:
    test = data.create("./mydata.py:as_dict", "test", augment=None)
    assert test.info.classes == ("cat", "dog") and test.info.input_shape == (2,)
    assert torch.equal(test[3][0], torch.tensor([3.0, 1.0]))


@pytest.mark.parametrize(
    ("fn", "needle"),
    [
        ("one_split", "returned a TensorDataset; return (train, test)"),
        ("float_labels", "train labels must be integer class indices"),
        ("too_high", "label 1 is outside the 1 classes (0..0)"),
        ("single_class", "the train split holds one class"),
        ("broken", "failed: FileNotFoundError: no /data/sensors"),
    ],
)
def test_bad_data_sets_are_one_line(source: Path, fn: str, needle: str) -> None:
    with pytest.raises(DataError, match=re.escape(needle)):
        data.create(f"./mydata.py:{fn}", "train")


def test_a_run_config_records_the_spec_by_absolute_path(source: Path) -> None:
    tree = {
        "name": "mine",
        "epochs": 1,
        "data": {"name": "./mydata.py:pair", "options": {"n": 12}},
        "model": {"name": "fcn1d"},
    }
    assert load_config(tree).data.name == f"{source}:pair"
    tree["data"]["options"] = {"rows": 12}
    with pytest.raises(Exception, match="has no option 'rows'; valid options: n"):
        load_config(tree)
    tree["data"] = {"name": "./mydata.py:pair", "shift": "rotate180-invert"}
    config = load_config(tree)
    with pytest.raises(DataError, match="data.shift 'rotate180-invert' needs a data set held"):
        data.create(config.data.name, "train", shift=config.data.shift)


def test_registered_families_are_not_specs() -> None:
    from edgetrain.data.spec import is_data_spec

    assert not is_data_spec("ucr:GunPoint") and not is_data_spec("digits")
    assert is_data_spec("./x.py:load") and is_data_spec("mypkg.data:load")
