"""From prompts to an :class:`RLBatch`: rollout, rewards, advantages, DiSPO branches.

Rewards arrive as a plain host function ``reward_fn(completions [R, G] int, prompt_index [R] int)
-> [R] float`` (it decodes and scores; the RL core never imports a task). The branch steps are drawn
from ω(t) *before* the rollout, so the sampler caches logits only at those states.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict

import jax
import jax.numpy as jnp
import numpy as np

from dispo_jax.model.sharding import to_host
from dispo_jax.rl.advantages import get_advantage, group_advantages
from dispo_jax.rl.diagnostics import branch_diagnostics, group_diagnostics
from dispo_jax.rl.learner import ObjectiveSettings, RLBatch
from dispo_jax.rl.losses import base_row_weights
from dispo_jax.rl.spg import sequence_weights as spg_sequence_weights
from dispo_jax.rl.timesteps import sample_branch_steps
from dispo_jax.sampling import SamplerSettings, completion_mask, generate, sample_branches

RewardFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclasses.dataclass(frozen=True)
class RolloutSettings:
  """How one rollout batch is produced.

  Attributes:
    group_size: K completions per prompt.
    num_branches: Z fillings per branch state.
    states_per_prompt: |T_sub|.
    timestep_schedule, timestep_degree: ω(t) (see :mod:`dispo_jax.rl.timesteps`).
    branch_temperature: temperature of the branch draws (None: the rollout's).
    terminal_advantage, branch_advantage: registered advantage names.
  """

  group_size: int = 6
  num_branches: int = 2
  states_per_prompt: int = 1
  timestep_schedule: str = "late"
  timestep_degree: float = 4.0
  branch_temperature: float | None = None
  terminal_advantage: str = "mean"
  branch_advantage: str = "mean"


def _placer(row_sharding):
  """Host array -> global array with rows sharded over the data axes (identity without a mesh).

  Every process holds the same host rows; ``make_array_from_process_local_data`` hands each
  device its slice, so the batch is sharded by process on multi-host meshes.
  """
  if row_sharding is None:
    return jnp.asarray

  def place(x):
    x = np.asarray(x)
    spec = jax.sharding.PartitionSpec(row_sharding.spec[0], *([None] * (x.ndim - 1)))
    sharding = jax.sharding.NamedSharding(row_sharding.mesh, spec)
    return jax.make_array_from_process_local_data(sharding, x, x.shape)
  return place


def _checked_rewards(values, expected: int, what: str) -> np.ndarray:
  rewards = np.asarray(values, dtype=np.float32)
  if rewards.shape != (expected,):
    raise ValueError(f"reward_fn returned shape {rewards.shape} for {what}; expected ({expected},)")
  if not np.all(np.isfinite(rewards)):
    raise ValueError(f"reward_fn returned non-finite rewards for {what}: {rewards}")
  return rewards


def step_token_mask(action_mask: jax.Array, filled: jax.Array, eos_id: int, step_tokens: str
                    ) -> jax.Array:
  """``[N, S, Z, G]`` tokens the step term scores (``ObjectiveSettings.step_tokens``).

  Args:
    action_mask: ``[N, S, G]`` bool, the positions the branches filled (False for unused slots).
    filled: ``[N, S, Z, G]`` int32 filled branch completions.
  """
  positions = jnp.broadcast_to(action_mask[:, :, None, :], filled.shape)
  if step_tokens == "action_with_tail":
    return positions
  upto_eos = completion_mask(filled, eos_id)
  if step_tokens == "all":
    used = jnp.any(action_mask, -1)[:, :, None, None]
    return upto_eos & used
  return positions & upto_eos


def collect(key: jax.Array, graphdef, params: Any, prompt_tokens: np.ndarray,
            prompt_lengths: np.ndarray, reward_fn: RewardFn, sampler: SamplerSettings,
            objective: ObjectiveSettings, rollout: RolloutSettings, eos_id: int,
            row_offset: int = 0, row_sharding=None) -> tuple[RLBatch, Dict[str, Any]]:
  """Runs the rollout for ``n`` prompts × K and returns the batch (without old/ref log-probs).

  Args:
    prompt_tokens: ``[n, P]`` int32 left-padded prompts; lengths ``[n]``.
    row_offset: global index of this batch's first row (for per-row prompt masks across hosts).
    row_sharding: optional ``NamedSharding`` of ``[rows, length]`` arrays (rows over the data axes).
  Returns:
    ``(batch, metrics)``; metrics hold host floats and the rollout itself under ``"rollout"``.
  """
  k = rollout.group_size
  n_prompts = prompt_tokens.shape[0]
  rows = n_prompts * k
  host_prompts = np.repeat(np.asarray(prompt_tokens, np.int32), k, axis=0)
  host_lengths = np.repeat(np.asarray(prompt_lengths, np.int32), k, axis=0)
  place = _placer(row_sharding)
  prompts, lengths = place(host_prompts), place(host_lengths)
  prompt_index = np.repeat(np.arange(n_prompts), k)
  step_key, sample_key, branch_key = jax.random.split(key, 3)

  branch_steps = host_steps = None
  if objective.use_step:
    host_steps = to_host(sample_branch_steps(
        step_key, n_prompts, k, sampler.steps, rollout.states_per_prompt,
        rollout.timestep_schedule, rollout.timestep_degree))
    branch_steps = place(host_steps)
  result = generate(graphdef, params, prompts, lengths, sample_key, sampler, branch_steps)
  completion = result.completion
  rewards = _checked_rewards(reward_fn(to_host(completion), prompt_index), rows, "completions")
  advantages = group_advantages(jnp.asarray(rewards), k, rollout.terminal_advantage)
  metrics: Dict[str, Any] = dict(group_diagnostics(jnp.asarray(rewards), advantages, k))
  advantages = place(to_host(advantages))

  key_mask = None
  if sampler.mask_padding:
    width = host_prompts.shape[1]
    key_mask = place(np.arange(width)[None] >= (width - host_lengths)[:, None])
  batch = RLBatch(prompt_tokens=prompts, prompt_key_mask=key_mask, completion=completion,
                  completion_mask=completion_mask(completion, eos_id), advantages=advantages,
                  commit_step=result.commit_step,
                  row_ids=place(np.arange(rows, dtype=np.int32) + row_offset))
  if objective.uses_spg:
    batch = batch.replace(sequence_weights=spg_sequence_weights(batch.completion_mask, k))
  else:
    batch = batch.replace(base_row_weights=base_row_weights(batch.completion_mask, k,
                                                            objective.base_normaliser))

  if objective.use_step:
    z = rollout.num_branches
    temperature = (sampler.temperature if rollout.branch_temperature is None
                   else rollout.branch_temperature)
    filled, action_mask = sample_branches(branch_key, result.branch_canvas, result.branch_logits,
                                          result.branch_logit_ids, z, temperature, sampler.mask_id)
    n_states = filled.shape[1]
    flat = to_host(filled).reshape(rows * n_states * z, -1)
    branch_rewards = _checked_rewards(
        reward_fn(flat, np.repeat(prompt_index, n_states * z)), flat.shape[0], "branches")
    branch_rewards = branch_rewards.reshape(rows, n_states, z)
    used = host_steps >= 0
    branch_adv = np.asarray(get_advantage(rollout.branch_advantage)(jnp.asarray(branch_rewards)))
    branch_adv = np.where(used[..., None], branch_adv, 0.0).astype(np.float32)
    action_mask = step_token_mask(action_mask & place(used)[..., None], filled, eos_id,
                                  objective.step_tokens)
    batch = batch.replace(state_canvas=result.branch_canvas, actions=filled,
                          action_mask=action_mask, branch_advantages=place(branch_adv))
    metrics.update(branch_diagnostics(jnp.asarray(branch_rewards), jnp.asarray(branch_adv),
                                      jnp.asarray(host_steps), sampler.steps))
  metrics = {name: float(value) for name, value in metrics.items()}
  metrics["rollout"] = result
  metrics["rewards"] = rewards
  return batch, metrics
