"""A tiny trained run and sweep files shared by the search tests."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

pytest.importorskip("optuna")
pytest.importorskip("torch_pruning")
pytest.importorskip("onnxruntime")

RECIPE = """
version: 1
pruners:
  inner: {method: l1_filter, sparsity: 0.5, layers: ["layer1.*.conv1"]}
finetune: {epochs: 1, lr: 0.01}
"""

REFERENCE = """
version: 1
pruners:
  inner: {method: l1_filter, sparsity: 0.25, layers: ["layer1.*.conv1"]}
"""


def sweep_yaml(name: str, trials: int = 4, method: str = "random", extra: str = "") -> str:
    return f"""
name: {name}
method: {method}
metric: {{name: latency_ms}}
constraints: [{{name: top1_drop, max: 50}}]
parameters:
  inner.sparsity: {{min: 0.0, max: 0.9}}
  finetune.epochs: {{values: [0]}}
budget: {{trials: {trials}}}
recipe: recipe.yaml
model: runs/tiny
runtime: {{runs: 5, repeats: 1, warmup: 1}}
{extra}
"""


@pytest.fixture(scope="session")
def sweep_root(tmp_path_factory, copy_tiny_resnet_run):
    """A folder with a trained run (runs/tiny), recipe.yaml and reference.yaml."""
    root = tmp_path_factory.mktemp("sweep")
    copy_tiny_resnet_run(root)
    (root / "recipe.yaml").write_text(RECIPE)
    (root / "reference.yaml").write_text(REFERENCE)
    return root


SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "postgres.sh"


@pytest.fixture(scope="session")
def postgres_url():
    """A throw-away PostgreSQL server on loopback (scripts/postgres.sh); skips the test
    when it cannot be installed or started here."""
    proc = subprocess.run(
        ["bash", str(SCRIPT), "start"], capture_output=True, text=True, timeout=900
    )
    if proc.returncode != 0:
        reason = (proc.stderr.strip().splitlines() or ["no message"])[-1]
        print(f"PostgreSQL unavailable: {reason}")
        pytest.skip(f"PostgreSQL cannot be installed or started here: {reason}")
    url, folder = proc.stdout.split()[-2:]
    yield url
    subprocess.run(["bash", str(SCRIPT), "stop", folder], capture_output=True, timeout=120)
