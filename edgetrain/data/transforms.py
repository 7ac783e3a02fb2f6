"""Input transforms: the scenario-1 domain shift and random crop/flip augmentation.

Augmentations act on one sample ``(C, H, W)`` (or ``(C, L)`` for 1-D signals) and draw
from torch's global generator, which the Trainer seeds per epoch, so runs are repeatable.
Domain shifts act on a whole batch tensor once, when the data set is created.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from edgetrain.errors import ConfigError
from edgetrain.registry import Registry

__all__ = [
    "AUGMENTATIONS",
    "SHIFTS",
    "Compose",
    "RandomCrop",
    "RandomHorizontalFlip",
    "build_augmentation",
    "rotate180_invert",
]

Transform = Callable[[torch.Tensor], torch.Tensor]

SHIFTS: Registry[torch.Tensor] = Registry("domain shift")
AUGMENTATIONS: Registry[Transform] = Registry("augmentation")


@SHIFTS.register("rotate180-invert")
def rotate180_invert(images: torch.Tensor) -> torch.Tensor:
    """Rotate images by 180 degrees and invert intensities (inputs in [0, 1])."""
    return 1.0 - torch.flip(images, dims=(-2, -1))


class Compose:
    """Apply transforms in order."""

    def __init__(self, transforms: Sequence[Transform]) -> None:
        self.transforms = list(transforms)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        for t in self.transforms:
            x = t(x)
        return x

    def __repr__(self) -> str:
        return f"Compose({self.transforms!r})"


class RandomCrop:
    """Zero-pad by ``padding`` on every spatial side, then crop the original size at random."""

    def __init__(self, padding: int = 4) -> None:
        if padding < 0:
            raise ValueError(f"padding must be >= 0, got {padding}")
        self.padding = padding

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        p = self.padding
        if p == 0:
            return x
        spatial = x.shape[1:]
        padded = F.pad(x, [p, p] * len(spatial))
        offsets = torch.randint(0, 2 * p + 1, (len(spatial),)).tolist()
        index = tuple(slice(o, o + n) for o, n in zip(offsets, spatial, strict=True))
        return padded[(slice(None),) + index]

    def __repr__(self) -> str:
        return f"RandomCrop(padding={self.padding})"


class RandomHorizontalFlip:
    """Flip the last axis with probability ``p``."""

    def __init__(self, p: float = 0.5) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be in [0, 1], got {p}")
        self.p = p

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if torch.rand(()) < self.p:
            return torch.flip(x, dims=(-1,))
        return x

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"


@AUGMENTATIONS.register("crop")
def _crop(padding: int = 4) -> Transform:
    """Random crop after zero padding."""
    return RandomCrop(padding)


@AUGMENTATIONS.register("flip")
def _flip(p: float = 0.5) -> Transform:
    """Random horizontal flip."""
    return RandomHorizontalFlip(p)


def build_augmentation(spec: Sequence[str | dict] | None) -> Transform | None:
    """Build an augmentation pipeline from names or ``{name: ..., **options}`` dicts.

    Example:
        >>> build_augmentation(["flip", {"name": "crop", "padding": 2}])
        Compose([RandomHorizontalFlip(p=0.5), RandomCrop(padding=2)])
    """
    if not spec:
        return None
    steps: list[Transform] = []
    for item in spec:
        if isinstance(item, str):
            steps.append(AUGMENTATIONS.create(item))
        else:
            options = dict(item)
            if "name" not in options:
                raise ConfigError(
                    f"augmentation {item!r} needs a 'name' ({', '.join(AUGMENTATIONS.names())})"
                )
            name = options.pop("name")
            steps.append(AUGMENTATIONS.create(name, **options))
    return Compose(steps)
