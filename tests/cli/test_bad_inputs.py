"""Bad inputs to ``edgetrain train``, one row each: exit 2 and one line naming the input
and the fix, before any work starts (no run directory left behind)."""

from __future__ import annotations

import numpy as np
import pytest
from _output import one_line

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.mark.parametrize(
    ("edit", "args", "needle"),
    [
        # a key given twice: PyYAML would keep the last one without a word
        (
            "epochs: 3\n",
            (),
            "invalid YAML at line 11, column 1: key 'epochs' is given twice",
        ),
        ("", ("--set", "optimizer.lr=.nan"), "optimizer.lr: nan is not a finite number"),
        ("", ("--set", "optimizer.lr=.inf"), "optimizer.lr: inf is not a finite number"),
        ("", ("--seed", str(2**64)), "seed: Input should be less than or equal to"),
        ("", ("--seed", "-1"), "seed: Input should be greater than or equal to 0"),
        ("", ("--device", "cuda:7"), "device 'cuda:7' is not on this machine; devices here: cpu"),
        ("", ("--device", "tpu"), "device 'tpu' is not a device name"),
        (
            "",
            ("--set", "model.init_from=runs/nosuch"),
            "model.init_from: checkpoint 'runs/nosuch' does not exist",
        ),
        (
            "",
            ("--set", "model.options.num_classes=3"),
            "model 'vgg_small' gives 3 outputs but data set 'digits' has 10 classes "
            "(labels 0-9); set model.options.num_classes: 10",
        ),
    ],
)
def test_a_bad_input_is_one_line_and_exit_2(cli, tiny_recipe, tmp_path, edit, args, needle):
    if edit:
        tiny_recipe.write_text(tiny_recipe.read_text() + edit)
    out = cli("train", str(tiny_recipe), *args, "--no-progress", "--no-report", code=2).output
    assert needle in one_line(out)
    assert not (tmp_path / "runs" / "tiny").exists()


def test_a_data_set_of_one_class_is_refused(cli, tmp_path):  # before training starts
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "one.npz", x=rng.normal(size=(20, 1, 16)).astype("float32"), y=np.zeros(20))
    (tmp_path / "one.yaml").write_text(
        "name: one\nepochs: 1\n"
        f"data: {{name: arrays, options: {{path: {tmp_path / 'one.npz'}, test_fraction: 0.25}}}}\n"
        "model: {name: fcn1d}\n"
    )
    out = cli("train", "one.yaml", "--no-progress", "--no-report", code=2).output
    assert "arrays: the labels hold 1 class (0.0); a classifier needs at least two" in (
        one_line(out)
    )


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (
            ["train", "--epochs", "0", "x.yaml"],
            "Invalid value for '--epochs': Input should be greater than or equal to 1 "
            "(see 'edgetrain train --help')",
        ),
        (["traon"], "No such command 'traon'. Did you mean 'train'? (see 'edgetrain --help')"),
        (["bench", "--runs", "0", "m.onnx"], "Invalid value for '--runs'"),
        (["export", "--nope"], "No such option: --nope"),
        (["models", "zzz*"], "no model matches 'zzz*'; models: ds_cnn,"),
        (["bench", "m.onnx", "--threads", "0"], "Invalid value for '--threads'"),
    ],
)
def test_a_bad_option_is_one_line_not_a_usage_box(monkeypatch, capsys, argv, needle):
    from edgetrain.cli import main

    monkeypatch.setattr("sys.argv", ["edgetrain", *argv])
    monkeypatch.setenv("COLUMNS", "80")  # the line is not wrapped at the terminal's width
    with pytest.raises(SystemExit) as exited:
        main()
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert needle in one_line(err)


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (
            ["train", "{recipe}", "--runs-dir", "blocker/runs", "--no-progress"],
            "run directory 'blocker/runs/tiny/checkpoints' cannot be created",
        ),
        (["bench", "m.onnx", "--json", "blocker/b.json"], "the folder of --json 'blocker'"),
        (["report", "runs/x", "--out", "blocker/r.html"], "the folder of --out 'blocker'"),
        (["cost", "calibrate", "--out", "blocker/p.yaml"], "the folder of --out 'blocker'"),
    ],
)
def test_an_output_that_cannot_be_written_is_refused_before_the_work(
    cli, tiny_recipe, tmp_path, argv, needle
):
    (tmp_path / "blocker").write_text("a file where a folder should be")
    argv = [a.replace("{recipe}", str(tiny_recipe)) for a in argv]
    out = cli(*argv, code=2).output
    assert needle in one_line(out) and "choose a writable location" in out


def test_a_run_directory_being_written_is_refused_naming_the_writer(cli, tiny_recipe, tmp_path):
    import json
    import os
    import socket

    (tmp_path / "runs").mkdir()
    mine = {"pid": os.getpid(), "host": socket.gethostname()}  # a live writer
    (tmp_path / "runs" / ".tiny.lock").write_text(json.dumps(mine))
    out = cli("train", str(tiny_recipe), "--no-progress", code=2).output
    assert f"run directory 'runs/tiny' is being written by process {os.getpid()}" in one_line(out)
    assert not (tmp_path / "runs" / "tiny").exists()


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["train", "nosuch.yaml"], "recipe 'nosuch.yaml' not found; pass a YAML path"),
        (["train", "{r}", "--set", "model.name=nosuchnet"], "unknown model 'nosuchnet'"),
        (["train", "{r}", "--set", "data.name=nosuch"], "unknown data set 'nosuch'"),
        (["train", "{r}", "--set", "optimizer.name=adamz"], "unknown optimizer 'adamz'"),
        (["train", "{r}", "--set", "scheduler.name=zzz"], "unknown scheduler 'zzz'"),
        (["train", "{r}", "--set", "epochs=0"], "epochs: Input should be greater than or equal"),
        (["train", "{r}", "--set", "data.batch_size=0"], "data.batch_size: Input should be"),
        (["train", "{r}", "--set", "nosuchkey=1"], "unknown key 'nosuchkey' in the top level"),
        (
            ["train", "{r}", "--set", "model.freeze=[nosuchlayer]"],
            "layer pattern 'nosuchlayer' matches no module",
        ),
        (["train", "--resume", "runs/none"], "'runs/none' is not a run directory"),
        (["cost", "nosuchnet"], "unknown model 'nosuchnet'; choose one of"),
        (["cost", "vgg_small", "--input", "3xx32"], "--input '3xx32' must look like 3x32x32"),
        (["cost", "vgg_small", "--trainable", "last:0"], "plan 'last:0': N must be 1..7"),
        (["data", "describe", "nosuch"], "unknown data set 'nosuch'; choose one of"),
        (["bench", "missing.onnx"], "model file 'missing.onnx' not found"),
        (["export", "runs/none"], "checkpoint 'runs/none' does not exist"),
        (["compress", "runs/none", "--recipe", "resnet20-l1"], "'runs/none' does not exist"),
        (["report", "runs/none"], "run directory 'runs/none' does not exist"),
        (["sweep", "run", "nosuch.yaml"], "sweep config 'nosuch.yaml' not found"),
        (
            ["diagnose", "patterns", "--config", "{r}", "--layer", "nosuch"],
            "'nosuch' is not an activation layer; valid layers: relu1",
        ),
        (["grow", "{r}", "--widen", "conv2=8x"], "--widen 'conv2=8x' is not LAYER=WIDTH"),
        (["finetune", "run", "--config", "{r}", "--schedule", "44_q"], "schedule '44_q'"),
        (
            ["finetune", "run", "--config", "{r}", "--schedule", "4421", "--mode", "zz"],
            "unknown mode 'zz'; choose one of: conventional, bpls",
        ),
        (
            ["finetune", "grid", "--config", "{r}", "--upper", "0.01", "--lower", "0.1"],
            "the LR bounds need 0 < lower <= upper (got 0.1, 0.01)",
        ),
        (["train", "{r}", "--precision", "8"], "precision: Input should be '32', '16-mixed'"),
        (["train", "{r}", "--set", "data.shift=zz"], "unknown domain shift 'zz'"),
        (["train", "{r}", "--set", "data.augment=[zz]"], "unknown augmentation 'zz'"),
        (["train", "{r}", "--set", "lr_world_scaling=cube"], "lr_world_scaling: Input should"),
        (["demo", "--size", "huge"], "unknown --size 'huge'; choose one of: quick, default"),
        (["cost", "vgg_small", "--format", "xml"], "unknown --format 'xml'"),
        (["cost", "vgg_small", "--profile", "zz"], "unknown profile 'zz'; use a built-in"),
        (["data", "prepare", "nosuch"], "unknown data set 'nosuch'"),
        (["bench", "m.onnx", "--runtime", "zz"], "unknown runtime 'zz'; choose one of"),
        (["export", "runs/x", "--checkpoint", "middle"], "--checkpoint 'middle' must be best"),
        (
            ["schedule", "suggest", "--model", "vgg_small", "--max-ops-per-step", "-5"],
            "--max-ops-per-step -5 must be a positive budget",
        ),
        (
            ["diagnose", "lr-sensitivity", "--config", "{r}", "--rates", "1"],
            "need at least 2 rates and 0 < low < high",
        ),
    ],
)
def test_known_bad_inputs_stay_one_line(cli, tiny_recipe, tmp_path, argv, needle):
    argv = [a.replace("{r}", str(tiny_recipe)) for a in argv]
    out = cli(*argv, code=2).output
    assert needle in one_line(out)
    assert not (tmp_path / "runs" / "tiny").exists()
