"""One measured device for a whole sweep: the bench-request queue, and a bench worker
serving two training workers on SQLite and on PostgreSQL."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import optuna
import pytest
from conftest import sweep_yaml

from edgetrain.errors import EdgetrainError
from edgetrain.search import BenchQueue, open_storage

pytestmark = pytest.mark.usefixtures("single_thread")


def _queue(tmp_path: Path, study: str = "s") -> BenchQueue:
    return BenchQueue(open_storage(f"sqlite:///{tmp_path / 'study.db'}"), study)


def test_requests_are_claimed_once_oldest_first_and_answered(tmp_path):
    queue = _queue(tmp_path)
    other = _queue(tmp_path, "another-sweep")
    files = []
    for name in ("a.onnx", "b.onnx"):
        (tmp_path / name).write_bytes(name.encode() * 10)
        files.append(tmp_path / name)
    first = queue.submit("t0/a", [files[0]], {"runs": 5})
    second = queue.submit("t1/b", [files[1]], {"runs": 7})
    assert other.claim("w") is None  # requests belong to their sweep
    claimed = queue.claim("w1")
    assert claimed is not None and claimed.id == first and claimed.settings == {"runs": 5}
    folder = tmp_path / "unpacked"
    folder.mkdir()
    assert claimed.unpack(folder).read_bytes() == b"a.onnx" * 10
    assert queue.counts()["running"] == 1 and queue.counts()["queued"] == 1
    queue.finish(first, {"latency_ms": 1.5, "measured_by": "w1"}, None)
    assert queue.wait(first, timeout_s=1) == {"latency_ms": 1.5, "measured_by": "w1"}
    # a bench worker that died leaves its request running: the next one queues it again
    assert queue.claim("w2").id == second
    assert queue.requeue_running() == 1
    assert queue.claim("w3").id == second
    queue.finish(second, None, "runtime exploded")
    with pytest.raises(EdgetrainError, match="could not measure it: runtime exploded"):
        queue.wait(second, timeout_s=1)
    late = queue.submit("t2/a", [files[0]], {})
    with pytest.raises(EdgetrainError, match="start one on the device"):
        queue.wait(late, timeout_s=0.2, poll_s=0.05)


def test_two_bench_workers_never_take_the_same_request(tmp_path):
    queue = _queue(tmp_path)
    (tmp_path / "m.onnx").write_bytes(b"m")
    ids = {queue.submit(f"t{i}", [tmp_path / "m.onnx"], {}) for i in range(20)}
    taken: list[list[int]] = [[], []]

    def drain(slot: int) -> None:
        mine = _queue(tmp_path)
        while (request := mine.claim(f"w{slot}")) is not None:
            taken[slot].append(request.id)

    threads = [threading.Thread(target=drain, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(taken[0] + taken[1]) == sorted(ids)  # each exactly once


def _bench_worker_sweep(sweep_root: Path, name: str, storage: str) -> None:
    """A bench worker and two training workers on one study: every trial completes and
    every latency, the baseline's included, was measured by the bench worker."""
    budget = 4
    text = sweep_yaml(name, budget, "random").replace(
        "runtime: {runs: 5, repeats: 1, warmup: 1}",
        "runtime: {runs: 5, repeats: 1, warmup: 1, bench_worker: true, wait_s: 300}",
    )
    assert "bench_worker: true" in text
    (sweep_root / f"{name}.yaml").write_text(text)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    base = [sys.executable, "-m", "edgetrain", "sweep"]

    def start(*args: str) -> subprocess.Popen:
        return subprocess.Popen(
            [*base, *args],
            cwd=sweep_root,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    bench = start("bench-worker", f"{name}.yaml", "--storage", storage, "--idle-exit", "240")
    workers = [
        start("worker", f"{name}.yaml", "--storage", storage, "--no-progress", "--root", f"r{i}")
        for i in range(2)
    ]
    outputs = [w.communicate(timeout=600)[0] for w in workers]
    bench_out = bench.communicate(timeout=300)[0]
    assert [w.returncode for w in workers] == [0, 0], outputs
    assert bench.returncode == 0, bench_out
    assert "the sweep's budget is spent" in bench_out  # it stopped when the sweep was over
    study = optuna.load_study(study_name=name, storage=open_storage(storage))
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * budget
    assert sorted(t.user_attrs["slot"] for t in study.trials) == list(range(budget))
    measured = {t.user_attrs["measured_by"] for t in study.trials}
    measured.add(study.user_attrs["baseline"]["measured_by"])
    assert len(measured) == 1, measured  # one device measured everything
    (device,) = measured
    assert device.endswith(f":{bench.pid}")
    assert {t.user_attrs["worker"] for t in study.trials} != {device}
    served = int(bench_out.split("measured ")[-1].split()[0])
    assert served == budget + 1 - sum("duplicate_of" in t.user_attrs for t in study.trials)


def test_a_bench_worker_measures_for_two_workers_on_sqlite(sweep_root):
    _bench_worker_sweep(sweep_root, "bw-sqlite", f"sqlite:///{sweep_root / 'bw.db'}")


@pytest.mark.postgres
def test_a_bench_worker_measures_for_two_workers_on_postgresql(sweep_root, postgres_url):
    pytest.importorskip("psycopg")
    _bench_worker_sweep(sweep_root, "bw-pg", postgres_url)


def test_bench_worker_refuses_a_sweep_that_measures_locally(sweep_root, monkeypatch):
    from typer.testing import CliRunner

    from edgetrain.cli import app

    monkeypatch.chdir(sweep_root)
    (sweep_root / "local.yaml").write_text(sweep_yaml("local", 1))
    result = CliRunner().invoke(app, ["sweep", "bench-worker", "local.yaml"])
    assert result.exit_code == 2 and "runtime.bench_worker is false" in result.output
