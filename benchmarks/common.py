"""Timing helpers shared by the benchmark scripts (wall clock, compiled functions, median of runs)."""

from __future__ import annotations

import statistics
import time
from typing import Callable

import jax


def time_fn(fn: Callable[[], object], repeats: int = 5, warmup: int = 1) -> float:
  """Median wall-clock seconds of ``fn()`` (results blocked on), after ``warmup`` calls."""
  for _ in range(warmup):
    jax.block_until_ready(fn())
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return statistics.median(times)
