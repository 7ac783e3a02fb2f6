"""ONNX export with a checker pass and an ONNX Runtime vs PyTorch equality check.

The model is exported in eval mode with PyTorch's TorchScript-based exporter (it needs
no package beyond ``onnx``; the torch.export-based one needs ``onnxscript`` and is much
slower on small models), checked with ``onnx.checker``, run through ONNX Runtime on a
random batch and compared with PyTorch. Only a model that passes every check is
written, atomically: a failed export leaves no file that looks complete.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edgetrain._atomic import atomic_writer
from edgetrain._modules import eval_mode
from edgetrain._optional import require
from edgetrain.compress.runtime import onnx_session
from edgetrain.errors import EdgetrainError, one_line

__all__ = ["ExportResult", "check_onnx", "compare_outputs", "export_onnx"]

INPUT_NAME = "input"


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_onnx` wrote and how closely ONNX Runtime matched PyTorch.

    ``max_rel_error`` is the largest absolute difference divided by the largest absolute
    PyTorch output (the error relative to the output scale). Both errors are None when
    the export was not checked.
    """

    path: Path
    input_shape: tuple[int, ...]
    opset: int
    dynamic_batch: bool
    file_bytes: int
    max_abs_error: float | None = None
    max_rel_error: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        d = asdict(self)
        d["path"] = str(self.path)
        d["input_shape"] = list(self.input_shape)
        return d


def export_onnx(
    model: nn.Module,
    path: str | Path,
    input_shape: tuple[int, ...] | None = None,
    opset: int = 17,
    batch: int = 1,
    dynamic_batch: bool = True,
    check: bool = True,
    atol: float = 1e-4,
    rtol: float = 1e-3,
) -> ExportResult:
    """Export ``model`` to ONNX, check it and compare ONNX Runtime with PyTorch.

    Args:
        model: the network; exported in eval mode (its training flag is restored).
        path: the ``.onnx`` file to write (replaced atomically).
        input_shape: one sample's shape without the batch, e.g. ``(3, 32, 32)``;
            default: the zoo model's ``input_shape``.
        opset: ONNX opset version.
        batch: batch size of the example input (the fixed batch when not dynamic).
        dynamic_batch: make the batch dimension symbolic (needed for throughput runs).
        check: run ``onnx.checker`` and the ONNX Runtime comparison.
        atol: absolute tolerance of the comparison, per element ...
        rtol: ... plus this fraction of the PyTorch value.

    Raises:
        EdgetrainError: the model cannot be exported, the checker rejects it, or ONNX
            Runtime's outputs differ from PyTorch's beyond tolerance.

    Example:
        >>> from edgetrain import models
        >>> r = export_onnx(models.create("small_cnn"), "small_cnn.onnx")  # doctest: +SKIP
        >>> r.max_abs_error < 1e-4  # doctest: +SKIP
        True
    """
    shape = _input_shape(model, input_shape)
    if batch < 1:
        raise EdgetrainError(f"batch={batch} must be a positive integer")
    low, high = opset_range()
    if isinstance(opset, bool) or not isinstance(opset, int) or not low <= opset <= high:
        raise EdgetrainError(
            f"ONNX opset {opset!r} cannot be exported; give one from {low} to {high} (default 17)"
        )
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    # A private generator: exporting must not move the caller's random stream.
    example = torch.randn(batch, *shape, generator=torch.Generator().manual_seed(0)).to(device)
    with eval_mode(model):
        data = _export_bytes(model, example, opset, dynamic_batch)
        max_abs = max_rel = None
        if check:
            check_onnx(data, what="the exported model")
            check_batch = max(batch, 2) if dynamic_batch else batch
            max_abs, max_rel = _compare(model, data, shape, check_batch, device, atol, rtol)
    path = Path(path)
    with atomic_writer(path) as f:
        f.write(data)
    return ExportResult(path, shape, opset, dynamic_batch, len(data), max_abs, max_rel)


def check_onnx(source: str | Path | bytes, what: str | None = None) -> None:
    """Run ``onnx.checker`` (with strict shape inference) on a file or serialized model.

    Raises:
        EdgetrainError: one line saying why the model is invalid.
    """
    onnx = require("onnx", "compress")
    from google.protobuf.message import DecodeError

    name = what or f"'{source}'"
    try:
        proto = onnx.load_from_string(source) if isinstance(source, bytes) else onnx.load(source)
    except FileNotFoundError:
        raise EdgetrainError(f"ONNX file '{source}' not found; check the path") from None
    except (DecodeError, OSError) as exc:
        raise EdgetrainError(
            f"{name} is not an ONNX model (corrupted or truncated?): {one_line(exc)}"
        ) from None
    try:
        onnx.checker.check_model(proto, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise EdgetrainError(
            f"the ONNX checker rejected {name}: {one_line(exc)}; re-export it (edgetrain "
            "export) or fix the graph"
        ) from None


def _input_shape(model: nn.Module, input_shape: tuple[int, ...] | None) -> tuple[int, ...]:
    shape = tuple(input_shape or getattr(model, "input_shape", ()) or ())
    if not shape:
        raise EdgetrainError(
            f"{type(model).__name__} records no input shape; pass input_shape=(C, H, W) "
            "without the batch dimension"
        )
    if any(not isinstance(d, int) or d < 1 for d in shape):
        raise EdgetrainError(f"input_shape {shape} must be positive integers, e.g. (3, 32, 32)")
    return tuple(shape)


def opset_range() -> tuple[int, int]:
    """The ONNX opsets torch's exporter (the TorchScript-based one used here) writes."""
    from torch.onnx import _constants

    high = getattr(_constants, "ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET", _constants.ONNX_MAX_OPSET)
    return int(getattr(_constants, "ONNX_MIN_OPSET", 7)), int(high)


def _export_bytes(model: nn.Module, example: torch.Tensor, opset: int, dynamic: bool) -> bytes:
    with torch.no_grad():
        outputs = model(example)
    n_out = len(outputs) if isinstance(outputs, tuple | list) else 1
    output_names = ["output"] if n_out == 1 else [f"output{i}" for i in range(n_out)]
    axes = {n: {0: "batch"} for n in (INPUT_NAME, *output_names)} if dynamic else None
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # the legacy exporter's notice
            torch.onnx.export(
                model,
                (example,),
                buffer,
                dynamo=False,
                opset_version=opset,
                input_names=[INPUT_NAME],
                output_names=output_names,
                dynamic_axes=axes,
                do_constant_folding=True,
            )
    except Exception as exc:  # unsupported operators and opsets surface as many types
        raise EdgetrainError(
            f"could not export {type(model).__name__} to ONNX opset {opset}: {one_line(exc)}"
        ) from None
    return buffer.getvalue()


def _compare(
    model: nn.Module,
    data: bytes,
    shape: tuple[int, ...],
    batch: int,
    device: torch.device,
    atol: float,
    rtol: float,
) -> tuple[float, float]:
    session = onnx_session(data)
    return compare_outputs(
        model,
        lambda x: session.run(None, {INPUT_NAME: x}),
        shape,
        batch,
        atol,
        rtol,
        "ONNX Runtime",
    )


def compare_outputs(
    model: nn.Module,
    predict: Callable[[np.ndarray], Any],
    shape: tuple[int, ...],
    batch: int,
    atol: float,
    rtol: float,
    what: str,
    relative_atol: bool = False,
) -> tuple[float, float]:
    """Largest absolute and relative (to the output scale) difference between PyTorch's
    outputs and ``predict``'s (one array, or a list in the model's output order) on a
    seeded random batch.

    Raises:
        EdgetrainError: a shape mismatch or a difference above ``atol + rtol * |want|``
            (``atol`` times the largest PyTorch output when ``relative_atol``).
    """
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    x = torch.randn(batch, *shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(x.to(device))
    wanted = list(expected) if isinstance(expected, tuple | list) else [expected]
    try:
        got = predict(x.numpy())
    except EdgetrainError:
        raise
    except Exception as exc:  # a runtime's own error types
        raise EdgetrainError(
            f"{what} cannot run the exported model at batch {batch}: {one_line(exc)}; the "
            "model has code the exporter fixed at the example's shape (a Python number "
            "taken from a tensor's size?)"
        ) from None
    got_list = list(got) if isinstance(got, tuple | list) else [got]
    max_abs = max_rel = 0.0
    for want_t, have_raw in zip(wanted, got_list, strict=False):
        want = want_t.detach().float().cpu().numpy()
        have = np.asarray(have_raw, dtype=np.float32)
        if want.shape != have.shape:
            raise EdgetrainError(
                f"{what} returned shape {have.shape}, PyTorch {want.shape}; the model does "
                "not export faithfully (shape-dependent Python code?)"
            )
        diff = np.abs(want - have)
        scale = float(np.abs(want).max()) or 1.0
        max_abs = max(max_abs, float(diff.max(initial=0.0)))
        max_rel = max(max_rel, float(diff.max(initial=0.0)) / scale)
        limit = atol * scale if relative_atol else atol
        if not np.all(diff <= limit + rtol * np.abs(want)):
            raise EdgetrainError(
                f"{what}'s outputs differ from PyTorch's (max abs error {max_abs:.3g}, "
                f"relative {max_rel:.3g}) beyond atol={atol:g}"
                f"{' of the output scale' if relative_atol else ''}, rtol={rtol:g}; the "
                "model has code the exporter cannot capture (data-dependent Python?) or "
                "an op the format computes differently; pass a larger tolerance to accept it"
            )
    return max_abs, max_rel
