"""Layer schedules (BPLS): which unfrozen layer is updated in which step of a cycle.

A schedule is a matrix with one row per unfrozen parameter layer (output layer first)
and one column per step of a cycle of length T; a cell is a relative learning rate
(1 = base) or 0 (skip). Step t of training uses column ``t mod T``. The string notation
(``4421``, ``4422_m``, ``4444_lr4421``, ``4421_lr4444``, ``4421_rdo``, ``4440``) is
parsed exactly as specs/layer-scheduling.md defines it. An explicit matrix is written
row by row, output layer first, rows separated by ``/``: bit rows (``1111/1010/0101``)
or, for per-step rates, comma-separated numbers (``1,1,1,1/0.5,0,0.5,0``); YAML may give
the rows as a list (:meth:`Schedule.coerce`).

Example:
    >>> s = Schedule.parse("4422_m")
    >>> s.bits()
    ['1111', '1111', '1010', '0101']
    >>> s.mode, s.cycle_length, s.mean_rates
    ('bpls', 4, (1.0, 1.0, 0.5, 0.5))
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

__all__ = ["DIGITS", "MODES", "Schedule", "even_placement", "staggered_placement"]

MODES = ("conventional", "bpls", "pllr", "upscaled", "rdo")
# Characters of the notation: a digit per layer, "A" = 10 ... "Z" = 35.
DIGITS = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_NOTATION = re.compile(r"^(?P<counts>[0-9A-Za-z]+)(?P<suffixes>(_(m|rdo|lr[0-9A-Za-z]+))*)$")


def _digit(ch: str, text: str) -> int:
    value = DIGITS.find(ch.upper())
    if value < 0:
        raise ValueError(f"schedule '{text}': unknown character '{ch}' (use 0-9 and A-Z)")
    return value


def even_placement(count: int, cycle: int, offset: int = 0) -> list[int]:
    """0/1 row with ``count`` updates evenly spaced in ``cycle`` steps from ``offset``.

    Example:
        >>> [even_placement(s, 4) for s in (4, 3, 2, 1)]
        [[1, 1, 1, 1], [1, 1, 1, 0], [1, 0, 1, 0], [1, 0, 0, 0]]
    """
    row = [0] * cycle
    for i in range(count):
        row[(i * cycle // count + offset) % cycle] = 1 if count else 0
    return row


def _counts(digits: str, text: str) -> list[int]:
    counts = [_digit(ch, text) for ch in digits]
    cycle = counts[0]
    if cycle < 1:
        raise ValueError(f"schedule '{text}': the first character is the cycle length T >= 1")
    for i, s in enumerate(counts):
        if s > cycle:
            ch = digits[i]
            said = f"{s} times" if ch.isdigit() else f"{s} times ('{ch}')"
            raise ValueError(
                f"schedule '{text}': layer {i + 1} is updated {said} in a cycle of "
                f"T={cycle}; each character after the first is a count from 0 to T "
                "(letters are counts above 9, for T > 9)"
            )
    stripped = digits.rstrip("0")
    if "0" in stripped:
        raise ValueError(f"schedule '{text}': '0' (a frozen layer) may only appear at the end")
    return counts


@dataclass(frozen=True)
class Schedule:
    """A cycle of per-layer update decisions and rates.

    Attributes:
        pattern: 0/1 rows (output layer first): which layer is updated in which step.
        rates: per-row learning-rate multiplier applied when the layer is updated.
        mode: ``conventional``, ``bpls``, ``pllr``, ``upscaled`` or ``rdo``.
        keep: per-row gradient keep probability (``rdo``), else 1.
        name: the notation it came from (or a description for explicit matrices).
    """

    pattern: tuple[tuple[int, ...], ...]
    rates: tuple[float, ...]
    mode: str
    keep: tuple[float, ...] = ()
    name: str = ""
    counts: tuple[int, ...] = field(default=(), compare=False)
    memory_optimised: bool = False

    def __post_init__(self) -> None:
        if not self.pattern or not self.pattern[0]:
            raise ValueError("a schedule needs at least one row and one step")
        if len({len(r) for r in self.pattern}) != 1:
            raise ValueError("every schedule row needs the same number of steps")
        if self.mode not in MODES:
            raise ValueError(f"unknown mode '{self.mode}'; choose one of: {', '.join(MODES)}")
        if not self.keep:
            object.__setattr__(self, "keep", tuple(1.0 for _ in self.pattern))

    # ------------------------------------------------------------------ parsing
    @classmethod
    def coerce(cls, value: Schedule | str | Sequence[str | Sequence[float]]) -> Schedule:
        """A schedule from notation or matrix text (:meth:`parse`), or from a list of
        rows (:meth:`from_matrix`), as YAML recipes and the CLI give them."""
        if isinstance(value, Schedule):
            return value
        if isinstance(value, str):
            return cls.parse(value)
        return cls.from_matrix(list(value))

    @classmethod
    def parse(cls, text: str) -> Schedule:
        """Parse the string notation, or an explicit matrix written row by row with ``/``
        between rows (see the module docstring).

        Raises:
            ValueError: naming the problem (unknown character, s > T, empty, a bad suffix).
        """
        text = text.strip()
        if "/" in text:
            rows: list[str | list[float]] = []
            for i, row in enumerate(text.split("/")):
                row = row.strip()
                if "," not in row:
                    rows.append(row)
                    continue
                try:
                    rows.append([float(c) for c in row.split(",")])
                except ValueError:
                    raise ValueError(
                        f"schedule '{text}': row {i + 1} '{row}' must be numbers separated "
                        "by commas, or a bit string such as 1010"
                    ) from None
            try:
                return cls.from_matrix(rows)
            except ValueError as exc:
                raise ValueError(f"schedule '{text}': {exc}") from None
        for ch in text.split("_", 1)[0]:
            _digit(ch, text)  # names an unknown character before the generic message
        match = _NOTATION.match(text)
        if not text or match is None:
            raise ValueError(
                f"schedule '{text}' is not valid notation; examples: 4421, 4422_m, "
                "4444_lr4421, 4421_rdo, 4440"
            )
        counts = _counts(match["counts"], text)
        cycle = counts[0]
        suffixes = [s for s in match["suffixes"].split("_") if s]
        memory = "m" in suffixes
        rdo = "rdo" in suffixes
        lr = [s[2:] for s in suffixes if s.startswith("lr")]
        if len(lr) > 1 or (rdo and (lr or memory)) or len(suffixes) != len(set(suffixes)):
            raise ValueError(f"schedule '{text}': conflicting or repeated suffixes")
        pattern = [even_placement(s, cycle) for s in counts]
        if memory:
            pattern = staggered_placement(counts, cycle)
        if rdo:
            full = tuple(tuple(1 if s else 0 for _ in range(cycle)) for s in counts)
            keep = tuple(s / cycle for s in counts)
            return cls(full, tuple(1.0 for _ in counts), "rdo", keep, text, tuple(counts))
        derived = counts  # the update counts the other modes are derived from
        rates = [1.0 for _ in counts]
        mode = "conventional" if all(s in (0, cycle) for s in counts) else "bpls"
        if lr:
            lr_counts = _counts(lr[0], text)
            if len(lr_counts) != len(counts) or lr_counts[0] != cycle:
                raise ValueError(
                    f"schedule '{text}': the _lr part needs {len(counts)} layers and T={cycle}"
                )
            for i, (s, r) in enumerate(zip(counts, lr_counts, strict=True)):
                if (s == 0) != (r == 0):
                    raise ValueError(f"schedule '{text}': layer {i + 1} is frozen in one part")
            # a layer updated in s of T steps at rate r/s has mean rate r/T
            rates = [r / s if s else 0.0 for s, r in zip(counts, lr_counts, strict=True)]
            if all(s in (0, cycle) for s in counts):
                mode = "pllr" if any(r not in (0, cycle) for r in lr_counts) else "conventional"
                derived = lr_counts  # pllr carries its counts in the _lr part
            elif all(r in (0, cycle) for r in lr_counts):
                mode = "upscaled"
            else:
                mode = "bpls"
        return cls(tuple(map(tuple, pattern)), tuple(rates), mode, (), text, tuple(derived), memory)

    @classmethod
    def from_matrix(cls, rows: Sequence[str | Sequence[float]], name: str = "") -> Schedule:
        """An explicit matrix: rows output layer first, each a bit string (``"1010"``)
        or a list of per-step rates (0 = skip). The mode is ``bpls`` (``conventional``
        when every cell is 1)."""
        if not rows:
            raise ValueError("an explicit schedule needs at least one row")
        pattern, rates = [], []
        for i, row in enumerate(rows):
            if isinstance(row, str):
                if set(row) - {"0", "1"}:
                    raise ValueError(f"row {i + 1} '{row}': bit strings hold only 0 and 1")
                cells = [float(c) for c in row]
            else:
                cells = [float(c) for c in row]
            if any(c < 0 for c in cells):
                raise ValueError(f"row {i + 1}: rates must be >= 0")
            active = [c for c in cells if c > 0]
            if len(set(active)) > 1:
                raise ValueError(f"row {i + 1}: one rate per row (got {sorted(set(active))})")
            pattern.append(tuple(1 if c > 0 else 0 for c in cells))
            rates.append(active[0] if active else 0.0)
        if len({len(row) for row in pattern}) != 1:
            raise ValueError(
                f"every row of an explicit schedule needs the same number of steps "
                f"(got {', '.join(str(len(row)) for row in pattern)})"
            )
        full = all(all(row) or not any(row) for row in pattern) and all(r in (0, 1) for r in rates)
        mode = "conventional" if full else "bpls"
        if all(r in (0, 1) for r in rates):
            written = ["".join(map(str, row)) for row in pattern]
        else:  # rates: the comma form, which :meth:`parse` reads back
            written = [
                ",".join(f"{rate * cell:g}" for cell in row)
                for row, rate in zip(pattern, rates, strict=True)
            ]
        label = name or "/".join(written)
        return cls(tuple(pattern), tuple(rates), mode, (), label, tuple(sum(r) for r in pattern))

    # --------------------------------------------------------------- properties
    @property
    def cycle_length(self) -> int:
        return len(self.pattern[0])

    @property
    def rows(self) -> int:
        return len(self.pattern)

    @property
    def trained_rows(self) -> int:
        """Rows that are ever updated (trailing frozen rows excluded)."""
        return sum(1 for row in self.pattern if any(row))

    @property
    def matrix(self) -> list[list[float]]:
        """Rows (output layer first) x steps: the rate applied in each step (0 = skip).
        For ``rdo`` every step is active and ``keep`` holds the gradient keep rates."""
        return [
            [rate * cell for cell in row]
            for row, rate in zip(self.pattern, self.rates, strict=True)
        ]

    @property
    def mean_rates(self) -> tuple[float, ...]:
        """Each layer's mean learning rate relative to the base (row sum / T)."""
        t = self.cycle_length
        return tuple(
            round(sum(row) * rate * keep / t, 6)
            for row, rate, keep in zip(self.pattern, self.rates, self.keep, strict=True)
        )

    def bits(self) -> list[str]:
        """The update pattern as bit strings, output layer first."""
        return ["".join(map(str, row)) for row in self.pattern]

    def active(self, step: int) -> list[bool]:
        """Which rows are updated at training step ``step`` (column ``step mod T``)."""
        column = step % self.cycle_length
        return [bool(row[column]) for row in self.pattern]

    def in_mode(self, mode: str) -> Schedule:
        """The schedule of ``mode`` derived from this schedule's update counts.

        Example:
            >>> [str(Schedule.parse("4421").in_mode(m)) for m in ("pllr", "upscaled", "rdo")]
            ['4444_lr4421', '4421_lr4444', '4421_rdo']
        """
        if mode not in MODES:
            raise ValueError(f"unknown mode '{mode}'; choose one of: {', '.join(MODES)}")
        counts = self.counts or tuple(sum(r) for r in self.pattern)
        t = self.cycle_length
        digits = "".join(DIGITS[c] for c in counts)
        full = "".join(DIGITS[t if c else 0] for c in counts)
        memory = "_m" if self.memory_optimised else ""
        text = {
            "conventional": full,
            "bpls": digits + memory,
            "pllr": f"{full}_lr{digits}",
            "upscaled": f"{digits}{memory}_lr{full}",
            "rdo": f"{digits}_rdo",
        }[mode]
        return Schedule.parse(text)

    def plans(self, model: object) -> list[list[str]]:
        """One cost-model plan per step: the model's layers updated in that step (rows map
        to the model's last weight layers, output layer first)."""
        from edgetrain.finetune.costing import step_plans

        return step_plans(model, self)  # type: ignore[arg-type]

    def with_pattern(self, pattern: Sequence[Sequence[int]]) -> Schedule:
        """The same schedule with another placement of the updates (same counts)."""
        new = tuple(tuple(int(c) for c in row) for row in pattern)
        if [sum(r) for r in new] != [sum(r) for r in self.pattern]:
            raise ValueError("a new placement must keep every row's number of updates")
        return Schedule(
            new, self.rates, self.mode, self.keep, self.name, self.counts, self.memory_optimised
        )

    def __str__(self) -> str:
        return self.name or "/".join(self.bits())

    @property
    def slug(self) -> str:
        """The schedule as a run or file name: ``/`` between matrix rows becomes ``-``
        and ``,`` between rates ``_`` (``1111/1010`` -> ``1111-1010``)."""
        return str(self).replace("/", "-").replace(",", "_")


def staggered_placement(counts: Sequence[int], cycle: int) -> list[list[int]]:
    """The ``_m`` placement without a cost model: rows that skip steps are placed, from the
    output down, where the fewest such rows are already active (so the lower layers are
    not all trained in the same step); full and frozen rows are unchanged."""
    load = [0] * cycle
    pattern = []
    for s in counts:
        if s in (0, cycle):
            pattern.append(even_placement(s, cycle))
            continue
        best = min(
            range(cycle),
            key=lambda o: (
                max(n + c for n, c in zip(load, even_placement(s, cycle, o), strict=True)),
                o,
            ),
        )
        row = even_placement(s, cycle, best)
        load = [n + c for n, c in zip(load, row, strict=True)]
        pattern.append(row)
    return pattern
