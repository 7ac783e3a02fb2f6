"""JSON-lines logs: one record per line, appended and flushed as written, read back with
a torn last line (from a crash) skipped, and trimmed atomically when a run resumes.

``metrics.jsonl`` and every diagnostic log of a run directory (``patterns.jsonl``,
``lr_sensitivity.jsonl``, ``actcool.jsonl``) go through :class:`JsonLines`.

Example:
    >>> import tempfile, pathlib
    >>> log = JsonLines(pathlib.Path(tempfile.mkdtemp()) / "m.jsonl", strict=True)
    >>> log.append({"epoch": 1, "loss": 0.5}, {"epoch": 2, "loss": float("inf")})
    >>> [r["loss"] for r in log.read()]
    [0.5, None]
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from edgetrain._atomic import atomic_writer

__all__ = ["JsonLines"]


def _finite(value: Any) -> Any:
    """Infinities and NaN as null (strict JSON), recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


class JsonLines:
    """A JSON-lines file of records (dicts).

    Args:
        path: the file.
        strict: write infinities and NaN as null (strict JSON, for other tools);
            otherwise as Python's ``Infinity``/``NaN`` tokens, which read back as floats.
    """

    def __init__(self, path: str | os.PathLike[str], strict: bool = False) -> None:
        self.path = Path(path)
        self.strict = strict

    def _line(self, record: dict[str, Any]) -> str:
        return json.dumps(_finite(record) if self.strict else record, default=float) + "\n"

    def __repr__(self) -> str:
        return f"JsonLines('{self.path}')"

    def append(self, *records: dict[str, Any]) -> None:
        """Append records and flush them to disk before returning."""
        if not records:
            return
        with self.path.open("a", encoding="utf-8") as f:
            f.write("".join(self._line(r) for r in records))
            f.flush()
            os.fsync(f.fileno())

    def read(self) -> list[dict[str, Any]]:
        """Every complete record (a torn or malformed line is skipped); [] without a file."""
        if not self.path.is_file():
            return []
        records = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict):
                records.append(record)
        return records

    def rewrite(self, records: Iterable[dict[str, Any]]) -> None:
        """Replace the file's records atomically."""
        with atomic_writer(self.path, "w") as f:
            f.write("".join(self._line(r) for r in records))

    def keep(self, predicate: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
        """Keep only the records ``predicate`` accepts (on resume: those written before
        the step or epoch the run continues from); returns them."""
        kept = [r for r in self.read() if predicate(r)]
        self.rewrite(kept)
        return kept
