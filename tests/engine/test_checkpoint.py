"""Tests of checkpoint files: atomic writes, refusing unsafe or broken files, architectures."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
import torch

from edgetrain import models
from edgetrain.engine import Trainer, atomic_save, load_checkpoint, load_model_weights
from edgetrain.engine.checkpoint import FORMAT, resolve_checkpoint
from edgetrain.errors import CheckpointError
from edgetrain.runs import build_model, load_config


def _checkpoint(**extra: object) -> dict:
    return {"format": FORMAT, "model": {"w": torch.arange(6.0)}, **extra}


def _one_line_error(path: Path) -> str:
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    return message


# -------------------------------------------------------------------- atomic writes
def test_atomic_save_writes_the_file_and_nothing_else(tmp_path: Path) -> None:
    target = tmp_path / "ckpt" / "last.pt"
    assert atomic_save(_checkpoint(), target) == target
    assert os.listdir(target.parent) == ["last.pt"]
    assert torch.equal(load_checkpoint(target)["model"]["w"], torch.arange(6.0))
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's private 0600


def test_a_failed_save_keeps_the_previous_file(tmp_path: Path) -> None:
    target = tmp_path / "last.pt"
    atomic_save(_checkpoint(), target)
    before = target.read_bytes()
    with pytest.raises(Exception, match="pickle"):
        atomic_save({"format": FORMAT, "model": lambda: None}, target)  # unpicklable
    assert os.listdir(tmp_path) == ["last.pt"] and target.read_bytes() == before


def test_ctrl_c_in_the_middle_of_a_save_keeps_the_previous_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "last.pt"
    atomic_save(_checkpoint(), target)
    before = target.read_bytes()

    def half_written(obj: object, f) -> None:  # noqa: ANN001 - torch.save's signature
        f.write(before[: len(before) // 2])
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", half_written)
    with pytest.raises(KeyboardInterrupt):
        atomic_save(_checkpoint(), target)
    assert os.listdir(tmp_path) == ["last.pt"] and target.read_bytes() == before


# ------------------------------------------------------------------- broken files
@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.5, 0.9, 0.99])
def test_truncated_checkpoint_is_one_line(tmp_path: Path, fraction: float) -> None:
    good = tmp_path / "good.pt"
    atomic_save(_checkpoint(), good)
    data = good.read_bytes()
    cut = tmp_path / "cut.pt"
    cut.write_bytes(data[: int(len(data) * fraction)])
    assert "corrupted or truncated" in _one_line_error(cut)


@pytest.mark.parametrize("seed", range(5))
def test_random_bytes_are_one_line(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    path = tmp_path / "noise.pt"
    path.write_bytes(bytes(rng.randrange(256) for _ in range(1024)))
    _one_line_error(path)


@pytest.mark.parametrize("payload", [b"t.", b"h\x00.", b"j\x05\x12P\x00."])
def test_malformed_pickle_streams_are_one_line(tmp_path: Path, payload: bytes) -> None:
    path = tmp_path / "broken.pt"
    path.write_bytes(payload)
    _one_line_error(path)


def test_a_plain_torch_file_is_not_an_edgetrain_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "state_dict.pt"
    torch.save(models.create("fcn1d").state_dict(), path)
    assert "not an edgetrain checkpoint" in _one_line_error(path)


class _RunsCode:
    """Unpickling this creates ``marker``: proof that code from the file was run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204 - pickle protocol
        return (Path.touch, (self.marker,))


class _PlainObject:
    pass


@pytest.mark.parametrize("kind", ["runs-code", "plain-object"])
def test_a_pickled_custom_object_is_refused_without_running_code(tmp_path: Path, kind: str) -> None:
    marker = tmp_path / "code-ran"
    payload = _RunsCode(marker) if kind == "runs-code" else _PlainObject()
    path = tmp_path / "custom.pt"
    torch.save(_checkpoint(extra=payload), path)
    assert "weights_only" in _one_line_error(path)
    assert not marker.exists()


def test_missing_checkpoint_and_empty_run_directory(tmp_path: Path) -> None:
    assert "does not exist" in _one_line_error(tmp_path / "nope.pt")
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    with pytest.raises(CheckpointError, match="no checkpoint in"):
        load_checkpoint(tmp_path / "run")


def test_a_run_directory_resolves_to_best_then_last(tmp_path: Path) -> None:
    folder = tmp_path / "checkpoints"
    atomic_save(_checkpoint(), folder / "last.pt")
    assert resolve_checkpoint(tmp_path) == folder / "last.pt"
    atomic_save(_checkpoint(), folder / "best.pt")
    assert resolve_checkpoint(tmp_path) == folder / "best.pt"
    assert resolve_checkpoint(tmp_path, prefer="last") == folder / "last.pt"


# ------------------------------------------------------------------ architectures
def test_weights_of_another_architecture_are_explained(tmp_path: Path, make_blobs) -> None:
    source = models.create("vgg_small", in_channels=1, num_classes=4, input_size=8)
    trainer = Trainer(source, make_blobs(8), device="cpu", progress=False, run_dir=tmp_path)
    trainer.fit(1)
    other = models.create("vgg_small", in_channels=1, num_classes=10, input_size=8)
    target = Trainer(other, make_blobs(8), device="cpu", progress=False)
    with pytest.raises(CheckpointError) as info:
        target.load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    message = str(info.value)
    assert "another architecture" in message and "\n" not in message
    assert "fc.weight (4, 64) vs (10, 64)" in message


@pytest.mark.parametrize(
    ("state_change", "detail"),
    [
        (lambda s: s.pop("conv1.bias"), "missing 'conv1.bias'"),
        (lambda s: s.update({"conv9.weight": torch.zeros(1)}), "unexpected 'conv9.weight'"),
    ],
)
def test_missing_and_unexpected_keys_are_named(state_change, detail: str) -> None:
    model = models.create("vgg_small")
    state = model.state_dict()
    state_change(state)
    with pytest.raises(CheckpointError, match="another architecture") as info:
        load_model_weights(model, state, "x.pt")
    assert detail in str(info.value)


def test_init_exclude_lets_a_new_head_differ() -> None:
    source = models.create("vgg_small", in_channels=1, num_classes=10)
    target = models.create("vgg_small", in_channels=1, num_classes=4)
    head = target.fc.weight.detach().clone()
    load_model_weights(target, source.state_dict(), "pretrained.pt", exclude=("fc",))
    assert torch.equal(target.conv1.weight, source.conv1.weight)
    assert torch.equal(target.conv6.bias, source.conv6.bias)
    assert torch.equal(target.fc.weight, head)


def test_init_from_with_init_exclude_in_a_run_config(tmp_path: Path) -> None:
    source = models.create("vgg_small", in_channels=1, num_classes=10, input_size=8)
    atomic_save({"format": FORMAT, "model": source.state_dict()}, tmp_path / "pre.pt")
    base = {
        "name": "ft",
        "epochs": 1,
        "data": {"name": "digits"},
        "model": {
            "name": "vgg_small",
            "options": {"input_size": 8, "num_classes": 3},
            "init_from": str(tmp_path / "pre.pt"),
        },
    }
    with pytest.raises(CheckpointError, match="another architecture"):
        build_model(load_config(base), 3, (1, 8, 8))
    base["model"] |= {"init_exclude": ["fc"], "freeze": ["conv1"]}
    model, architecture = build_model(load_config(base), 3, (1, 8, 8))
    assert torch.equal(model.conv5.weight, source.conv5.weight)
    assert model.fc.out_features == 3 and not model.conv1.weight.requires_grad
    assert architecture == {
        "name": "vgg_small",
        "options": {"input_size": 8, "num_classes": 3, "in_channels": 1},
    }


def test_init_exclude_names_modules_not_string_prefixes() -> None:
    source = models.create("small_cnn", num_classes=10)
    target = models.create("small_cnn", num_classes=4)
    load_model_weights(target, source.state_dict(), "pretrained.pt", exclude=("fc",))
    assert torch.equal(target.fc1.weight, source.fc1.weight)
