"""Device profiles: data (YAML/JSON) that turn raw counts into a calibrated estimate.

A profile holds per-term multipliers (optionally per layer kind, and, fitted to one
model, per layer), an additive offset per training step, optional per-op-call offsets,
optional per-parameter costs (a term that reads the weights or writes their gradient
moves every parameter once whatever the batch: on a cache-based CPU a large linear layer
at batch 1 is bound by that traffic, not by its MACs), bytes per element, the energy per
MAC (and per byte) and the target's peak MAC/s for a time estimate. A microcontroller's
profile also holds its SRAM and flash sizes, where the weights live and what the
firmware reserves, so that :func:`~edgetrain.cost.fit.memory_fit` can say whether
inference or a training step fits. Built-ins live in
``edgetrain/cost/profiles/``; ``load_profile`` takes a built-in name or a file path.

Example:
    >>> p = load_profile("cortex-m4-fp32")
    >>> p.multiplier("input_grad", "conv"), p.multiplier("forward", "activation")
    (1.3, 1.5)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from edgetrain._atomic import atomic_writer
from edgetrain.configs import ShippedFiles, StrictConfig, load_validated, read_mapping
from edgetrain.errors import ConfigError

__all__ = ["TERMS", "DeviceProfile", "list_profiles", "load_profile"]

TERMS = ("forward", "input_grad", "weight_grad", "update")
_BUILTIN = ShippedFiles("edgetrain.cost", "profiles")


class DeviceProfile(StrictConfig):
    """Multipliers and offsets of one target. Unknown keys are errors."""

    name: str
    description: str = ""
    bytes_per_element: int = Field(4, ge=1)
    e_mac_pj: float = Field(3.2, ge=0)
    e_byte_pj: float = Field(0.0, ge=0)
    peak_macs_per_s: float | None = Field(None, gt=0)
    offset_per_step: float = 0.0
    multipliers: dict[str, dict[str, float]] = Field(default_factory=dict)
    per_call: dict[str, dict[str, float]] = Field(default_factory=dict)
    per_param: dict[str, dict[str, float]] = Field(default_factory=dict)
    # A profile fitted to one model's steps: layer name -> term -> factor on that layer's
    # cost (its kind's rate, per-call and per-parameter costs); 1 where absent.
    layer_factors: dict[str, dict[str, float]] = Field(default_factory=dict)
    # Memory of a device with a fixed budget (a microcontroller); None: not limited.
    sram_bytes: int | None = Field(None, gt=0)
    flash_bytes: int | None = Field(None, gt=0)
    weights_in: Literal["flash", "sram"] = "flash"
    reserved_sram_bytes: int = Field(0, ge=0)
    reserved_flash_bytes: int = Field(0, ge=0)

    @field_validator("multipliers", "per_call", "per_param")
    @classmethod
    def _terms(cls, v: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
        for term in v:
            if term not in TERMS:
                raise ValueError(f"unknown term '{term}'; terms are: {', '.join(TERMS)}")
        return v

    @field_validator("layer_factors")
    @classmethod
    def _layer_terms(cls, v: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
        for layer, row in v.items():
            for term, factor in row.items():
                if term not in TERMS:
                    raise ValueError(
                        f"layer '{layer}': unknown term '{term}'; terms are: {', '.join(TERMS)}"
                    )
                if factor < 0:
                    raise ValueError(f"layer '{layer}': factor of {term} must be >= 0")
        return v

    def layer_factor(self, layer: str, term: str) -> float:
        """Factor on ``term`` of the layer named ``layer`` (1 unless fitted to a model)."""
        row = self.layer_factors.get(layer)
        return 1.0 if row is None else float(row.get(term, 1.0))

    def multiplier(self, term: str, kind: str) -> float:
        """Multiplier of ``term`` for a layer ``kind`` (its ``default``, else 1)."""
        table = self.multipliers.get(term, {})
        return float(table.get(kind, table.get("default", 1.0)))

    def call_offset(self, term: str, kind: str) -> float:
        """Fixed operations charged per op call for ``term`` (0 unless calibrated)."""
        table = self.per_call.get(term, {})
        return float(table.get(kind, table.get("default", 0.0)))

    def param_cost(self, term: str, kind: str) -> float:
        """Operations charged per parameter of the layer when ``term`` runs (0 unless
        calibrated)."""
        table = self.per_param.get(term, {})
        return float(table.get(kind, table.get("default", 0.0)))

    def save(self, path: str | Path) -> Path:
        """Write the profile as YAML (or JSON for a ``.json`` path), atomically."""
        import yaml

        path = Path(path)
        data = self.model_dump()
        text = (
            json.dumps(data, indent=2)
            if path.suffix == ".json"
            else yaml.safe_dump(data, sort_keys=False)
        )
        with atomic_writer(path, "w") as f:
            f.write(text)
        return path


def list_profiles() -> list[str]:
    """Names of the built-in profiles."""
    return _BUILTIN.names()


def load_profile(profile: str | Path | DeviceProfile = "reference") -> DeviceProfile:
    """A built-in profile by name, or a profile file (YAML or JSON) by path.

    Raises:
        ConfigError: one line for an unknown name, a missing file or an invalid profile.
    """
    if isinstance(profile, DeviceProfile):
        return profile
    text = str(profile)
    if _BUILTIN.path(text) is None and not Path(text).is_file():
        raise ConfigError(
            f"unknown profile '{text}'; use a built-in ({', '.join(list_profiles())}) or a "
            "profile file written by 'edgetrain cost calibrate'"
        )
    tree, file = read_mapping(text, what="profile", shipped=_BUILTIN, hint="name, multipliers")
    return load_validated(DeviceProfile, tree, what="profile", where=file)
