"""Predicted vs measured peak memory of one training step, on this machine's CPU.

For every zoo network (and a GRU and an LSTM classifier written here), at batch 1 and
32, for the plans that train all, the last 2 and the last 4 weight layers (SGD), the
peak bytes of a real training step are measured with torch's profiler memory timeline
(the second of two steps; see ``edgetrain.cost.memory.measure_step_memory``), once as
PyTorch runs it by default and once with oneDNN (mkldnn) kernels off, whose scratch
buffers (blocked copies of inputs and weights) the model does not see, and set beside
the cost model's two accountings: ``allocator`` (the step run on the meta
device, every tensor followed from creation to last use) and ``layerwise`` (the spec's
per-layer formula).

Usage: python benchmarks/memory_vs_measured.py [--threads 1] [--models a,b]
Target: every allocator/measured ratio within 0.85-1.15.
"""

from __future__ import annotations

import argparse
import time

import torch
from _common import COST_ZOO, print_table, write_result
from torch import nn

from edgetrain.cost import ALL, analyze, resolve_plan
from edgetrain.cost.analysis import _layer_order
from edgetrain.cost.memory import measure_step_memory
from edgetrain.cost.tracer import trace
from edgetrain.models import create

ZOO = COST_ZOO
PLANS = [ALL, "last:2", "last:4"]
BATCHES = [1, 32]


class _Recurrent(nn.Module):
    """A keyword-style recurrent classifier: 49 frames of 10 features, 64 hidden units."""

    def __init__(self, cell: type[nn.Module]) -> None:
        super().__init__()
        self.rnn = cell(10, 64, batch_first=True)
        self.fc = nn.Linear(64, 12)
        self.input_shape = (49, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.fc(out[:, -1])


def _model(name: str) -> nn.Module:
    if name in ("gru", "lstm"):
        return _Recurrent(nn.GRU if name == "gru" else nn.LSTM)
    return create(name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--models", default=",".join([*ZOO, "gru", "lstm"]))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows, records = [], []
    for name in args.models.split(","):
        model = _model(name)
        shape = tuple(model.input_shape)
        order = _layer_order(trace(model, shape).records)
        for batch in BATCHES:
            for plan in PLANS:
                if plan != ALL and int(plan.split(":")[1]) > len(order):
                    continue
                trainable = resolve_plan(model, plan, order)
                started = time.perf_counter()
                report = analyze(model, shape, plans=[plan], batch_size=batch)
                predict_s = time.perf_counter() - started
                allocator = report.steps()[0]
                layerwise = analyze(
                    model, shape, plans=[plan], batch_size=batch, memory="layerwise"
                ).steps()[0]
                measured = measure_step_memory(model, shape, batch, trainable)
                with torch.backends.mkldnn.flags(enabled=False):  # other kernels, predicted too
                    plain_predicted = analyze(model, shape, plans=[plan], batch_size=batch)
                    plain_bytes = plain_predicted.steps()[0].memory_reuse_bytes
                    plain = measure_step_memory(model, shape, batch, trainable)
                record = {
                    "model": name,
                    "batch": batch,
                    "plan": plan,
                    "measured_bytes": measured,
                    "measured_without_onednn_bytes": plain,
                    "allocator_without_onednn_bytes": plain_bytes,
                    "allocator_bytes": allocator.memory_reuse_bytes,
                    "allocator_method": allocator.memory_method,
                    "allocator_peak_at": allocator.memory_peak_at,
                    "layerwise_bytes": layerwise.memory_reuse_bytes,
                    "allocator_ratio": allocator.memory_reuse_bytes / measured,
                    "allocator_ratio_without_onednn": plain_bytes / plain,
                    "layerwise_ratio": layerwise.memory_reuse_bytes / measured,
                    "predict_seconds": predict_s,
                }
                records.append(record)
                rows.append(
                    [
                        name,
                        batch,
                        plan,
                        round(measured / 1e6, 2),
                        round(allocator.memory_reuse_bytes / 1e6, 2),
                        record["allocator_ratio"],
                        round(plain / 1e6, 2),
                        round(plain_bytes / 1e6, 2),
                        record["allocator_ratio_without_onednn"],
                        round(layerwise.memory_reuse_bytes / 1e6, 2),
                        record["layerwise_ratio"],
                        allocator.memory_peak_at,
                    ]
                )
                print(rows[-1], flush=True)
    print_table(
        "peak training-step memory: predicted / measured (MB = 1e6 bytes)",
        [
            "model",
            "batch",
            "plan",
            "measured",
            "allocator",
            "ratio",
            "measured w/o oneDNN",
            "allocator w/o oneDNN",
            "ratio",
            "layerwise",
            "ratio",
            "peak at",
        ],
        rows,
        width=140,
    )
    for key in ("allocator_ratio", "allocator_ratio_without_onednn"):
        inside = sum(0.85 <= r[key] <= 1.15 for r in records)
        print(f"{key} within 0.85-1.15: {inside} of {len(records)}")
    write_result("memory_vs_measured", {"threads": args.threads, "cases": records})


if __name__ == "__main__":
    main()
