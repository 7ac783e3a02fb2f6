"""What a report draws for a kind of run, registered by name.

Each section says which runs it applies to and draws their plots: for one run into the
run's ``plots/`` folder, and (when ``overlay`` is at least 1) an overlay of every run it
applies to once a page shows that many. :func:`~edgetrain.report.build_report` walks
the registry in ``order``; a new kind of run adds a section here, not a branch there.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from edgetrain.registry import Registry
from edgetrain.report.adaptive import has_adaptive_schedule, plot_adaptive_schedule
from edgetrain.report.extract import RunRecord
from edgetrain.report.lr_sensitivity import has_lr_diagnostics, plot_lr_diagnostics
from edgetrain.report.patterns import has_patterns, plot_patterns
from edgetrain.report.plots import plot_curves
from edgetrain.report.pruning import is_pruning_run, plot_pruning
from edgetrain.report.temperature import has_temperatures, plot_temperatures

__all__ = ["REPORT_SECTIONS", "ReportSection", "sections"]


@dataclass(frozen=True)
class ReportSection:
    """The plots of one kind of run.

    Attributes:
        applies: whether a run has this section's data.
        plot: draws the section for the given runs into a folder, returns the PNGs.
        overlay: fewest runs (it applies to) for an overlay on a page of several runs;
            0 draws each run alone only.
        overlay_all: the overlay draws every run of the page (the others as baselines),
            not only those it applies to.
        order: position on the page.
    """

    applies: Callable[[RunRecord], bool]
    plot: Callable[[Sequence[RunRecord], Path], list[Path]]
    overlay: int = 1
    overlay_all: bool = False
    order: int = 0

    def overlaid(self, runs: Sequence[RunRecord]) -> list[RunRecord]:
        """The runs of a page of several runs that this section's overlay draws (none:
        no overlay)."""
        chosen = [r for r in runs if self.applies(r)]
        if not self.overlay or len(chosen) < self.overlay:
            return []
        return list(runs) if self.overlay_all else chosen


REPORT_SECTIONS: Registry[ReportSection] = Registry("report section")


@REPORT_SECTIONS.register("curves")
def _curves() -> ReportSection:
    """Loss, accuracy and learning rate per epoch."""
    return ReportSection(lambda run: True, plot_curves, order=0)


@REPORT_SECTIONS.register("pruning")
def _pruning() -> ReportSection:
    """Channels per layer and MACs over epochs, for runs whose architecture changed."""
    return ReportSection(is_pruning_run, plot_pruning, overlay=1, overlay_all=True, order=1)


@REPORT_SECTIONS.register("patterns")
def _patterns() -> ReportSection:
    """Activation-pattern measurements (heat maps, entropy per layer)."""
    return ReportSection(has_patterns, plot_patterns, overlay=2, order=2)


def _plot_lr(runs: Sequence[RunRecord], folder: Path) -> list[Path]:
    return [p for run in runs for p in plot_lr_diagnostics(run.path, folder, run.name)]


@REPORT_SECTIONS.register("lr-diagnostics")
def _lr_diagnostics() -> ReportSection:
    """LR-sensitivity measurements and ActCoolLR's rates."""
    return ReportSection(lambda run: has_lr_diagnostics(run.path), _plot_lr, overlay=0, order=3)


@REPORT_SECTIONS.register("temperature")
def _temperature() -> ReportSection:
    """The per-layer AP temperature over training (temperature monitor)."""
    return ReportSection(has_temperatures, plot_temperatures, overlay=0, order=5)


@REPORT_SECTIONS.register("adaptive-schedule")
def _adaptive_schedule() -> ReportSection:
    """The updates per layer an adaptive layer schedule chose each epoch, and why."""
    return ReportSection(has_adaptive_schedule, plot_adaptive_schedule, overlay=0, order=4)


def sections() -> list[ReportSection]:
    """Every registered section, in page order."""
    built = [REPORT_SECTIONS.create(name) for name in REPORT_SECTIONS.names()]
    return sorted(built, key=lambda s: s.order)
