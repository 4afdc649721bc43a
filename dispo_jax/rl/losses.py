"""Policy losses, registered by name, and their diagnostics.

Token-level losses (``diffu_grpo``, ``dispo_step`` and any plug-in base loss) work on per-token
arrays (log-probs of the current, old and reference policies, an advantage broadcast to tokens, and
a weight mask); the sequence-level ``spg`` loss works on one bound per completion
(:mod:`dispo_jax.rl.spg`). Every loss returns ``(scalar loss, diagnostics dict)``.

* ``diffu_grpo`` (d1): per token ``−min(ρA, clip(ρ, 1−ε, 1+ε)A) + β·KL``, ``ρ = exp(logp − old)``,
  KL the k3 estimator ``exp(ref − logp) − (ref − logp) − 1``; token-mean over completion tokens up to
  and including the first EOS, across the batch.
* ``spg`` (SPG): ratio-free REINFORCE on sequence bounds, ``Σ_j −A_j w_j s̄_j`` with
  ``w_j = L_j / Σ_group L / number of groups``; no clipping, no KL.
* ``dispo_step``: the same per-token clipped surrogate and KL on the *action tokens* of branch
  states, ``A = A_{k,t,z}``; per state ``L_step = −(1/Z) Σ_z ρ_z A_z`` with the token-level ratio of
  GRPO-style PPO. The normaliser is explicit (SPEC §7):
    - ``tokens``: mean over all action tokens of all branches (d1-style token mean);
    - ``nonzero_tokens``: mean over the action tokens of states whose Z advantages are not all zero
      (tied states contribute nothing, not even KL);
    - ``states``: token mean within each state-branch, then mean over branches and states;
    - ``sum``: the paper's literal ``Σ_S −(1/Z) Σ_z A_z Σ_{i∈M} ρ_i`` (sum over tokens and states).
"""

from __future__ import annotations

from typing import Callable, Dict

import jax
import jax.numpy as jnp

from dispo_jax.registry import Registry

Array = jax.Array
LossFn = Callable[..., tuple[Array, Dict[str, Array]]]
LOSSES: Registry[LossFn] = Registry("loss")
register_loss = LOSSES.register
get_loss = LOSSES.get
STEP_NORMALISERS = ("tokens", "nonzero_tokens", "states", "sum")


def k3_kl(logp: Array, ref_logp: Array) -> Array:
  """k3 estimator of KL(π || π_ref) per token: ``exp(ref − logp) − (ref − logp) − 1`` (≥ 0)."""
  diff = ref_logp - logp
  return jnp.exp(diff) - diff - 1.0


def clipped_token_loss(logp: Array, old_logp: Array, ref_logp: Array | None, advantages: Array,
                       epsilon_low: float, epsilon_high: float, beta: float
                       ) -> tuple[Array, Dict[str, Array]]:
  """Per-token PPO/GRPO loss ``−min(ρA, clip(ρ)A) + β·KL`` and per-token diagnostics.

  All arrays broadcast to one shape; ``old_logp``/``ref_logp`` are treated as constants.
  """
  old_logp = jax.lax.stop_gradient(old_logp)
  ratio = jnp.exp(logp - old_logp)
  clipped = jnp.clip(ratio, 1.0 - epsilon_low, 1.0 + epsilon_high)
  loss = -jnp.minimum(ratio * advantages, clipped * advantages)
  kl = jnp.zeros_like(logp)
  if ref_logp is not None and beta != 0.0:
    kl = k3_kl(logp, jax.lax.stop_gradient(ref_logp))
    loss = loss + beta * kl
  elif ref_logp is not None:
    kl = k3_kl(logp, jax.lax.stop_gradient(ref_logp))
  aux = {
      "ratio": ratio,
      "kl": kl,
      # clipped from below: ρ < 1−ε with A < 0; from above: ρ > 1+ε with A > 0 (where clipping binds)
      "clip_low": (ratio < 1.0 - epsilon_low) & (advantages < 0),
      "clip_high": (ratio > 1.0 + epsilon_high) & (advantages > 0),
  }
  return loss, aux


def _masked_mean(x: Array, weights: Array) -> Array:
  return jnp.sum(x * weights) / jnp.maximum(jnp.sum(weights), 1e-8)


def _masked_ratio_stats(ratio: Array, mask: Array, prefix: str) -> Dict[str, Array]:
  big = jnp.where(mask, ratio, jnp.inf)
  small = jnp.where(mask, ratio, -jnp.inf)
  flat = jnp.where(mask, ratio, jnp.nan).ravel()
  return {f"{prefix}ratio_min": jnp.min(big), f"{prefix}ratio_max": jnp.max(small),
          f"{prefix}ratio_median": jnp.nanmedian(flat)}


def _token_diagnostics(aux: Dict[str, Array], mask: Array, prefix: str) -> Dict[str, Array]:
  w = mask.astype(jnp.float32)
  out = {f"{prefix}kl": _masked_mean(aux["kl"], w),
         f"{prefix}clip_low_frac": _masked_mean(aux["clip_low"].astype(jnp.float32), w),
         f"{prefix}clip_high_frac": _masked_mean(aux["clip_high"].astype(jnp.float32), w)}
  out[f"{prefix}clip_frac"] = out[f"{prefix}clip_low_frac"] + out[f"{prefix}clip_high_frac"]
  out.update(_masked_ratio_stats(aux["ratio"], mask, prefix))
  return out


@register_loss("diffu_grpo")
def diffu_grpo_loss(logp: Array, old_logp: Array, ref_logp: Array | None, advantages: Array,
                    completion_mask: Array, *, epsilon_low: float = 0.5, epsilon_high: float = 0.5,
                    beta: float = 0.04, denominator: Array | None = None
                    ) -> tuple[Array, Dict[str, Array]]:
  """d1's diffu-GRPO loss.

  Args:
    logp, old_logp, ref_logp: ``[N, G]`` float32 per-token log-probs (ref may be None when β = 0).
    advantages: ``[N]`` float32 (one per completion).
    completion_mask: ``[N, G]`` bool, up to and including the first EOS.
    denominator: global token count for the mean (micro-batching); default the local count.
  """
  per_token, aux = clipped_token_loss(logp, old_logp, ref_logp, advantages[:, None],
                                      epsilon_low, epsilon_high, beta)
  w = completion_mask.astype(jnp.float32)
  denom = jnp.sum(w) if denominator is None else denominator
  loss = jnp.sum(per_token * w) / jnp.maximum(denom, 1.0)
  diag = _token_diagnostics(aux, completion_mask, "base/")
  diag["base/loss"] = loss
  diag["base/num_tokens"] = jnp.sum(w)
  return loss, diag


@register_loss("spg")
def spg_loss(sequence_logp: Array, advantages: Array, sequence_weights: Array
             ) -> tuple[Array, Dict[str, Array]]:
  """SPG's loss: ``−Σ_j A_j w_j s̄_j``.

  Args:
    sequence_logp: ``[N]`` float32 bound per completion (ELBO, EUBO or their mixture).
    advantages: ``[N]`` float32 (``r − group mean``; constants).
    sequence_weights: ``[N]`` float32 global weights (:func:`dispo_jax.rl.spg.sequence_weights`).
  """
  loss = -jnp.sum(jax.lax.stop_gradient(advantages * sequence_weights) * sequence_logp)
  return loss, {"base/loss": loss}


@register_loss("dispo_step")
def dispo_step_loss(logp: Array, old_logp: Array, ref_logp: Array | None, advantages: Array,
                    action_mask: Array, *, epsilon_low: float = 0.5, epsilon_high: float = 0.5,
                    beta: float = 0.04, normaliser: str = "tokens",
                    denominator: Array | None = None) -> tuple[Array, Dict[str, Array]]:
  """DiSPO's fixed-state loss over action tokens only.

  Args:
    logp, old_logp, ref_logp: ``[N, S, Z, G]`` float32 per-token log-probs of each branch's action.
    advantages: ``[N, S, Z]`` float32 branch advantages.
    action_mask: ``[N, S, G]`` bool, masked positions of each state (the action's positions); states
      of unused slots have an all-False mask.
    normaliser: one of :data:`STEP_NORMALISERS`.
    denominator: the global count the normaliser divides by (tokens, non-zero-state tokens or
      states; see :func:`step_denominator`) when a batch is split into micro-batches.
  """
  if normaliser not in STEP_NORMALISERS:
    raise ValueError(f"unknown step normaliser {normaliser!r}; choose one of {STEP_NORMALISERS}")
  z = logp.shape[2]
  per_token, aux = clipped_token_loss(logp, old_logp, ref_logp, advantages[..., None],
                                      epsilon_low, epsilon_high, beta)
  mask = jnp.broadcast_to(action_mask[:, :, None, :], logp.shape)
  w = mask.astype(jnp.float32)
  if denominator is None:
    denominator = step_denominator(advantages, action_mask, normaliser)
  if normaliser in ("tokens", "nonzero_tokens"):
    if normaliser == "nonzero_tokens":
      w = w * jnp.any(advantages != 0, axis=-1)[:, :, None, None]
    loss = jnp.sum(per_token * w) / jnp.maximum(denominator, 1.0)
  elif normaliser == "states":
    per_branch = jnp.sum(per_token * w, -1) / jnp.maximum(jnp.sum(w, -1), 1.0)  # [N, S, Z]
    loss = jnp.sum(per_branch.mean(-1)) / jnp.maximum(denominator, 1.0)
  else:  # "sum": Σ_S −(1/Z) Σ_z Σ_i ρ_i A_z (+ β·KL)
    loss = jnp.sum(per_token * w) / z
  diag = _token_diagnostics(aux, mask, "step/")
  diag["step/loss"] = loss
  diag["step/num_tokens"] = jnp.sum(mask.astype(jnp.float32))
  return loss, diag


def step_denominator(advantages: Array, action_mask: Array, normaliser: str) -> Array:
  """What :func:`dispo_step_loss` divides by: action tokens (× Z), those of states with a non-zero
  advantage, or the number of states with an action; 1 for ``sum``."""
  z = advantages.shape[-1]
  tokens_per_state = jnp.sum(action_mask, -1).astype(jnp.float32)  # [N, S]
  if normaliser == "tokens":
    return z * jnp.sum(tokens_per_state)
  if normaliser == "nonzero_tokens":
    return z * jnp.sum(tokens_per_state * jnp.any(advantages != 0, axis=-1))
  if normaliser == "states":
    return jnp.sum(tokens_per_state > 0).astype(jnp.float32)
  return jnp.float32(1.0)


def combine_losses(base: tuple[Array, Dict[str, Array]] | None,
                   step: tuple[Array, Dict[str, Array]] | None, alpha_base: float = 1.0,
                   alpha_step: float = 0.5) -> tuple[Array, Dict[str, Array]]:
  """``L = α_base·L_base + α_step·L_step`` with the diagnostics of both."""
  loss = jnp.float32(0.0)
  diag: Dict[str, Array] = {}
  if base is not None:
    loss = loss + alpha_base * base[0]
    diag.update(base[1])
  if step is not None:
    loss = loss + alpha_step * step[0]
    diag.update(step[1])
  diag["loss"] = loss
  return loss, diag
