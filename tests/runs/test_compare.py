"""The scenario comparison's top-5 column: present (at the best top-1 epoch) only for data
sets with more than 10 classes, right after the top-1 column."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from PIL import Image

from edgetrain.engine import RunDirectory
from edgetrain.runs import ScenarioRow, compare_schedules, load_config
from edgetrain.runs.compare import _top5_at_best
from edgetrain.runs.grid import GridResult, GridTrial

pytestmark = pytest.mark.usefixtures("single_thread")

_ROW = {
    "schedule": "4421",
    "mode": "bpls",
    "best_lr": 0.02,
    "best_accuracy": 80.0,
    "lr_low": 0.01,
    "lr_high": 0.02,
    "average_ops": 10.0,
    "relative_ops": 0.5,
    "peak_ops": 20,
    "peak_memory_bytes": 100,
    "peak_memory_reuse_bytes": 80,
    "relative_peak_memory": 0.9,
}


_STATS = [
    "seeds",
    "accuracy_std",
    "p_value",
    "reached",
    "epochs_to_target",
    "ops_to_target",
    "relative_ops_to_target",
]


def test_row_without_top5_has_no_top5_key():
    d = ScenarioRow(**_ROW).to_dict()
    assert "best_top5" not in d
    assert list(d) == [*_ROW, *_STATS]


def test_row_with_top5_puts_it_after_top1():
    d = ScenarioRow(**_ROW, best_top5=97.5).to_dict()
    keys = list(d)
    assert keys[keys.index("best_accuracy") + 1] == "best_top5"
    assert d["best_top5"] == 97.5
    assert [k for k in keys if k != "best_top5"] == [*_ROW, *_STATS]


def _trial(tmp_path: Path, name: str, lr: float, best_epoch: int, history: list) -> GridTrial:
    run = RunDirectory(tmp_path / name)
    run.path.mkdir(parents=True)
    for epoch, (top1, top5) in enumerate(history, start=1):
        run.append_metrics({"epoch": epoch, "val_top1": top1, "val_top5": top5})
    return GridTrial(lr, 1, history[best_epoch - 1][0], best_epoch, "completed", str(run.path))


def test_top5_is_read_at_the_best_runs_best_top1_epoch(tmp_path):
    # epoch 3 has the higher top-5, but epoch 2 is the best top-1 epoch of the best LR
    best = _trial(tmp_path, "a", 0.02, 2, [(50.0, 70.0), (80.0, 90.0), (75.0, 99.0)])
    other = _trial(tmp_path, "b", 0.01, 1, [(60.0, 95.0)])
    grid = GridResult([best, other], 0.02, 80.0, (0.02, 0.02), 1.0)
    assert _top5_at_best(grid) == 90.0
    never = GridTrial(0.1, 1, 0.0, 0, "stopped", str(tmp_path / "a"))  # no best epoch
    missing = GridResult([never], 0.1, 0.0, (0.1, 0.1), 1.0)
    assert math.isnan(_top5_at_best(missing))


def _image_folder(root: Path, classes: int, per_class: int = 6) -> Path:
    """``classes`` folders of 8x8 grey PNGs, each class a different brightness band."""
    for c in range(classes):
        folder = root / f"c{c:02d}"
        folder.mkdir(parents=True)
        for i in range(per_class):
            Image.new("L", (8, 8), (20 * c + 3 * i) % 256).save(folder / f"{i}.png")
    return root


def _config(root: Path):
    return load_config(
        {
            "name": "many",
            "epochs": 1,
            "data": {
                "name": "image-folder",
                "options": {"root": str(root), "channels": 1},
                "batch_size": 16,
            },
            "model": {"name": "vgg_small", "options": {"input_size": 8, "in_channels": 1}},
            "optimizer": {"name": "sgd", "lr": 0.02},
        }
    )


@pytest.mark.parametrize(("classes", "top5"), [(12, True), (10, False)])
def test_compare_adds_top5_only_with_more_than_10_classes(tmp_path, classes, top5):
    root = _image_folder(tmp_path / "images", classes)
    rows = compare_schedules(
        _config(root),
        ["21"],
        0.02,
        0.02,
        modes=("bpls",),
        runs_root=tmp_path / "runs",
        progress=False,
    )
    assert [r.schedule for r in rows] == ["22", "20", "21"]
    for r in rows:
        assert ("best_top5" in r.to_dict()) is top5
        if top5:
            assert r.best_accuracy <= r.best_top5 <= 100.0
        else:
            assert r.best_top5 is None
