"""``edgetrain diagnose patterns`` end to end on the offline digits, and its report plots."""

from __future__ import annotations

import numpy as np
import pytest

from edgetrain.diagnostics import FINAL_COUNTS_FILE, read_pattern_records
from edgetrain.report import load_run
from edgetrain.report.patterns import entropy_profile, pattern_history

# 449 training digits (test_fraction 0.75) in batches of 32: 15 steps an epoch.
RECIPE = """
name: digits-ap
epochs: 1
data:
  name: digits
  options: {test_fraction: 0.75}
  batch_size: 32
model:
  name: vgg_small
  options: {input_size: 8}
optimizer: {name: sgd, lr: 0.05, momentum: 0.9}
"""
FAST = ["--subset", "64", "--every", "5", "--early-steps", "10", "--no-progress"]


@pytest.fixture
def recipe(tmp_path):
    path = tmp_path / "digits-ap.yaml"
    path.write_text(RECIPE)
    return str(path)


def _layer_rows(output: str) -> list[list[str]]:
    return [
        [cell.strip() for cell in ln.split("│")[1:-1]]
        for ln in output.splitlines()
        if ln.startswith("│ relu")
    ]


def test_diagnose_patterns_measures_summarises_reports_and_compares_two_passes(
    cli, recipe, tmp_path, single_thread
):
    out = cli("diagnose", "patterns", "--config", recipe, *FAST).output
    run = tmp_path / "runs" / "digits-ap-patterns"
    records = read_pattern_records(run)
    # Every 5 steps up to step 10, then every half epoch (8 steps), and at the end (15).
    assert [r["step"] for r in records] == [0, 5, 10, 15]
    assert all(r["samples"] == 64 for r in records)
    assert list(records[0]["layers"]) == [f"relu{i}" for i in range(1, 7)]
    assert "activation patterns: 4 measurements, steps 0-15, 64 samples each" in out
    rows = _layer_rows(out)
    assert [r[0] for r in rows] == [f"relu{i}" for i in range(1, 7)]
    assert rows[0][1:3] == ["16", "exact"]  # relu1: 16 channels, counted exactly
    assert rows[0][4] == f"{records[-1]['layers']['relu1']['distinct']:,}"
    assert load_run(run).config["callbacks"][-1] == {
        "name": "ap-monitor",
        "every": 5,
        "early_steps": 10,
        "per_epoch": 2,
        "subset": 64,
        "batch_size": 256,
        "mode": "auto",
        "buckets": 2**20,
        "layers": None,
        "final_counts": None,
    }
    # The report shows the heat maps and the relative-entropy profile.
    for name in ("patterns.png", "patterns_entropy.png"):
        assert (run / "plots" / name).is_file(), name
    assert (run / "report.html").read_text().count("data:image/png;base64,") >= 4
    history = pattern_history(load_run(run))
    assert history is not None and history.values["distinct"].shape == (6, 4)
    assert history.values["distinct"][0, -1] == records[-1]["layers"]["relu1"]["distinct"]
    assert np.isnan(history.values["jaccard_prev"][:, 0]).all()  # nothing before step 0
    assert "jaccard_final" not in history.available()
    assert "occupancy" not in history.available()  # all layers counted exactly

    # Second pass with the same seed against the first pass's final counts.
    out = cli(
        "diagnose", "patterns", "--config", recipe, *FAST, "--no-report",
        "--final-counts", str(run / FINAL_COUNTS_FILE), "--name", "second",
    ).output  # fmt: skip
    second = read_pattern_records(tmp_path / "runs" / "second")
    assert [r["layers"]["relu6"]["jaccard_final"] for r in second][-1] == 1.0
    assert second[0]["layers"]["relu6"]["jaccard_final"] < 1.0
    assert _layer_rows(out)[-1][7] == "1.000"  # the "J to final" column


def test_hashed_runs_over_two_seeds_give_entropy_bands_in_the_report(
    cli, recipe, tmp_path, single_thread
):
    for seed in ("0", "1"):
        out = cli(
            "diagnose", "patterns", "--config", recipe, *FAST, "--mode", "hash",
            "--buckets", "2048", "--seed", seed, "--name", f"s{seed}", "--no-report",
        ).output  # fmt: skip
    runs = [load_run(tmp_path / "runs" / f"s{s}") for s in "01"]
    # 2,048 buckets are too few for the widest layers: named once, under the table.
    assert "raise --buckets" in out and "warning:" in out
    records = read_pattern_records(runs[0].path)
    assert all(0 < m["occupancy"] < 1 for r in records for m in r["layers"].values())
    histories = [pattern_history(r) for r in runs]
    assert "occupancy" in histories[0].available()
    profile = entropy_profile(histories, epochs=[0.0, 1.0])
    assert profile.runs == 2 and profile.mean.shape == (2, 6)
    both = np.stack([h.values["relative_entropy"][:, [0, -1]].T for h in histories])
    assert np.allclose(profile.low, both.min(0)) and np.allclose(profile.high, both.max(0))
    assert np.allclose(profile.mean, both.mean(0))
    assert not np.allclose(profile.low, profile.high)  # two seeds differ: a real band
    cli("report", str(runs[0].path), str(runs[1].path))
    assert (tmp_path / "runs" / "report_plots" / "patterns_entropy.png").is_file()
    assert (runs[0].path / "plots" / "patterns.png").is_file()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--mode", "fast"], "--mode 'fast' is not one of: auto, hash, exact"),
        (["--final-counts", "nowhere.pt"], "--final-counts 'nowhere.pt' not found"),
        (["--layer", "relu9"], "'relu9' is not an activation layer; valid layers: relu1"),
        (["--set", "model.options.width=2"], "has no option 'width'"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(cli, recipe, tmp_path, args, message):
    result = cli("diagnose", "patterns", "--config", recipe, *FAST, *args, code=2)
    lines = [ln for ln in result.output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and message in lines[0], result.output
    assert not (tmp_path / "runs" / "digits-ap-patterns").exists()  # nothing left behind


def test_missing_recipe_is_one_line_exit_2(cli):
    result = cli("diagnose", "patterns", "--config", "nope.yaml", code=2)
    assert "recipe 'nope.yaml' not found; pass a YAML path or a shipped name" in result.output
