"""Shared fixtures: a tiny synthetic classification data set, a tiny network, and a tiny
ResNet run trained on the digits by ``edgetrain train``."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
import torch
from torch import nn

from edgetrain.data import ArrayDataset, DatasetInfo

DatasetFactory = Callable[..., ArrayDataset]
ModelFactory = Callable[..., nn.Module]


@pytest.fixture(scope="session", autouse=True)
def _edgetrain_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Generated data goes to a per-session folder, never to the user's cache."""
    folder = tmp_path_factory.mktemp("edgetrain-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EDGETRAIN_CACHE", str(folder))
        yield folder


TINY_RESNET = """
name: tiny
epochs: 3
data:
  name: digits
  batch_size: 32
model:
  name: resnet_cifar
  options: {stages: 1, blocks: [2], widths: [8], input_size: 8}
optimizer: {name: sgd, lr: 0.05, momentum: 0.9}
"""


@pytest.fixture(scope="session")
def _tiny_resnet_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from typer.testing import CliRunner

    from edgetrain.cli import app

    root = tmp_path_factory.mktemp("tiny-resnet")
    (root / "tiny.yaml").write_text(TINY_RESNET)
    args = ["train", str(root / "tiny.yaml"), "--runs-dir", str(root / "runs")]
    result = CliRunner().invoke(app, [*args, "--no-progress", "--no-report"])
    assert result.exit_code == 0, result.output
    return root / "runs" / "tiny"


@pytest.fixture(scope="session")
def copy_tiny_resnet_run(_tiny_resnet_run: Path) -> Callable[[Path], Path]:
    """``copy(folder)`` puts a copy of one tiny trained ResNet run (a one-stage
    ``resnet_cifar`` on 8x8 digits, 3 epochs, trained once per session) at
    ``folder/runs/tiny`` and returns that path."""

    def copy(folder: Path) -> Path:
        target = folder / "runs" / "tiny"
        shutil.copytree(_tiny_resnet_run, target)
        return target

    return copy


@pytest.fixture
def single_thread() -> Iterator[None]:
    """One intra-op thread: tiny models train faster and leave the other core free."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _blobs(
    n: int,
    num_classes: int = 4,
    shape: Sequence[int] = (1, 8, 8),
    seed: int = 0,
    noise: float = 1.0,
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> ArrayDataset:
    # Class prototypes depend on the class count and shape only, so splits drawn with
    # different seeds are the same task.
    prototypes = torch.randn(num_classes, *shape, generator=torch.Generator().manual_seed(1234))
    g = torch.Generator().manual_seed(seed)
    targets = torch.arange(n) % num_classes
    targets = targets[torch.randperm(n, generator=g)]
    inputs = prototypes[targets] + noise * torch.randn(n, *shape, generator=g)
    info = DatasetInfo(
        name="blobs",
        task="classification",
        input_shape=tuple(shape),
        classes=tuple(f"c{i}" for i in range(num_classes)),
        split_sizes={"train": n, "test": n},
        source="synthetic Gaussian blobs (tests)",
    )
    return ArrayDataset(inputs, targets, info, transform)


@pytest.fixture
def make_blobs() -> DatasetFactory:
    """``make_blobs(n, num_classes=4, shape=(1, 8, 8), seed=0, noise=1.0, transform=None)``.

    Gaussian blobs around one random prototype per class: easy to learn, but not solved
    before the first step.
    """
    return _blobs


class TinyNet(nn.Module):
    """conv 4 -> batch-norm -> ReLU -> dropout -> linear: every stateful part in miniature."""

    def __init__(self, in_shape: Sequence[int], num_classes: int, dropout: float) -> None:
        super().__init__()
        c, *spatial = in_shape
        self.conv = nn.Conv2d(c, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(4 * spatial[0] * spatial[1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.drop(torch.relu(self.bn(self.conv(x))))
        return self.fc(x.flatten(1))


@pytest.fixture
def make_tiny_net() -> ModelFactory:
    """``make_tiny_net(num_classes=4, in_shape=(1, 8, 8), dropout=0.0, seed=0)``."""

    def build(
        num_classes: int = 4,
        in_shape: Sequence[int] = (1, 8, 8),
        dropout: float = 0.0,
        seed: int = 0,
    ) -> nn.Module:
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            return TinyNet(in_shape, num_classes, dropout)

    return build


@pytest.fixture
def tiny_data(make_blobs: DatasetFactory) -> tuple[ArrayDataset, ArrayDataset]:
    """A 4-class train split of 64 samples and a validation split of 32."""
    return make_blobs(64, seed=0), make_blobs(32, seed=1)
