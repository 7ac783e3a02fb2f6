"""The ``executorch`` runtime: a ``.pte`` program lowered to the XNNPACK backend, run by
ExecuTorch's runtime in this process (``pip install 'edgetrain[executorch]'``).

ExecuTorch is PyTorch's own on-device runtime: the same ``.pte`` file runs on Android,
iOS and microcontroller builds of it. ``edgetrain export --format executorch`` writes one
(``torch.export``, then XNNPACK delegation of what it supports; the rest runs on
ExecuTorch's portable kernels). Threads are the XNNPACK thread pool's size, set for the
measurement. ExecuTorch has no per-node profiler in its Python runtime, so compute
latency is not reported.

A program's memory is planned at export for fixed input shapes, so a ``.pte`` runs the
batch it was exported for (1 by default): throughput runs at another batch are skipped
with a note. (ExecuTorch 1.5 plans a dynamic batch dimension with a bound of its own
choosing, 15 on the zoo models whatever ``torch.export`` was given, so edgetrain does
not export dynamic programs.)
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
import time
from collections.abc import Iterator
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
    random_inputs,
)
from edgetrain.errors import EdgetrainError, one_line

__all__ = ["ExecuTorchRuntime", "quiet_native"]

# ExecuTorch's ScalarType codes of the dtypes a model input may have.
_SCALAR_TYPES = {
    0: np.uint8,
    1: np.int8,
    3: np.int32,
    4: np.int64,
    5: np.float16,
    6: np.float32,
    7: np.float64,
    11: np.bool_,
}


@contextlib.contextmanager
def quiet_native() -> Iterator[None]:
    """Silence what native libraries write straight to file descriptors 1 and 2 (the
    CPU probe of ExecuTorch's XNNPACK prints its findings on every first load)."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 1)
            os.dup2(null.fileno(), 2)
            yield
    finally:
        with contextlib.suppress(OSError, AttributeError):  # C stdio buffers, into null
            ctypes.CDLL(None).fflush(None)
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)


def _runtime_module() -> Any:
    with quiet_native():
        return require("executorch.runtime", "executorch", package="executorch")


@RUNTIMES.register("executorch")
@dataclass
class ExecuTorchRuntime(Runtime):
    """ExecuTorch with the XNNPACK backend: a ``.pte`` program run in this process."""

    name: ClassVar[str] = "executorch"
    suffixes: ClassVar[tuple[str, ...]] = (".pte",)
    export_format: ClassVar[str] = "executorch"

    def __post_init__(self) -> None:
        _runtime_module()

    @classmethod
    def missing(cls) -> str | None:
        return _missing_module("executorch", "executorch")

    def _method(self, path: Path, threads: int | None = None) -> Any:
        """The program's ``forward`` method, which keeps its program alive (a method
        whose program was freed crashes the process when it runs), loaded after the
        XNNPACK thread pool is sized to ``threads`` (None: as it is)."""
        self.check_file(path)
        if not path.is_file():
            raise EdgetrainError(f"model file '{path}' not found; check the path")
        rt = _runtime_module()
        if threads is not None:
            _set_threads(threads)
        try:
            with quiet_native():
                program = rt.Runtime.get().load_program(path)
                method = program.load_method("forward")
        except Exception as exc:
            raise EdgetrainError(
                f"ExecuTorch cannot load '{path}': {one_line(exc)}; export it with "
                "edgetrain export --format executorch"
            ) from None
        method.edgetrain_program = program
        return method

    @staticmethod
    def _inputs(method: Any) -> list[InputSpec]:
        meta = method.metadata
        specs = []
        for i in range(meta.num_inputs()):
            tensor = meta.input_tensor_meta(i)
            dtype = _SCALAR_TYPES.get(int(tensor.dtype()))
            if dtype is None:
                raise EdgetrainError(
                    f"input {i} has ExecuTorch scalar type {tensor.dtype()}, which bench "
                    "cannot feed"
                )
            specs.append(InputSpec(f"input{i}", tuple(tensor.sizes()), dtype))
        return specs

    def batch_note(self, path: Path, batch: int) -> str | None:
        for spec in self._inputs(self._method(path)):
            first = spec.shape[0] if spec.shape else None
            if first is not None and first != batch:
                return (
                    f"the program was exported for batch {first} only; export one for batch "
                    f"{batch} (edgetrain export --format executorch --batch {batch})"
                )
        return None

    def _feeds(self, method: Any, batch: int) -> list[Any]:
        import torch

        specs = [InputSpec(s.name, (batch, *s.shape[1:]), s.dtype) for s in self._inputs(method)]
        return [torch.from_numpy(a) for a in random_inputs(specs, batch)]

    def measure(
        self, path: Path, *, batch: int, warmup: int, runs: int, threads: int, profile: bool
    ) -> Measurement:
        method = self._method(path, threads)
        feeds = self._feeds(method, batch)
        try:
            method.execute(feeds)
        except Exception as exc:
            raise EdgetrainError(
                f"ExecuTorch cannot run '{path}' at batch {batch}: {one_line(exc)}"
            ) from None
        for _ in range(warmup):
            method.execute(feeds)
        latencies = []
        for _ in range(runs):
            start = time.perf_counter_ns()
            method.execute(feeds)
            latencies.append((time.perf_counter_ns() - start) / 1e6)
        return Measurement(latencies, None)

    def predictor(self, path: Path, *, threads: int = 1) -> Any:
        import torch

        method = self._method(path, threads)
        first = self._inputs(method)[0].shape
        size = int(first[0]) if first else 1

        def predict(x: np.ndarray) -> np.ndarray:
            # The program runs its exported batch: split the input into chunks of it,
            # padding the last one with zeros whose outputs are dropped.
            outputs = []
            for start in range(0, len(x), size):
                chunk = np.ascontiguousarray(x[start : start + size], dtype=np.float32)
                n = len(chunk)
                if n < size:
                    pad = np.zeros((size - n, *chunk.shape[1:]), dtype=chunk.dtype)
                    chunk = np.concatenate([chunk, pad])
                out = method.execute([torch.from_numpy(chunk)])
                outputs.append(out[0].detach().numpy()[:n].copy())
            return np.concatenate(outputs)

        return predict


def _set_threads(threads: int) -> None:
    """Size the process's XNNPACK thread pool to ``threads``. Resizing it under a loaded
    method breaks that method (wrong outputs, then a crash), so this runs before a
    method is loaded, and a method is never kept across calls that change the count."""
    lib = require("executorch.extension.pybindings.portable_lib", "executorch", "executorch")
    if int(lib._threadpool_get_thread_count()) != threads:
        with quiet_native():  # it logs every resize
            lib._unsafe_reset_threadpool(threads)
