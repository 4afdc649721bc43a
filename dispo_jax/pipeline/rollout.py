"""From prompts to an :class:`RLBatch`: rollout, rewards, advantages, DiSPO branches.

Two parts: the terminal part (sample K completions per prompt, score them, group advantages, loss
weights) and the branch part (DiSPO: refill each cached branch state Z times, score the fillings,
branch advantages). The branch timesteps are drawn from ω(t) *before* the rollout, so the sampler
caches logits only at those states. Rewards arrive as a plain host function (see
:mod:`dispo_jax.pipeline.rewards`): nothing here imports a task.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict

import jax
import jax.numpy as jnp
import numpy as np

from dispo_jax.checks import require
from dispo_jax.model.sharding import row_placer, to_host
from dispo_jax.pipeline.rewards import RewardFn
from dispo_jax.rl import timesteps
from dispo_jax.rl.advantages import ADVANTAGES, get_advantage, group_advantages
from dispo_jax.rl.batch import RLBatch
from dispo_jax.rl.diagnostics import branch_diagnostics, credited_tokens, group_diagnostics
from dispo_jax.rl.learner import ObjectiveSettings
from dispo_jax.rl.losses import state_row_weights, state_token_mask
from dispo_jax.sampling import SamplerSettings, completion_mask, generate, sample_branches
from dispo_jax.sampling.decoding import REWARD_TEXTS
from dispo_jax.sampling.sampler import Rollout


@dataclasses.dataclass(frozen=True)
class RolloutSettings:
  """How one rollout batch is produced (config section ``rollout``, one key per field).

  Attributes:
    prompts_per_batch: prompts of one rollout batch.
    group_size: K completions per prompt.
    max_prompt_length: prompts are left-truncated to this many tokens.
    num_branches: Z fillings per branch state (DiSPO).
    states_per_prompt: |T_sub|, branch states per rollout row.
    timestep_schedule, timestep_degree: ω(t) (see :mod:`dispo_jax.rl.timesteps`).
    branch_temperature: temperature of the branch draws (None: the rollout's).
    terminal_advantage, branch_advantage: registered advantage names
      (:data:`dispo_jax.rl.advantages.ADVANTAGES`).
    reward_text: the text the rewards see: ``whole`` (every non-special token of the completion,
      also after an EOS; d1's rule) or ``first_eos`` (the text before the first EOS).
  """

  prompts_per_batch: int = 16
  group_size: int = 6
  max_prompt_length: int = 200
  num_branches: int = 2
  states_per_prompt: int = 1
  timestep_schedule: str = "late"
  timestep_degree: float = 4.0
  branch_temperature: float | None = None
  terminal_advantage: str = "mean"
  branch_advantage: str = "mean"
  reward_text: str = "whole"

  def __post_init__(self):
    checks = [
        ("prompts_per_batch", self.prompts_per_batch >= 1, ">= 1"),
        ("group_size", self.group_size >= 2, ">= 2 (group-centred advantages)"),
        ("max_prompt_length", self.max_prompt_length >= 1, ">= 1"),
        ("num_branches", self.num_branches >= 2, ">= 2"),
        ("states_per_prompt", self.states_per_prompt >= 1, ">= 1"),
        ("timestep_schedule", self.timestep_schedule in timesteps.SCHEDULES,
         f"one of {list(timesteps.SCHEDULES)}"),
        ("timestep_degree", bool(np.isfinite(self.timestep_degree)), "finite"),
        ("branch_temperature", self.branch_temperature is None or self.branch_temperature >= 0,
         "None or >= 0"),
        ("terminal_advantage", self.terminal_advantage in ADVANTAGES, f"one of {sorted(ADVANTAGES)}"),
        ("branch_advantage", self.branch_advantage in ADVANTAGES, f"one of {sorted(ADVANTAGES)}"),
        ("reward_text", self.reward_text in REWARD_TEXTS, f"one of {list(REWARD_TEXTS)}"),
    ]
    require(self, checks)


@dataclasses.dataclass(frozen=True)
class CollectSettings:
  """Everything static that :func:`collect` needs, in one bundle."""

  sampler: SamplerSettings
  objective: ObjectiveSettings
  rollout: RolloutSettings
  eos_id: int


def checked_rewards(values, expected: int, what: str) -> np.ndarray:
  """``values`` as ``[expected]`` float32, or a ``ValueError`` naming the shape or the values."""
  rewards = np.asarray(values, dtype=np.float32)
  if rewards.shape != (expected,):
    raise ValueError(f"reward_fn returned shape {rewards.shape} for {what}; expected ({expected},)")
  if not np.all(np.isfinite(rewards)):
    raise ValueError(f"reward_fn returned non-finite rewards for {what}: {rewards}")
  return rewards


def collect(key: jax.Array, graphdef, params: Any, prompt_tokens: np.ndarray,
            prompt_lengths: np.ndarray, reward_fn: RewardFn, settings: CollectSettings,
            row_offset: int = 0, row_sharding=None
            ) -> tuple[RLBatch, Dict[str, float]]:
  """Runs the rollout for ``n`` prompts × K and returns the batch (without replay log-probs).

  Args:
    prompt_tokens: ``[n, P]`` int32 left-padded prompts; prompt_lengths ``[n]`` int32.
    row_offset: global index of this batch's first row (for per-row prompt masks across hosts).
    row_sharding: optional ``NamedSharding`` of ``[rows, length]`` arrays (rows over the data axes).
  Returns:
    ``(batch, metrics)``: metrics are host floats.
  """
  step_key, sample_key, branch_key = jax.random.split(key, 3)
  place = row_placer(row_sharding)
  k = settings.rollout.group_size
  host_prompts = np.repeat(np.asarray(prompt_tokens, np.int32), k, axis=0)
  host_lengths = np.repeat(np.asarray(prompt_lengths, np.int32), k, axis=0)
  prompt_index = np.repeat(np.arange(len(prompt_tokens)), k)  # [rows] the prompt of each row
  host_timesteps = None
  if settings.objective.adds_state_term:
    host_timesteps = to_host(timesteps.sample_branch_timesteps(
        step_key, len(prompt_tokens), k, settings.sampler.num_timesteps,
        settings.rollout.states_per_prompt, settings.rollout.timestep_schedule,
        settings.rollout.timestep_degree))
  result = generate(graphdef, params, place(host_prompts), place(host_lengths), sample_key,
                    settings.sampler, None if host_timesteps is None else place(host_timesteps))
  batch, metrics = _terminal_part(result, host_prompts, host_lengths, prompt_index,
                                  reward_fn, settings, row_offset, place)
  if host_timesteps is not None:
    batch, branch_metrics, _ = _branch_part(
        branch_key, batch, result, host_timesteps, prompt_index, reward_fn, settings, place)
    metrics.update(branch_metrics)
  batch.check_shapes()
  return batch, metrics


def weight_fields(completion_mask: jax.Array | None, action_mask: jax.Array | None,
                  group_size: int, objective: ObjectiveSettings) -> Dict[str, jax.Array]:
  """The ``RLBatch`` fields of the loss normalisers, from the whole batch: the base term's row
  weights from ``completion_mask [N, G]`` bool (its objective's own), the state term's group
  weights from ``action_mask [N, S, Z, G]`` bool; a None mask skips its term."""
  fields = {}
  if completion_mask is not None:
    fields.update(objective.base_term.row_weights(completion_mask, group_size, objective))
  if action_mask is not None and objective.state_normaliser == "group":
    fields["state_row_weights"] = state_row_weights(action_mask, group_size)
  return fields


def _terminal_part(result: Rollout, host_prompts: np.ndarray, host_lengths: np.ndarray,
                   prompt_index: np.ndarray, reward_fn: RewardFn, settings: CollectSettings,
                   row_offset: int, place) -> tuple[RLBatch, Dict[str, float]]:
  """Rewards, group advantages and the base term's weights of the K completions per prompt."""
  k, rows = settings.rollout.group_size, host_prompts.shape[0]
  rewards = checked_rewards(reward_fn(to_host(result.completion), prompt_index), rows,
                            "completions")
  advantages = group_advantages(jnp.asarray(rewards), k, settings.rollout.terminal_advantage)
  metrics = {name: float(v) for name, v in
             group_diagnostics(jnp.asarray(rewards), advantages, k).items()}
  key_mask = None
  if settings.sampler.mask_padding:
    width = host_prompts.shape[1]
    key_mask = place(np.arange(width)[None] >= (width - host_lengths)[:, None])
  done = completion_mask(result.completion, settings.eos_id)
  metrics["base/credited_tokens"] = float(credited_tokens(to_host(done), advantages))
  metrics["sampler/timesteps_taken"] = float(to_host(result.commit_timestep).max() + 1)
  batch = RLBatch(prompt_tokens=place(host_prompts), prompt_key_mask=key_mask,
                  completion=result.completion, completion_mask=done,
                  advantages=place(to_host(advantages)), commit_timestep=result.commit_timestep,
                  behaviour_logp=result.behaviour_logp,
                  row_ids=place(np.arange(rows, dtype=np.int32) + row_offset))
  batch = batch.replace(**weight_fields(done, None, k, settings.objective))
  return batch, metrics


def _branch_part(key: jax.Array, batch: RLBatch, result: Rollout, host_timesteps: np.ndarray,
                 prompt_index: np.ndarray, reward_fn: RewardFn, settings: CollectSettings,
                 place) -> tuple[RLBatch, Dict[str, float], np.ndarray]:
  """DiSPO's branches: Z fillings of every cached state, their rewards and advantages."""
  sampler, rollout = settings.sampler, settings.rollout
  z, rows = rollout.num_branches, batch.num_rows
  temperature = (sampler.temperature if rollout.branch_temperature is None
                 else rollout.branch_temperature)
  filled, action_mask = sample_branches(key, result.branch_canvas, result.branch_logits,
                                        result.branch_logit_ids, z, temperature, sampler.mask_id)
  n_states = filled.shape[1]
  flat = to_host(filled).reshape(rows * n_states * z, -1)
  branch_rewards = checked_rewards(
      reward_fn(flat, np.repeat(prompt_index, n_states * z)), flat.shape[0], "branches")
  branch_rewards = branch_rewards.reshape(rows, n_states, z)
  used = host_timesteps >= 0
  branch_adv = np.asarray(get_advantage(rollout.branch_advantage)(jnp.asarray(branch_rewards)))
  branch_adv = np.where(used[..., None], branch_adv, 0.0).astype(np.float32)
  action_mask = state_token_mask(action_mask & place(used)[..., None], filled, settings.eos_id,
                                settings.objective.state_tokens)
  batch = batch.replace(state_canvas=result.branch_canvas, actions=filled,
                        action_mask=action_mask, branch_advantages=place(branch_adv))
  batch = batch.replace(**weight_fields(None, action_mask, rollout.group_size,
                                        settings.objective))
  metrics = branch_diagnostics(jnp.asarray(branch_rewards), jnp.asarray(branch_adv),
                               jnp.asarray(host_timesteps), sampler.num_timesteps)
  metrics["state/credited_tokens"] = credited_tokens(to_host(action_mask), jnp.asarray(branch_adv))
  return batch, {name: float(v) for name, v in metrics.items()}, branch_rewards
