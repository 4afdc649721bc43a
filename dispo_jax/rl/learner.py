"""The RL update: old/reference log-probs for μ mask seeds, the combined loss, and one optimizer step.

Data flow (d1's, with DiSPO's branch states riding along)::

  RLBatch (rollout + rewards + advantages)  ->  with_old_and_ref_logprobs (once per rollout batch)
    ->  μ × update(iteration i, mask key i)  ->  new trainable params

Everything here is a pure function of arrays: the policy arrives as ``apply_fn(params, tokens,
key_mask, dropout_key) -> logits`` and the reference as ``ref_apply_fn(params, tokens, key_mask)``, so
LoRA (reference = base model, adapters off) and full fine-tuning (reference = a frozen copy) share it.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, Optional

import jax
import jax.numpy as jnp
import optax
from flax import struct

from dispo_jax.rl import losses as losses_lib
from dispo_jax.rl import spg as spg_lib
from dispo_jax.rl import trace as trace_lib
from dispo_jax.rl.logprobs import surrogate_logprobs

Array = jax.Array
# (params, tokens [R, L], key_mask [R, L] | None, dropout_key | None) -> logits [R, L, V]
PolicyApply = Callable[[Any, Array, Optional[Array], Optional[Array]], Array]
# (params, tokens, key_mask) -> logits of the reference policy
ReferenceApply = Callable[[Any, Array, Optional[Array]], Array]
# method -> (base loss, whether DiSPO's fixed-state term is added)
METHODS = {"diffu_grpo": ("diffu_grpo", False), "dispo": ("diffu_grpo", True),
           "spg": ("spg", False), "dispo_spg": ("spg", True),
           "trace": ("trace", False), "dispo_trace": ("trace", True)}
STEP_TOKENS = ("action", "action_with_tail", "all")


@dataclasses.dataclass(frozen=True)
class ObjectiveSettings:
  """Static settings of the loss (hashable).

  Attributes:
    method: one of :data:`METHODS`: "diffu_grpo", "spg" or "trace" (terminal term only), "dispo",
      "dispo_spg" or "dispo_trace" (the base term plus DiSPO's fixed-state term).
    base_loss: override of the method's registered token-level base loss (see
      :data:`dispo_jax.rl.losses.LOSSES`); "" = the method's own.
    alpha_base, alpha_step: L = α_base·L_base + α_step·L_step.
    epsilon_low, epsilon_high: PPO clip range ``[1−ε_low, 1+ε_high]`` (diffu-GRPO and step term).
    beta: KL coefficient (k3 estimator against the reference policy) of the diffu-GRPO and step
      terms; 0 skips the reference. SPG's own term has no KL.
    p_mask_prompt: prompt-token mask probability of the surrogates and of SPG's earlier blocks.
    step_normaliser: see :data:`dispo_jax.rl.losses.STEP_NORMALISERS`.
    base_normaliser: ``group`` (d1 as run: token mean within each prompt group, then the mean
      over groups) or ``batch`` (one token mean over the batch); see
      :data:`dispo_jax.rl.losses.BASE_NORMALISERS`.
    step_ratio: ``token`` (per-token ratios, GRPO-style) or ``branch`` (Eq. 5: one ratio per
      branch, clipped per branch).
    step_tokens: which tokens of a branch the step term scores (:data:`STEP_TOKENS`):
      ``action`` — the state's masked positions up to and including the branch's first EOS;
      ``action_with_tail`` — every masked position, the EOS padding tail included (the behaviour
      before the EOS cut); ``all`` — the "all tokens" ablation (Table 3a, as we read it): every
      completion token of the filled branch up to its first EOS, scored like diffu-GRPO scores a
      completion (whole completion masked), so credit is not confined to the state's decisions.
    spg_num_masks: m, SPG's Monte Carlo mask samples per completion.
    spg_block_choice: how the m samples pick their blocks (:data:`dispo_jax.rl.spg.BLOCK_CHOICES`;
      ``spg`` = SPG's trainer).
    spg_block_length: SPG's mask block size.
    spg_negative_bound: bound for negative-advantage completions (see
      :data:`dispo_jax.rl.spg.NEGATIVE_BOUNDS`); spg_mix_weight ω of "mix"; spg_eubo_beta β of EUBO.
    trace_segments: N, the segments of the trajectory-consistent surrogate
      (:mod:`dispo_jax.rl.trace`; methods trace and dispo_trace).
    denoising_steps: T of the rollouts (the trace surrogate maps commit steps to segments).
    mask_id: MASK token id.
  """

  method: str = "dispo"
  base_loss: str = ""
  alpha_base: float = 1.0
  alpha_step: float = 0.5
  epsilon_low: float = 0.5
  epsilon_high: float = 0.5
  beta: float = 0.04
  p_mask_prompt: float = 0.15
  step_normaliser: str = "tokens"
  base_normaliser: str = "group"
  step_ratio: str = "token"
  step_tokens: str = "action"
  spg_num_masks: int = 2
  spg_block_length: int = 32
  spg_negative_bound: str = "mix"
  spg_mix_weight: float = 0.5
  spg_eubo_beta: float = 1.5
  spg_block_choice: str = "spg"
  trace_segments: int = 16
  denoising_steps: int = 128
  mask_id: int = 126336

  def __post_init__(self):
    if self.method not in METHODS:
      raise ValueError(f"method={self.method!r} is not one of {list(METHODS)}")
    if self.step_normaliser not in losses_lib.STEP_NORMALISERS:
      raise ValueError(f"step_normaliser={self.step_normaliser!r} is not one of "
                       f"{losses_lib.STEP_NORMALISERS}")
    if self.base_normaliser not in losses_lib.BASE_NORMALISERS:
      raise ValueError(f"base_normaliser={self.base_normaliser!r} is not one of "
                       f"{losses_lib.BASE_NORMALISERS}")
    if self.step_ratio not in losses_lib.STEP_RATIOS:
      raise ValueError(f"step_ratio={self.step_ratio!r} is not one of {losses_lib.STEP_RATIOS}")
    if self.step_ratio == "branch" and self.step_normaliser not in ("states", "sum"):
      raise ValueError(f"step_ratio='branch' (Eq. 5) needs step_normaliser 'states' or 'sum', got "
                       f"{self.step_normaliser!r}")
    if self.step_tokens not in STEP_TOKENS:
      raise ValueError(f"step_tokens={self.step_tokens!r} is not one of {STEP_TOKENS}")
    if self.spg_block_choice not in spg_lib.BLOCK_CHOICES:
      raise ValueError(f"spg_block_choice={self.spg_block_choice!r} is not one of "
                       f"{spg_lib.BLOCK_CHOICES}")
    if self.spg_negative_bound not in spg_lib.NEGATIVE_BOUNDS:
      raise ValueError(f"spg_negative_bound={self.spg_negative_bound!r} is not one of "
                       f"{spg_lib.NEGATIVE_BOUNDS}")
    if self.uses_spg and (self.spg_num_masks < 1 or self.spg_block_length < 1
                          or self.spg_eubo_beta <= 0 or not 0 <= self.spg_mix_weight <= 1):
      raise ValueError(f"SPG needs spg_num_masks >= 1, spg_block_length >= 1, spg_eubo_beta > 0 "
                       f"and 0 <= spg_mix_weight <= 1; got {self}")
    if self.base == "trace" and not 1 <= self.trace_segments <= self.denoising_steps:
      raise ValueError(f"trace_segments={self.trace_segments} must be in [1, denoising_steps="
                       f"{self.denoising_steps}]")
    if self.method == "spg" and self.beta != 0:
      raise ValueError(f"method='spg' has no KL term: beta must be 0, got {self.beta}")
    losses_lib.get_loss(self.base)

  @property
  def base(self) -> str:
    """The registered base loss this objective uses."""
    return self.base_loss or METHODS[self.method][0]

  @property
  def uses_spg(self) -> bool:
    return self.base == "spg"

  @property
  def use_step(self) -> bool:
    return METHODS[self.method][1]


@struct.dataclass
class RLBatch:
  """One rollout batch of N = prompts × K rows (a pytree; ``None`` fields are absent).

  Attributes:
    prompt_tokens: ``[N, P]`` int32 left-padded prompts.
    prompt_key_mask: ``[N, P]`` bool (False on padding) or None (attend to padding, as d1).
    completion: ``[N, G]`` int32 sampled completions.
    completion_mask: ``[N, G]`` bool, up to and including the first EOS.
    commit_step: ``[N, G]`` int32 denoising step at which each token was committed.
    advantages: ``[N]`` float32 terminal advantages.
    base_row_weights: ``[N]`` float32 normaliser of each row's token sum in the base loss
      (:func:`dispo_jax.rl.losses.base_row_weights`, computed on the whole batch).
    sequence_weights: ``[N]`` float32 SPG loss weights ``L_j / Σ_group L / groups`` (SPG only).
    row_ids: ``[N]`` int32 global row indices (prompt masks per row).
    base_old_logp, base_ref_logp: ``[μ, N, G]`` float32, filled by
      :func:`with_old_and_ref_logprobs`.
    state_canvas: ``[N, S, G]`` int32 branch-state completions (MASK at the action positions).
    actions: ``[N, S, Z, G]`` int32 filled canvases of the Z branches.
    action_mask: ``[N, S, Z, G]`` bool tokens the step term scores in each branch (see
      ``ObjectiveSettings.step_tokens``; all False for unused slots).
    branch_advantages: ``[N, S, Z]`` float32.
    step_old_logp, step_ref_logp: ``[μ, N, S, Z, G]`` float32.
  """

  prompt_tokens: Array
  prompt_key_mask: Optional[Array]
  completion: Array
  completion_mask: Array
  advantages: Array
  row_ids: Array
  commit_step: Optional[Array] = None
  base_row_weights: Optional[Array] = None
  sequence_weights: Optional[Array] = None
  base_old_logp: Optional[Array] = None
  base_ref_logp: Optional[Array] = None
  state_canvas: Optional[Array] = None
  actions: Optional[Array] = None
  action_mask: Optional[Array] = None
  branch_advantages: Optional[Array] = None
  step_old_logp: Optional[Array] = None
  step_ref_logp: Optional[Array] = None

  @property
  def num_rows(self) -> int:
    return self.completion.shape[0]


# ----------------------------------------------------------------------------------------------
# Log-probs
# ----------------------------------------------------------------------------------------------


def _base_key(key: Array) -> Array:
  return jax.random.fold_in(key, 0)


def _step_key(key: Array) -> Array:
  return jax.random.fold_in(key, 1)


def base_logprobs(apply: Callable[[Array, Optional[Array]], Array], batch: RLBatch, key: Array,
                  s: ObjectiveSettings) -> Array:
  """The base term's log-probs ``[N, G]``: diffu-GRPO's one-step mean-field surrogate (whole
  completion masked), or for ``trace`` each token on its commit segment's canvas."""
  if s.base == "trace":
    if batch.commit_step is None:
      raise ValueError("the trace surrogate needs RLBatch.commit_step (rollout.collect fills it)")
    return trace_lib.trace_logprobs(
        apply, batch.prompt_tokens, batch.prompt_key_mask, batch.completion, batch.commit_step,
        _base_key(key), batch.row_ids, segments=s.trace_segments, total_steps=s.denoising_steps,
        p_mask_prompt=s.p_mask_prompt, mask_id=s.mask_id)
  masked = jnp.full(batch.completion.shape, s.mask_id, jnp.int32)
  return surrogate_logprobs(lambda _, t, m: apply(t, m), None, batch.prompt_tokens,
                            batch.prompt_key_mask, masked, batch.completion, _base_key(key),
                            batch.row_ids, p_mask_prompt=s.p_mask_prompt, mask_id=s.mask_id)


def step_logprobs(apply: Callable[[Array, Optional[Array]], Array], batch: RLBatch, key: Array,
                  s: ObjectiveSettings) -> Array:
  """DiSPO's state surrogate ``[N, S, Z, G]``: one forward per state serves its Z branches."""
  n, n_states, z, g = batch.actions.shape
  rows = n * n_states
  prompt = jnp.repeat(batch.prompt_tokens, n_states, axis=0)
  key_mask = (None if batch.prompt_key_mask is None
              else jnp.repeat(batch.prompt_key_mask, n_states, axis=0))
  row_ids = (batch.row_ids[:, None] * n_states + jnp.arange(n_states)[None]).reshape(rows)
  canvas = batch.state_canvas.reshape(rows, g)
  if s.step_tokens == "all":  # the ablation scores whole completions, as the one-step surrogate
    canvas = jnp.full_like(canvas, s.mask_id)
  logp = surrogate_logprobs(lambda _, t, m: apply(t, m), None, prompt, key_mask,
                            canvas, batch.actions.reshape(rows, z, g),
                            _step_key(key), row_ids, p_mask_prompt=s.p_mask_prompt,
                            mask_id=s.mask_id)
  return logp.reshape(n, n_states, z, g)


def spg_objective(apply: Callable[[Array, Optional[Array]], Array], batch: RLBatch, key: Array,
                  s: ObjectiveSettings) -> tuple[Array, Dict[str, Array]]:
  """SPG's ratio-free term for one inner iteration: fresh block masks from ``key``, the bounds,
  and the registered ``spg`` loss."""
  if batch.sequence_weights is None:
    raise ValueError("SPG needs RLBatch.sequence_weights (rollout.collect fills them)")
  prompt_masked, completion_masked, counted = spg_lib.block_masks(
      _base_key(key), batch.row_ids, batch.completion_mask, batch.prompt_tokens.shape[1],
      num_samples=s.spg_num_masks, block_length=s.spg_block_length, p_mask_prompt=s.p_mask_prompt,
      block_choice=s.spg_block_choice)
  logp = spg_lib.masked_logprobs(apply, batch.prompt_tokens, batch.prompt_key_mask,
                                 batch.completion, prompt_masked, completion_masked, s.mask_id)
  seq_logp, diag = spg_lib.sequence_logp(
      logp, counted, batch.completion_mask, batch.advantages, negative_bound=s.spg_negative_bound,
      mix_weight=s.spg_mix_weight, eubo_beta=s.spg_eubo_beta)
  loss, loss_diag = losses_lib.get_loss("spg")(seq_logp, batch.advantages, batch.sequence_weights)
  return loss, {**diag, **loss_diag}


def with_old_and_ref_logprobs(apply_fn: PolicyApply, ref_apply_fn: ReferenceApply | None,
                              params: Any, batch: RLBatch, mask_keys: Array,
                              s: ObjectiveSettings) -> RLBatch:
  """Fills the ``*_old_logp`` / ``*_ref_logp`` fields for every one of the μ mask keys.

  Computed once per rollout batch with the behaviour policy (``params`` before any inner update);
  the inner update ``i`` uses ``mask_keys[i]`` again, so its masks are exactly the same.
  """
  old = lambda t, m: apply_fn(params, t, m, None)
  ref = None if (ref_apply_fn is None or s.beta == 0) else (lambda t, m: ref_apply_fn(params, t, m))

  def per_key(key):
    out = {}
    if not s.uses_spg:  # SPG's term is ratio-free: no old or reference log-probs
      out["base_old_logp"] = base_logprobs(old, batch, key, s)
      if ref is not None:
        out["base_ref_logp"] = base_logprobs(ref, batch, key, s)
    if s.use_step:
      out["step_old_logp"] = step_logprobs(old, batch, key, s)
      if ref is not None:
        out["step_ref_logp"] = step_logprobs(ref, batch, key, s)
    return out

  stacked = jax.lax.map(per_key, mask_keys)
  return batch.replace(**jax.tree.map(jax.lax.stop_gradient, stacked))


# ----------------------------------------------------------------------------------------------
# Loss and update
# ----------------------------------------------------------------------------------------------


def loss_denominators(batch: RLBatch, s: ObjectiveSettings) -> Dict[str, Array]:
  """Global normalisers, computed on the whole batch before it is split into micro-batches.

  (The base terms' per-row weights are global by construction: ``RLBatch.base_row_weights`` and
  SPG's ``RLBatch.sequence_weights``.)
  """
  out = {}
  if s.use_step:
    out["step"] = losses_lib.step_denominator(batch.branch_advantages, batch.action_mask,
                                              s.step_normaliser)
  return out


def policy_loss(params: Any, apply_fn: PolicyApply, batch: RLBatch, iteration: Array,
                mask_key: Array, s: ObjectiveSettings, denominators: Dict[str, Array] | None = None,
                dropout_key: Array | None = None) -> tuple[Array, Dict[str, Array]]:
  """``L = α_base·L_base + α_step·L_step`` for inner iteration ``iteration`` (its mask key)."""
  denominators = denominators or loss_denominators(batch, s)
  policy = lambda t, m: apply_fn(params, t, m, dropout_key)
  pick = lambda x: None if x is None else x[iteration]
  if s.uses_spg:
    base = spg_objective(policy, batch, mask_key, s)
  else:
    base = losses_lib.get_loss(s.base)(
        base_logprobs(policy, batch, mask_key, s), pick(batch.base_old_logp),
        pick(batch.base_ref_logp), batch.advantages, batch.completion_mask,
        epsilon_low=s.epsilon_low, epsilon_high=s.epsilon_high, beta=s.beta,
        row_weights=batch.base_row_weights)
  step = None
  if s.use_step:
    step = losses_lib.dispo_step_loss(
        step_logprobs(policy, batch, mask_key, s), pick(batch.step_old_logp),
        pick(batch.step_ref_logp), batch.branch_advantages, batch.action_mask,
        epsilon_low=s.epsilon_low, epsilon_high=s.epsilon_high, beta=s.beta,
        normaliser=s.step_normaliser, ratio=s.step_ratio, denominator=denominators["step"])
  return losses_lib.combine_losses(base, step, s.alpha_base, s.alpha_step)


def split_microbatches(batch: RLBatch, num_microbatches: int) -> RLBatch:
  """Reshapes every row-indexed field to ``[M, N/M, ...]`` (μ-indexed fields: ``[M, μ, N/M, ...]``).

  Micro-batch ``m`` takes rows ``m, m + M, m + 2M, ...``: the reshape ``[N] -> [N/M, M]`` keeps the
  row axis's device sharding on its leading part, so every device still holds its own rows of each
  micro-batch (a contiguous split would hand whole micro-batches to a few devices).
  """
  n = batch.num_rows
  m = num_microbatches
  if n % m:
    raise ValueError(f"{n} rows do not split into {m} micro-batches")

  def split(path, x):
    if x is None:
      return None
    name = path[0].name
    if name.endswith("_old_logp") or name.endswith("_ref_logp"):  # [μ, N, ...] -> [M, μ, N/M, ...]
      return jnp.moveaxis(x.reshape((x.shape[0], n // m, m) + x.shape[2:]), 2, 0)
    return jnp.moveaxis(x.reshape((n // m, m) + x.shape[1:]), 1, 0)

  return jax.tree_util.tree_map_with_path(split, batch)


def _tree_all_finite(tree) -> Array:
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)


def make_update_fn(apply_fn: PolicyApply, optimizer: optax.GradientTransformation,
                   s: ObjectiveSettings, num_microbatches: int = 1,
                   lora_dropout: bool = False) -> Callable:
  """Builds ``update(trainable, frozen, opt_state, batch, iteration, mask_key, dropout_key)``.

  ``apply_fn`` receives ``(trainable, frozen)`` as its params. Gradients are accumulated over
  ``num_microbatches`` with ``lax.scan`` (the loss uses whole-batch normalisers, so the accumulated
  gradient equals the full-batch gradient). A non-finite loss or gradient skips the update and
  reports ``skipped = 1``. Returns ``(trainable, opt_state, metrics)``; jit it with shardings and
  ``donate_argnums`` for the params and optimizer state.
  """

  def grads_of(trainable, frozen, batch, iteration, mask_key, denominators, dropout_key):
    def loss(t):
      return policy_loss((t, frozen), apply_fn, batch, iteration, mask_key, s, denominators,
                         dropout_key if lora_dropout else None)
    return jax.value_and_grad(loss, has_aux=True)(trainable)

  def update(trainable, frozen, opt_state, batch: RLBatch, iteration, mask_key, dropout_key=None):
    denominators = loss_denominators(batch, s)
    if num_microbatches == 1:
      (loss, diag), grads = grads_of(trainable, frozen, batch, iteration, mask_key, denominators,
                                     dropout_key)
    else:
      micro = split_microbatches(batch, num_microbatches)
      zeros = jax.tree.map(jnp.zeros_like, trainable)

      def body(acc, xs):
        mb, index = xs
        key = None if dropout_key is None else jax.random.fold_in(dropout_key, index)
        (l, d), g = grads_of(trainable, frozen, mb, iteration, mask_key, denominators, key)
        return jax.tree.map(jnp.add, acc, g), (l, d)

      grads, (losses, diags) = jax.lax.scan(body, zeros, (micro, jnp.arange(num_microbatches)))
      loss = losses.sum()  # each micro-batch loss is already divided by the global denominator
      diag = jax.tree.map(jnp.mean, diags)
      diag["loss"] = loss
    finite = jnp.isfinite(loss) & _tree_all_finite(grads)
    updates, new_opt_state = optimizer.update(grads, opt_state, trainable)
    new_trainable = optax.apply_updates(trainable, updates)
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
    metrics = dict(diag)
    metrics["grad_norm"] = optax.tree.norm(grads)
    metrics["skipped"] = (~finite).astype(jnp.float32)
    return keep(new_trainable, trainable), keep(new_opt_state, opt_state), metrics

  return update
