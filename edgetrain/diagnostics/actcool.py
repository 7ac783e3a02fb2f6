"""ActCoolLR: choose every step's learning rate so the AP temperature follows a cooling plan.

("ActCooLR: activation pattern temperature for learning-rate control";
``specs/diagnostics.md`` section 2.) The temperature of a step is
``T = -log2(1 - D)`` with ``D`` the share of samples whose activation pattern the step
changes (:mod:`edgetrain.diagnostics.probe`). A cooling plan gives the target ``T(t)``
over training; the controller turns it into a target distance
``P = 0.99 * (1 - 2^-T)`` and, through the log-normal transition model
``D(eta) = Phi((ln eta - mu) / sigma)`` (:mod:`edgetrain.diagnostics.lr_sensitivity`),
into the learning rate::

    lr = exp(sigma * sqrt2 * erfinv(2P - 1) + mu),   clamped to >= min_lr

The controlled quantity is the network's **mean temperature over layers** (the thesis'
section 3.3.2: ``T = mean_l -log2(1 - D_l)``), inverted through the model as the
distance ``D = 1 - 2^-T`` of that temperature; ``control: distance`` controls the
temperature of the mean distance over layers instead (``D = mean_l D_l``), which puts
less weight on the layers that change most and so picks higher rates.

Every ``probing_step_size`` steps it measures ``D`` of the step just taken on the
current batch and moves ``mu = ln lr - sigma * sqrt2 * erfinv(2D - 1)``. When ``mu``
has jumped by more than ``mu_jump`` ``max_jumps`` times, or ``D`` is 0 or 1 (the
model cannot be inverted; a 0 only counts when the model expected at least 3 of the
batch's samples to change, since late in cooling the target is below what one batch
resolves), ``mu`` and ``sigma`` are re-fitted by probing the pending
step at a few rates: where the model predicts ``D = 0.25, 0.5, 0.75``, then doubling or
halving outward until the probes span ``D <= 0.25`` to ``D >= 0.75`` (at most
``max_probes`` probes), then
the grid ``10^linspace(-4, 2, 25)`` if that failed. The fit uses the probes with
``0.05 <= D <= 0.95`` when there are at least two (one batch resolves the tails only
coarsely), else all with ``0 < D < 1``. Probes are undone exactly
(:class:`~edgetrain.diagnostics.probe.StepProbe`). A NaN rate or loss, or a rate above
``max_lr``, stops the run with :class:`DivergenceError`; so does a re-fit in which no
rate changes any pattern (a dead network) or every rate changes all of them.

A floor: the model assumes ``D -> 0`` as the rate goes to 0. Units whose pre-activation
sits exactly at 0 (zero-initialised biases feeding a ReLU on inputs that are 0, such
as padding) flip their pattern at any rate, so ``D`` stays above 0 at tiny rates.
Every re-fit also probes a rate 1000x below the smallest it tried; when ``D`` stays at
``floor_warning`` (default 0.02) or more there, it warns once (the remedy: initialise
such biases to small non-zero values, measure only ``layers`` without them, or start
the controller after a warm-up epoch with an ordinary scheduler) and fits only the
probes above twice the floor, the rising part the model describes.

Saturation: with batch norm a layer is scale-invariant, so past some rate a bigger step
changes no more patterns and ``D`` levels off below 1; a target above that level would
send the model's rate to infinity. When a re-fit sees ``D`` level off below 0.75
(within 0.01 over three doublings), it fits the rising part only and caps the rate at
the plateau's onset until the next re-fit.

Runaway: each measurement moves ``mu`` by the whole gap between the measured and the
modelled ``D``. With batch norm and no weight decay a large step grows the weight
norms, so the next step changes fewer patterns and the rate is raised again; over long
runs this can run away (6 -> 35 -> 139 in two measurements, BENCHMARKS.md).
``max_rise`` limits how far one measurement may raise the rate; re-fits, which probe
the pending step at several rates, are not limited.

Cooling plans (``t / t_max`` is the share of training done, in epochs):

- ``power`` (default): ``T_start * (1 - t/t_max)^gamma``
- ``late-power``: ``T_start * (1 - (t/t_max)^gamma)``, stays hot longer
- ``linear-probability``: ``P`` falls linearly from ``P(T_start)`` to 0

From YAML: ``lr_control: actcool`` or
``lr_control: {name: actcool, t_start: 3.17, gamma: 4, plan: power}`` (no
``scheduler`` then: the controller sets the rate every step).
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from scipy import special
from torch import nn

from edgetrain.diagnostics.lr_sensitivity import (
    TransitionFit,
    fit_transition,
    rate_for_distance,
)
from edgetrain.diagnostics.probe import (
    StepProbe,
    ap_distance,
    network_distance,
    probe_patterns,
    temperature,
    temperature_distance,
)
from edgetrain.diagnostics.sites import activation_layers, no_activation_message
from edgetrain.engine import LR_CONTROLLERS, Callback
from edgetrain.engine.distributed import all_reduce_sum
from edgetrain.engine.jsonl import JsonLines
from edgetrain.errors import ConfigError, EdgetrainError
from edgetrain.registry import Registry

if TYPE_CHECKING:
    from edgetrain.engine import Trainer

__all__ = [
    "ACTCOOL_FILE",
    "CONTROLS",
    "COOLING_PLANS",
    "ActCoolLR",
    "DivergenceError",
    "FloorWarning",
    "cooling_plan",
    "lr_for_temperature",
    "read_actcool",
    "target_probability",
]

ACTCOOL_FILE = "actcool.jsonl"
_FALLBACK_GRID = np.logspace(-4, 2, 25).tolist()
_MIDDLE = (0.05, 0.95)
_PLATEAU_SPREAD = 0.01
_SURPRISE = 3.0  # expected changed samples that make a measured D = 0 a model failure


class DivergenceError(EdgetrainError):
    """Training diverged under learning-rate control (NaN, or an absurdly large rate)."""


class FloorWarning(UserWarning):
    """The AP distance does not go to 0 at tiny learning rates."""


# What the controller measures, from the per-layer distances of a batch of n samples:
# the distance whose temperature it steers.
CONTROLS: dict[str, Callable[[Mapping[str, float], int], float]] = {
    "temperature": temperature_distance,
    "distance": lambda distances, samples: network_distance(distances),
}


# ----------------------------------------------------------------------- cooling plans
COOLING_PLANS: Registry[float] = Registry("cooling plan")


def target_probability(t: float) -> float:
    """The target AP distance of temperature ``t``: ``P = 0.99 * (1 - 2^-T)``."""
    return 0.99 * (1.0 - 2.0 ** (-t))


@COOLING_PLANS.register("power")
def power_plan(progress: float, t_start: float, gamma: float) -> float:
    """``T_start * (1 - t/t_max)^gamma``: hot start, most cooling early."""
    return t_start * (1.0 - progress) ** gamma


@COOLING_PLANS.register("late-power")
def late_power_plan(progress: float, t_start: float, gamma: float) -> float:
    """``T_start * (1 - (t/t_max)^gamma)``: stays near ``T_start``, cools late."""
    return t_start * (1.0 - progress**gamma)


@COOLING_PLANS.register("linear-probability")
def linear_probability_plan(progress: float, t_start: float, gamma: float) -> float:
    """``P`` falls linearly from ``P(T_start)`` to 0 (``gamma`` unused)."""
    p = target_probability(t_start) * (1.0 - progress)
    return -math.log2(1.0 - p / 0.99) + 0.0


def cooling_plan(name: str, t_start: float = 3.17, gamma: float = 4.0) -> Callable[[float], float]:
    """The target temperature as a function of the share of training done (0 to 1).

    Example:
        >>> plan = cooling_plan("power", t_start=3.17, gamma=4)
        >>> plan(0.0), plan(1.0)
        (3.17, 0.0)
    """
    fn = COOLING_PLANS.entry(name).fn

    def target(progress: float) -> float:
        return fn(min(max(progress, 0.0), 1.0), t_start, gamma)

    return target


def lr_for_temperature(t: float, mu: float, sigma: float, min_lr: float = 1e-10) -> float:
    """``exp(sigma * sqrt2 * erfinv(2P - 1) + mu)`` with ``P = target_probability(t)``,
    clamped to ``>= min_lr`` (NaN stays NaN, for the caller to refuse).

    Example:
        >>> round(lr_for_temperature(3.17, mu=-1.0, sigma=1.0), 4)
        1.1913
    """
    z = math.sqrt(2.0) * float(special.erfinv(2.0 * target_probability(t) - 1.0))
    with np.errstate(over="ignore"):
        lr = float(np.exp(sigma * z + mu))
    return lr if math.isnan(lr) else max(lr, min_lr)


# -------------------------------------------------------------------------- controller
@LR_CONTROLLERS.register("actcool")
class ActCoolLR(Callback):
    """A training-loop component setting the learning rate so ``T`` follows a plan.

    It sets every parameter group's rate right before ``optimizer.step()`` (groups keep
    their ratios to the first group), after the other callbacks' gradient hooks. It
    replaces the LR scheduler; a Trainer with a scheduler is refused.

    Args:
        t_start: the plan's starting temperature.
        gamma: the plan's exponent.
        plan: ``power``, ``late-power`` or ``linear-probability``.
        sigma, mu: the transition model's starting parameters (log-rate units).
        min_lr: lower clamp of the rate.
        max_lr: a rate above it means divergence (:class:`DivergenceError`).
        probing_step_size: steps between measurements of ``D``.
        mu_jump, max_jumps: re-fit when ``mu`` has moved by more than ``mu_jump``
            ``max_jumps`` times since the last fit.
        max_rise: when set, one measurement may raise the rate at most this factor
            (``mu`` moves up at most ``ln max_rise``; re-fits are not limited, and the
            full move still counts as a jump). None (the default) applies the whole
            move; see the module docstring.
        control: ``temperature`` (the mean temperature over layers, the thesis') or
            ``distance`` (the temperature of the mean distance over layers).
        floor_warning: warn when ``D`` at a rate 1000x below every probe stays at this
            or more (see the module docstring).
        max_probes: probes of one bracketing search before the grid fallback.
        fit_at_start: fit ``mu`` and ``sigma`` by probing before the very first step
            (otherwise the first step uses the starting values, a rate near 1.2).
        layers: activation layers to measure (all when None).

    Example:
        >>> from edgetrain.engine import Trainer
        >>> controller = ActCoolLR(t_start=3.17, gamma=4)
        >>> trainer = Trainer(net, data, callbacks=[controller])  # doctest: +SKIP
    """

    def __init__(
        self,
        t_start: float = 3.17,
        gamma: float = 4.0,
        plan: str = "power",
        sigma: float = 1.0,
        mu: float = -1.0,
        min_lr: float = 1e-10,
        max_lr: float = 1e10,
        probing_step_size: int = 8,
        mu_jump: float = 2.5,
        max_jumps: int = 5,
        max_rise: float | None = None,
        max_probes: int = 100,
        fit_at_start: bool = True,
        layers: Sequence[str] | None = None,
        control: str = "temperature",
        floor_warning: float = 0.02,
    ) -> None:
        if control not in CONTROLS:
            raise ConfigError(
                f"actcool: control must be one of {', '.join(CONTROLS)}, got '{control}'"
            )
        checks = {
            "t_start": (t_start, t_start > 0, "> 0"),
            "gamma": (gamma, gamma > 0, "> 0"),
            "sigma": (sigma, sigma > 0, "> 0"),
            "min_lr": (min_lr, 0 < min_lr < max_lr, "> 0 and < max_lr"),
            "probing_step_size": (probing_step_size, probing_step_size >= 1, ">= 1"),
            "max_probes": (max_probes, max_probes >= 3, ">= 3"),
            "max_rise": (max_rise, max_rise is None or max_rise > 1, "> 1 (or unset)"),
        }
        for name, (value, ok, bound) in checks.items():
            if not ok:
                raise ConfigError(f"actcool: {name} must be {bound}, got {value}")
        self.plan_name, self.t_start, self.gamma = plan, t_start, gamma
        self.plan = cooling_plan(plan, t_start, gamma)
        self.mu, self.sigma = float(mu), float(sigma)
        self.min_lr, self.max_lr = min_lr, max_lr
        self.probing_step_size, self.max_probes = probing_step_size, max_probes
        self.mu_jump, self.max_jumps = mu_jump, max_jumps
        self.max_rise = max_rise
        self.fit_at_start = fit_at_start
        self.layers = None if layers is None else list(layers)
        self.control, self.floor_warning = control, floor_warning
        self.floor: float | None = None
        self._warned_floor = False
        self.jumps = 0
        self.refits = 0
        self.refit_due = False
        self.lr = math.nan
        self.lr_cap: float | None = None
        self.target = t_start
        self.rows: list[dict[str, Any]] = []
        self._epoch_rows: list[dict[str, Any]] = []
        self._scales: list[float] = []
        self._progress = 0.0
        self._probe_now = False
        self._sites_checked = False
        self._inputs: torch.Tensor | None = None
        self._before: dict[str, torch.Tensor] | None = None
        self._world = 1
        self._device = torch.device("cpu")

    @property
    def state_key(self) -> str:
        return "ActCoolLR"

    # -------------------------------------------------------------------- hooks
    def on_fit_start(self, trainer: Trainer, model: nn.Module) -> None:
        if trainer.scheduler is not None:
            raise ConfigError(
                f"ActCoolLR sets the learning rate every step; remove the scheduler "
                f"({type(trainer.scheduler).__name__})"
            )
        self._sites_checked = False
        shape = getattr(model, "input_shape", None)
        if shape is not None:
            self._check_sites(model, shape)
        groups = trainer.optimizer.param_groups
        first = groups[0]["lr"]
        self._scales = [g["lr"] / first if first > 0 else 1.0 for g in groups]
        self._world = trainer.dist.world_size
        step = trainer.state.global_step
        if step == 0:
            self.refit_due = self.refit_due or self.fit_at_start
        path = self._path(trainer)
        if path is not None:
            JsonLines(path, strict=True).keep(lambda r: step > 0 and r.get("step", step) < step)

    def on_epoch_start(self, trainer: Trainer, model: nn.Module) -> None:
        self._epoch_rows = []

    def on_batch_start(self, trainer: Trainer, model: nn.Module, batch: Any, index: int) -> None:
        state = trainer.state
        batches = max(len(trainer.train_loader), 1)
        self._progress = (state.epoch + index / batches) / max(state.max_epochs, 1)
        self._probe_now = state.global_step % self.probing_step_size == 0
        self._inputs = None

    def _check_sites(self, model: nn.Module, input_shape: Sequence[int]) -> None:
        """Refuse a model without activation sites (or without the named ones)."""
        if not activation_layers(model, self.layers, input_shape=input_shape):
            raise ConfigError(no_activation_message(model, "for ActCoolLR to measure"))
        self._sites_checked = True

    def before_forward(self, trainer: Trainer, model: nn.Module, inputs: torch.Tensor) -> None:
        if not self._sites_checked:
            self._check_sites(model, inputs.shape[1:])
        if self._probe_now or self.refit_due:
            self._inputs, self._device = inputs, inputs.device

    def before_optimizer_step(
        self, trainer: Trainer, model: nn.Module, optimizer: torch.optim.Optimizer
    ) -> None:
        step = trainer.state.global_step
        refitted = False
        if self.refit_due and self._inputs is not None:
            self._refit(model, optimizer, self._inputs, step)
            refitted = True
        self.target = self.plan(self._progress)
        self.lr = lr_for_temperature(self.target, self.mu, self.sigma, self.min_lr)
        if self.lr_cap is not None:
            self.lr = min(self.lr, self.lr_cap)
        if not math.isfinite(self.lr) or self.lr > self.max_lr:
            raise DivergenceError(
                f"ActCoolLR: learning rate {self.lr:.3g} for temperature {self.target:.3g} at "
                f"step {step} (mu {self.mu:.3g}, sigma {self.sigma:.3g}): training diverged; "
                "lower t_start"
            )
        for group, scale in zip(optimizer.param_groups, self._scales, strict=True):
            group["lr"] = self.lr * scale
        row: dict[str, Any] = {"step": step, "progress": self._progress, "lr": self.lr}
        row["t_target"] = self.target
        if refitted:
            row.update(refit=True, mu=self.mu, sigma=self.sigma, d_floor=self.floor)
        self._epoch_rows.append(row)
        self._before = None
        if self._probe_now and self._inputs is not None:
            self._before = probe_patterns(model, self._inputs, self.layers)

    def on_batch_end(
        self, trainer: Trainer, model: nn.Module, outputs: torch.Tensor, loss: torch.Tensor
    ) -> None:
        if self._before is None or self._inputs is None:
            return
        after = probe_patterns(model, self._inputs, self.layers)
        batch = next(iter(after.values())).shape[0]
        d = self._mean(CONTROLS[self.control](ap_distance(self._before, after), batch))
        samples = sum(words.shape[0] for words in after.values())
        self._before = self._inputs = None
        step = trainer.state.global_step - 1  # the step just taken
        if not math.isfinite(float(loss.detach())):
            raise DivergenceError(
                f"ActCoolLR: training loss is {float(loss.detach())} at step {step} (learning "
                f"rate {self.lr:.3g}): training diverged; lower t_start"
            )
        self._update(d, samples)
        self._epoch_rows[-1].update(d=d, t_measured=temperature(d), mu=self.mu, sigma=self.sigma)

    def on_epoch_end(self, trainer: Trainer, model: nn.Module) -> None:
        rows = self._epoch_rows
        measured = [r["t_measured"] for r in rows if math.isfinite(r.get("t_measured", math.inf))]
        values: dict[str, float] = {
            "actcool_lr": self.lr,
            "actcool_lr_max": max((r["lr"] for r in rows), default=self.lr),
            "actcool_t_target": self.target,
            "actcool_mu": self.mu,
            "actcool_sigma": self.sigma,
            "actcool_refits": float(sum(1 for r in rows if r.get("refit"))),
        }
        if measured:
            values["actcool_t_measured"] = float(np.mean(measured))
        trainer.log(**values)
        self.rows.extend(rows)
        self._epoch_rows = []
        path = self._path(trainer)
        if path is not None:
            JsonLines(path, strict=True).append(*rows)

    # --------------------------------------------------------------------- model
    def _update(self, d: float, samples: int) -> None:
        """Move ``mu`` to explain the measured ``d`` at the rate used; schedule re-fits.

        ``D`` of exactly 0 or 1 cannot be inverted. It calls for a re-fit when the model
        made it unlikely: at least ``_SURPRISE`` samples (over all layers) should have
        changed (or stayed). Late in cooling the target lies below what one batch can
        resolve, and a 0 there says nothing against the model.
        """
        p = target_probability(self.target)
        if d <= 0.0 or d >= 1.0:
            expected = p * samples if d <= 0.0 else (1.0 - p) * samples
            self.refit_due = self.refit_due or expected >= _SURPRISE
            return
        mu = math.log(self.lr) - self.sigma * math.sqrt(2.0) * float(special.erfinv(2 * d - 1))
        if abs(mu - self.mu) > self.mu_jump:
            self.jumps += 1
        if self.max_rise is not None:
            mu = min(mu, self.mu + math.log(self.max_rise))
        self.mu = mu
        if self.jumps >= self.max_jumps:
            self.refit_due = True

    def _mean(self, value: float) -> float:
        """The mean of ``value`` over the ranks (so every rank picks the same rate)."""
        if self._world <= 1:
            return value
        total = all_reduce_sum(torch.tensor([value], dtype=torch.float64, device=self._device))
        return float(total.item()) / self._world

    def _refit(
        self, model: nn.Module, optimizer: torch.optim.Optimizer, inputs: torch.Tensor, step: int
    ) -> None:
        """Re-fit ``mu`` and ``sigma`` by probing the pending step (undone after)."""
        points: dict[float, float] = {}
        with StepProbe(model, optimizer, inputs, self.layers) as probe:
            control, batch = CONTROLS[self.control], inputs.shape[0]

            def aggregate(distances: Mapping[str, float]) -> float:
                return control(distances, batch)

            def run(rate: float) -> None:
                if rate not in points:
                    points[rate] = self._mean(aggregate(probe.distance(rate)))

            for q in (0.25, 0.5, 0.75):
                run(min(max(rate_for_distance(q, self.mu, self.sigma), self.min_lr), self.max_lr))
            while probe.probes < self.max_probes and _plateau_onset(points) is None:
                nxt = self._next_probe(points)
                if nxt is None or nxt in points or not self.min_lr <= nxt <= self.max_lr:
                    break
                run(nxt)
            tiny = max(min(points) * 1e-3, self.min_lr)
            self.floor = self._mean(aggregate(probe.distance(tiny)))
            self._check_floor(tiny, step)
            onset = _plateau_onset(points)
            rising = points if onset is None else {r: d for r, d in points.items() if r <= onset}
            fit = _fit_middle(self._above_floor(rising))
            if fit is None and onset is None:
                for rate in _FALLBACK_GRID:
                    run(rate)
                rising = points
                fit = _fit_middle(self._above_floor(points))
        self.refits += 1
        self.jumps = 0
        self.refit_due = False
        self.lr_cap = onset
        if fit is not None:
            self.mu, self.sigma = fit.mu, fit.sigma
            return
        self._fallback(rising, step)

    def _check_floor(self, tiny: float, step: int) -> None:
        """Warn once when ``D`` does not go to 0 at a tiny rate."""
        if self.floor is None or self.floor < self.floor_warning or self._warned_floor:
            return
        self._warned_floor = True
        warnings.warn(
            f"ActCoolLR: D stays at {self.floor:.3f} even at learning rate {tiny:.2g} (step "
            f"{step}): some units' pre-activations sit exactly at 0 (zero-initialised biases?) "
            "and flip at any rate, which breaks the model's D -> 0 premise; the fit uses only "
            "probes above twice that floor. Remedy: initialise those biases to small non-zero "
            "values, pass 'layers' without them, or start ActCoolLR after a warm-up epoch",
            FloorWarning,
            stacklevel=2,
        )

    def _above_floor(self, points: dict[float, float]) -> dict[float, float]:
        """The probes the transition model describes: above twice a warned-of floor."""
        if self.floor is None or self.floor < self.floor_warning:
            return points
        return {r: d for r, d in points.items() if d > 2 * self.floor}

    @staticmethod
    def _next_probe(points: dict[float, float]) -> float | None:
        """The next rate of the bracketing search; None once the probes span
        ``D <= 0.25`` to ``D >= 0.75`` with at least two points inside ``(0, 1)``."""
        cold = [r for r, d in points.items() if d <= 0.25]
        hot = [r for r, d in points.items() if d >= 0.75]
        inside = [r for r, d in points.items() if 0.0 < d < 1.0]
        if cold and hot and len(inside) >= 2:
            return None
        if not hot:
            return 2.0 * max(points)
        if not cold:
            return 0.5 * min(points)
        a, b = max(cold), min(hot)  # a sharp transition between them: bisect (log scale)
        return math.sqrt(a * b) if not math.isclose(a, b, rel_tol=1e-9) else None

    def _fallback(self, points: dict[float, float], step: int) -> None:
        """``mu`` from too few points for a fit (``sigma`` kept); refuse dead networks
        and chaos."""
        inside = [(r, d) for r, d in points.items() if 0.0 < d < 1.0]
        zeros = [r for r, d in points.items() if d <= 0.0]
        ones = [r for r, d in points.items() if d >= 1.0]
        if inside:
            rate, d = inside[0]
            z = math.sqrt(2.0) * float(special.erfinv(2 * d - 1))
            self.mu = math.log(rate) - self.sigma * z
        elif zeros and ones:
            below = [r for r in zeros if r < min(ones)] or [min(zeros)]
            self.mu = 0.5 * (math.log(max(below)) + math.log(min(ones)))
        elif ones:
            raise DivergenceError(
                f"ActCoolLR: every probed learning rate down to {min(ones):.3g} changes every "
                f"activation pattern at step {step}: training diverged; lower t_start"
            )
        else:
            raise DivergenceError(
                f"ActCoolLR: no probed learning rate up to {max(zeros):.3g} changes any "
                f"activation pattern at step {step}: the network is dead (diverged) or only "
                "layers after the last activation train; lower t_start"
            )

    # ------------------------------------------------------------------ plumbing
    @staticmethod
    def _path(trainer: Trainer) -> Path | None:
        if trainer.run_dir is None or not trainer.is_main:
            return None
        return trainer.run_dir.path / ACTCOOL_FILE

    def state_dict(self) -> dict[str, Any]:
        return {
            "mu": self.mu,
            "sigma": self.sigma,
            "jumps": self.jumps,
            "refits": self.refits,
            "refit_due": self.refit_due,
            "lr": self.lr,
            "lr_cap": self.lr_cap,
            "floor": self.floor,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.mu, self.sigma = float(state["mu"]), float(state["sigma"])
        self.jumps, self.refits = int(state["jumps"]), int(state["refits"])
        self.refit_due, self.lr = bool(state["refit_due"]), float(state["lr"])
        self.lr_cap = state.get("lr_cap")
        self.floor = state.get("floor")


def _fit_middle(points: dict[float, float]) -> TransitionFit | None:
    """The log-normal fit on the probes with ``0.05 <= D <= 0.95``, or on all with
    ``0 < D < 1`` when the middle alone cannot be fitted.

    One batch resolves ``D`` coarsely in the tails, where ``erfinv`` magnifies the
    quantisation; after a long walk from a far-off start, tail points would otherwise
    outnumber and outweigh the middle of the curve.
    """
    middle = {r: d for r, d in points.items() if _MIDDLE[0] <= d <= _MIDDLE[1]}
    fit = fit_transition(list(middle), list(middle.values())) if len(middle) >= 2 else None
    return fit or fit_transition(list(points), list(points.values()))


def _plateau_onset(points: dict[float, float]) -> float | None:
    """The rate where ``D`` levels off below 0.75, or None.

    Levelled off: the probes within three doublings of the largest rate (at least four)
    lie within ``_PLATEAU_SPREAD`` of each other, above 0.05. The onset is the smallest
    rate within ``2 * _PLATEAU_SPREAD`` of the highest ``D``.
    """
    rates = sorted(points)
    top = [points[r] for r in rates if r >= rates[-1] / 8.0]
    level = max(points.values())
    if len(top) < 4 or max(top) - min(top) > _PLATEAU_SPREAD or not 0.05 < level < 0.75:
        return None
    return min(r for r in rates if points[r] >= level - 2 * _PLATEAU_SPREAD)


def read_actcool(run_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The per-step rows ActCoolLR wrote to ``<run>/actcool.jsonl`` (empty if none).

    Every row has ``step``, ``progress``, ``lr`` and ``t_target``; probed steps add
    ``d``, ``t_measured`` (null when every pattern changed), ``mu`` and ``sigma``;
    re-fits add ``refit: true``.
    """
    return JsonLines(Path(run_dir) / ACTCOOL_FILE).read()
