"""A rollout batch and its μ optimizer updates, on one :class:`TrainState`.

Named levels (as Tunix's learner): the *global step* counts optimizer updates; every μ =
``ObjectiveSettings.num_iterations`` updates a new *rollout batch* is generated (d1 / TRL), its
behaviour and reference log-probs computed once, and replayed μ times; each update accumulates its
gradient over ``num_microbatches`` micro-batches (:func:`dispo_jax.rl.learner.make_update_fn`).
Every random choice is a function of (seed, rollout index, iteration), so a resumed run repeats a
straight run exactly.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any, Callable

import jax
import numpy as np

from dispo_jax.model import sharding
from dispo_jax.model.config import LoRAConfig
from dispo_jax.pipeline.rewards import RewardFn
from dispo_jax.pipeline.rollout import CollectSettings, collect
from dispo_jax.rl import learner
from dispo_jax.rl.policy import Policy, make_policy
from dispo_jax.rl.state import TrainState


@dataclasses.dataclass(frozen=True)
class StepFunctions:
  """The compiled pieces of :func:`rollout_and_update`, built once by :func:`make_step_functions`.

  Attributes:
    policy: the parameterisation (``bind``, ``bind_reference``, ``model_state``).
    settings: the static rollout bundle.
    update: jitted ``update(trainable, frozen, opt_state, batch, iteration, mask_key,
      dropout_key) -> (trainable, opt_state, metrics)``.
    replay: jitted ``replay(params, batch, mask_keys [μ]) -> batch`` (old and reference
      log-probs).
    behaviour_metrics: jitted :func:`dispo_jax.rl.learner.behaviour_metrics` (``policy_nll``).
    row_sharding: ``NamedSharding`` of ``[rows, length]`` arrays, or None.
  """

  policy: Policy
  settings: CollectSettings
  update: Callable
  replay: Callable
  behaviour_metrics: Callable
  row_sharding: Any = None


def make_step_functions(policy: Policy, optimizer, settings: CollectSettings, state: TrainState,
                        lora_dropout: bool = False, row_sharding=None) -> StepFunctions:
  """Jits the update (outputs keep ``state``'s shardings; params and optimizer state donated)
  and the replay log-probs."""
  shardings = lambda tree: jax.tree.map(lambda x: x.sharding, tree)
  update = jax.jit(learner.make_update_fn(policy.bind, optimizer, settings.objective, lora_dropout),
                   donate_argnums=(0, 2),
                   out_shardings=(shardings(state.trainable), shardings(state.opt_state), None))

  def replay(params, batch, mask_keys):
    return learner.with_old_and_ref_logprobs(policy.bind(params), policy.bind_reference(params),
                                             batch, mask_keys, settings.objective)
  metrics = functools.partial(learner.behaviour_metrics, cap=settings.objective.behaviour.cap)
  return StepFunctions(policy, settings, update, jax.jit(replay), jax.jit(metrics), row_sharding)


def setup_step(cfg, graphdef, model_state, settings: CollectSettings, optimizer,
               lora: LoRAConfig | None = None, *, mesh=None, seed: int = 0,
               copy_reference: bool = True, row_sharding=None
               ) -> tuple[StepFunctions, TrainState]:
  """The one set-up of RL training: the policy over a loaded model, the step-0
  :class:`TrainState` and the compiled :class:`StepFunctions` (train, the benchmarks and the
  tests build it here).

  Args:
    cfg, graphdef, model_state: the loaded model (:func:`dispo_jax.model.llada.init_model` or an
      HF checkpoint).
    lora: adapters to train (None: full fine-tuning, the reference a copy unless
      ``copy_reference`` is False).
    mesh: places parameters by the logical-axis rules and the optimizer state as its parameters
      (:func:`dispo_jax.model.sharding.optimizer_state_shardings`); None keeps them where they are.
    row_sharding: ``NamedSharding`` of the rollout's ``[rows, length]`` arrays, or None.
  """
  policy, trainable, frozen = make_policy(cfg, graphdef, model_state, lora, seed=seed,
                                          copy_reference=copy_reference)
  if mesh is None:  # committed where they are, as the update's outputs will be (no recompile)
    commit = lambda tree: jax.tree.map(lambda x: jax.device_put(x, x.sharding), tree)
    trainable, frozen = commit(trainable), commit(frozen)
    opt_state = commit(optimizer.init(trainable))
  else:
    trainable = sharding.place(trainable, sharding.state_shardings(trainable, mesh))
    frozen = sharding.place(frozen, sharding.state_shardings(frozen, mesh))
    opt_shardings = sharding.optimizer_state_shardings(
        jax.eval_shape(optimizer.init, trainable), jax.tree.map(lambda x: x.sharding, trainable),
        mesh)
    opt_state = jax.jit(optimizer.init, out_shardings=opt_shardings)(trainable)
  state = TrainState(trainable, frozen, opt_state, step=0)
  fns = make_step_functions(policy, optimizer, settings, state,
                            lora_dropout=lora is not None and lora.dropout > 0,
                            row_sharding=row_sharding)
  return fns, state


def rollout_and_update(fns: StepFunctions, state: TrainState, prompt_tokens: np.ndarray,
                       prompt_lengths: np.ndarray, reward_fn: RewardFn, key: jax.Array,
                       num_updates: int | None = None) -> tuple[TrainState, list[dict[str, float]]]:
  """One rollout batch from ``state`` and its updates (μ, or ``num_updates`` at a run's end).

  Args:
    prompt_tokens: ``[n, P]`` int32 left-padded prompts; prompt_lengths ``[n]``.
    reward_fn: ``(completions [R, G], prompt_index [R]) -> [R]`` rewards (host).
    key: this rollout batch's key (``fold_in(run key, rollout index)``).
  Returns:
    The new state and one metrics dict (host floats) per update. Each carries the batch's
    ``time/rollout_seconds`` (sampling, branches and rewards) and ``time/replay_seconds`` (old and
    reference log-probs), and its own ``step_seconds`` (the first update's includes both).
  """
  start = time.perf_counter()
  mu = fns.settings.objective.num_iterations
  roll_key, mask_key, dropout_key = jax.random.split(key, 3)
  batch, rollout_metrics = collect(
      roll_key, fns.policy.graphdef, fns.policy.model_state(state.params), prompt_tokens,
      prompt_lengths, reward_fn, fns.settings, row_sharding=fns.row_sharding)
  rollout_done = time.perf_counter()
  mask_keys = jax.random.split(mask_key, mu)
  batch = jax.block_until_ready(fns.replay(state.params, batch, mask_keys))
  rollout_metrics.update(
      {k: float(v) for k, v in jax.device_get(fns.behaviour_metrics(batch)).items()})
  rollout_metrics["time/rollout_seconds"] = rollout_done - start
  rollout_metrics["time/replay_seconds"] = time.perf_counter() - rollout_done
  trainable, opt_state, rows = state.trainable, state.opt_state, []
  for iteration in range(mu if num_updates is None else num_updates):
    trainable, opt_state, m = fns.update(trainable, state.frozen, opt_state, batch, iteration,
                                         mask_keys[iteration],
                                         jax.random.fold_in(dropout_key, iteration))
    m = {name: float(v) for name, v in jax.device_get(m).items()}
    rows.append({**rollout_metrics, **m, "skipped_updates": m["skipped"],
                 "step_seconds": time.perf_counter() - start})
    start = time.perf_counter()
  new_state = state.replace(trainable=trainable, opt_state=opt_state, step=state.step + len(rows))
  return new_state, rows
