"""SPG (Sandwiched Policy Gradient, Wang et al. 2025): block-wise masks, ELBO/EUBO bounds, the loss.

SPG replaces diffu-GRPO's ratio-clipped one-step surrogate with bounds on the sequence log-likelihood
``log π(o | q)`` of a masked diffusion model, estimated with ``m`` Monte Carlo mask samples τ:

* positive-advantage completions maximise a lower bound (ELBO)
  ``s̄ = (1/m) Σ_τ (1/k_τ) Σ_{i∈M_τ} log p_τ(o_i)``; multiplied by the completion length ``L`` in
  the loss this is the ``1/t``-weighted ELBO (``t_τ = k_τ / L``);
* negative-advantage completions minimise an upper bound (EUBO, Theorem 1 of the SPG paper; a
  bound of ``log p`` only for ``β ≥ L``, see ``docs/SPG.md``)
  ``s̄ = mean_{i ∈ ∪_τ M_τ} (1/β) log a_i``, ``a_i = (1/m) Σ_τ 1(i∈M_τ) p_τ(o_i)^β / t_τ``, or (SPG's
  default) the mixture ``ω·EUBO + (1−ω)·ELBO``. ``a_i`` is computed in log space (``logsumexp`` of
  ``β log p − log t``): ``p^β`` underflows in fp32 for tokens the model finds very unlikely;
* the loss is REINFORCE without ratio, clipping or KL: per prompt group
  ``Σ_j −A_j L_j s̄_j / Σ_j L_j``, averaged over groups (:func:`sequence_weights` holds
  ``L_j / Σ_group L`` / number of groups, computed on the whole batch so micro-batching never changes it).

Masks (:func:`block_masks`) follow SPG's ``block_random`` forward process: for each of the ``m``
samples pick one of the ``block_length`` blocks the completion covers (the samples take distinct blocks
while there are enough), mask ``k ~ U{1..n_b}`` random completion tokens of that block, every later
block completely, prompt and earlier-block tokens each with probability ``p_mask_prompt``, and every
position after the first EOS (masked in the input, never counted in a bound).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Dict, Optional

import jax
import jax.numpy as jnp

from dispo_jax.rl import losses as losses_lib
from dispo_jax.rl.logprobs import canvas_logprobs
from dispo_jax.rl.objectives.base import Objective, base_key, register_objective

Array = jax.Array
NEGATIVE_BOUNDS = ("mix", "eubo", "elbo", "none")
BLOCK_CHOICES = ("spg", "cycled")


@dataclasses.dataclass(frozen=True)
class SPGSettings:
  """SPG's term (config section ``rl.spg``; methods ``spg`` and ``dispo_spg``).

  Attributes:
    num_masks: m, Monte Carlo mask samples per completion.
    block_length: SPG's mask block size.
    negative_bound: bound for negative-advantage completions (:data:`NEGATIVE_BOUNDS`).
    mix_weight: ω of ``mix = ω·EUBO + (1−ω)·ELBO``.
    eubo_beta: β of the EUBO.
    block_choice: how the m samples pick their blocks (:data:`BLOCK_CHOICES`; ``spg`` = SPG's
      trainer).
  """

  num_masks: int = 2
  block_length: int = 32
  negative_bound: str = "mix"
  mix_weight: float = 0.5
  eubo_beta: float = 1.5
  block_choice: str = "spg"

  def __post_init__(self):
    if self.block_choice not in BLOCK_CHOICES:
      raise ValueError(f"block_choice={self.block_choice!r} is not one of {BLOCK_CHOICES}")
    if self.negative_bound not in NEGATIVE_BOUNDS:
      raise ValueError(f"negative_bound={self.negative_bound!r} is not one of {NEGATIVE_BOUNDS}")
    if (self.num_masks < 1 or self.block_length < 1 or not self.eubo_beta > 0
        or not 0 <= self.mix_weight <= 1):
      raise ValueError(f"SPG needs num_masks >= 1, block_length >= 1, eubo_beta > 0 and "
                       f"0 <= mix_weight <= 1; got {self}")


def block_choices(key: Array, row_ids: Array, completion_mask: Array, *, num_samples: int,
                  block_length: int, block_choice: str = "spg") -> tuple[Array, Array]:
  """The random block b and count k of each of the m mask samples of each row.

  ``block_choice="spg"`` is SPG's trainer: a random permutation of *all* ``num_blocks`` block
  indices, the first m taken modulo the number of blocks the completion covers (so late covered
  blocks can be rarer, and two samples can share a block); for m > num_blocks the permutation is
  cycled (SPG's trainer asserts m ≤ num_blocks). ``"cycled"``: a random order of the covered
  blocks, cycled — distinct blocks while there are enough, each covered block equally likely.
  ``k ~ U{1..n_b}`` with ``n_b`` the completion tokens in block b. Returns
  ``(blocks [R, m], counts [R, m])`` int32.
  """
  if block_choice not in BLOCK_CHOICES:
    raise ValueError(f"unknown block_choice {block_choice!r}; choose one of {BLOCK_CHOICES}")
  num_blocks = -(-completion_mask.shape[1] // block_length)

  def one_row(row, valid):
    k_block, k_count = jax.random.split(jax.random.fold_in(jax.random.fold_in(key, row), 0))
    length = jnp.sum(valid).astype(jnp.int32)  # L ≥ 1
    covered = jnp.maximum((length + block_length - 1) // block_length, 1)
    if block_choice == "spg":
      order = jax.random.permutation(k_block, num_blocks)
      blocks = (order[jnp.arange(num_samples) % num_blocks] % covered).astype(jnp.int32)
    else:
      order = jnp.argsort(jnp.where(jnp.arange(num_blocks) < covered,
                                    jax.random.uniform(k_block, (num_blocks,)), 2.0))
      blocks = order[jnp.arange(num_samples) % covered].astype(jnp.int32)
    n_b = jnp.clip(length - blocks * block_length, 1, block_length)
    counts = jax.random.randint(k_count, (num_samples,), 1, n_b + 1)
    return blocks, counts.astype(jnp.int32)

  return jax.vmap(one_row)(row_ids.astype(jnp.uint32), completion_mask)


def block_masks(key: Array, row_ids: Array, completion_mask: Array, prompt_length: int, *,
                num_samples: int, block_length: int, p_mask_prompt: float,
                block_choice: str = "spg") -> tuple[Array, Array, Array]:
  """SPG's block-wise mask samples, drawn per row from ``fold_in(key, row_id)``.

  Args:
    key: the inner iteration's mask key.
    row_ids: ``[R]`` global row indices (masks do not depend on micro-batching).
    completion_mask: ``[R, G]`` bool, True up to and including the first EOS (at least one True).
    prompt_length: P.
    num_samples: m, mask samples per completion.
    block_length: SPG's block size (a last partial block is allowed when it does not divide G).
    p_mask_prompt: mask probability of prompt and earlier-block tokens.
    block_choice: see :func:`block_choices`.
  Returns:
    ``(prompt_masked [R, m, P], completion_masked [R, m, G], counted [R, m, G])`` bools; ``counted``
    = masked completion tokens before the end of the completion (the set M_τ of the bounds).
    The block and count of each sample are :func:`block_choices` with the same key.
  """
  g = completion_mask.shape[1]
  blocks, counts = block_choices(key, row_ids, completion_mask, num_samples=num_samples,
                                 block_length=block_length, block_choice=block_choice)

  def one_row(row, valid, row_blocks, row_counts):
    k_prompt, k_pos, k_early = jax.random.split(
        jax.random.fold_in(jax.random.fold_in(key, row), 1), 3)
    length = jnp.sum(valid).astype(jnp.int32)
    prompt_masked = jax.random.bernoulli(k_prompt, p_mask_prompt, (num_samples, prompt_length))
    priority = jax.random.uniform(k_pos, (num_samples, g))
    earlier = jax.random.bernoulli(k_early, p_mask_prompt, (num_samples, g))
    masked, counted = jax.vmap(
        lambda b, k, pr, e: block_sample_mask(b, k, pr, e, length, block_length))(
            row_blocks, row_counts, priority, earlier)
    return prompt_masked, masked, counted

  return jax.vmap(one_row)(row_ids.astype(jnp.uint32), completion_mask, blocks, counts)


def block_sample_mask(block: Array, count: Array, priority: Array, earlier_draw: Array,
                      length: Array, block_length: int) -> tuple[Array, Array]:
  """One mask sample for a given block choice and count (the deterministic part of SPG's masks).

  Args:
    block: the chosen block index b (int scalar); count: k, tokens to mask in it (1 ≤ k ≤ n_b).
    priority: ``[G]`` float; the k lowest-priority completion tokens of block b are masked.
    earlier_draw: ``[G]`` bool; which tokens of earlier blocks are masked.
    length: L, the completion length up to and including the first EOS.
  Returns:
    ``(masked [G], counted [G])``: masked in the model input (chosen tokens of block b, every later
    block, the drawn earlier-block tokens, everything at or after L) and the subset before L.
  """
  pos = jnp.arange(priority.shape[0])
  start = block * block_length
  in_block = (pos >= start) & (pos < start + block_length) & (pos < length)
  rank = jnp.argsort(jnp.argsort(jnp.where(in_block, priority, jnp.inf)))
  masked = ((in_block & (rank < count)) | (pos >= start + block_length)
            | ((pos < start) & earlier_draw) | (pos >= length))
  return masked, masked & (pos < length)


def masked_logprobs(apply: Callable[[Array, Optional[Array]], Array], prompt_tokens: Array,
                    prompt_key_mask: Array | None, completion: Array, prompt_masked: Array,
                    completion_masked: Array, mask_id: int) -> Array:
  """``log p_τ(o_i)`` for every mask sample: one forward pass per (row, sample).

  Args:
    apply: ``(tokens [R·m, L], key_mask | None) -> logits [R·m, L, V]``.
    prompt_tokens: ``[R, P]``; prompt_key_mask ``[R, P]`` bool or None; completion ``[R, G]``.
    prompt_masked, completion_masked: ``[R, m, P]`` / ``[R, m, G]`` bool from :func:`block_masks`.
  Returns:
    ``[R, m, G]`` float32 log-probabilities of the completion tokens (meaningful where masked).
  """
  r, m, p = prompt_masked.shape
  g = completion.shape[1]
  prompt = jnp.where(prompt_masked, mask_id, prompt_tokens[:, None]).reshape(r * m, p)
  comp = jnp.where(completion_masked, mask_id, completion[:, None]).reshape(r * m, g)
  key_mask = None if prompt_key_mask is None else jnp.repeat(prompt_key_mask, m, axis=0)
  return canvas_logprobs(apply, prompt, key_mask, comp, jnp.repeat(completion, m, axis=0),
                         mask_id).reshape(r, m, g)


def elbo(logp: Array, counted: Array) -> Array:
  """``(1/m) Σ_τ (1/k_τ) Σ_{i∈M_τ} log p_τ(o_i)``: ``[R, m, G]`` -> ``[R]`` float32."""
  counted = counted.astype(jnp.float32)
  per_sample = jnp.sum(logp * counted, -1) / jnp.maximum(jnp.sum(counted, -1), 1.0)
  return per_sample.mean(-1)


def eubo(logp: Array, counted: Array, completion_mask: Array, beta: float) -> Array:
  """SPG's upper-bound term ``mean_i (1/β) log a_i`` in log space: ``[R, m, G]`` -> ``[R]``.

  ``log a_i = logsumexp_{τ: i∈M_τ}(β log p_τ(o_i) − log t_τ) − log m`` with
  ``t_τ = k_τ / L``; the mean runs over tokens masked in at least one sample.
  """
  m = logp.shape[1]
  length = jnp.sum(completion_mask, -1).astype(jnp.float32)  # [R]
  k = jnp.sum(counted, -1).astype(jnp.float32)  # [R, m]
  log_t = jnp.log(jnp.maximum(k, 1.0)) - jnp.log(length)[:, None]
  terms = jnp.where(counted, beta * logp - log_t[..., None], -jnp.inf)
  peak = jax.lax.stop_gradient(jnp.max(terms, axis=1, keepdims=True))
  peak = jnp.where(jnp.isfinite(peak), peak, 0.0)
  summed = jnp.sum(jnp.where(counted, jnp.exp(terms - peak), 0.0), axis=1)  # [R, G]
  any_counted = jnp.any(counted, axis=1)
  log_a = jnp.log(jnp.where(any_counted, summed, 1.0)) + peak[:, 0] - jnp.log(float(m))
  weights = any_counted.astype(jnp.float32)
  return jnp.sum(log_a * weights, -1) / jnp.maximum(jnp.sum(weights, -1), 1.0) / beta


def sequence_logp(logp: Array, counted: Array, completion_mask: Array, advantages: Array, *,
                  negative_bound: str = "mix", mix_weight: float = 0.5, eubo_beta: float = 1.5
                  ) -> tuple[Array, Dict[str, Array]]:
  """The bound each completion optimises: ELBO where ``A > 0``, ``negative_bound`` elsewhere.

  Args:
    logp, counted: ``[R, m, G]``; completion_mask ``[R, G]``; advantages ``[R]``.
    negative_bound: "mix" (ω·EUBO + (1−ω)·ELBO, SPG's default), "eubo", "elbo" (ELBO for all, the
      ablation) or "none" (negative completions contribute nothing).
  Returns:
    ``(s̄ [R] float32, diagnostics)``.
  """
  if negative_bound not in NEGATIVE_BOUNDS:
    raise ValueError(f"negative_bound={negative_bound!r} is not one of {NEGATIVE_BOUNDS}")
  lower = elbo(logp, counted)
  diag = {"base/elbo": jnp.mean(lower)}
  if negative_bound in ("mix", "eubo"):
    upper = eubo(logp, counted, completion_mask, eubo_beta)
    diag["base/eubo"] = jnp.mean(upper)
    negative = upper if negative_bound == "eubo" else mix_weight * upper + (1 - mix_weight) * lower
  elif negative_bound == "elbo":
    negative = lower
  else:
    negative = jnp.zeros_like(lower)
  length = jnp.sum(completion_mask, -1).astype(jnp.float32)
  diag["base/mask_rate"] = jnp.mean(jnp.sum(counted, -1) / length[:, None])
  diag["base/positive_frac"] = jnp.mean((advantages > 0).astype(jnp.float32))
  return jnp.where(advantages > 0, lower, negative), diag


def sequence_weights(completion_mask: Array, group_size: int) -> Array:
  """``L_j / Σ_{group(j)} L / num_groups`` for rows laid out as consecutive groups: ``[N]`` float32."""
  n = completion_mask.shape[0]
  if n % group_size:
    raise ValueError(f"{n} rows do not split into groups of {group_size}")
  length = jnp.sum(completion_mask, -1).astype(jnp.float32).reshape(-1, group_size)
  weights = length / jnp.maximum(jnp.sum(length, -1, keepdims=True), 1.0)
  return (weights / length.shape[0]).reshape(n)


@register_objective("spg")
class SPG(Objective):
  """SPG's ratio-free term: fresh block masks each inner iteration, the bounds, and the loss
  ``−Σ_j A_j w_j s̄_j`` (no old log-probs, so no importance weight; no KL)."""

  replays_logprobs = False

  def problems(self, s):
    if s.behaviour.weight in ("token", "sequence"):
      yield (f"behaviour.weight={s.behaviour.weight!r}: SPG's term is ratio-free (no old "
             f"log-probs to weight); use 'none' or 'auto'")
    if s.method == "spg" and s.beta != 0:
      yield f"method='spg' has no KL term: beta must be 0, got {s.beta}"

  def row_weights(self, completion_mask, group_size, s):
    return {"sequence_weights": sequence_weights(completion_mask, group_size)}

  def loss(self, apply, batch, replay, key, s):
    if batch.sequence_weights is None:
      raise ValueError("SPG needs RLBatch.sequence_weights (the rollout fills them)")
    prompt_masked, completion_masked, counted = block_masks(
        base_key(key), batch.row_ids, batch.completion_mask, batch.prompt_tokens.shape[1],
        num_samples=s.spg.num_masks, block_length=s.spg.block_length,
        p_mask_prompt=s.p_mask_prompt, block_choice=s.spg.block_choice)
    logp = masked_logprobs(apply, batch.prompt_tokens, batch.prompt_key_mask, batch.completion,
                           prompt_masked, completion_masked, s.mask_id)
    seq_logp, diag = sequence_logp(
        logp, counted, batch.completion_mask, batch.advantages,
        negative_bound=s.spg.negative_bound, mix_weight=s.spg.mix_weight,
        eubo_beta=s.spg.eubo_beta)
    loss, loss_diag = losses_lib.get_loss("spg")(seq_logp, batch.advantages,
                                                 batch.sequence_weights)
    return loss, {**diag, **loss_diag}
