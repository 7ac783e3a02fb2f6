"""Does a model fit a device's memory? Inference and training steps against a profile's
SRAM and flash.

A microcontroller keeps its weights in flash (``weights_in: flash``, the usual case: the
weights are constants of the program image and are read in place) or copies them to
SRAM (``weights_in: sram``). What each needs:

- **flash**: every weight (the program image holds them either way) plus
  ``reserved_flash_bytes`` (the code).
- **SRAM**: the step's peak memory (the cost model's accounting: activations, the
  input, gradients, optimizer state, every weight) less the weights that may stay in
  flash (all of them for inference; the frozen ones for a training step: the weights a
  step updates must be in SRAM), plus ``reserved_sram_bytes`` (stack, runtime, I/O).

Bytes per element are the profile's (4 for an FP32 profile). The margin is what is left
(negative: over by that much).

Example:
    >>> from edgetrain.cost import analyze, load_profile
    >>> from edgetrain.models import create
    >>> p = load_profile("stm32f746")
    >>> r = analyze(create("ds_cnn"), (1, 49, 10), plans=["last:1"], profile=p)
    >>> [f.fits for f in memory_fit(r)]
    [True, True]
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from edgetrain.errors import EdgetrainError

if TYPE_CHECKING:
    from edgetrain.cost.profile import DeviceProfile
    from edgetrain.cost.report import CostReport, StepCost

__all__ = ["MemoryFit", "memory_fit", "step_fit"]


@dataclass(frozen=True)
class MemoryFit:
    """SRAM and flash one step (or inference) needs on a device, and whether it fits."""

    what: str
    device: str
    sram_needed: int
    flash_needed: int
    sram_bytes: int | None
    flash_bytes: int | None

    @property
    def sram_margin(self) -> int | None:
        return None if self.sram_bytes is None else self.sram_bytes - self.sram_needed

    @property
    def flash_margin(self) -> int | None:
        return None if self.flash_bytes is None else self.flash_bytes - self.flash_needed

    @property
    def fits(self) -> bool:
        """Both memories hold what they must (a memory the profile does not limit fits)."""
        return all(m is None or m >= 0 for m in (self.sram_margin, self.flash_margin))

    def summary(self) -> str:
        """One line: needed vs available, with the margin."""
        parts = []
        for label, need, have, margin in (
            ("SRAM", self.sram_needed, self.sram_bytes, self.sram_margin),
            ("flash", self.flash_needed, self.flash_bytes, self.flash_margin),
        ):
            if have is None:
                parts.append(f"{label} {_size(need)} (not limited)")
            else:
                word = "left" if margin is not None and margin >= 0 else "over"
                parts.append(
                    f"{label} {_size(need)} of {_size(have)} ({_size(abs(margin or 0))} {word})"
                )
        verdict = "fits" if self.fits else "does not fit"
        return f"{self.what} {verdict} on {self.device}: " + ", ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "sram_margin": self.sram_margin,
            "flash_margin": self.flash_margin,
            "fits": self.fits,
        }


def _size(n: int) -> str:
    return f"{n:,} B" if n < 1024 else f"{n / 1024:,.1f} KiB"


def step_fit(step: StepCost, profile: DeviceProfile) -> MemoryFit:
    """What ``step`` (a training step or inference) needs of ``profile``'s memories.

    Raises:
        EdgetrainError: the profile gives neither an SRAM nor a flash size.
    """
    if profile.sram_bytes is None and profile.flash_bytes is None:
        raise EdgetrainError(
            f"profile '{profile.name}' gives no memory sizes; use a device profile with "
            "sram_bytes and flash_bytes (e.g. stm32f303k8, stm32f746) or add them to it"
        )
    frozen = step.weights_bytes - step.trained_weights_bytes
    in_flash = frozen if profile.weights_in == "flash" else 0
    return MemoryFit(
        what=step.plan,
        device=profile.name,
        sram_needed=step.memory_reuse_bytes - in_flash + profile.reserved_sram_bytes,
        flash_needed=step.weights_bytes + profile.reserved_flash_bytes,
        sram_bytes=profile.sram_bytes,
        flash_bytes=profile.flash_bytes,
    )


def memory_fit(report: CostReport) -> list[MemoryFit]:
    """Inference, then every step of the report, against the report's profile."""
    return [step_fit(s, report.profile) for s in (report.inference, *report.steps())]
