"""DiSPO's fixed-state term ``L_state``, composable on any objective (method ``dispo_<name>``).

At S cached intermediate states per completion, Z fillings of the masked positions were drawn
from the state's own logits and scored by the reward; the term pushes up the better fillings with
the clipped ratio and the k3 KL (:func:`dispo_jax.rl.losses.state_term_loss`). One forward per
state scores its Z branches.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Dict

import jax
import jax.numpy as jnp

from dispo_jax.rl import losses as losses_lib
from dispo_jax.rl.batch import ReplayLogprobs, RLBatch
from dispo_jax.rl.logprobs import Apply, surrogate_logprobs

if TYPE_CHECKING:
  from dispo_jax.rl.learner import ObjectiveSettings

Array = jax.Array


def state_key(key: Array) -> Array:
  """The mask key of the state term (the base term folds in 0)."""
  return jax.random.fold_in(key, 1)


def logprobs(apply: Apply, batch: RLBatch, key: Array, s: "ObjectiveSettings") -> Array:
  """``[N, S, Z, G]`` float32 log-probs of the branch fillings on their state canvases."""
  n, n_states, z, g = batch.actions.shape
  rows = n * n_states
  prompt = jnp.repeat(batch.prompt_tokens, n_states, axis=0)
  key_mask = (None if batch.prompt_key_mask is None
              else jnp.repeat(batch.prompt_key_mask, n_states, axis=0))
  row_ids = (batch.row_ids[:, None] * n_states + jnp.arange(n_states)[None]).reshape(rows)
  canvas = batch.state_canvas.reshape(rows, g)
  logp = surrogate_logprobs(apply, prompt, key_mask, canvas, batch.actions.reshape(rows, z, g),
                            state_key(key), row_ids, p_mask_prompt=s.p_mask_prompt,
                            mask_id=s.mask_id)
  return logp.reshape(n, n_states, z, g)


def denominator(batch: RLBatch, s: "ObjectiveSettings") -> Array:
  """The term's global normaliser (float32 scalar), from the whole batch before micro-batching."""
  return losses_lib.state_denominator(batch.branch_advantages, batch.action_mask,
                                     s.state_normaliser)


def loss(apply: Apply, batch: RLBatch, replay: ReplayLogprobs, key: Array,
         s: "ObjectiveSettings", denominator_value: Array) -> tuple[Array, Dict[str, Array]]:
  """``(L_state, diagnostics)`` of one inner iteration (``replay``: its ``[N, ...]`` slices)."""
  return losses_lib.state_term_loss(
      logprobs(apply, batch, key, s), replay.state_old, replay.state_ref, batch.branch_advantages,
      batch.action_mask, epsilon_low=s.epsilon_low, epsilon_high=s.epsilon_high, beta=s.beta,
      normaliser=s.state_normaliser, ratio=s.state_ratio, denominator=denominator_value,
      row_weights=batch.state_row_weights)
