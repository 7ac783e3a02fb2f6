"""``edgetrain models``: list the model zoo."""

from __future__ import annotations

import typer
from rich.table import Table

from edgetrain.cli._common import console, handle_errors
from edgetrain.errors import ConfigError


@handle_errors
def models_command(
    pattern: str = typer.Argument("*", help="Shell pattern on model names, e.g. 'resnet*'."),
) -> None:
    """List the model zoo with parameters, forward MACs (batch 1) and input shapes.

    Example: edgetrain models 'resnet*'
    """
    from edgetrain import models as zoo
    from edgetrain.cost import analyze

    if not zoo.list_models(pattern):
        raise ConfigError(
            f"no model matches '{pattern}'; models: {', '.join(zoo.list_models('*'))}"
        )
    table = Table(title="edgetrain model zoo")
    for col, justify in (
        ("name", "left"),
        ("params", "right"),
        ("forward MACs", "right"),
        ("input", "left"),
        ("layers", "right"),
        ("description", "left"),
    ):
        table.add_column(col, justify=justify)
    for entry in zoo.MODELS:
        if entry.name not in zoo.list_models(pattern):
            continue
        model = zoo.create(entry.name, device="meta")
        params = sum(p.numel() for p in model.parameters())
        shape = "x".join(map(str, getattr(model, "input_shape", ())))
        layers = len(zoo.parameter_layers(model))
        macs = analyze(model, model.input_shape, memory="layerwise").total().forward_macs
        table.add_row(entry.name, f"{params:,}", f"{macs:,}", shape, str(layers), entry.summary)
    console.print(table)
