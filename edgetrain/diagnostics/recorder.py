"""Counting activation patterns over forward passes: :class:`PatternRecorder`.

Recording is cheap enough to leave on: a forward pre-hook on each activation layer
(:func:`~edgetrain.diagnostics.patterns.activation_layers`) packs the patterns of its
input into int64 words (:func:`~edgetrain.diagnostics.patterns.pack_pre_activation`),
hashes the words of a sample to one int64 key
(:func:`~edgetrain.diagnostics.patterns.hash_words`) and adds one to the key's bucket of
a fixed-size table on the activation's device (``index_add_``). Layers with at most 64
channels can instead be counted exactly: the packed word *is* the pattern, so it
indexes a table of ``2^C`` counts directly up to 20 channels and is sorted
(``torch.unique``) beyond. The same hash is used at every measurement, so two tables
compare bucket by bucket. Under ``torch.distributed``,
:meth:`PatternRecorder.all_reduce` sums the tables of all ranks.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.hooks import RemovableHandle

from edgetrain.diagnostics.patterns import _WORD_BITS, hash_words, pack_pre_activation
from edgetrain.diagnostics.sites import (
    ActivationWatch,
    Site,
    activation_layers,
    activation_layouts,
    no_activation_message,
)
from edgetrain.errors import ConfigError

__all__ = [
    "DEFAULT_BUCKETS",
    "OCCUPANCY_WARNING",
    "LayerCounts",
    "OccupancyWarning",
    "PatternRecorder",
    "occupancy_message",
]

PatternMode = Literal["hash", "exact", "auto"]
_MODES = ("hash", "exact", "auto")

DEFAULT_BUCKETS = 2**20
"""Buckets per layer: 8 MiB of int64 counts, < 10% occupancy up to ~100k patterns."""

OCCUPANCY_WARNING = 0.10
"""Above this share of non-empty buckets, collisions visibly distort the counts."""


class OccupancyWarning(RuntimeWarning):
    """A bucket table is so full that hash collisions distort the pattern counts."""


def occupancy_message(layer: str, share: float, buckets: int) -> str:
    """The one-line warning for a bucket table above :data:`OCCUPANCY_WARNING`."""
    return (
        f"layer '{layer}': {share:.1%} of {buckets} buckets in use; hash collisions "
        "distort the pattern counts, raise buckets"
    )


@dataclass(frozen=True)
class LayerCounts:
    """The pattern counts of one layer.

    Attributes:
        counts: samples per bucket (hash mode) or per distinct pattern (exact mode).
        keys: the packed pattern of each count, sorted (exact mode); None for buckets.
        channels: bits of a pattern.
        occupancy: share of non-empty buckets; None in exact mode (no collisions).
    """

    counts: torch.Tensor
    keys: torch.Tensor | None
    channels: int
    occupancy: float | None

    @property
    def exact(self) -> bool:
        return self.keys is not None

    @property
    def samples(self) -> int:
        return int(self.counts.sum().item())


_DENSE_BITS = 20
"""Exact layers of at most this many channels count in a table indexed by the pattern
itself (``index_add_``, no sorting); wider exact layers sort (``torch.unique``)."""


class _LayerTable:
    """Counts of one layer: a bucket table indexed by hash (hash mode), a table indexed
    by the pattern (exact, <= 20 channels), or sorted keys with counts (exact, wider)."""

    def __init__(self, channels: int, exact: bool, buckets: int, device: torch.device) -> None:
        self.channels, self.exact, self.buckets = channels, exact, buckets
        self.device = device
        self.dense = exact and channels <= _DENSE_BITS
        self.sorted_keys: torch.Tensor | None = None
        if self.dense:
            self.table = torch.zeros(1 << channels, dtype=torch.int64, device=device)
        elif exact:
            self.sorted_keys = torch.zeros(0, dtype=torch.int64, device=device)
            self.table = torch.zeros(0, dtype=torch.int64, device=device)
        else:
            self.table = torch.zeros(buckets, dtype=torch.int64, device=device)
        self._mask = buckets - 1 if buckets & (buckets - 1) == 0 else None

    def add(self, words: torch.Tensor) -> None:
        if self.dense:
            index = words[:, 0]
        elif self.exact:
            keys, counts = torch.unique(words[:, 0], return_counts=True)
            self.merge(keys, counts)
            return
        else:
            keys = hash_words(words)
            index = keys & self._mask if self._mask is not None else keys.remainder(self.buckets)
        self.table.index_add_(0, index, torch.ones_like(index))

    def merge(self, keys: torch.Tensor, counts: torch.Tensor) -> None:
        """Add (keys, counts) pairs into a sorted exact table."""
        assert self.sorted_keys is not None
        unique, inverse = torch.unique(torch.cat([self.sorted_keys, keys]), return_inverse=True)
        merged = torch.zeros(len(unique), dtype=torch.int64, device=self.device)
        merged.index_add_(0, inverse, torch.cat([self.table, counts]))
        keep = merged > 0  # padding from all_reduce carries count 0
        self.sorted_keys, self.table = unique[keep], merged[keep]

    @property
    def keys(self) -> torch.Tensor | None:
        """The sorted distinct patterns (exact), None for a bucket table."""
        if self.dense:
            return torch.nonzero(self.table).flatten()
        return self.sorted_keys

    @property
    def counts(self) -> torch.Tensor:
        """Counts per bucket (hash) or per pattern of :attr:`keys` (exact)."""
        return self.table[self.table > 0] if self.dense else self.table

    def occupancy(self) -> float | None:
        if self.exact:
            return None
        return float((self.table > 0).sum().item()) / self.buckets

    def all_reduce(self) -> None:
        if self.exact and not self.dense:
            keys, counts = _all_gather_varlen(self.sorted_keys, self.table)
            self.sorted_keys = torch.zeros(0, dtype=torch.int64, device=self.device)
            self.table = torch.zeros(0, dtype=torch.int64, device=self.device)
            self.merge(keys, counts)
        else:  # same-sized tables on every rank
            dist.all_reduce(self.table, op=dist.ReduceOp.SUM)


class PatternRecorder:
    """Count the activation patterns a model produces, per activation layer.

    Use it as a context manager around forward passes: every sample (every position of
    a conv layer) seen inside adds one count to its pattern's bucket. Counts accumulate
    over the passes until :meth:`reset`.

    Args:
        model: the network; its activation modules (see :func:`activation_layers`) are
            hooked while the recorder is active.
        mode: ``"hash"`` counts hashed patterns in ``buckets`` buckets; ``"exact"``
            counts distinct patterns exactly (layers of at most 64 channels only);
            ``"auto"`` is exact for layers of at most 64 channels, hashed otherwise.
        buckets: size of each layer's hash table.
        layers: names of the activation layers to record (all when None).
        warn_occupancy: warn once per layer when more than this share of its buckets is
            in use (collisions then distort the counts).

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> with PatternRecorder(net, mode="exact") as rec:
        ...     _ = net(torch.randn(100, 2))
        >>> int(rec.counts()["1"].sum())
        100
    """

    def __init__(
        self,
        model: nn.Module,
        mode: PatternMode = "auto",
        buckets: int = DEFAULT_BUCKETS,
        layers: Iterable[str] | None = None,
        warn_occupancy: float = OCCUPANCY_WARNING,
        input_shape: Sequence[int] | None = None,
    ) -> None:
        if mode not in _MODES:
            raise ConfigError(f"unknown pattern mode '{mode}'; choose one of: {', '.join(_MODES)}")
        if buckets < 1:
            raise ConfigError(f"buckets must be >= 1, got {buckets}")
        self.model, self.mode, self.buckets = model, mode, int(buckets)
        self.warn_occupancy = warn_occupancy
        self._layers = None if layers is None else list(layers)
        self._tables: dict[str, _LayerTable] = {}
        self._watch: ActivationWatch | None = None
        self._handles: list[RemovableHandle] = []
        self._warned: set[str] = set()
        self._tracing = False
        # The sites, and where each one's channels are (dim 1 after convolutions, last
        # after linear, recurrent and attention layers: one pattern per token), come from
        # one traced forward. Without an input shape the first recorded forward's input
        # gives it; until then only the activation modules are known.
        shape = input_shape if input_shape is not None else getattr(model, "input_shape", None)
        self.layouts: dict[str, int] | None = None
        if shape:
            self._learn_sites(shape)
        else:
            modules = None if layers is None else [n for n in layers if not n.endswith(")")]
            self.modules: dict[str, Site] = activation_layers(model, modules)

    def _learn_sites(self, shape: Sequence[int]) -> None:
        sites = activation_layers(self.model, self._layers, input_shape=shape)
        if not sites:
            raise ConfigError(no_activation_message(self.model))
        self.modules = sites
        self.layouts = activation_layouts(self.model, sites, shape)

    # ------------------------------------------------------------------ recording
    def __enter__(self) -> PatternRecorder:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        """Hook the activation sites (what ``with recorder:`` does on entry)."""
        if self._watch is not None:
            return
        # Runs before the watch's own hooks, so the sites are known when it starts.
        self._handles = [self.model.register_forward_pre_hook(self._learn_layouts, prepend=True)]
        self._watch = ActivationWatch(
            self.model, self.modules, self._seen, report_all=self.layouts is None
        )

    def _learn_layouts(self, module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        if self.layouts is not None or self._tracing or module is not self.model or not args:
            return
        self._tracing = True  # the trace runs the model (on the meta device) once more
        try:
            self._learn_sites(args[0].shape[1:])
        finally:
            self._tracing = False
        if self._watch is not None:
            self._watch.retarget(self.modules)

    def _seen(self, name: str, x: torch.Tensor) -> None:
        # Never a traced forward (meta tensors, no values to count).
        if not self._tracing and not x.is_meta and name in self.modules:
            self.add(name, x)

    @property
    def active(self) -> bool:
        return self._watch is not None

    def stop(self) -> None:
        """Remove the hooks (counts stay)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        if self._watch is not None:
            self._watch.remove()
            self._watch = None

    def reset(self) -> None:
        """Forget all counts."""
        self._tables = {}
        self._warned = set()

    @torch.no_grad()
    def add(self, name: str, pre_activation: torch.Tensor) -> None:
        """Count the patterns of a pre-activation tensor for layer ``name``."""
        if pre_activation.dim() > 2:
            if self.layouts is None:
                raise ConfigError(
                    f"activation '{name}' gets a {tuple(pre_activation.shape)} tensor whose "
                    "channel dimension (1 after a convolution, last after a linear or "
                    "attention layer) is read from one traced forward; pass input_shape"
                )
            if self.layouts.get(name, 1) == -1:  # (N, L, C): one pattern per token
                pre_activation = pre_activation.movedim(-1, 1)
        channels = pre_activation.shape[1] if pre_activation.dim() > 1 else 1
        table = self._tables.get(name)
        if table is None:
            table = self._new_table(name, channels, pre_activation.device)
        elif table.channels != channels:
            raise ConfigError(
                f"layer '{name}' had {table.channels} channels and now has {channels}; "
                "call reset() after changing the architecture"
            )
        table.add(pack_pre_activation(pre_activation))

    def _new_table(self, name: str, channels: int, device: torch.device) -> _LayerTable:
        exact = self.mode == "exact" or (self.mode == "auto" and channels <= _WORD_BITS)
        if exact and channels > _WORD_BITS:
            raise ConfigError(
                f"exact mode counts layers of at most {_WORD_BITS} channels; '{name}' has "
                f"{channels}: use mode='auto' or mode='hash'"
            )
        table = _LayerTable(channels, exact, self.buckets, device)
        self._tables[name] = table
        return table

    # -------------------------------------------------------------------- results
    @property
    def layer_names(self) -> list[str]:
        """Recorded layers (those that saw at least one sample), in model order."""
        return [n for n in self.modules if n in self._tables]

    def counts(self) -> dict[str, torch.Tensor]:
        """Per layer the count vector: bucket counts (hash) or counts of distinct
        patterns in the order of :meth:`keys` (exact)."""
        return {n: self._tables[n].counts for n in self.layer_names}

    def keys(self) -> dict[str, torch.Tensor | None]:
        """Per layer the packed pattern of each count (exact), None for hashed layers."""
        return {n: t.keys for n, t in self._layer_tables()}

    def channels(self) -> dict[str, int]:
        """Per layer the number of channels (bits of a pattern)."""
        return {n: t.channels for n, t in self._layer_tables()}

    def exact(self) -> dict[str, bool]:
        """Per layer whether it is counted exactly."""
        return {n: t.exact for n, t in self._layer_tables()}

    def occupancy(self) -> dict[str, float | None]:
        """Per layer the share of non-empty buckets (None for exactly counted layers);
        warns once per layer above ``warn_occupancy``."""
        out = {n: t.occupancy() for n, t in self._layer_tables()}
        for name, share in out.items():
            if share is not None and share > self.warn_occupancy and name not in self._warned:
                self._warned.add(name)
                warnings.warn(
                    occupancy_message(name, share, self.buckets), OccupancyWarning, stacklevel=2
                )
        return out

    def snapshot(self) -> dict[str, LayerCounts]:
        """Per layer the counts with their keys, channels and occupancy (warns like
        :meth:`occupancy`)."""
        shares = self.occupancy()
        return {
            n: LayerCounts(t.counts, t.keys, t.channels, shares[n]) for n, t in self._layer_tables()
        }

    def _layer_tables(self) -> Iterator[tuple[str, _LayerTable]]:
        return ((n, self._tables[n]) for n in self.layer_names)

    # ------------------------------------------------------------------- parallel
    def all_reduce(self) -> None:
        """Sum the counts over all ranks of the process group (no-op without one).

        Hash tables are summed with one ``all_reduce``; exact tables are gathered and
        merged. Every rank must have recorded the same layers (the same model).
        """
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
            return
        for _, table in self._layer_tables():
            table.all_reduce()


def _all_gather_varlen(
    keys: torch.Tensor, counts: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenate (keys, counts) of every rank; padding carries count 0."""
    world = dist.get_world_size()
    length = torch.tensor([len(keys)], dtype=torch.int64, device=keys.device)
    lengths = [torch.zeros_like(length) for _ in range(world)]
    dist.all_gather(lengths, length)
    longest = int(max(t.item() for t in lengths))
    pairs = nn.functional.pad(torch.stack([keys, counts]), (0, longest - len(keys)))
    gathered = [torch.zeros_like(pairs) for _ in range(world)]
    dist.all_gather(gathered, pairs)
    joined = torch.cat(gathered, dim=1)
    return joined[0], joined[1]
