"""Budget, resume, interruption, dead workers and duplicate reuse of a sweep's study.

The candidate measurement is replaced by a cheap function of the parameters, so these
tests exercise the study logic alone (the CLI test runs the real pipeline).
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from types import SimpleNamespace

import optuna
import pytest

from edgetrain.compress.recipe import load_recipe
from edgetrain.search import load_sweep, open_storage, run
from edgetrain.search import study as study_mod
from edgetrain.search.objective import Candidate, CandidatePruned, SweepContext

RECIPE = load_recipe(
    {"version": 1, "pruners": {"s1": {"method": "l1_filter", "sparsity": 0.5, "layers": ["a"]}}}
)
STATE = optuna.trial.TrialState


def _config(name="s", trials=6, **extra):
    tree = {
        "name": name,
        "method": "random",
        "metric": "latency_ms",
        "constraints": [{"name": "top1", "min": 50}],
        "recipe": "r.yaml",
        "model": "runs/m",
        "parameters": {"s1.sparsity": {"values": [0.0, 0.25, 0.5, 0.75]}},
        "budget": {"trials": trials},
        "heartbeat_s": 1,
        **extra,
    }
    return load_sweep(tree)[0]


@pytest.fixture
def fake(monkeypatch, tmp_path):
    """Measure a candidate as latency = 1 - sparsity/2, top1 = 90 - 40*sparsity."""
    calls = []
    knobs = SimpleNamespace(calls=calls, fail_at=None, error=RuntimeError("boom"), reported=[])

    def prepare(config, base, folder):
        return SweepContext(config, RECIPE, None, folder)

    def evaluate(ctx, recipe, out, *, baseline=None, cached=None, finetune_=True, reporter=None):
        s = recipe.pruners["s1"].sparsity if recipe.pruners else 0.0
        key = f"{s:.2f}"
        if cached is not None and (hit := cached(key)) is not None:
            return Candidate(dict(hit[1]), None, key, duplicate_of=hit[0])
        calls.append(s)
        if knobs.fail_at is not None and s == knobs.fail_at:
            raise knobs.error
        if reporter is not None:  # three fine-tuning epochs, top-1 falling with sparsity
            knobs.reported.append(s)
            for epoch in (1, 2, 3):
                record = {"epoch": epoch, "val_top1": 90.0 - 40 * s + epoch, "val_loss": s}
                trainer = SimpleNamespace(state=SimpleNamespace(last_record=record))
                reporter.on_epoch_end(trainer, None)
                if reporter.pruned_at is not None:
                    raise CandidatePruned(
                        {"pruned_at_epoch": epoch, "top1_at_pruning": record["val_top1"]}
                    )
        metrics = {"latency_ms": 1.0 - s / 2, "top1": 90.0 - 40 * s, "macs": 100 * (1 - s)}
        if baseline is not None:
            metrics["top1_drop"] = baseline["top1"] - metrics["top1"]
        return Candidate(metrics, None, key)

    monkeypatch.setattr(SweepContext, "prepare", staticmethod(prepare))
    monkeypatch.setattr(study_mod, "evaluate_candidate", evaluate)
    monkeypatch.chdir(tmp_path)
    return knobs


def _study(config):
    storage = open_storage(f"sqlite:///runs/{config.name}/study.db")
    return optuna.load_study(study_name=config.name, storage=storage)


def _slots(study, state=STATE.COMPLETE):
    return sorted(t.user_attrs["slot"] for t in study.get_trials(states=(state,)))


def test_budget_is_run_once_and_duplicates_reuse_results(fake):
    config = _config(trials=6)
    summary = run(config)
    study = _study(config)
    assert summary.completed == 6 and summary.failed == 0
    assert _slots(study) == list(range(6))
    assert len(study.trials) == 6  # nothing beyond the budget
    assert study.user_attrs["baseline"]["top1"] == 90.0
    # four distinct sparsities: at least two of the six trials reused a result
    dups = [t for t in study.trials if "duplicate_of" in t.user_attrs]
    assert summary.duplicates == len(dups) >= 2
    assert len(fake.calls) == 1 + 6 - len(dups)  # the baseline + distinct candidates
    for t in dups:
        first = study.trials[t.user_attrs["duplicate_of"]]
        assert t.values == first.values and t.params == first.params
    # a second run finds the budget spent and measures nothing
    assert run(config).completed == 0


def test_failed_trials_are_recorded_with_their_reason(fake):
    fake.fail_at, fake.error = 0.75, RuntimeError("out of memory")
    config = _config(trials=8)
    summary = run(config)
    study = _study(config)
    failed = study.get_trials(states=(STATE.FAIL,))
    assert summary.failed == len(failed) >= 1
    assert all("out of memory" in t.user_attrs["fail_reason"] for t in failed)
    assert all(t.params["s1.sparsity"] == 0.75 for t in failed)
    assert summary.completed + summary.failed == 8


def test_resume_keeps_finished_trials_and_runs_the_rest(fake):
    config = _config(trials=5)
    first = run(config, max_trials=2)
    assert first.stopped_by == "max_trials"
    study = _study(config)
    kept = {t.number: t.values for t in study.get_trials(states=(STATE.COMPLETE,))}
    assert len(kept) == 2
    second = run(config)
    assert second.completed == 3
    study = _study(config)
    assert _slots(study) == list(range(5))
    assert all(study.trials[n].values == v for n, v in kept.items())
    # a larger budget on resume runs only the difference
    assert run(config, trials=7).completed == 2
    assert _slots(_study(config)) == list(range(7))


def test_interrupted_trial_is_queued_again_with_its_parameters(fake):
    fake.fail_at, fake.error = 0.5, KeyboardInterrupt()
    config = _config(trials=6, parameters={"s1.sparsity": {"values": [0.5]}})
    with pytest.raises(KeyboardInterrupt):
        run(config)
    study = _study(config)
    (failed,) = study.get_trials(states=(STATE.FAIL,))
    assert "interrupted" in failed.user_attrs["fail_reason"]
    (retry,) = [
        t
        for t in study.get_trials(states=(STATE.WAITING,))
        if t.system_attrs.get("failed_trial") == failed.number
    ]
    assert retry.params == failed.params
    assert retry.user_attrs["slot"] == failed.user_attrs["slot"]
    fake.fail_at = None
    assert run(config).completed == 6
    assert _slots(_study(config)) == list(range(6))


def _claim_and_die(config, worker=None, heartbeat=True):
    """Claim a slot as a worker that dies at once; return the trial's number."""
    storage = open_storage(f"sqlite:///runs/{config.name}/study.db", heartbeat_s=1)
    study = optuna.load_study(study_name=config.name, storage=storage)
    trial, trial_id = study_mod._claim(study, storage)
    trial.suggest_categorical("s1.sparsity", [0.0, 0.25, 0.5, 0.75])
    if worker is not None:
        trial.set_user_attr("worker", worker)
    if heartbeat:
        storage.record_heartbeat(trial_id)
    return trial.number


def _check_retried(study, reasons):
    """Exactly the trials in ``reasons`` failed, each with its reason, each retried once."""
    failed = {t.number: t for t in study.get_trials(states=(STATE.FAIL,))}
    assert sorted(failed) == sorted(reasons)
    for number, reason in reasons.items():
        assert reason in failed[number].user_attrs["fail_reason"]
        retried = [t for t in study.trials if t.system_attrs.get("failed_trial") == number]
        assert len(retried) == 1 and retried[0].params == failed[number].params


def test_dead_workers_trial_on_another_machine_is_failed_after_the_grace_period(fake):
    config = _config(trials=3)
    run(config, max_trials=0)  # set up: baseline measured, three slots queued
    # one worker elsewhere dies after its first heartbeat, another one between its
    # claim and its first heartbeat
    dead = [_claim_and_die(config, "elsewhere:1"), _claim_and_die(config, heartbeat=False)]
    started = time.monotonic()
    summary = run(config)  # waits for the two until their grace (3 s) is over
    assert time.monotonic() - started > 2.0
    study = _study(config)
    assert summary.completed == 3
    assert _slots(study) == [0, 1, 2]
    _check_retried(
        study,
        {
            dead[0]: "worker elsewhere:1 sent no heartbeat for 3 s",
            dead[1]: "claimed by a worker that stopped before it started",
        },
    )


def test_a_sweep_restarted_within_the_grace_period_retries_its_dead_trial(fake):
    config = _config(trials=3)
    run(config, max_trials=0)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    dead = _claim_and_die(config, f"{socket.gethostname()}:{gone.pid}")
    started = time.monotonic()
    summary = run(config)
    assert time.monotonic() - started < 3.0  # no wait for the heartbeat to go stale
    study = _study(config)
    assert summary.completed == 3 and _slots(study) == [0, 1, 2]
    _check_retried(study, {dead: "was killed (its process is gone)"})


def test_a_resumed_sampler_does_not_repeat_the_trials_it_drew(fake):
    config = _config(trials=6, parameters={"s1.sparsity": {"min": 0.0, "max": 0.75}})
    run(config, max_trials=2)
    run(config, max_trials=2)
    run(config)
    drawn = [t.params["s1.sparsity"] for t in _study(config).get_trials(states=(STATE.COMPLETE,))]
    assert len(drawn) == 6 and len(set(drawn)) == 6
    # ... and a fresh sweep with the same seed draws the same first trials
    again = _config(name="again", trials=2, parameters={"s1.sparsity": {"min": 0.0, "max": 0.75}})
    run(again)
    redrawn = [t.params["s1.sparsity"] for t in _study(again).get_trials(states=(STATE.COMPLETE,))]
    assert redrawn == drawn[:2]


def test_a_study_with_other_settings_is_refused(fake):
    run(_config(trials=1))
    with pytest.raises(Exception, match="exists with another 'parameters'"):
        run(_config(trials=1, parameters={"s1.sparsity": {"values": [0.1]}}))
    with pytest.raises(Exception, match="exists with objectives"):
        run(_config(trials=1, metric="top1"))


@pytest.mark.parametrize(
    ("method", "extra"),
    [
        ("grid", {}),
        ("random", {}),
        ("bayes", {}),
        ("gp", {"parameters": {"s1.sparsity": {"min": 0.0, "max": 0.75}}}),
        ("nsga2", {"metric": [{"name": "latency_ms"}, {"name": "top1"}]}),
    ],
)
def test_every_method_runs_its_budget(fake, method, extra):
    config = _config(name=method, trials=5, method=method, **extra)
    summary = run(config)
    study = _study(config)
    done = study.get_trials(states=(STATE.COMPLETE,))
    budget = 4 if method == "grid" else 5  # a grid stops at its size
    assert summary.completed == len(done) == budget
    assert all(len(t.values) == len(config.metrics) for t in done)
    if method == "grid":
        assert sorted(t.params["s1.sparsity"] for t in done) == [0.0, 0.25, 0.5, 0.75]


def test_a_storage_password_never_reaches_a_message(tmp_path):
    from edgetrain.errors import ConfigError
    from edgetrain.search.study import mask_url, open_storage

    assert mask_url("postgresql://ana:s3cret@db:5432/s") == "postgresql://ana:***@db:5432/s"
    assert mask_url("postgresql://ana@db/s") == "postgresql://ana@db/s"
    for url in ("postgresql://ana:s3cret@127.0.0.1:1/s", "http://ana:s3cret@host/s"):
        with pytest.raises(ConfigError) as err:
            open_storage(url)
        assert "s3cret" not in str(err.value) and "ana:***@" in str(err.value)
    blocked = tmp_path / "file"
    blocked.write_text("")
    with pytest.raises(ConfigError, match="cannot create the folder"):
        open_storage(f"sqlite:///{blocked}/sub/study.db")


def test_a_trial_pruner_stops_worse_trials_and_records_them_as_pruned(fake):
    config = _config(
        trials=8,
        method="grid",
        parameters={"s1.sparsity": {"values": [0.0, 0.25, 0.5, 0.75]}},
        trial_pruner={"name": "median", "options": {"n_startup_trials": 1}},
    )
    summary = run(config)
    study = _study(config)
    pruned = study.get_trials(states=(STATE.PRUNED,))
    complete = study.get_trials(states=(STATE.COMPLETE,))
    assert summary.pruned == len(pruned) >= 1 and summary.failed == 0
    assert len(pruned) + len(complete) == 4  # the grid's four points, each once
    assert study.trials[0].state == STATE.COMPLETE  # nothing to compare the first with
    for t in pruned:
        # Its last figures are kept; a minimised objective reports the top-1 error.
        assert t.user_attrs["pruned_at_epoch"] == 1  # worse than the median at epoch 1
        assert t.intermediate_values == {1: pytest.approx(100 - t.user_attrs["top1_at_pruning"])}
        assert t.params["s1.sparsity"] > study.trials[0].params["s1.sparsity"]
    assert fake.reported  # the reporter reached the candidate


@pytest.mark.parametrize(
    ("pruner", "needle"),
    [
        ({"name": "median", "options": {"patience": 2}}, "has no option 'patience'"),
        ({"name": "asha"}, "unknown trial pruner 'asha'"),
    ],
)
def test_bad_trial_pruners_are_refused_at_load(pruner, needle):
    from edgetrain.errors import ConfigError

    with pytest.raises(ConfigError, match=needle):
        _config(trial_pruner=pruner)


def test_a_multi_objective_sweep_cannot_prune():
    from edgetrain.errors import ConfigError

    with pytest.raises(ConfigError, match="cannot prune multi-objective studies"):
        _config(
            method="nsga2",
            metric=[{"name": "latency_ms"}, {"name": "top1", "goal": "maximize"}],
            trial_pruner={"name": "hyperband"},
        )
