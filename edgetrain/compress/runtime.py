"""Runtimes that run an exported model and time it: in-process engines, or a command.

A runtime answers one question, "how long does this model take at this batch?", with
one :class:`Measurement` per call; :func:`~edgetrain.compress.benchmark` turns repeated
measurements into statistics. Runtimes are registered by name (``RUNTIMES``):

- ``onnxruntime``: an ONNX Runtime session on an execution provider (CPU by default,
  any installed one by ``provider``) with fixed thread counts and sequential
  execution; optionally a second, profiled session whose per-node kernel times give the
  *compute latency* (the run time without session and input/output overhead). The
  latency runs are never profiled: the profiler adds a few microseconds around every
  node and slows the kernels themselves a little (about 5-10 % on small CNNs), so on
  models of well under a millisecond the kernel sum can exceed the unprofiled latency.
- ``command``: any program, given as an argument list (never a shell string), that
  receives the model path and prints a JSON object with ``latency_ms``. This is how a
  phone (``adb shell ...``) or a board behind another host is measured. Its ``output``
  adapter also reads OpenVINO ``benchmark_app`` JSON reports (:mod:`.command_outputs`).
- ``openvino`` (:mod:`.openvino_runtime`) and ``executorch`` (:mod:`.executorch_runtime`),
  each an optional extra that names its install line when missing.

Every runtime says which files it reads (``suffixes``), which export format makes
its file from a PyTorch model (``export_format``), whether its package is installed
(:meth:`Runtime.missing`), and, where it runs in this process, gives a
:meth:`Runtime.predictor` that computes outputs, so the accuracy of the deployed file
is measured on the runtime that will run it.
"""

from __future__ import annotations

import bisect
import json
import os
import shlex
import subprocess
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from edgetrain._optional import require
from edgetrain.compress.command_outputs import OUTPUT_ADAPTERS, shorten
from edgetrain.errors import EdgetrainError, one_line
from edgetrain.registry import Registry

__all__ = [
    "PLACEHOLDERS",
    "InputSpec",
    "RUNTIMES",
    "CommandRuntime",
    "Measurement",
    "OnnxRuntime",
    "Runtime",
    "node_time_per_run",
    "onnx_session",
    "op_times",
    "random_inputs",
]

#: Whole-value placeholders of a command template, each replaced inside its argument.
PLACEHOLDERS = ("{model}", "{batch}", "{runs}", "{warmup}", "{threads}", "{report_dir}")

_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}


@dataclass(frozen=True)
class Measurement:
    """Latencies of the timed runs of one measurement (milliseconds, one per run).

    ``compute_ms`` holds the per-run kernel times where the runtime can tell them apart
    from overhead (ONNX Runtime's profiler), else None.
    """

    latencies_ms: list[float]
    compute_ms: list[float] | None = None


class Runtime(ABC):
    """Runs a model file and reports its latency."""

    name: ClassVar[str]
    #: File name endings this runtime reads; empty: any file (a command decides).
    suffixes: ClassVar[tuple[str, ...]] = ()
    #: The export format (``edgetrain export --format``) that writes this runtime's file.
    export_format: ClassVar[str] = "onnx"

    @classmethod
    def missing(cls) -> str | None:
        """The install line when this runtime's package is missing, else None."""
        return None

    def model_bytes(self, path: Path) -> int:
        """Bytes of the model's files (a format may keep weights beside ``path``)."""
        return path.stat().st_size

    def check_file(self, path: Path) -> None:
        """Refuse a file this runtime does not read, in one line naming what it reads."""
        if self.suffixes and not str(path).lower().endswith(self.suffixes):
            raise EdgetrainError(
                f"runtime '{self.name}' reads {' or '.join(self.suffixes)} files, not "
                f"'{path.name}'; export one with: edgetrain export SOURCE --format "
                f"{self.export_format}"
            )

    def predictor(self, path: Path, *, threads: int = 1) -> Any:
        """A function from a float32 input batch (numpy) to the first output (numpy),
        for accuracy checks of the deployed file on this runtime.

        Raises:
            EdgetrainError: the runtime cannot hand outputs back (a command).
        """
        raise EdgetrainError(
            f"runtime '{self.name}' reports latency only, not outputs; check accuracy with "
            "an in-process runtime (onnxruntime, openvino, executorch)"
        )

    def batch_note(self, path: Path, batch: int) -> str | None:
        """Why this runtime cannot run ``path`` at ``batch``, or None when it can."""
        return None

    @abstractmethod
    def measure(
        self, path: Path, *, batch: int, warmup: int, runs: int, threads: int, profile: bool
    ) -> Measurement:
        """Warm up, then time ``runs`` inferences of a random batch of ``batch`` samples."""

    @property
    def gives_outputs(self) -> bool:
        """Whether :meth:`predictor` computes outputs on this runtime."""
        return type(self).predictor is not Runtime.predictor

    @property
    def times_ops(self) -> bool:
        """Whether :meth:`op_times` can time single operators on this runtime."""
        return type(self).op_times is not Runtime.op_times

    def op_times(
        self,
        path: Path,
        *,
        threads: int = 1,
        warmup: int = 10,
        runs: int = 50,
        by: str = "type",
    ) -> dict[str, float]:
        """Kernel time per operator type (``by="type"``) or per layer, one executed node
        named with its type (``by="layer"``), in ms per run at batch 1, largest first.

        Raises:
            EdgetrainError: the runtime has no per-operator profile.
        """
        able = [e.name for e in RUNTIMES if e.fn.op_times is not Runtime.op_times]
        raise EdgetrainError(
            f"runtime '{self.name}' cannot time single operators; use one that can "
            f"({', '.join(able)})"
        )


RUNTIMES: Registry[Runtime] = Registry("runtime")


def onnx_providers() -> list[str]:
    """The execution providers of the installed ONNX Runtime, in its order of preference."""
    return list(require("onnxruntime", "compress").get_available_providers())


def onnx_provider(name: str) -> str:
    """The full name of an installed execution provider: ``CPUExecutionProvider``, or
    short and in any case, ``cpu``, ``cuda``, ``openvino``.

    Raises:
        EdgetrainError: no installed provider has that name.
    """
    installed = onnx_providers()
    for full in installed:
        if name.lower() in (full.lower(), full.lower().removesuffix("executionprovider")):
            return full
    raise EdgetrainError(
        f"ONNX Runtime execution provider '{name}' is not installed here; choose one of "
        f"{', '.join(installed)} (other providers come with other onnxruntime packages, "
        "e.g. onnxruntime-gpu, onnxruntime-openvino)"
    )


def onnx_session(
    source: str | Path | bytes,
    threads: int = 1,
    provider: str = "CPUExecutionProvider",
    **options: Any,
) -> Any:
    """An ONNX Runtime session with fixed thread counts and sequential execution.

    Args:
        source: an ``.onnx`` file or a serialized model.
        threads: intra-op threads (one inter-op thread: nodes run one after another).
        provider: the execution provider (see :func:`onnx_provider`); CPU by default.
        **options: further ``SessionOptions`` attributes, e.g. ``enable_profiling=True``.

    Raises:
        EdgetrainError: the file is missing or ONNX Runtime cannot load it.
    """
    ort = require("onnxruntime", "compress")
    in_memory = isinstance(source, bytes)
    if not in_memory and not Path(source).is_file():
        raise EdgetrainError(f"ONNX file '{source}' not found; check the path")
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3  # errors only: ORT's optimizer notes are not for users
    for key, value in options.items():
        setattr(so, key, value)
    try:
        return ort.InferenceSession(
            source if in_memory else str(source), so, providers=[onnx_provider(provider)]
        )
    except EdgetrainError:
        raise
    except Exception as exc:  # ORT raises its own pybind classes, all plain Exceptions
        name = "the model" if in_memory else f"'{source}'"
        raise EdgetrainError(
            f"ONNX Runtime cannot load {name}: {one_line(exc)}; check that it is a valid "
            "ONNX file (edgetrain export writes one)"
        ) from None


@dataclass(frozen=True)
class InputSpec:
    """One model input as a runtime declares it: name, shape (None for a symbolic
    dimension) and numpy dtype."""

    name: str
    shape: tuple[int | None, ...]
    dtype: Any


def random_inputs(specs: Sequence[InputSpec], batch: int, seed: int = 0) -> list[np.ndarray]:
    """A random input per spec, the first symbolic dimension set to ``batch``: standard
    normal floats, zeros for integer and boolean inputs.

    Raises:
        EdgetrainError: a symbolic dimension beyond the batch (no shape to feed).
    """
    rng = np.random.default_rng(seed)
    arrays = []
    for spec in specs:
        shape = [batch if i == 0 and d is None else d for i, d in enumerate(spec.shape)]
        if any(d is None for d in shape):
            shown = ["?" if d is None else d for d in spec.shape]
            raise EdgetrainError(
                f"input '{spec.name}' has symbolic dimensions {shown} beyond the batch; "
                "export the model with a fixed sample shape to benchmark it"
            )
        dims = [int(d) for d in shape if d is not None]
        if np.issubdtype(spec.dtype, np.floating):
            arrays.append(rng.standard_normal(dims).astype(spec.dtype))
        else:
            arrays.append(np.zeros(dims, dtype=spec.dtype))
    return arrays


def fixed_batch_note(specs: Sequence[InputSpec], batch: int, export_format: str) -> str | None:
    """Why inputs with a fixed first dimension cannot take ``batch``, or None."""
    for spec in specs:
        first = spec.shape[0] if spec.shape else None
        if first is not None and first != batch:
            return (
                f"input '{spec.name}' has a fixed batch of {first}; export the model with "
                f"a dynamic batch (edgetrain export --format {export_format} does by default)"
            )
    return None


def _onnx_inputs(session: Any) -> list[InputSpec]:
    specs = []
    for meta in session.get_inputs():
        dtype = _DTYPES.get(meta.type)
        if dtype is None:
            raise EdgetrainError(
                f"input '{meta.name}' has type {meta.type}, which bench cannot feed"
            )
        shape = tuple(d if isinstance(d, int) else None for d in meta.shape)
        specs.append(InputSpec(meta.name, shape, dtype))
    return specs


def _random_feeds(session: Any, batch: int) -> dict[str, np.ndarray]:
    specs = _onnx_inputs(session)
    return {s.name: a for s, a in zip(specs, random_inputs(specs, batch), strict=True)}


@RUNTIMES.register("onnxruntime")
@dataclass
class OnnxRuntime(Runtime):
    """ONNX Runtime: fixed threads, sequential execution, on an installed execution
    provider (``provider``: CPU by default; ``cuda``, ``openvino`` ... where installed)."""

    provider: str = "CPUExecutionProvider"
    name: ClassVar[str] = "onnxruntime"
    suffixes: ClassVar[tuple[str, ...]] = (".onnx",)

    def __post_init__(self) -> None:
        require("onnxruntime", "compress")
        self.provider = onnx_provider(self.provider)

    @classmethod
    def missing(cls) -> str | None:
        return _missing_module("onnxruntime", "compress")

    def _session(self, path: Path, threads: int = 1, **options: Any) -> Any:
        self.check_file(path)
        return onnx_session(path, threads, self.provider, **options)

    def batch_note(self, path: Path, batch: int) -> str | None:
        return fixed_batch_note(_onnx_inputs(self._session(path)), batch, "onnx")

    def measure(
        self, path: Path, *, batch: int, warmup: int, runs: int, threads: int, profile: bool
    ) -> Measurement:
        session = self._session(path, threads)
        feeds = _random_feeds(session, batch)
        _run(session, feeds, path)
        for _ in range(warmup):
            session.run(None, feeds)
        latencies = []
        for _ in range(runs):
            start = time.perf_counter_ns()
            session.run(None, feeds)
            latencies.append((time.perf_counter_ns() - start) / 1e6)
        compute = (
            _profiled_compute_ms(path, feeds, warmup, runs, threads, self.provider)
            if profile
            else None
        )
        return Measurement(latencies, compute)

    def predictor(self, path: Path, *, threads: int = 1) -> Any:
        session = self._session(path, threads)
        name = session.get_inputs()[0].name

        def predict(x: np.ndarray) -> np.ndarray:
            return np.asarray(session.run(None, {name: x})[0])

        return predict

    def op_times(
        self,
        path: Path,
        *,
        threads: int = 1,
        warmup: int = 10,
        runs: int = 50,
        by: str = "type",
    ) -> dict[str, float]:
        self.check_file(path)
        return op_times(
            path, threads=threads, warmup=warmup, runs=runs, provider=self.provider, by=by
        )


def _missing_module(module: str, extra: str, package: str | None = None) -> str | None:
    """The install line of a missing optional module, else None (without importing it)."""
    import importlib.util

    if importlib.util.find_spec(module) is not None:
        return None
    return f"pip install 'edgetrain[{extra}]' (installs {package or module})"


@RUNTIMES.register("command")
@dataclass
class CommandRuntime(Runtime):
    """A program that runs the model and reports its latency (a JSON line by default).

    Args:
        command: the argument list, e.g. ``["adb", "shell", "bench", "{model}"]``. It runs
            without a shell; ``{model}`` (required), ``{batch}``, ``{runs}``,
            ``{warmup}``, ``{threads}`` and ``{report_dir}`` (a fresh folder per call)
            are replaced inside their argument, which stays one argument whatever the
            value holds.
        timeout_s: seconds one call may take.
        output: how to read the result, a key of
            :data:`~edgetrain.compress.command_outputs.OUTPUT_ADAPTERS`: ``json`` (one
            JSON object on stdout, alone or as its last line, with ``latency_ms``: a
            number or a list of per-run latencies; ``compute_ms`` optional) or
            ``benchmark_app`` (OpenVINO benchmark_app's report in ``{report_dir}``).
    """

    command: list[str] = field(default_factory=list)
    timeout_s: float = 600.0
    output: str = "json"
    name: ClassVar[str] = "command"

    def __post_init__(self) -> None:
        if isinstance(self.command, str) or not self.command:
            raise EdgetrainError(
                "the command runtime needs an argument list such as "
                '["prog", "--model", "{model}"], not a shell string'
            )
        if not all(isinstance(a, str) for a in self.command):
            raise EdgetrainError(f"command {self.command!r} must hold strings only")
        if not any("{model}" in a for a in self.command):
            raise EdgetrainError(
                f"command {self.command!r} has no '{{model}}' argument; add one where the "
                "model path goes"
            )
        if self.timeout_s <= 0:
            raise EdgetrainError(f"timeout_s={self.timeout_s} must be positive")
        adapter = OUTPUT_ADAPTERS.entry(self.output)  # an unknown name lists the choices
        if adapter.meta["report_dir"] and not any("{report_dir}" in a for a in self.command):
            raise EdgetrainError(
                f"output '{self.output}' reads a report the program writes; put "
                "'{report_dir}' in the command where its report folder goes"
            )
        program = os.path.basename(self.command[0]).lower().removesuffix(".exe")
        script = self._shell_script()
        if script is None and program in _OTHER_SHELLS and _has_placeholder(self.command[1:]):
            raise EdgetrainError(
                f"command {self.command!r} puts placeholders into a {program} command line, "
                "where a path could run as code; call the program directly, "
                '["prog", "{model}"]'
            )

    def _shell_script(self) -> int | None:
        """The index of the script of a POSIX shell invocation (``sh -c SCRIPT``), whose
        substituted values must be quoted for that shell; None for a plain program."""
        program = os.path.basename(self.command[0])
        if program in _POSIX_SHELLS and "-c" in self.command[1:-1]:
            return self.command.index("-c", 1) + 1
        return None

    def batch_note(self, path: Path, batch: int) -> str | None:
        if batch != 1 and not any("{batch}" in a for a in self.command):
            return "the command has no '{batch}' argument, so it runs batch 1 only"
        return None

    def measure(
        self, path: Path, *, batch: int, warmup: int, runs: int, threads: int, profile: bool
    ) -> Measurement:
        with tempfile.TemporaryDirectory(prefix="edgetrain-command-") as report_dir:
            values = {
                "{model}": str(path),
                "{batch}": str(batch),
                "{runs}": str(runs),
                "{warmup}": str(warmup),
                "{threads}": str(threads),
                "{report_dir}": report_dir,
            }
            shown, stdout = self._call(values)
            latencies, compute = OUTPUT_ADAPTERS.entry(self.output).fn(
                stdout, Path(report_dir), shown
            )
        return Measurement(latencies, compute)

    def _call(self, values: dict[str, str]) -> tuple[str, str]:
        """Run the command with ``values`` substituted: (the command shown, its stdout)."""
        script = self._shell_script()
        quoted = {k: shlex.quote(v) for k, v in values.items()}  # a path is data, not code
        args = [
            _substitute(a, quoted if i == script else values) for i, a in enumerate(self.command)
        ]
        shown = shorten(shlex.join(args))
        try:
            done = subprocess.run(
                args,
                capture_output=True,
                text=True,
                errors="replace",  # a program printing non-UTF-8 bytes still reports
                timeout=self.timeout_s,
                stdin=subprocess.DEVNULL,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise EdgetrainError(
                f"command runtime: '{shown}' did not finish within {self.timeout_s:g} s; "
                "check the device or raise the timeout"
            ) from None
        except OSError as exc:
            raise EdgetrainError(
                f"command runtime: cannot start '{args[0]}': {one_line(exc)}; check the "
                "program in the command template"
            ) from None
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()
            why = f": {shorten(tail[-1])}" if tail else ""
            raise EdgetrainError(
                f"command runtime: '{shown}' exited with status {done.returncode}{why}"
            )
        return shown, done.stdout


_POSIX_SHELLS = frozenset({"sh", "bash", "dash", "zsh", "ksh", "ash", "busybox"})
_OTHER_SHELLS = frozenset({"cmd", "powershell", "pwsh", "fish", "csh", "tcsh"})


def _has_placeholder(args: list[str]) -> bool:
    return any(p in a for a in args for p in PLACEHOLDERS)


def _substitute(arg: str, values: dict[str, str]) -> str:
    for key, value in values.items():
        arg = arg.replace(key, value)
    return arg


def _run(session: Any, feeds: dict[str, np.ndarray], path: Path) -> None:
    """One run that turns ONNX Runtime's failures into a one-line error."""
    try:
        session.run(None, feeds)
    except Exception as exc:  # ORT's pybind errors
        raise EdgetrainError(f"ONNX Runtime cannot run '{path}': {one_line(exc)}") from None


def _profiled_compute_ms(
    path: Path,
    feeds: dict[str, np.ndarray],
    warmup: int,
    runs: int,
    threads: int,
    provider: str = "CPUExecutionProvider",
) -> list[float]:
    """Per-run sums of node kernel times from ONNX Runtime's profiler (warm-up runs dropped)."""
    events = _profile_events(path, feeds, warmup + runs, threads, provider)
    return node_time_per_run(events)[warmup:]


def _profile_events(
    path: Path,
    feeds: dict[str, np.ndarray],
    runs: int,
    threads: int,
    provider: str = "CPUExecutionProvider",
) -> list[dict[str, Any]]:
    """The events of ONNX Runtime's profiler over ``runs`` runs of a fresh session."""
    with tempfile.TemporaryDirectory(prefix="edgetrain-ort-profile-") as tmp:
        session = onnx_session(
            path,
            threads,
            provider,
            enable_profiling=True,
            profile_file_prefix=str(Path(tmp) / "ort"),
        )
        for _ in range(runs):
            session.run(None, feeds)
        return json.loads(Path(session.end_profiling()).read_text())


def op_times(
    path: str | Path,
    threads: int = 1,
    warmup: int = 10,
    runs: int = 50,
    batch: int = 1,
    provider: str = "CPUExecutionProvider",
    by: str = "type",
) -> dict[str, float]:
    """Kernel time per ONNX operator type, in ms per run at ``batch`` (ORT's profiler),
    largest first: where the time goes, e.g. the ``QuantizeLinear``/``DequantizeLinear``
    of an int8 model against its ``Conv`` time. ``by="layer"``: per node instead, named
    ``node (OpType)``.

    Example:
        >>> op_times("model.int8.onnx")  # doctest: +SKIP
        {'Conv': 0.61, 'QuantizeLinear': 0.12, ...}
    """
    check_grouping(by)
    path = Path(path)
    feeds = _random_feeds(onnx_session(path, threads, provider), batch)
    events = _profile_events(path, feeds, warmup + runs, threads, provider)
    totals: dict[str, float] = {}
    timed = [
        e
        for e in events
        if e.get("cat") == "Node" and str(e.get("name", "")).endswith("_kernel_time")
    ]
    # Drop the warm-up runs: keep each node's last `runs` events.
    per_node: dict[str, list[dict[str, Any]]] = {}
    for e in timed:
        per_node.setdefault(e["name"], []).append(e)
    for name, node_events in per_node.items():
        for e in sorted(node_events, key=lambda x: x["ts"])[-runs:]:
            op = str(e.get("args", {}).get("op_name", "?"))
            key = op if by == "type" else f"{name.removesuffix('_kernel_time')} ({op})"
            totals[key] = totals.get(key, 0.0) + e["dur"] / 1e3 / runs
    return dict(sorted(totals.items(), key=lambda kv: -kv[1]))


def check_grouping(by: str) -> None:
    """Refuse an ``op_times`` grouping other than ``type`` or ``layer``."""
    if by not in ("type", "layer"):
        raise EdgetrainError(f"op_times by '{by}': group by 'type' or 'layer'")


def node_time_per_run(events: Sequence[dict[str, Any]]) -> list[float]:
    """Milliseconds of node kernel time in each ``model_run`` of an ORT profile, in order.

    A node event belongs to the run whose ``[ts, ts + dur]`` interval holds its start.
    """
    runs = sorted(
        (e["ts"], e["ts"] + e["dur"])
        for e in events
        if e.get("cat") == "Session" and e.get("name") == "model_run"
    )
    starts = [r[0] for r in runs]
    totals = [0.0] * len(runs)
    for e in events:
        if e.get("cat") != "Node" or not str(e.get("name", "")).endswith("_kernel_time"):
            continue
        i = bisect.bisect_right(starts, e["ts"]) - 1
        if i >= 0 and e["ts"] <= runs[i][1]:
            totals[i] += e["dur"] / 1e3  # microseconds -> ms
    return totals
