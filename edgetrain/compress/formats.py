"""Export formats: a PyTorch model to the file a runtime reads, checked on that runtime.

``EXPORT_FORMATS`` maps a format name (``edgetrain export --format``) to its writer:

- ``onnx``: :func:`~edgetrain.compress.export_onnx` (ONNX Runtime and OpenVINO read it);
  ``precision="fp16"`` converts weights and activations to float16 with ONNX Runtime's
  converter, keeping float32 inputs and outputs so callers feed the same data.
- ``openvino``: an OpenVINO IR (``.xml`` + ``.bin``) converted from the checked ONNX
  export; ``fp16`` stores the weights in float16 (OpenVINO's ``compress_to_fp16``).
- ``executorch``: a ``.pte`` program, ``torch.export`` then the XNNPACK backend, for
  one fixed batch.

Every writer runs the written file on its runtime against PyTorch on a random batch and
refuses a file whose outputs differ beyond tolerance (fp16: 1 % of the output scale);
the test-set accuracy of a deployed fp16 file is measured like int8's (a recipe's
``quantize: {method: fp16}``). Files are written atomically: a failed export leaves no
file that looks complete (the IR's ``.xml`` is moved into place after its ``.bin``).
"""

from __future__ import annotations

import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgetrain._atomic import atomic_writer
from edgetrain._modules import eval_mode
from edgetrain._optional import require
from edgetrain.compress.export import _input_shape, compare_outputs, export_onnx
from edgetrain.compress.quantize import fp16_onnx_bytes
from edgetrain.compress.runtime import RUNTIMES
from edgetrain.errors import EdgetrainError, one_line
from edgetrain.registry import Registry

__all__ = ["EXPORT_FORMATS", "PRECISIONS", "ExportedFile", "export_model"]

EXPORT_FORMATS: Registry[Any] = Registry("export format")
"""Export writers by name, each called as ``fn(model, path, *, shape, precision, opset,
batch, dynamic_batch)`` and returning the written files; ``suffix`` (the file ending),
``runtime`` (the runtime that checks it) and ``precisions`` in its metadata."""

PRECISIONS = ("fp32", "fp16")
_TOLERANCE = {"fp32": (1e-4, 1e-3), "fp16": (1e-2, 1e-2)}


@dataclass(frozen=True)
class ExportedFile:
    """A model written in one export format and how closely its runtime matched PyTorch.

    ``max_rel_error`` is the largest absolute difference over the largest absolute
    PyTorch output. ``files`` lists every file written (an IR has two).
    """

    path: Path
    format: str
    precision: str
    input_shape: tuple[int, ...]
    batch: int | None
    files: tuple[Path, ...]
    max_abs_error: float
    max_rel_error: float

    @property
    def file_bytes(self) -> int:
        """Size of all the files written."""
        return sum(p.stat().st_size for p in self.files)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "path": str(self.path),
            "format": self.format,
            "precision": self.precision,
            "input_shape": list(self.input_shape),
            "batch": self.batch,
            "files": [str(p) for p in self.files],
            "file_bytes": self.file_bytes,
            "max_abs_error": self.max_abs_error,
            "max_rel_error": self.max_rel_error,
        }


def export_model(
    model: nn.Module,
    path: str | Path,
    format: str = "onnx",
    precision: str = "fp32",
    input_shape: tuple[int, ...] | None = None,
    opset: int = 17,
    batch: int = 1,
    dynamic_batch: bool = True,
    threads: int = 1,
    atol: float | None = None,
) -> ExportedFile:
    """Write ``model`` in an export format and check the file on its runtime.

    Args:
        model: the network, exported in eval mode (its training flag is restored).
        path: the file to write; its ending must be the format's (``.onnx``, ``.xml``,
            ``.pte``).
        format: a key of :data:`EXPORT_FORMATS`.
        precision: ``fp32`` or ``fp16`` where the format offers it.
        input_shape: one sample's shape without the batch (default: the model's).
        opset: ONNX opset of the ONNX export (also under an OpenVINO IR).
        batch: the example batch; the fixed batch of formats without a dynamic one.
        dynamic_batch: a symbolic batch dimension (ONNX and IR; ExecuTorch: fixed).
        threads: threads of the checking runtime.
        atol: allowed absolute difference, as a fraction of the largest PyTorch output
            (default 1e-4 for fp32, 1e-2 for fp16), plus 1e-3 (fp16: 1e-2) of each value.

    Raises:
        EdgetrainError: unknown format or precision, a wrong file ending, a missing
            package (naming its install line), or a file whose outputs differ from
            PyTorch's beyond tolerance.
    """
    entry = EXPORT_FORMATS.entry(format)
    if precision not in entry.meta["precisions"]:
        raise EdgetrainError(
            f"export format '{format}' writes {' or '.join(entry.meta['precisions'])}, not "
            f"'{precision}'"
        )
    path = Path(path)
    suffix = entry.meta["suffix"]
    if path.suffix.lower() != suffix:
        raise EdgetrainError(
            f"export format '{format}' writes a {suffix} file, not '{path.name}'; name the "
            f"output e.g. '{path.with_suffix(suffix).name}'"
        )
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise EdgetrainError(f"batch={batch!r} must be a positive integer")
    default_atol, rtol = _TOLERANCE[precision]
    if atol is not None and not atol >= 0:
        raise EdgetrainError(f"atol={atol!r} must be a non-negative number")
    runtime = RUNTIMES.create(entry.meta["runtime"])  # a missing package names its extra
    shape = _input_shape(model, input_shape)
    path.parent.mkdir(parents=True, exist_ok=True)
    with eval_mode(model):
        files = entry.fn(
            model,
            path,
            shape=shape,
            precision=precision,
            opset=opset,
            batch=batch,
            dynamic_batch=dynamic_batch,
        )
        fixed = entry.meta.get("fixed_batch", False) or not dynamic_batch
        check_batch = batch if fixed else max(batch, 2)
        predict = runtime.predictor(path, threads=threads)
        error = None
        try:
            max_abs, max_rel = compare_outputs(
                model,
                predict,
                shape,
                check_batch,
                default_atol if atol is None else atol,
                rtol,
                f"{runtime.name} running '{path.name}'",
                relative_atol=True,
            )
        except EdgetrainError as exc:
            error = str(exc)
        del predict  # a runtime may map the file: let go of it before removing it
    if error is not None:
        for f in files:
            f.unlink(missing_ok=True)
        raise EdgetrainError(error)
    return ExportedFile(
        path, format, precision, shape, batch if fixed else None, files, max_abs, max_rel
    )


@EXPORT_FORMATS.register(
    "onnx", suffix=".onnx", runtime="onnxruntime", precisions=PRECISIONS, fixed_batch=False
)
def _onnx(
    model: nn.Module,
    path: Path,
    *,
    shape: tuple[int, ...],
    precision: str,
    opset: int,
    batch: int,
    dynamic_batch: bool,
) -> tuple[Path, ...]:
    """ONNX (ONNX Runtime, OpenVINO and most edge runtimes read it)."""
    if precision == "fp32":
        export_onnx(model, path, shape, opset=opset, batch=batch, dynamic_batch=dynamic_batch)
        return (path,)
    with tempfile.TemporaryDirectory(prefix=f".{path.name}.", dir=path.parent) as tmp:
        fp32 = Path(tmp) / "fp32.onnx"
        export_onnx(model, fp32, shape, opset=opset, batch=batch, dynamic_batch=dynamic_batch)
        data = fp16_onnx_bytes(fp32)
    with atomic_writer(path) as f:
        f.write(data)
    return (path,)


@EXPORT_FORMATS.register(
    "openvino", suffix=".xml", runtime="openvino", precisions=PRECISIONS, fixed_batch=False
)
def _openvino(
    model: nn.Module,
    path: Path,
    *,
    shape: tuple[int, ...],
    precision: str,
    opset: int,
    batch: int,
    dynamic_batch: bool,
) -> tuple[Path, ...]:
    """OpenVINO IR (.xml + .bin), converted from the checked ONNX export."""
    ov = require("openvino", "openvino")
    weights = path.with_suffix(".bin")
    with tempfile.TemporaryDirectory(prefix=f".{path.name}.", dir=path.parent) as tmp:
        onnx_file = Path(tmp) / "model.onnx"
        export_onnx(model, onnx_file, shape, opset=opset, batch=batch, dynamic_batch=dynamic_batch)
        xml = Path(tmp) / "model.xml"
        try:
            ov.save_model(
                ov.convert_model(str(onnx_file)), str(xml), compress_to_fp16=precision == "fp16"
            )
        except Exception as exc:
            raise EdgetrainError(
                f"OpenVINO could not convert {type(model).__name__}: {one_line(exc)}"
            ) from None
        os.replace(xml.with_suffix(".bin"), weights)
        os.replace(xml, path)
    return (path, weights)


@EXPORT_FORMATS.register(
    "executorch", suffix=".pte", runtime="executorch", precisions=("fp32",), fixed_batch=True
)
def _executorch(
    model: nn.Module,
    path: Path,
    *,
    shape: tuple[int, ...],
    precision: str,
    opset: int,
    batch: int,
    dynamic_batch: bool,
) -> tuple[Path, ...]:
    """ExecuTorch program (.pte) with the XNNPACK backend, for one fixed batch."""
    from edgetrain.compress.executorch_runtime import quiet_native

    with quiet_native():
        exir = require("executorch.exir", "executorch", package="executorch")
        xnnpack = require(
            "executorch.backends.xnnpack.partition.xnnpack_partitioner",
            "executorch",
            package="executorch",
        )
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    example = torch.randn(batch, *shape, generator=torch.Generator().manual_seed(0)).to(device)
    try:
        with warnings.catch_warnings():  # the exporters' notices to their developers
            warnings.filterwarnings("ignore", message=".*LeafSpec.*")
            warnings.filterwarnings("ignore", message="read_binary is deprecated")
            program = torch.export.export(model, (example,))
            lowered = exir.to_edge_transform_and_lower(
                program, partitioner=[xnnpack.XnnpackPartitioner()]
            ).to_executorch()
    except Exception as exc:  # export and lowering raise many types
        raise EdgetrainError(
            f"could not export {type(model).__name__} to ExecuTorch: {one_line(exc)}"
        ) from None
    with atomic_writer(path) as f:
        f.write(lowered.buffer)
    return (path,)
