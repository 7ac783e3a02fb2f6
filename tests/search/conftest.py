"""A tiny trained run and sweep files shared by the search tests."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from edgetrain.cli import app

pytest.importorskip("optuna")
pytest.importorskip("torch_pruning")
pytest.importorskip("onnxruntime")

TRAIN = """
name: tiny
epochs: 2
data:
  name: digits
  batch_size: 32
model:
  name: resnet_cifar
  options: {stages: 1, blocks: [2], widths: [8], input_size: 8}
optimizer: {name: sgd, lr: 0.05, momentum: 0.9}
"""

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
def sweep_root(tmp_path_factory):
    """A folder with a trained run (runs/tiny), recipe.yaml and reference.yaml."""
    root = tmp_path_factory.mktemp("sweep")
    (root / "tiny.yaml").write_text(TRAIN)
    (root / "recipe.yaml").write_text(RECIPE)
    (root / "reference.yaml").write_text(REFERENCE)
    args = ["train", str(root / "tiny.yaml"), "--runs-dir", str(root / "runs")]
    result = CliRunner().invoke(app, [*args, "--no-progress", "--no-report"])
    assert result.exit_code == 0, result.output
    return root
