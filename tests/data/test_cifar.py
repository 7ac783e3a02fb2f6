"""Tests of the CIFAR loaders on tiny batches written in the official pickle format."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from edgetrain import data
from edgetrain.data import cifar
from edgetrain.errors import DataError

_NAMES10 = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse"]
_NAMES10 += [b"ship", b"truck"]


def _dump(obj: dict, path: Path) -> None:
    # The official files are Python 2 pickles (protocol 2) written by numpy 1, whose array
    # reconstructor lives in numpy.core; protocol 2 from Python 3 differs only in that name.
    raw = pickle.dumps(obj, protocol=2).replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    path.write_bytes(raw)


def _batch(rng: np.random.Generator, n: int, labels: list[int], key: bytes = b"labels") -> dict:
    return {
        b"batch_label": b"training batch",
        key: labels,
        b"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
        b"filenames": [f"img_{i}.png".encode() for i in range(n)],
    }


@pytest.fixture
def cifar10_root(tmp_path: Path) -> Path:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(1, 6):
        _dump(_batch(rng, 2, [i, (i + 3) % 10]), folder / f"data_batch_{i}")
    test = _batch(rng, 3, [9, 0, 4])
    test[b"data"][0] = np.r_[np.full(1024, 255), np.zeros(2048)].astype(np.uint8)
    _dump(test, folder / "test_batch")
    _dump(
        {b"label_names": _NAMES10, b"num_cases_per_batch": 2, b"num_vis": 3072},
        folder / "batches.meta",
    )
    return tmp_path


def test_cifar10_reads_batches_in_order_with_pixels_in_channel_major_layout(
    cifar10_root: Path,
) -> None:
    train = data.create("cifar10", "train", root=cifar10_root)
    assert train.inputs.shape == (10, 3, 32, 32) and train.inputs.dtype == torch.float32
    assert train.targets.tolist() == [1, 4, 2, 5, 3, 6, 4, 7, 5, 8]
    raw = cifar._load_pickle(cifar10_root / "cifar-10-batches-py" / "data_batch_3")["data"]
    expected = torch.from_numpy(raw[1].reshape(3, 32, 32)).float() / 255.0
    assert torch.allclose(train.inputs[5], expected)
    info = train.info
    assert info.classes[:3] == ("airplane", "automobile", "bird") and info.num_classes == 10
    assert info.split_sizes == {"train": 10, "test": 3}
    assert info.input_shape == (3, 32, 32)


def test_cifar10_test_split_first_1024_values_are_the_red_plane(cifar10_root: Path) -> None:
    test = data.create("cifar10", "test", root=cifar10_root)
    assert test.targets.tolist() == [9, 0, 4]
    assert torch.all(test.inputs[0, 0] == 1.0) and torch.all(test.inputs[0, 1:] == 0.0)
    assert test.inputs.min() >= 0.0 and test.inputs.max() <= 1.0


def test_missing_folder_names_it_and_the_fix(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("EDGETRAIN_CACHE", str(tmp_path))
    with pytest.raises(DataError) as err:
        data.create("cifar10", "train")
    message = str(err.value)
    assert str(tmp_path / "cifar" / "cifar-10-batches-py") in message
    assert "download=True" in message and "\n" not in message


class _OpensAFile:
    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def test_malicious_batch_is_refused_without_running_it(cifar10_root: Path) -> None:
    marker = cifar10_root / "pwned"
    batch = {b"data": _OpensAFile(marker), b"labels": [0]}
    _dump(batch, cifar10_root / "cifar-10-batches-py" / "test_batch")
    with pytest.raises(DataError, match="refusing to unpickle 'io.open'"):
        data.create("cifar10", "test", root=cifar10_root)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("payload", "name"),
    [
        (b"cos\nsystem\n(S'true'\ntR.", "os.system"),
        (b"cbuiltins\neval\n(S'1'\ntR.", "builtins.eval"),
        (b"cnumpy\nload\n(S'x.npy'\ntR.", "numpy.load"),
    ],
)
def test_globals_outside_the_allow_list_are_refused(tmp_path: Path, payload: bytes, name: str):
    path = tmp_path / "batch"
    path.write_bytes(payload)
    with pytest.raises(DataError, match=f"refusing to unpickle '{name}'"):
        cifar._load_pickle(path)


def test_truncated_batch_is_a_data_error(cifar10_root: Path) -> None:
    path = cifar10_root / "cifar-10-batches-py" / "test_batch"
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(DataError, match="not a readable CIFAR pickle"):
        data.create("cifar10", "test", root=cifar10_root)


def test_cifar100_fine_and_coarse_labels(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for split, fine in (("train", [0, 99, 50, 7]), ("test", [3, 98])):
        batch = _batch(rng, len(fine), fine, key=b"fine_labels")
        batch[b"coarse_labels"] = [f // 5 for f in fine]
        _dump(batch, folder / split)
    fine_names = [f"fine{i}".encode() for i in range(100)]
    coarse_names = [f"coarse{i}".encode() for i in range(20)]
    _dump({b"fine_label_names": fine_names, b"coarse_label_names": coarse_names}, folder / "meta")

    fine = data.create("cifar100", "train", root=tmp_path)
    assert fine.targets.tolist() == [0, 99, 50, 7] and fine.info.num_classes == 100
    assert fine.info.split_sizes == {"train": 4, "test": 2}
    coarse = data.create("cifar100", "test", root=tmp_path, labels="coarse")
    assert coarse.targets.tolist() == [0, 19] and coarse.info.classes[19] == "coarse19"
    with pytest.raises(DataError, match="'fine' or 'coarse'"):
        data.create("cifar100", "test", root=tmp_path, labels="super")


def _tar(members: dict[str, bytes], path: Path) -> str:
    with tarfile.open(path, "w:gz") as tar:
        for name, content in members.items():
            entry = tarfile.TarInfo(name)
            entry.size = len(content)
            tar.addfile(entry, io.BytesIO(content))
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_download_verifies_md5_and_moves_the_folder_into_place(
    cifar10_root: Path, tmp_path: Path, monkeypatch
) -> None:
    folder = cifar10_root / "cifar-10-batches-py"
    files = {f"cifar-10-batches-py/{p.name}": p.read_bytes() for p in sorted(folder.iterdir())}
    archive = tmp_path / "cifar-10-python.tar.gz"
    md5 = _tar(files, archive)
    url = archive.as_uri()
    monkeypatch.setattr(cifar, "_CIFAR10", dataclasses.replace(cifar._CIFAR10, url=url, md5=md5))

    root = tmp_path / "downloaded"
    test = data.create("cifar10", "test", root=root, download=True)
    assert test.targets.tolist() == [9, 0, 4]
    assert [p.name for p in root.iterdir()] == ["cifar-10-batches-py"]  # no temp left behind


def test_checksum_mismatch_leaves_nothing_behind(tmp_path: Path) -> None:
    archive = tmp_path / "a.tar.gz"
    _tar({"cifar-10-batches-py/test_batch": b"x"}, archive)
    dest = tmp_path / "dest"
    with pytest.raises(DataError, match="checksum mismatch") as err:
        cifar._download_and_extract(archive.as_uri(), "0" * 32, dest)
    assert "\n" not in str(err.value)
    assert list(dest.iterdir()) == []


def test_archive_escaping_the_destination_is_refused(tmp_path: Path) -> None:
    archive = tmp_path / "evil.tar.gz"
    md5 = _tar({"cifar-10-batches-py/ok": b"1", "../escaped": b"2"}, archive)
    dest = tmp_path / "dest"
    with pytest.raises(DataError, match=r"refusing to extract '\.\./escaped'"):
        cifar._download_and_extract(archive.as_uri(), md5, dest)
    assert not (tmp_path / "escaped").exists()
    assert list(dest.iterdir()) == []


def test_unreachable_url_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="could not download"):
        cifar._download_and_extract((tmp_path / "absent.tar.gz").as_uri(), "0" * 32, tmp_path)
