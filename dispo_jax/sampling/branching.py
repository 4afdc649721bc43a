"""DiSPO's branching resampler: Z joint fillings per cached branch state, no forward passes.

At a branch state ``s = (q, x_t)`` the action is a filling of *every* masked position; the policy
factorises over positions, so each masked position is drawn independently from
``softmax(action_logits(cached logits) / τ)``. ``FILL(x_t, a)`` writes the action into the masked
positions and leaves every other position unchanged.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from dispo_jax.sampling.sampler import Rollout, action_logits

Array = jax.Array


def _sample_positions(key: Array, logits: Array, ids: Array | None, temperature: float,
                      mask_id: int) -> Array:
  """One filling of every position of one state: ``logits [G, V|k]`` -> ``[G]`` int32 ids."""
  if ids is None:
    logits = action_logits(logits, mask_id)
  else:  # top-k cache: the MASK id, if present among the k, is excluded too
    logits = jnp.where(ids == mask_id, -jnp.inf, logits.astype(jnp.float32))
  if temperature == 0:
    choice = jnp.argmax(logits, axis=-1)
  else:
    choice = jax.random.categorical(key, logits / temperature, axis=-1)
  choice = choice.astype(jnp.int32)
  if ids is not None:
    choice = jnp.take_along_axis(ids, choice[..., None], axis=-1)[..., 0]
  return choice


def sample_branches(key: Array, branch_canvas: Array, branch_logits: Array,
                    branch_logit_ids: Array | None, num_branches: int, temperature: float,
                    mask_id: int) -> tuple[Array, Array]:
  """Draws ``Z = num_branches`` fillings at every branch state.

  Args:
    key: PRNG key.
    branch_canvas: ``[B, S, G]`` int32 state canvases (MASK at the action positions).
    branch_logits: ``[B, S, G, V]`` cached logits (or ``[B, S, G, k]`` with ``branch_logit_ids``).
    branch_logit_ids: ``[B, S, G, k]`` int32 or None.
    num_branches: Z (static).
    temperature: τ (static); 0 fills greedily.
    mask_id: MASK token id (static).

  Returns:
    filled: ``[B, S, Z, G]`` int32, ``FILL(x_t, a_z)`` for each branch.
    action_mask: ``[B, S, G]`` bool, the positions every branch filled.

  Vectorised with ``vmap`` over rows, states and branches; peak memory is one fp32 noise tensor of
  ``B × S × Z × G × V`` (shard the batch, or cache top-k, for large vocabularies).
  """
  b, s, g = branch_canvas.shape
  keys = jax.random.split(key, (b, s, num_branches))
  ids = branch_logit_ids

  def one_state(state_keys, canvas, logits, state_ids):
    def one_branch(k):
      action = _sample_positions(k, logits, state_ids, temperature, mask_id)
      return jnp.where(canvas == mask_id, action, canvas)
    return jax.vmap(one_branch)(state_keys)

  per_row = jax.vmap(one_state, in_axes=(0, 0, 0, None if ids is None else 0))
  per_batch = jax.vmap(per_row, in_axes=(0, 0, 0, None if ids is None else 0))
  filled = per_batch(keys, branch_canvas, branch_logits, ids)
  return filled, branch_canvas == mask_id


def sample_rollout_branches(key: Array, rollout: Rollout, num_branches: int, temperature: float,
                            mask_id: int) -> tuple[Array, Array]:
  """:func:`sample_branches` on a :class:`Rollout`'s cache."""
  return sample_branches(key, rollout.branch_canvas, rollout.branch_logits,
                         rollout.branch_logit_ids, num_branches, temperature, mask_id)
