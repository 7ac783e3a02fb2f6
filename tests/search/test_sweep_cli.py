"""``edgetrain sweep run|worker|report`` end to end on SQLite with the real pipeline:
prune a tiny ResNet trained on the digits, export, quantize, benchmark with ONNX Runtime."""

from __future__ import annotations

import json
from wsgiref.util import setup_testing_defaults

import optuna
import pytest
from conftest import sweep_yaml
from typer.testing import CliRunner

from edgetrain.cli import app
from edgetrain.search import open_storage

pytestmark = pytest.mark.usefixtures("single_thread")


def _cli(*args, code=0):
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == code, (result.output, result.exception)
    return result.output


def test_sweep_run_measures_the_budget_and_writes_the_report(sweep_root, monkeypatch):
    monkeypatch.chdir(sweep_root)
    monkeypatch.setenv("COLUMNS", "200")
    (sweep_root / "sweep.yaml").write_text(
        sweep_yaml("cli", 4, "bayes", "reference: reference.yaml")
    )
    out = _cli("sweep", "run", "sweep.yaml", "--no-progress")
    assert "best feasible trials" in out and "report.html" in out
    folder = sweep_root / "runs" / "cli"
    storage = open_storage(f"sqlite:///{folder / 'study.db'}")
    study = optuna.load_study(study_name="cli", storage=storage)
    complete = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(complete) == 4 == len(study.trials)
    baseline = study.user_attrs["baseline"]
    reference = study.user_attrs["reference"]
    assert reference["macs"] < baseline["macs"]
    for t in complete:
        a = t.user_attrs
        assert t.values[0] == a["latency_ms"] > 0
        assert 0 <= a["top1"] <= 100 and a["deployed"] == "fp32"
        assert a["top1_drop"] == pytest.approx(baseline["top1"] - a["top1"])
        assert a["macs"] <= baseline["macs"]
        trial_dir = folder / "trials" / f"{t.number:04d}"
        assert json.loads((trial_dir / "metrics.json").read_text())["macs"] == a["macs"]
        assert (trial_dir / "recipe.yaml").is_file()
        assert not (trial_dir / "model.onnx").exists()  # keep_models: false
    for png in ("pareto", "best_so_far", "latency_vs_macs", "latency_vs_sparsity"):
        assert (folder / "report" / "plots" / f"{png}.png").is_file()
    page = (folder / "report" / "report.html").read_text()
    assert "Best trials" in page and "reference" in page

    # optuna-dashboard serves the same storage
    dashboard = pytest.importorskip("optuna_dashboard")
    environ: dict = {}
    setup_testing_defaults(environ)
    environ["PATH_INFO"] = "/api/studies"
    status = []
    body = b"".join(dashboard.wsgi(storage)(environ, lambda s, h, *a: status.append(s)))
    assert status[0].startswith("200") and b'"cli"' in body and b"latency_ms" in body

    out = _cli("sweep", "report", "runs/cli")
    assert "4 measured, 0 pruned early, 0 failed" in out
    assert "budget" in _cli("sweep", "run", "sweep.yaml", "--no-progress", "--no-report")


def test_quantized_recipe_deploys_the_int8_model(sweep_root, monkeypatch):
    monkeypatch.chdir(sweep_root)
    (sweep_root / "recipe-int8.yaml").write_text(
        (sweep_root / "recipe.yaml").read_text()
        + "quantize: {method: int8_static, calibration_batches: 2}\n"
    )
    text = sweep_yaml("int8", 1, "random", "keep_models: true").replace(
        "recipe: recipe.yaml", "recipe: recipe-int8.yaml"
    )
    (sweep_root / "int8.yaml").write_text(text)
    _cli("sweep", "run", "int8.yaml", "--no-progress", "--no-report")
    storage = open_storage("sqlite:///runs/int8/study.db")
    (trial,) = optuna.load_study(study_name="int8", storage=storage).trials
    a = trial.user_attrs
    assert a["deployed"] == "int8_static"
    assert a["latency_ms"] == a["latency_int8_ms"] and a["latency_fp32_ms"] > 0
    assert a["top1"] == a["top1_int8"] and abs(a["top1_int8"] - a["top1_fp32"]) < 15
    assert a["size_int8_bytes"] > 0 and a["size_fp32_bytes"] > 0
    folder = sweep_root / "runs" / "int8" / "trials" / "0000"
    assert (folder / "model.int8_static.onnx").is_file() and (folder / "model.pt").is_file()


def test_bad_input_exits_2_with_one_line(sweep_root, monkeypatch):
    monkeypatch.chdir(sweep_root)
    (sweep_root / "bad.yaml").write_text(
        sweep_yaml("bad").replace("inner.sparsity", "outer.sparsity")
    )
    result = CliRunner().invoke(app, ["sweep", "run", "bad.yaml", "--no-progress"])
    assert result.exit_code == 2
    assert (
        "parameters.outer.sparsity" in result.output and "names neither a pruner" in result.output
    )
    assert not (sweep_root / "runs" / "bad").exists()
    (sweep_root / "psb.yaml").write_text(
        "version: 1\npruners:\n  inner: {method: l1_filter, sparsity: 0.5, layers: "
        "['layer1.*.conv1']}\nnumber_format: {method: psb, samples: 4}\n"
    )
    (sweep_root / "psb-sweep.yaml").write_text(
        sweep_yaml("psb")
        .replace("recipe: recipe.yaml", "recipe: psb.yaml")
        .replace("  finetune.epochs: {values: [0]}\n", "")
    )
    result = CliRunner().invoke(app, ["sweep", "run", "psb-sweep.yaml", "--no-progress"])
    assert result.exit_code == 2 and "number_format 'psb'" in result.output
    result = CliRunner().invoke(app, ["sweep", "report", "nothing-here"])
    assert result.exit_code == 2 and "no sweep 'nothing-here'" in result.output
    (sweep_root / "good.yaml").write_text(sweep_yaml("good"))
    result = CliRunner().invoke(
        app, ["sweep", "worker", "good.yaml", "--storage", "redis://x", "--no-progress"]
    )
    assert result.exit_code == 2 and "is not a database URL" in result.output


def test_a_throughput_sweep_measures_throughput_without_a_batch_given(sweep_root, monkeypatch):
    """``metric: throughput`` with no ``runtime.throughput_batch``: the trials run the
    throughput at ``edgetrain bench``'s batch instead of failing."""
    monkeypatch.chdir(sweep_root)
    text = sweep_yaml("tput", 1).replace("{name: latency_ms}", "{name: throughput}")
    assert "throughput_batch" not in text
    (sweep_root / "tput.yaml").write_text(text)
    _cli("sweep", "run", "tput.yaml", "--no-progress")
    storage = open_storage(f"sqlite:///{sweep_root / 'runs' / 'tput' / 'study.db'}")
    (trial,) = optuna.load_study(study_name="tput", storage=storage).trials
    assert trial.state == optuna.trial.TrialState.COMPLETE, trial.user_attrs
    assert trial.values[0] == trial.user_attrs["throughput"] > 0


def test_fine_tuning_reports_every_epoch_to_the_trial_pruner(sweep_root, monkeypatch):
    monkeypatch.chdir(sweep_root)
    text = sweep_yaml("pruned", 3, extra="trial_pruner: {name: median}").replace(
        "finetune.epochs: {values: [0]}", "finetune.epochs: {values: [2]}"
    )
    (sweep_root / "pruned.yaml").write_text(text)
    out = _cli("sweep", "run", "pruned.yaml", "--no-progress")
    assert "pruned early" in out
    storage = open_storage(f"sqlite:///{sweep_root / 'runs' / 'pruned' / 'study.db'}")
    study = optuna.load_study(study_name="pruned", storage=storage)
    state = optuna.trial.TrialState
    assert len(study.trials) == 3
    for t in study.trials:
        assert t.state in (state.COMPLETE, state.PRUNED), t.user_attrs.get("fail_reason")
        # the top-1 error (the objective is minimised) after each epoch trained
        assert set(t.intermediate_values) == (
            {1, 2} if t.state == state.COMPLETE else {t.user_attrs["pruned_at_epoch"]}
        )
        for epoch, value in t.intermediate_values.items():
            assert 0 <= value <= 100, epoch
        if t.state == state.COMPLETE:
            assert t.user_attrs["finetune_epochs"] == 2
            assert t.intermediate_values[2] == pytest.approx(100 - t.user_attrs["top1"], abs=1e-6)
    page = (sweep_root / "runs" / "pruned" / "report" / "report.html").read_text()
    assert "pruned early (fine-tuning stopped)" in page


def test_a_sweep_measures_and_scores_on_openvino(sweep_root, monkeypatch):
    from edgetrain.compress.runtime import RUNTIMES

    if RUNTIMES.entry("openvino").fn.missing() is not None:
        pytest.skip("openvino is not installed")
    monkeypatch.chdir(sweep_root)
    text = sweep_yaml("ov", 1).replace(
        "runtime: {runs: 5, repeats: 1, warmup: 1}",
        "runtime: {name: openvino, runs: 5, repeats: 1, warmup: 1, options: {hint: latency}}",
    )
    (sweep_root / "ov.yaml").write_text(text)
    _cli("sweep", "run", "ov.yaml", "--no-progress", "--no-report")
    storage = open_storage(f"sqlite:///{sweep_root / 'runs' / 'ov' / 'study.db'}")
    study = optuna.load_study(study_name="ov", storage=storage)
    (trial,) = study.trials
    assert trial.state == optuna.trial.TrialState.COMPLETE, trial.user_attrs
    assert trial.user_attrs["latency_ms"] > 0 and 0 <= trial.user_attrs["top1"] <= 100
    assert study.user_attrs["baseline"]["top1"] > 50  # scored by OpenVINO, not garbage
    bad = sweep_yaml("ov-bad", 1).replace(
        "runtime: {runs: 5, repeats: 1, warmup: 1}",
        "runtime: {name: openvino, options: {precision: int4}}",
    )
    (sweep_root / "ov-bad.yaml").write_text(bad)
    out = _cli("sweep", "run", "ov-bad.yaml", "--no-progress", code=2)
    assert "precision 'int4' is not one of fp32, fp16, bf16" in out
