"""Checkpoint files: atomic writes and safe, explained loading.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts, so it loads
with ``torch.load(weights_only=True)``: no code is ever unpickled. Writes go to a
temporary file in the same folder followed by ``os.replace``, so a crash mid-write
leaves the previous checkpoint intact and never a truncated file under the final name.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgetrain._atomic import atomic_writer
from edgetrain.errors import CheckpointError

__all__ = [
    "FORMAT",
    "atomic_save",
    "load_checkpoint",
    "load_model_weights",
    "in_modules",
    "resolve_checkpoint",
]

FORMAT = "edgetrain-checkpoint/1"


def atomic_save(obj: Any, path: str | os.PathLike[str]) -> Path:
    """``torch.save`` to a temporary file next to ``path``, then rename it into place."""
    with atomic_writer(path, "wb") as f:
        torch.save(obj, f)
    return Path(path)


def resolve_checkpoint(path: str | os.PathLike[str], prefer: str = "best") -> Path:
    """A checkpoint file from a file path or a run directory.

    For a run directory, ``checkpoints/<prefer>.pt`` is used, falling back to ``last.pt``.
    """
    p = Path(path)
    if p.is_dir():
        for name in (prefer, "last"):
            candidate = p / "checkpoints" / f"{name}.pt"
            if candidate.is_file():
                return candidate
        raise CheckpointError(
            f"no checkpoint in '{p}' (looked for checkpoints/{prefer}.pt and "
            "checkpoints/last.pt); pass a run directory that finished at least one epoch"
        )
    if not p.is_file():
        raise CheckpointError(
            f"checkpoint '{p}' does not exist; pass a .pt file or a run directory"
        )
    return p


def load_checkpoint(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> dict:
    """Load an edgetrain checkpoint with ``weights_only=True``, explaining every failure."""
    p = resolve_checkpoint(path)
    try:
        obj = torch.load(p, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        if "Unsupported global" in str(exc) or "Unsupported class" in str(exc):
            raise CheckpointError(
                f"checkpoint '{p}' holds objects other than tensors and plain data and was "
                "not loaded (weights_only=True); re-save it as a state_dict"
            ) from exc
        raise _corrupted(p, exc) from exc
    except Exception as exc:  # torch's unpickler raises many types on damaged bytes
        raise _corrupted(p, exc) from exc
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise CheckpointError(
            f"'{p}' is not an edgetrain checkpoint (expected format {FORMAT}); "
            "load plain state_dicts with torch.load"
        )
    return obj


def _corrupted(path: Path, exc: BaseException) -> CheckpointError:
    return CheckpointError(
        f"checkpoint '{path}' is corrupted or truncated ({type(exc).__name__}); "
        "use another checkpoint or re-run the epoch that wrote it"
    )


def in_modules(key: str, modules: tuple[str, ...]) -> bool:
    """Whether state key ``key`` belongs to one of the named modules (not a name prefix)."""
    return any(key == m or key.startswith(m + ".") for m in modules)


def load_model_weights(
    model: nn.Module,
    state: dict[str, torch.Tensor],
    source: str,
    exclude: tuple[str, ...] = (),
) -> None:
    """Load ``state`` into ``model``, with one clear line when the architecture differs.

    Args:
        model: the receiving model.
        state: a model ``state_dict``.
        source: where the state came from, for the error message.
        exclude: names of modules to leave untouched (e.g. a new classifier ``fc``;
            ``fc`` does not cover ``fc1``).
    """
    if exclude:
        state = {k: v for k, v in state.items() if not in_modules(k, exclude)}
    own = model.state_dict()
    unexpected = sorted(set(state) - set(own))
    missing = sorted(k for k in set(own) - set(state) if not in_modules(k, exclude))
    mismatched = [
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in state
        if k in own and state[k].shape != own[k].shape
    ]
    if unexpected or missing or mismatched:
        detail = (
            f"shape {mismatched[0]}"
            if mismatched
            else f"missing '{missing[0]}'"
            if missing
            else f"unexpected '{unexpected[0]}'"
        )
        raise CheckpointError(
            f"checkpoint '{source}' was saved for another architecture ({detail}); "
            "use a checkpoint of this model, or exclude differing layers (model.init_exclude)"
        )
    model.load_state_dict(state, strict=not exclude)
