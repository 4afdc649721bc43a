"""Importance correction for rollouts drawn by an approximate sampler (dual cache, threshold).

The sampler records, for every committed token, its log-prob ``log π_b`` under the distribution it
was actually drawn from (:attr:`dispo_jax.sampling.sampler.Rollout.behaviour_logp`). The objective's
ratio is taken against ``log π_old``, the old policy's log-prob *as the objective scores the token*
(the one-step surrogate for diffu-GRPO, the token's segment canvas for ``trace``). The truncated
importance weight (as AR RL frameworks use against their inference engines)

  ``w = min(π_old / π_b, C)``  per token, or  ``min(Π_tokens π_old / π_b, C)`` per completion,

multiplies each token's policy-gradient term (a constant: no gradient flows through it; the KL
term is not weighted). Where the objective scores the sampler's own conditional — ``trace`` with
N = T, no prompt masking, at the rollout's temperature — ``w`` corrects exactly the sampler's
approximation and is 1 for plain rollouts. For diffu-GRPO's mean-field surrogate (and coarser
``trace``) ``π_old`` is another conditional than the sampler's, so ``w`` also carries the
surrogate's own gap; truncation at C bounds it.

DiSPO's branch term needs no weight: its fillings are drawn from the logits of a full forward at
the branch state (the exact π_old there, at the branch temperature). SPG's term has no per-token
old log-prob (it is ratio-free, on sequence bounds) and is left uncorrected.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Dict

import jax
import jax.numpy as jnp

Array = jax.Array
WEIGHTS = ("auto", "none", "token", "sequence")


@dataclasses.dataclass(frozen=True)
class BehaviourSettings:
  """The importance correction (config section ``rl.behaviour``).

  Attributes:
    weight: ``auto`` (``token`` when the sampler is approximate — ``kv_cache=dual`` or a
      threshold — ``none`` otherwise), ``none``, ``token`` or ``sequence``.
    cap: C, the truncation of the weight (> 0).
  """

  weight: str = "auto"
  cap: float = 2.0

  def __post_init__(self):
    if self.weight not in WEIGHTS:
      raise ValueError(f"weight={self.weight!r} is not one of {list(WEIGHTS)}")
    if not (0 < self.cap < math.inf):
      raise ValueError(f"cap={self.cap!r} must be finite and > 0")

  def resolved(self, approximate_sampler: bool) -> str:
    """The weight in force: ``auto`` resolved by whether the rollouts are approximate."""
    if self.weight == "auto":
      return "token" if approximate_sampler else "none"
    return self.weight


def importance_weights(old_logp: Array, behaviour_logp: Array, mask: Array, kind: str,
                       cap: float) -> Array:
  """``[N, G]`` float32 truncated weights (constants), 1 outside ``mask``.

  Args:
    old_logp, behaviour_logp: ``[N, G]`` float32 log-probs of the rollout tokens.
    mask: ``[N, G]`` bool, the scored tokens (up to and including the first EOS).
    kind: ``token`` (one weight per token) or ``sequence`` (one per completion: the product of
      its tokens' ratios, truncated, broadcast to its tokens).
  """
  log_ratio = jnp.where(mask, jax.lax.stop_gradient(old_logp) - behaviour_logp, 0.0)
  if kind == "sequence":
    log_ratio = jnp.broadcast_to(jnp.sum(log_ratio, -1, keepdims=True), log_ratio.shape)
  elif kind != "token":
    raise ValueError(f"unknown importance weight {kind!r}; choose 'token' or 'sequence'")
  return jnp.where(mask, jnp.exp(jnp.minimum(log_ratio, math.log(cap))), 1.0)


def mismatch_metrics(old_logp: Array, behaviour_logp: Array, mask: Array, cap: float
                     ) -> Dict[str, Array]:
  """How far the sampler's distribution is from the objective's old policy, over ``mask``:
  mean and max ``|log π_old − log π_b|``, the fraction of tokens whose weight ``π_old / π_b``
  exceeds C (truncated), and ``KL(π_b || π_old)`` estimated on the sampled tokens by k3
  (``exp(d) − d − 1`` with ``d = log π_old − log π_b``; ≥ 0)."""
  w = mask.astype(jnp.float32)
  count = jnp.maximum(jnp.sum(w), 1.0)
  d = jnp.where(mask, old_logp - behaviour_logp, 0.0)
  return {"behaviour/abs_log_ratio_mean": jnp.sum(jnp.abs(d) * w) / count,
          "behaviour/abs_log_ratio_max": jnp.max(jnp.abs(d) * w),
          "behaviour/truncated_frac": jnp.sum((d > math.log(cap)) * w) / count,
          "behaviour/kl": jnp.sum((jnp.exp(d) - d - 1.0) * w) / count}
