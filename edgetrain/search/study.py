"""Sweeps as Optuna studies: storage, budget, workers, heartbeats, resume.

The storage is the only shared state (Optuna's RDB storage: SQLite by default, nothing
to start; PostgreSQL for workers on several machines). The budget is a set of *slots*:
when the study is created, one waiting trial per budgeted trial is queued. A worker
claims a waiting trial atomically (the storage refuses a second claim), measures it and
reports it; a worker that finds no waiting trial stops. So any number of workers
together run exactly the budget, none twice.

A worker records a heartbeat while its trial runs. When a worker dies, another one (or
the next resumed run) marks its trial failed, with the reason, and queues a retry of the
same parameters in the same slot: at once when the dead worker ran on this machine (its
process is gone), otherwise when its heartbeat is older than the grace period (three
heartbeats). A process that finds no waiting trial while others still run waits for
them, so the budget is always spent in full. A Ctrl-C queues the retry at once. So a
resumed sweep keeps every finished trial and runs only what is left, and its sampler
goes on from a seed that counts the trials already drawn instead of repeating them.

Example:
    >>> from edgetrain.search import run, load_sweep
    >>> config, base = load_sweep("sweep.yaml")  # doctest: +SKIP
    >>> summary = run(config, base)  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import datetime
import math
import os
import random
import re
import socket
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgetrain._optional import require
from edgetrain.compress.recipe import load_recipe
from edgetrain.errors import ConfigError, EdgetrainError, one_line
from edgetrain.search.bench_queue import BenchQueue, serve
from edgetrain.search.config import SweepConfig
from edgetrain.search.methods import grid_points, make_sampler
from edgetrain.search.objective import (
    CandidatePruned,
    SweepContext,
    TrialFailed,
    evaluate_candidate,
)
from edgetrain.search.pruners import TrialReporter
from edgetrain.search.space import constraint_label, constraint_values, suggest

__all__ = [
    "BOOKKEEPING_ATTRS",
    "WorkSummary",
    "bench_worker",
    "quiet_optuna",
    "default_storage",
    "fail_dead_trials",
    "open_storage",
    "open_study",
    "run",
    "sweep_folder",
]

# User attributes a trial carries besides its metrics.
BOOKKEEPING_ATTRS = (
    "slot",
    "config_key",
    "constraints",
    "duplicate_of",
    "fail_reason",
    "worker",
    "seconds",
    "folder",
)
_WAIT_FOR_SETUP_S = 3600.0
_OPEN_ATTEMPTS = 3


@contextlib.contextmanager
def quiet_optuna() -> Iterator[None]:
    """Hide Optuna's notes that heartbeats are experimental: they are what we rely on."""
    optuna = require("optuna", "search")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield


def sweep_folder(config: SweepConfig, root: str | Path = "runs") -> Path:
    """Where the sweep's files go: ``runs/<name>/``."""
    return Path(root) / config.name


def default_storage(config: SweepConfig, root: str | Path = "runs") -> str:
    """``sqlite:///runs/<name>/study.db``: embedded, nothing to start."""
    return f"sqlite:///{sweep_folder(config, root) / 'study.db'}"


def mask_url(url: str, text: str | None = None) -> str:
    """``url`` (or ``text`` that may quote it) with the password of the URL replaced by
    ``***``, for every message and log line.

    Example:
        >>> mask_url("postgresql://ana:s3cret@db:5432/sweeps")
        'postgresql://ana:***@db:5432/sweeps'
    """
    found = re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://[^:/@]*:([^@/]*)@", url)
    shown = url if text is None else text
    if not found or not found.group(1):
        return shown
    return shown.replace(f":{found.group(1)}@", ":***@").replace(found.group(1), "***")


def open_storage(url: str, heartbeat_s: int = 60) -> Any:
    """Optuna's RDB storage on ``url`` with heartbeats every ``heartbeat_s`` seconds and a
    grace period of three. ``postgresql://`` URLs use psycopg 3 (the ``[search]`` extra).
    Dead workers' trials are failed and retried by :func:`fail_dead_trials`.

    Raises:
        ConfigError: an unsupported URL, or a database that cannot be reached.
    """
    optuna = require("optuna", "search")
    given = url
    if url.startswith("sqlite:///"):
        folder = Path(url.removeprefix("sqlite:///")).parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(
                f"--storage '{url}': cannot create the folder '{folder}' ({exc.strerror}); "
                "give a path in a writable folder"
            ) from None
    elif url.startswith(("postgresql://", "postgres://")):
        require("psycopg", "search", package="psycopg[binary]")
        url = "postgresql+psycopg://" + url.split("://", 1)[1]
    elif not url.startswith(("postgresql+", "mysql", "sqlite")):
        raise ConfigError(
            f"--storage '{mask_url(url)}' is not a database URL; use sqlite:///path/study.db "
            "or postgresql://user@host/db"
        )
    # Workers started together race to create the schema; the loser's CREATE TABLE fails
    # and a second attempt finds the tables in place.
    error = ""
    for attempt in range(_OPEN_ATTEMPTS):
        if attempt:
            time.sleep(0.5 + random.random())
        try:
            with quiet_optuna():
                return optuna.storages.RDBStorage(
                    url,
                    heartbeat_interval=heartbeat_s,
                    grace_period=3 * heartbeat_s,
                )
        except Exception as exc:  # SQLAlchemy/driver errors: all one line for the user
            error = one_line(exc)
    raise ConfigError(f"cannot open storage '{mask_url(given)}': {mask_url(url, error)}")


@dataclass
class WorkSummary:
    """What one process did in a sweep."""

    completed: int = 0
    failed: int = 0
    pruned: int = 0
    duplicates: int = 0
    trials: list[int] = field(default_factory=list)
    stopped_by: str = "budget"


def _budget(config: SweepConfig, trials: int | None) -> int:
    n = config.budget.trials if trials is None else trials
    points = grid_points(config)
    if points is not None:
        n = min(n, len(points))
    return n


def _baseline_recipe() -> Any:
    return load_recipe({"version": 1})


def _setup(study: Any, ctx: SweepContext, budget: int, log: Callable[[str], None]) -> None:
    """Measure the baseline and the reference recipe, then queue the budget's slots."""
    folder = ctx.folder
    if "baseline" not in study.user_attrs:
        log("measuring the unpruned baseline")
        base = evaluate_candidate(ctx, _baseline_recipe(), folder / "baseline", finetune_=False)
        metrics = {**base.metrics, "top1_drop": 0.0, "latency_ratio": 1.0}
        study.set_user_attr("baseline", metrics)
    baseline = study.user_attrs["baseline"]
    if ctx.reference is not None and "reference" not in study.user_attrs:
        log("measuring the reference recipe")
        ref = evaluate_candidate(ctx, ctx.reference, folder / "reference", baseline=baseline)
        study.set_user_attr("reference", ref.metrics)
    _top_up(study, ctx.config, budget)
    study.set_user_attr("ready", True)


def _top_up(study: Any, config: SweepConfig, budget: int) -> None:
    """Queue the slots from the last one queued up to ``budget``. A grid's slots carry
    their grid point (Optuna's grid sampler takes queued trials only with every
    parameter set), so workers cover the grid exactly once."""
    have = int(study.user_attrs.get("slots", 0))
    points: list[dict[str, Any]] = grid_points(config) or [{}] * budget
    for slot in range(have, budget):
        study.enqueue_trial(points[slot], user_attrs={"slot": slot})
    if budget > have:
        study.set_user_attr("slots", budget)


def _trial_pruner(config: SweepConfig, ctx: SweepContext) -> Any:
    """The sweep's Optuna pruner over its longest fine-tuning (Optuna's NopPruner when
    there is none)."""
    optuna = require("optuna", "search")
    spec = config.trial_pruner
    if spec is None:
        return optuna.pruners.NopPruner()
    epochs = [ctx.recipe.finetune.epochs if ctx.recipe.finetune else 0]
    searched = config.parameters.get("finetune.epochs")
    if searched is not None:
        epochs += [v for v in (searched.values or [searched.max]) if isinstance(v, int | float)]
    return spec.make(max(1, int(max(epochs)))) or optuna.pruners.NopPruner()


def open_study(
    config: SweepConfig,
    storage: Any,
    ctx: SweepContext,
    *,
    coordinator: bool = True,
    trials: int | None = None,
    seed: int | None = None,
    log: Callable[[str], None] = lambda _: None,
) -> Any:
    """Create the sweep's study or load it (resume, or another worker's), set it up.

    The coordinator (``sweep run``) measures the baseline, queues the budget and tops
    it up when ``trials`` grew; a worker waits until the study is ready.

    Raises:
        ConfigError: a study of that name exists with other metrics or parameters.
    """
    optuna = require("optuna", "search")
    sampler = make_sampler(config, seed)
    pruner = _trial_pruner(config, ctx)
    try:
        study = optuna.create_study(
            storage=storage,
            study_name=config.name,
            directions=config.directions,
            sampler=sampler,
            pruner=pruner,
        )
        study.set_user_attr("config", config.to_dict())
        study.set_metric_names([m.name for m in config.metrics])  # shown by optuna-dashboard
        coordinator = True
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(
            study_name=config.name, storage=storage, sampler=sampler, pruner=pruner
        )
        _check_same(config, study)
        # A resumed sampler seeded as before would propose the trials it already drew
        # again: go on from a seed that counts them.
        drawn = len(study.get_trials(deepcopy=False)) - len(
            study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,))
        )
        base_seed = config.seed if seed is None else seed
        study.sampler = make_sampler(config, base_seed + drawn)
    budget = _budget(config, trials)
    if coordinator:
        _setup(study, ctx, budget, log)
        return study
    deadline = time.monotonic() + _WAIT_FOR_SETUP_S
    while not study.user_attrs.get("ready"):
        if time.monotonic() > deadline:
            raise EdgetrainError(
                f"sweep '{config.name}' was never set up; start it with 'edgetrain sweep run'"
            )
        time.sleep(0.25)
    return study


def _check_same(config: SweepConfig, study: Any) -> None:
    # A study created a moment ago by another worker may not carry its config yet.
    deadline = time.monotonic() + 60.0
    while "config" not in study.user_attrs and time.monotonic() < deadline:
        time.sleep(0.5)
    stored = study.user_attrs.get("config") or {}
    directions = [d.name.lower() for d in study.directions]
    if directions != config.directions:
        raise ConfigError(
            f"sweep '{config.name}' exists with objectives {directions}, the config says "
            f"{config.directions}; give the sweep another name"
        )
    current = config.to_dict()
    for key in ("parameters", "recipe", "model", "metric"):
        if stored.get(key) != current.get(key):
            raise ConfigError(
                f"sweep '{config.name}' exists with another '{key}'; resume it with its "
                "original config or give the new sweep another name"
            )


class _Heartbeat:
    """Records a trial's heartbeat every ``interval`` seconds on a daemon thread."""

    def __init__(self, storage: Any, trial_id: int, interval: float) -> None:
        self.storage, self.trial_id, self.interval = storage, trial_id, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True)

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            self.storage.record_heartbeat(self.trial_id)

    def __enter__(self) -> _Heartbeat:
        self.storage.record_heartbeat(self.trial_id)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _claim(study: Any, storage: Any) -> tuple[Any, int] | None:
    """Take a waiting trial (a budget slot) atomically; None when none is left."""
    optuna = require("optuna", "search")
    waiting = optuna.trial.TrialState.WAITING
    study_id = storage.get_study_id_from_name(study.study_name)
    for frozen in study.get_trials(deepcopy=False, states=(waiting,)):
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, frozen.number)
        try:
            claimed = storage.set_trial_state_values(
                trial_id, state=optuna.trial.TrialState.RUNNING
            )
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
        if claimed:
            return optuna.trial.Trial(study, trial_id), trial_id
    return None


def _retry_later(study: Any, frozen: Any) -> None:
    """Queue the same parameters again in the same slot (an interrupted trial)."""
    optuna = require("optuna", "search")
    study.add_trial(
        optuna.trial.create_trial(
            state=optuna.trial.TrialState.WAITING,
            params=frozen.params,
            distributions=frozen.distributions,
            user_attrs={"slot": frozen.user_attrs.get("slot")},
            system_attrs={"failed_trial": frozen.number},
        )
    )


def _alive(worker: str) -> bool | None:
    """Whether the process named ``host:pid`` still runs; None when it ran elsewhere."""
    host, _, pid = worker.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return None
    if int(pid) == os.getpid():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process of that number
        return True
    return True


def fail_dead_trials(study: Any, storage: Any, grace_s: float) -> list[int]:
    """Fail the running trials whose worker is dead, each with its reason in
    ``fail_reason``, and queue each one's parameters again in its slot.

    A worker is dead when it ran on this machine and its process is gone, when its
    heartbeat is older than ``grace_s``, or when it claimed the trial more than
    ``grace_s`` ago and never sent a heartbeat (killed in between). Two processes may
    look at once: the storage lets one of them fail the trial, and only that one
    queues the retry.

    Returns:
        The numbers of the trials failed here.
    """
    optuna = require("optuna", "search")
    running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    if not running:
        return []
    stale = set(storage._get_stale_trial_ids(study._study_id))  # Optuna's heartbeat table
    now = datetime.datetime.now()
    failed = []
    for frozen in running:
        worker = frozen.user_attrs.get("worker")
        if worker is not None and _alive(worker) is False:
            reason = f"worker {worker} was killed (its process is gone); queued again"
        elif frozen._trial_id in stale:
            reason = (
                f"worker {worker or 'unknown'} sent no heartbeat for {grace_s:g} s "
                "(killed or cut off); queued again"
            )
        elif (
            worker is None
            and frozen.datetime_start is not None
            and ((now - frozen.datetime_start).total_seconds() > grace_s)
        ):
            reason = "claimed by a worker that stopped before it started; queued again"
        else:
            continue
        try:
            storage.set_trial_user_attr(frozen._trial_id, "fail_reason", reason)
            if not storage.set_trial_state_values(
                frozen._trial_id, state=optuna.trial.TrialState.FAIL
            ):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # another process failed it first
        _retry_later(study, storage.get_trial(frozen._trial_id))
        failed.append(frozen.number)
    return failed


def _cache(study: Any) -> Callable[[str], tuple[int, dict[str, Any]] | None]:
    complete = require("optuna", "search").trial.TrialState.COMPLETE

    def lookup(key: str) -> tuple[int, dict[str, Any]] | None:
        for t in study.get_trials(deepcopy=False, states=(complete,)):
            if t.user_attrs.get("config_key") == key and "duplicate_of" not in t.user_attrs:
                metrics = {k: v for k, v in t.user_attrs.items() if k not in BOOKKEEPING_ATTRS}
                return t.number, metrics
        return None

    return lookup


def _measure_trial(
    trial: Any, ctx: SweepContext, baseline: dict[str, Any], cache: Callable[..., Any]
) -> tuple[list[float], dict[str, Any]]:
    config = ctx.config
    params = suggest(trial, config.parameters)
    recipe = ctx.recipe.with_params(params)
    folder = ctx.folder / "trials" / f"{trial.number:04d}"
    started = time.perf_counter()
    reporter = None
    if config.trial_pruner is not None and config.trial_pruner.name != "none":
        reporter = TrialReporter(trial, maximize=config.directions[0] == "maximize")
    candidate = evaluate_candidate(
        ctx, recipe, folder, baseline=baseline, cached=cache, reporter=reporter
    )
    attrs = dict(candidate.metrics)
    attrs.update(
        config_key=candidate.key,
        constraints=constraint_values(config.constraints, candidate.metrics),
        seconds=round(time.perf_counter() - started, 3),
        folder=str(folder),
    )
    if candidate.duplicate_of is not None:
        attrs["duplicate_of"] = candidate.duplicate_of
    values = [float(candidate.metrics.get(m.name, math.nan)) for m in config.metrics]
    bad = [m.name for m, v in zip(config.metrics, values, strict=True) if not math.isfinite(v)]
    if bad:
        raise TrialFailed(f"metric {', '.join(bad)} is not a finite number")
    return values, attrs


def run(
    config: SweepConfig,
    base: Path | None = None,
    *,
    storage: str | None = None,
    root: str | Path = "runs",
    coordinator: bool = True,
    trials: int | None = None,
    max_trials: int | None = None,
    on_trial: Callable[[Any], None] | None = None,
    log: Callable[[str], None] = lambda _: None,
) -> WorkSummary:
    """Run (or resume, or join) a sweep until its budget is spent.

    Args:
        config: the validated sweep (:func:`~edgetrain.search.load_sweep`).
        base: folder of the config file (relative paths in it start there).
        storage: database URL (default :func:`default_storage`).
        root: folder of the sweep's files (``<root>/<name>/``).
        coordinator: set the study up (baseline, reference, budget); a worker waits
            for the coordinator instead.
        trials: budget override (a resumed sweep with a larger one runs the difference).
        max_trials: stop this process after this many trials (the rest stays queued).
        on_trial: called with each finished ``FrozenTrial`` of this process.
        log: receives one-line progress notes.

    Returns:
        What this process did.
    """
    with quiet_optuna():
        return _run(config, base, storage, root, coordinator, trials, max_trials, on_trial, log)


def _run(
    config: SweepConfig,
    base: Path | None,
    storage: str | None,
    root: str | Path,
    coordinator: bool,
    trials: int | None,
    max_trials: int | None,
    on_trial: Callable[[Any], None] | None,
    log: Callable[[str], None],
) -> WorkSummary:
    optuna = require("optuna", "search")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # Bad input fails before anything is written.
    folder = sweep_folder(config, root)
    ctx = SweepContext.prepare(config, base, folder)
    url = storage or default_storage(config, root)
    store = open_storage(url, config.heartbeat_s)
    if config.runtime.bench_worker:
        ctx.bench = BenchQueue(store, config.name)
        log("latencies are measured by the sweep's bench worker")
    seed = config.seed if coordinator else config.seed + os.getpid()
    study = open_study(
        config, store, ctx, coordinator=coordinator, trials=trials, seed=seed, log=log
    )
    baseline = study.user_attrs["baseline"]
    cache = _cache(study)
    worker = f"{socket.gethostname()}:{os.getpid()}"
    deadline = None
    if config.budget.timeout_h is not None:
        deadline = time.monotonic() + config.budget.timeout_h * 3600
    summary = WorkSummary()
    state = optuna.trial.TrialState
    grace_s = 3.0 * config.heartbeat_s
    waiting_noted = False
    while True:
        if max_trials is not None and len(summary.trials) >= max_trials:
            summary.stopped_by = "max_trials"
            break
        if deadline is not None and time.monotonic() > deadline:
            summary.stopped_by = "timeout"
            break
        for number in fail_dead_trials(study, store, grace_s):
            log(f"trial {number}: its worker died; queued again")
        claimed = _claim(study, store)
        if claimed is None:
            others = study.get_trials(deepcopy=False, states=(state.RUNNING,))
            if not others:
                break
            if not waiting_noted:
                log(f"waiting for {len(others)} trial(s) running on other workers")
                waiting_noted = True
            time.sleep(min(5.0, float(config.heartbeat_s)))
            continue
        waiting_noted = False
        trial, trial_id = claimed
        trial.set_user_attr("worker", worker)
        try:
            with _Heartbeat(store, trial_id, config.heartbeat_s):
                values, attrs = _measure_trial(trial, ctx, baseline, cache)
        except CandidatePruned as pruned:
            for key, value in pruned.metrics.items():
                trial.set_user_attr(key, value)
            frozen = study.tell(trial, state=state.PRUNED)
            summary.pruned += 1
            log(f"trial {trial.number} pruned after epoch {pruned.metrics['pruned_at_epoch']}")
        except KeyboardInterrupt:
            trial.set_user_attr("fail_reason", "interrupted; queued again")
            frozen = study.tell(trial, state=state.FAIL)
            _retry_later(study, frozen)
            raise
        except Exception as exc:  # any failure is recorded with its reason; the sweep goes on
            reason = one_line(exc) if isinstance(exc, EdgetrainError) else repr(exc)[:300]
            trial.set_user_attr("fail_reason", reason)
            frozen = study.tell(trial, state=state.FAIL)
            summary.failed += 1
            log(f"trial {trial.number} failed: {reason}")
        else:
            for key, value in attrs.items():
                trial.set_user_attr(key, value)
            for spec, value in zip(config.constraints, attrs["constraints"], strict=True):
                trial.set_constraint(constraint_label(spec), value)
            frozen = study.tell(trial, values)
            summary.completed += 1
            summary.duplicates += "duplicate_of" in attrs
        summary.trials.append(frozen.number)
        if on_trial is not None:
            on_trial(frozen)
    return summary


def bench_worker(
    config: SweepConfig,
    *,
    storage: str | None = None,
    root: str | Path = "runs",
    runtime: str | None = None,
    options: dict[str, Any] | None = None,
    idle_exit_s: float | None = None,
    log: Callable[[str], None] = lambda _: None,
) -> int:
    """Serve the sweep's latency measurements on this machine until the sweep is over.

    Args:
        config: the sweep (its runtime section says how to measure; ``runtime`` and
            ``options`` replace its name and options, for a device whose runtime
            differs from the config's default).
        storage: the sweep's database (default :func:`default_storage`).
        root: folder of sweep folders (for the default storage).
        idle_exit_s: also stop after this many seconds without a request.
        log: receives one line per measurement.

    Returns:
        How many measurements this process made.

    Raises:
        EdgetrainError: the runtime cannot be built here (a missing package names its
            install line), or the database cannot be reached.
    """
    from edgetrain.compress.runtime import RUNTIMES

    optuna = require("optuna", "search")
    name = runtime or config.runtime.name
    rt = RUNTIMES.create(name, **(config.runtime.options if runtime is None else options or {}))
    url = storage or default_storage(config, root)
    store = open_storage(url, config.heartbeat_s)
    queue = BenchQueue(store, config.name)
    state = optuna.trial.TrialState

    def finished() -> bool:
        counts = queue.counts()
        if counts["queued"] or counts["running"]:
            return False
        try:
            with quiet_optuna():
                study = optuna.load_study(study_name=config.name, storage=store)
        except KeyError:
            return False  # the coordinator has not created the study yet
        if not study.user_attrs.get("ready"):
            return False
        return not study.get_trials(deepcopy=False, states=(state.WAITING, state.RUNNING))

    log(f"bench worker for sweep '{config.name}' on runtime {rt.name}")
    with quiet_optuna():
        return serve(queue, rt, finished=finished, log=log, idle_exit_s=idle_exit_s)
