"""``kill -9`` at any point of a run, then ``--resume``: the same final weights (bit for
bit) and the same per-epoch metrics as a run that was never interrupted.

The run is a real ``edgetrain train`` process, every one with one torch thread (the
reference too: another thread count sums in another order). Chosen points are reached by a wrapper
that kills its own process there: after the temporary checkpoint file is written but
before it is renamed, after the rename but before the epoch's metrics line, and inside
evaluation. The rest are random moments while the process trains.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

RECIPE = """
name: tiny
epochs: 6
seed: 3
data:
  name: digits
  batch_size: 32
model:
  name: vgg_small
  options: {input_size: 8}
optimizer: {name: sgd, lr: 0.02, momentum: 0.9}
"""

# Run in the child: kill this very process at the n-th time a point is reached.
KILLER = r"""
import os, signal, sys

point, nth = os.environ["KILL_AT"].split(":")
seen = [0]

def reached():
    seen[0] += 1
    if seen[0] == int(nth):
        os.kill(os.getpid(), signal.SIGKILL)

if point in ("before-rename", "after-rename"):
    replace = os.replace

    def patched(src, dst, *args, **kwargs):
        last = str(dst).endswith("last.pt")
        if last and point == "before-rename":
            reached()
        replace(src, dst, *args, **kwargs)
        if last and point == "after-rename":
            reached()

    os.replace = patched
elif point == "evaluation":
    import edgetrain.engine.trainer as trainer

    evaluate = trainer.evaluate

    def patched(*args, **kwargs):
        result = evaluate(*args, **kwargs)
        reached()
        return result

    trainer.evaluate = patched

from edgetrain.cli import main

sys.argv = ["edgetrain", *sys.argv[1:]]
main()
"""

# Differ between two runs of the same seed by nature.
TIMES = {"epoch_time", "eval_time"}


def _train(folder: Path, *args: str, kill_at: str | None = None) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if kill_at is not None:
        env["KILL_AT"] = kill_at
        cmd = [sys.executable, str(folder / "killer.py"), "train", *args]
    else:
        cmd = [sys.executable, "-m", "edgetrain.cli", "train", *args]
    return subprocess.Popen(
        [*cmd, "--no-progress", "--no-report"],
        cwd=folder,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _killed(proc: subprocess.Popen) -> None:
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL, err.decode(errors="replace")[-2000:]


def _kill_at_random(folder: Path, rng: random.Random, first: bool) -> bool:
    """Start (or resume) the run and kill it at a random moment of its training.
    Returns whether the kill came before the run finished."""
    proc = _train(folder, "run.yaml" if first else "--resume", *(() if first else ("runs/tiny",)))
    lock = folder / "runs" / ".tiny.lock"
    deadline = time.monotonic() + 120
    while not lock.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(rng.uniform(0.0, 1.0))
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=120)
    return proc.returncode == -signal.SIGKILL


def _resume_to_the_end(folder: Path) -> None:
    proc = _train(folder, "--resume", "runs/tiny")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err.decode(errors="replace")[-2000:]


def _final(folder: Path) -> tuple[dict[str, torch.Tensor], list[dict], dict]:
    run = folder / "runs" / "tiny"
    weights = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["model"]
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    epochs = [{k: v for k, v in r.items() if k not in TIMES} for r in lines if "epoch" in r]
    summary = json.loads((run / "summary.json").read_text())
    return weights, epochs, summary


def _reference(tmp_path: Path) -> tuple[dict[str, torch.Tensor], list[dict], dict]:
    folder = tmp_path / "reference"
    folder.mkdir()
    (folder / "run.yaml").write_text(RECIPE)
    proc = _train(folder, "run.yaml")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err.decode(errors="replace")[-2000:]
    return _final(folder)


def _same_as(reference, folder: Path) -> None:
    weights, epochs, summary = _final(folder)
    ref_weights, ref_epochs, _ = reference
    assert weights.keys() == ref_weights.keys()
    for name, tensor in ref_weights.items():
        assert torch.equal(weights[name], tensor), f"{name} differs after the kills"
    assert [r["epoch"] for r in epochs] == list(range(1, 7))  # each epoch once, in order
    assert epochs == ref_epochs
    assert summary["status"] == "completed"
    assert not list((folder / "runs" / "tiny" / "checkpoints").glob(".*.tmp"))
    assert not (folder / "runs" / ".tiny.lock").exists()


def _folder(tmp_path: Path, name: str) -> Path:
    folder = tmp_path / name
    folder.mkdir()
    (folder / "run.yaml").write_text(RECIPE)
    (folder / "killer.py").write_text(KILLER)
    return folder


def test_kills_at_chosen_and_random_points_resume_to_the_same_weights_and_metrics(tmp_path):
    reference = _reference(tmp_path)
    folder = _folder(tmp_path, "killed")
    # epoch 2's checkpoint written but not renamed; epoch 3's renamed but its metrics
    # line not written; epoch 5 killed in evaluation (then a random moment)
    _killed(_train(folder, "run.yaml", kill_at="before-rename:2"))
    assert len(list((folder / "runs" / "tiny" / "checkpoints").glob(".*.tmp"))) == 1
    _killed(_train(folder, "--resume", "runs/tiny", kill_at="after-rename:2"))
    _killed(_train(folder, "--resume", "runs/tiny", kill_at="evaluation:2"))
    summary = json.loads((folder / "runs" / "tiny" / "summary.json").read_text())
    assert summary["status"] in ("running", "interrupted")
    seed = random.randrange(2**32)
    print(f"random kill seed {seed}")
    _kill_at_random(folder, random.Random(seed), first=False)
    _resume_to_the_end(folder)
    _same_as(reference, folder)


@pytest.mark.slow
def test_many_random_kills_resume_to_the_same_weights_and_metrics(tmp_path):
    reference = _reference(tmp_path)
    folder = _folder(tmp_path, "killed")
    seed = random.randrange(2**32)
    print(f"random kill seed {seed}")
    rng = random.Random(seed)
    first = True
    for _ in range(8):
        _kill_at_random(folder, rng, first)
        first = first and not (folder / "runs" / "tiny" / "config.yaml").exists()
    _resume_to_the_end(folder)
    _same_as(reference, folder)
