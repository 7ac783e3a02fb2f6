"""Mixed precision: autocast with FP32 master weights, the one-time 'no speed-up' warning,
validation of the setting, checkpoints, and ``edgetrain train --precision``."""

from __future__ import annotations

import warnings
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from edgetrain import models
from edgetrain._yaml import safe_load
from edgetrain.cli import app
from edgetrain.engine import Trainer
from edgetrain.engine import precision as precision_module
from edgetrain.engine.precision import Precision, speedup_note
from edgetrain.errors import ConfigError
from edgetrain.runs import load_config

pytestmark = pytest.mark.usefixtures("single_thread")

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def _fresh_warnings(monkeypatch):
    """Each test starts as if no precision warning had been given in this process."""
    monkeypatch.setattr(precision_module, "_warned", set())


def _cpu_capability(monkeypatch, value: str) -> None:
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: value)


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    return models.create("vgg_small", in_channels=1, num_classes=4, input_size=8)


def _trainer(data: Any, precision: str, **kw: Any) -> Trainer:
    return Trainer(
        _net(),
        data,
        batch_size=8,
        device="cpu",
        progress=False,
        precision=precision,
        optimizer=lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9),
        **kw,
    )


def _speed_warnings(record: list[warnings.WarningMessage]) -> list[warnings.WarningMessage]:
    return [
        w
        for w in record
        if issubclass(w.category, RuntimeWarning) and "no speed-up" in str(w.message)
    ]


# ------------------------------------------------------------------ speed-up note
def test_speedup_note_on_cpu(monkeypatch):
    _cpu_capability(monkeypatch, "AVX2")
    assert "no AMX" in speedup_note("bf16-mixed", CPU)
    assert "AVX2" in speedup_note("16-mixed", CPU)
    assert speedup_note("32", CPU) is None
    _cpu_capability(monkeypatch, "AMX")
    assert speedup_note("bf16-mixed", CPU) is None
    assert speedup_note("16-mixed", CPU) is not None  # float16 on CPU never is faster


def test_unknown_devices_get_a_note():
    assert "meta" in speedup_note("bf16-mixed", torch.device("meta"))


# ------------------------------------------------------------------ training
@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
def test_mixed_precision_trains_with_fp32_master_weights(make_blobs, monkeypatch, precision):
    monkeypatch.setattr(precision_module, "speedup_note", lambda *_: None)
    trainer = _trainer(make_blobs(32), precision)
    assert trainer.precision.enabled and trainer.precision.scaler is None  # no scaling on CPU
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    record = trainer.fit(1).history[0]
    assert torch.isfinite(torch.tensor(record["train_loss"]))
    for name, p in trainer.model.named_parameters():
        assert p.dtype == torch.float32, name
    for state in trainer.optimizer.state.values():
        assert state["momentum_buffer"].dtype == torch.float32
    assert any(not torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())


def test_the_forward_runs_in_the_autocast_type(make_blobs, monkeypatch):
    monkeypatch.setattr(precision_module, "speedup_note", lambda *_: None)
    seen: list[torch.dtype] = []
    trainer = _trainer(make_blobs(8), "bf16-mixed")
    trainer.model.conv1.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
    trainer.fit(1)
    assert seen and all(d == torch.bfloat16 for d in seen)


def test_mixed_precision_stays_close_to_fp32(make_blobs, monkeypatch):
    monkeypatch.setattr(precision_module, "speedup_note", lambda *_: None)
    fp32 = _trainer(make_blobs(32), "32").fit(1).history[0]["train_loss"]
    bf16 = _trainer(make_blobs(32), "bf16-mixed").fit(1).history[0]["train_loss"]
    assert bf16 == pytest.approx(fp32, rel=0.05)


def test_no_speedup_warns_once_per_precision_and_device(make_blobs, monkeypatch):
    _cpu_capability(monkeypatch, "AVX2")
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        trainer = _trainer(make_blobs(8), "bf16-mixed")
        _trainer(make_blobs(8), "bf16-mixed")  # the second Trainer does not warn again
        trainer.fit(1)
    found = _speed_warnings(record)
    assert len(found) == 1, [str(w.message) for w in found]
    message = str(found[0].message)
    assert "--precision bf16-mixed" in message and "no AMX" in message
    assert "\n" not in message
    assert found[0].filename == __file__  # points at the code that chose the precision

    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        _trainer(make_blobs(8), "16-mixed")  # another precision warns on its own
    assert len(_speed_warnings(record)) == 1


def test_a_device_with_a_fast_path_does_not_warn(make_blobs, monkeypatch):
    _cpu_capability(monkeypatch, "AMX")
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        _trainer(make_blobs(8), "bf16-mixed")
    assert _speed_warnings(record) == []


def test_fp32_never_warns(make_blobs, monkeypatch):
    _cpu_capability(monkeypatch, "NO AVX")  # no fast path for any mixed precision
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        _trainer(make_blobs(8), "32").fit(1)
        Precision("32", CPU)
    assert [w for w in record if issubclass(w.category, RuntimeWarning)] == []
    assert not Precision("32", CPU).enabled


def test_an_invalid_precision_is_a_config_error(make_blobs):
    with pytest.raises(ConfigError, match="unknown precision 'fp8'; choose one of: 32, 16-mixed"):
        _trainer(make_blobs(8), "fp8")
    with pytest.raises(ConfigError, match="unknown precision"):
        Precision("16", CPU)


def test_run_config_rejects_an_unknown_precision_in_one_line():
    tree = {
        "name": "t",
        "epochs": 1,
        "precision": "fp8",
        "data": {"name": "digits"},
        "model": {"name": "vgg_small"},
    }
    with pytest.raises(ConfigError) as info:
        load_config(tree)
    message = str(info.value)
    assert "\n" not in message
    assert (
        message.startswith("run config: precision:")
        and "'fp8'" in message
        and "bf16-mixed" in message
    )
    tree["precision"] = "bf16-mixed"
    assert load_config(tree).precision == "bf16-mixed"
    del tree["precision"]
    assert load_config(tree).precision == "32"
    tree["precision"] = 32  # an unquoted YAML number, or "--precision 32"
    assert load_config(tree).precision == "32"
    tree["precision"] = 16
    with pytest.raises(ConfigError, match="'16'"):
        load_config(tree)


def test_the_checkpoint_and_config_record_the_precision(make_blobs, monkeypatch, tmp_path):
    monkeypatch.setattr(precision_module, "speedup_note", lambda *_: None)
    trainer = _trainer(make_blobs(16), "bf16-mixed", run_dir=tmp_path / "run")
    trainer.fit(1)
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    assert "precision" in ckpt and ckpt["precision"] == {}  # no scaler state on CPU
    config = safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert config["precision"] == "bf16-mixed"
    # the checkpoint loads back into a mixed-precision trainer and training goes on
    resumed = _trainer(make_blobs(16), "bf16-mixed", run_dir=tmp_path / "run")
    resumed.load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert resumed.fit(2).epoch == 2


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_float16_on_cuda_scales_the_loss_and_checkpoints_the_scaler(make_blobs, tmp_path):
    trainer = Trainer(
        _net(),
        make_blobs(32),
        batch_size=8,
        device="cuda",
        progress=False,
        precision="16-mixed",
        run_dir=tmp_path / "run",
    )
    assert trainer.precision.scaler is not None
    record = trainer.fit(1).history[0]
    assert torch.isfinite(torch.tensor(record["train_loss"]))
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["precision"].get("scale", 0) > 0


# ------------------------------------------------------------------ command line
TINY_RECIPE = """
name: tiny
epochs: 2
data:
  name: digits
  options: {test_fraction: 0.8}
  batch_size: 32
model:
  name: vgg_small
  options: {input_size: 8}
optimizer: {name: sgd, lr: 0.02, momentum: 0.9}
"""


def test_edgetrain_train_with_precision(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "200")
    _cpu_capability(monkeypatch, "AVX2")
    (tmp_path / "tiny.yaml").write_text(TINY_RECIPE)
    runner = CliRunner()
    args = ["train", "tiny.yaml", "--epochs", "1", "--no-progress", "--no-report"]
    with pytest.warns(RuntimeWarning, match="no speed-up"):
        result = runner.invoke(app, [*args, "--precision", "bf16-mixed", "--device", "cpu"])
    assert result.exit_code == 0, (result.output, result.exception)
    config = safe_load((tmp_path / "runs" / "tiny" / "config.yaml").read_text())
    assert config["precision"] == "bf16-mixed" and config["epochs"] == 1
    ckpt = torch.load(tmp_path / "runs" / "tiny" / "checkpoints" / "last.pt", weights_only=True)
    assert "precision" in ckpt

    # a resumed run keeps its precision; --precision with --resume is refused
    result = runner.invoke(
        app, ["train", "--resume", "runs/tiny", "--precision", "32", "--no-progress"]
    )
    assert result.exit_code == 2 and "drop --precision" in result.output
    result = runner.invoke(
        app, ["train", "--resume", "runs/tiny", "--epochs", "2", "--no-progress", "--no-report"]
    )
    assert result.exit_code == 0, (result.output, result.exception)
    config = safe_load((tmp_path / "runs" / "tiny" / "config.yaml").read_text())
    assert config["precision"] == "bf16-mixed" and config["epochs"] == 2

    result = runner.invoke(app, [*args, "--precision", "fp8", "--name", "bad"])
    assert result.exit_code == 2
    lines = [ln for ln in result.output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "precision" in lines[0] and "fp8" in lines[0], result.output
    assert not (tmp_path / "runs" / "bad").exists()
