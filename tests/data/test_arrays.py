"""The user's own arrays and CSV tables as data sets."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from edgetrain import data
from edgetrain.errors import DataError


def _blobs(n: int, shape: tuple[int, ...] = (2, 5), seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    x = rng.normal(size=(n, *shape)) + y.reshape(-1, *[1] * len(shape))
    return x.astype(np.float32), y


def test_an_npz_file_is_split_per_class(tmp_path: Path) -> None:
    x, y = _blobs(30)
    np.savez(tmp_path / "d.npz", x=x, y=y + 5)  # labels need not start at 0
    train = data.create("arrays", "train", path=str(tmp_path / "d.npz"), test_fraction=0.2)
    test = data.create("arrays", "test", path=str(tmp_path / "d.npz"), test_fraction=0.2)
    assert train.info.classes == ("5", "6", "7") and train.info.input_shape == (2, 5)
    assert (len(train), len(test)) == (24, 6)
    assert sorted(test.targets.tolist()) == [0, 0, 1, 1, 2, 2]  # stratified
    seen = {tuple(row) for row in torch.cat([train.inputs, test.inputs]).flatten(1).tolist()}
    assert len(seen) == 30  # a partition of the file


def test_npy_pairs_with_a_test_file_and_string_labels(tmp_path: Path) -> None:
    x, y = _blobs(12, (8,))
    names = np.array(["cat", "dog", "eel"])[y]
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", names)
    np.save(tmp_path / "xt.npy", x[:6])
    np.save(tmp_path / "yt.npy", names[:6])
    options = {
        "path": str(tmp_path / "x.npy"),
        "labels": str(tmp_path / "y.npy"),
        "test_path": str(tmp_path / "xt.npy"),
        "test_labels": str(tmp_path / "yt.npy"),
        "shape": [1, 8],
    }
    test = data.create("arrays", "test", **options)
    assert test.info.classes == ("cat", "dog", "eel") and test.info.input_shape == (1, 8)
    assert test.targets.tolist() == y[:6].tolist()
    assert torch.equal(test.inputs, torch.from_numpy(x[:6]).reshape(6, 1, 8))


CSV = "a,b,label,c\n" + "".join(
    f"{i},{i * 2},{'yes' if i % 2 else 'no'},{i % 3}\n" for i in range(20)
)


def test_a_csv_table_with_chosen_features_and_shape(tmp_path: Path) -> None:
    (tmp_path / "t.csv").write_text(CSV)
    train = data.create("csv", "train", path=str(tmp_path / "t.csv"), features=["c", "a"])
    assert train.info.classes == ("no", "yes") and train.info.input_shape == (2,)
    row = train.inputs[0].tolist()
    assert row[0] == row[1] % 3  # columns in the order asked for
    whole = data.create("csv", "test", path=str(tmp_path / "t.csv"), shape=[1, 3])
    assert whole.info.input_shape == (1, 3)


@pytest.mark.parametrize(
    ("name", "files", "options", "needle"),
    [
        ("arrays", {}, {}, "arrays: pass path=<.npz or .npy file>"),
        ("arrays", {}, {"path": "none.npz"}, "arrays: path file 'none.npz' not found"),
        (
            "arrays",
            {"d.npz": {"x": np.ones((4, 2))}},
            {"path": "d.npz"},
            "has no 'y' array (it holds x)",
        ),
        (
            "arrays",
            {"x.npy": np.ones((4, 2))},
            {"path": "x.npy"},
            "holds inputs only; pass labels=",
        ),
        (
            "arrays",
            {"d.npz": {"x": np.ones((4, 2)), "y": np.zeros(4)}},
            {"path": "d.npz"},
            "the labels hold 1 class (0.0); a classifier needs at least two",
        ),
        (
            "arrays",
            {"d.npz": {"x": np.full((4, 2), np.nan), "y": np.arange(4)}},
            {"path": "d.npz"},
            "sample 0 of",
        ),
        (
            "arrays",
            {"d.npz": {"x": np.ones((4, 2)), "y": np.arange(3)}},
            {"path": "d.npz"},
            "has 4 inputs but 3 labels",
        ),
        (
            "arrays",
            {"d.npz": {"x": np.ones((6, 4)), "y": np.arange(6) % 2}},
            {"path": "d.npz", "shape": [3]},
            "shape [3] holds 3 values but each sample has 4",
        ),
        ("csv", {"t.csv": CSV}, {"path": "t.csv", "label": "y"}, "has no label column 'y'"),
        (
            "csv",
            {"t.csv": "a,label\n1,x\nfoo,y\n"},
            {"path": "t.csv"},
            "row 3 of 't.csv', column 'a': 'foo' is not a number",
        ),
    ],
)
def test_bad_files_are_one_line(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    name: str,
    files: dict,
    options: dict,
    needle: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    for file, content in files.items():
        if isinstance(content, str):
            Path(file).write_text(content)
        elif isinstance(content, dict):
            np.savez(file, **content)
        else:
            np.save(file, content)
    with pytest.raises(DataError, match=re.escape(needle)):
        data.create(name, "train", **options)
