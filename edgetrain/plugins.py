"""The one list of plugins: which modules put entries into which registry.

A registry fills itself from this list the first time it is looked up, so a config
naming any registered technique (``callbacks: [{name: prunetrain}]``, ``lr_control:
actcool``, ``optimizer: lars``, a grow op, a pruner, a runtime, a search method) loads
in any process after ``import edgetrain`` alone, whatever else was imported before.
Registration stays in the module that defines the entry (a decorator); this list is
the only place that says which modules those are. Adding a plugin means adding its
module here; ``tests/test_plugins.py`` fails when a registering module is missing.
"""

from __future__ import annotations

import importlib

__all__ = ["PLUGINS", "load"]

PLUGINS: dict[str, tuple[str, ...]] = {
    "model": (
        "edgetrain.models.small",
        "edgetrain.models.vgg",
        "edgetrain.models.resnet",
        "edgetrain.models.mobilenet",
        "edgetrain.models.efficientnet",
        "edgetrain.models.kws",
        "edgetrain.models.vit",
    ),
    "data set": (
        "edgetrain.data.digits",
        "edgetrain.data.cifar",
        "edgetrain.data.ucr",
        "edgetrain.data.keywords",
        "edgetrain.data.speech_commands",
        "edgetrain.data.image_folder",
        "edgetrain.data.arrays",
    ),
    "domain shift": ("edgetrain.data.transforms",),
    "augmentation": ("edgetrain.data.transforms",),
    "optimizer": ("edgetrain.engine.optim", "edgetrain.prune.lars"),
    "scheduler": ("edgetrain.engine.optim",),
    "callback": (
        "edgetrain.engine.callbacks.abort_below",
        "edgetrain.engine.callbacks.early_stopping",
        "edgetrain.finetune.callback",
        "edgetrain.prune.callback",
        "edgetrain.prune.batch",
        "edgetrain.prune.morphnet",
        "edgetrain.diagnostics.measure",
        "edgetrain.diagnostics.lr_sensitivity",
        "edgetrain.analysis.snapshots",
    ),
    "LR controller": ("edgetrain.diagnostics.actcool",),
    "cooling plan": ("edgetrain.diagnostics.actcool",),
    "grow op": ("edgetrain.prune.grow.widen", "edgetrain.prune.grow.deepen"),
    "pruning method": ("edgetrain.compress.l1",),
    "number format": ("edgetrain.compress.psb.number_format",),
    "runtime": (
        "edgetrain.compress.runtime",
        "edgetrain.compress.openvino_runtime",
        "edgetrain.compress.executorch_runtime",
    ),
    "export format": ("edgetrain.compress.formats",),
    "command output adapter": ("edgetrain.compress.command_outputs",),
    "quantization method": ("edgetrain.compress.quantize",),
    "search method": ("edgetrain.search.methods",),
    "trial pruner": ("edgetrain.search.pruners",),
    "report section": ("edgetrain.report.sections",),
}
"""Registry kind -> the modules whose import registers its entries."""


def load(kind: str) -> None:
    """Import the modules that register entries of ``kind`` (none for an unknown kind)."""
    for module in PLUGINS.get(kind, ()):
        importlib.import_module(module)
