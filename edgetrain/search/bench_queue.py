"""One measured device for a whole sweep: a queue of latency measurements in the study's
database, served by ``edgetrain sweep bench-worker``.

Training workers (``sweep run``, ``sweep worker``) of a sweep whose runtime says
``bench_worker: true`` do not time their candidates themselves: they put each deployed
file into the table ``edgetrain_bench_requests`` beside Optuna's tables (same database,
any number of machines) and wait for its result. One bench worker, on the device, takes
the requests one at a time, oldest first, benchmarks each with its runtime and writes the
result back. So every latency of the sweep comes from one device, measured alone: the
producer/consumer layout of the compression thesis, and the only way latencies measured
for workers on different machines are comparable.

A request is ``queued``, then ``running`` (claimed by a bench worker, atomically: two
bench workers never measure the same file), then ``done`` (with the benchmark as JSON) or
``failed`` (with the reason, which the waiting trial fails with). A bench worker that
starts re-queues requests left ``running`` by a bench worker that died.
"""

from __future__ import annotations

import datetime
import io
import json
import os
import socket
import time
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgetrain._optional import require
from edgetrain.errors import EdgetrainError, one_line

__all__ = ["TABLE", "BenchQueue", "BenchRequest", "bench_worker_id", "serve"]

TABLE = "edgetrain_bench_requests"
STATES = ("queued", "running", "done", "failed")


@dataclass(frozen=True)
class BenchRequest:
    """A claimed request: the files to measure (a zip of them), the file to pass to the
    runtime, and the benchmark settings the sweep asked for."""

    id: int
    label: str
    main: str
    payload: bytes
    settings: dict[str, Any]

    def unpack(self, folder: str | Path) -> Path:
        """Write the files into ``folder``; returns the path of the main file."""
        with zipfile.ZipFile(io.BytesIO(self.payload)) as archive:
            for name in archive.namelist():
                if Path(name).name != name:  # flat archives only: no paths from a database
                    raise EdgetrainError(f"bench request {self.id}: bad file name {name!r}")
                (Path(folder) / name).write_bytes(archive.read(name))
        return Path(folder) / self.main


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)


class BenchQueue:
    """The requests of one study in the storage's database.

    Args:
        storage: Optuna's RDB storage of the sweep (its SQLAlchemy engine is shared).
        study: the sweep's name.
    """

    def __init__(self, storage: Any, study: str) -> None:
        sa = require("sqlalchemy", "search", package="optuna")
        self.sa = sa
        self.engine = storage.engine
        self.study = study
        meta = sa.MetaData()
        self.table = sa.Table(
            TABLE,
            meta,
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column("study", sa.String(512), nullable=False, index=True),
            sa.Column("label", sa.String(512), nullable=False),
            sa.Column("main", sa.String(512), nullable=False),
            sa.Column("payload", sa.LargeBinary, nullable=False),
            sa.Column("settings", sa.Text, nullable=False),
            sa.Column("state", sa.String(16), nullable=False, index=True),
            sa.Column("result", sa.Text),
            sa.Column("error", sa.Text),
            sa.Column("worker", sa.String(512)),
            sa.Column("created", sa.DateTime, nullable=False),
            sa.Column("updated", sa.DateTime, nullable=False),
        )
        # Processes started together race to create the table; the loser's CREATE fails
        # and a second look finds it in place.
        for attempt in range(5):
            try:
                meta.create_all(self.engine, checkfirst=True)
                break
            except sa.exc.SQLAlchemyError:
                if attempt == 4:
                    raise
                time.sleep(0.2 * (attempt + 1))

    # -- training workers ----------------------------------------------------------

    def submit(self, label: str, files: Sequence[Path], settings: dict[str, Any]) -> int:
        """Queue the measurement of ``files[0]`` (with the files beside it it needs)."""
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            for f in files:
                archive.write(f, Path(f).name)
        now = _now()
        with self.engine.begin() as conn:
            row = conn.execute(
                self.table.insert().values(
                    study=self.study,
                    label=label,
                    main=Path(files[0]).name,
                    payload=buffer.getvalue(),
                    settings=json.dumps(settings),
                    state="queued",
                    created=now,
                    updated=now,
                )
            )
            return int(row.inserted_primary_key[0])

    def wait(
        self,
        request: int,
        timeout_s: float,
        poll_s: float = 0.5,
        on_wait: Callable[[], None] | None = None,
    ) -> dict[str, Any]:
        """The benchmark (``BenchmarkResult.to_dict()``) of a request, once measured.

        Raises:
            EdgetrainError: the bench worker failed to measure it (its reason), or no
                result came within ``timeout_s`` (is a bench worker running?).
        """
        deadline = time.monotonic() + timeout_s
        t = self.table
        while True:
            with self.engine.connect() as conn:
                row = conn.execute(
                    self.sa.select(t.c.state, t.c.result, t.c.error).where(t.c.id == request)
                ).one()
            if row.state == "done":
                result: dict[str, Any] = json.loads(row.result)
                return result
            if row.state == "failed":
                raise EdgetrainError(f"the bench worker could not measure it: {row.error}")
            if time.monotonic() > deadline:
                raise EdgetrainError(
                    f"no bench worker measured request {request} within {timeout_s:g} s; "
                    "start one on the device: edgetrain sweep bench-worker SWEEP.yaml "
                    "--storage URL"
                )
            if on_wait is not None:
                on_wait()
            time.sleep(poll_s)

    # -- the bench worker ------------------------------------------------------------

    def requeue_running(self) -> int:
        """Put back requests left ``running`` (a bench worker died); returns how many."""
        t = self.table
        with self.engine.begin() as conn:
            done = conn.execute(
                t.update()
                .where(t.c.study == self.study, t.c.state == "running")
                .values(state="queued", worker=None, updated=_now())
            )
        return int(done.rowcount or 0)

    def claim(self, worker: str) -> BenchRequest | None:
        """The oldest queued request, now ``running`` for ``worker``; None when none is
        queued. The update is conditional, so a request goes to one bench worker only."""
        t, sa = self.table, self.sa
        while True:
            with self.engine.begin() as conn:
                row = conn.execute(
                    sa.select(t.c.id)
                    .where(t.c.study == self.study, t.c.state == "queued")
                    .order_by(t.c.id)
                    .limit(1)
                ).first()
                if row is None:
                    return None
                taken = conn.execute(
                    t.update()
                    .where(t.c.id == row.id, t.c.state == "queued")
                    .values(state="running", worker=worker, updated=_now())
                )
            if taken.rowcount == 1:
                break  # else another bench worker took it first: look again
        with self.engine.connect() as conn:
            full = conn.execute(sa.select(t).where(t.c.id == row.id)).one()
        return BenchRequest(full.id, full.label, full.main, full.payload, json.loads(full.settings))

    def finish(self, request: int, result: dict[str, Any] | None, error: str | None) -> None:
        """Record a request's benchmark, or why it could not be measured."""
        t = self.table
        with self.engine.begin() as conn:
            conn.execute(
                t.update()
                .where(t.c.id == request)
                .values(
                    state="failed" if error is not None else "done",
                    result=None if result is None else json.dumps(result),
                    error=error,
                    updated=_now(),
                )
            )

    def counts(self) -> dict[str, int]:
        """Requests of the study by state."""
        t, sa = self.table, self.sa
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(t.c.state, sa.func.count())
                .where(t.c.study == self.study)
                .group_by(t.c.state)
            ).all()
        found = {state: 0 for state in STATES}
        found.update({r[0]: int(r[1]) for r in rows})
        return found


def bench_worker_id() -> str:
    """``host:pid`` of this bench worker."""
    return f"{socket.gethostname()}:{os.getpid()}"


def serve(
    queue: BenchQueue,
    runtime: Any,
    *,
    finished: Callable[[], bool],
    log: Callable[[str], None] = lambda _: None,
    poll_s: float = 0.5,
    idle_exit_s: float | None = None,
) -> int:
    """Measure the queue's requests one at a time on ``runtime`` until ``finished()``
    says the sweep is over (checked when nothing is queued) or nothing came for
    ``idle_exit_s`` seconds; returns how many requests were measured.

    Each result is ``BenchmarkResult.to_dict()`` plus ``measured_by`` (this worker)."""
    import tempfile

    from edgetrain.compress.benchmark import benchmark

    worker = bench_worker_id()
    back = queue.requeue_running()
    if back:
        log(f"{back} request(s) left running by a stopped bench worker queued again")
    served = 0
    idle_since = time.monotonic()
    while True:
        request = queue.claim(worker)
        if request is None:
            if finished():
                return served
            if idle_exit_s is not None and time.monotonic() - idle_since > idle_exit_s:
                log(f"nothing to measure for {idle_exit_s:g} s; stopping")
                return served
            time.sleep(poll_s)
            continue
        with tempfile.TemporaryDirectory(prefix="edgetrain-bench-worker-") as tmp:
            try:
                path = request.unpack(tmp)
                result = benchmark(path, runtime, **request.settings).to_dict()
                result["measured_by"] = worker
                queue.finish(request.id, result, None)
                log(f"{request.label}: {result['latency_ms']:.3f} ms")
            except Exception as exc:  # the waiting trial fails with the reason
                reason = one_line(exc) if isinstance(exc, EdgetrainError) else repr(exc)[:300]
                queue.finish(request.id, None, reason)
                log(f"{request.label}: failed: {reason}")
        served += 1
        idle_since = time.monotonic()
