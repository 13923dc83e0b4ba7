"""Process-wide settings that keep a long batch run's memory flat and its CPU on the work.

``tune_process()`` applies them once per process: the driver calls it first thing, and the
DoFns call it in ``setup``, so the worker processes of a cluster runner get them too.
"""

from __future__ import annotations

import ctypes
import importlib.abc
import importlib.util
import sys
import threading
from typing import Any

_DONE: set[str] = set()
_LOCK = threading.Lock()


def tune_process() -> None:
    """Applies the settings below, once each; Arrow's once Arrow is loaded (the driver loads
    it only when there is something to compute, and the DoFns call this again)."""
    with _LOCK:
        for apply, needs in (
            (release_heap_memory_promptly, None),
            (no_repeated_pandas_imports, None),
            (release_arrow_memory_promptly, "pyarrow"),
        ):
            if apply.__name__ in _DONE or (needs is not None and needs not in sys.modules):
                continue
            apply()
            _DONE.add(apply.__name__)


def release_heap_memory_promptly() -> None:
    """glibc's allocator raises its mmap threshold as big blocks are freed, after which the
    batches' numpy arrays and COPY buffers come from heaps that fragment and are not handed
    back, one heap per thread: the process grows with the number of batches. A fixed 1 MiB
    threshold (big blocks are mapped, and unmapped when freed) and two heaps keep the peak
    flat. Elsewhere than glibc, nothing to do."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD
        libc.mallopt(-8, 2)  # M_ARENA_MAX
    except (OSError, AttributeError):
        pass


def trim_heap() -> None:
    """Hands the heap's free pages back to the system (glibc ``malloc_trim``): called after
    each flush, it keeps a long run's footprint from creeping up as its heaps fragment."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


#: How long Arrow's allocator keeps freed memory before handing it back (milliseconds).
ARROW_DECAY_MS = 1000


def release_arrow_memory_promptly() -> None:
    """Arrow's allocator (jemalloc) keeps freed memory for reuse for 10 s by default; with a
    new table per range, that shows as memory growing with the number of ranges. It hands
    memory back after ``ARROW_DECAY_MS`` instead: long enough that the next batch reuses the
    pages the last one freed (handing them back at once cost a page fault for every page of
    every batch: a fifth of a run's system time), short enough that the footprint stays flat."""
    import pyarrow as pa

    try:
        pa.jemalloc_set_decay_ms(ARROW_DECAY_MS)
    except NotImplementedError:  # built without jemalloc: another allocator, nothing to tune
        pass


def no_repeated_pandas_imports() -> None:
    """Without pandas installed, pyarrow tries to import it again on every ``pa.array`` and
    many compute calls, and each failed import searches ``sys.path`` anew: measured, 40% of the
    time to encode a results batch. A finder that knows pandas is absent makes each of those
    attempts fail at once, with the same ``ModuleNotFoundError``. When pandas is installed,
    nothing changes."""
    if importlib.util.find_spec("pandas") is None:
        sys.meta_path.insert(0, _Absent("pandas"))


class _Absent(importlib.abc.MetaPathFinder):
    """Fails the import of one top-level module that is known not to be installed."""

    def __init__(self, name: str) -> None:
        self._name = name

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> None:
        if fullname == self._name or fullname.startswith(self._name + "."):
            raise ModuleNotFoundError(f"No module named {fullname!r}", name=fullname)
        return None
