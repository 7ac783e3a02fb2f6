"""End-to-end tests of each command through the CLI on real offline data."""

from __future__ import annotations

import json
import shutil

import pytest

COMMANDS = [
    "demo",
    "train",
    "report",
    "data",
    "models",
    "cost",
    "finetune",
    "schedule",
    "prune-train",
    "grow",
    "grow-prune",
    "morphnet",
    "compress",
    "export",
    "bench",
    "diagnose",
    "sweep",
]


def test_help_lists_every_command_with_a_purpose(cli):
    out = cli("--help").output
    for name in COMMANDS:
        assert f" {name} " in out


@pytest.mark.parametrize(
    "args",
    [
        ["demo"],
        ["train"],
        ["report"],
        ["models"],
        ["data", "list"],
        ["data", "describe"],
        ["data", "prepare"],
        ["cost"],
        ["cost", "analyze"],
        ["cost", "calibrate"],
        ["finetune"],
        ["finetune", "run"],
        ["finetune", "sweep-depth"],
        ["finetune", "grid"],
        ["finetune", "compare"],
        ["schedule"],
        ["schedule", "show"],
        ["schedule", "suggest"],
        ["compress"],
        ["compress", "run"],
        ["compress", "sensitivity"],
        ["export"],
        ["bench"],
        ["sweep"],
        ["sweep", "run"],
        ["sweep", "worker"],
        ["sweep", "report"],
        ["diagnose"],
        ["diagnose", "patterns"],
    ],
)
def test_every_command_help_has_an_example(cli, args):
    out = cli(*args, "--help").output
    assert "Example: edgetrain" in out


def test_registered_commands_match_and_load_with_the_help_the_list_shows(cli):
    import inspect

    from edgetrain.cli import _COMMANDS, _summary, load_command

    assert set(_COMMANDS) == set(COMMANDS)
    for name, (module, attribute) in _COMMANDS.items():
        command = load_command(name)
        assert command.name == name
        assert inspect.cleandoc(command.help or "") == _summary(module, attribute), name


def _heavy_modules_after(code: str, cwd) -> str:
    """Run ``code`` in a fresh interpreter; which of torch, matplotlib, numpy it imported."""
    import subprocess
    import sys

    probe = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from edgetrain.cli import _COMMANDS, app, load_command\n"
        f"{code}\n"
        "print(sorted(m for m in ('torch', 'matplotlib', 'numpy') if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=cwd
    )
    return out.stdout.strip() + out.stderr


def test_the_command_list_imports_no_command(tmp_path):
    """The command list reads the commands' help from their source: no torch import."""
    code = (
        "result = CliRunner().invoke(app, ['--help'])\n"
        "assert result.exit_code == 0 and ' bench ' in result.output, result.output"
    )
    assert _heavy_modules_after(code, tmp_path) == "[]"


def test_every_help_imports_no_library(tmp_path):
    """Each command imports the library inside its function: its --help starts at once."""
    code = (
        "runner = CliRunner()\n"
        "for name in _COMMANDS:\n"
        "    subs = list(getattr(load_command(name), 'commands', {}))\n"
        "    for args in [[name], *[[name, sub] for sub in subs]]:\n"
        "        result = runner.invoke(app, [*args, '--help'])\n"
        "        assert result.exit_code == 0, (args, result.output)"
    )
    assert _heavy_modules_after(code, tmp_path) == "[]"


def test_help_constants_are_the_librarys():
    from edgetrain.cli import compress, cost, diagnose, finetune, prune, schedule
    from edgetrain.cli._common import shipped_names
    from edgetrain.compress.sensitivity import DEFAULT_SPARSITIES
    from edgetrain.cost import ALL
    from edgetrain.cost.analysis import MAC_CONVENTIONS, MEMORY_METHODS
    from edgetrain.diagnostics import DEFAULT_BUCKETS
    from edgetrain.finetune import MODES
    from edgetrain.prune.callback import PENALTY_MODES
    from edgetrain.recipes import COMPRESSION_RECIPES, RECIPES

    assert compress.DEFAULT_SPARSITIES == DEFAULT_SPARSITIES
    assert cost.ALL == ALL
    assert cost.MEMORY == schedule.MEMORY == MEMORY_METHODS
    assert cost.MACS == MAC_CONVENTIONS
    assert diagnose.DEFAULT_BUCKETS == DEFAULT_BUCKETS
    assert finetune.MODES == MODES
    assert prune.PENALTY_MODES == PENALTY_MODES
    assert shipped_names("recipes/compress") == COMPRESSION_RECIPES.names()
    assert shipped_names("recipes") == RECIPES.names()


def test_models_lists_zoo_with_exact_param_counts(cli):
    out = cli("models").output
    for name in ("vgg_small", "vgg11_b", "kws_cnn", "fcn1d", "small_cnn", "resnet20", "resnet56"):
        assert name in out
    assert "82,330" in out  # vgg_small at 3x32x32, 10 classes
    assert "resnet20" in cli("models", "resnet*").output
    assert "vgg_small" not in cli("models", "resnet*").output


def test_data_list_and_describe(cli):
    out = cli("data", "list").output
    for name in ("digits-32", "keywords-de@8k", "ucr:<name>", "cifar10", "speech-commands"):
        assert name in out
    out = cli("data", "describe", "digits-32", "--option", "channels=3").output
    assert "3 x 32 x 32" in out and "1,437" in out and "360" in out
    out = cli("data", "describe", "ucr:GunPoint").output
    assert "1 x 150" in out and "50" in out and "150" in out


def test_data_describe_unknown_name_is_one_line_exit_2(cli):
    result = cli("data", "describe", "digitz", code=2)
    lines = [ln for ln in result.output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1
    assert "unknown data set 'digitz'" in lines[0] and "digits-32" in lines[0]


def test_data_describe_missing_folder_exit_2(cli, tmp_path):
    result = cli("data", "describe", "cifar10", "-o", f"root={tmp_path / 'none'}", code=2)
    assert "cifar-10-batches-py" in result.output


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")
def test_data_prepare_keywords_fills_cache(cli, monkeypatch, tmp_path):
    monkeypatch.setenv("EDGETRAIN_CACHE", str(tmp_path / "cache"))
    out = cli("data", "prepare", "keywords-de@8k", "-o", "utterances_per_word=2").output
    assert "ready" in out
    assert any((tmp_path / "cache").rglob("*"))


def test_train_writes_a_complete_run_directory(cli, tiny_recipe, tmp_path):
    cli("train", str(tiny_recipe), "--no-progress")
    run = tmp_path / "runs" / "tiny"
    for name in ("config.yaml", "metrics.jsonl", "summary.json", "report.html"):
        assert (run / name).is_file(), name
    assert (run / "checkpoints" / "last.pt").is_file()
    assert (run / "plots" / "accuracy.png").is_file()
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1, 2]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["epochs_finished"] == 2
    assert summary["best"]["val_top1"] > 30.0  # chance is 10 %
    assert "data:image/png;base64," in (run / "report.html").read_text()


def test_train_overrides_and_existing_run(cli, tiny_recipe, tmp_path):
    cli(
        "train",
        str(tiny_recipe),
        "--set",
        "optimizer.lr=0.01",
        "--epochs",
        "1",
        "--name",
        "lr001",
        "--no-progress",
        "--no-report",
    )
    config = (tmp_path / "runs" / "lr001" / "config.yaml").read_text()
    assert "lr: 0.01" in config and "epochs: 1" in config
    result = cli("train", str(tiny_recipe), "--name", "lr001", "--no-progress", code=2)
    assert "exists" in result.output and "--resume" in result.output
    cli(
        "train",
        str(tiny_recipe),
        "--name",
        "lr001",
        "--epochs",
        "1",
        "--overwrite",
        "--no-progress",
        "--no-report",
    )


def test_resume_continues_to_more_epochs(cli, tiny_recipe, tmp_path):
    cli("train", str(tiny_recipe), "--epochs", "1", "--no-progress", "--no-report")
    cli("train", "--resume", str(tmp_path / "runs" / "tiny"), "--epochs", "2", "--no-progress")
    lines = (tmp_path / "runs" / "tiny" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1, 2]


@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        ("optimizr: {name: sgd}\n", "unknown key 'optimizr'"),
        ("scheduler: {name: stepp}\n", "unknown scheduler 'stepp'"),
        ("callbacks: [{name: early-stopping, patiense: 2}]\n", "no option 'patiense'"),
        ("seed: [1\n", "invalid YAML at line"),
    ],
)
def test_bad_recipe_is_one_line_exit_2_and_writes_nothing(cli, tiny_recipe, tmp_path, edit, needle):
    tiny_recipe.write_text(tiny_recipe.read_text() + edit)
    result = cli("train", str(tiny_recipe), "--no-progress", code=2)
    assert needle in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "runs" / "tiny").exists()


def test_bad_override_and_missing_recipe_exit_2(cli, tiny_recipe):
    assert "lrr" in cli("train", str(tiny_recipe), "--set", "optimizer.lrr=1", code=2).output
    assert "not found" in cli("train", "nope.yaml", code=2).output


def test_corrupted_init_checkpoint_exit_2(cli, tiny_recipe, tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"PK\x03\x04 truncated")
    result = cli("train", str(tiny_recipe), "--set", f"model.init_from={bad}", code=2)
    assert "corrupted or truncated" in result.output


def test_init_from_other_architecture_exit_2(cli, tiny_recipe, tmp_path):
    cli("train", str(tiny_recipe), "--epochs", "1", "--no-progress", "--no-report")
    result = cli(
        "train",
        str(tiny_recipe),
        "--name",
        "other",
        "--set",
        "model.name=small_cnn",
        "--set",
        f"model.init_from={tmp_path / 'runs' / 'tiny'}",
        code=2,
    )
    assert "another architecture" in result.output


def test_report_over_several_runs(cli, tiny_recipe, tmp_path):
    cli("train", str(tiny_recipe), "--epochs", "1", "--no-progress", "--no-report")
    cli("train", str(tiny_recipe), "--epochs", "1", "--name", "b", "--no-progress", "--no-report")
    out = tmp_path / "cmp.html"
    cli("report", str(tmp_path / "runs" / "tiny"), str(tmp_path / "runs" / "b"), "--out", str(out))
    page = out.read_text()
    assert page.count("data:image/png;base64,") == 2 and "tiny" in page and ">b<" in page
    assert (tmp_path / "cmp_plots" / "loss.png").is_file()
    assert "not a run directory" in cli("report", str(tmp_path), code=2).output


def test_shipped_recipe_by_name_scenario_3(cli, tmp_path):
    cli("train", "ucr-fcn1d", "--epochs", "1", "--no-progress", "--no-report")
    line = json.loads((tmp_path / "runs" / "ucr-fcn1d" / "metrics.jsonl").read_text())
    assert line["batch_size"] == 1 and line["step"] == 50 and line["val_samples"] == 150


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")
def test_keyword_transfer_recipes(cli, monkeypatch, tmp_path):
    monkeypatch.setenv("EDGETRAIN_CACHE", str(tmp_path / "cache"))
    few = [
        "--set",
        "data.options.utterances_per_word=4",
        "--epochs",
        "1",
        "--no-progress",
        "--no-report",
    ]
    cli("train", "keywords-pretrain", *few)
    cli("train", "keywords-finetune", *few)
    summary = json.loads((tmp_path / "runs" / "keywords-finetune" / "summary.json").read_text())
    assert summary["status"] == "completed"


def test_demo_quick(cli, tmp_path):
    out = cli("demo", "--size", "quick", "--runs-dir", "demo", "--no-progress").output
    assert "pretrain" in out and "fine-tune" in out and "no fine-tune" in out
    assert "prune-train (resnet8)" in out and "PruneTrain on resnet8 (ratio" in out
    assert "inference MACs" in out
    pruned = tmp_path / "demo" / "digits16-resnet8-prunetrain"
    assert (pruned / "plots" / "channels.png").is_file()
    assert (tmp_path / "demo" / "report.html").is_file()
    assert "compression (vgg-small-l1)" in out and "pruned int8_static" in out
    compressed = tmp_path / "demo" / "digits-pretrain-vgg-small-l1"
    assert (compressed / "model.int8_static.onnx").is_file()
    assert (compressed / "baseline" / "model.onnx").is_file()
    ft = json.loads((tmp_path / "demo" / "digits-finetune" / "summary.json").read_text())
    pre = json.loads((tmp_path / "demo" / "digits-pretrain" / "summary.json").read_text())
    assert ft["trainable_params"] < pre["trainable_params"]  # conv1, conv2 frozen
    assert "--size" in cli("demo", "--size", "huge", code=2).output


def test_killed_run_is_marked_interrupted_and_resumes(tmp_path, tiny_recipe):
    """SIGTERM mid-run: finished epochs stay, status says interrupted, --resume completes."""
    import os
    import signal
    import subprocess
    import sys
    import time

    recipe = tiny_recipe.read_text().replace("epochs: 2", "epochs: 40")
    tiny_recipe.write_text(recipe)
    cmd = [
        sys.executable,
        "-m",
        "edgetrain.cli",
        "train",
        str(tiny_recipe),
        "--no-progress",
        "--no-report",
    ]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    metrics = tmp_path / "runs" / "tiny" / "metrics.jsonl"
    deadline = time.time() + 60
    while time.time() < deadline and (not metrics.is_file() or not metrics.read_text()):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    summary = json.loads((tmp_path / "runs" / "tiny" / "summary.json").read_text())
    assert proc.returncode == 130, (err, summary)
    assert b"--resume" in err
    assert summary["status"] == "interrupted", summary
    done = summary["epochs_finished"]
    assert 1 <= done < 40, summary
    assert (tmp_path / "runs" / "tiny" / "checkpoints" / "last.pt").is_file()
    env = {**os.environ}
    subprocess.run(
        [
            sys.executable,
            "-m",
            "edgetrain.cli",
            "train",
            "--resume",
            "runs/tiny",
            "--epochs",
            str(done + 1),
            "--no-progress",
            "--no-report",
        ],
        cwd=tmp_path,
        check=True,
        env=env,
        capture_output=True,
    )
    lines = [json.loads(x)["epoch"] for x in metrics.read_text().splitlines()]
    assert lines == list(range(1, done + 2))


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("optimizer.lr=abc", "option 'lr'"),
        ("optimizer.momentum=-1", "optimizer 'sgd'"),
        ("model.options.num_classes=abc", "option 'num_classes'"),
        ("model.freeze=['re:conv[']", "re:conv["),
        ("model.init_exclude=[fcc]", "'fcc' matches no module"),
        ("data.name=digits-32", "cannot take the data's 1x32x32 inputs"),
        ("data.augment=[{padding: 2}]", "needs a 'name'"),
    ],
)
def test_bad_values_are_one_line_exit_2(cli, tiny_recipe, tmp_path, override, needle):
    extra = ["--set", "model.options={input_size: 8}"] if "data.name" in override else []
    if "init_exclude" in override:
        cli(
            "train",
            str(tiny_recipe),
            "--epochs",
            "1",
            "--name",
            "src",
            "--no-progress",
            "--no-report",
        )
        extra = ["--set", f"model.init_from={tmp_path / 'runs' / 'src'}"]
    result = cli("train", str(tiny_recipe), "--set", override, *extra, "--no-progress", code=2)
    assert needle in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "runs" / "tiny").exists()


def test_overwrite_keeps_the_old_run_when_the_new_one_cannot_start(cli, tiny_recipe, tmp_path):
    cli("train", str(tiny_recipe), "--epochs", "1", "--no-progress", "--no-report")
    cli("train", str(tiny_recipe), "--overwrite", "--set", "optimizer.lr=abc", code=2)
    assert (tmp_path / "runs" / "tiny" / "checkpoints" / "last.pt").is_file()


def test_resume_refuses_flags_it_would_ignore(cli, tiny_recipe, tmp_path):
    cli("train", str(tiny_recipe), "--epochs", "1", "--no-progress", "--no-report")
    out = cli("train", "--resume", "runs/tiny", "--seed", "3", code=2).output
    assert "drop --seed" in out


def test_resume_does_not_need_the_init_checkpoint_any_more(cli, tiny_recipe, tmp_path):
    cli("train", str(tiny_recipe), "--epochs", "1", "--name", "src", "--no-progress", "--no-report")
    cli(
        "train",
        str(tiny_recipe),
        "--epochs",
        "1",
        "--set",
        "model.init_from=runs/src",
        "--no-progress",
        "--no-report",
    )
    shutil.rmtree(tmp_path / "runs" / "src")
    cli("train", "--resume", "runs/tiny", "--epochs", "2", "--no-progress", "--no-report")
