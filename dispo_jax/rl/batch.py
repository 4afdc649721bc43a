"""One rollout batch as the learner sees it, and the log-probs replayed once per rollout batch.

Both are pytrees of arrays with the rows on a leading axis (the replay's rows on axis 1, after the
μ inner iterations); ``None`` fields are absent for the objective that runs.
"""

from __future__ import annotations

from typing import Optional

import chex
import jax
from flax import struct

Array = jax.Array


@struct.dataclass
class ReplayLogprobs:
  """Log-probs of the behaviour and reference policies, once per rollout batch (a pytree).

  Every field is ``[μ, N, ...]``: axis 0 is the inner iteration (its mask key), axis 1 the rows.
  ``None`` where a term is absent (SPG has no ratio; β = 0 has no reference).

  Attributes:
    base_old, base_ref: ``[μ, N, G]`` float32.
    state_old, state_ref: ``[μ, N, S, Z, G]`` float32.
  """

  base_old: Optional[Array] = None
  base_ref: Optional[Array] = None
  state_old: Optional[Array] = None
  state_ref: Optional[Array] = None

  def at(self, iteration) -> "ReplayLogprobs":
    """The ``[N, ...]`` slices of inner iteration ``iteration``."""
    return jax.tree.map(lambda x: x[iteration], self)


@struct.dataclass
class RLBatch:
  """One rollout batch of N = prompts × K rows (a pytree; ``None`` fields are absent).

  Every field but ``replay`` has the rows on axis 0.

  Attributes:
    prompt_tokens: ``[N, P]`` int32 left-padded prompts.
    prompt_key_mask: ``[N, P]`` bool (False on padding) or None (attend to padding, as d1).
    completion: ``[N, G]`` int32 sampled completions.
    completion_mask: ``[N, G]`` bool, up to and including the first EOS.
    advantages: ``[N]`` float32 terminal advantages.
    row_ids: ``[N]`` int32 global row indices (prompt masks per row).
    commit_timestep: ``[N, G]`` int32 timestep at which each token was committed.
    behaviour_logp: ``[N, G]`` float32 log-prob of each token under the distribution the sampler
      drew it from (:attr:`dispo_jax.sampling.sampler.Rollout.behaviour_logp`).
    base_row_weights: ``[N]`` float32 normaliser of each row's token sum in the base loss
      (:func:`dispo_jax.rl.losses.base_row_weights`, computed on the whole batch).
    state_row_weights: ``[N]`` float32 the same for the state term under its ``group`` normaliser
      (:func:`dispo_jax.rl.losses.state_row_weights`), else None.
    sequence_weights: ``[N]`` float32 SPG loss weights ``L_j / Σ_group L / groups`` (SPG only).
    state_canvas: ``[N, S, G]`` int32 branch-state completions (MASK at the action positions).
    actions: ``[N, S, Z, G]`` int32 filled canvases of the Z branches.
    action_mask: ``[N, S, Z, G]`` bool tokens the state term scores in each branch (see
      ``ObjectiveSettings.state_tokens``; all False for unused slots).
    branch_advantages: ``[N, S, Z]`` float32.
    replay: :class:`ReplayLogprobs` (μ on axis 0), filled by :func:`with_old_and_ref_logprobs`.
  """

  prompt_tokens: Array
  prompt_key_mask: Optional[Array]
  completion: Array
  completion_mask: Array
  advantages: Array
  row_ids: Array
  commit_timestep: Optional[Array] = None
  behaviour_logp: Optional[Array] = None
  base_row_weights: Optional[Array] = None
  state_row_weights: Optional[Array] = None
  sequence_weights: Optional[Array] = None
  state_canvas: Optional[Array] = None
  actions: Optional[Array] = None
  action_mask: Optional[Array] = None
  branch_advantages: Optional[Array] = None
  replay: Optional[ReplayLogprobs] = None

  @property
  def num_rows(self) -> int:
    return self.completion.shape[0]

  def check_shapes(self) -> None:
    """Asserts every present field's shape against N rows, P prompt and G completion tokens and
    the branch shape ``[N, S, Z, G]`` (``AssertionError`` naming the field)."""
    n, g = self.completion.shape
    p = self.prompt_tokens.shape[1]
    expected = {"prompt_key_mask": (n, p), "completion_mask": (n, g), "advantages": (n,),
                "row_ids": (n,), "commit_timestep": (n, g), "behaviour_logp": (n, g),
                "base_row_weights": (n,),
                "state_row_weights": (n,), "sequence_weights": (n,)}
    if self.actions is not None:
      _, s, z, _ = self.actions.shape
      chex.assert_shape(self.actions, (n, s, z, g), custom_message="RLBatch.actions")
      expected.update(state_canvas=(n, s, g), action_mask=(n, s, z, g),
                        branch_advantages=(n, s, z))
    for name, shape in expected.items():
      value = getattr(self, name)
      if value is not None:
        chex.assert_shape(value, shape, custom_message=f"RLBatch.{name}")
