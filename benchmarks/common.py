"""Timing helpers shared by the benchmark scripts (wall clock, compiled functions, median of runs)."""

from __future__ import annotations

import statistics
import time
from typing import Callable

import jax
import numpy as np


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


# A one-layer model with a 64-token vocabulary: every benchmark runs end to end in seconds on it
# (``--preset=toy``, what the tests run); its timings mean nothing.
TOY = {"vocab_size": 64, "d_model": 32, "n_layers": 1, "n_heads": 2, "mlp_hidden_size": 64}


def model_config(preset: str, **overrides):
  """:func:`dispo_jax.model.config.get_config` of ``preset``, or ``toy`` (:data:`TOY`)."""
  from dispo_jax.model.config import get_config

  if preset == "toy":
    return get_config("tiny", **TOY, **overrides)
  return get_config(preset, **overrides)


def random_prompts(cfg, n: int, length: int, seed: int = 0, high: int = 1000):
  """``([n, length] int32 prompts, [n] int32 lengths)``: ids drawn below ``high`` and below the
  vocabulary's special ids (an id past the embedding table would read NaNs)."""
  special = min(cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id, cfg.mask_token_id)
  prompts = np.random.default_rng(seed).integers(0, min(high, special), (n, length))
  return prompts.astype(np.int32), np.full((n,), length, np.int32)
