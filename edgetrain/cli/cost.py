"""``edgetrain cost``: what inference and training steps of a model cost on a target."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.table import Table

from edgetrain._atomic import writable_folder
from edgetrain.cli._common import (
    console,
    default_command_group,
    err_console,
    handle_errors,
    kib,
    parse_options,
)
from edgetrain.errors import ConfigError

if TYPE_CHECKING:
    from edgetrain.cost.report import CostReport, StepCost

# What the options' help shows, without importing the library (the help starts at once);
# a test keeps it equal to the library's.
ALL = "all"  # edgetrain.cost.ALL: every layer trains

# ``edgetrain cost MODEL ...`` runs ``analyze``; ``edgetrain cost calibrate`` calibrates.
app = typer.Typer(
    cls=default_command_group("analyze"),
    help="What inference and training steps cost: MACs, memory, energy (and calibration). "
    "'edgetrain cost MODEL ...' is short for 'edgetrain cost analyze MODEL ...'.",
    epilog="Example: edgetrain cost vgg_small --input 3x32x32 --trainable last:2",
    no_args_is_help=True,
    add_completion=False,
)

FORMATS = ("table", "json", "csv")
MEMORY = ("allocator", "tensors", "layerwise")  # edgetrain.cost.analysis.MEMORY_METHODS
MACS = ("border", "dense")  # edgetrain.cost.analysis.MAC_CONVENTIONS


def parse_shape(text: str) -> tuple[int, ...]:
    """``"3x32x32"`` -> ``(3, 32, 32)``."""
    try:
        shape = tuple(int(p) for p in text.lower().split("x"))
    except ValueError:
        shape = ()
    if not shape or min(shape) < 1:
        raise ConfigError(f"--input '{text}' must look like 3x32x32 (positive integers)")
    return shape


def _m(value: float) -> str:
    return f"{value / 1e6:,.3f}"


def _layer_table(report: CostReport) -> Table:
    rows = report.by_layer()
    title = f"per layer (MACs, batch {report.batch_size}; step plan: {report.steps()[0].plan})"
    table = Table(title=title)
    header = [
        "layer",
        "kind",
        "in -> out",
        "params",
        "forward",
        "input grad",
        "weight grad",
        "update",
        "stored act.",
        "grad buffers",
    ]
    for h in header:
        table.add_column(h, justify="left" if h in ("layer", "kind", "in -> out") else "right")
    for r in rows:
        shapes = f"{'x'.join(map(str, r.in_shape[1:]))} -> {'x'.join(map(str, r.out_shape[1:]))}"
        name = f"[bold]{r.name}[/]" if r.trained else r.name
        table.add_row(
            name,
            r.kind,
            shapes,
            f"{r.params:,}",
            f"{r.forward:,}",
            f"{r.input_grad:,}",
            f"{r.weight_grad:,}",
            f"{r.update:,}",
            f"{r.stored_activations:,}",
            f"{r.gradient_buffers:,}",
        )
    return table


def _step_row(step: StepCost, ref: StepCost) -> list[str]:
    seconds = "-" if step.estimated_seconds is None else f"{step.estimated_seconds * 1e3:,.3f}"
    return [
        step.plan,
        _m(step.forward_macs),
        _m(step.backward_macs),
        _m(step.step_macs),
        f"{step.step_macs / max(ref.step_macs, 1):.3f}",
        kib(step.memory_bytes),
        kib(step.memory_reuse_bytes),
        f"{step.memory_bytes / max(ref.memory_bytes, 1):.3f}",
        f"{step.energy_nj_per_sample:,.0f}",
        seconds,
    ]


def _steps_table(report: CostReport) -> Table:
    table = Table(title=f"per step (profile {report.profile.name}, optimizer {report.optimizer})")
    header = [
        "plan",
        "forward M",
        "backward M",
        "step M",
        "rel.",
        "memory KiB",
        "reuse KiB",
        "rel. mem",
        "nJ/sample",
        "est. ms",
    ]
    for h in header:
        table.add_column(h, justify="left" if h == "plan" else "right")
    conv = report.conventional
    table.add_row(*_step_row(report.total(), conv), style="dim")
    for step in report.steps():
        table.add_row(*_step_row(step, conv))
    if len(report.steps()) > 1:
        cycle = report.cycle()
        table.add_row(
            "average",
            "",
            "",
            _m(cycle.average_step_macs),
            f"{cycle.relative_average_macs:.3f}",
            "",
            "",
            "",
            "",
            "",
            style="bold",
        )
        table.add_row(
            "peak",
            "",
            "",
            _m(cycle.peak_step_macs),
            f"{cycle.relative_peak_macs:.3f}",
            kib(cycle.peak_memory_bytes),
            kib(cycle.peak_memory_reuse_bytes),
            f"{cycle.relative_peak_memory:.3f}",
            "",
            "",
            style="bold",
        )
    if all(s.plan != ALL for s in report.steps()):
        table.add_row(*_step_row(conv, conv), style="dim")
    return table


@app.command("analyze")
@handle_errors
def analyze_command(
    model: str = typer.Argument(
        ..., help="Zoo model name (edgetrain models), path/to/file.py:fn or module:fn."
    ),
    input_shape: str = typer.Option(
        None, "--input", help="One sample's shape, e.g. 3x32x32 (default: the model's)."
    ),
    trainable: str = typer.Option(
        None, help="Plan shorthand: 'all', 'last:N' or 'first:N' (N weight layers)."
    ),
    plan: list[str] = typer.Option(
        None,
        "--plan",
        "-p",
        help="Layers updated in one step, comma-separated (repeat for a cycle of steps).",
    ),
    profile: str = typer.Option(
        "reference",
        "--profile",
        "--device",
        help="Built-in profile name or profile file. A device profile with SRAM and flash "
        "sizes (stm32f303k8, stm32f746) also says whether inference and each step fit.",
    ),
    optimizer: str = typer.Option("sgd", help="Optimizer state to count: sgd, momentum, adam."),
    batch_size: int = typer.Option(1, min=1, help="Batch size of the step."),
    option: list[str] = typer.Option(
        None, "--option", "-o", help="Model option key=value, e.g. -o num_classes=100."
    ),
    fmt: str = typer.Option("table", "--format", help="table, json or csv."),
    strict: bool = typer.Option(False, help="Fail on ops the cost model does not cover."),
    memory: str = typer.Option(
        None,
        help="Step memory: 'allocator' (every tensor of the step followed on fake tensors, "
        "PyTorch's kernel scratch included: as measured on this host; the default), "
        "'tensors' (the same without kernel scratch: a microcontroller runtime; the "
        "default with a device that has SRAM and flash sizes) or 'layerwise' (the "
        "spec's per-layer formula).",
    ),
    plot: Path = typer.Option(
        None, help="Write the memory timeline of each step (PNG) to this file."
    ),
    macs: str = typer.Option(
        "border",
        help="MAC convention: 'border' (kernel taps inside the input; activations, pooling, "
        "norms counted) or 'dense' (conv/linear products, every tap: fvcore's, "
        "FlopCounterMode's count).",
    ),
) -> None:
    """Per-layer MACs (forward and backward), memory and energy of a model, and whether
    it fits a device's SRAM and flash.

    Example: edgetrain cost vgg_small --input 3x32x32 --plan conv5,conv6,fc --plan fc

    Example: edgetrain cost ds_cnn --device stm32f746 --trainable last:2
    """
    from edgetrain import models as zoo
    from edgetrain.cost import analyze, load_profile, memory_fit

    if fmt not in FORMATS:
        raise ConfigError(f"unknown --format '{fmt}'; choose one of: {', '.join(FORMATS)}")
    if trainable and plan:
        raise ConfigError("give either --trainable or --plan, not both")
    if memory is not None and memory not in MEMORY:
        raise ConfigError(f"unknown --memory '{memory}'; choose one of: {', '.join(MEMORY)}")
    device = load_profile(profile)
    has_memory = device.sram_bytes is not None or device.flash_bytes is not None
    memory = memory or ("tensors" if has_memory else "allocator")
    if macs not in MACS:
        raise ConfigError(f"unknown --macs '{macs}'; choose one of: {', '.join(MACS)}")
    if plot is not None:
        writable_folder(plot.parent, f"the folder of --plot '{plot}'")
    net = zoo.create(model, device="meta", **parse_options(option))
    shape = parse_shape(input_shape) if input_shape else tuple(getattr(net, "input_shape", ()))
    if not shape:
        raise ConfigError(f"model '{model}' has no default input shape; pass --input")
    plans = [trainable] if trainable else list(plan or []) or None
    report = analyze(
        net,
        shape,
        plans=plans,
        profile=device,
        optimizer=optimizer,
        batch_size=batch_size,
        strict=strict,
        memory=memory,
        macs=macs,
    )
    if plot is not None:
        _plot_timelines(report, net, shape, plans, device, plot)
    fits = memory_fit(report) if has_memory else []
    if fmt == "json":
        if not fits:
            typer.echo(report.to_json())
            return
        import json

        data = json.loads(report.to_json())
        data["fit"] = [f.to_dict() for f in fits]
        typer.echo(json.dumps(data, indent=2))
        return
    if fmt == "csv":
        typer.echo(report.to_csv(), nl=False)
        return
    console.print(_layer_table(report))
    console.print(_steps_table(report))
    console.print(report.summary(), highlight=False)
    if fits:
        console.print(_fit_table(fits, memory))


def _fit_table(fits: list, memory: str) -> Table:
    """Needed vs available SRAM and flash per step, with the margins."""
    first = fits[0]
    table = Table(
        title=f"fit on {first.device} (weights in flash unless trained; memory: {memory})"
    )
    for h in ("step", "SRAM KiB", "of", "margin", "flash KiB", "of", "margin", "fits"):
        table.add_column(h, justify="left" if h == "step" else "right")

    def cells(need: int, have: int | None, margin: int | None) -> list[str]:
        if have is None:
            return [kib(need), "-", "-"]
        style = "green" if margin is not None and margin >= 0 else "red"
        return [kib(need), kib(have), f"[{style}]{(margin or 0) / 1024:+,.1f}[/]"]

    for f in fits:
        table.add_row(
            f.what,
            *cells(f.sram_needed, f.sram_bytes, f.sram_margin),
            *cells(f.flash_needed, f.flash_bytes, f.flash_margin),
            "[green]yes[/]" if f.fits else "[red]no[/]",
        )
    return table


def _plot_timelines(
    report: CostReport,
    net: object,
    shape: tuple[int, ...],
    plans: list | None,
    profile: object,
    path: Path,
) -> None:
    from edgetrain.cost import resolve_plan
    from edgetrain.cost.memory import simulate_step
    from edgetrain.report.memory import plot_memory_timeline

    timelines = {}
    for label in [ALL, *(p for p in plans or [] if p != ALL)]:
        trainable = resolve_plan(net, label, report.layer_order)  # type: ignore[arg-type]
        timelines[label] = simulate_step(
            net,  # type: ignore[arg-type]
            shape,
            report.batch_size,
            trainable,
            report.optimizer,
            profile.bytes_per_element,  # type: ignore[attr-defined]
            timeline=True,
        )
    title = f"{report.model}, batch {report.batch_size}: memory over one training step"
    plot_memory_timeline(timelines, path, title)
    err_console.print(f"memory timeline: {path}")  # stdout stays the table or the JSON


@app.command("calibrate")
@handle_errors
def calibrate_command(
    out: Path = typer.Option(Path("host-cpu.yaml"), help="Profile file to write."),
    name: str = typer.Option("host-cpu", help="Profile name."),
    quick: bool = typer.Option(
        False, help="Fewer layer sizes, timed once (seconds instead of about half a minute)."
    ),
    rounds: int = typer.Option(
        None,
        min=1,
        help="Time every configuration this many times, in turn, and fit the medians "
        "(default 3; 1 with --quick).",
    ),
    model: str = typer.Option(
        None,
        help="Fit the profile to measured training steps of this model (zoo name or "
        "file.py:fn): it then predicts that model's whole step, fixed costs included, "
        "and how much of it a frozen layer saves.",
    ),
    input_shape: str = typer.Option(
        None, "--input", help="The model's sample shape, e.g. 1x32x32 (default: the model's)."
    ),
    trainable: str = typer.Option(
        ALL, help="The anchoring step's plan: 'all' or 'last:N' (the layers you fine-tune)."
    ),
    batch_size: int = typer.Option(1, min=1, help="Batch size of the anchoring step."),
    anchor: str = typer.Option(
        "layers",
        help="How the model's steps anchor the profile: 'layers' (time the steps that "
        "train the plan's last 1..N layers, each alone and all but each, and fit what "
        "each saves with factors for the backward of activations and pooling and for "
        "each layer's input and weight gradient, plus a per-step offset), 'scale' (the last 1..N "
        "layers' steps, one factor on every layer term) or 'offset' (time the plan's "
        "step; the difference is a fixed cost per step).",
    ),
    option: list[str] = typer.Option(
        None, "--option", "-o", help="Model option key=value, e.g. -o num_classes=100."
    ),
) -> None:
    """Time forward, input-gradient, weight-gradient and update of each layer kind on
    this machine and fit a device profile.

    Example: edgetrain cost calibrate --out host-cpu.yaml --model kws_cnn --trainable last:4
    """
    from edgetrain import models as zoo
    from edgetrain.cost import analyze
    from edgetrain.cost.calibrate import ANCHORS, anchor_profile, calibrate

    if anchor not in ANCHORS:
        raise ConfigError(f"--anchor '{anchor}': choose one of {', '.join(ANCHORS)}")
    if model is None and (
        input_shape or option or trainable != ALL or batch_size != 1 or anchor != "layers"
    ):
        raise ConfigError("--input, --trainable, --batch-size, --anchor and --option need --model")
    net = zoo.create(model, **parse_options(option)) if model else None
    shape = ()
    if net is not None:
        shape = parse_shape(input_shape) if input_shape else tuple(getattr(net, "input_shape", ()))
        if not shape:
            raise ConfigError(f"model '{model}' has no default input shape; pass --input")
        analyze(net, shape, plans=[trainable], batch_size=batch_size)  # a bad plan fails now
    writable_folder(out.parent, "the folder of --out")  # before minutes of timing
    with console.status("timing layer kinds on this machine ..."):
        fitted = calibrate(quick=quick, name=name, rounds=rounds)
    if net is not None:
        calibrated = fitted
        with console.status(f"timing {model} training steps ..."):
            fitted = anchor_profile(fitted, net, shape, trainable, batch_size, anchor=anchor)
        pairs = [("forward", "conv"), ("input_grad", "conv"), ("weight_grad", "conv")]
        pairs += [("input_grad", "linear"), ("weight_grad", "linear")]
        factors = ", ".join(
            f"{kind} {term} x{fitted.multiplier(term, kind) / before:.3f}"
            for term, kind in pairs
            if (before := calibrated.multiplier(term, kind)) > 0
        )
        per_layer = ", ".join(
            f"{name} {term} x{factor:.3f}"
            for name, row in fitted.layer_factors.items()
            for term, factor in row.items()
            if term != "update"
        )
        console.print(
            f"anchored on {model} ({trainable}, batch {batch_size}): per-step offset "
            f"{calibrated.offset_per_step:,.0f} -> {fitted.offset_per_step:,.0f} "
            f"MAC-equivalents; layer terms {factors}"
            + (f"; per layer, on top: {per_layer}" if per_layer else "")
        )
    fitted.save(out)
    table = Table(title=f"profile {fitted.name}: multipliers relative to a forward conv MAC")
    table.add_column("term")
    kinds = sorted({k for t in fitted.multipliers.values() for k in t if k != "default"})
    for k in kinds:
        table.add_column(k, justify="right")
    for term, values in fitted.multipliers.items():
        table.add_row(term, *[f"{values[k]:.3g}" if k in values else "-" for k in kinds])
    console.print(table)
    if fitted.per_param:
        costs = ", ".join(
            f"{term} {kind} {value:.3g}"
            for term, values in fitted.per_param.items()
            for kind, value in values.items()
        )
        console.print(f"per-parameter costs (MAC-equivalents per weight touched): {costs}")
    rate = fitted.peak_macs_per_s or 0
    console.print(
        f"forward conv rate {rate / 1e9:.2f} GMAC/s; per-step offset "
        f"{fitted.offset_per_step:,.0f} MAC-equivalents"
    )
    console.print(f"[green]profile:[/] {out}   use it with --profile {out}")
