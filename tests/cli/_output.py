"""Helpers for reading what a command printed."""

from __future__ import annotations


def one_line(output: str) -> str:
    """The only non-blank line of ``output`` (a failure is one line, not a usage box)."""
    lines = [ln for ln in output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, output
    return lines[0]
