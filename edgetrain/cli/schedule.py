"""``edgetrain schedule show|suggest``: a layer schedule's matrix and cost, and schedules
that fit compute and memory budgets."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.table import Table

from edgetrain.cli._common import console, handle_errors, kib, parse_options
from edgetrain.errors import ConfigError, EdgetrainError

if TYPE_CHECKING:
    from edgetrain.finetune import Schedule, ScheduleCost

app = typer.Typer(
    help="Show a layer schedule's matrix and per-step cost, or suggest schedules for budgets.",
    epilog="Example: edgetrain schedule show 4422_m --model vgg_small --input 3x32x32",
    no_args_is_help=True,
    add_completion=False,
)

MODEL_HELP = "Zoo model name, path/to/file.py:fn or module:fn."
INPUT_HELP = "One sample's shape, e.g. 3x32x32 (default: the model's)."


def _model_and_shape(model: str, input_shape: str | None, option: list[str] | None):
    from edgetrain import models as zoo
    from edgetrain.cli.cost import parse_shape

    net = zoo.create(model, device="meta", **parse_options(option))
    shape = parse_shape(input_shape) if input_shape else tuple(getattr(net, "input_shape", ()))
    if not shape:
        raise ConfigError(f"model '{model}' has no default input shape; pass --input")
    return net, shape


SCHEDULE_HELP = (
    "Schedule notation (4421, 4422_m, 4421_rdo), an explicit matrix with rows output "
    "layer first separated by '/' (1111/1010/0101; per-step rates as 1,0.5,1,0.5), or a "
    "file holding the rows (one per line, or a YAML list)."
)


def parse_schedule(text: str) -> Schedule:
    """A schedule from the command line: notation, matrix rows, or a file of rows.

    Raises:
        ConfigError: one line naming what is wrong.
    """
    from edgetrain.finetune import Schedule

    source = Path(text)
    if source.is_file():
        text = _matrix_file(source)
    try:
        return Schedule.parse(text)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _matrix_file(path: Path) -> str:
    """The rows of a matrix file, written as ``row/row/...``: one row per line (``#``
    comments allowed), or a YAML list of quoted bit strings or of rate lists."""
    import yaml

    try:
        content = path.read_text()
    except OSError as exc:
        raise ConfigError(f"schedule file '{path}' cannot be read: {exc.strerror}") from None
    lines = [ln.split("#", 1)[0].strip() for ln in content.splitlines()]
    lines = [ln for ln in lines if ln]
    if lines and all(re.fullmatch(r"[01]+|[0-9.]+(\s*,\s*[0-9.]+)*", ln) for ln in lines):
        return "/".join(ln.replace(" ", "") for ln in lines)
    try:
        rows = yaml.safe_load(content)
    except yaml.YAMLError as exc:
        raise ConfigError(f"schedule file '{path}' is not YAML: {exc}") from None
    if not isinstance(rows, list) or not rows:
        raise ConfigError(
            f"schedule file '{path}' must hold the matrix rows, output layer first: one per "
            "line (1111), or a YAML list (['1111', '1010'] or [[1, 0.5], [0, 1]])"
        )
    written = []
    for row in rows:
        if isinstance(row, str):
            written.append(row)
        elif isinstance(row, list) and all(isinstance(c, int | float) for c in row):
            written.append(",".join(f"{c:g}" for c in row))
        else:
            raise ConfigError(
                f"schedule file '{path}': row {row!r} must be a quoted bit string ('0101': "
                "YAML reads 0101 as a number) or a list of rates"
            )
    return "/".join(written)


_parse = parse_schedule


MEMORY = ("allocator", "tensors", "layerwise")  # edgetrain.cost.analysis.MEMORY_METHODS


def _check_memory(memory: str) -> None:
    if memory not in MEMORY:
        raise ConfigError(f"unknown --memory '{memory}'; choose one of: {', '.join(MEMORY)}")


@app.command("show")
@handle_errors
def show_command(
    schedule: str = typer.Argument(..., help=SCHEDULE_HELP),
    model: str = typer.Option(..., help=MODEL_HELP),
    input_shape: str = typer.Option(None, "--input", help=INPUT_HELP),
    profile: str = typer.Option("reference", help="Cost-model profile name or file."),
    batch_size: int = typer.Option(1, min=1, help="Batch size of a step."),
    option: list[str] = typer.Option(None, "--option", "-o", help="Model option key=value."),
    memory: str = typer.Option(
        "allocator",
        help="Step memory: 'allocator' (every tensor of a PyTorch step) or 'layerwise' "
        "(updates applied as each gradient appears, as on-device training code does).",
    ),
) -> None:
    """Print a schedule's matrix and the cost of each step of its cycle.

    Example: edgetrain schedule show 4422_m --model vgg_small --input 3x32x32

    Example: edgetrain schedule show 1111/1111/1010/0101 --model vgg_small
    """
    from edgetrain.finetune import optimise_placement, schedule_cost, schedule_layers

    _check_memory(memory)
    net, shape = _model_and_shape(model, input_shape, option)
    parsed = _parse(schedule)
    try:
        layers = schedule_layers(net, parsed)
    except ValueError as exc:
        raise EdgetrainError(str(exc)) from None
    if parsed.memory_optimised:
        parsed = optimise_placement(
            parsed, net, shape, profile=profile, batch_size=batch_size, memory=memory
        )
    cost = schedule_cost(net, shape, parsed, profile=profile, batch_size=batch_size, memory=memory)
    matrix = Table(title=f"schedule {parsed} ({parsed.mode}, T={parsed.cycle_length})")
    matrix.add_column("layer")
    for t in range(parsed.cycle_length):
        matrix.add_column(f"t{t}", justify="center")
    matrix.add_column("rate", justify="right")
    matrix.add_column("mean rate", justify="right")
    for name, row, rate, mean in zip(
        layers, parsed.matrix, parsed.rates, parsed.mean_rates, strict=True
    ):
        cells = ["-" if c == 0 else f"{c:g}" for c in row]
        matrix.add_row(name, *cells, f"{rate:g}", f"{mean:.3g}")
    console.print(matrix)
    console.print(_cost_table(cost, layers, profile))


def _cost_table(cost: ScheduleCost, layers: list[str], profile: str) -> Table:
    """Per step: MACs, memory and, with a profile that knows the target's speed, the
    estimated time (fixed per-step and per-call costs included) relative to conventional."""
    conv = cost.conventional
    timed = conv.estimated_seconds is not None
    title = "per step (MACs; memory in KiB, naive / with reuse"
    title += f"; time from profile {profile})" if timed else ")"
    table = Table(title=title)
    header = ["step", "trained layers", "ops", "rel. ops", "peak mem", "reuse", "rel. mem"]
    header += ["est. ms", "rel. time"] if timed else []
    for h in header:
        table.add_column(h, justify="left" if h in ("step", "trained layers") else "right")

    def time_cells(seconds: float | None) -> list[str]:
        if not timed:
            return []
        if seconds is None:
            return ["", ""]
        return [f"{seconds * 1e3:.3f}", f"{seconds / conv.estimated_seconds:.3f}"]

    for t, step in enumerate(cost.steps):
        active = [n for n, on in zip(layers, cost.schedule.active(t), strict=True) if on]
        table.add_row(
            str(t),
            ",".join(active),
            f"{step.step_macs:,}",
            f"{step.step_macs / conv.step_macs:.3f}",
            kib(step.memory_bytes),
            kib(step.memory_reuse_bytes),
            f"{step.memory_bytes / conv.memory_bytes:.3f}",
            *time_cells(step.estimated_seconds),
        )
    seconds = [s.estimated_seconds or 0.0 for s in cost.steps]
    table.add_row(
        "average",
        "",
        f"{cost.average_step_macs:,.0f}",
        f"{cost.relative_ops:.3f}",
        "",
        "",
        "",
        *time_cells(sum(seconds) / len(seconds) if timed else None),
        style="bold",
    )
    table.add_row(
        "peak",
        "",
        f"{cost.peak_step_macs:,}",
        f"{cost.peak_step_macs / conv.step_macs:.3f}",
        kib(cost.peak_memory_bytes),
        kib(cost.peak_memory_reuse_bytes),
        f"{cost.relative_peak_memory:.3f}",
        *time_cells(max(seconds) if timed else None),
        style="bold",
    )
    table.add_row(
        "conventional",
        "every trained row",
        f"{conv.step_macs:,}",
        "1.000",
        kib(conv.memory_bytes),
        kib(conv.memory_reuse_bytes),
        "1.000",
        *time_cells(conv.estimated_seconds),
        style="dim",
    )
    return table


@app.command("suggest")
@handle_errors
def suggest_command(
    model: str = typer.Option(..., help=MODEL_HELP),
    input_shape: str = typer.Option(None, "--input", help=INPUT_HELP),
    max_ops_per_step: float = typer.Option(None, help="Budget: MACs of the costliest step."),
    max_peak_mem: float = typer.Option(None, help="Budget: peak memory of a step in bytes."),
    cycle: int = typer.Option(4, min=1, max=35, help="Cycle length T."),
    max_rows: int = typer.Option(None, min=1, help="Train at most this many last layers."),
    profile: str = typer.Option(
        "reference",
        "--profile",
        "--device",
        help="Cost-model profile name or file; a device profile with SRAM and flash sizes "
        "(stm32f303k8, stm32f746) makes its memory the budget of every step.",
    ),
    top: int = typer.Option(10, min=1, help="How many schedules to list."),
    option: list[str] = typer.Option(None, "--option", "-o", help="Model option key=value."),
    memory: str = typer.Option(
        None,
        help="Step memory: 'allocator' (every tensor of a PyTorch step; the default), "
        "'tensors' (without PyTorch's kernel scratch; the default with a device that has "
        "memory sizes) or 'layerwise' (updates applied as each gradient appears, as "
        "on-device training code does).",
    ),
) -> None:
    """Propose schedules that fit the budgets, ranked by layer updates per step.

    Example: edgetrain schedule suggest --model vgg_small --max-ops-per-step 15e6 \
    --max-peak-mem 1.26e6

    Example: edgetrain schedule suggest --model ds_cnn --device stm32f746
    """
    from edgetrain.cost import load_profile, step_fit
    from edgetrain.finetune import suggest_schedules

    for flag, budget in (
        ("--max-ops-per-step", max_ops_per_step),
        ("--max-peak-mem", max_peak_mem),
    ):
        if budget is not None and not budget > 0:  # also NaN
            raise ConfigError(f"{flag} {budget:g} must be a positive budget")
    device = load_profile(profile)
    sized = device.sram_bytes is not None or device.flash_bytes is not None
    memory = memory or ("tensors" if sized else "allocator")
    _check_memory(memory)
    net, shape = _model_and_shape(model, input_shape, option)
    found = suggest_schedules(
        net,
        shape,
        max_ops_per_step,
        max_peak_mem,
        cycle,
        max_rows,
        profile=device,
        top=top,
        memory=memory,
    )
    if not found:
        where = f" and the memory of {device.name}" if sized else ""
        raise EdgetrainError(
            f"no schedule fits these budgets{where}; raise --max-ops-per-step / "
            "--max-peak-mem" + (", or pick a larger device" if sized else "")
        )
    title = f"schedules for {model} that fit the budgets"
    table = Table(title=title + (f" and {device.name}" if sized else ""))
    header = ["schedule", "matrix", "mean rate", "rel. ops", "peak ops", "peak mem KiB"]
    header += ["rel. mem"] + (["SRAM KiB", "SRAM left"] if sized else [])
    for h in header:
        table.add_column(h, justify="left" if h in ("schedule", "matrix") else "right")
    for c in found:
        s = c.schedule
        mean = sum(s.mean_rates) / s.rows
        row = [
            str(s),
            "/".join(s.bits()),
            f"{mean:.3f}",
            f"{c.relative_ops:.3f}",
            f"{c.peak_step_macs:,}",
            kib(c.peak_memory_reuse_bytes),
            f"{c.relative_peak_memory_reuse:.3f}",
        ]
        if sized:
            worst = max((step_fit(st, device) for st in c.steps), key=lambda f: f.sram_needed)
            row += [
                kib(worst.sram_needed),
                "-" if worst.sram_margin is None else kib(worst.sram_margin),
            ]
        table.add_row(*row)
    console.print(table)
