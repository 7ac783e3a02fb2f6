"""The operations-aware scenario comparison: step MACs from the cost model, MACs and
epochs to reach the reference run's best accuracy, and the conventional reference runs."""

from __future__ import annotations

import pytest

from edgetrain import compress
from edgetrain.cost import analyze
from edgetrain.finetune import Schedule, schedule_cost
from edgetrain.models import create
from edgetrain.report import build_report, load_runs
from edgetrain.report.scenario import plot_scenario, reference_runs, run_ops
from edgetrain.runs import load_config, load_trained_model, load_trained_run, start_run


def _tree(name: str, callbacks: list) -> dict:
    return {
        "name": name,
        "epochs": 2,
        "data": {"name": "digits", "options": {"test_fraction": 0.5}, "batch_size": 16},
        "model": {"name": "vgg_small", "options": {"input_size": 8}},
        "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
        "callbacks": callbacks,
    }


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    start_run(load_config(_tree("conv", [])), root, progress=False)
    sched = [{"name": "layer-schedule", "schedule": "4421"}]
    start_run(load_config(_tree("sched", sched)), root, progress=False)
    return [root / "conv", root / "sched"]


def test_step_macs_follow_the_cost_model(runs):
    ops = run_ops(load_runs(runs))
    model = create("vgg_small", in_channels=1, num_classes=10, input_size=8)
    expected = schedule_cost(model, (1, 8, 8), Schedule.parse("4421"), batch_size=16)
    assert ops[1].step_macs == pytest.approx(expected.average_step_macs)
    assert ops[0].relative_ops == 1.0
    assert ops[1].relative_ops == pytest.approx(ops[1].step_macs / ops[0].step_macs)
    assert ops[1].relative_ops < 1.0
    # the reference reaches its own best, after step count x step MACs operations
    records = load_runs(runs)[0].metrics
    best = max(records, key=lambda m: m["val_top1"])
    first = next(m for m in records if m["val_top1"] >= best["val_top1"])
    assert ops[0].epochs_to_target == first["epoch"]
    assert ops[0].macs_to_target == pytest.approx(ops[0].step_macs * first["step"])


def test_a_pruned_run_is_counted_with_its_pruned_architecture(copy_tiny_resnet_run, tmp_path):
    source = load_trained_run(copy_tiny_resnet_run(tmp_path))
    recipe = {
        "version": 1,
        "pruners": {
            "inner": {"method": "l1_filter", "sparsity": 0.5, "layers": ["layer1.*.conv1"]}
        },
        "finetune": {"epochs": 1, "lr": 0.01},
    }
    out = compress.run(source, recipe, tmp_path / "pruned").out
    (ops,) = run_ops(load_runs([out]))
    pruned = load_trained_model(out, prefer="last")
    batch = source.config.data.batch_size
    expected = analyze(pruned, (1, 8, 8), plans=["all"], batch_size=batch).steps()[0]
    full = analyze(source.model, (1, 8, 8), plans=["all"], batch_size=batch).steps()[0]
    assert ops.step_macs == expected.step_macs < full.step_macs


def test_report_with_scenario(runs, tmp_path):
    page = build_report(runs, tmp_path / "s.html", scenario=True)
    assert (tmp_path / "s_plots" / "scenario.png").is_file()
    lines = (tmp_path / "s_scenario.csv").read_text().splitlines()
    assert lines[0] == "run,step_macs,relative_ops,epochs_to_target,macs_to_target"
    assert len(lines) == 3 and lines[1].startswith("conv,")
    assert page.read_text().count("data:image/png;base64,") == 3


# ------------------------------------------------------------------ reference lines
@pytest.fixture(scope="module")
def compare_runs(tmp_path_factory):
    """Runs named as ``edgetrain finetune compare`` names its cases (one epoch each)."""
    root = tmp_path_factory.mktemp("compare")
    for case in ("4421", "4444", "4440", "4444_lr4421"):
        tree = {**_tree(f"c-{case}", [{"name": "layer-schedule", "schedule": case}]), "epochs": 1}
        start_run(load_config(tree), root, progress=False)
    return {case: root / f"c-{case}" for case in ("4421", "4444", "4440", "4444_lr4421")}


def test_reference_runs_are_conventional_and_one_more_frozen(compare_runs):
    order = ["4421", "4444_lr4421", "4440", "4444"]
    runs = load_runs([compare_runs[c] for c in order])
    refs = reference_runs(runs)
    assert [(r.index, r.name, r.trained_layers, r.extra_frozen) for r in refs] == [
        (3, "c-4444", 4, 0),
        (2, "c-4440", 3, 1),
    ]
    assert refs[0].label == "conventional" and refs[1].label == "conventional, 1 more frozen"
    assert refs[0].best_accuracy == runs[3].best["val_top1"]
    # bpls and pllr runs are never references; without the N+1 run only N is one
    assert reference_runs(runs[:2]) == []
    assert [r.name for r in reference_runs(load_runs([compare_runs["4444"]]))] == ["c-4444"]


def test_a_run_without_schedule_counts_its_trainable_layers(runs, compare_runs):
    # "conv" trains all 7 layers of vgg_small: it is N; 4444 (4 layers) is not N+1
    refs = reference_runs(load_runs([runs[1], compare_runs["4444"], runs[0]]))
    assert [(r.name, r.trained_layers, r.extra_frozen) for r in refs] == [("conv", 7, 0)]


def test_plot_scenario_draws_the_references(compare_runs, tmp_path):
    records = load_runs([compare_runs[c] for c in ("4444", "4440", "4421")])
    path = plot_scenario(records, run_ops(records), tmp_path / "plots")
    assert path == tmp_path / "plots" / "scenario.png" and path.stat().st_size > 0
    none = plot_scenario(records[2:], run_ops(records[2:]), tmp_path / "bare", references=[])
    assert none.is_file()


def test_an_adaptive_run_counts_each_epoch_at_its_logged_cost(runs, tmp_path):
    """Not a reference line (its schedule changes), and its ops are what each epoch
    logged: the mean step over training, and the sum of epochs up to the target."""
    adaptive = [{"name": "adaptive-schedule", "rows": 4, "ops_budget": 0.8}]
    start_run(load_config(_tree("adapt", adaptive)), tmp_path, progress=False)
    loaded = load_runs([runs[0], tmp_path / "adapt"])
    assert [r.name for r in reference_runs(loaded)] == ["conv"]
    ops = run_ops(loaded)
    records = loaded[1].metrics
    per_step = [16 * m["schedule_step_macs"] for m in records]
    steps = [records[0]["step"], records[1]["step"] - records[0]["step"]]
    assert ops[1].step_macs == pytest.approx(
        sum(n * c for n, c in zip(steps, per_step, strict=True)) / sum(steps)
    )
    # fewer ops than the conventional run (the two are costed at batch 16 and 16 x the
    # per-sample cost; the budget of 0.8 holds for the latter, per sample)
    assert ops[1].relative_ops < 1.0
    assert all(m["schedule_relative_ops"] <= 0.8 + 1e-9 for m in records)
    if ops[1].epochs_to_target is not None:
        hit = ops[1].epochs_to_target
        want = sum(n * c for n, c in zip(steps[:hit], per_step[:hit], strict=True))
        assert ops[1].macs_to_target == pytest.approx(want)
