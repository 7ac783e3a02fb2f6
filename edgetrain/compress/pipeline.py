"""The compression pipeline: prune a trained run with a recipe, evaluate, fine-tune,
export, quantize, evaluate the files on the runtime and benchmark them.

:class:`Compression` holds one candidate through its stages, so a caller can stop
between them (the sweep reuses an earlier trial once the pruned architecture is known);
:func:`run` goes through all of them and writes the output folder the way
``edgetrain compress`` does. The CLI, the demo and the sweep objective all come here.

Example:
    >>> from edgetrain import compress
    >>> from edgetrain.runs import load_trained_run
    >>> result = compress.run(load_trained_run("runs/digits-resnet20"), "resnet20-l1",
    ...                       "runs/digits-resnet20-l1")  # doctest: +SKIP
    >>> result.report.macs_ratio, [f.top1 for f in result.files]  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import json
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from torch import nn

from edgetrain._atomic import writable_folder
from edgetrain.compress.apply import CompressReport, apply
from edgetrain.compress.deploy import DeployedFile, deploy, measure
from edgetrain.compress.finetune import (
    COMPRESSED_CHECKPOINT,
    FinetuneResult,
    finetune,
    save_compressed,
)
from edgetrain.compress.recipe import Recipe, load_recipe
from edgetrain.compress.source import evaluate_model
from edgetrain.engine.callback import Callback
from edgetrain.engine.rundir import atomic_write_text
from edgetrain.errors import ConfigError
from edgetrain.runs import TrainedRun
from edgetrain.runs.reopen import COMPRESSION_RECIPE, COMPRESSION_REPORT

__all__ = ["REPORT_FILE", "Compression", "CompressionResult", "prepare_out", "run"]

# Written last into the output folder: its presence says the compression finished.
REPORT_FILE = COMPRESSION_REPORT


class Compression:
    """One recipe applied to one trained run, carried through the pipeline's stages.

    Building it prunes a copy of the trained model (the recipe is checked against the
    model first, so bad input fails before anything is written).

    Attributes:
        source: the trained run.
        recipe: the validated recipe.
        model: the current model: pruned, then fine-tuned.
        report: what pruning removed, with accuracies once evaluated.
    """

    def __init__(self, source: TrainedRun, recipe: Recipe | str | Path | dict[str, Any]) -> None:
        self.source = source
        self.recipe = load_recipe(recipe)
        self.model, self.report = apply(copy.deepcopy(source.model), self.recipe)
        self.tuned: FinetuneResult | None = None
        self.files: list[DeployedFile] = []
        self.before: dict[str, float] | None = None
        self.after: dict[str, float] | None = None

    def evaluate(self, *, source: bool = True) -> dict[str, float]:
        """Test metrics of the pruned model (and of the source model, for the drop);
        marks the report ruined when the pruned model is at chance level."""
        test = self.source.test_data()
        if source:
            self.before = evaluate_model(self.source.model, test)
            self.report.top1_before = self.before["top1"]
        self.after = evaluate_model(self.model, test)
        self.report.mark_ruined(self.after["top1"], test.info.num_classes)
        return self.after

    def finetune(
        self,
        run_dir: str | Path | None = None,
        progress: bool = False,
        callbacks: Sequence[Callback] = (),
    ) -> bool:
        """Fine-tune as the recipe's ``finetune`` section says (a run directory in
        ``run_dir``, resumable with ``edgetrain train --resume``; None: in memory);
        ``callbacks`` join the fine-tuning Trainer's (a sweep's trial reporter).

        Returns:
            Whether anything was trained (False without a section or with 0 epochs).
        """
        settings = self.recipe.finetune
        if settings is None or settings.epochs < 1:
            return False
        self.tuned = finetune(
            self.model,
            settings,
            self.source.config,
            architecture=self.source.architecture,
            run_dir=run_dir,
            name=None if run_dir is None else Path(run_dir).name,
            progress=progress,
            callbacks=callbacks,
        )
        self.model = self.tuned.model
        return True

    def deploy(
        self, out: str | Path, bench: Mapping[str, Any] | None = None, *, measure_: bool = True
    ) -> list[DeployedFile]:
        """Export (and quantize, when the recipe says so) into ``out``, evaluate each file
        on the runtime of ``bench`` (ONNX Runtime when None or when it reports latency
        only), and benchmark them with ``bench`` settings (None, or ``measure_=False``:
        no timing here)."""
        self.files = deploy(
            self.model,
            self.recipe,
            out,
            self.source.test_data(),
            self.source.train_data(),
            runtime=(bench or {}).get("runtime") or "onnxruntime",
            runtime_options=(bench or {}).get("runtime_options"),
        )
        if bench is not None and measure_:
            measure(self.files, **bench)
        return self.files

    def save(self, path: str | Path) -> Path:
        """The current model as a checkpoint that reloads alone (pruned architecture)."""
        return save_compressed(self.model, path, self.source.architecture)

    def record(self) -> dict[str, Any]:
        """The ``compress.json`` record: source, recipe, pruning, accuracies, files."""
        tuned = self.tuned
        return {
            "source": str(self.source.checkpoint),
            "recipe": self.recipe.to_dict(),
            **self.report.to_dict(),
            "loss_before": None if self.before is None else self.before["loss"],
            "loss_after": None if self.after is None else self.after["loss"],
            "finetune": None
            if tuned is None
            else {
                "epochs": len(tuned.history),
                "final_top1": tuned.final_top1,
                "best_top1": tuned.best_top1,
            },
            "deployed": [f.to_dict() for f in self.files],
        }


@dataclass
class CompressionResult:
    """What :func:`run` produced: the final model, the report, the fine-tuning and the
    deployed files, and the folder they were written to."""

    model: nn.Module
    report: CompressReport
    out: Path
    tuned: FinetuneResult | None = None
    files: list[DeployedFile] = field(default_factory=list)
    record: dict[str, Any] = field(default_factory=dict)


def prepare_out(out: str | Path, overwrite: bool = False) -> Path:
    """Check that ``out`` may be written (empty, absent, or ``overwrite``)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output '{out}' is a file; pass a folder as --out")
    writable_folder(out.parent, "the folder of --out")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ConfigError(f"output folder '{out}' exists; pass --overwrite or another --out")
    return out


def run(
    source: TrainedRun,
    recipe: Recipe | str | Path | dict[str, Any],
    out: str | Path,
    *,
    finetune: bool = True,
    deploy: bool | None = None,
    bench: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    progress: bool = False,
    on_pruned: Callable[[Compression], None] | None = None,
) -> CompressionResult:
    """Compress ``source`` with ``recipe`` into the folder ``out``.

    Stages: prune (checked against the model before anything is written), evaluate the
    source and the pruned model, fine-tune into ``out`` as a run directory, or save
    ``checkpoints/compressed.pt`` without fine-tuning, export and quantize (when the
    recipe has those sections, or ``deploy=True``), benchmark (``bench`` settings), and
    finally ``compress.json``: its presence says the compression finished.

    Args:
        source: the trained run (:func:`edgetrain.runs.load_trained_run`).
        recipe: a recipe, a path, a shipped name or a mapping.
        out: the output folder.
        finetune: run the recipe's fine-tuning.
        deploy: export/quantize/evaluate files; None: when the recipe has an ``export``
            or ``quantize`` section.
        bench: benchmark settings for :func:`~edgetrain.compress.deploy.measure`
            (``{"runs": 100, "threads": 1}``); None: no timing.
        overwrite: replace an existing, non-empty ``out``.
        progress: show a progress bar while fine-tuning.
        on_pruned: called with the :class:`Compression` once pruned and evaluated,
            before fine-tuning (to warn about a ruined model).

    Raises:
        ConfigError: a bad recipe, a recipe that does not fit the model, or an output
            folder that exists.
    """
    out = prepare_out(out, overwrite)
    job = Compression(source, recipe)
    job.evaluate()
    if on_pruned is not None:
        on_pruned(job)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    atomic_write_text(
        out / COMPRESSION_RECIPE, yaml.safe_dump(job.recipe.to_dict(), sort_keys=False)
    )
    if not (finetune and job.finetune(out, progress=progress)):
        job.save(out / COMPRESSED_CHECKPOINT)
    wants_files = job.recipe.export is not None or job.recipe.quantize is not None
    if deploy if deploy is not None else wants_files:
        job.deploy(out, bench)
    record = job.record()
    atomic_write_text(out / REPORT_FILE, json.dumps(record, indent=2) + "\n")
    return CompressionResult(job.model, job.report, out, job.tuned, job.files, record)
