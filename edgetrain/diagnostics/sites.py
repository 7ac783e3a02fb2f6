"""Where a model's activations are: activation modules and functional activation calls.

An activation *site* is a place whose input is read as a pre-activation: an activation
module (``nn.ReLU``, ``nn.GELU``, ...; see :data:`ACTIVATION_TYPES`) or a call of an
activation function in some module's ``forward`` (``F.relu(x)``, ``torch.relu(x)``,
``x.relu()``, ``F.gelu(x)``; see :data:`FUNCTIONAL_ACTIVATIONS`). A functional site is
named after the module whose ``forward`` calls it, the function and, from the second
call of the same function in that ``forward`` on, the call's number:
``layer1.0.relu()``, ``layer1.0.relu()#2``; the model's own ``forward`` has no prefix
(``relu()``).

Module sites are read by forward pre-hooks. Functional sites are found by one forward on
the meta device (no real memory) and read at run time by a ``TorchFunctionMode`` that is
active only during the model's forward and only when functional sites are watched; a
forward-hook pair on every module tracks whose ``forward`` is running. Calls made inside
an activation module (``nn.ReLU`` calls ``F.relu``), or on the output of an
:class:`ActivationMarker`, belong to that module and are not counted twice.

For smooth activations (GELU, SiLU, Hardswish, ELU, ...) the pattern is the sign of the
pre-activation: where the unit passes its input on (nearly) linearly.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.hooks import RemovableHandle

from edgetrain._modules import eval_mode, structure_key
from edgetrain.errors import ConfigError

__all__ = [
    "ACTIVATION_TYPES",
    "FUNCTIONAL_ACTIVATIONS",
    "ActivationMarker",
    "ActivationWatch",
    "FunctionalActivation",
    "Site",
    "activation_layers",
    "activation_layouts",
    "no_activation_message",
]


class ActivationMarker(nn.Identity):
    """An identity that marks its input as a pre-activation.

    Functional activations are found without it (see the module docstring); a marker
    still names a site explicitly, for example before an activation function that is
    not in :data:`FUNCTIONAL_ACTIVATIONS`.

    Example:
        >>> class Net(nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.fc = nn.Linear(2, 4)
        ...         self.act = ActivationMarker()
        ...     def forward(self, x):
        ...         return torch.tanh(self.act(self.fc(x)))
        >>> list(activation_layers(Net()))
        ['act']
    """


ACTIVATION_TYPES: tuple[type[nn.Module], ...] = (
    nn.ReLU,
    nn.ReLU6,
    nn.PReLU,
    nn.LeakyReLU,
    nn.RReLU,
    nn.GELU,
    nn.SiLU,
    nn.Hardswish,
    nn.Mish,
    nn.ELU,
    nn.CELU,
    nn.SELU,
    ActivationMarker,
)
"""Module types whose input is recorded as a pre-activation."""

FUNCTIONAL_ACTIVATIONS: dict[Callable[..., Any], str] = {
    F.relu: "relu",
    F.relu_: "relu",
    torch.relu: "relu",
    torch.relu_: "relu",
    torch.Tensor.relu: "relu",
    torch.Tensor.relu_: "relu",
    F.relu6: "relu6",
    F.leaky_relu: "leaky_relu",
    F.leaky_relu_: "leaky_relu",
    F.prelu: "prelu",
    F.rrelu: "rrelu",
    F.gelu: "gelu",
    F.silu: "silu",
    F.hardswish: "hardswish",
    F.mish: "mish",
    F.elu: "elu",
    F.elu_: "elu",
    F.celu: "celu",
    F.selu: "selu",
}
"""Activation functions whose calls are sites, with the name a site gets."""


@dataclass(frozen=True)
class FunctionalActivation:
    """A call of an activation function in a module's ``forward``.

    Attributes:
        owner: qualified name of the module whose ``forward`` makes the call ("" for the
            model's own ``forward``).
        function: the function's name (``relu``, ``gelu``, ...).
        call: which call of ``function`` in that ``forward`` it is (1 for the first).
    """

    owner: str
    function: str
    call: int

    @property
    def name(self) -> str:
        base = f"{self.owner}.{self.function}()" if self.owner else f"{self.function}()"
        return base if self.call == 1 else f"{base}#{self.call}"


Site = nn.Module | FunctionalActivation
"""An activation site: its module, or the functional call."""


def no_activation_message(model: nn.Module, what: str = "to record") -> str:
    """The one line for a model without any activation site."""
    kinds = ", ".join(t.__name__ for t in ACTIVATION_TYPES[:-1])
    return (
        f"{type(model).__name__} has no activation layers {what}: none of {kinds} and no "
        "call of F.relu/F.gelu/... in a forward; insert ActivationMarker before other "
        "activations"
    )


def activation_layers(
    model: nn.Module,
    layers: Iterable[str] | None = None,
    input_shape: Sequence[int] | None = None,
) -> dict[str, Site]:
    """The activation sites of ``model`` by name.

    Args:
        model: any network.
        layers: keep only these names (all when None).
        input_shape: one sample's shape. With it, one meta-device forward also finds the
            functional activations, and sites are in the order the forward reaches them;
            without it, only activation modules, in definition order.

    Raises:
        ConfigError: a name in ``layers`` is not an activation site of ``model``.
    """
    modules = {n: m for n, m in model.named_modules() if isinstance(m, ACTIVATION_TYPES)}
    found: dict[str, Site]
    if input_shape is None:
        found = dict(modules)
    else:
        traced = _traced(model, input_shape)
        found = {n: site for n, (site, _) in traced.items()}
        found.update({n: m for n, m in modules.items() if n not in found})  # never called
    if layers is None:
        return found
    wanted = list(layers)
    unknown = [n for n in wanted if n not in found]
    if unknown:
        valid = ", ".join(found) or "none (add ReLU modules or ActivationMarker)"
        raise ConfigError(f"'{unknown[0]}' is not an activation layer; valid layers: {valid}")
    return {n: found[n] for n in wanted}


def activation_layouts(
    model: nn.Module, sites: Iterable[str], input_shape: Sequence[int]
) -> dict[str, int]:
    """The channel dimension of each site's input: 1 after convolutions
    (``(N, C, *spatial)``), -1 after linear, recurrent or attention layers and
    LayerNorm (``(N, L, C)``: one pattern per token), found by one meta-device forward.
    A module site the forward never reaches is taken as channels-first."""
    traced = _traced(model, input_shape)
    return {n: traced[n][1] if n in traced else 1 for n in sites}


# ---------------------------------------------------------------------------- watching
class _Calls(TorchFunctionMode):
    """Sees every torch function called during one forward; reports activation calls."""

    def __init__(self, watch: ActivationWatch) -> None:
        super().__init__()
        self.watch = watch
        self.frames: list[tuple[str, nn.Module, dict[str, int]]] = []
        self.marked: dict[int, torch.Tensor] = {}  # outputs of ActivationMarkers

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        function = FUNCTIONAL_ACTIVATIONS.get(func)
        if function is not None and self.frames and args and id(args[0]) not in self.marked:
            owner, module, counts = self.frames[-1]
            if not isinstance(module, ACTIVATION_TYPES):  # nn.ReLU calling F.relu
                counts[function] = call = counts.get(function, 0) + 1
                self.watch.seen(FunctionalActivation(owner, function, call), args[0])
        return func(*args, **(kwargs or {}))


class ActivationWatch:
    """Calls ``callback(name, pre_activation)`` for every site in ``sites`` reached by a
    forward of ``model``, until :meth:`remove`.

    Module sites cost one forward pre-hook each. Functional sites add a forward-hook
    pair on every module and a ``TorchFunctionMode`` during the forward (a few
    microseconds per op): they are installed only when a functional site is watched,
    or when ``report_all`` asks for every functional call (before the sites are known).
    """

    def __init__(
        self,
        model: nn.Module,
        sites: dict[str, Site],
        callback: Callable[[str, torch.Tensor], None],
        *,
        report_all: bool = False,
    ) -> None:
        self.model, self.callback = model, callback
        self.report_all = report_all
        self.functional = _functional_names(sites)
        self.calls: dict[str, FunctionalActivation] = {}  # every functional site reported
        self._modes: list[_Calls] = []
        self._handles: list[RemovableHandle] = []
        self._tracking: list[RemovableHandle] = []
        self._drop_tracking = False
        for name, site in sites.items():
            if isinstance(site, nn.Module):
                self._handles.append(site.register_forward_pre_hook(self._module_hook(name, site)))
        if self.functional or report_all:
            self._install_call_tracking()

    def retarget(self, sites: dict[str, Site]) -> None:
        """Report only the functional sites among ``sites`` from now on (the module sites
        stay as they were); call tracking ends after the running forward when none is
        left."""
        self.functional, self.report_all = _functional_names(sites), False
        if not self.functional:
            if self._modes:
                self._drop_tracking = True
            else:
                self._remove_tracking()

    def _module_hook(self, name: str, owner: nn.Module):  # noqa: ANN202 - a pre-hook
        def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
            # A deep copy of a hooked model carries this hook along: only the module the
            # watch was made for reports.
            if module is owner and args and isinstance(args[0], torch.Tensor):
                self.callback(name, args[0])

        return hook

    def _install_call_tracking(self) -> None:
        def enter(module: nn.Module, args: tuple[Any, ...], name: str) -> None:
            if module is self.model:
                mode = _Calls(self)
                mode.__enter__()
                self._modes.append(mode)
            if self._modes:
                self._modes[-1].frames.append((name, module, {}))
                if isinstance(module, ActivationMarker) and args:
                    # F.relu(marker(x)): the marker already names this site
                    self._modes[-1].marked[id(args[0])] = args[0]

        def leave(module: nn.Module, _args: object, _out: object) -> None:
            if not self._modes:
                return
            mode = self._modes[-1]
            if mode.frames:
                mode.frames.pop()
            if module is self.model:
                self._modes.pop()
                mode.__exit__(None, None, None)
                if self._drop_tracking and not self._modes:
                    self._remove_tracking()

        for name, module in self.model.named_modules():
            self._tracking.append(
                module.register_forward_pre_hook(lambda m, a, n=name: enter(m, a, n))
            )
            self._tracking.append(module.register_forward_hook(leave, always_call=True))

    def _remove_tracking(self) -> None:
        for handle in self._tracking:
            handle.remove()
        self._tracking, self._drop_tracking = [], False

    def seen(self, site: FunctionalActivation, x: object) -> None:
        if isinstance(x, torch.Tensor) and (self.report_all or site.name in self.functional):
            self.calls.setdefault(site.name, site)
            self.callback(site.name, x)

    def remove(self) -> None:
        """Remove every hook (a forward running now finishes unwatched)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._remove_tracking()
        while self._modes:  # removed mid-forward: its leave hook is gone, end the mode here
            self._modes.pop().__exit__(None, None, None)


def _functional_names(sites: dict[str, Site]) -> set[str]:
    return {s.name for s in sites.values() if isinstance(s, FunctionalActivation)}


# ----------------------------------------------------------------------------- tracing
# Ops whose outputs keep their features last (a linear layer's (N, L, C)); convolutions
# keep them on dim 1 (N, C, *spatial). Other ops pass their input's layout on.
_FEATURES_LAST = {
    "addmm",
    "mm",
    "bmm",
    "baddbmm",
    "matmul",
    "linear",
    "embedding",
    "lstm",
    "gru",
    "rnn_tanh",
    "rnn_relu",
    "_scaled_dot_product_flash_attention_for_cpu",
    "_scaled_dot_product_efficient_attention",
    "native_layer_norm",
}
_FEATURES_FIRST = {"convolution", "_convolution", "native_batch_norm", "_native_batch_norm_legit"}


class _Layouts(TorchDispatchMode):
    """Tags every tensor of one traced forward with where its features are."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: dict[int, str] = {}
        self.alive: list[torch.Tensor] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__
        if name in _FEATURES_LAST:
            tag = "last"
        elif name in _FEATURES_FIRST:
            tag = "first"
        else:  # elementwise, views, concatenation...: features stay where they were
            known = {
                self.tags[id(t)]
                for t in tree_flatten((args, kwargs or {}))[0]
                if isinstance(t, torch.Tensor) and id(t) in self.tags
            }
            if not known:
                return out  # a constant (zeros for a recurrent state): no layout yet
            tag = "last" if "last" in known else "first"
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self.tags[id(t)] = tag
                self.alive.append(t)
        return out


_TRACES: weakref.WeakKeyDictionary[nn.Module, dict[Any, Any]] = weakref.WeakKeyDictionary()


def _traced(model: nn.Module, input_shape: Sequence[int]) -> dict[str, tuple[Site, int]]:
    """Every site a meta-device forward reaches, in order, with its channel dimension.
    Kept per model while its modules stay the same."""
    signature = structure_key(model, input_shape)
    cached = _TRACES.setdefault(model, {})
    if signature not in cached:
        cached.clear()
        cached[signature] = _trace(model, input_shape)
    return cached[signature]


def _trace(model: nn.Module, input_shape: Sequence[int]) -> dict[str, tuple[Site, int]]:
    modules = {n: m for n, m in model.named_modules() if isinstance(m, ACTIVATION_TYPES)}
    found: dict[str, tuple[Site, int]] = {}
    layouts = _Layouts()

    def seen(name: str, x: torch.Tensor) -> None:
        if name not in found:
            site: Site = modules[name] if name in modules else watch.calls[name]
            found[name] = (site, -1 if layouts.tags.get(id(x)) == "last" else 1)

    watch = ActivationWatch(model, dict(modules), seen, report_all=True)
    meta = {
        k: torch.empty_like(v, device="meta")
        for k, v in [*model.named_parameters(), *model.named_buffers()]
    }
    try:
        with eval_mode(model), torch.no_grad(), layouts:
            x = torch.empty(1, *input_shape, device="meta")
            layouts.tags[id(x)] = "first"
            torch.func.functional_call(model, meta, (x,))
    finally:
        watch.remove()
    return found
