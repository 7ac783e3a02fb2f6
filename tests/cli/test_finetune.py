"""``edgetrain schedule show|suggest`` and ``edgetrain finetune run`` end to end."""

from __future__ import annotations

import json

import pytest
from _output import one_line

from edgetrain._yaml import safe_load

pytestmark = pytest.mark.usefixtures("single_thread")

RECIPE = """
name: tiny
epochs: 2
data:
  name: digits
  options: {test_fraction: 0.5}
  batch_size: 16
model:
  name: vgg_small
  options: {input_size: 8}
optimizer: {name: sgd, lr: 0.02, momentum: 0.9}
"""


def _rows(output: str) -> dict[str, list[str]]:
    """Table body rows of rich's box output, keyed by their first cell."""
    rows = {}
    for line in output.splitlines():
        if line.startswith("│"):
            cells = [c.strip() for c in line.strip("│").split("│")]
            rows[cells[0]] = cells[1:]
    return rows


# ------------------------------------------------------------------ schedule show
def test_schedule_show_prints_the_matrix_and_per_step_costs(cli):
    out = cli("schedule", "show", "4422_m", "--model", "vgg_small", "--input", "3x32x32").output
    assert "schedule 4422_m (bpls, T=4)" in out
    rows = _rows(out)
    assert rows["fc"] == ["1", "1", "1", "1", "1", "1"]
    assert rows["conv6"] == ["1", "1", "1", "1", "1", "1"]
    conv5, conv4 = rows["conv5"][:4], rows["conv4"][:4]
    assert sorted(conv5) == sorted(conv4) == ["-", "-", "1", "1"]
    assert all((a == "1") != (b == "1") for a, b in zip(conv5, conv4, strict=True))
    assert rows["conv5"][-1] == rows["conv4"][-1] == "0.5"  # mean rate
    for step in "0123":
        assert rows[step][0].startswith("fc,conv6,conv")
    assert rows["conventional"][0] == "every trained row"
    assert rows["conventional"][2] == "1.000"
    assert 0.0 < float(rows["average"][2]) < 1.0  # relative ops
    assert 0.0 < float(rows["peak"][-1]) < 1.0  # _m lowers the peak memory


def test_schedule_show_of_a_conventional_schedule_is_relative_one(cli):
    rows = _rows(cli("schedule", "show", "4444", "--model", "vgg_small").output)
    assert rows["average"][2] == rows["peak"][2] == rows["peak"][-1] == "1.000"


def test_schedule_show_with_a_timed_profile_adds_the_estimated_time(cli, tmp_path):
    # a fixed per-step cost (2 ms at 1 GMAC/s) that no skipped layer removes: the relative
    # time saved is smaller than the relative MACs saved
    (tmp_path / "slow.yaml").write_text(
        "name: slow\npeak_macs_per_s: 1.0e9\noffset_per_step: 2.0e6\n"
    )
    out = cli("schedule", "show", "4421", "--model", "vgg_small", "--profile", "slow.yaml").output
    assert "time from profile slow.yaml" in out
    rows = _rows(out)
    conv_ms = float(rows["conventional"][-2])
    assert rows["conventional"][-1] == "1.000"
    macs = int(rows["conventional"][1].replace(",", ""))
    assert conv_ms == pytest.approx(1e3 * (macs + 2e6) / 1e9, rel=1e-3)
    rel_ops, rel_time = float(rows["average"][2]), float(rows["average"][-1])
    assert rel_ops < rel_time < 1.0
    assert float(rows["3"][-2]) < conv_ms
    # the reference profile has no speed: no time columns
    assert "est. ms" not in cli("schedule", "show", "4421", "--model", "vgg_small").output


@pytest.mark.parametrize(
    ("schedule", "needle"),
    [
        ("44#1", "unknown character"),
        ("4451", "updated 5 times in a cycle of T=4"),
        ("4421_rdo_m", "conflicting"),
        ("44444444", "8 rows but the model has only 7 weight layers"),
    ],
)
def test_schedule_show_bad_schedule_is_one_line_exit_2(cli, schedule, needle):
    result = cli("schedule", "show", schedule, "--model", "vgg_small", code=2)
    assert needle in one_line(result.output)


# ------------------------------------------------------------------ schedule suggest
def test_schedule_suggest_lists_schedules_within_the_budgets(cli):
    out = cli(
        "schedule",
        "suggest",
        "--model",
        "vgg_small",
        "--max-ops-per-step",
        "15e6",
        "--max-peak-mem",
        "1.26e6",
    ).output
    rows = {k: v for k, v in _rows(out).items() if k and k[0].isdigit()}
    assert 1 <= len(rows) <= 10
    assert "4444444" not in rows  # full fine-tuning exceeds both budgets
    for name, cells in rows.items():
        counts = [int(c, 16) for c in name.removesuffix("_m")]
        assert [sum(map(int, row)) for row in cells[0].split("/")] == counts
        assert int(cells[3].replace(",", "")) <= 15e6  # peak ops
        assert float(cells[4].replace(",", "")) * 1024 <= 1.26e6  # peak memory (KiB)


def test_schedule_suggest_with_an_impossible_budget_is_one_line_exit_2(cli):
    result = cli("schedule", "suggest", "--model", "vgg_small", "--max-peak-mem", "10", code=2)
    assert "no schedule fits" in one_line(result.output)


# ------------------------------------------------------------------ finetune run
@pytest.fixture
def recipe(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(RECIPE)
    return path


@pytest.mark.parametrize(
    ("extra", "run_name", "schedule"),
    [
        ([], "tiny-4421", "4421"),
        (["--mode", "pllr"], "tiny-4444_lr4421", "4444_lr4421"),
        (["--mode", "rdo"], "tiny-4421_rdo", "4421_rdo"),
    ],
)
def test_finetune_run_trains_a_scheduled_run(cli, recipe, tmp_path, extra, run_name, schedule):
    cli(
        "finetune",
        "run",
        "--config",
        str(recipe),
        "--schedule",
        "4421",
        *extra,
        "--no-progress",
        "--no-report",
    )
    run = tmp_path / "runs" / run_name
    config = safe_load((run / "config.yaml").read_text())
    assert config["name"] == run_name
    assert config["callbacks"] == [
        {"name": "layer-schedule", "schedule": schedule, "fold_bn": True}
    ]
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["epochs_finished"] == 2


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--schedule", "44-1"], "unknown character"),
        (["--schedule", "4401"], "may only appear at the end"),
        (["--schedule", "4421", "--mode", "fast"], "unknown mode 'fast'"),
        (["--schedule", "444444444"], "9 rows but the model has only 7"),
    ],
)
def test_finetune_run_bad_schedule_or_mode_is_one_line_exit_2(cli, recipe, tmp_path, args, needle):
    result = cli("finetune", "run", "--config", str(recipe), *args, "--no-progress", code=2)
    assert needle in one_line(result.output)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_sweep_depth_end_to_end(cli, recipe, tmp_path):
    out = cli(
        "finetune",
        "sweep-depth",
        "--config",
        str(recipe),
        "--depths",
        "1,2",
        "--epochs",
        "1",
        "--no-progress",
    ).output
    assert "transfer depth sweep" in out
    import csv

    folder = tmp_path / "runs" / "tiny-depth-sweep"
    with (folder / "sweep_depth.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["depth"] for r in rows] == ["1", "2"]
    assert rows[0]["trained_layers"] == "fc" and rows[1]["trained_layers"] == "conv6,fc"
    # vgg_small at 8x8: the classifier alone is 64*10 + 10 = 650 MACs; adding conv6 costs more
    assert int(rows[0]["trainable_macs"]) == 650
    assert int(rows[1]["trainable_macs"]) > 650
    for png in ("depth_accuracy.png", "depth_loss.png", "depth_energy.png"):
        assert (folder / png).is_file()
    assert (
        "out of range"
        in cli("finetune", "sweep-depth", "--config", str(recipe), "--depths", "99", code=2).output
    )


def test_lr_grid_end_to_end_and_reuses_finished_trials(cli, recipe, tmp_path):
    args = [
        "finetune",
        "grid",
        "--config",
        str(recipe),
        "--schedule",
        "4421",
        "--upper",
        "0.04",
        "--lower",
        "0.02",
        "--epochs",
        "1",
        "--no-progress",
    ]
    out = cli(*args).output
    assert "best LR" in out and "LR range" in out
    grid = json.loads((tmp_path / "runs" / "tiny-4421-lr-grid.json").read_text())
    coarse = sorted(t["lr"] for t in grid["trials"] if t["stage"] == 1)
    assert coarse == pytest.approx([0.04 / 1.4**2, 0.04 / 1.4, 0.04], rel=1e-5)  # factor 1.4
    best = max(grid["trials"], key=lambda t: (t["accuracy"], t["lr"]))
    assert grid["best_lr"] == best["lr"]
    low, high = grid["lr_range"]
    assert low <= grid["best_lr"] <= high
    stamp = {p: p.stat().st_mtime_ns for p in (tmp_path / "runs").glob("*/summary.json")}
    cli(*args)  # a second call reuses every finished trial
    assert {p: p.stat().st_mtime_ns for p in stamp} == stamp
    assert (
        "lower <= upper"
        in cli(
            "finetune", "grid", "--config", str(recipe), "--upper", "0.01", "--lower", "0.1", code=2
        ).output
    )


def test_compare_builds_the_scenario_table(cli, recipe, tmp_path):
    import csv

    out = cli(
        "finetune",
        "compare",
        "--config",
        str(recipe),
        "--schedules",
        "4421",
        "--modes",
        "bpls,rdo",
        "--upper",
        "0.02",
        "--lower",
        "0.02",
        "--epochs",
        "1",
        "--no-progress",
    ).output
    assert "scenario table" in out
    with (tmp_path / "runs" / "tiny-compare.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["schedule"] for r in rows] == ["4444", "4440", "4421", "4421_rdo"]
    assert "best_top5" not in rows[0] and "top-5" not in out  # digits: 10 classes only
    rel = {r["schedule"]: float(r["relative_ops"]) for r in rows}
    assert rel["4444"] == 1.0 and rel["4421"] < rel["4440"] < 1.0
    assert float(rows[0]["best_lr"]) == 0.02
    for r in rows:
        assert (tmp_path / "runs" / f"tiny-{r['schedule']}-lr0.02" / "summary.json").is_file()
    assert (
        "same number of rows"
        in cli(
            "finetune",
            "compare",
            "--config",
            str(recipe),
            "--schedules",
            "4421,442",
            "--upper",
            "0.02",
            "--lower",
            "0.02",
            code=2,
        ).output
    )


def test_compare_adds_a_top5_column_with_more_than_10_classes(cli, tmp_path):
    import csv

    from PIL import Image

    for c in range(12):
        folder = tmp_path / "images" / f"c{c:02d}"
        folder.mkdir(parents=True)
        for i in range(5):
            Image.new("L", (8, 8), (20 * c + 3 * i) % 256).save(folder / f"{i}.png")
    recipe = tmp_path / "many.yaml"
    recipe.write_text(
        RECIPE.replace("name: tiny", "name: many").replace(
            "name: digits\n  options: {test_fraction: 0.5}",
            f"name: image-folder\n  options: {{root: {tmp_path / 'images'}, channels: 1}}",
        )
    )
    out = cli(
        "finetune",
        "compare",
        "--config",
        str(recipe),
        "--schedules",
        "21",
        "--modes",
        "bpls",
        "--upper",
        "0.02",
        "--lower",
        "0.02",
        "--epochs",
        "1",
        "--no-progress",
    ).output
    assert "top-5 % at best top-1" in out
    with (tmp_path / "runs" / "many-compare.csv").open() as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    header = reader.fieldnames
    assert header[header.index("best_accuracy") + 1] == "best_top5"
    assert [r["schedule"] for r in rows] == ["22", "20", "21"]
    for r in rows:
        assert float(r["best_accuracy"]) <= float(r["best_top5"]) <= 100.0


def test_explicit_matrices_from_the_command_line_and_files(cli, tmp_path):
    out = cli("schedule", "show", "1111/1111/1010/0101", "--model", "vgg_small").output
    assert "schedule 1111/1111/1010/0101 (bpls, T=4)" in out
    (tmp_path / "m.txt").write_text("# output layer first\n1111\n1111\n1010\n0101\n")
    out = cli("schedule", "show", "m.txt", "--model", "vgg_small").output
    assert "schedule 1111/1111/1010/0101 (bpls, T=4)" in out
    (tmp_path / "m.yaml").write_text("- [1, 1, 1, 1]\n- [0.5, 0, 0.5, 0]\n")
    out = cli("schedule", "show", "m.yaml", "--model", "vgg_small").output
    assert "1,1,1,1/0.5,0,0.5,0" in out
    (tmp_path / "octal.yaml").write_text("- 1111\n- 0101\n")
    result = cli("schedule", "show", "octal.yaml", "--model", "vgg_small", code=2)
    assert "must be a quoted bit string" in one_line(result.output)
    result = cli("schedule", "show", "1111/10", "--model", "vgg_small", code=2)
    assert "same number of steps" in one_line(result.output)


def test_finetune_run_with_a_matrix_and_a_yaml_list(cli, tmp_path):
    (tmp_path / "tiny.yaml").write_text(RECIPE)
    cli("finetune", "run", "--config", "tiny.yaml", "--schedule", "11/10/01", "--epochs", "1",
        "--no-progress", "--no-report")  # fmt: skip
    run = tmp_path / "runs" / "tiny-11-10-01"
    config = safe_load((run / "config.yaml").read_text())
    assert config["callbacks"][-1]["schedule"] == "11/10/01"
    result = cli("finetune", "run", "--config", "tiny.yaml", "--schedule", "11/10/01",
                 "--mode", "pllr", code=2)  # fmt: skip
    assert "would drop the explicit matrix's placement" in one_line(result.output)
    # a recipe may give the matrix as a YAML list of rows
    listed = RECIPE.replace("name: tiny", "name: listed") + (
        "callbacks: [{name: layer-schedule, schedule: ['11', '10', '01']}]\n"
    )
    (tmp_path / "listed.yaml").write_text(listed)
    cli("train", "listed.yaml", "--epochs", "1", "--no-progress", "--no-report")
    summary = json.loads((tmp_path / "runs" / "listed" / "summary.json").read_text())
    assert summary["status"] == "completed"


def test_compare_with_seeds_reports_spread_significance_and_ops_to_target(cli, recipe, tmp_path):
    import csv

    out = cli(
        "finetune", "compare", "--config", str(recipe), "--schedules", "4421",
        "--modes", "bpls", "--upper", "0.02", "--lower", "0.02", "--epochs", "2",
        "--seeds", "2", "--no-progress",
    ).output  # fmt: skip
    assert "mean ± sd, 2 seeds" in out and "p vs conv." in out and "reached conv. best" in out
    with (tmp_path / "runs" / "tiny-compare.csv").open() as f:
        rows = {r["schedule"]: r for r in csv.DictReader(f)}
    conv, bpls = rows["4444"], rows["4421"]
    for seed_run in ("tiny-4421-lr0.02", "tiny-4421-lr0.02-s1"):
        assert (tmp_path / "runs" / seed_run / "summary.json").is_file()
    assert int(conv["seeds"]) == 2 and conv["p_value"] == ""  # no test against itself
    # conventional reaches its own best in every seed, with its own ops by definition
    assert int(conv["reached"]) == 2 and float(conv["relative_ops_to_target"]) == 1.0
    summaries = [
        json.loads((tmp_path / "runs" / name / "summary.json").read_text())
        for name in ("tiny-4444-lr0.02", "tiny-4444-lr0.02-s1")
    ]
    accuracies = [s["best"]["val_top1"] for s in summaries]
    assert float(conv["best_accuracy"]) == pytest.approx(sum(accuracies) / 2)
    # ops to target = epochs x samples per epoch x MACs per sample step, mean over seeds
    steps = [s["global_step"] / s["epochs_finished"] for s in summaries]
    epochs = []
    for name, best in zip(("tiny-4444-lr0.02", "tiny-4444-lr0.02-s1"), accuracies, strict=True):
        lines = (tmp_path / "runs" / name / "metrics.jsonl").read_text().splitlines()
        records = [json.loads(line) for line in lines]
        epochs.append(
            next(r["epoch"] for r in records if "val_top1" in r and r["val_top1"] >= best)
        )
    ops = float(conv["average_ops"])
    want = sum(e * st * 16 * ops for e, st in zip(epochs, steps, strict=True)) / 2
    assert float(conv["ops_to_target"]) == pytest.approx(want)
    assert 0 <= int(bpls["reached"]) <= 2
    if int(bpls["reached"]):
        assert "operations to reach conventional fine-tuning's best top-1" in out
    else:
        assert "did not reach conventional fine-tuning's best top-1" in out


def test_paired_p_value():
    from edgetrain.runs.compare import paired_p_value

    assert paired_p_value([1.0], [2.0]) is None  # one pair: no test
    assert paired_p_value([80.0, 81.0], [80.0, 81.0]) == 1.0
    p = paired_p_value([70.0, 71.0, 69.0, 70.5], [80.0, 81.5, 79.0, 80.0])
    assert p is not None and p < 0.001
    assert paired_p_value([80.0, 79.0, 81.0], [80.5, 78.5, 81.0]) > 0.5


def test_sweep_depth_with_seeds_reports_the_spread(cli, recipe, tmp_path):
    import csv

    out = cli(
        "finetune", "sweep-depth", "--config", str(recipe), "--depths", "1",
        "--epochs", "1", "--seeds", "2", "--no-progress",
    ).output  # fmt: skip
    assert "mean ± sd, 2 seeds" in out
    runs = tmp_path / "runs"
    bests = []
    for name in ("tiny-depth1", "tiny-depth1-s1"):
        config = safe_load((runs / name / "config.yaml").read_text())
        summary = json.loads((runs / name / "summary.json").read_text())
        bests.append(summary["best"]["val_top1"])
        assert config["seed"] == (1 if name.endswith("-s1") else 0)
    with (runs / "tiny-depth-sweep" / "sweep_depth.csv").open() as f:
        (row,) = list(csv.DictReader(f))
    assert int(row["seeds"]) == 2
    assert float(row["accuracy"]) == pytest.approx(sum(bests) / 2)
    assert [float(a) for a in row["accuracies"].split(",")] == pytest.approx(bests)


def test_adaptive_schedule_from_the_cli_and_in_compare(cli, recipe, tmp_path):
    import csv

    out = cli(
        "finetune", "compare", "--config", str(recipe), "--schedules", "4421",
        "--modes", "bpls", "--upper", "0.02", "--lower", "0.02", "--epochs", "2",
        "--adaptive", "ops=0.8", "--no-progress",
    ).output  # fmt: skip
    assert "adaptive-ops0.8" in out
    with (tmp_path / "runs" / "tiny-compare.csv").open() as f:
        rows = {r["schedule"]: r for r in csv.DictReader(f)}
    row = rows["adaptive-ops0.8"]
    assert row["mode"] == "adaptive"
    run = tmp_path / "runs" / "tiny-adaptive-ops0.8-lr0.02"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    # the row's ops are the mean of what its epochs logged, within the budget
    macs = [r["schedule_step_macs"] for r in records]
    assert float(row["average_ops"]) == pytest.approx(sum(macs) / len(macs))
    assert float(row["relative_ops"]) <= 0.8 + 1e-6
    assert all(r["schedule_relative_ops"] <= 0.8 + 1e-9 for r in records)
    # ops to target count each epoch at its own logged cost (16 samples a step)
    if row["ops_to_target"]:
        best = float(rows["4444"]["best_accuracy"])
        total, previous = 0.0, 0
        for r in records:
            total += (r["step"] - previous) * 16 * r["schedule_step_macs"]
            previous = r["step"]
            if r["val_top1"] >= best:
                break
        assert float(row["ops_to_target"]) == pytest.approx(total)
    # finetune run --adaptive: the run, its log and the report's plot
    cli(
        "finetune", "run", "--config", str(recipe), "--schedule", "444", "--adaptive",
        "ops=0.9,signal=grad_norm", "--epochs", "1", "--no-progress",
    )  # fmt: skip
    run = tmp_path / "runs" / "tiny-adaptive-ops0.9-grad_norm"
    assert (run / "adaptive_schedule.jsonl").is_file()
    assert list((run / "plots").glob("adaptive-schedule-*.png"))
    bad = one_line(
        cli(
            "finetune", "run", "--config", str(recipe), "--schedule", "4421", "--adaptive",
            "ops=0.8", code=2,
        ).output
    )  # fmt: skip
    assert "--adaptive starts from a schedule that updates every row every step" in bad
    bad = one_line(
        cli(
            "finetune", "run", "--config", str(recipe), "--schedule", "4444", "--adaptive",
            "flops=0.8", code=2,
        ).output
    )  # fmt: skip
    assert "'flops=0.8' is not KEY=VALUE" in bad
    bad = one_line(
        cli(
            "finetune", "run", "--config", str(recipe), "--schedule", "4444", "--adaptive",
            "ops=0.01", "--epochs", "1", "--no-progress", code=2,
        ).output
    )  # fmt: skip
    assert "adaptive schedule (4 rows): the cheapest allocation" in bad
    assert not (tmp_path / "runs" / "tiny-adaptive-ops0.01").exists()  # refused before
