"""``edgetrain cost calibrate``: fit a device profile to this machine.

For each layer kind (convolution, linear, activation, pooling, batch-norm, residual add)
and a range of sizes and batch sizes, time the forward pass, the input gradient, the
weight gradient and the SGD update separately with PyTorch, and fit, per term and kind,
``seconds = a * MACs + c * params + b`` by least squares (the spec's counts give the
MACs; ``params`` is the layer's parameter count, which the forward and the input
gradient read and the weight gradient writes once per call whatever the batch, so the
batch sizes separate the two rates; fitted for linear layers, see
``WEIGHT_BOUND_KINDS``). The profile stores ``a`` relative to the
forward-convolution rate as the multiplier, ``c`` as a per-parameter cost and ``b`` as a
per-call offset, both in forward-conv MACs, the conv rate as ``peak_macs_per_s`` and the
fixed cost of one optimizer step as ``offset_per_step``. Where the three-rate fit is not
identifiable or gives a negative rate, ``seconds = a * MACs + b`` is fitted instead.

:func:`anchor_profile` (``edgetrain cost calibrate --model``) then times whole training
steps of a given model and fits the profile to them. A layer timed alone runs faster
than inside a step (its weights and inputs stay in cache, nothing else runs between its
calls) and a step has work no layer term sees (free ops such as dropout, the activation
and pooling backward between layers, autograd's bookkeeping). Part of that time is fixed
per step and part ends early with the backward when the lower layers are frozen, so
both are fitted: ``layers`` anchoring (the default) times the steps that train the last
1, 2, ..., N segments of the plan's layers, each segment alone and all but each, taking
turns step by step, and fits a per-step offset plus one factor per group (the forward;
the backward of activations, pooling and normalisation; per segment, the input and the
weight gradient of its conv and linear layers); ``scale`` anchoring times the
suffix steps only and fits ``measured = offset + s * predicted`` (every layer term times
``s``); ``offset`` anchoring times the plan's step only and charges the whole
difference as a fixed cost.
"""

from __future__ import annotations

import copy
import platform
import random
import statistics
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, replace
from functools import partial

import numpy as np
import torch
from torch import nn

from edgetrain.cost.analysis import analyze
from edgetrain.cost.plans import ALL, Plan, plan_label, resolve_plan
from edgetrain.cost.profile import TERMS, DeviceProfile
from edgetrain.cost.tracer import trace

__all__ = [
    "ANCHORS",
    "Measurement",
    "anchor_profile",
    "calibrate",
    "fit_profile",
    "measure",
    "median_measurements",
    "model_step_seconds",
    "model_steps_seconds",
]

ANCHORS = ("layers", "scale", "offset")
# The layer kinds whose backward terms the ``layers`` anchor fits per segment of layers;
# the backward of every other kind (activations, pooling, normalisation, adds) is one
# more group.
_PRODUCT_KINDS = ("conv", "linear")
# How strongly each group's factor is held to the common factor when few steps tell
# it apart (savings relative to the plan's step: a group whose removal changes the
# timed steps by a few tenths of a percent or more is fitted from them; one that
# changes them by far less keeps the common one).
_RIDGE = 1e-5


@dataclass(frozen=True)
class Measurement:
    """Seconds and MACs of one term of one layer configuration (``params``: the layer's
    parameter count, 0 for layers without weights)."""

    kind: str
    term: str
    macs: int
    seconds: float
    params: int = 0


class _Add(nn.Module):
    """A residual add as a module, so it can be timed like the others."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + x.detach()


def _configs(quick: bool) -> Iterator[tuple[str, nn.Module, tuple[int, ...], int]]:
    """(kind, module, sample shape, batch) to time."""
    batches = (1, 32) if quick else (1, 8, 32)
    convs = [
        (3, 16, 32, 1),
        (16, 16, 32, 1),
        (16, 32, 16, 1),
        (32, 64, 8, 1),
        (64, 64, 8, 1),
        (1, 32, 32, 0),
    ]
    if quick:
        convs = convs[1::2]
    maps = [(16, 32, 32), (64, 8, 8)] if quick else [(16, 32, 32), (32, 16, 16), (64, 8, 8)]
    for b in batches:
        for c_in, c_out, size, pad in convs:
            yield "conv", nn.Conv2d(c_in, c_out, 3, padding=pad), (c_in, size, size), b
        # up to a weight larger than the CPU's caches, which batch 1 reads from memory
        for f_in, f_out in ((1024, 10), (4096, 128), (256, 256), (16384, 128)):
            yield "linear", nn.Linear(f_in, f_out), (f_in,), b
        for shape in maps:
            yield "activation", nn.ReLU(), shape, b
            yield "pool", nn.MaxPool2d(2), shape, b
            yield "batchnorm", nn.BatchNorm2d(shape[0]), shape, b
            yield "add", _Add(), shape, b


def _time(fn: Callable[[], object], min_seconds: float) -> float:
    """Median seconds of one call of ``fn`` (calls repeated to at least ``min_seconds``)."""
    for _ in range(2):
        fn()
    samples = []
    for _ in range(5):
        n, start = 0, time.perf_counter()
        while True:
            fn()
            n += 1
            elapsed = time.perf_counter() - start
            if elapsed >= min_seconds / 5:
                break
        samples.append(elapsed / n)
    return statistics.median(samples)


def _grad(y: torch.Tensor, wrt: torch.Tensor | Sequence[torch.Tensor], g: torch.Tensor) -> object:
    return torch.autograd.grad(y, wrt, g, retain_graph=True)


def measure(quick: bool = False, min_seconds: float = 0.05) -> list[Measurement]:
    """Time the four terms of every configuration on this machine's CPU.

    A real step makes one ``backward()`` and one ``optimizer.step()`` for the whole
    network, so the fixed cost of an ``autograd.grad`` call and of an optimizer step is
    measured on a trivial graph and subtracted from the per-layer gradient and update
    times (it is part of the per-step offset instead).
    """
    tiny = torch.ones(1, requires_grad=True)
    grad_call = _time(partial(_grad, tiny * 2.0, tiny, torch.ones(1)), min_seconds)
    tiny.grad = torch.zeros(1)
    step_call = _time(torch.optim.SGD([tiny], lr=1e-9).step, min_seconds)

    def net(seconds: float, overhead: float) -> float:
        return max(seconds - overhead, seconds * 0.05)

    out: list[Measurement] = []
    for kind, module, shape, batch in _configs(quick):
        module.train()
        params = list(module.parameters())
        counts = next(r.counts for r in trace(module, shape, batch).records if r.counts)
        x = torch.randn(batch, *shape)
        with torch.no_grad():
            seconds = _time(partial(module, x), min_seconds)
        n_params = sum(p.numel() for p in params)
        out.append(Measurement(kind, "forward", counts.forward, seconds, n_params))
        # input gradient alone: weights frozen, the input requires grad
        for p in params:
            p.requires_grad_(False)
        xg = x.clone().requires_grad_(True)
        y = module(xg)
        g = torch.ones_like(y)
        seconds = net(_time(partial(_grad, y, xg, g), min_seconds), grad_call)
        out.append(Measurement(kind, "input_grad", counts.input_grad, seconds, n_params))
        if not params:
            continue
        # weight gradient alone: the input does not require grad
        for p in params:
            p.requires_grad_(True)
        y = module(x)
        seconds = net(_time(partial(_grad, y, params, g), min_seconds), grad_call)
        out.append(Measurement(kind, "weight_grad", counts.weight_grad, seconds, n_params))
        for p in params:
            p.grad = torch.zeros_like(p)
        opt = torch.optim.SGD(params, lr=1e-9)
        seconds = net(_time(opt.step, min_seconds), step_call)
        # the update's MACs are its parameters: no separate per-parameter rate
        out.append(Measurement(kind, "update", n_params, seconds))
    return out


def _step_overhead(min_seconds: float) -> float:
    """Seconds of a training step that does (almost) nothing: the fixed cost per step."""
    model = nn.Linear(1, 1)
    opt = torch.optim.SGD(model.parameters(), lr=1e-9)
    x, t = torch.zeros(1, 1), torch.zeros(1, 1)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        nn.functional.mse_loss(model(x), t).backward()
        opt.step()

    return _time(step, min_seconds)


# Layer kinds whose weight traffic is fitted: a linear layer at a small batch is a
# matrix-vector product that reads every weight once per call. A convolution reuses each
# weight over all output positions, its weights are small, and a per-parameter rate
# fitted for it only follows the timing noise.
WEIGHT_BOUND_KINDS = ("linear",)


def _fit_rates(rows: list[Measurement]) -> tuple[float, float, float]:
    """``(a, c, b)`` of ``seconds = a * MACs + c * params + b`` by relative least squares
    (rows divided by the measured time: small and large layers count alike, as they do
    in a step-time ratio); ``c = 0`` for kinds not in ``WEIGHT_BOUND_KINDS``, where
    params do not vary apart from MACs, or where the three-rate fit has a negative rate."""
    macs = np.array([m.macs for m in rows], dtype=float)
    params = np.array([m.params for m in rows], dtype=float)
    secs = np.array([m.seconds for m in rows], dtype=float)
    ones = np.ones_like(secs)
    if rows[0].kind in WEIGHT_BOUND_KINDS and params.any() and len(rows) >= 4:
        design = np.stack([macs, params, ones], 1) / secs[:, None]
        if np.linalg.matrix_rank(design) == 3:
            a, c, b = np.linalg.lstsq(design, ones, rcond=None)[0]
            if a > 0 and c >= 0 and b >= 0:
                return float(a), float(c), float(b)
            if a > 0 and c > 0:  # a negative per-call cost: both rates through the origin
                a, c = np.linalg.lstsq(design[:, :2], ones, rcond=None)[0]
                if a > 0 and c >= 0:
                    return float(a), float(c), 0.0
    design = np.stack([macs, ones], 1) / secs[:, None]
    a, b = np.linalg.lstsq(design, ones, rcond=None)[0]
    if a <= 0 or b < 0:  # noise on tiny layers: fall back to a rate through the origin
        a, b = float(np.mean(secs / np.maximum(macs, 1))), 0.0
    return max(float(a), 0.0), 0.0, float(b)


def fit_profile(
    measurements: list[Measurement], step_seconds: float = 0.0, name: str = "host-cpu"
) -> DeviceProfile:
    """Least-squares fit of ``seconds = a * MACs + c * params + b`` per term and kind, as
    a profile."""
    fits: dict[tuple[str, str], tuple[float, float, float]] = {}
    keys = sorted({(m.term, m.kind) for m in measurements})
    for key in keys:
        rows = [m for m in measurements if (m.term, m.kind) == key]
        if not any(m.macs for m in rows):  # a term the spec counts as zero MACs: per call
            fits[key] = (0.0, 0.0, float(np.median([m.seconds for m in rows])))
            continue
        fits[key] = _fit_rates(rows)
    rate = fits.get(("forward", "conv"), (0.0, 0.0, 0.0))[0]
    if rate <= 0:
        raise ValueError("calibration needs forward convolution measurements")
    multipliers: dict[str, dict[str, float]] = {t: {"default": 1.0} for t in TERMS}
    per_call: dict[str, dict[str, float]] = {t: {} for t in TERMS}
    per_param: dict[str, dict[str, float]] = {}
    for (term, kind), (a, c, b) in fits.items():
        multipliers[term][kind] = round(a / rate, 4)
        per_call[term][kind] = round(b / rate, 1)
        if c > 0:
            per_param.setdefault(term, {})[kind] = round(c / rate, 4)
    return DeviceProfile(
        name=name,
        description=(
            f"fitted by 'edgetrain cost calibrate' on {platform.node() or 'this machine'} "
            f"({platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} "
            "threads)"
        ),
        peak_macs_per_s=round(1.0 / rate),
        offset_per_step=round(step_seconds / rate, 1),
        multipliers=multipliers,
        per_call=per_call,
        per_param=per_param,
    )


def model_step_seconds(
    model: nn.Module,
    input_shape: Sequence[int],
    params: Collection[str],
    batch_size: int = 1,
    min_seconds: float = 1.0,
) -> float:
    """Median seconds of one plain-SGD training step of a copy of ``model`` on the CPU that
    updates the parameters named in ``params`` (random inputs, cross-entropy on the
    output's second dimension as classes)."""
    return model_steps_seconds(model, input_shape, [params], batch_size, min_seconds)[0]


def model_steps_seconds(
    model: nn.Module,
    input_shape: Sequence[int],
    plans: Sequence[Collection[str]],
    batch_size: int = 1,
    min_seconds: float = 1.0,
    copies: int = 1,
) -> list[float]:
    """Median seconds of one plain-SGD training step for each parameter set in ``plans``,
    on a copy of ``model``. The plans take turns step by step, as a layer schedule's
    steps do: one optimizer holds every parameter of any plan, each step sets
    ``requires_grad`` for its plan before the forward and the others keep no gradient,
    so each step pays what follows a step of another plan. Sharing the run also puts
    every plan under the same machine load and memory layout (step times of separate
    runs on a shared machine move by more than a frozen layer saves).

    With ``copies`` > 1 each of that many fresh copies is timed so (``min_seconds``
    each) and the median is over all their steps: one copy's memory layout can make a
    plan's step up to a tenth slower or faster for as long as the copy lives, more than
    some frozen layers save."""
    if not plans or any(not params for params in plans):
        raise ValueError("the plan updates no parameters")
    samples: list[list[float]] = [[] for _ in plans]
    for k in range(max(copies, 1)):
        steps = _plan_steps(model, input_shape, plans, batch_size, min_seconds, seed=k)
        for i, times in enumerate(steps):
            samples[i] += times
    return [statistics.median(s) for s in samples]


def _plan_steps(
    model: nn.Module,
    input_shape: Sequence[int],
    plans: Sequence[Collection[str]],
    batch_size: int,
    min_seconds: float,
    seed: int = 0,
) -> list[list[float]]:
    """Step seconds of each plan, taking turns step by step on one fresh copy, in a new
    random order every round: a step runs faster or slower by what the step before it
    left in the caches and the allocator (up to a twentieth of a step after a short
    one), so no plan should always follow the same one."""
    net = copy.deepcopy(model).to("cpu").train()
    named = list(net.named_parameters())
    union = set().union(*plans)
    opt = torch.optim.SGD([p for n, p in named if n in union], lr=1e-9)
    flags = [[n in params for n, _ in named] for params in plans]
    x = torch.randn(batch_size, *input_shape)
    with torch.no_grad():
        classes = net(x).shape[1]
    y = torch.randint(0, classes, (batch_size,))

    def step(plan: int) -> float:
        start = time.perf_counter()
        for (_, p), on in zip(named, flags[plan], strict=True):
            p.requires_grad_(on)
        loss = nn.functional.cross_entropy(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return time.perf_counter() - start

    warm = [step(i % len(plans)) for i in range(5 * len(plans))]
    cycles = max(9, int(min_seconds / max(sum(warm) / 5, 1e-9)))
    samples: list[list[float]] = [[] for _ in plans]
    order = random.Random(seed)
    for _ in range(cycles):
        for i in order.sample(range(len(plans)), len(plans)):
            samples[i].append(step(i))
    return samples


def anchor_profile(
    profile: DeviceProfile,
    model: nn.Module,
    input_shape: Sequence[int],
    plan: Plan = ALL,
    batch_size: int = 1,
    min_seconds: float = 1.0,
    anchor: str = "layers",
    copies: int = 5,
) -> DeviceProfile:
    """``profile`` fitted to measured training steps of ``model``.

    The per-term rates come from layers timed one at a time; inside a whole step the same
    layers run slower (caches hold other work) and the step spends time that no layer
    term sees: ops the spec counts as free (dropout, reshapes), autograd's bookkeeping.
    Part of that time is fixed per step; part (the backward of activations, pooling and
    dropout between trained layers, the bookkeeping of their nodes) ends early when a
    schedule freezes the lower layers. The steps are timed taking turns step by step on
    ``copies`` fresh copies of the model, one after another (:func:`model_steps_seconds`),
    at most 6 of the plan's conv/linear layers (evenly spread) marking where plans start.

    - ``"layers"``: the marks cut the plan's layers into at most 6 segments (one layer
      each on a small network). Times the steps that train the last 1, 2, ..., N
      segments, each segment alone, and all of the plan but each segment, and fits, by
      non-negative least squares on what each step saves against the plan's step, one
      factor per group (the per-step offset then matches the plan's step):
      the forward (with the offset: every step runs all of it), the backward of the
      kinds other than conv/linear (activations, pooling, normalisation, adds), and,
      per segment, the input gradient and the weight gradient with the update of its
      conv/linear layers (the profile's ``layer_factors``). A layer's cost inside a
      step depends on the layer: a memory-bound linear layer, a convolution whose
      kernel runs faster at this shape than the calibration's. A group the timed steps
      hardly tell apart keeps the common factor of ``"scale"``. Dropout's backward is
      no term; it ends with the input gradient of the layer above it, whose factor
      takes it in.
    - ``"scale"``: times the suffix steps only and fits ``measured = offset + s *
      predicted`` (every layer term times ``s``, the rest the per-step offset).
    - ``"offset"``: times the plan's step only and charges the whole difference as a
      fixed cost (a schedule's relative saving is then under-predicted: none of the
      residual ends early).

    With fewer than two conv/linear layers in the plan, ``layers`` and ``scale`` fall
    back to ``offset``. A profile anchored on one model is a profile for that model.

    Args:
        profile: a calibrated profile (it needs ``peak_macs_per_s``).
        model: the model to time (a copy is timed; ``model`` is not changed).
        input_shape: one sample's shape.
        plan: ``ALL``, ``"last:N"`` or layer names: the conventional step of the
            fine-tuning the profile will predict.
        batch_size: the steps' batch.
        min_seconds: timing budget per copy.
        anchor: ``"layers"``, ``"scale"`` or ``"offset"``.
        copies: fresh copies of the model timed in turn, the median over all their
            steps (a copy's memory layout moves some steps by up to a tenth).

    Example:
        >>> from edgetrain.models import create
        >>> host = anchor_profile(calibrate(), create("kws_cnn"), (1, 32, 32))  # doctest: +SKIP
    """
    if anchor not in ANCHORS:
        raise ValueError(f"unknown anchor '{anchor}'; choose one of: {', '.join(ANCHORS)}")
    if not profile.peak_macs_per_s:
        raise ValueError(f"profile '{profile.name}' has no peak_macs_per_s to anchor")
    rate = profile.peak_macs_per_s
    order = analyze(model, input_shape, plans=[], profile=profile).layer_order
    params = resolve_plan(model, plan, order)
    layers = [name for name in order if resolve_plan(model, [name], order) <= params]
    count = len(layers) if anchor != "offset" else 0
    depths = sorted({round(1 + k * (count - 1) / 5) for k in range(6)}) if count > 1 else []
    plans: list[Plan] = [plan, *(layers[-d:] for d in depths if d < count)]
    n_suffix = len(plans)
    # the marks cut the plan's layers into at most 6 segments, each fitted apart
    starts = sorted(len(layers) - d for d in depths)
    ends = [*starts[1:], len(layers)] if starts else []
    segments = [layers[a:b] for a, b in zip(starts, ends, strict=True)]
    if anchor == "layers":
        plans += [list(seg) for seg in segments]
        plans += [[n for n in layers if n not in seg] for seg in segments]
    named = [params, *(resolve_plan(model, p, order) for p in plans[1:])]
    keep = [i for i, ps in enumerate(named) if ps and ps not in named[:i]]
    plans, named = [plans[i] for i in keep], [named[i] for i in keep]
    n_suffix = sum(i < n_suffix for i in keep)
    report = analyze(
        model, input_shape, plans=plans, profile=profile, batch_size=batch_size, memory="layerwise"
    )
    predicted = [step.estimated_seconds or 0.0 for step in report.steps()]
    measured = model_steps_seconds(model, input_shape, named, batch_size, min_seconds, copies)
    label = f"{type(model).__name__} {'x'.join(map(str, input_shape))} {plan_label(plan)}"
    base = profile.offset_per_step / rate
    scale, offset = _fit_anchor(predicted[:n_suffix], measured[:n_suffix], base)
    head = f"({measured[0] * 1e3:.3f} ms for the plan's step)"
    if scale == 1.0:
        how = f"anchored on a measured {label} step at batch {batch_size}"
    elif anchor == "scale":
        how = (
            f"fitted to {n_suffix} measured steps of {label} and its last 1-{count} "
            f"layers at batch {batch_size} (layer terms x{scale:.3f})"
        )
    else:
        groups = _group_seconds(profile, model, input_shape, plans, batch_size, segments)
        factors, offset = _fit_groups(groups, measured, scale)
        fitted = _segment_profile(profile, factors, segments)
        shown = ", ".join(f"{g} x{f:.3f}" for g, f in factors.items() if g != "common")
        return fitted.model_copy(
            update={
                "offset_per_step": round(max(offset * rate, 0.0), 1),
                "description": f"{profile.description}; fitted to {len(plans)} measured "
                f"steps of {label} (the last 1-{count} layers, each of {len(segments)} "
                f"segments alone, all but each) at batch {batch_size} ({shown}) {head}",
            }
        )
    return profile.model_copy(
        update={
            "offset_per_step": round(max(offset * rate, 0.0), 1),
            "multipliers": _scaled(profile.multipliers, scale, default=1.0),
            "per_call": _scaled(profile.per_call, scale),
            "per_param": _scaled(profile.per_param, scale),
            "description": f"{profile.description}; {how} {head}",
        }
    )


def _group_of(term: str, kind: str) -> str:
    """The kind-level group of one term of one layer kind."""
    if term == "forward":
        return "forward"
    if kind in _PRODUCT_KINDS:
        return f"{kind} {'input_grad' if term == 'input_grad' else 'weight_grad'}"
    return "other backward"


# Groups of the product kinds' backward terms, each fitted per segment of layers.
_PRODUCT_GROUPS = tuple(f"{k} {t}" for k in _PRODUCT_KINDS for t in ("input_grad", "weight_grad"))
_SEGMENT_TERMS = {"input_grad": ("input_grad",), "weight_grad": ("weight_grad", "update")}


def _group_seconds(
    profile: DeviceProfile,
    model: nn.Module,
    input_shape: Sequence[int],
    plans: Sequence[Plan],
    batch_size: int,
    segments: Sequence[Sequence[str]],
) -> dict[str, list[float]]:
    """Seconds each group adds to each plan's step under ``profile`` (the profile masked
    to one group at a time, so the analysis itself splits the step): the forward, the
    backward of kinds other than conv/linear, the input gradient and the weight
    gradient with the update of each segment's conv/linear layers, and those of the
    conv/linear layers in no segment (``rest``)."""
    quiet = profile.model_copy(update={"offset_per_step": 0.0})
    products = dict.fromkeys(["forward", "other backward"], 0.0)
    masks: dict[str, DeviceProfile] = {
        "forward": _grouped(quiet, {}, only="forward"),
        "other backward": _grouped(quiet, {}, only="other backward"),
    }
    backward = _grouped(quiet, products)
    inside = {n for seg in segments for n in seg}
    names = {row.name.split("#")[0] for row in analyze(model, input_shape, plans=[]).by_layer()}
    for seg in segments:
        for group, terms in _SEGMENT_TERMS.items():
            table = {n: {t: float(n in seg and t in terms) for t in TERMS} for n in names}
            masks[f"{seg[0]} {group}"] = backward.model_copy(update={"layer_factors": table})
    rest = {n: dict.fromkeys(TERMS, 0.0) for n in inside}
    masks["rest"] = backward.model_copy(update={"layer_factors": rest})
    out: dict[str, list[float]] = {}
    for group, masked in masks.items():
        steps = analyze(
            model,
            input_shape,
            plans=list(plans),
            profile=masked,
            batch_size=batch_size,
            memory="layerwise",
        ).steps()
        out[group] = [s.estimated_seconds or 0.0 for s in steps]
    return out


def _segment_profile(
    profile: DeviceProfile, factors: dict[str, float], segments: Sequence[Sequence[str]]
) -> DeviceProfile:
    """``profile`` with the fitted factors: kind-level for the forward, the other kinds'
    backward and the conv/linear layers in no segment; per layer for the segments'."""
    rest = factors["rest"] if factors["rest"] > 0 else factors["common"]
    kinds = {"forward": factors["forward"], "other backward": factors["other backward"]}
    kinds.update(dict.fromkeys(_PRODUCT_GROUPS, rest))
    per_layer: dict[str, dict[str, float]] = {}
    for seg in segments:
        for group, terms in _SEGMENT_TERMS.items():
            factor = factors.get(f"{seg[0]} {group}", rest) / rest
            for name in seg:
                for term in terms:
                    per_layer.setdefault(name, {})[term] = round(factor, 6)
    return _grouped(profile, kinds).model_copy(update={"layer_factors": per_layer})


def _grouped(
    profile: DeviceProfile, factors: dict[str, float], only: str | None = None
) -> DeviceProfile:
    """``profile`` with every term's multiplier, per-call and per-parameter cost times
    its kind-level group's factor (1 where ``factors`` has none); with ``only``, every
    group but that one set to 0."""

    def factor(term: str, kind: str) -> float:
        group = _group_of(term, kind if kind in _PRODUCT_KINDS else "other")
        return factors.get(group, 1.0) if only is None else float(group == only)

    def table(source: dict[str, dict[str, float]], term: str, default: float) -> dict[str, float]:
        row = dict(source.get(term, {}))
        row["default"] = row.get("default", default)
        for kind in _PRODUCT_KINDS:  # explicit: the default is the other kinds' now
            row.setdefault(kind, row["default"])
        return {kind: round(value * factor(term, kind), 6) for kind, value in row.items()}

    return profile.model_copy(
        update={
            "multipliers": {t: table(profile.multipliers, t, 1.0) for t in TERMS},
            "per_call": {t: table(profile.per_call, t, 0.0) for t in TERMS},
            "per_param": {t: table(profile.per_param, t, 0.0) for t in TERMS},
        }
    )


def _fit_groups(
    groups: dict[str, list[float]], measured: Sequence[float], common: float
) -> tuple[dict[str, float], float]:
    """``({group: factor}, per-step offset in seconds)`` for ``measured = offset +
    sum(factor * group seconds)``, fitted to what a schedule is predicted from: the time
    each step saves against the first (the plan's own step). The savings are fitted by
    non-negative least squares relative to the first step, each factor held to
    ``common`` with weight ``_RIDGE``; the offset then matches the first step exactly.
    Fitting the step times themselves spreads a 1 % error over every step, which is
    10-30 % of what freezing a layer saves. The forward runs whole in every step, so
    no saving tells it apart from the offset: it keeps ``common`` and the offset takes
    the rest (the forward's factor shrinks where the offset would be negative)."""
    from scipy.optimize import nnls

    secs = np.array(measured, dtype=float)
    forward = np.array(groups.get("forward", [0.0] * len(secs)), dtype=float)
    names = [g for g in groups if g != "forward" and max(groups[g]) > 0]
    factors = {"common": common, **dict.fromkeys(groups, common)}  # the unfitted keep it
    if not names or len(secs) < 2:
        return factors, max(float(secs[0]) - common * float(forward[0]), 0.0)
    columns = np.stack([np.array(groups[g], dtype=float) for g in names], 1)
    design = (columns[0] - columns[1:]) / secs[0]  # seconds each group saves, per step
    target = (secs[0] - secs[1:]) / secs[0]
    ridge = np.eye(len(names)) * np.sqrt(_RIDGE)
    solution = nnls(
        np.vstack([design, ridge]),
        np.concatenate([target, np.full(len(names), np.sqrt(_RIDGE) * common)]),
    )[0]
    factors.update({g: float(f) for g, f in zip(names, solution, strict=True)})
    fixed = float(secs[0] - columns[0] @ solution)
    forward_s = float(forward[0]) if forward.size else 0.0
    offset = fixed - common * forward_s
    if offset < 0 and forward_s > 0:
        factors["forward"], offset = max(fixed, 0.0) / forward_s, 0.0
    return factors, max(offset, 0.0)


def _fit_anchor(
    predicted: Sequence[float], measured: Sequence[float], offset: float
) -> tuple[float, float]:
    """``(s, per-step offset in seconds)`` so that ``offset' + s * (predicted - offset)``
    matches ``measured`` (relative least squares; through the origin where the offset
    would be negative); ``s = 1`` and the first step's residual as the offset when one
    step was timed or the steps do not differ in predicted time."""
    terms = np.array(predicted, dtype=float) - offset
    secs = np.array(measured, dtype=float)
    if len(terms) > 1 and np.ptp(terms) > 0.02 * terms.max():
        design = np.stack([np.ones_like(terms), terms], 1) / secs[:, None]
        fixed, scale = np.linalg.lstsq(design, np.ones_like(secs), rcond=None)[0]
        if scale > 0 and fixed >= 0:
            return float(scale), float(fixed)
        ratio = terms / secs
        scale = float(ratio.sum() / (ratio**2).sum())
        if scale > 0:
            return scale, 0.0
    return 1.0, max(float(secs[0] - terms[0]), 0.0)


def _scaled(
    table: dict[str, dict[str, float]], scale: float, default: float | None = None
) -> dict[str, dict[str, float]]:
    """Every entry of a per-term table times ``scale`` (``default``: the value a term
    without a ``default`` entry has, made explicit so that it is scaled too)."""
    if scale == 1.0:
        return table
    out = {}
    for term in {*table, *(TERMS if default is not None else ())}:
        row = dict(table.get(term, {}))
        if default is not None:
            row.setdefault("default", default)
        out[term] = {k: round(v * scale, 6) for k, v in row.items()}
    return out


def calibrate(
    quick: bool = False, name: str = "host-cpu", rounds: int | None = None
) -> DeviceProfile:
    """Measure this machine and return the fitted profile (``profile.save(path)``).

    Args:
        quick: fewer layer sizes and one round (about a sixth of the time).
        name: the profile's name.
        rounds: how many times every configuration is timed, in turn (the median is
            fitted); default 3, or 1 when ``quick``. On a shared machine a burst of other
            load skews every configuration timed during it; with rounds, one skewed
            round is outvoted.

    Example:
        >>> profile = calibrate(quick=True)  # doctest: +SKIP
        >>> profile.save("host-cpu.yaml")  # doctest: +SKIP
    """
    rounds = rounds if rounds is not None else (1 if quick else 3)
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    with torch.random.fork_rng():
        torch.manual_seed(0)
        runs = [measure(quick) for _ in range(rounds)]
        steps = [_step_overhead(0.05) for _ in range(rounds)]
    return fit_profile(median_measurements(runs), statistics.median(steps), name)


def median_measurements(runs: list[list[Measurement]]) -> list[Measurement]:
    """Per configuration, the median seconds over rounds of the same measurements."""
    first = runs[0]
    if any(len(run) != len(first) for run in runs):
        raise ValueError("every round must time the same configurations")
    return [
        replace(m, seconds=statistics.median(run[i].seconds for run in runs))
        for i, m in enumerate(first)
    ]
