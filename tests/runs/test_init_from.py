"""``model.init_from``: weights from an edgetrain checkpoint or any state_dict file."""

from __future__ import annotations

import collections
import re
from pathlib import Path
from typing import Any

import pytest
import torch

from edgetrain import models
from edgetrain.errors import CheckpointError, EdgetrainError
from edgetrain.runs import build_trainer, load_config


def _config(init_from: Path | None, **model: Any) -> Any:
    return load_config(
        {
            "name": "tiny",
            "epochs": 1,
            "data": {"name": "digits", "options": {"test_fraction": 0.5}},
            "model": {
                "name": "vgg_small",
                "options": {"input_size": 8},
                "init_from": None if init_from is None else str(init_from),
                **model,
            },
        }
    )


def _source() -> dict[str, torch.Tensor]:
    torch.manual_seed(5)
    net = models.create("vgg_small", in_channels=1, num_classes=10, input_size=8)
    return net.state_dict()


@pytest.mark.parametrize(
    "wrap",
    [
        lambda s: s,
        lambda s: {"state_dict": s, "epoch": 7},
        lambda s: {"model": s, "optimizer": {}},
        lambda s: collections.OrderedDict((f"module.{k}", v) for k, v in s.items()),
        lambda s: {"state_dict": {f"_orig_mod.{k}": v for k, v in s.items()}},
    ],
    ids=["state_dict", "state_dict-entry", "model-entry", "ddp-prefix", "compile-prefix"],
)
def test_plain_weight_files_initialise_the_model(wrap: Any, tmp_path: Path) -> None:
    state = _source()
    path = tmp_path / "weights.pt"
    torch.save(wrap(state), path)
    trainer = build_trainer(_config(path), None, progress=False)
    loaded = trainer.model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())


def test_a_mismatch_lists_what_is_missing_and_unexpected(tmp_path: Path) -> None:
    state = _source()
    state["extra.weight"] = torch.zeros(1)
    del state["fc.bias"]
    path = tmp_path / "weights.pt"
    torch.save(state, path)
    with pytest.raises(CheckpointError) as info:
        build_trainer(_config(path), None, progress=False)
    message = str(info.value)
    assert "missing 'fc.bias'" in message and "unexpected 'extra.weight'" in message
    assert "model.init_exclude" in message and "\n" not in message
    # excluding the classifier loads the rest
    del state["extra.weight"]
    torch.save(state, path)
    trainer = build_trainer(_config(path, init_exclude=["fc"]), None, progress=False)
    assert torch.equal(trainer.model.state_dict()["conv1.weight"], state["conv1.weight"])


class _Pickled:
    """Not a tensor: loading it would run code from the file."""


class _Runs:
    """A pickle that calls a function of a module when loaded (here harmless)."""

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        import os

        return (os.getenv, ("HOME",))


@pytest.mark.parametrize(
    ("payload", "needle"),
    [
        ({"weights": _Pickled()}, "refused: it contains objects that are not plain tensors"),
        ({"model": _Runs()}, "refused: it contains objects that are not plain tensors"),
        ({"epoch": 3, "note": "no weights"}, "holds no model weights (found: epoch, note)"),
    ],
)
def test_unsafe_or_empty_files_are_refused(payload: Any, needle: str, tmp_path: Path) -> None:
    path = tmp_path / "weights.pt"
    torch.save(payload, path)
    with pytest.raises(EdgetrainError, match=re.escape(needle)):
        build_trainer(_config(path), None, progress=False)
