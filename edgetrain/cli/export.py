"""``edgetrain export``: a trained model to a file a runtime reads, checked on it."""

from __future__ import annotations

from pathlib import Path

import typer

from edgetrain._atomic import writable_folder
from edgetrain.cli._common import console, handle_errors, kib
from edgetrain.errors import ConfigError

__all__ = ["export_command"]


@handle_errors
def export_command(
    source: Path = typer.Argument(..., help="Run directory or checkpoint file of a trained model."),
    out: Path = typer.Option(
        None,
        "--out",
        "-o",
        help="File to write (default: model.onnx, model.xml or model.pte beside the source).",
    ),
    format: str = typer.Option(
        "onnx",
        "--format",
        "-f",
        help="onnx (ONNX Runtime, OpenVINO), openvino (IR .xml + .bin) or executorch (.pte).",
    ),
    precision: str = typer.Option(
        "fp32", help="fp32 or fp16 (onnx: float16 inside, float32 inputs; openvino: fp16 weights)."
    ),
    opset: int = typer.Option(17, help="ONNX opset version (onnx and openvino)."),
    checkpoint: str = typer.Option("best", help="best or last: which checkpoint of a run."),
    dynamic_batch: bool = typer.Option(
        True, help="Symbolic batch dimension (needed for throughput runs; not executorch)."
    ),
    batch: int = typer.Option(
        1, min=1, help="Example batch; the batch of an executorch program or a fixed-batch file."
    ),
    atol: float = typer.Option(
        None,
        min=0.0,
        help="Allowed difference from PyTorch, a fraction of the largest output "
        "(default 1e-4; fp16 1e-2).",
    ),
) -> None:
    """Export a trained model for a runtime and check it there: the written file runs
    on its runtime (ONNX Runtime, OpenVINO, ExecuTorch) on a random batch and must
    match PyTorch's outputs (fp32: 1e-4 + 1e-3 relative; fp16: 1 % of the output scale).

    Example: edgetrain export runs/digits-pretrain --format openvino --precision fp16
    """
    from edgetrain.compress.formats import EXPORT_FORMATS, export_model
    from edgetrain.runs import load_trained_model

    if checkpoint not in ("best", "last"):
        raise ConfigError(f"--checkpoint '{checkpoint}' must be best or last")
    entry = EXPORT_FORMATS.entry(format)  # an unknown format lists the choices
    if precision not in entry.meta["precisions"]:
        raise ConfigError(
            f"--precision '{precision}' is not one that --format {format} writes; choose "
            f"{' or '.join(entry.meta['precisions'])}"
        )
    if out is None:
        stem = source / "model" if source.is_dir() else source.with_suffix("")
        tag = "" if precision == "fp32" else f".{precision}"
        out = stem.with_name(stem.name + tag + entry.meta["suffix"])
    writable_folder(out.parent, "the folder of --out")
    model = load_trained_model(source, prefer=checkpoint)
    result = export_model(
        model,
        out,
        format,
        precision,
        opset=opset,
        batch=batch,
        dynamic_batch=dynamic_batch,
        atol=atol,
    )
    shape = "x".join(map(str, result.input_shape))
    first = "N" if result.batch is None else str(result.batch)
    written = " + ".join(p.name for p in result.files)
    what = f"{format} {precision}" + ("" if format == "executorch" else f", opset {opset}")
    console.print(
        f"wrote {written} ({kib(result.file_bytes)} KiB, {what}, input "
        f"{first}x{shape}); {entry.meta['runtime']} vs PyTorch: max abs error "
        f"{result.max_abs_error:.2e}, relative {result.max_rel_error:.2e}",
        highlight=False,
        soft_wrap=True,
    )
