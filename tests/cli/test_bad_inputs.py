"""Bad inputs to every command, one row each: exit 2 and one line naming the input
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
        (["train", "{r}", "--set", "optimizer.momentum=2"], "momentum 2.0 must be in [0, 1)"),
        (["train", "{r}", "--set", "optimizer.lr=-1"], "optimizer 'sgd': Invalid learning"),
        (["train", "{r}", "--set", "optimizer.weight_decay=.nan"], "nan is not a finite"),
        (["train", "{r}", "--set", "epochs=1.5"], "epochs: Input should be a valid integer"),
        (["train", "{r}", "--set", "noequals"], "override 'noequals' must look like key.sub="),
        (["train", "{r}", "--name", "../x"], "name: String should match pattern"),
        (["train", "{r}", "--set", "model.options.nosuch=3"], "has no option 'nosuch'"),
        (["train", "{r}", "--set", "data.options.nosuch=3"], "data set 'digits' has no option"),
        (["train", "{r}", "--set", "data.val_fraction=2"], "unknown key 'val_fraction' in data"),
        (["train", "{r}", "--set", "data.options.size=0"], "size must be a whole number of"),
        (["train", "{r}", "--set", "data.options.test_fraction=1.5"], "test_fraction must be in"),
        (["train", "{r}", "--set", "data.name=ucr:NoSuch"], "unknown UCR data set 'NoSuch'"),
        (["train", "{r}", "--set", "data.name=speech-commands"], "needs root=<folder>"),
        (["train", "{r}", "--set", "data.eval_split=zz"], "unknown split 'zz'; choose one of"),
        (["train", "{r}", "--set", "deterministic=maybe"], "Input should be a valid boolean"),
        (["train", "{r}", "--set", "model.name=nosuch.py:fn"], "file '"),
        (["train", "{r}", "--set", "model.name=edgetrain.nosuch:fn"], "module 'edgetrain.nosuch'"),
        (["schedule", "show", "44x2", "--model", "vgg_small"], "updated 33 times ('x')"),
        (["finetune", "sweep-depth", "--config", "{r}", "--depths", "a,b"], "comma-separated"),
        (["finetune", "sweep-depth", "--config", "{r}", "--depths", "0"], "out of range"),
        (["cost", "vgg_small", "--input", "0x8x8"], "(positive integers)"),
        (["cost", "vgg_small", "--trainable", "nosuch"], "layer pattern 'nosuch' matches no"),
        (["cost", "vgg_small", "--optimizer", "zz"], "unknown optimizer 'zz'; choose one of"),
        (["grow", "{r}", "--widen", "nosuch=8"], "widen: the model has no layer 'nosuch'"),
        (["grow", "{r}", "--deepen", "nosuch"], "deepen: the model has no layer 'nosuch'"),
        (["grow", "{r}", "--widen", "conv1=8"], "it already has 16 channels; give a width"),
        (["prune-train", "{r}", "--ratio", "2"], "PruneTrain ratio must be in (0, 1), got 2.0"),
        (["diagnose", "patterns", "--config", "{r}", "--mode", "zz"], "--mode 'zz' is not one"),
        (["data", "describe", "digits", "--option", "size=zz"], "option 'size': Input should"),
        (["bench", "m.onnx", "--runtime", "command"], "the command runtime needs an argument"),
    ],
)
def test_known_bad_inputs_stay_one_line(cli, tiny_recipe, tmp_path, argv, needle):
    argv = [a.replace("{r}", str(tiny_recipe)) for a in argv]
    out = cli(*argv, code=2).output
    assert needle in one_line(out)
    assert not (tmp_path / "runs" / "tiny").exists()


class _Evil:
    """Unpickling this runs ``touch pwned``: a loader must refuse it, never run it."""

    def __reduce__(self):
        import os

        return (os.system, ("touch pwned",))


@pytest.fixture
def bad_files(tmp_path):
    """Files a user may pass by mistake (or an attacker on purpose), in ``tmp_path``."""
    import pickle

    import torch

    (tmp_path / "broken.yaml").write_text("name: tiny\nepochs: [1\n")
    (tmp_path / "tag.yaml").write_text('!!python/object/apply:os.system ["touch pwned"]\n')
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    (tmp_path / "empty.yaml").write_text("")
    (tmp_path / "binary.yaml").write_bytes(bytes(range(255, 0, -1)))
    (tmp_path / "evil.pt").write_bytes(pickle.dumps({"model": _Evil()}))
    torch.save({"model": _Evil()}, tmp_path / "evil-zip.pt")
    (tmp_path / "garbage.pt").write_bytes(bytes(range(7, 250)) * 3)
    torch.save({"model": {"w": torch.zeros(2)}}, tmp_path / "plain.pt")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "nolabels.npz", x=rng.normal(size=(10, 1, 8)).astype("float32"))
    np.savez(tmp_path / "mismatch.npz", x=np.zeros((10, 1, 8), "float32"), y=np.zeros(7))
    (tmp_path / "d.csv").write_text("a,b\n1,2\n3,4\n")
    (tmp_path / "notrun").mkdir()
    sweep = "name: s\nmetric: latency_ms\nrecipe: vgg-small-l1\nmodel: runs/m\n"
    (tmp_path / "sweep-method.yaml").write_text(sweep + "method: zz\nparameters: {}\n")
    (tmp_path / "sweep-metric.yaml").write_text(
        sweep.replace("latency_ms", "speed") + "parameters: {}\n"
    )
    (tmp_path / "sweep-param.yaml").write_text(sweep + "parameters: {s1.nosuch: {values: [0.1]}}\n")
    (tmp_path / "sweep-dup.yaml").write_text(sweep + "name: t\n")
    prune = "version: 1\npruners: {p: {method: %s, sparsity: %s, layers: [conv1]}}\n"
    (tmp_path / "c-method.yaml").write_text(prune % ("nosuch", 0.5))
    (tmp_path / "c-sparsity.yaml").write_text(prune % ("l1_filter", 1.5))
    (tmp_path / "c-version.yaml").write_text("version: 7\n")
    (tmp_path / "c-dup.yaml").write_text("version: 1\nversion: 1\n")
    (tmp_path / "p-dup.yaml").write_text("name: p\nname: q\n")
    (tmp_path / "p-key.yaml").write_text("name: p\nmac_pj: 3\n")
    return tmp_path


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        # recipes that are no recipe
        (["train", "broken.yaml"], "recipe 'broken.yaml': invalid YAML at line 3, column 1"),
        (["train", "tag.yaml"], "could not determine a constructor for the tag"),
        (["train", "list.yaml"], "recipe 'list.yaml': must be a YAML mapping of keys"),
        (["train", "empty.yaml"], "recipe 'empty.yaml': must be a YAML mapping"),
        (["train", "binary.yaml"], "recipe 'binary.yaml' is not UTF-8 text (byte 0xff at"),
        (["compress", "runs/x", "--recipe", "binary.yaml"], "is not UTF-8 text"),
        (["sweep", "run", "binary.yaml"], "sweep config 'binary.yaml' is not UTF-8 text"),
        (["cost", "vgg_small", "--profile", "binary.yaml"], "profile 'binary.yaml' is not"),
        # checkpoints: a pickle that would run code is refused, never run; random bytes
        # are corrupted; weights of another net are named
        (["export", "evil.pt"], "'evil.pt' refused: it contains objects that are not plain"),
        (["export", "evil-zip.pt"], "refused: it contains objects that are not plain tensors"),
        (["compress", "evil.pt", "--recipe", "vgg-small-l1"], "(posix.system)"),
        (["grow", "{r}", "--from", "evil.pt", "--widen", "conv1=32"], "'evil.pt' refused"),
        (["train", "{r}", "--set", "model.init_from=evil.pt"], "'evil.pt' refused"),
        (
            ["diagnose", "patterns", "--config", "{r}", "--final-counts", "evil.pt"],
            "'evil.pt' refused",
        ),
        (["export", "garbage.pt"], "checkpoint 'garbage.pt' is corrupted or truncated"),
        (["train", "{r}", "--set", "model.init_from=garbage.pt"], "is corrupted or truncated"),
        (
            ["diagnose", "patterns", "--config", "{r}", "--final-counts", "garbage.pt"],
            "checkpoint 'garbage.pt' is corrupted or truncated",
        ),
        (
            ["diagnose", "patterns", "--config", "{r}", "--final-counts", "plain.pt"],
            "'plain.pt' holds no pattern counts; pass the patterns_final.pt",
        ),
        (
            ["train", "{r}", "--set", "model.init_from=plain.pt"],
            "checkpoint 'plain.pt' was saved for another architecture (missing 'conv1.bias'",
        ),
        (["train", "--resume", "garbage.pt"], "'garbage.pt' is not a run directory"),
        (["report", "notrun"], "'notrun' is not a run directory (no config.yaml)"),
        (["export", "notrun"], "no checkpoint in 'notrun' (looked for checkpoints/best.pt"),
        (["compress", "notrun", "--recipe", "vgg-small-l1"], "no checkpoint in 'notrun'"),
        (["bench", "garbage.pt"], "checkpoint 'garbage.pt' is corrupted or truncated"),
        (["bench", "garbage.pt", "--runtime", "onnxruntime"], "is corrupted or truncated"),
        # user data
        (
            [
                "train",
                "{r}",
                "--set",
                "data.name=arrays",
                "--set",
                "data.options.path=nolabels.npz",
            ],
            "has no 'y' array (it holds x); save it with np.savez(path, x=..., y=...)",
        ),
        (
            [
                "train",
                "{r}",
                "--set",
                "data.name=arrays",
                "--set",
                "data.options.path=mismatch.npz",
            ],
            "has 10 inputs but 7 labels",
        ),
        (
            ["train", "{r}", "--set", "data.name=arrays", "--set", "data.options.path=no.npz"],
            "arrays: path file",
        ),
        (
            ["train", "{r}", "--set", "data.name=csv", "--set", "data.options.path=d.csv"],
            "has no label column 'label' (columns: a, b); pass label=<column>",
        ),
        # sweeps, compression recipes, profiles
        (["sweep", "run", "sweep-method.yaml"], "unknown search method 'zz'; choose one of"),
        (["sweep", "run", "sweep-metric.yaml"], "unknown metric 'speed'; choose one of: top1"),
        (["sweep", "run", "sweep-param.yaml"], "parameter 's1.nosuch' names neither a pruner"),
        (["sweep", "run", "sweep-dup.yaml"], "key 'name' is given twice; keep one"),
        (["sweep", "run", "{r}"], "sweep config '{r}': missing required key 'metric'"),
        (["sweep", "report", "notrun"], "no sweep 'notrun' under"),
        (["compress", "runs/x", "--recipe", "c-method.yaml"], "unknown pruning method 'nosuch'"),
        (["compress", "runs/x", "--recipe", "c-sparsity.yaml"], "sparsity: must be in [0, 1)"),
        (["compress", "runs/x", "--recipe", "c-version.yaml"], "write 'version: 1'"),
        (["compress", "runs/x", "--recipe", "c-dup.yaml"], "key 'version' is given twice"),
        (["cost", "vgg_small", "--profile", "p-dup.yaml"], "key 'name' is given twice"),
        (["cost", "vgg_small", "--profile", "p-key.yaml"], "unknown key 'mac_pj' in the top"),
    ],
)
def test_bad_files_stay_one_line(cli, tiny_recipe, bad_files, argv, needle):
    argv = [a.replace("{r}", str(tiny_recipe)) for a in argv]
    out = cli(*argv, code=2).output
    assert needle.replace("{r}", str(tiny_recipe)) in one_line(out)
    assert not (bad_files / "pwned").exists()
    assert not (bad_files / "runs" / "tiny").exists()
