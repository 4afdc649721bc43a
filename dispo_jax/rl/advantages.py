"""Advantage estimators, registered by name.

Terminal (diffu-GRPO, d1): ``A_j = R_j − mean_group(R)``, no std division.
Branch (DiSPO): ``A_z = R_z − mean_z R`` (paper; biased by (Z−1)/Z in expectation) or leave-one-out
``A_z = R_z − mean_{z'≠z} R_{z'} = Z/(Z−1) (R_z − mean_z R)`` (unbiased; Theorem A.1).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from dispo_jax.registry import Registry

Array = jax.Array
AdvantageFn = Callable[[Array], Array]
ADVANTAGES: Registry[AdvantageFn] = Registry("advantage")
register_advantage = ADVANTAGES.register
get_advantage = ADVANTAGES.get


@register_advantage("mean")
def mean_centred(rewards: Array) -> Array:
  """``rewards [..., n] -> rewards − mean over the last axis`` (float32)."""
  rewards = rewards.astype(jnp.float32)
  return rewards - rewards.mean(axis=-1, keepdims=True)


@register_advantage("leave_one_out")
def leave_one_out(rewards: Array) -> Array:
  """``R_z − mean of the other n−1`` along the last axis (needs n ≥ 2)."""
  n = rewards.shape[-1]
  if n < 2:
    raise ValueError(f"leave-one-out needs at least 2 samples per group, got {n}")
  return mean_centred(rewards) * (n / (n - 1))


@register_advantage("zscore")
def zscore(rewards: Array, eps: float = 1e-4) -> Array:
  """GRPO's standardised advantage ``(R − mean) / (std + eps)`` (not what d1 ran; an option)."""
  rewards = rewards.astype(jnp.float32)
  return mean_centred(rewards) / (rewards.std(axis=-1, keepdims=True) + eps)


def group_advantages(rewards: Array, group_size: int, name: str = "mean") -> Array:
  """Terminal advantages for ``rewards [N]`` laid out as consecutive groups of ``group_size``."""
  if rewards.shape[0] % group_size:
    raise ValueError(f"{rewards.shape[0]} rewards do not split into groups of {group_size}")
  grouped = rewards.reshape(-1, group_size)
  return get_advantage(name)(grouped).reshape(rewards.shape)
