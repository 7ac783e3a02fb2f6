"""Computational attention for PSB models: spend more weight samples where the class is
uncertain.

From the paper "Progressive Stochastic Binarization of Deep Networks": run the network
with few samples, score every position of the last feature map by the entropy of its
class scores, and re-evaluate the positions whose entropy is above the image's mean
(optionally dilated by one position) with more samples.

Supported models end in an ``nn.Linear`` classifier that reads an ``nn.Flatten`` of a
4-D feature map, either directly (``conv ... -> nn.Flatten -> nn.Linear``, as
``vgg_small``) or through global average pooling (``... -> nn.AdaptiveAvgPool2d(1) ->
nn.Flatten -> nn.Linear``, as the ResNets); the classifier's output must be the model's
output. The feature map entering that head is the *last feature map*; its positions are
the ones scored (``vgg_small`` on 32x32 inputs: the 4x4 map after the last max-pool, each
position covering 2x2 outputs of ``conv6``). Class scores per position:

- average-pooling head: ``z_q = W f_q + b`` (the logits are the mean of the ``z_q``);
- flatten head: ``z_q = Q W_q f_q + b`` with ``W_q`` the classifier's weights of position
  ``q`` and ``Q`` the number of positions (again, the logits are the mean of the ``z_q``).

The scores use the classifier's weights as sampled at the low count (its float weights
when the classifier is not converted).

What is recomputed: a selected position's feature vector at the high sample count, which
needs every layer's outputs in the position's receptive field. The computation simulates
this by one full forward at the high sample count and takes the selected positions of its
last feature map (the rest from the low-sample forward); the head then runs on the mixed
map. Each forward draws one weight sample per layer, shared by all positions, so the
selected positions hold exactly the values a per-position evaluation with that sample
gives. The operation count (:class:`AttentionResult`) is that of the per-position
evaluation: the low-sample forward, plus each PSB conv layer's high-sample shifts and
adds at the outputs in the receptive fields of the selected positions, plus the head's
classifier at the high sample count; computing the per-position scores themselves is not
counted. The receptive fields are found once per model by back-propagating every position
through a copy of the model with positive weights, average pools in place of max pools
and no batch-norm (functional max-pooling in a ``forward`` is not seen).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from edgetrain._modules import eval_mode
from edgetrain.compress.psb.cost import operation_cost
from edgetrain.compress.psb.layers import _PSBLayer, psb_layers
from edgetrain.errors import ConfigError

__all__ = [
    "AttentionOutput",
    "AttentionResult",
    "attention_forward",
    "evaluate_attention",
    "position_entropy",
]

_SUPPORTED = (
    "conv ... -> nn.Flatten -> nn.Linear, or ... -> nn.AdaptiveAvgPool2d(1) -> nn.Flatten -> "
    "nn.Linear, with the classifier's output as the model's output"
)


@dataclass
class _Head:
    """The modules after the last feature map, and how they score positions."""

    modules: list[nn.Module]
    classifier: nn.Linear
    pooled: bool

    def __call__(self, features: torch.Tensor) -> torch.Tensor:
        for module in self.modules:
            features = module(features)
        return features

    def scores(self, features: torch.Tensor) -> torch.Tensor:
        """Class scores per position ``(N, K, H, W)``; their mean over positions is the
        logits (classifier weights as this forward samples them)."""
        fc = self.classifier
        weight = fc.weight_sample() if isinstance(fc, _PSBLayer) else fc.weight
        n, c, h, w = features.shape
        if self.pooled:  # a 1x1 convolution with the classifier's weights
            z = F.conv2d(features, weight.view(-1, c, 1, 1))
        else:  # per position q: (N, C) @ (C, K), batched over positions
            per_position = weight.view(-1, c, h * w).permute(2, 1, 0)
            z = torch.bmm(features.flatten(2).permute(2, 0, 1), per_position)
            z = (h * w) * z.permute(1, 2, 0).reshape(n, -1, h, w)
        return z if fc.bias is None else z + fc.bias.view(1, -1, 1, 1)


def _unsupported(model: nn.Module, found: str) -> ConfigError:
    return ConfigError(
        f"computational attention needs a model ending in {_SUPPORTED}; "
        f"{type(model).__name__} {found}"
    )


def _trace_head(model: nn.Module, x: torch.Tensor) -> _Head:
    """Find the head by following tensors back from the model's output."""
    calls: list[tuple[str, nn.Module, Any, Any]] = []
    handles = [
        m.register_forward_hook(
            lambda mod, args, out, n=n: calls.append((n, mod, args[0] if args else None, out))
        )
        for n, m in model.named_modules()
        if n and not any(True for _ in m.children())
    ]
    try:
        with torch.no_grad():
            output = model(x)
    finally:
        for h in handles:
            h.remove()

    def producer(t: Any) -> tuple[str, nn.Module, Any, Any] | None:
        return next((c for c in reversed(calls) if c[3] is t), None)

    def described(call: tuple[str, nn.Module, Any, Any] | None) -> str:
        return "a functional op" if call is None else f"'{call[0]}' ({type(call[1]).__name__})"

    last = producer(output)
    if last is None or not isinstance(last[1], nn.Linear):
        raise _unsupported(model, f"computes its output with {described(last)}")
    name, classifier, flat, _ = last
    before = producer(flat)
    if before is None or not isinstance(before[1], nn.Flatten):
        raise _unsupported(model, f"feeds its classifier '{name}' from {described(before)}")
    flatten, features = before[1], before[2]
    if not isinstance(features, torch.Tensor) or features.dim() != 4 or flatten.start_dim != 1:
        raise _unsupported(model, f"flattens no (N, C, H, W) feature map at '{before[0]}'")
    if features.shape[-2:] != (1, 1):
        return _Head([flatten, classifier], classifier, pooled=False)
    pool = producer(features)
    if pool is None or not (
        isinstance(pool[1], nn.AdaptiveAvgPool2d) and pool[1].output_size in (1, (1, 1))
    ):
        raise _unsupported(model, f"pools its last feature map to 1x1 with {described(pool)}")
    return _Head([pool[1], flatten, classifier], classifier, pooled=True)


def position_entropy(scores: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of the softmax over classes of ``(N, K, H, W)`` scores: ``(N, H, W)``."""
    logp = F.log_softmax(scores.float(), dim=1)
    return -(logp.exp() * logp).sum(dim=1)


@contextlib.contextmanager
def _sampling(model: nn.Module, samples: int) -> Iterator[None]:
    layers = psb_layers(model)
    saved = [layer.psb for _, layer in layers]
    for _, layer in layers:
        layer.psb = replace(layer.psb, samples=samples)
    try:
        yield
    finally:
        for (_, layer), config in zip(layers, saved, strict=True):
            layer.psb = config


def _features(model: nn.Module, head: _Head, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's logits and its last feature map (the head's input)."""
    grabbed: list[torch.Tensor] = []
    hook = head.modules[0].register_forward_pre_hook(lambda _m, args: grabbed.append(args[0]))
    try:
        logits = model(x)
    finally:
        hook.remove()
    return logits, grabbed[-1]


def _random_like(mask: torch.Tensor) -> torch.Tensor:
    """A random mask with the same number of selected positions in every image."""
    n = mask.shape[0]
    flat = mask.reshape(n, -1)
    ranks = torch.rand(flat.shape, device=mask.device).argsort(dim=1).argsort(dim=1)
    return (ranks < flat.sum(dim=1, keepdim=True)).reshape(mask.shape)


@dataclass
class AttentionOutput:
    """One batch through computational attention.

    Attributes:
        logits: the attention result (high samples at the selected positions).
        low_logits / high_logits: all positions at the low / high sample count.
        mask: selected positions ``(N, H, W)`` of the last feature map.
        entropy: entropy of the low-sample class scores per position ``(N, H, W)``.
        low_features / high_features: the last feature map of the two forwards; the
            head ran on ``where(mask, high_features, low_features)``.
        random_logits / random_mask: the control, a random mask of the same coverage in
            every image (None unless asked for).
    """

    logits: torch.Tensor
    low_logits: torch.Tensor
    high_logits: torch.Tensor
    mask: torch.Tensor
    entropy: torch.Tensor
    low_features: torch.Tensor
    high_features: torch.Tensor
    random_logits: torch.Tensor | None = None
    random_mask: torch.Tensor | None = None

    @property
    def coverage(self) -> float:
        """Share of positions re-evaluated."""
        return float(self.mask.float().mean())


@torch.no_grad()
def attention_forward(
    model: nn.Module,
    x: torch.Tensor,
    low: int = 1,
    high: int = 16,
    dilate: bool = False,
    control: bool = False,
) -> AttentionOutput:
    """Evaluate a batch with computational attention (see the module docstring).

    Args:
        model: a PSB model (:func:`~edgetrain.compress.to_psb`) of a supported shape.
        x: a batch of inputs.
        low / high: weight samples of the first pass and of the re-evaluation.
        dilate: also re-evaluate the 8 neighbours of every selected position.
        control: also mix with a random mask of the same coverage per image.

    Raises:
        ConfigError: no PSB layer, samples below 1, or an unsupported model shape.

    Example:
        >>> from edgetrain.compress import to_psb
        >>> from edgetrain.models import create
        >>> net = to_psb(create("vgg_small"), samples=1).eval()
        >>> out = attention_forward(net, torch.randn(2, 3, 32, 32), low=1, high=8)
        >>> out.mask.shape
        torch.Size([2, 4, 4])
    """
    _check(model, low, high)
    return _attend(model, _trace_head(model, x[:1]), x, low, high, dilate, control)


def _attend(
    model: nn.Module,
    head: _Head,
    x: torch.Tensor,
    low: int,
    high: int,
    dilate: bool,
    control: bool,
) -> AttentionOutput:
    with _sampling(model, low):
        low_logits, f_low = _features(model, head, x)
        entropy = position_entropy(head.scores(f_low))
    mask = entropy > entropy.mean(dim=(1, 2), keepdim=True)
    if dilate:
        mask = F.max_pool2d(mask[:, None].float(), 3, stride=1, padding=1)[:, 0] > 0
    with _sampling(model, high):
        high_logits, f_high = _features(model, head, x)
        logits = head(torch.where(mask[:, None], f_high, f_low))
        random_mask = random_logits = None
        if control:
            random_mask = _random_like(mask)
            random_logits = head(torch.where(random_mask[:, None], f_high, f_low))
    return AttentionOutput(
        logits, low_logits, high_logits, mask, entropy, f_low, f_high, random_logits, random_mask
    )


def _check(model: nn.Module, low: int, high: int) -> None:
    if not psb_layers(model):
        raise ConfigError(
            f"{type(model).__name__} has no PSB layer; convert it first with to_psb(model)"
        )
    if not (isinstance(low, int) and isinstance(high, int) and 1 <= low <= high):
        raise ConfigError(
            f"attention samples need 1 <= low <= high (integers), got low={low!r}, high={high!r}"
        )


class _ReceptiveFields:
    """Which outputs of each PSB conv layer every position of the last feature map
    depends on (its receptive field, or cone, in that layer).

    Found once per model: a copy with positive weights (``1 / fan-in``), zero biases,
    average pools in place of max pools and no batch-norm or dropout, so that every path
    from an output back to an input carries a positive gradient; one image per position,
    whose loss is that position's features, then has a nonzero gradient exactly on the
    position's cone.
    """

    def __init__(self, model: nn.Module, head: _Head, input_shape: tuple[int, ...]) -> None:
        net = copy.deepcopy(model).eval()
        twins = dict(zip(model.modules(), net.modules(), strict=True))
        head_input = twins[head.modules[0]]
        for name, module in list(net.named_modules()):
            if isinstance(module, _PSBLayer):
                module.psb = replace(module.psb, samples=0, fixed_point=None, p_bits=None)
                module.prune_mask.fill_(True)
            if isinstance(module, nn.Conv2d | nn.Linear):
                with torch.no_grad():
                    module.weight.fill_(1.0 / module.weight[0].numel())
                    if module.bias is not None:
                        module.bias.zero_()
            replacement: nn.Module | None = None
            if isinstance(module, nn.MaxPool2d):
                replacement = nn.AvgPool2d(
                    module.kernel_size, module.stride, module.padding, module.ceil_mode
                )
            elif isinstance(module, nn.AdaptiveMaxPool2d):
                replacement = nn.AdaptiveAvgPool2d(module.output_size)
            elif isinstance(module, nn.modules.batchnorm._BatchNorm | nn.Dropout):
                replacement = nn.Identity()
            if replacement is not None and name:
                parent, _, child = name.rpartition(".")
                setattr(net.get_submodule(parent) if parent else net, child, replacement)
        convs = [
            (n, m)
            for n, m in net.named_modules()
            if isinstance(m, _PSBLayer) and isinstance(m, nn.Conv2d)
        ]
        outputs: dict[str, torch.Tensor] = {}
        grabbed: list[torch.Tensor] = []
        handles = [
            m.register_forward_hook(lambda _m, _i, out, n=n: outputs.__setitem__(n, out))
            for n, m in convs
        ]
        handles.append(head_input.register_forward_pre_hook(lambda _m, a: grabbed.append(a[0])))
        device = next(model.parameters()).device
        try:
            with torch.no_grad():
                net(torch.ones(1, *input_shape, device=device))
            _, _, h, w = grabbed[-1].shape
            self.positions = h * w
            one_hot = torch.eye(self.positions, device=device).view(-1, 1, h, w)
            x = torch.ones(self.positions, *input_shape, device=device, requires_grad=True)
            with torch.enable_grad():
                net(x)
                names = list(outputs)
                loss = (grabbed[-1] * one_hot).sum()
                grads = torch.autograd.grad(loss, [outputs[n] for n in names], allow_unused=True)
        finally:
            for handle in handles:
                handle.remove()
        # cones[layer]: (positions, outputs of the layer) booleans
        self.cones = {
            n: (g.abs().sum(dim=1) > 0).flatten(1).float()
            for n, g in zip(names, grads, strict=True)
            if g is not None
        }

    def shares(self, masks: torch.Tensor) -> dict[str, float]:
        """Per PSB conv layer: the mean over images of the share of its outputs in the
        union of the cones of the image's selected positions."""
        selected = masks.reshape(masks.shape[0], self.positions).float()
        return {n: float(((selected @ cone) > 0).float().mean()) for n, cone in self.cones.items()}


@dataclass
class AttentionResult:
    """Accuracy and operation count of computational attention on a data set.

    Attributes:
        low / high / dilate: the settings.
        coverage: share of the last feature map's positions re-evaluated.
        positions: positions of the last feature map.
        top1 / loss: percent correct and mean cross-entropy for ``low`` and ``high``
            (all positions at that count), ``attention`` and ``random`` (the control: as
            many random positions per image).
        shifts / adds: per input sample, for ``low``, ``high`` and ``attention`` (see the
            module docstring for what the attention count includes).
        receptive_share: per PSB conv layer, the mean share of its outputs that the
            selected positions need.
    """

    low: int
    high: int
    dilate: bool
    coverage: float
    positions: int
    top1: dict[str, float]
    loss: dict[str, float]
    shifts: dict[str, float]
    adds: dict[str, float]
    receptive_share: dict[str, float] = field(default_factory=dict)

    @property
    def ops_ratio(self) -> float:
        """Shifts of attention over shifts of the full high-sample forward."""
        return self.shifts["attention"] / self.shifts["high"] if self.shifts["high"] else 1.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "low": self.low,
            "high": self.high,
            "dilate": self.dilate,
            "coverage": self.coverage,
            "positions": self.positions,
            "top1": dict(self.top1),
            "loss": dict(self.loss),
            "shifts": dict(self.shifts),
            "adds": dict(self.adds),
            "ops_ratio": self.ops_ratio,
            "receptive_share": dict(self.receptive_share),
        }


def _batches(data: Dataset | DataLoader | Iterable[Any], batch_size: int) -> Iterable[Any]:
    if isinstance(data, Dataset):
        return DataLoader(data, batch_size=batch_size, shuffle=False)
    return data


_KEYS = ("low", "high", "attention", "random")


def evaluate_attention(
    model: nn.Module,
    data: Dataset | DataLoader | Iterable[Any],
    low: int = 1,
    high: int = 16,
    dilate: bool = False,
    batch_size: int = 256,
    seed: int | None = 0,
) -> AttentionResult:
    """Top-1, loss and shift/add counts of computational attention, of the low- and
    high-sample forwards it mixes, and of the random-mask control, on a labelled data set.

    The four results come from the same two forwards per batch (the same weight samples),
    so their differences are not sampling noise between runs.

    Args:
        model: a PSB model of a supported shape (its sample counts are restored after).
        data: a data set of ``(input, target)`` or batches of them.
        low / high: weight samples of the first pass and of the re-evaluation.
        dilate: also re-evaluate the neighbours of selected positions.
        batch_size: when ``data`` is a data set.
        seed: seeds the weight samples and the random masks (None: torch's state).

    Example:
        >>> result = evaluate_attention(psb_net, test_set, low=1, high=16)  # doctest: +SKIP
        >>> result.coverage, result.top1["attention"], result.ops_ratio  # doctest: +SKIP
    """
    _check(model, low, high)
    correct = dict.fromkeys(_KEYS, 0)
    losses = dict.fromkeys(_KEYS, 0.0)
    seen, covered = 0, 0.0
    shares: dict[str, float] = {}
    positions = 0
    input_shape: tuple[int, ...] = ()
    head: _Head | None = None
    fields: _ReceptiveFields | None = None
    device = next(model.parameters()).device
    with contextlib.ExitStack() as stack:
        stack.enter_context(eval_mode(model))
        if seed is not None:
            stack.enter_context(torch.random.fork_rng(devices=[]))
            torch.manual_seed(seed)
        for inputs, targets in _batches(data, batch_size):
            inputs, targets = inputs.to(device), targets.to(device)
            if head is None or fields is None:
                input_shape = tuple(inputs.shape[1:])
                head = _trace_head(model, inputs[:1])
                fields = _ReceptiveFields(model, head, input_shape)
            with torch.no_grad():
                out = _attend(model, head, inputs, low, high, dilate, control=True)
            positions = out.mask[0].numel()
            n = targets.shape[0]
            outputs = dict(
                zip(
                    _KEYS,
                    (out.low_logits, out.high_logits, out.logits, out.random_logits),
                    strict=True,
                )
            )
            for key, logits in outputs.items():
                correct[key] += int((logits.argmax(dim=1) == targets).sum())
                losses[key] += float(F.cross_entropy(logits, targets, reduction="sum"))
            covered += float(out.mask.float().mean(dim=(1, 2)).sum())
            for name, share in fields.shares(out.mask).items():
                shares[name] = shares.get(name, 0.0) + share * n
            seen += n
    if not seen:
        raise ConfigError("evaluate_attention got no batches; pass a labelled data set")
    shares = {k: v / seen for k, v in shares.items()}
    low_cost = operation_cost(model, input_shape, samples=low).by_layer()
    high_cost = operation_cost(model, input_shape, samples=high).by_layer()
    shifts = {
        "low": float(sum(o.shifts for o in low_cost.values())),
        "high": float(sum(o.shifts for o in high_cost.values())),
    }
    adds = {
        "low": float(sum(o.adds for o in low_cost.values())),
        "high": float(sum(o.adds for o in high_cost.values())),
    }
    # Conv layers recompute only their receptive-field share; the rest (the classifier)
    # runs in full at the high count.
    shifts["attention"] = shifts["low"] + sum(
        shares.get(n, 1.0) * o.shifts for n, o in high_cost.items()
    )
    adds["attention"] = adds["low"] + sum(shares.get(n, 1.0) * o.adds for n, o in high_cost.items())
    return AttentionResult(
        low=low,
        high=high,
        dilate=dilate,
        coverage=covered / seen,
        positions=positions,
        top1={k: 100.0 * v / seen for k, v in correct.items()},
        loss={k: v / seen for k, v in losses.items()},
        shifts=shifts,
        adds=adds,
        receptive_share=shares,
    )
