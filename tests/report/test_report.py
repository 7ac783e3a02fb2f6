"""Reports are rebuilt from run directories alone: records, plots, one HTML page."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from edgetrain.data import ArrayDataset, DatasetInfo
from edgetrain.engine import RunDirectory, Trainer
from edgetrain.errors import EdgetrainError
from edgetrain.report import build_report, load_run, load_runs, series, summary_rows


def _fake_run(path: Path, name: str, accs: list[float], status: str = "completed") -> Path:
    run = RunDirectory(path).create()
    run.write_config({"name": name, "epochs": len(accs)})
    for i, acc in enumerate(accs, start=1):
        run.append_metrics(
            {
                "epoch": i,
                "train_loss": 1.0 / i,
                "val_loss": 1.2 / i,
                "train_top1": acc - 1,
                "val_top1": acc,
                "epoch_time": 0.5,
                "eval_time": 0.1,
            }
        )
    run.write_summary({"status": status, "params": 1234})
    return path


def test_records_and_series(tmp_path):
    path = _fake_run(tmp_path / "a", "a", [50.0, 70.0, 65.0])
    run = load_run(path)
    assert run.best["epoch"] == 2 and run.status == "completed"
    assert series(run, "val_top1") == ([1, 2, 3], [50.0, 70.0, 65.0])
    assert run.total_time == pytest.approx(1.8)
    row = summary_rows([run])[0]
    assert row[:6] == ["a", "completed", 3, 70.0, 2, 65.0]


def test_a_torn_last_metrics_line_is_ignored(tmp_path):
    path = _fake_run(tmp_path / "a", "a", [50.0, 60.0])
    with (path / "metrics.jsonl").open("a") as f:
        f.write('{"epoch": 3, "val_to')
    assert [m["epoch"] for m in load_run(path).metrics] == [1, 2]


def test_same_names_get_unique_legends(tmp_path):
    runs = load_runs(
        [_fake_run(tmp_path / "x" / "r", "r", [1.0]), _fake_run(tmp_path / "y" / "r", "r", [2.0])]
    )
    assert runs[0].name == "r" and runs[1].name != "r"


def test_single_run_report_embeds_its_plots(tmp_path):
    path = _fake_run(tmp_path / "a", "a", [50.0, 70.0], status="interrupted")
    page = build_report([path])
    assert page == path / "report.html"
    assert sorted(p.name for p in (path / "plots").glob("*.png")) == ["accuracy.png", "loss.png"]
    text = page.read_text()
    assert text.count("data:image/png;base64,") == 2
    assert "status-interrupted" in text and "<td>70</td>" in text


def test_several_runs_overlay_beside_the_page(tmp_path):
    a = _fake_run(tmp_path / "runs" / "a", "a", [50.0])
    b = _fake_run(tmp_path / "runs" / "b", "b", [60.0])
    page = build_report([a, b])
    assert page == (tmp_path / "runs" / "report.html").resolve()
    assert (tmp_path / "runs" / "report_plots" / "accuracy.png").is_file()


def test_not_a_run_directory(tmp_path):
    with pytest.raises(EdgetrainError, match="not a run directory"):
        load_run(tmp_path)
    with pytest.raises(EdgetrainError, match="does not exist"):
        load_run(tmp_path / "nope")


def test_a_run_started_from_python_is_reportable(tmp_path):
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 2, (32,), generator=g)
    x = torch.randn(32, 4, generator=g) + y[:, None].float()
    info = DatasetInfo("toy", "classification", (4,), ("a", "b"), {"train": 32, "test": 32}, "-")
    ds = ArrayDataset(x, y, info)
    Trainer(
        nn.Linear(4, 2), ds, val_data=ds, batch_size=8, run_dir=tmp_path / "py", progress=False
    ).fit(2)
    config = RunDirectory(tmp_path / "py").read_config()
    assert config["name"] == "py" and config["optimizer"]["class"] == "SGD"
    page = build_report([tmp_path / "py"])
    assert "py" in page.read_text()
    summary = json.loads((tmp_path / "py" / "summary.json").read_text())
    assert summary["status"] == "completed"
