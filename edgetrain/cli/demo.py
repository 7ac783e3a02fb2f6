"""``edgetrain demo``: scenario 1 (digits domain shift) end to end in a few minutes."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.table import Table

from edgetrain.cli._common import console, handle_errors
from edgetrain.errors import ConfigError

if TYPE_CHECKING:
    from edgetrain.runs import RunConfig

# Epochs (pretrain, fine-tune, PruneTrain) per size; None keeps the recipe's (full: its
# full: section).
SIZES = {"quick": (2, 2, 2), "default": (None, None, None), "full": (None, None, None)}
# The layer schedule of the demo's scheduled fine-tune (the 5 unfrozen layers, output first).
DEMO_SCHEDULE = "44221"
# PruneTrain runs on a residual net: its group lasso needs the batch-norms of one (on
# vgg_small, which has none, a penalty strong enough to remove channels in a short run
# shrinks every layer at once and training collapses). By default ResNet-8 on 16x16
# digits (about a minute); --size full runs scenario 4, ResNet-20 on 32x32 digits.
DEMO_PRUNE = {
    "quick": "digits16-resnet8-prunetrain",
    "default": "digits16-resnet8-prunetrain",
    "full": "digits-resnet20-prunetrain",
}
# The compression recipe applied to the pretrained model (shipped in recipes/compress).
DEMO_COMPRESS = "vgg-small-l1"


def _compress_step(pre_dir: Path, runs_dir: Path, progress: bool) -> None:
    """Prune, fine-tune, export and quantize the pretrained model; print FP32 vs pruned vs
    pruned int8 (ONNX Runtime accuracy and latency at batch 1, one thread)."""
    from edgetrain.compress import deploy, load_recipe, measure
    from edgetrain.compress import run as compress_run
    from edgetrain.runs import load_trained_run

    run = load_trained_run(pre_dir)
    out = runs_dir / f"{run.config.name}-{DEMO_COMPRESS}"
    result = compress_run(run, DEMO_COMPRESS, out, deploy=True, overwrite=True, progress=progress)
    report = result.report
    test = run.test_data()
    files = deploy(run.model, load_recipe({"version": 1}), out / "baseline", test)
    files += result.files
    measure(files, runs=50, repeats=3, throughput_batch=None)
    macs = [report.macs_before, report.macs_after, report.macs_after]
    params = [report.params_before, report.params_after, report.params_after]
    labels = ["pretrained FP32", "pruned + fine-tuned FP32", f"pruned {files[-1].name}"]
    table = Table(title=f"compression ({DEMO_COMPRESS}): ONNX Runtime, batch 1, one thread")
    for col in ("model", "test top-1 %", "params", "MACs", "file KiB", "latency ms", "rel."):
        table.add_column(col, justify="left" if col == "model" else "right")
    base = files[0].latency_ms or 1.0
    for label, f, p, m in zip(labels, files, params, macs, strict=True):
        table.add_row(
            label,
            f"{f.top1:.2f}",
            f"{p:,}",
            f"{m:,}",
            f"{f.size_bytes / 1024:,.1f}",
            f"{f.latency_ms:.3f}",
            f"{(f.latency_ms or 0) / base:.2f}",
        )
    console.print(table)


def _shifted_accuracy(finetune_cfg: RunConfig) -> float:
    """Accuracy of the pretrained model on the shifted test set, before any fine-tuning."""
    from edgetrain.engine import evaluate
    from edgetrain.runs import build_trainer

    trainer = build_trainer(finetune_cfg, None, progress=False)
    metrics = evaluate(
        trainer.model,
        trainer.val_loader,
        trainer.loss_fn,
        trainer.device,
    )
    return metrics["top1"]


def _relative_ops(finetune_cfg: RunConfig) -> float:
    """Average step MACs of the demo schedule relative to conventional fine-tuning."""
    from edgetrain import models
    from edgetrain.finetune import Schedule, schedule_cost

    model = models.create(finetune_cfg.model.name, **finetune_cfg.model.options)
    shape = tuple(model.input_shape)
    return schedule_cost(model, shape, Schedule.parse(DEMO_SCHEDULE)).relative_ops


def _train_phase(
    phase: str, data: str, config: RunConfig, runs_dir: Path, progress: bool
) -> tuple[str, str, int, int, float, float]:
    """Train one phase and return its table row (phase, data, epochs, params, acc, s)."""
    from edgetrain.report import load_run
    from edgetrain.runs import start_run

    started = time.perf_counter()
    start_run(config, runs_dir, overwrite=True, progress=progress)
    seconds = time.perf_counter() - started
    run = load_run(runs_dir / config.name)
    trainable = run.summary["trainable_params"]
    return (phase, data, config.epochs, trainable, run.metrics[-1]["val_top1"], seconds)


@handle_errors
def demo_command(
    runs_dir: Path = typer.Option(Path("runs/demo"), help="Where the demo's runs are written."),
    size: str = typer.Option(
        "default", help="quick (smoke test), default (a few minutes on 2 cores) or full."
    ),
    progress: bool = typer.Option(True, help="Show progress bars."),
) -> None:
    """Run scenario 1: pretrain vgg_small on digits, fine-tune on rotated+inverted digits,
    conventionally and with a layer schedule; train ResNet-8 on 16x16 digits with
    PruneTrain, which removes channels as it trains (--size full: ResNet-20 on 32x32,
    scenario 4); then compress the pretrained vgg_small (L1 filters, fine-tune, int8) and
    time it on ONNX Runtime.

    Example: edgetrain demo --runs-dir runs/demo
    """
    from edgetrain import data as datasets
    from edgetrain.recipes import RECIPES
    from edgetrain.report import build_report, load_run
    from edgetrain.report.pruning import pruning_rows
    from edgetrain.runs import load_config

    if size not in SIZES:
        raise ConfigError(f"unknown --size '{size}'; choose one of: {', '.join(SIZES)}")
    pre_epochs, ft_epochs, prune_epochs = SIZES[size]
    info = datasets.describe("digits-32")
    console.rule("[bold]edgetrain demo: digits domain shift (scenario 1)")
    console.print(
        f"data: {info.name} {'x'.join(map(str, info.input_shape))}, "
        f"{info.split_sizes['train']} train / {info.split_sizes['test']} test; "
        "target domain: rotated 180 degrees and inverted"
    )
    big = size == "full"
    pre_cfg = load_config(RECIPES.path("digits-pretrain"), full=big, epochs=pre_epochs)
    pre_dir = runs_dir / pre_cfg.name
    ft_cfg = load_config(
        RECIPES.path("digits-finetune"),
        full=big,
        epochs=ft_epochs,
        **{"model.init_from": str(pre_dir)},
    )
    ft_dir = runs_dir / ft_cfg.name
    tree = ft_cfg.to_dict()
    tree["name"] = f"{ft_cfg.name}-{DEMO_SCHEDULE}"
    tree["callbacks"] = [{"name": "layer-schedule", "schedule": DEMO_SCHEDULE}]
    sched_cfg = load_config(tree)
    sched_dir = runs_dir / sched_cfg.name
    rel = _relative_ops(ft_cfg)
    rows = [(*_train_phase("pretrain", "digits", pre_cfg, runs_dir, progress), None)]
    rows.append(("no fine-tune", "shifted", 0, 0, _shifted_accuracy(ft_cfg), 0.0, None))
    rows.append((*_train_phase("fine-tune", "shifted", ft_cfg, runs_dir, progress), 1.0))
    phase = f"schedule {DEMO_SCHEDULE}"
    rows.append((*_train_phase(phase, "shifted", sched_cfg, runs_dir, progress), rel))
    prune_cfg = load_config(RECIPES.path(DEMO_PRUNE[size]), full=big, epochs=prune_epochs)
    prune_dir = runs_dir / prune_cfg.name
    phase = f"prune-train ({prune_cfg.model.name})"
    rows.append((*_train_phase(phase, "digits", prune_cfg, runs_dir, progress), None))

    frozen = ", ".join(ft_cfg.model.freeze)
    table = Table(
        title="scenario 1: digits domain shift",
        caption=f"shifted = rotated 180 degrees and inverted; fine-tune keeps {frozen} frozen",
    )
    columns = (
        "phase",
        "data",
        "epochs",
        "trainable params",
        "test top-1 %",
        "time s",
        "ops/step rel.",
    )
    for col in columns:
        table.add_column(col, justify="left" if col in ("phase", "data") else "right")
    for phase, data, epochs, params, acc, secs, ops in rows:
        table.add_row(
            phase,
            data,
            str(epochs),
            f"{params:,}",
            f"{acc:.2f}",
            f"{secs:.1f}",
            "-" if ops is None else f"{ops:.3f}",
        )
    console.print(table)
    pruned = pruning_rows(load_run(prune_dir))
    if pruned:
        first, last = pruned[0], pruned[-1]
        options = next(c.options for c in prune_cfg.callbacks if c.name == "prunetrain")
        console.print(
            f"PruneTrain on {prune_cfg.model.name} (ratio {options['ratio']}, every "
            f"{options['interval']} epochs): "
            f"inference MACs {first.inference_macs:,} -> {last.inference_macs:,} "
            f"(-{100 * (1 - last.inference_macs / first.inference_macs):.1f}%), params "
            f"{first.params:,} -> {last.params:,}, training MACs "
            f"-{100 * (1 - last.cumulative_ratio):.1f}% vs the unpruned run"
        )
    _compress_step(pre_dir, runs_dir, progress)
    runs = [pre_dir, ft_dir, sched_dir, prune_dir]
    page = build_report(runs, runs_dir / "report.html", title="edgetrain demo: digits domain shift")
    for run in runs:
        build_report([run])
    console.print(f"[green]runs:[/] {', '.join(map(str, runs))}")
    console.print(f"[green]report:[/] {page}")
