"""Allocator settings that keep CPU step times steady.

``zero_grad(set_to_none=True)`` frees every weight gradient each step and the next
backward allocates it afresh. glibc's ``malloc`` hands the top of its heap back to the
kernel once more than ``M_TRIM_THRESHOLD`` bytes are free there; by default that
threshold is twice the dynamic mmap threshold, i.e. twice the largest separately mapped
block freed so far (12.8 MB once a 6.4 MB gradient has been freed). Whether a freed
gradient joins a free region that large depends on the heap layout left by everything
the process did before and on the order of the step's allocations. So in some runs one
step in two to four hands the gradient's pages back and the next backward faults all of
them in again (1,568 page faults for ``kws_cnn``'s ``fc1`` gradient; the matrix product
that writes it then takes 3.7 ms instead of 0.2 ms on a 2-core VM), and in other runs of
the same model and schedule no step does. At batch 1 that noise is larger than the
saving of a layer schedule.

:func:`keep_freed_memory` fixes both thresholds, so freed blocks stay mapped and are
reused. Freed memory is then not returned to the system while the process runs, and
blocks above ``mmap_threshold`` (at most 32 MiB) are still mapped per allocation.
"""

from __future__ import annotations

import ctypes
import platform
import sys

__all__ = ["keep_freed_memory"]

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def keep_freed_memory(trim_threshold: int = 1 << 30, mmap_threshold: int = 32 << 20) -> bool:
    """Stop glibc ``malloc`` from returning freed memory to the system (process-wide).

    Args:
        trim_threshold: free bytes at the top of the heap before it is trimmed.
        mmap_threshold: blocks at least this large get their own mapping (glibc caps it
            at 32 MiB on 64-bit systems).

    Returns:
        True when both settings were applied; False where the C library is not glibc.

    Example:
        >>> from edgetrain.engine.memory import keep_freed_memory
        >>> keep_freed_memory()  # doctest: +SKIP
        True
    """
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # The trim threshold first: setting either one turns off glibc's dynamic thresholds.
    trimmed = mallopt(_M_TRIM_THRESHOLD, trim_threshold)
    mapped = mallopt(_M_MMAP_THRESHOLD, mmap_threshold)
    return bool(trimmed and mapped)
