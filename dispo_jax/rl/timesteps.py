"""The branch-state timestep distribution ω(t) and the per-prompt subset T_sub (docs/METHOD.md §1).

Decision (the paper does not print the formula): over timesteps ``t = 0..T−1`` (0 = first denoising
timestep), ``late`` ω(t) ∝ ((t+1)/T)^k, ``early`` ω(t) ∝ ((T−t)/T)^k, ``uniform`` ω(t) ∝ 1; k = 4 by
default. Each prompt draws |T_sub| distinct timesteps, shared by its K trajectories (S = {1..K} × T_sub).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
SCHEDULES = ("late", "uniform", "early")


def timestep_weights(num_timesteps: int, kind: str = "late", degree: float = 4.0) -> np.ndarray:
  """``[T]`` float64 probabilities ω(t)."""
  t = np.arange(num_timesteps, dtype=np.float64)
  if kind == "late":
    w = ((t + 1) / num_timesteps) ** degree
  elif kind == "early":
    w = ((num_timesteps - t) / num_timesteps) ** degree
  elif kind == "uniform":
    w = np.ones(num_timesteps)
  else:
    raise ValueError(f"unknown timestep schedule {kind!r}; choose one of {SCHEDULES}")
  return w / w.sum()


def sample_branch_timesteps(key: Array, num_prompts: int, group_size: int, num_timesteps: int,
                        states_per_prompt: int = 1, kind: str = "late",
                        degree: float = 4.0) -> Array:
  """``[num_prompts × group_size, |T_sub|]`` int32 branch timesteps (rows grouped by prompt).

  Each prompt samples ``states_per_prompt`` distinct timesteps from ω without replacement; all
  ``group_size`` rows of that prompt share them, sorted ascending.
  """
  if states_per_prompt > num_timesteps:
    raise ValueError(f"|T_sub|={states_per_prompt} exceeds the {num_timesteps} timesteps")
  probs = jnp.asarray(timestep_weights(num_timesteps, kind, degree), jnp.float32)
  keys = jax.random.split(key, num_prompts)
  per_prompt = jax.vmap(lambda k: jnp.sort(jax.random.choice(
      k, num_timesteps, (states_per_prompt,), replace=False, p=probs)))(keys)
  return jnp.repeat(per_prompt.astype(jnp.int32), group_size, axis=0)


def timestep_bins(timesteps: Array, num_timesteps: int) -> Array:
  """0 = early (t < 0.3T), 1 = mid (0.3T ≤ t < 0.7T), 2 = late (t ≥ 0.7T); −1 for unused (t < 0)."""
  frac = timesteps.astype(jnp.float32) / num_timesteps
  bins = jnp.where(frac < 0.3, 0, jnp.where(frac < 0.7, 1, 2))
  return jnp.where(timesteps < 0, -1, bins)
