"""The compression recipe: which filters to prune, how to fine-tune, quantize and export.

A recipe is versioned YAML validated on load; every mistake gives one line naming the
key and the fix. What depends on the model (layer names, tied layers) is checked by
:meth:`Recipe.check` once the model is known.

Example recipe::

    version: 1
    pruners:
      stage1:                          # a label; the search can set stage1.sparsity
        method: l1_filter              # a key of PRUNERS
        sparsity: 0.7                  # fraction of filters removed, in [0, 1)
        layers: ["layer1.*.conv1"]     # module names, globs or re: patterns
      stage3_sensitive: {method: l1_filter, sparsity: 0.2, layers: ["layer3.1.conv1"]}
    finetune: {epochs: 10, lr: 0.01, scheduler: {name: exponential, gamma: 0.95, start_epoch: 5}}
    quantize: {method: int8_static, calibration_batches: 32}
    export: {format: onnx, opset: 17}

``number_format: {method: psb, samples: 8, prune: 0.25, p_bits: 4, fixed_point: 8}``
converts the pruned PyTorch model to progressive stochastic binarization (see
:mod:`edgetrain.compress.psb`); such a recipe has no ``export`` or ``quantize`` (ONNX
cannot express weights drawn anew at every forward) and no ``finetune`` section.
"""

from __future__ import annotations

import inspect
import re
import warnings
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from torch import nn

from edgetrain._modules import select_modules
from edgetrain.compress.number_formats import NUMBER_FORMATS
from edgetrain.compress.pruning import PRUNER_ARGS, PRUNERS, check_prunable, tied_layers
from edgetrain.compress.quantize import QUANTIZE_METHODS
from edgetrain.configs import NamedConfig, StrictConfig, load_validated, read_mapping
from edgetrain.engine.optim import OPTIMIZERS, SCHEDULER_ARGS, SCHEDULERS
from edgetrain.errors import ConfigError, EdgetrainError
from edgetrain.models import WEIGHT_LAYER_TYPES
from edgetrain.prune.graph import example_input as default_input
from edgetrain.recipes import COMPRESSION_RECIPES
from edgetrain.registry import check_kwargs

__all__ = [
    "RECIPE_VERSION",
    "ExportSpec",
    "FinetuneSpec",
    "NumberFormatSpec",
    "PrunerSpec",
    "QuantizeSpec",
    "Recipe",
    "load_recipe",
]

RECIPE_VERSION = 1
_SECTIONS = ("version", "pruners", "finetune", "quantize", "export", "number_format")
_LABEL = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")
# Arguments the pipeline passes to every number format; never recipe options.
_FORMAT_ARGS = ("model", "example_input")


class _Strict(StrictConfig):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PrunerSpec(BaseModel):
    """``{method, sparsity, layers, <method options>}``: one pruning step of a recipe."""

    model_config = ConfigDict(extra="allow", frozen=True)
    method: str
    sparsity: float
    layers: list[str] = Field(min_length=1)

    @field_validator("method")
    @classmethod
    def _method(cls, v: str) -> str:
        PRUNERS.entry(v)  # UnknownNameError lists the choices
        return v

    @field_validator("sparsity")
    @classmethod
    def _sparsity(cls, v: float) -> float:
        if not 0.0 <= v < 1.0:
            raise ValueError(
                "must be in [0, 1) (the fraction of filters removed; at least one filter "
                f"always stays), got {v}"
            )
        return v

    @field_validator("layers", mode="before")
    @classmethod
    def _one_layer(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v

    @model_validator(mode="after")
    def _options(self) -> PrunerSpec:
        entry = PRUNERS.entry(self.method)
        accepted = [n for n in inspect.signature(entry.fn).parameters if n not in PRUNER_ARGS]
        for key in self.options:
            if key not in accepted:
                extra = f"; options of {self.method}: {', '.join(accepted) or 'none'}"
                raise ValueError(
                    f"unknown key '{key}'; valid keys: method, sparsity, layers{extra}"
                )
        check_kwargs(entry.fn, self.options, f"pruning method '{self.method}'", PRUNER_ARGS)
        return self

    @property
    def options(self) -> dict[str, Any]:
        """The method's own options (keys other than method, sparsity and layers)."""
        return dict(self.model_extra or {})


def _check_named(kind: str, registry: Any, value: NamedConfig, reserved: tuple[str, ...]) -> None:
    entry = registry.entry(value.name)
    check_kwargs(entry.fn, value.options, f"{kind} '{value.name}'", reserved)


class FinetuneSpec(_Strict):
    """Fine-tuning after pruning: epochs, learning rate, optional optimizer and schedule.

    The optimizer defaults to the trained run's (its momentum and weight decay kept) with
    ``lr`` set; without a scheduler the learning rate stays constant.
    """

    epochs: int = Field(ge=0)
    lr: float = Field(gt=0)
    optimizer: NamedConfig | None = None
    scheduler: NamedConfig | None = None
    batch_size: int | None = Field(None, ge=1)

    @field_validator("optimizer")
    @classmethod
    def _optimizer(cls, v: NamedConfig | None) -> NamedConfig | None:
        if v is not None:
            if "lr" in v.options:
                raise ValueError("set the learning rate with finetune.lr, not finetune.optimizer")
            _check_named("optimizer", OPTIMIZERS, v, ("params",))
        return v

    @field_validator("scheduler")
    @classmethod
    def _scheduler(cls, v: NamedConfig | None) -> NamedConfig | None:
        if v is not None:
            _check_named("scheduler", SCHEDULERS, v, SCHEDULER_ARGS)
        return v


class QuantizeSpec(_Strict):
    """Post-training quantization of the exported model (ONNX Runtime's tools)."""

    method: str
    calibration_batches: int = Field(32, ge=1)

    @field_validator("method")
    @classmethod
    def _method(cls, v: str) -> str:
        QUANTIZE_METHODS.entry(v)  # an unknown method lists the choices
        return v


class ExportSpec(_Strict):
    """The exported file's format and ONNX opset."""

    format: Literal["onnx"] = "onnx"
    opset: int = Field(17, ge=7)


class NumberFormatSpec(BaseModel):
    """A number format the PyTorch model is converted to after pruning: a key of
    :data:`~edgetrain.compress.psb.NUMBER_FORMATS` and that format's options, e.g.
    ``{method: psb, samples: 8, prune: 0.25}``."""

    model_config = ConfigDict(extra="allow", frozen=True)
    method: str

    @model_validator(mode="before")
    @classmethod
    def _format_options(cls, data: Any) -> Any:
        method = data.get("method") if isinstance(data, dict) else None
        if not isinstance(method, str) or method not in NUMBER_FORMATS:
            return data  # the method's own validator names the choices
        entry = NUMBER_FORMATS.entry(method)
        options = {k: v for k, v in data.items() if k != "method"}
        checked = check_kwargs(entry.fn, options, f"number format '{method}'", _FORMAT_ARGS)
        entry.meta["check"](checked)
        return {"method": method, **checked}

    @field_validator("method")
    @classmethod
    def _method(cls, v: str) -> str:
        NUMBER_FORMATS.entry(v)  # UnknownNameError lists the choices
        return v

    @property
    def options(self) -> dict[str, Any]:
        """The format's options (keys other than method)."""
        return dict(self.model_extra or {})


class Recipe(_Strict):
    """A validated compression recipe; build it with :func:`load_recipe`.

    Example:
        >>> recipe = load_recipe({"version": 1, "pruners": {"s1": {
        ...     "method": "l1_filter", "sparsity": 0.5, "layers": ["layer1.*.conv1"]}}})
        >>> recipe.with_params({"s1.sparsity": 0.25}).pruners["s1"].sparsity
        0.25
    """

    version: int
    pruners: dict[str, PrunerSpec] = Field(default_factory=dict)
    finetune: FinetuneSpec | None = None
    quantize: QuantizeSpec | None = None
    export: ExportSpec | None = None
    number_format: NumberFormatSpec | None = None

    @model_validator(mode="after")
    def _number_format_pipeline(self) -> Recipe:
        if self.number_format is None:
            return self
        method = self.number_format.method
        if not NUMBER_FORMATS.entry(method).meta.get("exportable"):
            onnx = [s for s in ("export", "quantize") if getattr(self, s) is not None]
            if onnx:
                raise ValueError(
                    f"number format '{method}' draws new weights at every forward, which an "
                    f"ONNX file cannot express; remove the {' and '.join(onnx)} section"
                    f"{'s' if len(onnx) > 1 else ''} and evaluate the model in PyTorch"
                )
        if self.finetune is not None and self.finetune.epochs > 0:
            raise ValueError(
                f"finetune cannot follow number format '{method}': fine-tuning rebuilds the "
                f"model from a checkpoint, which holds no {method} layers; remove finetune (or "
                "set finetune.epochs: 0), or fine-tune in Python with "
                "edgetrain.compress.finetune_psb"
            )
        return self

    @field_validator("version", mode="before")
    @classmethod
    def _version(cls, v: Any) -> Any:
        if v != RECIPE_VERSION or isinstance(v, bool):
            raise ValueError(
                f"this edgetrain reads compression recipes of version {RECIPE_VERSION}, got "
                f"{v!r}; write 'version: {RECIPE_VERSION}'"
            )
        return v

    @field_validator("pruners", mode="before")
    @classmethod
    def _labels(cls, v: Any) -> Any:
        if isinstance(v, dict):
            for label in v:
                if not isinstance(label, str) or not _LABEL.match(label):
                    raise ValueError(
                        f"pruner label {label!r} must start with a letter or '_' and hold only "
                        "letters, digits, '_' and '-' (it names parameters like label.sparsity)"
                    )
                if label in _SECTIONS:
                    raise ValueError(
                        f"pruner label '{label}' is a recipe section name; choose another label"
                    )
        return v

    def to_dict(self) -> dict[str, Any]:
        """Plain data (the recipe as YAML would hold it, defaults written out)."""
        return self.model_dump(mode="json", exclude_none=True)

    def with_params(self, params: dict[str, Any]) -> Recipe:
        """A new recipe with dotted keys set: ``label.key`` for a pruner
        (``stage1.sparsity``), ``section.key`` for the others (``finetune.lr``).

        Raises:
            ConfigError: an unknown pruner label or section, or an invalid value.
        """
        tree = self.to_dict()
        for dotted, value in params.items():
            head, _, rest = str(dotted).partition(".")
            if head == "pruners":
                head, _, rest = rest.partition(".")
            if not rest:
                raise ConfigError(
                    f"parameter '{dotted}' must look like <pruner label>.<key> or "
                    "<section>.<key> (e.g. stage1.sparsity, finetune.lr)"
                )
            if head in self.pruners:
                node = tree["pruners"][head]
            elif head in _SECTIONS[2:]:
                node = tree.setdefault(head, {})
            else:
                labels = ", ".join(self.pruners) or "none"
                raise ConfigError(
                    f"parameter '{dotted}' names neither a pruner (labels: {labels}) nor a "
                    f"section ({', '.join(_SECTIONS[2:])})"
                )
            *parents, last = rest.split(".")
            for key in parents:
                node = node.setdefault(key, {})
                if not isinstance(node, dict):
                    raise ConfigError(f"parameter '{dotted}': '{key}' is not a section")
            node[last] = value
        return load_recipe(tree)

    def check(
        self, model: nn.Module, example_input: torch.Tensor | None = None
    ) -> dict[str, list[str]]:
        """Check the recipe against ``model`` and resolve each pruner's layer patterns.

        Returns:
            ``{pruner label: [layer names]}``, in recipe order.

        Raises:
            ConfigError: a pattern matching nothing, a layer that is not a conv/linear,
                the output layer, a layer listed by two pruners, or tied layers (one
                residual add) split across pruners or listed only in part.
        """
        resolved: dict[str, list[str]] = {}
        owner: dict[str, str] = {}
        prunable: list[str] | None = None
        left_out: dict[str, str] = {}
        for label, spec in self.pruners.items():
            names: list[str] = []
            for pattern in spec.layers:
                if pattern == "*" or pattern.startswith("type:"):
                    # By kind: among the layers whose filters can go (never an output
                    # layer, nor one tied to it).
                    if prunable is None:
                        prunable = _prunable(model, example_input, left_out)
                    names += _of_kind(model, pattern, prunable, label, left_out)
                    continue
                try:
                    names += [n for n, _ in select_modules(model, [pattern])]
                except EdgetrainError as exc:
                    if pattern.startswith("re:") and "not a valid regex" in str(exc):
                        raise ConfigError(f"pruners.{label}.layers: {exc}") from None
                    raise ConfigError(
                        f"pruners.{label}.layers: '{pattern}' matches no module; "
                        f"conv/linear layers: {_layer_hint(model)}"
                    ) from None
            for name in dict.fromkeys(names):
                module = model.get_submodule(name)
                if not isinstance(module, WEIGHT_LAYER_TYPES):
                    raise ConfigError(
                        f"pruners.{label}: '{name}' is a {type(module).__name__}, not a conv or "
                        "linear layer; list conv/linear layers (e.g. 'layer1.*.conv1')"
                    )
                if name in owner:
                    raise ConfigError(
                        f"layer '{name}' is listed by pruners '{owner[name]}' and '{label}'; "
                        "list each layer in one pruner"
                    )
                owner[name] = label
            resolved[label] = list(dict.fromkeys(names))
        structured = [
            label
            for label, spec in self.pruners.items()
            if PRUNERS.entry(spec.method).meta.get("structured")
        ]
        if not structured:
            return resolved
        example = default_input(model, example_input)
        refused: dict[str, str] = {}
        tied = tied_layers(model, example, refused=refused)
        for label in structured:
            for name in resolved[label]:
                entry = tied.get(name)
                if entry is None:
                    continue
                labels = {p: owner[p] for p in entry.producers if p in owner}
                if len(set(labels.values())) > 1:
                    split = ", ".join(
                        f"'{lb}' ({', '.join(p for p, o in labels.items() if o == lb)})"
                        for lb in dict.fromkeys(labels.values())
                    )
                    raise ConfigError(
                        f"layers {', '.join(entry.producers)} share their output channels "
                        f"(their outputs are added, as at a residual connection) but are split "
                        f"across pruners {split}; list them all in one pruner"
                    )
            check_prunable(
                model, resolved[label], example, tied, what=f"pruners.{label}", refused=refused
            )
        return resolved


def _prunable(
    model: nn.Module, example_input: torch.Tensor | None, refused: dict[str, str]
) -> list[str]:
    """Layers whose filters can be removed, in model order; ``refused`` gets the layers
    left out because their channels cannot change correctly, with the reason."""
    tied = tied_layers(model, default_input(model, example_input), refused=refused)
    return [n for n, _ in model.named_modules() if n in tied]


def _of_kind(
    model: nn.Module, pattern: str, prunable: list[str], label: str, refused: dict[str, str]
) -> list[str]:
    """The prunable layers a ``*`` or ``type:<Class>`` pattern selects (a ``*`` that leaves
    out layers whose channels cannot change says which, and why)."""
    if pattern == "*":
        first = next(iter(refused.items()), None)
        why = f"'{first[0]}': {first[1]}" if first else ""
        if not prunable:
            raise ConfigError(
                f"pruners.{label}.layers: no layer can lose filters (the output layers and "
                f"layers tied to them cannot){'; ' + why if why else ''}"
            )
        if refused:
            more = f" (and {len(refused) - 1} more)" if len(refused) > 1 else ""
            warnings.warn(f"pruners.{label}: '*' leaves out {why}{more}", stacklevel=2)
        return list(prunable)
    try:
        kinds = {n for n, _ in select_modules(model, [pattern])}
    except EdgetrainError:
        raise ConfigError(
            f"pruners.{label}.layers: '{pattern}' matches no module; conv/linear layers: "
            f"{_layer_hint(model)}"
        ) from None
    chosen = [n for n in prunable if n in kinds]
    if not chosen:
        raise ConfigError(
            f"pruners.{label}.layers: no '{pattern[5:]}' layer can lose filters (the output "
            "layers and layers tied to them cannot); name other layers"
        )
    return chosen


def _layer_hint(model: nn.Module, limit: int = 8) -> str:
    names = [n for n, m in model.named_modules() if isinstance(m, WEIGHT_LAYER_TYPES)]
    shown = ", ".join(names[:limit])
    return f"{shown}, ... ({len(names)} in all)" if len(names) > limit else shown or "none"


def load_recipe(source: Recipe | str | Path | dict[str, Any]) -> Recipe:
    """Validate a compression recipe.

    Args:
        source: a :class:`Recipe` (returned as is), a mapping (not modified), a YAML
            path, the name of a shipped recipe (``resnet20-l1``) or YAML text.

    Raises:
        ConfigError: one line naming the bad key or value and the fix.

    Example:
        >>> load_recipe("version: 1\\npruners: {}").pruners
        {}
    """
    if isinstance(source, Recipe):
        return source
    tree, file = read_mapping(
        source,
        what="compression recipe",
        shipped=COMPRESSION_RECIPES,
        text_allowed=True,
        hint="version, pruners, finetune, quantize, export",
    )
    if "version" not in tree:
        where = f" '{file}'" if file else ""
        raise ConfigError(
            f"compression recipe{where}: missing required key 'version'; start the recipe "
            f"with 'version: {RECIPE_VERSION}'"
        )
    return load_validated(Recipe, tree, what="compression recipe", where=file)
