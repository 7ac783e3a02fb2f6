"""Trace one forward pass at the ATen dispatch level, on the meta device.

Every op the forward runs is seen here, including functional ones (``F.relu``,
``x + y``, ``torch.cat``, ``flatten``), the way ``torch.utils.flop_counter`` sees them: a
``TorchDispatchMode`` records each op with the module that called it (forward hooks keep
a module stack), the parameters it read, the activations it consumed and produced, and
the counts of its handle. Parameters and buffers are replaced by meta tensors through
``torch.func.functional_call``, so no real memory is used whatever the model's size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from edgetrain._modules import eval_mode
from edgetrain.cost.handles import FREE_OPS, HANDLES, VIEW_OPS, OpCounts, aten
from edgetrain.errors import EdgetrainError, one_line

__all__ = ["OpRecord", "Trace", "trace"]

ROOT = "(model)"


@dataclass
class OpRecord:
    """One op of the forward pass.

    Attributes:
        index: position in execution order.
        op: ATen op name, e.g. ``"convolution"``.
        module: name of the innermost module that ran it (``"(model)"`` for the root).
        module_type: that module's class name.
        counts: the handle's counts, or None for free ops.
        params: names of the parameters the op read.
        param_numel: element count of each of those parameters.
        inputs: keys of the activation tensors it consumed.
        outputs: keys of the tensors it produced (aliases share their base's key).
        in_shape / out_shape: shapes of the first activation input and the first output.
    """

    index: int
    op: str
    module: str
    module_type: str
    counts: OpCounts | None
    params: tuple[str, ...]
    param_numel: tuple[int, ...]
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]

    @property
    def in_elems(self) -> int:
        return math.prod(self.in_shape) if self.in_shape else 0

    @property
    def out_elems(self) -> int:
        return math.prod(self.out_shape) if self.out_shape else 0


@dataclass
class Trace:
    """The ops of one forward pass plus what is needed for memory lifetimes."""

    records: list[OpRecord]
    input_key: int
    tensor_elems: dict[int, int]  # activation key -> elements of its buffer
    unsupported: list[tuple[str, str]] = field(default_factory=list)  # (op, module)
    output_keys: tuple[int, ...] = ()
    output_shapes: tuple[tuple[int, ...], ...] = ()  # of the model's output tensors


class _Recorder(TorchDispatchMode):
    def __init__(
        self, names: dict[int, str], numel: dict[str, int], module_stack: list[tuple[str, str]]
    ) -> None:
        super().__init__()
        self.names = names  # id(meta parameter, or a view of one) -> parameter name
        self.derived: dict[int, tuple[str, ...]] = {}  # id(tensor computed from params)
        self.numel = numel
        self.stack = module_stack
        self.keys: dict[int, int] = {}  # id(activation tensor) -> buffer key
        self.elems: dict[int, int] = {}
        self.alive: list[torch.Tensor] = []  # keeps ids unique while tracing
        self.records: list[OpRecord] = []
        self.unsupported: list[tuple[str, str]] = []

    def _record(
        self,
        packet: object,
        module: str,
        module_type: str,
        counts: OpCounts | None,
        params: list[str],
        inputs: tuple[int, ...],
        outputs: tuple[int, ...],
        first: torch.Tensor,
        outs: list[torch.Tensor],
    ) -> None:
        params = list(dict.fromkeys(params))
        self.records.append(
            OpRecord(
                index=len(self.records),
                op=str(packet).removeprefix("aten."),
                module=module,
                module_type=module_type,
                counts=counts,
                params=tuple(params),
                param_numel=tuple(self.numel[p] for p in params),
                inputs=inputs,
                outputs=outputs,
                in_shape=tuple(first.shape),
                out_shape=tuple(outs[0].shape) if outs else (),
            )
        )

    def add_input(self, t: torch.Tensor) -> int:
        key = len(self.elems)
        self.keys[id(t)] = key
        self.elems[key] = t.numel()
        self.alive.append(t)
        return key

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        packet = func.overloadpacket
        leaves = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        params: list[str] = []
        for t in leaves:
            if id(t) in self.derived:
                params.extend(self.derived[id(t)])
            elif id(t) in self.names:
                params.append(self.names[id(t)])
        acts = [t for t in leaves if id(t) in self.keys]
        outs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
        module, module_type = self.stack[-1] if self.stack else (ROOT, "")
        if not acts:
            # Constants only (weights, buffers). A view of a parameter stays that
            # parameter; a tensor computed from parameters (a weight-norm or pruning-mask
            # parametrization, an RNN's W_hh h0) carries their names to the op that uses
            # it, so their gradient and update are charged there.
            plain = all(id(t) in self.names for t in leaves if id(t) not in self.derived)
            for t in outs if params else ():
                self.alive.append(t)
                if packet in VIEW_OPS and len(params) == 1 and plain:
                    self.names[id(t)] = params[0]
                else:
                    self.derived[id(t)] = tuple(dict.fromkeys(params))
            handle = HANDLES.get(packet)
            if params and handle is not None:  # its MACs and backward are the step's too
                made = handle(args, kwargs, out)
                # its backward is the gradient of the parameters it reads
                made = replace(made, weight_grad=max(made.weight_grad, made.input_grad))
                self._record(
                    packet,
                    module,
                    module_type,
                    made,
                    params,
                    (),
                    (),
                    leaves[0],
                    outs,
                )
            elif params and packet not in FREE_OPS:
                self.unsupported.append((str(packet).removeprefix("aten."), module))
            return out
        in_keys = tuple(dict.fromkeys(self.keys[id(t)] for t in acts))
        out_keys = []
        # Only the first output is an activation (batch-norm's saved statistics and
        # max-pool's indices are not); views like split/unbind alias every output.
        for t in outs if packet in VIEW_OPS else outs[:1]:
            if id(t) in self.keys:  # in-place op: same tensor, same buffer
                key = self.keys[id(t)]
            elif packet in VIEW_OPS:
                key = self.keys[id(acts[0])]
            else:
                key = len(self.elems)
                self.elems[key] = t.numel()
            self.keys[id(t)] = key
            self.alive.append(t)
            out_keys.append(key)
        handle = HANDLES.get(packet)
        counts = handle(args, kwargs, out) if handle is not None else None
        if handle is None and packet not in FREE_OPS:
            self.unsupported.append((str(packet).removeprefix("aten."), module))
        if packet in (aten.mm, aten.bmm) and len(acts) == 2 and counts is not None:
            # activation x activation (attention's q k^T, an einsum): both operands
            # get a gradient
            counts = replace(counts, input_grad=2 * counts.input_grad)
        self._record(
            packet, module, module_type, counts, params, in_keys, tuple(out_keys), acts[0], outs
        )
        return out


def trace(model: nn.Module, input_shape: Sequence[int], batch_size: int = 1) -> Trace:
    """Run one forward of ``model`` on meta tensors and record every op.

    Args:
        model: any module; it is not modified (parameters are swapped for meta tensors
            for the duration of the call, the mode is restored).
        input_shape: one sample's shape, e.g. ``(3, 32, 32)``.
        batch_size: the batch dimension to trace with.
    """
    meta: dict[str, torch.Tensor] = {}
    names: dict[int, str] = {}
    numel: dict[str, int] = {}
    for name, param in model.named_parameters():
        meta[name] = torch.empty_like(param, device="meta")
        names[id(meta[name])] = name
        numel[name] = param.numel()
    for name, buffer in model.named_buffers():  # constants: neither params nor activations
        meta[name] = torch.empty_like(buffer, device="meta")
    stack: list[tuple[str, str]] = []

    def enter(name: str, kind: str) -> None:
        stack.append((name, kind))

    def leave() -> None:  # hooks must return None, or they replace the output
        stack.pop()

    handles = []
    for name, module in model.named_modules():
        if not name:
            continue
        kind = type(module).__name__
        handles.append(module.register_forward_pre_hook(lambda *_, n=name, k=kind: enter(n, k)))
        handles.append(module.register_forward_hook(lambda *_: leave()))
    recorder = _Recorder(names, numel, stack)
    x = torch.empty(batch_size, *input_shape, device="meta")
    input_key = recorder.add_input(x)
    try:
        with eval_mode(model), torch.no_grad(), recorder:
            output = torch.func.functional_call(model, meta, (x,))
    except (RuntimeError, ValueError, TypeError, IndexError) as exc:
        shape = "x".join(map(str, input_shape))
        raise EdgetrainError(
            f"{type(model).__name__} cannot take inputs of shape {shape} ({one_line(exc)}); "
            "pass the input shape the model was built for"
        ) from exc
    finally:
        for h in handles:
            h.remove()
    outs = [t for t in tree_flatten(output)[0] if isinstance(t, torch.Tensor)]
    return Trace(
        records=recorder.records,
        input_key=input_key,
        tensor_elems=dict(recorder.elems),
        unsupported=list(dict.fromkeys(recorder.unsupported)),
        output_keys=tuple(recorder.keys.get(id(t), -1) for t in outs),
        output_shapes=tuple(tuple(t.shape) for t in outs),
    )
