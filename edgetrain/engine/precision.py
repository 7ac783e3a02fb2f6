"""Mixed precision: autocast for the forward pass, FP32 master weights, loss scaling.

``precision`` is ``"32"`` (plain FP32), ``"16-mixed"`` (float16 autocast; dynamic loss
scaling on CUDA) or ``"bf16-mixed"`` (bfloat16 autocast; no scaling needed). Weights and
optimizer state stay FP32 either way. Where the device has no fast path for the chosen
type, training still works but a one-time warning says it will not be faster.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from typing import Any

import torch

from edgetrain.errors import ConfigError

__all__ = ["PRECISIONS", "Precision", "speedup_note"]

PRECISIONS = ("32", "16-mixed", "bf16-mixed")
_warned: set[tuple[str, str]] = set()


def speedup_note(precision: str, device: torch.device) -> str | None:
    """Why ``precision`` brings no speed-up on ``device``, or None when it should."""
    if precision == "32":
        return None
    if device.type == "cuda":
        major, _ = torch.cuda.get_device_capability(device)
        if precision == "16-mixed" and major < 7:
            return f"{torch.cuda.get_device_name(device)} has no float16 tensor cores"
        if precision == "bf16-mixed" and not torch.cuda.is_bf16_supported():
            return f"{torch.cuda.get_device_name(device)} has no native bfloat16"
        return None
    if device.type == "cpu":
        capability = torch.backends.cpu.get_cpu_capability()
        if precision == "bf16-mixed" and "AMX" not in capability.upper():
            return f"this CPU ({capability}) has no AMX bfloat16 units"
        if precision == "16-mixed":
            return f"float16 matrix kernels on CPU ({capability}) are not faster than FP32"
        return None
    return f"no mixed-precision fast path is known for device '{device.type}'"


class Precision:
    """The autocast context and gradient scaler of one Trainer.

    Example:
        >>> p = Precision("32", torch.device("cpu"))
        >>> p.enabled
        False
    """

    def __init__(self, precision: str, device: torch.device) -> None:
        if precision not in PRECISIONS:
            raise ConfigError(
                f"unknown precision '{precision}'; choose one of: {', '.join(PRECISIONS)}"
            )
        self.precision, self.device = precision, device
        self.enabled = precision != "32"
        self.dtype = torch.bfloat16 if precision == "bf16-mixed" else torch.float16
        scale = precision == "16-mixed" and device.type == "cuda"
        self.scaler = torch.amp.GradScaler(device.type) if scale else None
        note = speedup_note(precision, device)
        if note is not None and (precision, str(device)) not in _warned:
            _warned.add((precision, str(device)))
            warnings.warn(
                f"--precision {precision} brings no speed-up here: {note}; training runs, "
                "but use --precision 32 for speed",
                RuntimeWarning,
                stacklevel=3,
            )

    @contextlib.contextmanager
    def autocast(self) -> Iterator[None]:
        with torch.autocast(self.device.type, dtype=self.dtype):
            yield

    def backward(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
        """Backward (scaled when a scaler is used), leaving unscaled gradients for hooks."""
        if self.scaler is None:
            loss.backward()
            return
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(optimizer)

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.scaler is None:
            optimizer.step()
            return
        self.scaler.step(optimizer)  # skipped when gradients overflowed
        self.scaler.update()

    def state_dict(self) -> dict[str, Any]:
        return {} if self.scaler is None else self.scaler.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)
