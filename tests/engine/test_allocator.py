"""Tests of the allocator settings that keep freed gradient memory mapped."""

from __future__ import annotations

import platform
import sys

import pytest
import torch

from edgetrain.engine import keep_freed_memory

glibc = pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
    reason="glibc malloc only",
)


def _minor_faults() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


@glibc
def test_freed_blocks_are_reused_without_page_faults() -> None:
    assert keep_freed_memory()
    n = 2 << 20  # 8 MiB of float32, as large as a big layer's gradient
    first, second = torch.ones(n), torch.ones(n)
    del first, second  # 16 MiB free at the top of the heap: trimmed by default
    before = _minor_faults()
    again = torch.ones(n)
    faults = _minor_faults() - before
    assert again.sum().item() == n
    assert faults < 256, f"{faults} page faults re-allocating a freed 8 MiB block"


def test_other_c_libraries_are_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(platform, "libc_ver", lambda: ("", ""))
    assert keep_freed_memory() is False
