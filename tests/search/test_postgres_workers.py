"""Two ``edgetrain sweep worker`` processes share one study on a real PostgreSQL server
(started on loopback by scripts/postgres.sh) and together run the budget exactly once."""

from __future__ import annotations

import os
import subprocess
import sys

import optuna
import pytest
from conftest import sweep_yaml

from edgetrain.search import open_storage

pytestmark = pytest.mark.postgres


def test_two_workers_share_one_study_without_losing_or_repeating_a_trial(sweep_root, postgres_url):
    pytest.importorskip("psycopg")
    budget = 8
    (sweep_root / "pg.yaml").write_text(sweep_yaml("pg", budget, "random"))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    cmd = [sys.executable, "-m", "edgetrain", "sweep", "worker", "pg.yaml"]
    workers = [
        subprocess.Popen(
            [*cmd, "--storage", postgres_url, "--no-progress", "--root", f"runs-{i}"],
            cwd=sweep_root,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    outputs = [w.communicate(timeout=600)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outputs

    study = optuna.load_study(study_name="pg", storage=open_storage(postgres_url))
    states = [t.state for t in study.trials]
    assert states == [optuna.trial.TrialState.COMPLETE] * budget, outputs
    assert sorted(t.user_attrs["slot"] for t in study.trials) == list(range(budget))
    by_worker = {t.user_attrs["worker"] for t in study.trials}
    assert len(by_worker) == 2, outputs  # both took part
    done = sum(int(o.split("this process: ")[1].split()[0]) for o in outputs)
    assert done == budget
