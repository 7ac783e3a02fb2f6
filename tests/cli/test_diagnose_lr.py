"""``edgetrain diagnose lr-sensitivity`` and ``lr_control: actcool`` end to end on digits."""

from __future__ import annotations

import json

import pytest
from _output import one_line

from edgetrain._yaml import safe_load
from edgetrain.diagnostics import ACTCOOL_FILE, LR_SENSITIVITY_FILE, read_lr_sensitivity

pytestmark = pytest.mark.usefixtures("single_thread")

# 180 training digits (test_fraction 0.9) in batches of 32: 6 steps an epoch.
RECIPE = """
name: digits-lr
epochs: 1
data:
  name: digits
  options: {test_fraction: 0.9}
  batch_size: 32
model:
  name: vgg_small
  options: {input_size: 8}
optimizer: {name: sgd, lr: 0.05, momentum: 0.9}
scheduler: {name: step, step_size: 1, gamma: 0.5}
"""


@pytest.fixture
def recipe(tmp_path):
    path = tmp_path / "digits-lr.yaml"
    path.write_text(RECIPE)
    return str(path)


def test_lr_sensitivity_trains_measures_prints_and_plots(cli, recipe, tmp_path) -> None:
    args = ["diagnose", "lr-sensitivity", "--config", recipe, "--rates", "6", "--epochs", "2"]
    out = cli(*args, "--at", "5", "--no-progress").output
    run = tmp_path / "runs" / "digits-lr-lrsens"
    measurements = read_lr_sensitivity(run)
    assert [m.step for m in measurements] == [0, 5, 6]
    assert [m.lr for m in measurements] == [0.05, 0.05, 0.025]  # the recipe's step decay
    assert all(len(m.rates) == 6 for m in measurements)
    assert "learning-rate sensitivity: 6 rates per time" in out
    for m in measurements:
        if m.mu is not None:
            assert f"{m.mu:.3f}" in out and f"{m.sigma:.3f}" in out
    page = (run / "report.html").read_text()
    for plot in ("lr_sensitivity", "lr_transition"):
        assert (run / "plots" / f"{plot}.png").is_file()
        assert f'alt="{plot}"' in page  # embedded in the report
    config = safe_load((run / "config.yaml").read_text())
    assert config["callbacks"][-1]["name"] == "lr-sensitivity"
    assert config["callbacks"][-1]["at_steps"] == [5]


def test_lr_sensitivity_bad_input_is_one_line_and_leaves_no_run(cli, recipe, tmp_path) -> None:
    result = cli("diagnose", "lr-sensitivity", "--config", recipe, "--rates", "1", code=2)
    assert "need at least 2 rates" in one_line(result.output)
    result = cli(
        "diagnose",
        "lr-sensitivity",
        "--config",
        recipe,
        "--layer",
        "relu9",
        "--no-progress",
        code=2,
    )
    assert "'relu9' is not an activation layer" in one_line(result.output)
    assert not (tmp_path / "runs" / "digits-lr-lrsens").exists()


def test_train_with_lr_control_actcool(cli, recipe, tmp_path) -> None:
    # A cool start: this tiny net on 8x8 digits diverges at the default T_start 3.17.
    args = ["train", recipe, "--set", "scheduler=null", "--set", "lr_control.name=actcool"]
    args += ["--set", "lr_control.t_start=1.0", "--set", "lr_control.probing_step_size=4"]
    cli(*args, "--no-progress")
    run = tmp_path / "runs" / "digits-lr"
    assert safe_load((run / "config.yaml").read_text())["lr_control"] == {
        "name": "actcool",
        "t_start": 1.0,
        "probing_step_size": 4,
    }
    record = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    assert {"actcool_lr", "actcool_t_target", "actcool_mu", "actcool_sigma"} <= set(record)
    rows = [json.loads(x) for x in (run / ACTCOOL_FILE).read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(6))
    assert [r["step"] for r in rows if "d" in r] == [0, 4]
    assert (run / "plots" / "actcool.png").is_file()
    assert not (run / LR_SENSITIVITY_FILE).exists()


def test_a_diverging_actcool_run_stops_withone_line(cli, recipe, tmp_path) -> None:
    args = ["train", recipe, "--set", "scheduler=null", "--set", "lr_control.name=actcool"]
    args += ["--set", "lr_control.mu=30", "--set", "lr_control.fit_at_start=false"]
    line = one_line(cli(*args, "--no-progress", code=2).output)
    assert line.startswith("error: ActCoolLR:") and "diverged" in line
    assert not (tmp_path / "runs" / "digits-lr").exists()  # failed in its first epoch


def test_lr_control_with_a_scheduler_isone_line(cli, recipe, tmp_path) -> None:
    result = cli("train", recipe, "--set", "lr_control=actcool", code=2)
    line = one_line(result.output)
    assert "cannot be combined with scheduler 'step'" in line
    assert "--set scheduler=null" in line
    assert not (tmp_path / "runs").exists()
