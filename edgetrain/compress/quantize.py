"""Int8 quantization (and fp16 conversion) of an exported ONNX model with ONNX Runtime's
tools.

``int8_static`` writes a QDQ model (QuantizeLinear/DequantizeLinear pairs around each
quantized operator, int8 weights per output channel) whose activation ranges come from
running a few calibration batches; ``int8_dynamic`` quantizes weights ahead of time and
activations on the fly, needing no calibration data. The model is pre-processed first
(shape inference and graph optimisation), as ONNX Runtime recommends. ``fp16`` converts
weights and activations to float16 with ONNX Runtime's converter, keeping float32 inputs
and outputs (half the file; fast where the runtime has fp16 kernels, e.g. OpenVINO on
CPUs with AVX512-FP16 or AMX, GPUs); its accuracy is measured like int8's.

Int8 is fast only where the CPU has int8 dot-product instructions (x86 VNNI/AMX, Arm
dotprod/i8mm); elsewhere :func:`int8_speed_note` says so and quantizing warns once.
"""

from __future__ import annotations

import os
import platform
import tempfile
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgetrain._optional import require
from edgetrain.compress.runtime import onnx_session
from edgetrain.errors import EdgetrainError, one_line
from edgetrain.registry import Registry

__all__ = [
    "QUANTIZE_METHODS",
    "QuantizeResult",
    "fp16_onnx_bytes",
    "int8_speed_note",
    "quantize_onnx",
]

QUANTIZE_METHODS: Registry[int | None] = Registry("quantization method")
"""ONNX Runtime quantization methods by name (``quantize: {method: ...}`` in recipes).

Each entry is called as ``fn(q, source, target, *, session, calibration_data,
calibration_batches, per_channel)`` with ``q`` the ``onnxruntime.quantization`` module,
writes ``target`` and returns the number of calibration batches used (None: none).
``calibrated=True`` in its metadata: it needs calibration data; ``int8=True``: it is
fast only with int8 dot-product instructions; ``preprocess=False``: the model goes to it
as exported."""

_X86_INT8 = ("avx512_vnni", "avx_vnni", "amx_int8")
_ARM_INT8 = ("asimddp", "i8mm")
_warned: set[str] = set()


@dataclass(frozen=True)
class QuantizeResult:
    """What :func:`quantize_onnx` wrote."""

    path: Path
    method: str
    fp32_bytes: int
    int8_bytes: int
    calibration_batches: int | None = None
    speed_note: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def size_ratio(self) -> float:
        """Int8 file size over FP32 file size."""
        return self.int8_bytes / max(self.fp32_bytes, 1)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {**asdict(self), "path": str(self.path), "size_ratio": self.size_ratio}


def quantize_onnx(
    fp32_path: str | Path,
    out_path: str | Path,
    method: str = "int8_static",
    calibration_data: Iterable[Any] | None = None,
    calibration_batches: int = 32,
    per_channel: bool = True,
) -> QuantizeResult:
    """Quantize an FP32 ONNX model to int8.

    Args:
        fp32_path: the exported model (see :func:`~edgetrain.compress.export_onnx`).
        out_path: the int8 ``.onnx`` file to write (replaced atomically).
        method: ``"int8_static"`` (QDQ, calibrated) or ``"int8_dynamic"``.
        calibration_data: for ``int8_static``: batches of inputs (numpy arrays or
            tensors, or ``(inputs, targets)`` pairs as a DataLoader yields them).
        calibration_batches: use at most this many batches.
        per_channel: one weight scale per output channel (more accurate than per tensor).

    Raises:
        EdgetrainError: unknown method, missing or ill-shaped calibration data, or a
            model that ONNX Runtime cannot quantize.

    Example:
        >>> batches = (x for x, _ in loader)  # doctest: +SKIP
        >>> quantize_onnx("m.onnx", "m.int8.onnx", calibration_data=batches)  # doctest: +SKIP
    """
    entry = QUANTIZE_METHODS.entry(method)  # an unknown method lists the choices
    if entry.meta.get("calibrated") and calibration_data is None:
        uncalibrated = [e.name for e in QUANTIZE_METHODS if not e.meta.get("calibrated")]
        raise EdgetrainError(
            f"{method} needs calibration_data (a few batches of inputs); pass it, or use "
            f"a method without calibration ({', '.join(uncalibrated)})"
        )
    if calibration_batches < 1:
        raise EdgetrainError(f"calibration_batches={calibration_batches} must be at least 1")
    q = require("onnxruntime.quantization", "compress", package="onnxruntime")
    fp32_path, out_path = Path(fp32_path), Path(out_path)
    session = onnx_session(fp32_path)  # checks that the file exists and loads
    note = int8_speed_note() if entry.meta.get("int8", True) else None
    if note is not None and note not in _warned:
        _warned.add(note)
        warnings.warn(note, RuntimeWarning, stacklevel=2)

    out_path.parent.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix=f".{out_path.name}.", dir=out_path.parent) as tmp:
        source = Path(tmp) / "preprocessed.onnx"
        try:
            if not entry.meta.get("preprocess", True):
                source = fp32_path
            else:
                q.quant_pre_process(str(fp32_path), str(source))
        except Exception as exc:  # pre-processing helps accuracy but is optional
            notes.append(f"pre-processing skipped: {one_line(exc)}")
            source = fp32_path
        target = Path(tmp) / "quantized.onnx"
        try:
            used = entry.fn(
                q,
                str(source),
                str(target),
                session=session,
                calibration_data=calibration_data or (),
                calibration_batches=calibration_batches,
                per_channel=per_channel,
            )
        except EdgetrainError:
            raise
        except Exception as exc:
            raise EdgetrainError(
                f"ONNX Runtime could not quantize '{fp32_path}' ({method}): {one_line(exc)}"
            ) from None
        onnx_session(target)  # an int8 model that ORT cannot run is no result
        os.replace(target, out_path)
    return QuantizeResult(
        out_path,
        method,
        fp32_path.stat().st_size,
        out_path.stat().st_size,
        used,
        note,
        notes,
    )


@QUANTIZE_METHODS.register("int8_static", calibrated=True, int8=True)
def _int8_static(
    q: Any,
    source: str,
    target: str,
    *,
    session: Any,
    calibration_data: Iterable[Any],
    calibration_batches: int,
    per_channel: bool,
) -> int:
    """Static int8 (QDQ), activation ranges calibrated on a few input batches."""
    reader = _CalibrationReader(session, calibration_data, calibration_batches)
    q.quantize_static(
        source,
        target,
        reader,
        quant_format=q.QuantFormat.QDQ,
        per_channel=per_channel,
        weight_type=q.QuantType.QInt8,
        activation_type=q.QuantType.QInt8,
    )
    return reader.used


@QUANTIZE_METHODS.register("int8_dynamic", calibrated=False, int8=True)
def _int8_dynamic(
    q: Any,
    source: str,
    target: str,
    *,
    session: Any,
    calibration_data: Iterable[Any],
    calibration_batches: int,
    per_channel: bool,
) -> None:
    """Dynamic int8: weights quantized ahead, activations at run time (no calibration)."""
    q.quantize_dynamic(source, target, per_channel=per_channel, weight_type=q.QuantType.QInt8)
    return None


@QUANTIZE_METHODS.register("fp16", calibrated=False, int8=False, preprocess=False)
def _fp16(
    q: Any,
    source: str,
    target: str,
    *,
    session: Any,
    calibration_data: Iterable[Any],
    calibration_batches: int,
    per_channel: bool,
) -> None:
    """Float16 weights and activations, float32 inputs and outputs (no calibration)."""
    Path(target).write_bytes(fp16_onnx_bytes(source))
    return None


def fp16_onnx_bytes(fp32_path: str | Path) -> bytes:
    """An FP32 ONNX model converted to float16 inside (inputs and outputs stay float32),
    with ONNX Runtime's converter, serialized."""
    onnx = require("onnx", "compress")
    converter = require("onnxruntime.transformers.float16", "compress", package="onnxruntime")
    try:
        proto = converter.convert_float_to_float16(onnx.load(str(fp32_path)), keep_io_types=True)
    except Exception as exc:
        raise EdgetrainError(
            f"ONNX Runtime's float16 converter failed on '{fp32_path}': {one_line(exc)}"
        ) from None
    data: bytes = proto.SerializeToString()
    return data


def int8_speed_note(cpuinfo: str | None = None, machine: str | None = None) -> str | None:
    """Why int8 may not be faster than FP32 on this CPU, or None when it should be.

    Looks for the int8 dot-product instructions ONNX Runtime's int8 kernels use:
    AVX512-VNNI, AVX-VNNI or AMX-INT8 on x86; dotprod (asimddp) or i8mm on Arm.
    Returns None when the CPU cannot be inspected (no ``/proc/cpuinfo``).

    Args:
        cpuinfo: the text of ``/proc/cpuinfo`` (default: read it).
        machine: ``platform.machine()`` (default: this machine's).
    """
    arch = (machine or platform.machine()).lower()
    if arch in ("x86_64", "amd64", "i386", "i686", "x86"):
        wanted = _X86_INT8
    elif arch.startswith(("aarch64", "arm")):
        wanted = _ARM_INT8
    else:
        return None
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return None
    flags: set[str] = set()
    model = ""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("flags", "features"):
            flags.update(value.split())
        elif key == "model name" and not model:
            model = value.strip()
    if not flags or flags & set(wanted):
        return None
    cpu = f"this CPU ({model})" if model else "this CPU"
    return (
        f"{cpu} has no int8 dot-product instructions ({', '.join(wanted)}): int8 models "
        "run but may be no faster than FP32; compare both with 'edgetrain bench'"
    )


class _CalibrationReader:
    """ONNX Runtime's CalibrationDataReader over an iterable of input batches."""

    def __init__(self, session: Any, data: Iterable[Any], limit: int) -> None:
        meta = session.get_inputs()[0]
        self.name = meta.name
        self.shape = list(meta.shape)  # symbolic dimensions are strings or None
        self.limit = limit
        self.used = 0
        self._batches: Iterator[Any] = iter(data)

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.used >= self.limit:
            return None
        item = next(self._batches, None)
        if item is None:
            if self.used == 0:
                raise EdgetrainError("calibration_data gave no batches; pass a few input batches")
            return None
        self.used += 1
        return {self.name: self._array(item)}

    def _array(self, item: Any) -> np.ndarray:
        if isinstance(item, tuple | list):  # (inputs, targets) from a DataLoader
            item = item[0]
        if hasattr(item, "detach"):
            item = item.detach().cpu().numpy()
        x = np.asarray(item, dtype=np.float32)
        if x.ndim == len(self.shape) - 1:
            x = x[None]
        fixed = [d if isinstance(d, int) else None for d in self.shape]
        fits = x.ndim == len(fixed) and all(
            d is None or d == n for d, n in zip(fixed, x.shape, strict=True)
        )
        if not fits:
            want = "x".join("N" if d is None else str(d) for d in fixed)
            raise EdgetrainError(
                f"calibration batch of shape {'x'.join(map(str, x.shape))} does not fit the "
                f"model's input {want}; pass batches shaped like the model's input"
            )
        return x
