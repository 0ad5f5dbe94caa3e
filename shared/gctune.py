"""Garbage-collector settings for long-running services.

A full (generation 2) collection walks every tracked object, and a started FastAPI app holds hundreds of
thousands of them (modules, pydantic schemas, routes): measured in the gateway under ``bench.orders``, one
took 30-55 ms and came every half second, a stall for every request in flight. ``frozen()`` collects once,
then freezes what exists at startup (``gc.freeze``: never scanned again) and raises the first threshold, so the
young generation is collected less often and a request's short-lived objects die before being promoted.
Leaving the block undoes both, so several apps started and stopped in one process (tests) leak nothing.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

YOUNG_THRESHOLD = 20_000


@contextmanager
def frozen(young_threshold: int = YOUNG_THRESHOLD) -> Iterator[None]:
    before = gc.get_threshold()
    gc.collect()
    gc.freeze()
    gc.set_threshold(young_threshold, *before[1:])
    try:
        yield
    finally:
        gc.set_threshold(*before)
        gc.unfreeze()
