"""Host memory for XLA:CPU: keep freed memory for the next step instead of returning it.

XLA:CPU allocates every buffer of a run afresh and frees it at the end: one ResNet-18 CIFAR train
step (batch 64 per device) asks for one 510 MB block of temporaries. glibc's ``malloc`` serves a
block that large, from any thread but the main one, with a fresh ``mmap`` and gives it back with
``munmap``, so the next step touches new pages again: about 100,000 page faults per step and
device (see ``benchmarks/results/conv-plans-cpu.md``). Page faults of one process also contend
with each other, so two devices in one process lose more than one.

:func:`keep_host_memory` sets glibc's allocator so that freed memory stays in the process and is
reused (one arena, no ``mmap`` for large blocks, no trimming): after the first step a train step
takes no page faults. The price is that the process keeps its peak memory until it exits, which
is what a training run does anyway. ``jaxconv``'s command line calls it before JAX starts;
scripts call it first thing, or set the same ``MALLOC_*`` variables (listed by
:data:`MALLOC_ENV`) in the environment, or preload a caching allocator (jemalloc, tcmalloc).
"""

from __future__ import annotations

import ctypes
import os
import platform

# glibc's mallopt parameters (malloc.h) and their values; MALLOC_ENV sets the same from outside
# the process (for documentation and child processes). The trim threshold is the largest int
# mallopt takes (2 GiB): a larger free block at the top of the heap is given back, and only costs
# page faults again.
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8
_TRIM = 2**31 - 1
_SETTINGS = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, _TRIM))
MALLOC_ENV = {"MALLOC_ARENA_MAX": "1", "MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(_TRIM)}
_OPT_OUT = "JAXCONV_SYSTEM_MALLOC"


def keep_host_memory() -> bool:
  """Makes glibc's ``malloc`` keep freed memory for reuse; True if it did.

  Call it before the first JAX computation (before JAX starts its CPU threads; a thread that
  has already allocated keeps its own arena). It does nothing, and returns False, where the C
  library is not glibc or when the environment variable ``JAXCONV_SYSTEM_MALLOC`` is set to
  ``1``.

  Example:
    >>> from jaxconv.train import keep_host_memory
    >>> keep_host_memory() in (True, False)
    True
  """
  if os.environ.get(_OPT_OUT, "0") not in ("", "0"):
    return False
  if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
    return False
  try:
    mallopt = ctypes.CDLL(None).mallopt
  except (OSError, AttributeError):
    return False
  mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
  return all(mallopt(param, value) == 1 for param, value in _SETTINGS)
