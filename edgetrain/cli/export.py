"""``edgetrain export``: a trained model to a checked ONNX file."""

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
        None, "--out", "-o", help="ONNX file to write (default: model.onnx in the run directory)."
    ),
    opset: int = typer.Option(17, help="ONNX opset version."),
    checkpoint: str = typer.Option("best", help="best or last: which checkpoint of a run."),
    dynamic_batch: bool = typer.Option(
        True, help="Symbolic batch dimension (needed for throughput runs)."
    ),
    atol: float = typer.Option(1e-4, min=0.0, help="Tolerance of the ONNX Runtime check."),
) -> None:
    """Export a trained model to ONNX, check it with onnx.checker and compare ONNX
    Runtime's outputs with PyTorch's on a random batch.

    Example: edgetrain export runs/digits-pretrain --out digits.onnx --opset 17
    """
    from edgetrain.compress.export import export_onnx
    from edgetrain.runs import load_trained_model

    if checkpoint not in ("best", "last"):
        raise ConfigError(f"--checkpoint '{checkpoint}' must be best or last")
    model = load_trained_model(source, prefer=checkpoint)
    if out is None:
        out = source / "model.onnx" if source.is_dir() else source.with_suffix(".onnx")
    writable_folder(out.parent, "the folder of --out")
    result = export_onnx(model, out, opset=opset, dynamic_batch=dynamic_batch, atol=atol)
    shape = "x".join(map(str, result.input_shape))
    batch = "N" if result.dynamic_batch else "1"
    console.print(
        f"wrote {result.path} ({kib(result.file_bytes)} KiB, opset {result.opset}, input "
        f"{batch}x{shape}); ONNX Runtime vs PyTorch: max abs error "
        f"{result.max_abs_error:.2e}, relative {result.max_rel_error:.2e}",
        highlight=False,
        soft_wrap=True,
    )
