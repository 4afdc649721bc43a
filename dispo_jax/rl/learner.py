"""The RL update: old/reference log-probs for μ mask seeds, the combined loss, and one optimizer step.

The objectives and d1's recipe are described in ``docs/METHOD.md`` §1–2.

Data flow (d1's, with DiSPO's branch states riding along)::

  RLBatch (rollout + rewards + advantages)  ->  with_old_and_ref_logprobs (once per rollout batch)
    ->  μ × update(iteration i, mask key i)  ->  new trainable params

Named levels (as Tunix): a *rollout batch* is generated every μ = ``num_iterations`` optimizer
updates; each update may accumulate its gradient over ``num_microbatches`` micro-batches.

Everything here is a pure function of arrays. One forward convention runs through ``rl/``:
``apply(tokens, key_mask) -> logits`` (:data:`dispo_jax.rl.logprobs.Apply`), with parameters bound
beforehand by a ``bind(params, dropout_key) -> apply`` function (``Policy.bind``), so LoRA
(reference = base model, adapters off) and full fine-tuning (reference = a frozen copy) share it.
``Policy.bind`` returns a :class:`dispo_jax.rl.logprobs.SplitApply` (hidden states and head apart),
with which every log-prob runs the LM head in rematerialised chunks.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, Optional

import chex
import jax
import jax.numpy as jnp
import optax
from flax import struct

from dispo_jax.rl import behaviour as behaviour_lib
from dispo_jax.rl import losses as losses_lib
from dispo_jax.rl import spg as spg_lib
from dispo_jax.rl import trace as trace_lib
from dispo_jax.rl.logprobs import Apply, surrogate_logprobs

Array = jax.Array
# (params, dropout_key | None) -> the policy's forward with those parameters
Bind = Callable[[Any, Optional[Array]], Apply]
# method -> (base loss, whether DiSPO's fixed-state term is added)
METHODS = {"diffu_grpo": ("diffu_grpo", False), "dispo": ("diffu_grpo", True),
           "spg": ("spg", False), "dispo_spg": ("spg", True),
           "trace": ("trace", False), "dispo_trace": ("trace", True)}
STEP_TOKENS = ("action", "action_with_tail", "all")


@dataclasses.dataclass(frozen=True)
class ObjectiveSettings:
  """Static settings of the learner (hashable); config section ``rl``, one key per field.

  Attributes:
    method: one of :data:`METHODS` (the config's top-level ``method``): "diffu_grpo", "spg" or
      "trace" (terminal term only), "dispo", "dispo_spg" or "dispo_trace" (the base term plus
      DiSPO's fixed-state term).
    num_iterations: μ, optimizer updates per rollout batch (old log-probs are ``[μ, ...]``).
    num_microbatches: gradient-accumulation micro-batches of one update.
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
      before the EOS cut); ``all`` — the "all tokens" ablation (Table 3a, Prop. A.3): every
      completion token of the filled branch up to its first EOS, scored on the same state
      canvas x_t as the action tokens (tokens already committed in x_t are scored at their own,
      visible positions), so only the token set differs from ``action``.
    spg: SPG's term (:class:`dispo_jax.rl.spg.SPGSettings`; methods spg and dispo_spg).
    trace: the trajectory-consistent surrogate (:class:`dispo_jax.rl.trace.TraceSettings`).
    behaviour: the importance correction for approximate rollouts
      (:class:`dispo_jax.rl.behaviour.BehaviourSettings`; see :attr:`importance_weight`).
    denoising_steps: T of the rollouts (derived from the sampler; the trace surrogate maps
      commit steps to segments).
    approximate_sampler: whether the rollouts come from the dual cache or threshold decoding
      (derived from the sampler; resolves ``behaviour.weight="auto"``).
    mask_id: MASK token id (derived from the model).
  """

  method: str = "dispo"
  num_iterations: int = 1
  num_microbatches: int = 1
  base_loss: str = ""
  alpha_base: float = 1.0
  alpha_step: float = 0.5
  epsilon_low: float = 0.5
  epsilon_high: float = 0.5
  beta: float = 0.04
  p_mask_prompt: float = 0.15
  step_normaliser: str = "branch"
  base_normaliser: str = "group"
  step_ratio: str = "token"
  step_tokens: str = "action"
  spg: spg_lib.SPGSettings = dataclasses.field(default_factory=spg_lib.SPGSettings)
  trace: trace_lib.TraceSettings = dataclasses.field(default_factory=trace_lib.TraceSettings)
  behaviour: behaviour_lib.BehaviourSettings = dataclasses.field(
      default_factory=behaviour_lib.BehaviourSettings)
  denoising_steps: int = 128
  approximate_sampler: bool = False
  mask_id: int = 126336

  def __post_init__(self):
    for problem in self._problems():
      raise ValueError(problem)
    losses_lib.get_loss(self.base)

  def _problems(self):
    one_of = lambda name, value, allowed: (
        [] if value in allowed else [f"{name}={value!r} is not one of {list(allowed)}"])
    yield from one_of("method", self.method, METHODS)
    yield from one_of("step_normaliser", self.step_normaliser, losses_lib.STEP_NORMALISERS)
    yield from one_of("base_normaliser", self.base_normaliser, losses_lib.BASE_NORMALISERS)
    yield from one_of("step_ratio", self.step_ratio, losses_lib.STEP_RATIOS)
    yield from one_of("step_tokens", self.step_tokens, STEP_TOKENS)
    positive = {"num_iterations": self.num_iterations, "num_microbatches": self.num_microbatches,
                "epsilon_low": self.epsilon_low, "epsilon_high": self.epsilon_high}
    for name, value in positive.items():
      if not value > 0:
        yield f"{name}={value!r} must be > 0"
    for name in ("alpha_base", "alpha_step", "beta"):
      if not getattr(self, name) >= 0:
        yield f"{name}={getattr(self, name)!r} must be >= 0 (and finite)"
    if not 0 <= self.p_mask_prompt < 1:
      yield f"p_mask_prompt={self.p_mask_prompt!r} must be in [0, 1)"
    if self.step_ratio == "branch" and self.step_normaliser not in ("branch", "sum"):
      yield (f"step_ratio='branch' (Eq. 5) needs step_normaliser 'branch' or 'sum', got "
             f"{self.step_normaliser!r}")
    if self.base == "trace" and not 1 <= self.trace.segments <= self.denoising_steps:
      yield (f"trace.segments={self.trace.segments} must be in [1, denoising_steps="
             f"{self.denoising_steps}]")
    if self.uses_spg and self.behaviour.weight in ("token", "sequence"):
      yield (f"behaviour.weight={self.behaviour.weight!r}: SPG's term is ratio-free (no old "
             f"log-probs to weight); use 'none' or 'auto'")
    if self.method == "spg" and self.beta != 0:
      yield f"method='spg' has no KL term: beta must be 0, got {self.beta}"

  @property
  def base(self) -> str:
    """The registered base loss this objective uses."""
    return self.base_loss or METHODS[self.method][0]

  @property
  def uses_spg(self) -> bool:
    return self.base == "spg"

  @property
  def importance_weight(self) -> str:
    """The base term's importance weight in force: ``none``, ``token`` or ``sequence``."""
    if self.uses_spg:
      return "none"
    return self.behaviour.resolved(self.approximate_sampler)

  @property
  def use_step(self) -> bool:
    return METHODS[self.method][1]


@struct.dataclass
class ReplayLogprobs:
  """Log-probs of the behaviour and reference policies, once per rollout batch (a pytree).

  Every field is ``[μ, N, ...]``: axis 0 is the inner iteration (its mask key), axis 1 the rows.
  ``None`` where a term is absent (SPG has no ratio; β = 0 has no reference).

  Attributes:
    base_old, base_ref: ``[μ, N, G]`` float32.
    step_old, step_ref: ``[μ, N, S, Z, G]`` float32.
  """

  base_old: Optional[Array] = None
  base_ref: Optional[Array] = None
  step_old: Optional[Array] = None
  step_ref: Optional[Array] = None

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
    commit_step: ``[N, G]`` int32 denoising step at which each token was committed.
    behaviour_logp: ``[N, G]`` float32 log-prob of each token under the distribution the sampler
      drew it from (:attr:`dispo_jax.sampling.sampler.Rollout.behaviour_logp`).
    base_row_weights: ``[N]`` float32 normaliser of each row's token sum in the base loss
      (:func:`dispo_jax.rl.losses.base_row_weights`, computed on the whole batch).
    step_row_weights: ``[N]`` float32 the same for the step term under its ``group`` normaliser
      (:func:`dispo_jax.rl.losses.step_row_weights`), else None.
    sequence_weights: ``[N]`` float32 SPG loss weights ``L_j / Σ_group L / groups`` (SPG only).
    state_canvas: ``[N, S, G]`` int32 branch-state completions (MASK at the action positions).
    actions: ``[N, S, Z, G]`` int32 filled canvases of the Z branches.
    action_mask: ``[N, S, Z, G]`` bool tokens the step term scores in each branch (see
      ``ObjectiveSettings.step_tokens``; all False for unused slots).
    branch_advantages: ``[N, S, Z]`` float32.
    replay: :class:`ReplayLogprobs` (μ on axis 0), filled by :func:`with_old_and_ref_logprobs`.
  """

  prompt_tokens: Array
  prompt_key_mask: Optional[Array]
  completion: Array
  completion_mask: Array
  advantages: Array
  row_ids: Array
  commit_step: Optional[Array] = None
  behaviour_logp: Optional[Array] = None
  base_row_weights: Optional[Array] = None
  step_row_weights: Optional[Array] = None
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
                "row_ids": (n,), "commit_step": (n, g), "behaviour_logp": (n, g),
                "base_row_weights": (n,),
                "step_row_weights": (n,), "sequence_weights": (n,)}
    if self.actions is not None:
      _, s, z, _ = self.actions.shape
      chex.assert_shape(self.actions, (n, s, z, g), custom_message="RLBatch.actions")
      expected.update(state_canvas=(n, s, g), action_mask=(n, s, z, g),
                        branch_advantages=(n, s, z))
    for name, shape in expected.items():
      value = getattr(self, name)
      if value is not None:
        chex.assert_shape(value, shape, custom_message=f"RLBatch.{name}")


# ----------------------------------------------------------------------------------------------
# Log-probs
# ----------------------------------------------------------------------------------------------


def _base_key(key: Array) -> Array:
  return jax.random.fold_in(key, 0)


def _step_key(key: Array) -> Array:
  return jax.random.fold_in(key, 1)


def base_logprobs(apply: Apply, batch: RLBatch, key: Array, s: ObjectiveSettings) -> Array:
  """The base term's log-probs ``[N, G]``: diffu-GRPO's one-step mean-field surrogate (whole
  completion masked), or for ``trace`` each token on its commit segment's canvas."""
  if s.base == "trace":
    if batch.commit_step is None:
      raise ValueError("the trace surrogate needs RLBatch.commit_step (the rollout fills it)")
    return trace_lib.trace_logprobs(
        apply, batch.prompt_tokens, batch.prompt_key_mask, batch.completion, batch.commit_step,
        _base_key(key), batch.row_ids, segments=s.trace.segments, total_steps=s.denoising_steps,
        p_mask_prompt=s.p_mask_prompt, mask_id=s.mask_id, temperature=s.trace.temperature)
  masked = jnp.full(batch.completion.shape, s.mask_id, jnp.int32)
  return surrogate_logprobs(apply, batch.prompt_tokens, batch.prompt_key_mask, masked,
                            batch.completion, _base_key(key), batch.row_ids,
                            p_mask_prompt=s.p_mask_prompt, mask_id=s.mask_id)


def step_logprobs(apply: Apply, batch: RLBatch, key: Array, s: ObjectiveSettings) -> Array:
  """DiSPO's state surrogate ``[N, S, Z, G]``: one forward per state serves its Z branches."""
  n, n_states, z, g = batch.actions.shape
  rows = n * n_states
  prompt = jnp.repeat(batch.prompt_tokens, n_states, axis=0)
  key_mask = (None if batch.prompt_key_mask is None
              else jnp.repeat(batch.prompt_key_mask, n_states, axis=0))
  row_ids = (batch.row_ids[:, None] * n_states + jnp.arange(n_states)[None]).reshape(rows)
  canvas = batch.state_canvas.reshape(rows, g)
  logp = surrogate_logprobs(apply, prompt, key_mask, canvas, batch.actions.reshape(rows, z, g),
                            _step_key(key), row_ids, p_mask_prompt=s.p_mask_prompt,
                            mask_id=s.mask_id)
  return logp.reshape(n, n_states, z, g)


def spg_objective(apply: Apply, batch: RLBatch, key: Array, s: ObjectiveSettings
                  ) -> tuple[Array, Dict[str, Array]]:
  """SPG's ratio-free term for one inner iteration: fresh block masks from ``key``, the bounds,
  and the registered ``spg`` loss."""
  if batch.sequence_weights is None:
    raise ValueError("SPG needs RLBatch.sequence_weights (the rollout fills them)")
  prompt_masked, completion_masked, counted = spg_lib.block_masks(
      _base_key(key), batch.row_ids, batch.completion_mask, batch.prompt_tokens.shape[1],
      num_samples=s.spg.num_masks, block_length=s.spg.block_length,
      p_mask_prompt=s.p_mask_prompt, block_choice=s.spg.block_choice)
  logp = spg_lib.masked_logprobs(apply, batch.prompt_tokens, batch.prompt_key_mask,
                                 batch.completion, prompt_masked, completion_masked, s.mask_id)
  seq_logp, diag = spg_lib.sequence_logp(
      logp, counted, batch.completion_mask, batch.advantages, negative_bound=s.spg.negative_bound,
      mix_weight=s.spg.mix_weight, eubo_beta=s.spg.eubo_beta)
  loss, loss_diag = losses_lib.get_loss("spg")(seq_logp, batch.advantages, batch.sequence_weights)
  return loss, {**diag, **loss_diag}


def with_old_and_ref_logprobs(old: Apply, ref: Apply | None, batch: RLBatch, mask_keys: Array,
                              s: ObjectiveSettings) -> RLBatch:
  """Fills ``batch.replay`` for every one of the μ mask keys ``mask_keys [μ]``.

  Computed once per rollout batch with the behaviour policy ``old`` (the parameters before any
  inner update) and the reference ``ref`` (None or β = 0: no reference); the inner update ``i``
  uses ``mask_keys[i]`` again, so its masks are exactly the same.
  """
  ref = None if s.beta == 0 else ref

  def per_key(key) -> ReplayLogprobs:
    out = {}
    if not s.uses_spg:  # SPG's term is ratio-free: no old or reference log-probs
      out["base_old"] = base_logprobs(old, batch, key, s)
      if ref is not None:
        out["base_ref"] = base_logprobs(ref, batch, key, s)
    if s.use_step:
      out["step_old"] = step_logprobs(old, batch, key, s)
      if ref is not None:
        out["step_ref"] = step_logprobs(ref, batch, key, s)
    return ReplayLogprobs(**out)

  replay = jax.lax.map(per_key, mask_keys)
  return batch.replace(replay=jax.tree.map(jax.lax.stop_gradient, replay))


def behaviour_weights(batch: RLBatch, replay: ReplayLogprobs, s: ObjectiveSettings
                      ) -> Array | None:
  """``[N, G]`` truncated importance weights of the base term (None when off); see
  :mod:`dispo_jax.rl.behaviour`."""
  kind = s.importance_weight
  if kind == "none":
    return None
  if batch.behaviour_logp is None or replay.base_old is None:
    raise ValueError(f"behaviour.weight={kind!r} needs RLBatch.behaviour_logp and the replayed "
                     f"old log-probs")
  return behaviour_lib.importance_weights(replay.base_old, batch.behaviour_logp,
                                          batch.completion_mask, kind, s.behaviour.cap)


def behaviour_metrics(batch: RLBatch, cap: float = behaviour_lib.BehaviourSettings.cap
                      ) -> Dict[str, Array]:
  """Diagnostics of the behaviour policy on its own rollout batch (after
  :func:`with_old_and_ref_logprobs`).

  ``policy_nll``: the mean negative log-prob of the sampled completion tokens (``completion_mask``)
  under the base term's conditional at inner iteration 0, a Monte-Carlo estimate of the policy's
  entropy there (float32 scalar). It falls towards 0 when the policy collapses onto a few
  completions and rises when it drifts into noise, which the clip fraction and the KL do not
  always show. ``behaviour/*`` (:func:`dispo_jax.rl.behaviour.mismatch_metrics`, truncation at
  ``cap``): how far the sampler's own log-probs are from those old log-probs. Empty for SPG (no
  old log-probs).
  """
  if batch.replay is None or batch.replay.base_old is None:
    return {}
  mask = batch.completion_mask.astype(jnp.float32)
  old = batch.replay.base_old[0]
  out = {"policy_nll": -(old * mask).sum() / jnp.maximum(mask.sum(), 1.0)}
  if batch.behaviour_logp is not None:
    out.update(behaviour_lib.mismatch_metrics(old, batch.behaviour_logp, batch.completion_mask,
                                              cap))
  return out


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


def policy_loss(apply: Apply, batch: RLBatch, iteration: Array, mask_key: Array,
                s: ObjectiveSettings, denominators: Dict[str, Array] | None = None
                ) -> tuple[Array, Dict[str, Array]]:
  """``L = α_base·L_base + α_step·L_step`` for inner iteration ``iteration`` (its mask key)."""
  denominators = denominators or loss_denominators(batch, s)
  replay = (batch.replay or ReplayLogprobs()).at(iteration)
  if s.uses_spg:
    base = spg_objective(apply, batch, mask_key, s)
  else:
    weights = behaviour_weights(batch, replay, s)
    base = losses_lib.get_loss(s.base)(
        base_logprobs(apply, batch, mask_key, s), replay.base_old, replay.base_ref,
        batch.advantages, batch.completion_mask, epsilon_low=s.epsilon_low,
        epsilon_high=s.epsilon_high, beta=s.beta, row_weights=batch.base_row_weights,
        **({} if weights is None else {"token_weights": weights}))
  step = None
  if s.use_step:
    step = losses_lib.dispo_step_loss(
        step_logprobs(apply, batch, mask_key, s), replay.step_old, replay.step_ref,
        batch.branch_advantages, batch.action_mask, epsilon_low=s.epsilon_low,
        epsilon_high=s.epsilon_high, beta=s.beta, normaliser=s.step_normaliser,
        ratio=s.step_ratio, denominator=denominators["step"], row_weights=batch.step_row_weights)
  return losses_lib.combine_losses(base, step, s.alpha_base, s.alpha_step)


def split_microbatches(batch: RLBatch, num_microbatches: int) -> RLBatch:
  """Every row axis ``[N, ...] -> [M, N/M, ...]``; the replay log-probs ``[μ, N, ...] ->
  [M, μ, N/M, ...]`` (their row axis is axis 1).

  Micro-batch ``m`` takes rows ``m, m + M, m + 2M, ...``: the reshape ``[N] -> [N/M, M]`` keeps the
  row axis's device sharding on its leading part, so every device still holds its own rows of each
  micro-batch (a contiguous split would hand whole micro-batches to a few devices).
  """
  n, m = batch.num_rows, num_microbatches
  if n % m:
    raise ValueError(f"{n} rows do not split into {m} micro-batches")

  def split_rows(x, axis=0):
    shape = x.shape[:axis] + (n // m, m) + x.shape[axis + 1:]
    return jnp.moveaxis(x.reshape(shape), axis + 1, 0)

  rows = jax.tree.map(split_rows, batch.replace(replay=None))
  replay = None if batch.replay is None else jax.tree.map(
      lambda x: split_rows(x, axis=1), batch.replay)
  return rows.replace(replay=replay)


def _tree_all_finite(tree) -> Array:
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)


def accumulated_grads(loss_of: Callable, trainable: Any, batch: RLBatch, num_microbatches: int,
                      dropout_key: Array | None) -> tuple[Array, Dict[str, Array], Any]:
  """``(loss, diagnostics, grads)`` of ``loss_of(trainable, batch, dropout_key)``, accumulated
  over ``num_microbatches`` with ``lax.scan`` (the loss uses whole-batch normalisers, so the sum
  of micro-batch gradients is the full-batch gradient)."""
  value_and_grad = jax.value_and_grad(loss_of, has_aux=True)
  if num_microbatches == 1:
    (loss, diag), grads = value_and_grad(trainable, batch, dropout_key)
    return loss, diag, grads
  micro = split_microbatches(batch, num_microbatches)

  def body(acc, xs):
    mb, index = xs
    key = None if dropout_key is None else jax.random.fold_in(dropout_key, index)
    (l, d), g = value_and_grad(trainable, mb, key)
    return jax.tree.map(jnp.add, acc, g), (l, d)

  zeros = jax.tree.map(jnp.zeros_like, trainable)
  grads, (losses, diags) = jax.lax.scan(body, zeros, (micro, jnp.arange(num_microbatches)))
  loss = losses.sum()  # each micro-batch loss is already divided by the global denominator
  diag = jax.tree.map(jnp.mean, diags)
  diag["loss"] = loss
  return loss, diag, grads


def make_update_fn(bind: Bind, optimizer: optax.GradientTransformation, s: ObjectiveSettings,
                   lora_dropout: bool = False) -> Callable:
  """Builds ``update(trainable, frozen, opt_state, batch, iteration, mask_key, dropout_key)``.

  ``bind((trainable, frozen), dropout_key)`` gives the policy's forward. The gradient is
  accumulated over ``s.num_microbatches``. A non-finite loss, gradient or updated parameter skips
  the update and reports ``skipped = 1``. Returns ``(trainable, opt_state, metrics)``; jit it with
  shardings and ``donate_argnums`` for the params and optimizer state.
  """

  def update(trainable, frozen, opt_state, batch: RLBatch, iteration, mask_key, dropout_key=None):
    denominators = loss_denominators(batch, s)

    def loss_of(t, mb, key):
      apply = bind((t, frozen), key if lora_dropout else None)
      return policy_loss(apply, mb, iteration, mask_key, s, denominators)

    loss, diag, grads = accumulated_grads(loss_of, trainable, batch, s.num_microbatches,
                                          dropout_key)
    updates, new_opt_state = optimizer.update(grads, opt_state, trainable)
    new_trainable = optax.apply_updates(trainable, updates)
    finite = jnp.isfinite(loss) & _tree_all_finite(grads) & _tree_all_finite(new_trainable)
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
    metrics = dict(diag)
    metrics["grad_norm"] = optax.tree.norm(grads)
    metrics["skipped"] = (~finite).astype(jnp.float32)
    return keep(new_trainable, trainable), keep(new_opt_state, opt_state), metrics

  return update
