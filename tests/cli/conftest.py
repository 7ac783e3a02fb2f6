from __future__ import annotations

import pytest
from typer.testing import CliRunner

from edgetrain.cli import app


@pytest.fixture
def cli(monkeypatch, tmp_path):
    """Invoke ``edgetrain`` in a temporary working folder; returns ``run(*args)``."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "200")
    runner = CliRunner()

    def run(*args: str, code: int | None = 0):
        result = runner.invoke(app, list(args))
        if code is not None:
            assert result.exit_code == code, (result.output, result.exception)
        return result

    return run


TINY_RECIPE = """
name: tiny
epochs: 2
data:
  name: digits
  batch_size: 16
model:
  name: vgg_small
  options: {input_size: 8}
optimizer: {name: sgd, lr: 0.02, momentum: 0.9}
"""


@pytest.fixture
def tiny_recipe(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY_RECIPE)
    return path
