"""Policy losses, registered by name, and their diagnostics.

Token-level losses (``diffu_grpo``, ``dispo_state`` and any plug-in base loss) work on per-token
arrays (log-probs of the current, old and reference policies, an advantage broadcast to tokens, and
a weight mask); the sequence-level ``spg`` loss works on one bound per completion
(:mod:`dispo_jax.rl.objectives.spg`). Every loss returns ``(scalar loss, diagnostics dict)``.

Diagnostics (per update; with micro-batches, the mean over them): ``clip_frac`` (the fraction of
scored tokens, or of branches under Eq. 5's ratio, where clipping binds), ratio min / max / median,
the k3 KL, and App. J's ``log_ratio_median`` / ``log_ratio_p99`` (:func:`log_ratio_stats`), each
for the terminal (``base/``) and the state (``state/``) term separately.

* ``diffu_grpo`` (d1): per token ``−min(ρA, clip(ρ, 1−ε, 1+ε)A) + β·KL``, ``ρ = exp(logp − old)``,
  KL the k3 estimator ``exp(ref − logp) − (ref − logp) − 1``, over completion tokens up to and
  including the first EOS. The normaliser is a weight per row (:data:`BASE_NORMALISERS`):
    - ``group`` (d1 as run): token sum / token count within each prompt group (d1's device
      micro-batch of one group), then the mean over groups;
    - ``batch``: one token mean over the whole batch (groups weighted by their token counts).
* ``spg`` (SPG): ratio-free REINFORCE on sequence bounds, ``Σ_j −A_j w_j s̄_j`` with
  ``w_j = L_j / Σ_group L / number of groups``; no clipping, no KL.
* ``dispo_state``: the same per-token clipped surrogate and KL on the *action tokens* of branch
  states, ``A = A_{k,t,z}``; per state ``L_state = −(1/Z) Σ_z ρ_z A_z`` with the token-level ratio of
  GRPO-style PPO (``ratio="branch"``: the paper's literal Eq. 5, one ratio per branch,
  ``ρ_z = exp(Σ_{i∈M} Δ log π)``, clipped per branch). The scored tokens of a branch are a mask
  ``[N, S, Z, G]`` (by default the action positions up to and including the branch's first EOS).
  The normaliser is explicit (:data:`STATE_NORMALISERS`):
    - ``branch`` (App. J, the recipe's): token mean within each branch, then the mean over the Z
      branches and over the states with a scored token;
    - ``group``: token sum / token count within each prompt group (all branches of its K rows'
      states), then the mean over groups — the base term's ``group`` rule;
    - ``tokens``: one mean over all scored tokens of all branches of the batch (late states, which
      have few masked positions, weigh less than early ones);
    - ``nonzero_tokens``: ``tokens`` over the states whose Z advantages are not all zero
      (tied states contribute nothing, not even KL);
    - ``sum``: the paper's literal ``Σ_S −(1/Z) Σ_z A_z Σ_{i∈M} ρ_i`` (sum over tokens and states).
"""

from __future__ import annotations

from typing import Callable, Dict

import jax
import jax.numpy as jnp

from dispo_jax.registry import Registry
from dispo_jax.sampling.decoding import completion_mask

Array = jax.Array
LossFn = Callable[..., tuple[Array, Dict[str, Array]]]
LOSSES: Registry[LossFn] = Registry("loss")
register_loss = LOSSES.register
get_loss = LOSSES.get
STATE_NORMALISERS = ("branch", "group", "tokens", "nonzero_tokens", "sum")
BASE_NORMALISERS = ("group", "batch")
STATE_RATIOS = ("token", "branch")


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


def base_row_weights(completion_mask: Array, group_size: int, normaliser: str) -> Array:
  """``[N]`` float32 weight of each row's token sum in the base loss (whole batch, before any
  micro-batch split).

  ``group``: ``1 / (tokens of the row's group) / groups`` (rows of a group are contiguous);
  ``batch``: ``1 / (tokens of the batch)``.
  """
  if normaliser not in BASE_NORMALISERS:
    raise ValueError(f"unknown base normaliser {normaliser!r}; choose one of {BASE_NORMALISERS}")
  tokens = jnp.sum(completion_mask.astype(jnp.float32), -1)  # [N]
  if normaliser == "batch":
    return jnp.full_like(tokens, 1.0 / jnp.maximum(tokens.sum(), 1.0))
  n = tokens.shape[0]
  if n % group_size:
    raise ValueError(f"{n} rows do not form groups of {group_size}")
  per_group = tokens.reshape(n // group_size, group_size).sum(-1)  # [groups]
  weights = 1.0 / jnp.maximum(per_group, 1.0) / per_group.shape[0]
  return jnp.repeat(weights, group_size)


def state_row_weights(action_mask: Array, group_size: int) -> Array:
  """``[N]`` float32 weight of each row's state-term token sum under the ``group`` normaliser:
  ``1 / (scored branch tokens of the row's group) / groups`` (rows of a group are contiguous).

  ``action_mask`` is ``[N, S, Z, G]`` bool, the scored tokens of every branch of the whole batch.
  """
  tokens = jnp.sum(action_mask.astype(jnp.float32), (1, 2, 3))  # [N]
  n = tokens.shape[0]
  if n % group_size:
    raise ValueError(f"{n} rows do not form groups of {group_size}")
  per_group = tokens.reshape(n // group_size, group_size).sum(-1)
  return jnp.repeat(1.0 / jnp.maximum(per_group, 1.0) / per_group.shape[0], group_size)


@register_loss("diffu_grpo")
def diffu_grpo_loss(logp: Array, old_logp: Array, ref_logp: Array | None, advantages: Array,
                    completion_mask: Array, *, epsilon_low: float = 0.5, epsilon_high: float = 0.5,
                    beta: float = 0.04, row_weights: Array | None = None,
                    token_weights: Array | None = None) -> tuple[Array, Dict[str, Array]]:
  """d1's diffu-GRPO loss ``Σ_rows w_row Σ_tokens loss_token``.

  Args:
    logp, old_logp, ref_logp: ``[N, G]`` float32 per-token log-probs (ref may be None when β = 0).
    advantages: ``[N]`` float32 (one per completion).
    completion_mask: ``[N, G]`` bool, up to and including the first EOS.
    row_weights: ``[N]`` float32 normaliser per row (:func:`base_row_weights`, computed on the
      whole batch); default ``1 / (tokens of these rows)``, a token mean over the given rows.
    token_weights: ``[N, G]`` float32 importance weights of the policy-gradient term (constants;
      :func:`dispo_jax.rl.behaviour.importance_weights`), or None; the KL term is not weighted.
  """
  per_token, aux = clipped_token_loss(logp, old_logp, ref_logp, advantages[:, None],
                                      epsilon_low, epsilon_high, 0.0)
  if token_weights is not None:
    per_token = per_token * jax.lax.stop_gradient(token_weights)
  per_token = per_token + beta * aux["kl"]
  w = completion_mask.astype(jnp.float32)
  if row_weights is None:
    row_weights = jnp.full(w.shape[:1], 1.0 / jnp.maximum(jnp.sum(w), 1.0))
  loss = jnp.sum(per_token * w * row_weights[:, None])
  diag = _token_diagnostics(aux, completion_mask, "base/")
  diag.update(log_ratio_stats(logp, old_logp, completion_mask, "base/"))
  diag["base/loss"] = loss
  diag["base/num_tokens"] = jnp.sum(w)
  return loss, diag


# The trajectory-consistent objective (dispo_jax.rl.objectives.trace) is diffu-GRPO's loss on other log-probs.
register_loss("trace")(diffu_grpo_loss)


@register_loss("spg")
def spg_loss(sequence_logp: Array, advantages: Array, sequence_weights: Array
             ) -> tuple[Array, Dict[str, Array]]:
  """SPG's loss: ``−Σ_j A_j w_j s̄_j``.

  Args:
    sequence_logp: ``[N]`` float32 bound per completion (ELBO, EUBO or their mixture).
    advantages: ``[N]`` float32 (``r − group mean``; constants).
    sequence_weights: ``[N]`` float32 global weights (:func:`dispo_jax.rl.objectives.spg.sequence_weights`).
  """
  loss = -jnp.sum(jax.lax.stop_gradient(advantages * sequence_weights) * sequence_logp)
  return loss, {"base/loss": loss}


def state_token_mask(action_mask: jax.Array, filled: jax.Array, eos_id: int, state_tokens: str
                    ) -> jax.Array:
  """``[N, S, Z, G]`` tokens the state term scores (``ObjectiveSettings.state_tokens``).

  Args:
    action_mask: ``[N, S, G]`` bool, the positions the branches filled (False for unused slots).
    filled: ``[N, S, Z, G]`` int32 filled branch completions.
  """
  positions = jnp.broadcast_to(action_mask[:, :, None, :], filled.shape)
  if state_tokens == "action_with_tail":
    return positions
  upto_eos = completion_mask(filled, eos_id)
  if state_tokens == "all":
    used = jnp.any(action_mask, -1)[:, :, None, None]
    return upto_eos & used
  return positions & upto_eos


def branch_mask(action_mask: Array, num_branches: int) -> Array:
  """``[N, S, Z, G]`` scored tokens of every branch: a per-state ``[N, S, G]`` mask is shared by
  the Z branches; a ``[N, S, Z, G]`` mask is returned as is."""
  if action_mask.ndim == 4:
    return action_mask
  n, s, g = action_mask.shape
  return jnp.broadcast_to(action_mask[:, :, None, :], (n, s, num_branches, g))


def _branch_ratio_loss(logp: Array, old_logp: Array, ref_logp: Array | None, advantages: Array,
                       mask: Array, epsilon_low: float, epsilon_high: float, beta: float
                       ) -> tuple[Array, Dict[str, Array]]:
  """Eq. 5 literally: per branch ``−min(ρA, clip(ρ)A) + β·(token-mean k3 KL)``, ``[N, S, Z]``,
  with ``ρ = exp(Σ_{i∈M} (logp − old))``. Diagnostics are per branch."""
  w = mask.astype(jnp.float32)
  log_ratio = jnp.sum((logp - jax.lax.stop_gradient(old_logp)) * w, -1)  # [N, S, Z]
  per_branch, aux = clipped_token_loss(log_ratio, jnp.zeros_like(log_ratio), None, advantages,
                                       epsilon_low, epsilon_high, 0.0)
  kl = jnp.zeros_like(logp)
  if ref_logp is not None:
    kl = k3_kl(logp, jax.lax.stop_gradient(ref_logp))
  branch_kl = jnp.sum(kl * w, -1) / jnp.maximum(jnp.sum(w, -1), 1.0)
  if beta != 0.0:
    per_branch = per_branch + beta * branch_kl
  return per_branch, {**aux, "kl": branch_kl}


@register_loss("dispo_state")
def state_term_loss(logp: Array, old_logp: Array, ref_logp: Array | None, advantages: Array,
                    action_mask: Array, *, epsilon_low: float = 0.5, epsilon_high: float = 0.5,
                    beta: float = 0.04, normaliser: str = "branch", ratio: str = "token",
                    denominator: Array | None = None, row_weights: Array | None = None
                    ) -> tuple[Array, Dict[str, Array]]:
  """DiSPO's fixed-state loss over the scored tokens of each branch.

  Args:
    logp, old_logp, ref_logp: ``[N, S, Z, G]`` float32 per-token log-probs of each branch's action.
    advantages: ``[N, S, Z]`` float32 branch advantages.
    action_mask: ``[N, S, Z, G]`` bool scored tokens of each branch, or ``[N, S, G]`` shared by the
      Z branches of a state; states of unused slots have an all-False mask.
    normaliser: one of :data:`STATE_NORMALISERS`.
    ratio: ``token`` (GRPO-style per-token ratios) or ``branch`` (Eq. 5: one ratio per branch;
      normalisers ``branch`` or ``sum`` only).
    denominator: the global count the normaliser divides by (tokens, non-zero-state tokens or
      states; see :func:`state_denominator`) when a batch is split into micro-batches.
    row_weights: ``[N]`` float32 (``group`` normaliser only): :func:`state_row_weights` of the
      whole batch; default: computed from these rows as one group.
  """
  if normaliser not in STATE_NORMALISERS:
    raise ValueError(f"unknown state normaliser {normaliser!r}; choose one of {STATE_NORMALISERS}")
  if ratio not in STATE_RATIOS:
    raise ValueError(f"unknown state ratio {ratio!r}; choose one of {STATE_RATIOS}")
  z = logp.shape[2]
  mask = branch_mask(action_mask, z)
  w = mask.astype(jnp.float32)
  if denominator is None:
    denominator = state_denominator(advantages, mask, normaliser)
  if ratio == "branch":
    if normaliser not in ("branch", "sum"):
      raise ValueError(f"the per-branch ratio (Eq. 5) needs normaliser 'branch' or 'sum', got "
                       f"{normaliser!r}")
    per_branch, aux = _branch_ratio_loss(logp, old_logp, ref_logp, advantages, mask, epsilon_low,
                                         epsilon_high, beta)
    has_tokens = jnp.any(mask, -1)  # [N, S, Z]
    total = jnp.sum(jnp.where(has_tokens, per_branch, 0.0)) / z
    loss = total if normaliser == "sum" else total / jnp.maximum(denominator, 1.0)
    diag = _token_diagnostics(aux, has_tokens, "state/")
  else:
    per_token, aux = clipped_token_loss(logp, old_logp, ref_logp, advantages[..., None],
                                        epsilon_low, epsilon_high, beta)
    if normaliser in ("tokens", "nonzero_tokens"):
      if normaliser == "nonzero_tokens":
        w = w * jnp.any(advantages != 0, axis=-1)[:, :, None, None]
      loss = jnp.sum(per_token * w) / jnp.maximum(denominator, 1.0)
    elif normaliser == "branch":
      per_branch = jnp.sum(per_token * w, -1) / jnp.maximum(jnp.sum(w, -1), 1.0)  # [N, S, Z]
      loss = jnp.sum(per_branch.mean(-1)) / jnp.maximum(denominator, 1.0)
    elif normaliser == "group":
      if row_weights is None:
        row_weights = state_row_weights(mask, logp.shape[0])
      loss = jnp.sum(per_token * w * row_weights[:, None, None, None])
    else:  # "sum": Σ_S −(1/Z) Σ_z Σ_i ρ_i A_z (+ β·KL)
      loss = jnp.sum(per_token * w) / z
    diag = _token_diagnostics(aux, mask, "state/")
  diag.update(log_ratio_stats(logp, old_logp, mask, "state/"))
  diag["state/loss"] = loss
  diag["state/num_tokens"] = jnp.sum(mask.astype(jnp.float32))
  return loss, diag


def log_ratio_stats(logp: Array, old_logp: Array, mask: Array, prefix: str) -> Dict[str, Array]:
  """App. J's log-ratio statistics: the token log-ratios ``logp − old`` of each unit (the last
  axis: a completion ``[N, G]`` or a branch ``[N, S, Z, G]``) averaged over its scored tokens,
  then the median and the 99th percentile of their absolute values over the units with a scored
  token (NaN when there is none).
  """
  w = mask.astype(jnp.float32)
  count = jnp.sum(w, -1)
  mean_log_ratio = jnp.sum((logp - jax.lax.stop_gradient(old_logp)) * w, -1) / jnp.maximum(count, 1)
  values = jnp.where(count > 0, jnp.abs(mean_log_ratio), jnp.nan).ravel()
  return {f"{prefix}log_ratio_median": jnp.nanmedian(values),
          f"{prefix}log_ratio_p99": jnp.nanpercentile(values, 99.0)}


def state_denominator(advantages: Array, action_mask: Array, normaliser: str) -> Array:
  """What :func:`state_term_loss` divides by: scored tokens of all branches, those of states with
  a non-zero advantage, or the number of states with a scored token; 1 for ``sum`` and ``group``
  (whose whole-batch normaliser is :func:`state_row_weights`).

  ``action_mask`` is ``[N, S, Z, G]`` or ``[N, S, G]`` (shared by the branches).
  """
  mask = branch_mask(action_mask, advantages.shape[-1])
  tokens_per_branch = jnp.sum(mask, -1).astype(jnp.float32)  # [N, S, Z]
  if normaliser == "tokens":
    return jnp.sum(tokens_per_branch)
  if normaliser == "nonzero_tokens":
    return jnp.sum(tokens_per_branch * jnp.any(advantages != 0, axis=-1)[..., None])
  if normaliser == "branch":
    return jnp.sum(jnp.any(tokens_per_branch > 0, -1)).astype(jnp.float32)
  return jnp.float32(1.0)  # sum; group uses per-row weights instead


def combine_losses(base: tuple[Array, Dict[str, Array]] | None,
                   state: tuple[Array, Dict[str, Array]] | None, alpha_base: float = 1.0,
                   alpha_state: float = 0.5) -> tuple[Array, Dict[str, Array]]:
  """``L = α_base·L_base + α_state·L_state`` with the diagnostics of both."""
  loss = jnp.float32(0.0)
  diag: Dict[str, Array] = {}
  if base is not None:
    loss = loss + alpha_base * base[0]
    diag.update(base[1])
  if state is not None:
    loss = loss + alpha_state * state[0]
    diag.update(state[1])
  diag["loss"] = loss
  return loss, diag
