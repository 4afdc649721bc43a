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

import jax
import jax.numpy as jnp
import optax

from dispo_jax.rl import behaviour as behaviour_lib
from dispo_jax.rl import losses as losses_lib
from dispo_jax.rl import objectives
from dispo_jax.rl.batch import ReplayLogprobs, RLBatch
from dispo_jax.rl.logprobs import Apply
from dispo_jax.rl.objectives import spg as spg_lib
from dispo_jax.rl.objectives import state_term
from dispo_jax.rl.objectives import trace as trace_lib

Array = jax.Array
# (params, dropout_key | None) -> the policy's forward with those parameters
Bind = Callable[[Any, Optional[Array]], Apply]
STATE_TOKENS = ("action", "action_with_tail", "all")


@dataclasses.dataclass(frozen=True)
class ObjectiveSettings:
  """Static settings of the learner (hashable); config section ``rl``, one key per field.

  Attributes:
    method: the config's top-level ``method``: a registered objective
      (:data:`dispo_jax.rl.objectives.OBJECTIVES`: "diffu_grpo", "spg", "trace") alone, or with
      DiSPO's fixed-state term as "dispo_<name>" ("dispo" = diffu-GRPO with the term); see
      :func:`dispo_jax.rl.objectives.parse_method`.
    num_iterations: μ, optimizer updates per rollout batch (old log-probs are ``[μ, ...]``).
    num_microbatches: gradient-accumulation micro-batches of one update.
    base_loss: the token-level loss of ratio objectives (diffu-GRPO, trace), a name of
      :data:`dispo_jax.rl.losses.LOSSES`; "" = diffu-GRPO's clipped loss.
    alpha_base, alpha_state: L = α_base·L_base + α_state·L_state.
    epsilon_low, epsilon_high: PPO clip range ``[1−ε_low, 1+ε_high]`` (diffu-GRPO and state term).
    beta: KL coefficient (k3 estimator against the reference policy) of the diffu-GRPO and state
      terms; 0 skips the reference. SPG's own term has no KL.
    p_mask_prompt: prompt-token mask probability of the surrogates and of SPG's earlier blocks.
    state_normaliser: see :data:`dispo_jax.rl.losses.STATE_NORMALISERS`.
    base_normaliser: ``group`` (d1 as run: token mean within each prompt group, then the mean
      over groups) or ``batch`` (one token mean over the batch); see
      :data:`dispo_jax.rl.losses.BASE_NORMALISERS`.
    state_ratio: ``token`` (per-token ratios, GRPO-style) or ``branch`` (Eq. 5: one ratio per
      branch, clipped per branch).
    state_tokens: which tokens of a branch the state term scores (:data:`STATE_TOKENS`):
      ``action`` — the state's masked positions up to and including the branch's first EOS;
      ``action_with_tail`` — every masked position, the EOS padding tail included (the behaviour
      before the EOS cut); ``all`` — the "all tokens" ablation (Table 3a, Prop. A.3): every
      completion token of the filled branch up to its first EOS, scored on the same state
      canvas x_t as the action tokens (tokens already committed in x_t are scored at their own,
      visible positions), so only the token set differs from ``action``.
    spg: SPG's term (:class:`dispo_jax.rl.objectives.spg.SPGSettings`; methods spg and dispo_spg).
    trace: the trajectory-consistent surrogate (:class:`dispo_jax.rl.objectives.trace.TraceSettings`).
    behaviour: the importance correction for approximate rollouts
      (:class:`dispo_jax.rl.behaviour.BehaviourSettings`; see :attr:`importance_weight`).
    num_timesteps: T of the rollouts (derived from the sampler; the trace surrogate maps
      commit timesteps to segments).
    approximate_sampler: whether the rollouts come from the dual cache or threshold decoding
      (derived from the sampler; resolves ``behaviour.weight="auto"``).
    mask_id: MASK token id (derived from the model).
  """

  method: str = "dispo"
  num_iterations: int = 1
  num_microbatches: int = 1
  base_loss: str = ""
  alpha_base: float = 1.0
  alpha_state: float = 0.5
  epsilon_low: float = 0.5
  epsilon_high: float = 0.5
  beta: float = 0.04
  p_mask_prompt: float = 0.15
  state_normaliser: str = "branch"
  base_normaliser: str = "group"
  state_ratio: str = "token"
  state_tokens: str = "action"
  spg: spg_lib.SPGSettings = dataclasses.field(default_factory=spg_lib.SPGSettings)
  trace: trace_lib.TraceSettings = dataclasses.field(default_factory=trace_lib.TraceSettings)
  behaviour: behaviour_lib.BehaviourSettings = dataclasses.field(
      default_factory=behaviour_lib.BehaviourSettings)
  num_timesteps: int = 128
  approximate_sampler: bool = False
  mask_id: int = 126336

  def __post_init__(self):
    for problem in self._problems():
      raise ValueError(problem)
    if self.base_loss:
      losses_lib.get_loss(self.base_loss)

  def _problems(self):
    one_of = lambda name, value, allowed: (
        [] if value in allowed else [f"{name}={value!r} is not one of {list(allowed)}"])
    try:
      objectives.parse_method(self.method)
    except ValueError as e:
      yield str(e)
      return
    yield from one_of("state_normaliser", self.state_normaliser, losses_lib.STATE_NORMALISERS)
    yield from one_of("base_normaliser", self.base_normaliser, losses_lib.BASE_NORMALISERS)
    yield from one_of("state_ratio", self.state_ratio, losses_lib.STATE_RATIOS)
    yield from one_of("state_tokens", self.state_tokens, STATE_TOKENS)
    positive = {"num_iterations": self.num_iterations, "num_microbatches": self.num_microbatches,
                "epsilon_low": self.epsilon_low, "epsilon_high": self.epsilon_high}
    for name, value in positive.items():
      if not value > 0:
        yield f"{name}={value!r} must be > 0"
    for name in ("alpha_base", "alpha_state", "beta"):
      if not getattr(self, name) >= 0:
        yield f"{name}={getattr(self, name)!r} must be >= 0 (and finite)"
    if not 0 <= self.p_mask_prompt < 1:
      yield f"p_mask_prompt={self.p_mask_prompt!r} must be in [0, 1)"
    if self.state_ratio == "branch" and self.state_normaliser not in ("branch", "sum"):
      yield (f"state_ratio='branch' (Eq. 5) needs state_normaliser 'branch' or 'sum', got "
             f"{self.state_normaliser!r}")
    yield from self.base_term.problems(self)

  @property
  def base_term(self) -> objectives.Objective:
    """The registered objective of the base term."""
    return objectives.OBJECTIVES[objectives.parse_method(self.method)[0]]

  @property
  def adds_state_term(self) -> bool:
    """Whether DiSPO's fixed-state term is added to the base term."""
    return objectives.parse_method(self.method)[1]

  @property
  def importance_weight(self) -> str:
    """The base term's importance weight in force: ``none``, ``token`` or ``sequence``."""
    if not self.base_term.replays_logprobs:
      return "none"
    return self.behaviour.resolved(self.approximate_sampler)


# ----------------------------------------------------------------------------------------------
# Replay
# ----------------------------------------------------------------------------------------------


def with_old_and_ref_logprobs(old: Apply, ref: Apply | None, batch: RLBatch, mask_keys: Array,
                              s: ObjectiveSettings) -> RLBatch:
  """Fills ``batch.replay`` for every one of the μ mask keys ``mask_keys [μ]``.

  Computed once per rollout batch with the behaviour policy ``old`` (the parameters before any
  inner update) and the reference ``ref`` (None or β = 0: no reference); the inner update ``i``
  uses ``mask_keys[i]`` again, so its masks are exactly the same.
  """
  ref = None if s.beta == 0 else ref

  base_term = s.base_term

  def per_key(key) -> ReplayLogprobs:
    out = {}
    if base_term.replays_logprobs:
      out["base_old"] = base_term.logprobs(old, batch, key, s)
      if ref is not None:
        out["base_ref"] = base_term.logprobs(ref, batch, key, s)
    if s.adds_state_term:
      out["state_old"] = state_term.logprobs(old, batch, key, s)
      if ref is not None:
        out["state_ref"] = state_term.logprobs(ref, batch, key, s)
    return ReplayLogprobs(**out)

  replay = jax.lax.map(per_key, mask_keys)
  return batch.replace(replay=jax.tree.map(jax.lax.stop_gradient, replay))


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

  (The base terms' per-row weights are global by construction: the objective's
  :meth:`~dispo_jax.rl.objectives.Objective.row_weights`, filled at rollout time.)
  """
  return {"state": state_term.denominator(batch, s)} if s.adds_state_term else {}


def policy_loss(apply: Apply, batch: RLBatch, iteration: Array, mask_key: Array,
                s: ObjectiveSettings, denominators: Dict[str, Array] | None = None
                ) -> tuple[Array, Dict[str, Array]]:
  """``L = α_base·L_base + α_state·L_state`` for inner iteration ``iteration`` (its mask key)."""
  denominators = denominators or loss_denominators(batch, s)
  replay = (batch.replay or ReplayLogprobs()).at(iteration)
  base = s.base_term.loss(apply, batch, replay, mask_key, s)
  state = None
  if s.adds_state_term:
    state = state_term.loss(apply, batch, replay, mask_key, s, denominators["state"])
  return losses_lib.combine_losses(base, state, s.alpha_base, s.alpha_state)


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
