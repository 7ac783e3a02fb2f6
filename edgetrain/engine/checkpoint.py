"""Checkpoint files: atomic writes and safe, explained loading.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts, so it loads
with ``torch.load(weights_only=True)``: no code is ever unpickled. Writes go to a
temporary file in the same folder followed by ``os.replace``, so a crash mid-write
leaves the previous checkpoint intact and never a truncated file under the final name.
"""

from __future__ import annotations

import io
import os
import pickle
import pickletools
import warnings
import zipfile
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
    "load_weights",
    "in_modules",
    "resolve_checkpoint",
    "safe_load",
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


def safe_load(p: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> Any:
    """``torch.load(weights_only=True)`` with every failure explained in one line: a file
    whose pickle names code (``os.system``, a class) is *refused*, naming what it holds;
    bytes that are no pickle at all are *corrupted or truncated*."""
    p = Path(p)
    try:
        with warnings.catch_warnings():
            # torch notes any pickle protocol it did not write; the error below says more
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(p, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise _unpickling_failure(p, exc) from None
    except Exception as exc:  # torch's unpickler raises many types on damaged bytes
        raise _corrupted(p, exc) from exc


# What torch's weights-only unpickler itself allows besides torch's own names.
_PLAIN_GLOBALS = frozenset(
    {
        "collections.OrderedDict",
        "builtins.set",
        "builtins.frozenset",
        "builtins.bytearray",
        "builtins.slice",
        "builtins.complex",
        "_codecs.encode",
    }
)


def _pickle_globals(p: Path) -> list[str] | None:
    """``module.name`` of every global the file's pickle would look up, read without
    running it (``pickletools``); None when the bytes are no complete pickle."""
    try:
        if zipfile.is_zipfile(p):  # torch's format: the pickle is one member of a zip
            with zipfile.ZipFile(p) as archive:
                members = [n for n in archive.namelist() if n.endswith("data.pkl")]
                if not members:
                    return None
                data = archive.read(members[0])
        else:
            data = p.read_bytes()
        names: list[str] = []
        strings: list[str] = []
        for op, arg, _ in pickletools.genops(io.BytesIO(data)):
            if op.name in ("GLOBAL", "INST"):
                names.append(str(arg).replace(" ", "."))
            elif op.name == "STACK_GLOBAL":
                names.append(".".join(strings[-2:]) if len(strings) >= 2 else "?")
            elif isinstance(arg, str):
                strings.append(arg)
        return names
    except Exception:  # not a pickle: random or truncated bytes
        return None


def _unpickling_failure(p: Path, exc: BaseException) -> CheckpointError:
    names = _pickle_globals(p)
    if names is None:
        return _corrupted(p, exc)
    foreign = sorted({n for n in names if not n.startswith("torch.") and n not in _PLAIN_GLOBALS})
    if foreign:
        shown = ", ".join(foreign[:3]) + (
            f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
        )
        return CheckpointError(
            f"checkpoint '{p}' refused: it contains objects that are not plain tensors and "
            f"data ({shown}), so torch.load(weights_only=True) did not load it; re-save it as a "
            "state_dict"
        )
    return CheckpointError(
        f"checkpoint '{p}' cannot be read with weights_only=True (a pickle torch's safe "
        "loader does not support); re-save it with torch.save(model.state_dict(), path)"
    )


def load_checkpoint(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> dict:
    """Load an edgetrain checkpoint with ``weights_only=True``, explaining every failure."""
    p = resolve_checkpoint(path)
    obj = safe_load(p, map_location)
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise CheckpointError(
            f"'{p}' is not an edgetrain checkpoint (expected format {FORMAT}); "
            "load plain state_dicts with torch.load"
        )
    return obj


# Prefixes wrappers add to every key: DistributedDataParallel, torch.compile.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def load_weights(
    path: str | os.PathLike[str], map_location: str | torch.device = "cpu"
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The model weights in a file, whatever saved them, with ``weights_only=True``.

    Accepts an edgetrain checkpoint (or its run directory), a plain ``state_dict``, or a
    dict holding one under ``state_dict`` or ``model`` (as many training scripts save);
    ``module.`` (DistributedDataParallel) and ``_orig_mod.`` (``torch.compile``) prefixes
    on every key are removed.

    Returns:
        ``(state_dict, architecture)``: the architecture record of an edgetrain
        checkpoint (pruned or grown shapes), ``{}`` for other files.

    Raises:
        CheckpointError: a missing, damaged or unsafe file, or one holding no weights.
    """
    p = resolve_checkpoint(path, prefer="best")
    obj = safe_load(p, map_location)
    architecture: dict[str, Any] = {}
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        state, architecture = obj["model"], dict(obj.get("architecture") or {})
    elif isinstance(obj, dict) and _is_state(obj.get("state_dict")):
        state = obj["state_dict"]
    elif isinstance(obj, dict) and _is_state(obj.get("model")):
        state = obj["model"]
    elif _is_state(obj):
        state = obj
    else:
        keys = ", ".join(map(str, list(obj)[:6])) if isinstance(obj, dict) else type(obj).__name__
        raise CheckpointError(
            f"'{p}' holds no model weights (found: {keys}); pass a state_dict, a dict with "
            "a 'state_dict' or 'model' entry, or an edgetrain checkpoint"
        )
    for prefix in _WRAPPER_PREFIXES:
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    return state, architecture


def _is_state(obj: Any) -> bool:
    """A non-empty mapping of names to tensors (a ``state_dict``)."""
    return (
        isinstance(obj, dict)
        and bool(obj)
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    )


def _corrupted(path: Path, exc: BaseException) -> CheckpointError:
    return CheckpointError(
        f"checkpoint '{path}' is corrupted or truncated ({type(exc).__name__}); "
        "use another checkpoint or re-run the epoch that wrote it"
    )


def in_modules(key: str, modules: tuple[str, ...]) -> bool:
    """Whether state key ``key`` belongs to one of the named modules (not a name prefix)."""
    return any(key == m or key.startswith(m + ".") for m in modules)


def _listed(what: str, names: list[str], limit: int = 3) -> str:
    shown = ", ".join(f"'{n}'" if what != "shape" else n for n in names[:limit])
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return f"{what} {shown}{more}"


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
        parts = [
            _listed(what, names)
            for what, names in (
                ("shape", mismatched),
                ("missing", missing),
                ("unexpected", unexpected),
            )
            if names
        ]
        raise CheckpointError(
            f"checkpoint '{source}' was saved for another architecture ({'; '.join(parts)}); "
            "use a checkpoint of this model, or exclude differing layers (model.init_exclude)"
        )
    model.load_state_dict(state, strict=not exclude)
