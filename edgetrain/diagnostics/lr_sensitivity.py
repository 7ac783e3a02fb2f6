"""Learning-rate sensitivity: the AP distance of one step as a function of the rate.

At chosen times of a run (at initialisation, at the start of every epoch, at given
steps) the pending optimizer step is probed at many learning rates (50, log-uniform in
``[1e-4, 1e2]`` by default): snapshot, one step with that rate, measure the AP distance
``D`` on the batch, restore (:class:`~edgetrain.diagnostics.probe.StepProbe`). ``D``
rises from 0 to 1 with the rate; the *transition model* (ActCooLR, activation pattern
temperature for learning-rate control; ``specs/diagnostics.md`` section 2) is a
log-normal CDF::

    D(eta) = 0.5 * (1 + erf((ln eta - mu) / (sigma * sqrt 2)))

fitted by linear least squares on ``ln eta_i = mu + sigma * z_i`` with
``z_i = sqrt2 * erfinv(2 D_i - 1)`` over the points with ``0 < D < 1``. ``mu`` is the
log rate at which half the patterns change, ``sigma`` the width of the transition. Two
alternative models are fitted by non-linear least squares for comparison::

    erf-power:     D = 1 - [1 - 0.5 erf(sigma eta / sqrt 2)] ** mu       (mu > 0)
    arctan-power:  D = 1 - [1 - arctan(sigma eta) / pi] ** (-mu)         (mu < 0)

each with its fit error (RMSE in ``D`` over all probed rates). A rapid rise of
``sigma`` between consecutive measurements is a divergence warning.

:class:`LRSensitivity` (registered as ``lr-sensitivity``) takes the measurements in a
run, with the run's real gradient (penalties and masks of earlier callbacks included:
put it last), and writes one JSON line per measurement to
``<run>/lr_sensitivity.jsonl``. A run with it is bit-identical to one without.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from scipy import optimize, special
from torch import nn

from edgetrain.diagnostics.probe import TrainingSnapshot, probe_rates
from edgetrain.engine import CALLBACKS, Callback
from edgetrain.engine.jsonl import JsonLines
from edgetrain.errors import ConfigError

if TYPE_CHECKING:
    from edgetrain.engine import Trainer

__all__ = [
    "LR_SENSITIVITY_FILE",
    "TRANSITION_MODELS",
    "LRSensitivity",
    "SensitivityMeasurement",
    "TransitionFit",
    "fit_transition",
    "fit_transition_models",
    "log_rates",
    "measure_lr_sensitivity",
    "rate_for_distance",
    "read_lr_sensitivity",
    "transition_distance",
]

LR_SENSITIVITY_FILE = "lr_sensitivity.jsonl"


def log_rates(count: int = 50, low: float = 1e-4, high: float = 1e2) -> list[float]:
    """``count`` learning rates log-uniform in ``[low, high]`` (both ends included)."""
    if count < 2 or not 0 < low < high:
        raise ConfigError(
            f"need at least 2 rates and 0 < low < high, got {count} rates in [{low}, {high}]"
        )
    return np.logspace(math.log10(low), math.log10(high), count).tolist()


# ------------------------------------------------------------------ transition models
def transition_distance(rates: Any, mu: float, sigma: float) -> np.ndarray:
    """The log-normal transition ``0.5 * (1 + erf((ln eta - mu) / (sigma sqrt2)))``."""
    eta = np.asarray(rates, dtype=np.float64)
    return 0.5 * (1.0 + special.erf((np.log(eta) - mu) / (sigma * math.sqrt(2.0))))


def rate_for_distance(distance: float, mu: float, sigma: float) -> float:
    """The rate at which the log-normal transition predicts ``distance`` (inverse)."""
    return math.exp(mu + sigma * math.sqrt(2.0) * float(special.erfinv(2.0 * distance - 1.0)))


def _erf_power(rates: Any, mu: float, sigma: float) -> np.ndarray:
    eta = np.asarray(rates, dtype=np.float64)
    return 1.0 - (1.0 - 0.5 * special.erf(sigma * eta / math.sqrt(2.0))) ** mu


def _arctan_power(rates: Any, mu: float, sigma: float) -> np.ndarray:
    eta = np.asarray(rates, dtype=np.float64)
    return 1.0 - (1.0 - np.arctan(sigma * eta) / math.pi) ** (-mu)


TRANSITION_MODELS: dict[str, Callable[[Any, float, float], np.ndarray]] = {
    "erf": transition_distance,
    "erf-power": _erf_power,
    "arctan-power": _arctan_power,
}
"""``D(eta; mu, sigma)`` of each transition model, by name."""

# Sign of mu for the power models: the exponent must make D run from 0 towards 1.
_MU_SIGN = {"erf-power": 1.0, "arctan-power": -1.0}


@dataclass(frozen=True)
class TransitionFit:
    """A fitted transition model.

    Attributes:
        model: ``"erf"``, ``"erf-power"`` or ``"arctan-power"``.
        mu, sigma: the model's parameters.
        rmse: root-mean-square error in ``D`` over all probed rates.
        points: rates the fit used (for ``erf``: those with ``0 < D < 1``).
    """

    model: str
    mu: float
    sigma: float
    rmse: float
    points: int

    def distance(self, rates: Any) -> np.ndarray:
        """The model's ``D`` at ``rates``."""
        return TRANSITION_MODELS[self.model](rates, self.mu, self.sigma)


def _rmse(model: str, rates: np.ndarray, d: np.ndarray, mu: float, sigma: float) -> float:
    with np.errstate(all="ignore"):
        pred = TRANSITION_MODELS[model](rates, mu, sigma)
    return float(np.sqrt(np.mean((pred - d) ** 2)))


def _checked(rates: Sequence[float], distances: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    eta = np.asarray(rates, dtype=np.float64)
    d = np.asarray(distances, dtype=np.float64)
    if eta.shape != d.shape or eta.ndim != 1:
        raise ValueError(
            f"rates and distances must be equal-length lists, got {eta.shape}, {d.shape}"
        )
    if np.any(eta <= 0):
        raise ValueError("learning rates must be > 0")
    return eta, d


def fit_transition(rates: Sequence[float], distances: Sequence[float]) -> TransitionFit | None:
    """Fit the log-normal transition by linear least squares.

    Regresses ``ln eta_i = mu + sigma * z_i``, ``z_i = sqrt2 * erfinv(2 D_i - 1)``, over
    the points with ``0 < D_i < 1``.

    Returns:
        The fit, or None when fewer than two usable points with distinct ``D`` exist or
        the slope is not positive (``D`` does not rise with the rate).

    Example:
        >>> eta = log_rates(50)
        >>> fit = fit_transition(eta, transition_distance(eta, mu=-2.0, sigma=1.5))
        >>> round(fit.mu, 6), round(fit.sigma, 6)
        (-2.0, 1.5)
    """
    eta, d = _checked(rates, distances)
    inside = (d > 0) & (d < 1)
    if inside.sum() < 2:
        return None
    z = math.sqrt(2.0) * special.erfinv(2.0 * d[inside] - 1.0)
    if np.ptp(z) == 0:
        return None
    design = np.stack([np.ones_like(z), z], axis=1)
    (mu, sigma), *_ = np.linalg.lstsq(design, np.log(eta[inside]), rcond=None)
    if not (np.isfinite(mu) and np.isfinite(sigma)) or sigma <= 0:
        return None
    mu, sigma = float(mu), float(sigma)
    return TransitionFit("erf", mu, sigma, _rmse("erf", eta, d, mu, sigma), int(inside.sum()))


def _fit_power(model: str, eta: np.ndarray, d: np.ndarray) -> TransitionFit | None:
    """Non-linear least squares in (log |mu|, log sigma), from a few starting points."""
    sign = _MU_SIGN[model]
    f = TRANSITION_MODELS[model]
    order = np.argsort(eta)
    eta, d = eta[order], d[order]
    # Start where the curve crosses 1/2: sigma * eta_half = 1 and the exponent that puts
    # D(eta_half) at 1/2; then a small grid around it, keeping the best local optimum.
    above = np.nonzero(d >= 0.5)[0]
    eta_half = float(eta[above[0]]) if len(above) else float(eta[-1])
    base = 1.0 - (0.5 * special.erf(1 / math.sqrt(2.0)) if model == "erf-power" else 0.25)
    mu0 = abs(math.log(0.5) / math.log(base))

    def residual(theta: np.ndarray) -> np.ndarray:
        with np.errstate(all="ignore"):  # far-off trial points overflow: large residuals
            r = f(eta, sign * np.exp(theta[0]), np.exp(theta[1])) - d
        return np.nan_to_num(r, nan=1.0, posinf=1.0, neginf=-1.0)

    best = None
    for ms in (0.3, 1.0, 3.0):
        for ss in (0.1, 1.0, 10.0):
            start = np.array([math.log(mu0 * ms), math.log(ss / eta_half)])
            result = optimize.least_squares(residual, start, method="trf")
            if best is None or result.cost < best.cost:
                best = result
    if best is None or not np.all(np.abs(best.x) < 700):  # exp() of it stays finite
        return None
    mu, sigma = sign * math.exp(best.x[0]), math.exp(best.x[1])
    return TransitionFit(model, mu, sigma, _rmse(model, eta, d, mu, sigma), len(eta))


def fit_transition_models(
    rates: Sequence[float], distances: Sequence[float]
) -> dict[str, TransitionFit | None]:
    """Fit all :data:`TRANSITION_MODELS`; None for a model that could not be fitted.

    The power models are fitted with :func:`scipy.optimize.least_squares` on all points.
    """
    eta, d = _checked(rates, distances)
    fits: dict[str, TransitionFit | None] = {"erf": fit_transition(eta, d)}
    for model in _MU_SIGN:
        fits[model] = _fit_power(model, eta, d) if np.any(d > 0) else None
    return fits


# ------------------------------------------------------------------------ measurements
@dataclass
class SensitivityMeasurement:
    """The AP distance of one step at many rates, at one time of a run.

    Attributes:
        step: optimizer steps taken before the probed one.
        epoch: the time in epochs (``epoch index + batch index / batches``).
        lr: the learning rate the run used for this step (None outside a run).
        rates: the probed learning rates.
        distance: network-level ``D`` (mean over layers) per rate.
        layers: per activation layer its ``D`` per rate.
        fits: per transition model its fit (None when not fittable).
        divergence_warning: ``sigma`` rose by the warning factor since the last one.
    """

    step: int
    epoch: float
    lr: float | None
    rates: list[float]
    distance: list[float]
    layers: dict[str, list[float]]
    fits: dict[str, TransitionFit | None] = field(default_factory=dict)
    divergence_warning: bool = False

    @property
    def mu(self) -> float | None:
        fit = self.fits.get("erf")
        return None if fit is None else fit.mu

    @property
    def sigma(self) -> float | None:
        fit = self.fits.get("erf")
        return None if fit is None else fit.sigma

    def to_json(self) -> dict[str, Any]:
        record = asdict(self)
        record["fits"] = {k: None if v is None else asdict(v) for k, v in self.fits.items()}
        record["mu"], record["sigma"] = self.mu, self.sigma
        return record

    @classmethod
    def from_json(cls, record: dict[str, Any]) -> SensitivityMeasurement:
        fits = {
            k: None if v is None else TransitionFit(**v) for k, v in record.get("fits", {}).items()
        }
        return cls(
            step=int(record["step"]),
            epoch=float(record["epoch"]),
            lr=record.get("lr"),
            rates=[float(r) for r in record["rates"]],
            distance=[float(d) for d in record["distance"]],
            layers={k: [float(d) for d in v] for k, v in record.get("layers", {}).items()},
            fits=fits,
            divergence_warning=bool(record.get("divergence_warning", False)),
        )


def _measurement(
    per_rate: list[dict[str, float]],
    rates: Sequence[float],
    step: int,
    epoch: float,
    lr: float | None,
) -> SensitivityMeasurement:
    names = list(per_rate[0]) if per_rate else []
    layers = {n: [d[n] for d in per_rate] for n in names}
    distance = [float(sum(d.values()) / len(d)) for d in per_rate]
    return SensitivityMeasurement(
        step=step,
        epoch=epoch,
        lr=lr,
        rates=[float(r) for r in rates],
        distance=distance,
        layers=layers,
        fits=fit_transition_models(rates, distance),
    )


def measure_lr_sensitivity(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    rates: Sequence[float] | None = None,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    layers: Iterable[str] | None = None,
) -> SensitivityMeasurement:
    """Probe one step on ``(inputs, targets)`` at every rate and fit the transition models.

    The gradient is the plain loss's (``loss_fn``, cross-entropy by default) in train
    mode; model, gradients, optimizer and random generators are unchanged afterwards.

    Example:
        >>> net = nn.Sequential(nn.Linear(4, 32), nn.ReLU(), nn.Linear(32, 3))
        >>> opt = torch.optim.SGD(net.parameters(), lr=0.1)
        >>> m = measure_lr_sensitivity(net, opt, torch.randn(64, 4), torch.randint(0, 3, (64,)))
        >>> len(m.rates), m.distance[0] <= m.distance[-1]
        (50, True)
    """
    rates = log_rates() if rates is None else list(rates)
    loss_fn = loss_fn or nn.functional.cross_entropy
    snapshot = TrainingSnapshot(model, optimizer)
    training = model.training
    try:
        model.train()
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model(inputs), targets).backward()
        per_rate = probe_rates(model, optimizer, inputs, rates, layers)
    finally:
        snapshot.restore()
        model.train(training)
    return _measurement(per_rate, rates, 0, 0.0, None)


def read_lr_sensitivity(run_dir: str | os.PathLike[str]) -> list[SensitivityMeasurement]:
    """The measurements a run wrote to ``<run>/lr_sensitivity.jsonl`` (empty if none)."""
    out = []
    for record in JsonLines(Path(run_dir) / LR_SENSITIVITY_FILE).read():
        try:
            out.append(SensitivityMeasurement.from_json(record))
        except (KeyError, TypeError):
            continue  # a line of another format
    return out


# --------------------------------------------------------------------------- callback
class LRSensitivity(Callback):
    """Measure the learning-rate sensitivity during training.

    At each measurement time the pending step (its real gradient, after ``backward`` and
    the other callbacks' gradient hooks) is probed at every rate and undone; then the
    run takes its own step as if nothing happened. The rate the run used is read after
    its step, so an LR controller running later is recorded correctly.

    Args:
        rates: number of probed rates, log-uniform in ``[low, high]``.
        low, high: the rate range.
        every_epoch: measure at the first step of every epoch (the first is the
            initialisation).
        at_steps: also measure before these global steps (0: the initialisation).
        sigma_rise: warn of divergence when ``sigma`` grows by more than this factor
            between consecutive measurements.
        layers: activation layers to use (all when None).

    Example:
        >>> cb = LRSensitivity(rates=20, at_steps=(0, 100), every_epoch=False)
        >>> len(cb.rates)
        20
    """

    def __init__(
        self,
        rates: int = 50,
        low: float = 1e-4,
        high: float = 1e2,
        every_epoch: bool = True,
        at_steps: Sequence[int] = (),
        sigma_rise: float = 2.0,
        layers: Sequence[str] | None = None,
    ) -> None:
        if sigma_rise <= 1.0:
            raise ConfigError(f"sigma_rise must be > 1, got {sigma_rise}")
        if any(s < 0 for s in at_steps):
            raise ConfigError(f"at_steps must be >= 0, got {list(at_steps)}")
        if not every_epoch and not at_steps:
            raise ConfigError("lr-sensitivity has no measurement time: set every_epoch or at_steps")
        self.rates = log_rates(rates, low, high)
        self.every_epoch, self.at_steps = every_epoch, frozenset(int(s) for s in at_steps)
        self.sigma_rise = sigma_rise
        self.layers = None if layers is None else list(layers)
        self.measurements: list[SensitivityMeasurement] = []
        self._last_sigma: float | None = None
        self._inputs: torch.Tensor | None = None
        self._due = False
        self._pending: list[dict[str, float]] | None = None
        self._time = 0.0

    @property
    def state_key(self) -> str:
        return "LRSensitivity"

    def on_fit_start(self, trainer: Trainer, model: nn.Module) -> None:
        path = self._path(trainer)
        if path is None:
            return
        step = trainer.state.global_step
        JsonLines(path).keep(lambda r: step > 0 and r.get("step", step) < step)

    def on_batch_start(self, trainer: Trainer, model: nn.Module, batch: Any, index: int) -> None:
        self._due = (self.every_epoch and index == 0) or trainer.state.global_step in self.at_steps
        self._time = trainer.state.epoch + index / max(len(trainer.train_loader), 1)
        self._inputs = None

    def before_forward(self, trainer: Trainer, model: nn.Module, inputs: torch.Tensor) -> None:
        if self._due:
            self._inputs = inputs

    def before_optimizer_step(
        self, trainer: Trainer, model: nn.Module, optimizer: torch.optim.Optimizer
    ) -> None:
        if not self._due or self._inputs is None:
            return
        inputs, self._inputs, self._due = self._inputs, None, False
        self._pending = probe_rates(model, optimizer, inputs, self.rates, self.layers)

    def on_batch_end(
        self, trainer: Trainer, model: nn.Module, outputs: torch.Tensor, loss: torch.Tensor
    ) -> None:
        if self._pending is None:
            return
        # Read after the step: an LR controller may set the rate after this callback.
        lr = float(trainer.optimizer.param_groups[0]["lr"])
        step = trainer.state.global_step - 1
        m = _measurement(self._pending, self.rates, step, self._time, lr)
        self._pending = None
        sigma, last = m.sigma, self._last_sigma
        if sigma is not None and last is not None and sigma > self.sigma_rise * last:
            m.divergence_warning = True
            warnings.warn(
                f"lr-sensitivity: sigma rose from {last:.3g} to {sigma:.3g} at step "
                f"{m.step} (more than x{self.sigma_rise:g}): training may diverge",
                RuntimeWarning,
                stacklevel=2,
            )
        if sigma is not None:
            self._last_sigma = sigma
        self.measurements.append(m)
        if m.mu is not None:
            trainer.log(lr_sensitivity_mu=m.mu, lr_sensitivity_sigma=float(sigma))
        path = self._path(trainer)
        if path is not None:
            JsonLines(path).append(m.to_json())

    @staticmethod
    def _path(trainer: Trainer) -> Path | None:
        if trainer.run_dir is None or not trainer.is_main:
            return None
        return trainer.run_dir.path / LR_SENSITIVITY_FILE

    def state_dict(self) -> dict[str, Any]:
        return {"last_sigma": self._last_sigma}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._last_sigma = state.get("last_sigma")


@CALLBACKS.register("lr-sensitivity")
def lr_sensitivity_callback(
    rates: int = 50,
    low: float = 1e-4,
    high: float = 1e2,
    every_epoch: bool = True,
    at_steps: tuple[int, ...] = (),
    sigma_rise: float = 2.0,
    layers: tuple[str, ...] | None = None,
) -> LRSensitivity:
    """Probe one step at many learning rates at chosen times; fit the transition models."""
    return LRSensitivity(rates, low, high, every_epoch, at_steps, sigma_rise, layers)
