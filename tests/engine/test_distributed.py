"""A real two-process ``torchrun`` run on CPU (gloo): rank 0 writes, evaluation is sharded."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

from edgetrain.engine import load_checkpoint

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()),
    reason="this torch build has no torch.distributed gloo backend, which CPU DDP needs",
)

TRAIN_SIZE, VAL_SIZE, BATCH = 40, 23, 4  # 23 is odd: the two eval shards differ in size

SCRIPT = f"""
import os
import sys

import torch
from torch import nn
from edgetrain.data import ArrayDataset, DatasetInfo
from edgetrain.engine import Trainer

torch.set_num_threads(1)


def blobs(n, seed):
    g = torch.Generator().manual_seed(seed)
    targets = torch.randint(0, 3, (n,), generator=g)
    inputs = torch.randn(n, 6, generator=g) + targets[:, None].float()
    info = DatasetInfo("blobs", "classification", (6,), ("a", "b", "c"),
                       {{"train": {TRAIN_SIZE}, "test": {VAL_SIZE}}}, "synthetic")
    return ArrayDataset(inputs, targets, info)


torch.manual_seed(int(os.environ["RANK"]))  # different weights per rank: DDP syncs them
model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
trainer = Trainer(model, blobs({TRAIN_SIZE}, 0), val_data=blobs({VAL_SIZE}, 1), batch_size={BATCH},
                  device="cpu", progress=False, run_dir=sys.argv[1], seed=5)
trainer.fit(2)
torch.save(trainer.model.state_dict(), f"{{sys.argv[1]}}-rank{{trainer.dist.rank}}.pt")
"""


def test_torchrun_two_processes(tmp_path: Path) -> None:
    script = tmp_path / "train_ddp.py"
    script.write_text(textwrap.dedent(SCRIPT))
    run_dir = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2"]
    command += ["--standalone", str(script), str(run_dir)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]

    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2]  # rank 1 wrote nothing
    steps = -(-TRAIN_SIZE // 2 // BATCH)  # each rank trains on its half
    assert [r["step"] for r in lines] == [steps, 2 * steps]
    assert all(r["val_samples"] == VAL_SIZE for r in lines)
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "completed"

    # The replicas stayed identical, and the summed shards equal one full evaluation.
    rank0 = torch.load(f"{run_dir}-rank0.pt", weights_only=True)
    rank1 = torch.load(f"{run_dir}-rank1.pt", weights_only=True)
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)
    assert torch.equal(
        load_checkpoint(run_dir / "checkpoints" / "last.pt")["model"]["0.weight"], rank0["0.weight"]
    )
    g = torch.Generator().manual_seed(1)
    targets = torch.randint(0, 3, (VAL_SIZE,), generator=g)
    inputs = torch.randn(VAL_SIZE, 6, generator=g) + targets[:, None].float()
    hidden = F.relu(F.linear(inputs, rank0["0.weight"], rank0["0.bias"]))
    logits = F.linear(hidden, rank0["2.weight"], rank0["2.bias"])
    assert lines[-1]["val_correct"] == int((logits.argmax(1) == targets).sum())
    assert lines[-1]["val_loss"] == pytest.approx(F.cross_entropy(logits, targets).item())


def test_torchrun_through_the_cli_with_onecycle(tmp_path: Path) -> None:
    """The CLI under torchrun: exit 0 on every rank, rank 0 writes, one-cycle completes."""
    recipe = tmp_path / "ddp.yaml"
    recipe.write_text(
        "name: ddp\nepochs: 2\ndevice: cpu\n"
        "data: {name: digits, options: {test_fraction: 0.9}, batch_size: 16}\n"
        "model: {name: vgg_small}\n"
        "optimizer: {name: sgd, lr: 0.05, momentum: 0.9}\n"
        "scheduler: {name: onecycle}\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "edgetrain.cli",
        "train",
        str(recipe),
        "--no-progress",
    ]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    run = tmp_path / "runs" / "ddp"
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1, 2]
    assert json.loads((run / "summary.json").read_text())["status"] == "completed"
    assert (run / "report.html").is_file()
    sched = load_checkpoint(run / "checkpoints" / "last.pt")["scheduler"]
    # 179 training samples: 90 per rank, 6 batches of 16 per epoch and rank
    assert sched["total_steps"] == 12 and sched["last_epoch"] == 12
