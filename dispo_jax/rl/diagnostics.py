"""Reward and advantage diagnostics (host-free, jittable)."""

from __future__ import annotations

from typing import Dict

import jax
import jax.numpy as jnp

from dispo_jax.rl.timesteps import timestep_bins

Array = jax.Array
BIN_NAMES = ("early", "mid", "late")


def advantage_stats(advantages: Array, prefix: str) -> Dict[str, Array]:
  a = advantages.astype(jnp.float32)
  return {f"{prefix}adv_mean": a.mean(), f"{prefix}adv_std": a.std(),
          f"{prefix}adv_min": a.min(), f"{prefix}adv_max": a.max()}


def group_diagnostics(rewards: Array, advantages: Array, group_size: int) -> Dict[str, Array]:
  """Reward stats and the fraction of prompt groups whose rewards all tie (zero advantage)."""
  grouped = rewards.reshape(-1, group_size).astype(jnp.float32)
  tied = jnp.all(grouped == grouped[:, :1], axis=-1)
  out = {"reward_mean": grouped.mean(), "reward_std": grouped.std(),
         "group_zero_adv_frac": tied.mean()}
  out.update(advantage_stats(advantages, "base/"))
  return out


def credited_tokens(token_mask: Array, advantages: Array) -> Array:
  """How many scored tokens get a non-zero advantage (float32 scalar): the credit a term hands out.

  Args:
    token_mask: ``[..., G]`` bool, the tokens a term scores (a completion up to its EOS; a branch
      filling's action tokens).
    advantages: ``[...]``, one advantage per completion or filling.
  """
  return jnp.sum(token_mask & (advantages != 0)[..., None]).astype(jnp.float32)


def branch_diagnostics(branch_rewards: Array, branch_advantages: Array, branch_timesteps: Array,
                       num_timesteps: int) -> Dict[str, Array]:
  """Branch-state diagnostics.

  Args:
    branch_rewards, branch_advantages: ``[N, S, Z]``.
    branch_timesteps: ``[N, S]`` int32 (−1 = unused slot).
    num_timesteps: T.

  Returns the zero-advantage fraction over used states and, per timestep bin (early < 0.3T ≤ mid
  < 0.7T ≤ late), the number of states and the fraction whose Z rewards are not all equal
  ("reward-distinguishable"; the paper reports 4.5 / 9.2 / 43.8 %). Empty bins report NaN.
  """
  used = branch_timesteps >= 0
  r = branch_rewards.astype(jnp.float32)
  distinguishable = jnp.any(r != r[..., :1], axis=-1) & used
  zero_adv = jnp.all(branch_advantages == 0, axis=-1) & used
  n_used = jnp.maximum(used.sum(), 1)
  out = {"state/zero_adv_frac": zero_adv.sum() / n_used,
         "state/distinguishable_frac": distinguishable.sum() / n_used,
         "state/branch_reward_mean": jnp.sum(r.mean(-1) * used) / n_used}
  bins = timestep_bins(branch_timesteps, num_timesteps)
  for index, name in enumerate(BIN_NAMES):
    in_bin = bins == index
    count = in_bin.sum()
    out[f"state/states_{name}"] = count
    out[f"state/distinguishable_{name}"] = jnp.where(
        count > 0, (distinguishable & in_bin).sum() / jnp.maximum(count, 1), jnp.nan)
  out.update(advantage_stats(jnp.where(used[..., None], branch_advantages, 0.0), "state/"))
  return out
