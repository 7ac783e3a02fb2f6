"""The ``openvino`` runtime: OpenVINO reads an ONNX file or an IR (``.xml`` + ``.bin``),
compiles it for a device and times inferences (``pip install 'edgetrain[openvino]'``).

Settings that change results are explicit, never the plugin's choice:

- ``precision`` is the *inference* precision (``fp32`` by default). OpenVINO's CPU plugin
  otherwise picks bf16 on CPUs with AMX or AVX512-BF16, and fp16 on some Arm cores, which
  changes the model's outputs; ``fp16`` and ``bf16`` are asked for by name and refused
  on a device that lacks them. An FP16 IR (``edgetrain export --format openvino
  --precision fp16``) stores weights in fp16 whatever the inference precision.
- ``hint``: OpenVINO's performance hint, ``latency`` (one stream) or ``throughput``.
- threads: ``inference_num_threads``, from the benchmark's ``threads``.

A dynamic batch dimension is fixed to the measured batch before compiling (a static
shape is what a deployed model runs). ``profile`` and :meth:`op_times` use OpenVINO's
performance counters (``enable_profiling``) in a separate compiled model, as the ONNX
Runtime profiler is used: the per-node ``real_time`` of the executed nodes, summed per
run (compute latency) or per node type (``edgetrain bench --ops``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from edgetrain._optional import require
from edgetrain.compress.runtime import (
    RUNTIMES,
    InputSpec,
    Measurement,
    Runtime,
    _missing_module,
    check_grouping,
    fixed_batch_note,
    random_inputs,
)
from edgetrain.errors import EdgetrainError, one_line

__all__ = ["OpenVinoRuntime", "PRECISIONS"]

#: Inference precisions by name, as OpenVINO element types and capability names.
PRECISIONS = {"fp32": ("f32", "FP32"), "fp16": ("f16", "FP16"), "bf16": ("bf16", "BF16")}
_HINTS = ("latency", "throughput")


def _ov() -> Any:
    return require("openvino", "openvino")


@RUNTIMES.register("openvino")
@dataclass
class OpenVinoRuntime(Runtime):
    """OpenVINO on a device (CPU by default): explicit inference precision, latency hint.

    Args:
        device: an OpenVINO device name (``CPU``, ``GPU``, ``NPU``, ``AUTO``) available here.
        precision: inference precision, ``fp32`` (default), ``fp16`` or ``bf16``.
        hint: performance hint, ``latency`` (default) or ``throughput``.
    """

    device: str = "CPU"
    precision: str = "fp32"
    hint: str = "latency"
    name: ClassVar[str] = "openvino"
    suffixes: ClassVar[tuple[str, ...]] = (".onnx", ".xml")
    export_format: ClassVar[str] = "openvino"

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise EdgetrainError(
                f"openvino precision '{self.precision}' is not one of {', '.join(PRECISIONS)}"
            )
        if self.hint not in _HINTS:
            raise EdgetrainError(f"openvino hint '{self.hint}' is not one of {', '.join(_HINTS)}")
        ov = _ov()
        self._core = ov.Core()
        devices = list(self._core.available_devices)
        if self.device not in devices and self.device.split(":")[0] not in ("AUTO", "MULTI"):
            raise EdgetrainError(
                f"OpenVINO device '{self.device}' is not available here; choose one of "
                f"{', '.join(devices)}"
            )
        if self.precision != "fp32" and self.device in devices:
            caps = self._core.get_property(self.device, "OPTIMIZATION_CAPABILITIES")
            if PRECISIONS[self.precision][1] not in caps:
                raise EdgetrainError(
                    f"OpenVINO device {self.device} cannot infer in {self.precision} (it "
                    f"offers {', '.join(c for c in caps if c in ('FP32', 'FP16', 'BF16'))}); "
                    "use precision fp32"
                )

    @classmethod
    def missing(cls) -> str | None:
        return _missing_module("openvino", "openvino")

    def model_bytes(self, path: Path) -> int:
        weights = path.with_suffix(".bin")
        extra = weights.stat().st_size if path.suffix.lower() == ".xml" and weights.is_file() else 0
        return path.stat().st_size + extra

    # -- model loading -------------------------------------------------------------

    def _read(self, path: Path) -> Any:
        self.check_file(path)
        if not path.is_file():
            raise EdgetrainError(f"model file '{path}' not found; check the path")
        if path.suffix.lower() == ".xml" and not path.with_suffix(".bin").is_file():
            raise EdgetrainError(
                f"OpenVINO IR '{path}' has no weights file '{path.with_suffix('.bin').name}' "
                "beside it; keep the .xml and .bin together"
            )
        try:
            return self._core.read_model(str(path))
        except Exception as exc:  # OpenVINO raises RuntimeError with a multi-line text
            raise EdgetrainError(f"OpenVINO cannot read '{path}': {one_line(exc)}") from None

    @staticmethod
    def _inputs(model: Any) -> list[InputSpec]:
        specs = []
        for port in model.inputs:
            shape = port.get_partial_shape()
            dims = tuple(d.get_length() if d.is_static else None for d in shape)
            dtype = np.dtype(port.get_element_type().to_dtype())
            specs.append(InputSpec(port.get_any_name(), dims, dtype))
        return specs

    def _compile(self, path: Path, batch: int, threads: int, profile: bool) -> Any:
        ov = _ov()
        model = self._read(path)
        specs = self._inputs(model)
        note = fixed_batch_note(specs, batch, "openvino")
        if note is not None:
            raise EdgetrainError(f"cannot run '{path}' at batch {batch}: {note}")
        if any(s.shape and s.shape[0] is None for s in specs):
            model.reshape(
                {
                    port: ov.PartialShape([batch, *list(port.get_partial_shape())[1:]])
                    for port in model.inputs
                }
            )
        props = ov.properties
        hint = props.hint.PerformanceMode.LATENCY
        if self.hint == "throughput":
            hint = props.hint.PerformanceMode.THROUGHPUT
        config = {
            props.hint.performance_mode: hint,
            props.hint.inference_precision: getattr(ov.Type, PRECISIONS[self.precision][0]),
            props.enable_profiling: profile,
        }
        if self.device == "CPU":
            config[props.inference_num_threads] = threads
        try:
            return self._core.compile_model(model, self.device, config), specs
        except Exception as exc:
            raise EdgetrainError(
                f"OpenVINO cannot compile '{path}' for {self.device}: {one_line(exc)}"
            ) from None

    def batch_note(self, path: Path, batch: int) -> str | None:
        return fixed_batch_note(self._inputs(self._read(path)), batch, "openvino")

    # -- measuring -----------------------------------------------------------------

    def _request(self, path: Path, batch: int, threads: int, profile: bool) -> tuple[Any, Any]:
        compiled, specs = self._compile(path, batch, threads, profile)
        request = compiled.create_infer_request()
        feeds = dict(enumerate(random_inputs(specs, batch)))
        try:
            request.infer(feeds)
        except Exception as exc:
            raise EdgetrainError(f"OpenVINO cannot run '{path}': {one_line(exc)}") from None
        return request, feeds

    def measure(
        self, path: Path, *, batch: int, warmup: int, runs: int, threads: int, profile: bool
    ) -> Measurement:
        request, feeds = self._request(path, batch, threads, profile=False)
        for _ in range(warmup):
            request.infer(feeds, share_inputs=True, share_outputs=True)
        latencies = []
        for _ in range(runs):
            start = time.perf_counter_ns()
            request.infer(feeds, share_inputs=True, share_outputs=True)
            latencies.append((time.perf_counter_ns() - start) / 1e6)
        compute = None
        if profile:
            compute = [
                sum(ms for _, ms in counters)
                for counters in self._counters(path, batch, threads, warmup, runs)
            ]
        return Measurement(latencies, compute)

    def _counters(
        self, path: Path, batch: int, threads: int, warmup: int, runs: int, by: str = "type"
    ) -> list[list[tuple[str, float]]]:
        """Per timed run: (node type, or ``node (type, kernel)`` by layer, ms) of every
        executed node, from the performance counters of a profiled compiled model
        (warm-up runs dropped)."""
        request, feeds = self._request(path, batch, threads, profile=True)
        executed = _ov().ProfilingInfo.Status.EXECUTED
        for _ in range(warmup):
            request.infer(feeds, share_inputs=True, share_outputs=True)
        per_run = []
        for _ in range(runs):
            request.infer(feeds, share_inputs=True, share_outputs=True)
            per_run.append(
                [
                    (
                        info.node_type
                        if by == "type"
                        else f"{info.node_name} ({info.node_type}, {info.exec_type})",
                        info.real_time.total_seconds() * 1e3,
                    )
                    for info in request.profiling_info
                    if info.status == executed
                ]
            )
        return per_run

    def op_times(
        self,
        path: Path,
        *,
        threads: int = 1,
        warmup: int = 10,
        runs: int = 50,
        by: str = "type",
    ) -> dict[str, float]:
        check_grouping(by)
        totals: dict[str, float] = {}
        for counters in self._counters(path, 1, threads, warmup, runs, by):
            for node_type, ms in counters:
                totals[node_type] = totals.get(node_type, 0.0) + ms / runs
        return dict(sorted(totals.items(), key=lambda kv: -kv[1]))

    def predictor(self, path: Path, *, threads: int = 1) -> Any:
        compiled: dict[int, Any] = {}  # one compiled model per batch size met

        def predict(x: np.ndarray) -> np.ndarray:
            batch = int(x.shape[0])
            if batch not in compiled:
                compiled[batch] = self._compile(path, batch, threads, profile=False)[0]
            return np.asarray(compiled[batch]({0: x})[0])

        return predict
