"""A trajectory-consistent surrogate: every completion token scored on the canvas it was committed on.

diffu-GRPO scores each token on a fully masked completion (a conditional the confidence-ordered
sampler rarely uses); the sampler itself commits a token at timestep ``t`` from the canvas ``x_t`` of
that timestep. Here, in the spirit of d2's StepMerge (arXiv 2509.21474), the T timesteps are
grouped into N contiguous segments, segment ``k`` covering timesteps ``[s_k, s_{k+1})`` with
``s_k = floor(k·T / N)``. The canvas of segment ``k`` is rebuilt from the rollout's commit timesteps —
completion tokens committed before ``s_k`` visible, MASK elsewhere, the prompt as in diffu-GRPO
(optionally masked with ``p_mask_prompt``) — so no canvas is stored. One forward per segment (all
segments of all rows in one batched call) scores the tokens committed inside it.

* N = T scores each token on the very logits the sampler drew it from, and is exact in this
  sense only: with no prompt masking (``p_mask_prompt = 0``) and scored at the rollout's
  temperature (``temperature`` = the sampler's τ; at 1 when τ = 1), a token's log-prob is that of
  its Gumbel-max draw at its commit timestep. It is the per-token conditional given *which* positions
  were committed at each timestep — not the probability of the whole trajectory under confidence
  remasking, whose choice of positions depends on the draws themselves. Tested against an
  independent NumPy computation from the sampler's cached logits.
* N = 1 scores every token on the first canvas of the rollout: an all-MASK completion, i.e.
  diffu-GRPO's one-step surrogate.

Ratios, clipping, the k3 KL and the normaliser are diffu-GRPO's (:mod:`dispo_jax.rl.losses`); only the
log-probs differ.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from dispo_jax.rl.logprobs import Apply, surrogate_logprobs
from dispo_jax.rl.objectives.base import Objective, base_key, register_objective

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class TraceSettings:
  """The trajectory-consistent surrogate (config section ``rl.trace``).

  Attributes:
    segments: N, contiguous groups of the T timesteps; each costs one forward. N = T
      scores every token on its own timestep's logits (see the module docstring for when that is
      exact), N = 1 is diffu-GRPO's one-step surrogate. Checked against T by
      ``ObjectiveSettings``.
    temperature: log-probs are ``log softmax(logits / temperature)``: 1 (the default) scores
      the model's own distribution, the sampler's τ the distribution the rollout drew from.
  """

  segments: int = 16
  temperature: float = 1.0

  def __post_init__(self):
    if self.segments < 1:
      raise ValueError(f"segments={self.segments} must be >= 1")
    if not (0 < self.temperature < float("inf")):
      raise ValueError(f"temperature={self.temperature} must be finite and > 0")


def segment_starts(total_timesteps: int, segments: int) -> np.ndarray:
  """``[N + 1]`` int32: the first timestep of each segment, then T."""
  if not 1 <= segments <= total_timesteps:
    raise ValueError(f"trace segments={segments} must be in [1, {total_timesteps}] (the denoising "
                     f"timesteps)")
  return (np.arange(segments + 1) * total_timesteps // segments).astype(np.int32)


def segment_of(commit_timestep: Array, total_timesteps: int, segments: int) -> Array:
  """``[..., G]`` int32 segment index of each token from its commit timestep."""
  starts = jnp.asarray(segment_starts(total_timesteps, segments)[:-1])
  return (jnp.searchsorted(starts, commit_timestep, side="right") - 1).astype(jnp.int32)


def segment_canvases(completion: Array, commit_timestep: Array, total_timesteps: int, segments: int,
                     mask_id: int) -> Array:
  """``[R, N, G]`` int32 completion canvas at the first timestep of every segment.

  Args:
    completion: ``[R, G]`` int32 final completion.
    commit_timestep: ``[R, G]`` int32 timestep at which each token was committed.
  """
  starts = jnp.asarray(segment_starts(total_timesteps, segments)[:-1])  # [N]
  visible = commit_timestep[:, None, :] < starts[None, :, None]  # [R, N, G]
  return jnp.where(visible, completion[:, None, :], mask_id).astype(jnp.int32)


def trace_logprobs(apply: Apply, prompt_tokens: Array,
                   prompt_key_mask: Array | None, completion: Array, commit_timestep: Array,
                   key: Array, row_ids: Array, *, segments: int, total_timesteps: int,
                   p_mask_prompt: float, mask_id: int, temperature: float = 1.0) -> Array:
  """Log-prob of every completion token on its segment's canvas, ``[R, G]`` float32.

  Args:
    apply: ``(tokens [R', P+G], key_mask | None) -> logits``.
    prompt_tokens: ``[R, P]`` int32; prompt_key_mask ``[R, P]`` bool or None.
    completion, commit_timestep: ``[R, G]`` int32 from the rollout.
    key: the inner iteration's mask key; row_ids ``[R]`` (each row's prompt mask is shared by
      its segments).
  """
  r, g = completion.shape
  n = segments
  canvases = segment_canvases(completion, commit_timestep, total_timesteps, n, mask_id)  # [R, N, G]
  repeat = lambda x: None if x is None else jnp.repeat(x, n, axis=0)
  logp = surrogate_logprobs(apply, repeat(prompt_tokens),
                            repeat(prompt_key_mask), canvases.reshape(r * n, g),
                            repeat(completion), key, repeat(row_ids),
                            p_mask_prompt=p_mask_prompt, mask_id=mask_id,
                            temperature=temperature)
  logp = logp.reshape(r, n, g)
  seg = segment_of(commit_timestep, total_timesteps, n)  # [R, G]
  return jnp.take_along_axis(logp, seg[:, None, :], axis=1)[:, 0]


@register_objective("trace")
class Trace(Objective):
  """Each token on its commit segment's canvas; diffu-GRPO's ratio, clipping, KL and normaliser."""

  def problems(self, s):
    if not 1 <= s.trace.segments <= s.num_timesteps:
      yield (f"trace.segments={s.trace.segments} must be in [1, num_timesteps="
             f"{s.num_timesteps}]")

  def logprobs(self, apply, batch, key, s):
    if batch.commit_timestep is None:
      raise ValueError("the trace surrogate needs RLBatch.commit_timestep (the rollout fills it)")
    return trace_logprobs(
        apply, batch.prompt_tokens, batch.prompt_key_mask, batch.completion, batch.commit_timestep,
        base_key(key), batch.row_ids, segments=s.trace.segments, total_timesteps=s.num_timesteps,
        p_mask_prompt=s.p_mask_prompt, mask_id=s.mask_id, temperature=s.trace.temperature)
