"""How long each stage works, summed over its workers: Beam counters in milliseconds, which the
run turns into the thread-seconds of its breakdown (``summary.busy_seconds``)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from apache_beam.metrics import Metrics

#: The counters' namespace; each is named ``<stage>_ms``.
NAMESPACE = "time"
SUFFIX = "_ms"


class Busy:
    """Adds the time spent inside ``with busy():`` to the stage's counter."""

    def __init__(self, stage: str) -> None:
        self._counter = Metrics.counter(NAMESPACE, f"{stage}{SUFFIX}")

    @contextmanager
    def __call__(self) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self._counter.inc(round((time.perf_counter() - started) * 1000))
