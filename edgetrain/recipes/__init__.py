"""Built-in recipes (YAML run configs) shipped with the package.

``recipes/`` at the repository root points here, so ``edgetrain train
recipes/digits-pretrain.yaml`` and ``edgetrain train digits-pretrain`` name the same file.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

__all__ = ["list_recipes", "recipe_path"]


def list_recipes() -> list[str]:
    """Names of the shipped recipes (file stems)."""
    root = resources.files(__name__)
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".yaml"))


def recipe_path(name: str) -> Path | None:
    """Path of the shipped recipe ``name`` (with or without ``.yaml``), or None."""
    stem = name[:-5] if name.endswith(".yaml") else name
    candidate = resources.files(__name__) / f"{stem}.yaml"
    return Path(str(candidate)) if candidate.is_file() else None
