"""Activation-cell pictures: a 2-D plane coloured by the activation pattern at a layer.

A ReLU network cuts its input space into cells on which every unit keeps its on/off
state; inside a cell the network is affine (Montufar et al., "On the Number of Linear
Regions of Deep Neural Networks", NeurIPS 2014; Hanin & Rolnick, "Deep ReLU Networks
Have Surprisingly Few Activation Patterns", NeurIPS 2019). For a network with 2-D
inputs the grid is the input plane itself; for a real input space it is the plane
through three data points ``a, b, c``: ``x(u, v) = a + u (b - a) + v (c - a)``, with the
points at ``(0, 0)``, ``(1, 0)`` and ``(0, 1)``.

Every grid point gets the hash of its pattern (:func:`hash_words`), so the colours of a
picture are stable across runs and the count of cells is the count of distinct hashes.

Example:
    >>> import torch
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Linear(2, 2), nn.ReLU())
    >>> with torch.no_grad():
    ...     _ = net[0].weight.copy_(torch.eye(2)), net[0].bias.zero_()
    >>> activation_cells(net, resolution=64).patterns  # the four quadrants
    4
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgetrain._modules import eval_mode
from edgetrain.diagnostics.patterns import capture_patterns, hash_words
from edgetrain.diagnostics.sites import activation_layers, no_activation_message
from edgetrain.errors import ConfigError

__all__ = ["CellPicture", "activation_cells", "count_regions", "plot_cells"]


@dataclass(frozen=True)
class CellPicture:
    """A grid of activation-pattern hashes over a plane.

    Attributes:
        keys: ``(resolution, resolution)`` int64 pattern hashes, row ``i`` at ``v[i]``.
        u, v: the grid's coordinates along its two axes.
        layers: the activation layers whose patterns make a cell.
        points: plane coordinates of the three data points (``None`` for 2-D inputs).
    """

    keys: np.ndarray
    u: np.ndarray
    v: np.ndarray
    layers: tuple[str, ...]
    points: np.ndarray | None = None

    @property
    def patterns(self) -> int:
        """Distinct activation patterns on the grid."""
        return len(np.unique(self.keys))

    @property
    def regions(self) -> int:
        """Connected areas of constant pattern on the grid (4-neighbourhood)."""
        return count_regions(self.keys)


def count_regions(keys: np.ndarray) -> int:
    """Connected components of equal values in a 2-D array (4-neighbourhood).

    Labels start as the pixel index and take the smallest label of an equal neighbour
    until nothing changes, then follow label chains (pointer jumping) to converge fast.
    """
    h, w = keys.shape
    labels = np.arange(h * w).reshape(h, w)
    same_down = keys[1:, :] == keys[:-1, :]
    same_right = keys[:, 1:] == keys[:, :-1]
    while True:
        new = labels.copy()
        new[1:, :] = np.where(same_down, np.minimum(new[1:, :], new[:-1, :]), new[1:, :])
        new[:-1, :] = np.where(same_down, np.minimum(new[:-1, :], new[1:, :]), new[:-1, :])
        new[:, 1:] = np.where(same_right, np.minimum(new[:, 1:], new[:, :-1]), new[:, 1:])
        new[:, :-1] = np.where(same_right, np.minimum(new[:, :-1], new[:, 1:]), new[:, :-1])
        flat = new.reshape(-1)
        flat = flat[flat]  # pointer jumping: a label takes its label's label
        new = flat.reshape(h, w)
        if np.array_equal(new, labels):
            return len(np.unique(labels))
        labels = new


def _layers_up_to(
    model: nn.Module, layer: str | None, cumulative: bool, input_shape: Sequence[int]
) -> list[str]:
    names = list(activation_layers(model, input_shape=input_shape))
    if not names:
        raise ConfigError(no_activation_message(model))
    target = names[-1] if layer is None else layer
    if target not in names:
        raise ConfigError(
            f"'{target}' is not an activation layer; valid layers: {', '.join(names)}"
        )
    return names[: names.index(target) + 1] if cumulative else [target]


@torch.no_grad()
def activation_cells(
    model: nn.Module,
    layer: str | None = None,
    *,
    points: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    bounds: tuple[float, float, float, float] | None = None,
    resolution: int = 256,
    cumulative: bool = False,
    batch_size: int = 4096,
) -> CellPicture:
    """Hash the activation pattern at every point of a grid.

    Args:
        model: the network (run in eval mode for the picture; its mode is restored).
        layer: activation layer whose pattern defines a cell (default: the last one).
        points: three inputs spanning the plane; None for a network with 2-D inputs.
        bounds: ``(u_min, u_max, v_min, v_max)`` of the grid; default ``(-1, 1, -1, 1)``
            for 2-D inputs and ``(-0.5, 1.5, -0.5, 1.5)`` around three points.
        resolution: grid points per axis.
        cumulative: a cell is the pattern of every activation layer up to ``layer``
            (the linear regions of the network up to there), not of ``layer`` alone.
        batch_size: grid points per forward pass.
    """
    if resolution < 2:
        raise ConfigError(f"resolution must be >= 2, got {resolution}")
    shape = (2,) if points is None else tuple(points[0].shape)
    names = _layers_up_to(model, layer, cumulative, shape)
    if bounds is None:
        bounds = (-1.0, 1.0, -1.0, 1.0) if points is None else (-0.5, 1.5, -0.5, 1.5)
    u = np.linspace(bounds[0], bounds[1], resolution)
    v = np.linspace(bounds[2], bounds[3], resolution)
    uu, vv = np.meshgrid(u, v)
    coords = torch.from_numpy(np.stack([uu.reshape(-1), vv.reshape(-1)], 1)).float()
    device = next(model.parameters(), torch.empty(0)).device
    if points is None:
        inputs = coords
        marks = None
    else:
        a, b, c = (p.detach().float().cpu() for p in points)
        if not a.shape == b.shape == c.shape:
            raise ConfigError(f"the three points differ in shape: {a.shape}, {b.shape}, {c.shape}")
        basis = torch.stack([(b - a).reshape(-1), (c - a).reshape(-1)])
        inputs = (a.reshape(-1) + coords @ basis).reshape(-1, *a.shape)
        marks = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    with eval_mode(model):
        keys = []
        for chunk in inputs.split(batch_size):
            words = capture_patterns(model, chunk.to(device), names)
            missing = [n for n in names if n not in words]
            if missing:
                raise ConfigError(f"activation layer '{missing[0]}' was not called in forward")
            keys.append(_point_keys([words[n] for n in names], len(chunk)))
    grid = torch.cat(keys).cpu().numpy().reshape(resolution, resolution)
    return CellPicture(grid, u, v, tuple(names), marks)


def _point_keys(words: list[torch.Tensor], points: int) -> torch.Tensor:
    """One hash per grid point from its words at every layer (conv layers contribute the
    words of every position of the point)."""
    per_point = [w.reshape(points, -1) for w in words]
    return hash_words(torch.cat(per_point, dim=1))


def _colours(keys: np.ndarray) -> np.ndarray:
    """An RGB colour per hash: three bytes of the key, lifted away from black."""
    k = keys.astype(np.int64).view(np.uint64)
    rgb = np.stack([(k >> np.uint64(s)) & np.uint64(255) for s in (8, 24, 40)], -1)
    return 0.25 + 0.75 * rgb.astype(np.float64) / 255.0


def plot_cells(
    picture: CellPicture, path: str | os.PathLike[str], title: str | None = None
) -> Path:
    """Draw a :class:`CellPicture` (one colour per pattern) to a PNG; returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(5, 5))
    extent = (picture.u[0], picture.u[-1], picture.v[0], picture.v[-1])
    ax.imshow(_colours(picture.keys), origin="lower", extent=extent, interpolation="nearest")
    if picture.points is not None:
        ax.scatter(picture.points[:, 0], picture.points[:, 1], c="black", s=30, marker="x")
        for (x, y), label in zip(picture.points, "abc", strict=True):
            ax.annotate(label, (x, y), textcoords="offset points", xytext=(4, 4))
    layers = picture.layers[0] if len(picture.layers) == 1 else f"up to {picture.layers[-1]}"
    ax.set_title(
        title
        or f"activation cells at {layers}: {picture.patterns} patterns, {picture.regions} regions",
        fontsize=9,
    )
    ax.set_xlabel("u")
    ax.set_ylabel("v")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
