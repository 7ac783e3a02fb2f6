"""The cost model's MAC counts against the counters people use instead.

For every zoo network at batch 1 (and a GRU classifier written here), the forward MACs
of the cost model in both conventions (``border``: the spec's count; ``dense``: conv and
linear products with every kernel tap) beside fvcore, ptflops, thop, Torch-Pruning and
PyTorch's own ``FlopCounterMode`` (FLOPs / 2). And the backward: the cost model's dense
input- plus weight-gradient products of a full training step beside the matrix products
``FlopCounterMode`` sees autograd run in a real backward.

Usage: python benchmarks/cost_vs_counters.py   (needs fvcore, ptflops, thop:
pip install -c constraints.txt fvcore ptflops thop)
"""

from __future__ import annotations

import contextlib
import io
import warnings

import torch
from _common import COST_ZOO, print_table, write_result
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from edgetrain.cost import ALL, analyze
from edgetrain.models import create

ZOO = COST_ZOO


class _Gru(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.GRU(10, 64, batch_first=True)
        self.fc = nn.Linear(64, 12)
        self.input_shape = (49, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.rnn(x)[0][:, -1])


def _quiet(fn, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # a peer that cannot count this model
            return f"fails ({type(exc).__name__})"


def _fvcore(model: nn.Module, x: torch.Tensor) -> float:
    from fvcore.nn import FlopCountAnalysis

    count = FlopCountAnalysis(model, (x,))
    count.unsupported_ops_warnings(False)
    count.uncalled_modules_warnings(False)
    return float(count.total())


def _ptflops(model: nn.Module, shape: tuple[int, ...]) -> float:
    from ptflops import get_model_complexity_info

    macs, _ = get_model_complexity_info(
        model, shape, as_strings=False, print_per_layer_stat=False, verbose=False
    )
    return float(macs)


def _thop(model: nn.Module, x: torch.Tensor) -> float:
    import copy

    from thop import profile

    macs, _ = profile(copy.deepcopy(model), inputs=(x,), verbose=False)
    return float(macs)


def _torch_pruning(model: nn.Module, x: torch.Tensor) -> float:
    import torch_pruning as tp

    macs, _ = tp.utils.count_ops_and_params(model, x)
    return float(macs)


def _flop_counter(model: nn.Module, x: torch.Tensor) -> tuple[float, float]:
    """Forward and backward MACs of the products FlopCounterMode sees (FLOPs / 2)."""
    with FlopCounterMode(display=False) as forward:
        out = model(x)
    with FlopCounterMode(display=False) as backward:
        out.float().sum().backward()
    model.zero_grad(set_to_none=True)
    return forward.get_total_flops() / 2, backward.get_total_flops() / 2


def main() -> None:
    torch.set_num_threads(1)
    rows, records = [], []
    for name in [*ZOO, "gru"]:
        model = _Gru() if name == "gru" else create(name)
        shape = tuple(model.input_shape)
        model.eval()
        x = torch.randn(1, *shape)
        border = analyze(model, shape, plans=[ALL], memory="layerwise")
        dense = analyze(model, shape, plans=[ALL], memory="layerwise", macs="dense")
        dense_step = dense.steps()[0]
        model.train()
        torch_forward, torch_backward = _flop_counter(model, x)
        model.eval()
        peers = {
            "fvcore": _quiet(_fvcore, model, x),
            "ptflops": _quiet(_ptflops, model, shape),
            "thop": _quiet(_thop, model, x),
            "torch_pruning": _quiet(_torch_pruning, model, x),
            "flop_counter": torch_forward,
        }
        record = {
            "model": name,
            "border_forward": border.total().forward_macs,
            "dense_forward": dense.total().forward_macs,
            "dense_backward_products": dense_step.input_grad_macs + dense_step.weight_grad_macs,
            "flop_counter_backward": torch_backward,
            **peers,
        }
        records.append(record)
        ref = dense.total().forward_macs

        def ratio(value: object, ref: float = ref) -> str:
            return f"{value / ref:.3f}" if isinstance(value, float) and ref else str(value)

        rows.append(
            [
                name,
                round(border.total().forward_macs / 1e6, 3),
                round(ref / 1e6, 3),
                *(ratio(peers[k]) for k in peers),
                round(record["dense_backward_products"] / 1e6, 3),
                ratio(torch_backward, record["dense_backward_products"]),
            ]
        )
        print(rows[-1], flush=True)
    print_table(
        "forward MACs (M) and each peer / edgetrain dense; backward products (M)",
        [
            "model",
            "border",
            "dense",
            "fvcore",
            "ptflops",
            "thop",
            "Torch-Pruning",
            "FlopCounter",
            "dense bwd",
            "FlopCounter bwd",
        ],
        rows,
        width=150,
    )
    write_result("cost_vs_counters", {"cases": records})


if __name__ == "__main__":
    main()
