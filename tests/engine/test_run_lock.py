"""One writer per run directory: a second is refused, a dead writer's lock is taken over,
and a run whose writer died without a word reads as interrupted."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from edgetrain.engine.rundir import RunDirectory, RunLock
from edgetrain.errors import EdgetrainError


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _write_lock(run, pid: int, host: str | None = None) -> None:
    lock = RunLock(run)
    lock.path.parent.mkdir(parents=True, exist_ok=True)
    lock.path.write_text(json.dumps({"pid": pid, "host": host or socket.gethostname()}))


def test_a_second_writer_is_refused_naming_the_holder(tmp_path):
    run = tmp_path / "runs" / "a"
    with RunDirectory(run).lock():
        with pytest.raises(EdgetrainError) as err, RunDirectory(run).lock():
            pass
        message = str(err.value)
        assert f"is being written by process {os.getpid()} on {socket.gethostname()}" in message
        assert "\n" not in message
    assert not RunLock(run).path.exists()  # released


def test_the_lock_of_a_process_that_is_gone_is_taken_over(tmp_path):
    run = tmp_path / "runs" / "a"
    _write_lock(run, _dead_pid())
    with RunDirectory(run).lock() as lock:
        assert json.loads(lock.path.read_text())["pid"] == os.getpid()
    _write_lock(run, 1, host="another-host")  # another machine's writer: cannot tell, wait
    with pytest.raises(EdgetrainError, match="process 1 on another-host"), RunDirectory(run).lock():
        pass


def test_a_run_left_running_by_a_dead_writer_reads_as_interrupted(tmp_path):
    run = RunDirectory(tmp_path / "runs" / "a").create()
    run.write_summary({"status": "running", "epochs_finished": 3})
    with run.lock():  # its writer is alive: still running
        assert run.read_summary()["status"] == "running"
    _write_lock(run.path, _dead_pid())
    assert run.read_summary() == {"status": "interrupted", "epochs_finished": 3}
    assert json.loads(run.summary_path.read_text())["status"] == "interrupted"


def test_training_holds_the_lock_and_releases_it(tmp_path):
    import torch
    from torch import nn
    from torch.utils.data import TensorDataset

    from edgetrain.engine import Callback, Trainer

    seen = []

    class Probe(Callback):
        def on_epoch_end(self, trainer, model):
            seen.append(trainer.run_dir.lock().holder())

    data = TensorDataset(torch.randn(16, 4), torch.randint(0, 2, (16,)))
    trainer = Trainer(nn.Linear(4, 2), data, callbacks=[Probe()], progress=False)
    run = RunDirectory(tmp_path / "runs" / "a")
    trainer.attach_run_dir(run)
    trainer.fit(1)
    assert seen == [{"pid": os.getpid(), "host": socket.gethostname()}]
    assert not RunLock(run.path).path.exists()
    assert run.read_summary()["status"] == "completed"


def test_temporary_files_of_a_killed_write_are_removed_when_training_resumes(tmp_path):
    run = RunDirectory(tmp_path / "runs" / "a").create()
    left = [run.checkpoints / ".last.pt.x1y2.tmp", run.path / ".summary.json.abc.tmp"]
    for path in left:
        path.write_bytes(b"")  # a 0-byte file of a writer killed mid-write
    keep = run.checkpoints / "last.pt"
    keep.write_bytes(b"weights")
    with run.lock():
        assert sorted(run.remove_temporary_files()) == sorted(left)
    assert not any(p.exists() for p in left) and keep.exists()


def test_an_epoch_checkpointed_but_not_logged_gets_its_metrics_line_back(tmp_path):
    import torch
    from torch import nn
    from torch.utils.data import TensorDataset

    from edgetrain.engine import Trainer

    def trainer() -> Trainer:
        torch.manual_seed(0)
        data = TensorDataset(torch.randn(16, 4), torch.randint(0, 2, (16,)))
        return Trainer(nn.Linear(4, 2), data, progress=False)

    run = RunDirectory(tmp_path / "runs" / "a")
    first = trainer()
    first.attach_run_dir(run)
    first.fit(2)
    lines = run.metrics_path.read_text().splitlines()
    run.metrics_path.write_text(lines[0] + "\n")  # killed after epoch 2's checkpoint
    second = trainer()
    second.attach_run_dir(run)
    second.load_checkpoint(run.checkpoints / "last.pt")
    second.fit(3)
    assert [r["epoch"] for r in run.read_metrics()] == [1, 2, 3]
    assert run.read_metrics()[1] == json.loads(lines[1])
