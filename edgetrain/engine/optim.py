"""Optimizers and learning-rate schedulers by name, for configs and the CLI.

Each entry is a factory registered under a short name. Optimizer factories take the
parameters first; scheduler factories take the optimizer plus the run's length, and
declare whether they step per epoch or per optimizer step (``interval`` metadata).

Example:
    >>> import torch
    >>> opt = build_optimizer(torch.nn.Linear(2, 2).parameters(), "sgd", lr=0.1, momentum=0.9)
    >>> sched = build_scheduler(opt, "step", epochs=10, steps_per_epoch=5, step_size=3)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch.optim import lr_scheduler

from edgetrain.errors import ConfigError
from edgetrain.registry import Registry, check_kwargs

__all__ = [
    "OPTIMIZERS",
    "SCHEDULERS",
    "build_optimizer",
    "build_scheduler",
    "rebind_parameters",
    "scheduler_interval",
]

OPTIMIZERS: Registry[torch.optim.Optimizer] = Registry("optimizer")
SCHEDULERS: Registry[Any] = Registry("scheduler")

# Arguments the engine passes to every scheduler factory; never user options.
SCHEDULER_ARGS = ("optimizer", "epochs", "steps_per_epoch")

Params = Iterable[torch.nn.Parameter] | Iterable[dict[str, Any]]


@OPTIMIZERS.register("sgd")
def sgd(
    params: Params,
    lr: float = 0.01,
    momentum: float = 0.0,
    weight_decay: float = 0.0,
    nesterov: bool = False,
    dampening: float = 0.0,
) -> torch.optim.SGD:
    """Stochastic gradient descent, with optional (Nesterov) momentum."""
    return torch.optim.SGD(
        params,
        lr=lr,
        momentum=momentum,
        weight_decay=weight_decay,
        nesterov=nesterov,
        dampening=dampening,
    )


@OPTIMIZERS.register("adam")
def adam(
    params: Params,
    lr: float = 0.001,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
) -> torch.optim.Adam:
    """Adam (Kingma & Ba, 2015)."""
    b1, b2 = betas
    return torch.optim.Adam(params, lr=lr, betas=(b1, b2), eps=eps, weight_decay=weight_decay)


@OPTIMIZERS.register("adamw")
def adamw(
    params: Params,
    lr: float = 0.001,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.01,
) -> torch.optim.AdamW:
    """Adam with decoupled weight decay (Loshchilov & Hutter, 2019)."""
    b1, b2 = betas
    return torch.optim.AdamW(params, lr=lr, betas=(b1, b2), eps=eps, weight_decay=weight_decay)


@SCHEDULERS.register("step", interval="epoch")
def step(
    optimizer: torch.optim.Optimizer,
    epochs: int,
    steps_per_epoch: int,
    step_size: int = 30,
    gamma: float = 0.1,
) -> lr_scheduler.StepLR:
    """Multiply the LR by ``gamma`` every ``step_size`` epochs."""
    return lr_scheduler.StepLR(optimizer, step_size=step_size, gamma=gamma)


@SCHEDULERS.register("multistep", interval="epoch")
def multistep(
    optimizer: torch.optim.Optimizer,
    epochs: int,
    steps_per_epoch: int,
    milestones: tuple[int, ...] = (),
    gamma: float = 0.1,
) -> lr_scheduler.MultiStepLR:
    """Multiply the LR by ``gamma`` at each milestone epoch."""
    return lr_scheduler.MultiStepLR(optimizer, milestones=list(milestones), gamma=gamma)


@SCHEDULERS.register("exponential", interval="epoch")
def exponential(
    optimizer: torch.optim.Optimizer,
    epochs: int,
    steps_per_epoch: int,
    gamma: float = 0.95,
    start_epoch: int = 0,
) -> lr_scheduler.LRScheduler:
    """Multiply the LR by ``gamma`` every epoch from ``start_epoch`` on."""
    return lr_scheduler.LambdaLR(optimizer, lr_lambda=_ExponentialFrom(gamma, start_epoch))


class _ExponentialFrom:
    """``gamma ** max(0, epoch - start)``; a class (not a lambda) so it can be inspected."""

    def __init__(self, gamma: float, start: int) -> None:
        self.gamma, self.start = gamma, start

    def __call__(self, epoch: int) -> float:
        return self.gamma ** max(0, epoch - self.start)


@SCHEDULERS.register("cosine", interval="epoch", length_dependent=True)
def cosine(
    optimizer: torch.optim.Optimizer, epochs: int, steps_per_epoch: int, eta_min: float = 0.0
) -> lr_scheduler.CosineAnnealingLR:
    """Cosine annealing from the initial LR to ``eta_min`` over the run."""
    return lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(epochs, 1), eta_min=eta_min)


@SCHEDULERS.register("plateau", interval="epoch")
def plateau(
    optimizer: torch.optim.Optimizer,
    epochs: int,
    steps_per_epoch: int,
    factor: float = 0.1,
    patience: int = 5,
    threshold: float = 1e-4,
    min_lr: float = 0.0,
) -> lr_scheduler.ReduceLROnPlateau:
    """Reduce the LR by ``factor`` when the validation loss stops improving."""
    return lr_scheduler.ReduceLROnPlateau(
        optimizer,
        mode="min",
        factor=factor,
        patience=patience,
        threshold=threshold,
        min_lr=min_lr,
    )


@SCHEDULERS.register("onecycle", interval="step", length_dependent=True)
def onecycle(
    optimizer: torch.optim.Optimizer,
    epochs: int,
    steps_per_epoch: int,
    max_lr: float | None = None,
    pct_start: float = 0.3,
    div_factor: float = 25.0,
    final_div_factor: float = 1e4,
) -> lr_scheduler.OneCycleLR:
    """One-cycle policy (Smith & Topin, 2019), stepped every batch; ``max_lr`` defaults to lr."""
    peak = max_lr if max_lr is not None else [g["lr"] for g in optimizer.param_groups]
    return lr_scheduler.OneCycleLR(
        optimizer,
        max_lr=peak,
        epochs=epochs,
        steps_per_epoch=steps_per_epoch,
        pct_start=pct_start,
        div_factor=div_factor,
        final_div_factor=final_div_factor,
    )


def build_optimizer(params: Params, name: str, **options: Any) -> torch.optim.Optimizer:
    """Build the optimizer ``name`` over ``params``; unknown options raise ConfigError."""
    entry = OPTIMIZERS.entry(name)
    options = check_kwargs(entry.fn, options, f"optimizer '{name}'", reserved=("params",))
    momentum = options.get("momentum")
    if isinstance(momentum, int | float) and not 0 <= momentum < 1:
        # torch accepts any momentum >= 0; one of 1 or more never forgets a gradient
        raise ConfigError(f"optimizer '{name}': momentum {momentum} must be in [0, 1); e.g. 0.9")
    return entry.fn(params, **options)


def build_scheduler(
    optimizer: torch.optim.Optimizer, name: str, epochs: int, steps_per_epoch: int, **options: Any
) -> Any:
    """Build the scheduler ``name`` for a run of ``epochs`` x ``steps_per_epoch``."""
    entry = SCHEDULERS.entry(name)
    options = check_kwargs(entry.fn, options, f"scheduler '{name}'", reserved=SCHEDULER_ARGS)
    scheduler = entry.fn(optimizer, epochs, steps_per_epoch, **options)
    scheduler.edgetrain_interval = entry.meta.get("interval", "epoch")
    return scheduler


def scheduler_interval(scheduler: Any) -> str:
    """``"step"`` for schedulers stepped every batch, ``"epoch"`` otherwise.

    Schedulers built from the registry carry their entry's ``interval``; for others,
    one-cycle (and cyclic) schedules step per batch.
    """
    interval = getattr(scheduler, "edgetrain_interval", None)
    if interval is not None:
        return str(interval)
    per_batch = (lr_scheduler.OneCycleLR, lr_scheduler.CyclicLR)
    return "step" if isinstance(scheduler, per_batch) else "epoch"


StateMap = Callable[[str, torch.Tensor, dict[str, Any]], dict[str, Any]]


def rebind_parameters(
    optimizer: torch.optim.Optimizer,
    old_names: dict[int, str],
    model: torch.nn.Module,
    state_map: StateMap | None = None,
) -> None:
    """Point ``optimizer`` at ``model``'s current parameters after modules were rebuilt.

    Parameters are matched by name (``old_names`` maps ``id(old_param)`` to its name).
    Parameters that no longer exist leave the optimizer with their state; new ones join
    the group of the first vanished parameter with the same owner prefix (else the first
    group); the optimizer must not have trained them before.

    Args:
        optimizer: the optimizer to update in place.
        old_names: ``{id(p): name for name, p in model.named_parameters()}`` taken before
            the rebuild.
        model: the rebuilt model.
        state_map: ``f(name, new_param, old_state) -> new_state`` to adapt per-parameter
            state (e.g. slice momentum buffers); default keeps the state as it is.
    """
    current = dict(model.named_parameters())
    placed: set[str] = set()
    vanished_group: dict[str, int] = {}
    for gi, group in enumerate(optimizer.param_groups):
        kept: list[torch.Tensor] = []
        for p in group["params"]:
            name = old_names.get(id(p))
            state = optimizer.state.pop(p, None)
            if name is None or name not in current:
                if name is not None:
                    vanished_group.setdefault(name.rsplit(".", 2)[0], gi)
                continue
            new = current[name]
            if state is not None:
                optimizer.state[new] = state_map(name, new, state) if state_map else state
            kept.append(new)
            placed.add(name)
        group["params"] = kept
    known = set(old_names.values())
    for name, p in current.items():
        if name in placed or name in known:
            continue  # new parameters only; ones the optimizer never trained stay out
        index = vanished_group.get(name.rsplit(".", 2)[0], 0)
        optimizer.param_groups[index]["params"].append(p)
    # Model order, whatever order the parameters joined in: optimizer state dicts match
    # parameters by position, so a run rebuilt in several steps and its resumption (one
    # rebuild from the checkpoint) must list them alike.
    position = {id(p): i for i, p in enumerate(current.values())}
    for group in optimizer.param_groups:
        group["params"].sort(key=lambda p: position[id(p)])
