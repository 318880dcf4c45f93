"""Timing helper shared by the benchmark scripts: median of repeated runs after one warm-up run."""

from __future__ import annotations

import statistics
import time


def median_time(fn, repeats: int) -> float:
    fn()  # warm-up (file cache, lazy imports, allocator)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)
