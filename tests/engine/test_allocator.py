"""Tests of the allocator settings that keep freed gradient memory mapped."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from edgetrain.engine import keep_freed_memory

glibc = pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
    reason="glibc malloc only",
)


# Run in a fresh interpreter: in a long test process the heap's layout (what earlier
# tests left behind) decides whether a new block lands on freed memory, whatever the
# allocator settings.
_REFAULTS = """
import resource, sys, torch
from edgetrain.engine import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
n = 2 << 20  # 8 MiB of float32, as large as a big layer's gradient
first, second = torch.ones(n), torch.ones(n)
del first, second  # 16 MiB free at the top of the heap: trimmed by default
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
again = torch.ones(n)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before, int(again.sum().item()))
"""


def _refaults(mode: str) -> int:
    done = subprocess.run(
        [sys.executable, "-c", _REFAULTS, mode], capture_output=True, text=True, check=True
    )
    faults, total = map(int, done.stdout.split())
    assert total == 2 << 20
    return faults


@glibc
def test_freed_blocks_are_reused_without_page_faults() -> None:
    faults = _refaults("keep")
    assert faults < 256, f"{faults} page faults re-allocating a freed 8 MiB block"
    assert _refaults("default") > 1024  # what the setting prevents: every page again


def test_other_c_libraries_are_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(platform, "libc_ver", lambda: ("", ""))
    assert keep_freed_memory() is False
