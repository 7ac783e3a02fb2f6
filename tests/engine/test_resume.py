"""An interrupted and resumed run ends exactly where an uninterrupted run ends.

Shuffling, augmentation, dropout, batch-norm statistics, momentum and the LR schedule
must all continue as if nothing had happened: weights bit for bit, metrics value for value.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from edgetrain.data import build_augmentation
from edgetrain.engine import Callback, Trainer, build_scheduler
from edgetrain.runs import load_config, resume_run, start_run
from edgetrain.runs import train as run_module

pytestmark = pytest.mark.usefixtures("single_thread")

EPOCHS = 4


class InterruptAt(Callback):
    """Raise KeyboardInterrupt (Ctrl-C) at the start of epoch ``k`` (0-based)."""

    def __init__(self, k: int) -> None:
        self.k = k

    def on_epoch_start(self, trainer, model):
        if trainer.state.epoch == self.k:
            raise KeyboardInterrupt


def _without_times(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if not k.endswith("_time")} for r in history]


def _assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def _momentum(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {str(i): s["momentum_buffer"] for i, s in enumerate(trainer.optimizer.state.values())}


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture
def make_trainer(make_blobs, make_tiny_net):
    """A Trainer with every source of state a resume can lose: shuffling, flip+crop,
    dropout, batch-norm, momentum with weight decay and a scheduler."""

    def build(run_dir: Path, scheduler: str = "onecycle", callbacks=(), **kw: Any) -> Trainer:
        augment = build_augmentation(["flip", {"name": "crop", "padding": 2}])
        options = {"step": {"step_size": 2, "gamma": 0.5}, "plateau": {"patience": 0}}
        return Trainer(
            make_tiny_net(dropout=0.3),
            make_blobs(40, transform=augment),
            val_data=make_blobs(24, seed=1),
            optimizer=lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=1e-4),
            scheduler=lambda opt: build_scheduler(
                opt, scheduler, EPOCHS, 5, **options.get(scheduler, {})
            ),
            batch_size=8,
            device="cpu",
            progress=False,
            seed=7,
            run_dir=run_dir,
            callbacks=callbacks,
            **kw,
        )

    return build


@pytest.fixture
def reference(make_trainer, tmp_path: Path) -> Callable[[str], Trainer]:
    """``reference(scheduler)``: the uninterrupted run of ``EPOCHS`` epochs."""

    def run(scheduler: str) -> Trainer:
        trainer = make_trainer(tmp_path / f"reference-{scheduler}", scheduler)
        trainer.fit(EPOCHS)
        return trainer

    return run


@pytest.mark.parametrize(("k", "scheduler"), [(1, "onecycle"), (3, "onecycle"), (2, "plateau")])
def test_ctrl_c_then_resume_matches_an_uninterrupted_run(
    make_trainer, reference, tmp_path: Path, k: int, scheduler: str
) -> None:
    run = tmp_path / "interrupted"
    first = make_trainer(run, scheduler, callbacks=[InterruptAt(k)])
    with pytest.raises(KeyboardInterrupt):
        first.fit(EPOCHS)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["epochs_finished"] == k
    assert "KeyboardInterrupt" in summary["error"]
    assert len(_lines(run / "metrics.jsonl")) == k

    resumed = make_trainer(run, scheduler)
    resumed.load_checkpoint(run / "checkpoints" / "last.pt")
    assert resumed.state.epoch == k
    resumed.fit(EPOCHS)

    full = reference(scheduler)
    _assert_same_weights(full.model.state_dict(), resumed.model.state_dict())
    _assert_same_weights(_momentum(full), _momentum(resumed))
    assert _without_times(resumed.state.history) == _without_times(full.state.history)
    assert resumed.state.global_step == full.state.global_step == EPOCHS * 5
    logged = _lines(run / "metrics.jsonl")
    assert [r["epoch"] for r in logged] == list(range(1, EPOCHS + 1))
    assert _without_times(logged) == _without_times(full.state.history)
    assert json.loads((run / "summary.json").read_text())["status"] == "completed"


def test_fit_k_then_a_new_trainer_continues_to_n(make_trainer, reference, tmp_path: Path) -> None:
    run = tmp_path / "split"
    make_trainer(run, "step").fit(2)
    assert json.loads((run / "summary.json").read_text())["status"] == "completed"
    resumed = make_trainer(run, "step")
    resumed.load_checkpoint(run / "checkpoints" / "last.pt")
    resumed.fit(EPOCHS)
    full = reference("step")
    _assert_same_weights(full.model.state_dict(), resumed.model.state_dict())
    assert _without_times(resumed.state.history) == _without_times(full.state.history)
    assert [r["lr"] for r in resumed.state.history] == pytest.approx([0.05, 0.05, 0.025, 0.025])
    assert len(_lines(run / "metrics.jsonl")) == EPOCHS


def test_epochs_after_the_last_checkpoint_are_rerun_and_logged_once(
    make_trainer, reference, tmp_path: Path
) -> None:
    run = tmp_path / "sparse"
    first = make_trainer(run, checkpoint_every=2, callbacks=[InterruptAt(3)])
    with pytest.raises(KeyboardInterrupt):
        first.fit(EPOCHS)
    assert len(_lines(run / "metrics.jsonl")) == 3  # epoch 3 was logged, not checkpointed

    resumed = make_trainer(run, checkpoint_every=2)
    resumed.load_checkpoint(run / "checkpoints" / "last.pt")
    assert resumed.state.epoch == 2
    resumed.fit(EPOCHS)
    logged = _lines(run / "metrics.jsonl")
    assert [r["epoch"] for r in logged] == [1, 2, 3, 4]
    full = reference("onecycle")
    assert _without_times(logged) == _without_times(full.state.history)
    _assert_same_weights(full.model.state_dict(), resumed.model.state_dict())


# ------------------------------------------------------- through start_run / resume_run
def _digits_config(name: str, epochs: int = 3) -> Any:
    return load_config(
        {
            "name": name,
            "epochs": epochs,
            "seed": 3,
            "data": {
                "name": "digits",
                "options": {"test_fraction": 0.8},
                "augment": ["flip", {"name": "crop", "padding": 1}],
                "batch_size": 64,
                "eval_batch_size": 512,
            },
            "model": {"name": "vgg_small", "options": {"input_size": 8}},
            "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 1e-4},
            "scheduler": {"name": "cosine"},
            "device": "cpu",
        }
    )


def test_start_run_interrupted_then_resume_run_matches_an_uninterrupted_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs = tmp_path / "runs"
    full = start_run(_digits_config("full"), runs, progress=False)
    assert full.summary["status"] == "completed"

    build_trainer = run_module.build_trainer

    def interrupting_build_trainer(*args: Any, **kw: Any) -> Trainer:
        trainer = build_trainer(*args, **kw)
        trainer.callbacks.insert(0, InterruptAt(1))
        return trainer

    monkeypatch.setattr(run_module, "build_trainer", interrupting_build_trainer)
    with pytest.raises(KeyboardInterrupt):
        start_run(_digits_config("cut"), runs, progress=False)
    monkeypatch.undo()

    cut = runs / "cut"
    summary = json.loads((cut / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["epochs_finished"] == 1
    assert len(_lines(cut / "metrics.jsonl")) == 1
    assert (cut / "config.yaml").is_file()

    result = resume_run(cut, progress=False)
    assert result.summary["status"] == "completed"
    assert result.summary["epochs_finished"] == 3
    logged, reference = _lines(cut / "metrics.jsonl"), _lines(runs / "full" / "metrics.jsonl")
    assert [r["epoch"] for r in logged] == [1, 2, 3]
    assert _without_times(logged) == _without_times(reference)
    assert logged[-1]["val_samples"] == 1438  # 80% of the 1,797 digits
    _assert_same_weights(
        torch.load(runs / "full" / "checkpoints" / "last.pt", weights_only=True)["model"],
        torch.load(cut / "checkpoints" / "last.pt", weights_only=True)["model"],
    )


def test_resume_run_can_extend_a_finished_run(tmp_path: Path) -> None:
    tree = _digits_config("short", epochs=1).to_dict()
    tree["scheduler"] = {"name": "step", "step_size": 1, "gamma": 0.5}
    start_run(load_config(tree), tmp_path, progress=False)
    result = resume_run(tmp_path / "short", epochs=2, progress=False)
    assert result.summary["status"] == "completed" and result.summary["epochs_finished"] == 2
    assert [r["epoch"] for r in _lines(tmp_path / "short" / "metrics.jsonl")] == [1, 2]
    assert load_config(tmp_path / "short" / "config.yaml").epochs == 2


def test_extending_a_onecycle_run_continues_or_is_refused_in_one_line(tmp_path: Path) -> None:
    from edgetrain.errors import EdgetrainError

    tree = _digits_config("onecycle", epochs=2).to_dict()
    tree["scheduler"] = {"name": "onecycle"}
    start_run(load_config(tree), tmp_path, progress=False)
    with pytest.raises(EdgetrainError, match="planned for 2 epochs") as error:
        resume_run(tmp_path / "onecycle", epochs=3, progress=False)
    assert "\n" not in str(error.value)
    # resuming to the planned length is fine
    assert resume_run(tmp_path / "onecycle", progress=False).summary["status"] == "completed"


def test_start_run_refuses_to_overwrite_an_existing_run(tmp_path: Path) -> None:
    from edgetrain.errors import EdgetrainError

    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "metrics.jsonl").write_text("{}\n")
    with pytest.raises(EdgetrainError, match="--resume") as info:
        start_run(_digits_config("taken"), tmp_path, progress=False)
    assert "\n" not in str(info.value)
    assert (tmp_path / "taken" / "metrics.jsonl").read_text() == "{}\n"


def test_load_trained_model_rebuilds_from_the_run_directory_alone(tmp_path: Path) -> None:
    from edgetrain.engine.checkpoint import load_checkpoint
    from edgetrain.runs import load_trained_model

    start_run(_digits_config("reload", epochs=1), tmp_path, progress=False)
    model = load_trained_model(tmp_path / "reload")
    saved = load_checkpoint(tmp_path / "reload" / "checkpoints" / "best.pt")["model"]
    assert not model.training
    for key, value in model.state_dict().items():
        assert torch.equal(value, saved[key])
    assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 10)
