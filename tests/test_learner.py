"""The RL update end to end on a tiny model with a synthetic reward."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dispo_jax.model import llada
from dispo_jax.model.config import LoRAConfig, get_config
from dispo_jax import pipeline
from dispo_jax.rl import learner, objectives
from dispo_jax.rl.behaviour import BehaviourSettings
from dispo_jax.rl.losses import state_token_mask
from dispo_jax.rl.objectives import state_term
from dispo_jax.rl.objectives.trace import TraceSettings
from dispo_jax.rl.policy import make_policy
from dispo_jax.sampling import SamplerSettings

TARGET = 7


def reward_fn(completions, prompt_index):
  """Fraction of completion tokens equal to TARGET (a synthetic, easily learnable reward)."""
  return (np.asarray(completions) == TARGET).mean(-1)


def _setup(method="dispo", use_lora=False, beta=0.04, seed=0):
  cfg = get_config("tiny", vocab_size=16, d_model=32, n_layers=1, n_heads=2, mlp_hidden_size=64)
  lora = LoRAConfig(rank=4, alpha=8, dropout=0.0) if use_lora else None
  graphdef, state = llada.init_model(cfg, seed=seed)
  if use_lora:
    # A random base's head (std 0.02 after RMSNorm) caps every logit near ±0.6, so adapters on
    # q/k/v/up alone could not make any token likely; scale it like a trained model's head.
    state["ff_out"]["kernel"][...] = state["ff_out"]["kernel"][...] * 20
  policy, trainable, frozen = make_policy(cfg, graphdef, state, lora, seed=seed)
  sampler = SamplerSettings(gen_length=8, block_length=8, num_timesteps=4, temperature=1.0,
                            mask_id=cfg.mask_token_id)
  objective = learner.ObjectiveSettings(method=method, mask_id=cfg.mask_token_id, beta=beta)
  rs = pipeline.RolloutSettings(group_size=4, num_branches=2)
  prompts = np.tile(np.arange(3, dtype=np.int32), (4, 1))
  lengths = np.full((4,), 3, np.int32)
  return cfg, policy, trainable, frozen, sampler, objective, rs, prompts, lengths


def _collect(setup, key, objective=None, rs=None):
  """``(batch, metrics)`` of one rollout batch (``objective`` / ``rs`` override the setup's)."""
  cfg, policy, trainable, frozen, sampler, setup_objective, setup_rs, prompts, lengths = setup
  settings = pipeline.CollectSettings(sampler, objective or setup_objective, rs or setup_rs,
                                      cfg.eos_token_id)
  batch, metrics = pipeline.collect(key, policy.graphdef,
                                       policy.model_state((trainable, frozen)), prompts, lengths,
                                       reward_fn, settings)
  return batch, metrics


def _replay(policy, params, batch, keys, objective):
  return learner.with_old_and_ref_logprobs(policy.bind(params), policy.bind_reference(params),
                                           batch, keys, objective)


def _replayed(method, mu):
  """``(setup, batch, metrics, keys)``: one rollout batch of ``method`` (key 0) with its replay
  log-probs for ``mu`` mask keys split from key 1."""
  setup = _setup(method)
  _, policy, trainable, frozen, _, objective, *_ = setup
  batch, metrics = _collect(setup, jax.random.key(0))
  keys = jax.random.split(jax.random.key(1), mu)
  return setup, _replay(policy, (trainable, frozen), batch, keys, objective), metrics, keys


@pytest.mark.parametrize("method", ["diffu_grpo", "dispo", "dispo_spg"])
def test_first_inner_update_has_ratio_exactly_one(method):
  setup, batch, metrics, keys = _replayed(method, 3)
  _, policy, trainable, frozen, _, objective, *_ = setup
  if not objective.base_term.replays_logprobs:  # SPG's term is ratio-free: old log-probs only for the branch states
    assert batch.replay.base_old is None and batch.replay.state_old.shape[0] == 3
    assert batch.sequence_weights.shape == (16,)
  else:
    assert batch.replay.base_old.shape == (3,) + batch.completion.shape
  for i in range(3):
    _, diag = learner.policy_loss(policy.bind((trainable, frozen)), batch, i, keys[i], objective)
    prefixes = ("base/",) if objective.base_term.replays_logprobs else ("state/",)
    for prefix in prefixes + (("state/",) if method == "dispo" else ()):
      # Same masks => ratio 1 up to float reassociation between separately compiled graphs (a
      # different prompt mask would move it by orders of magnitude more).
      np.testing.assert_allclose([float(diag[prefix + "ratio_min"]),
                                  float(diag[prefix + "ratio_max"])], 1.0, atol=1e-6)
      assert float(diag[prefix + "kl"]) < 1e-10  # full fine-tuning: reference == initial policy
  done, adv = np.asarray(batch.completion_mask), np.asarray(batch.advantages)
  assert metrics["base/credited_tokens"] == done[adv != 0].sum()
  assert metrics["sampler/timesteps_taken"] == 4  # the sampler's steps, no threshold
  if objective.adds_state_term:
    assert batch.actions.shape == (16, 1, 2, 8)
    assert 0.0 <= metrics["state/distinguishable_frac"] <= 1.0
    actions, branch_adv = np.asarray(batch.action_mask), np.asarray(batch.branch_advantages)
    assert metrics["state/credited_tokens"] == actions[branch_adv != 0].sum()


def test_each_inner_iteration_has_its_own_masks_and_updates_move_the_ratio():
  """Old log-probs of iteration i use mask key i: they differ between iterations, the current
  policy under key i reproduces them exactly (ratio 1) and under another key does not; after a
  real update at iteration 0 the ratio of iteration 1 moves off 1, by far less than a mask mismatch.
  A learner that reused one mask for every iteration fails the first two checks."""
  setup, batch, _, keys = _replayed("dispo", 2)
  _, policy, trainable, frozen, _, objective, *_ = setup
  for name in ("base_old", "state_old"):
    old = np.asarray(getattr(batch.replay, name))
    assert np.abs(old[0] - old[1]).max() > 1e-3, name  # different prompt masks per iteration

  def ratio_spread(params, iteration, key):
    _, diag = learner.policy_loss(policy.bind(params), batch, iteration, key, objective)
    return max(abs(float(diag[p + m]) - 1.0) for p in ("base/", "state/")
               for m in ("ratio_min", "ratio_max"))

  assert ratio_spread((trainable, frozen), 1, keys[1]) < 1e-6
  mismatch = ratio_spread((trainable, frozen), 1, keys[0])
  assert mismatch > 1e-3
  opt = optax.sgd(1e-2)
  update = jax.jit(learner.make_update_fn(policy.bind, opt, objective))
  moved, _, _ = update(trainable, frozen, opt.init(trainable), batch, 0, keys[0])
  after_update = ratio_spread((moved, frozen), 1, keys[1])
  assert 1e-6 < after_update < mismatch


def test_all_tokens_ablation_scores_on_the_same_state_as_the_action_tokens():
  """Table 3a compares token sets at one state: ``state_tokens=all`` only widens the scored mask;
  the log-probs come from the same forward of the same canvas x_t as ``action``'s."""
  setup = _setup("dispo")
  cfg, policy, trainable, frozen, *_ = setup
  settings = {name: learner.ObjectiveSettings(method="dispo", mask_id=cfg.mask_token_id,
                                              state_tokens=name) for name in ("action", "all")}
  batch, _ = _collect(setup, jax.random.key(0), settings["all"])
  apply = policy.bind((trainable, frozen))
  key = jax.random.key(3)
  logp = {name: state_term.logprobs(apply, batch, key, s) for name, s in settings.items()}
  np.testing.assert_array_equal(logp["action"], logp["all"])
  action = state_token_mask(batch.state_canvas == cfg.mask_token_id, batch.actions,
                           cfg.eos_token_id, "action")
  assert (np.asarray(batch.action_mask) >= np.asarray(action)).all()
  assert np.asarray(batch.action_mask).sum() > np.asarray(action).sum()  # committed tokens too


@pytest.mark.parametrize("options", [
    {"state_tokens": "all"}, {"state_tokens": "action_with_tail"},
    {"state_ratio": "branch", "state_normaliser": "branch"}, {"state_normaliser": "group"},
    {"state_normaliser": "tokens"}, {"base_normaliser": "batch"}])
def test_objective_options_train_at_ratio_one(options):
  setup = _setup("dispo")
  cfg, policy, trainable, frozen, *_ = setup
  objective = learner.ObjectiveSettings(method="dispo", mask_id=cfg.mask_token_id, **options)
  batch, _ = _collect(setup, jax.random.key(0), objective)
  assert batch.action_mask.shape == batch.actions.shape  # [N, S, Z, G]
  keys = jax.random.split(jax.random.key(1), 1)
  batch = _replay(policy, (trainable, frozen), batch, keys, objective)
  _, diag = learner.policy_loss(policy.bind((trainable, frozen)), batch, 0, keys[0], objective)
  np.testing.assert_allclose([float(diag["state/ratio_min"]), float(diag["state/ratio_max"])], 1.0,
                             atol=1e-6)
  assert float(diag["state/log_ratio_p99"]) < 1e-5
  opt = optax.sgd(1e-2)
  update = jax.jit(learner.make_update_fn(policy.bind, opt, objective))
  _, _, metrics = update(trainable, frozen, opt.init(trainable), batch, 0, keys[0])
  assert float(metrics["skipped"]) == 0.0 and float(metrics["grad_norm"]) > 0


@pytest.mark.parametrize("method", ["dispo", "dispo_spg"])
def test_microbatched_gradient_equals_full_batch(method):
  setup, batch, _, keys = _replayed(method, 2)
  _, policy, trainable, frozen, _, objective, *_ = setup
  sgd = optax.sgd(1.0)
  results = []
  for micro in (1, 4):
    update = jax.jit(learner.make_update_fn(
        policy.bind, sgd, dataclasses.replace(objective, num_microbatches=micro)))
    new, _, metrics = update(trainable, frozen, sgd.init(trainable), batch, 1, keys[1])
    results.append((new, metrics))
  for a, b in zip(jax.tree.leaves(results[0][0]), jax.tree.leaves(results[1][0])):
    np.testing.assert_allclose(a, b, atol=2e-6)
  np.testing.assert_allclose(results[0][1]["loss"], results[1][1]["loss"], rtol=1e-5)


def test_non_finite_gradient_skips_the_update():
  setup, batch, _, keys = _replayed("diffu_grpo", 1)
  _, policy, trainable, frozen, _, objective, *_ = setup
  batch = batch.replace(advantages=batch.advantages.at[0].set(jnp.nan))
  opt = optax.adam(1e-2)
  update = jax.jit(learner.make_update_fn(policy.bind, opt, objective))
  new, _, metrics = update(trainable, frozen, opt.init(trainable), batch, 0, keys[0])
  assert float(metrics["skipped"]) == 1.0
  for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(trainable)):
    np.testing.assert_array_equal(a, b)


def _rollout_rewards(setup, objective, rs, rollouts=12, nll=None):
  """Trains ``rollouts`` rollout batches × 2 updates (adam 1e-2); the rollout reward of each
  (and, into the list ``nll``, each batch's ``policy_nll``)."""
  cfg, policy, trainable, frozen, *_ = setup
  opt = optax.adam(1e-2)
  opt_state = opt.init(trainable)
  update = jax.jit(learner.make_update_fn(policy.bind, opt, objective))
  old_ref = jax.jit(lambda p, b, k: _replay(policy, p, b, k, objective))
  rewards = []
  key = jax.random.key(0)
  for _ in range(rollouts):
    key, k_roll, k_mask = jax.random.split(key, 3)
    batch, metrics = _collect((*setup[:2], trainable, *setup[3:]), k_roll, objective, rs)
    rewards.append(metrics["reward_mean"])
    mask_keys = jax.random.split(k_mask, 2)
    batch = old_ref((trainable, frozen), batch, mask_keys)
    if nll is not None:
      nll.append(float(learner.behaviour_metrics(batch)["policy_nll"]))
    for i in range(2):
      trainable, opt_state, m = update(trainable, frozen, opt_state, batch, i, mask_keys[i])
      assert float(m["skipped"]) == 0.0
  return rewards


@pytest.mark.parametrize("method, use_lora", [("diffu_grpo", False), ("dispo", True),
                                              ("spg", False)])
def test_reward_rises_on_a_learnable_task(method, use_lora):
  setup = _setup(method, use_lora=use_lora, beta=0.0)
  nll = [] if method != "spg" else None
  rewards = _rollout_rewards(setup, setup[5], setup[6], nll=nll)
  assert np.mean(rewards[-3:]) > np.mean(rewards[:3]) + 0.15, rewards
  if nll is not None:  # the policy concentrates on TARGET: its sampled tokens grow likelier
    assert np.mean(nll[-3:]) < np.mean(nll[:3]) - 0.1, nll


def test_policy_nll_is_the_mean_negative_old_logprob_of_the_completion_tokens():
  """Inner iteration 0's old log-probs, averaged over ``completion_mask`` only."""
  old = -np.arange(1, 13, dtype=np.float32).reshape(2, 2, 3)  # [μ, N, G]
  mask = np.array([[True, True, False], [True, False, False]])
  batch = learner.RLBatch(prompt_tokens=jnp.zeros((2, 2), jnp.int32), prompt_key_mask=None,
                          completion=jnp.zeros((2, 3), jnp.int32), completion_mask=jnp.asarray(mask),
                          advantages=jnp.zeros(2), row_ids=jnp.arange(2),
                          replay=learner.ReplayLogprobs(base_old=jnp.asarray(old)))
  got = float(learner.behaviour_metrics(batch)["policy_nll"])
  np.testing.assert_allclose(got, (1 + 2 + 4) / 3, rtol=1e-6)
  assert learner.behaviour_metrics(batch.replace(replay=learner.ReplayLogprobs())) == {}


@pytest.mark.parametrize("alpha_state, rises", [(1.0, True), (0.0, False)])
def test_the_state_term_alone_drives_the_reward(alpha_state, rises):
  """DiSPO with α_base = 0: only the fixed-state term can move the policy. It must raise the
  reward; with α_state = 0 too nothing is learned (so a zeroed state term fails the first case, and a
  sign-flipped one drives the reward down)."""
  setup = _setup("dispo", beta=0.0)
  objective = learner.ObjectiveSettings(method="dispo", alpha_base=0.0, alpha_state=alpha_state,
                                        beta=0.0, mask_id=setup[0].mask_token_id)
  rs = pipeline.RolloutSettings(group_size=4, num_branches=4, timestep_schedule="uniform")
  rewards = _rollout_rewards(setup, objective, rs)
  gain = np.mean(rewards[-3:]) - np.mean(rewards[:3])
  assert (gain > 0.15) if rises else (abs(gain) < 0.05), rewards


def test_a_registered_base_loss_plugs_in_without_touching_the_rest():
  from dispo_jax.rl import losses

  calls = []

  @losses.register_loss("test_reinforce")
  def reinforce(logp, old_logp, ref_logp, advantages, mask, *, epsilon_low, epsilon_high, beta,
                row_weights):
    calls.append(logp.shape)
    loss = -jnp.sum(advantages[:, None] * logp * mask * row_weights[:, None])
    return loss, {"base/loss": loss}

  try:
    with pytest.raises(ValueError, match="already registered"):
      losses.register_loss("test_reinforce")(reinforce)
    setup = _setup("dispo")
    cfg, policy, trainable, frozen, *_ = setup
    objective = learner.ObjectiveSettings(method="dispo", base_loss="test_reinforce",
                                          mask_id=cfg.mask_token_id)
    batch, _ = _collect(setup, jax.random.key(0), objective)
    keys = jax.random.split(jax.random.key(1), 1)
    batch = _replay(policy, (trainable, frozen), batch, keys, objective)
    loss, diag = learner.policy_loss(policy.bind((trainable, frozen)), batch, 0, keys[0],
                                     objective)
    assert calls and np.isfinite(float(loss)) and "state/loss" in diag
  finally:
    del losses.LOSSES["test_reinforce"]


def test_importance_weight_is_one_where_the_objective_scores_the_samplers_own_conditional():
  """trace at N = T, no prompt masking, the rollout's temperature, plain rollouts: π_old is the
  sampler's distribution, so every weight is 1, the weighted loss is the unweighted one, and the
  mismatch metrics are zero."""
  setup = _setup("trace")
  cfg, policy, trainable, frozen, sampler, *_ = setup
  make = lambda weight: learner.ObjectiveSettings(
      method="trace", mask_id=cfg.mask_token_id, p_mask_prompt=0.0,
      trace=TraceSettings(segments=sampler.num_timesteps,
                                            temperature=sampler.temperature),
      num_timesteps=sampler.num_timesteps, behaviour=BehaviourSettings(weight))
  weighted, plain = make("token"), make("none")
  batch, _ = _collect(setup, jax.random.key(0), weighted)
  keys = jax.random.split(jax.random.key(1), 2)
  batch = _replay(policy, (trainable, frozen), batch, keys, weighted)
  weights = objectives.importance_weights(batch, batch.replay.at(1), weighted)
  np.testing.assert_allclose(weights, 1.0, atol=1e-4)
  metrics = learner.behaviour_metrics(batch)
  assert float(metrics["behaviour/abs_log_ratio_max"]) < 1e-4
  apply = policy.bind((trainable, frozen))
  losses = [float(learner.policy_loss(apply, batch, 1, keys[1], s)[0]) for s in (weighted, plain)]
  np.testing.assert_allclose(losses[0], losses[1], rtol=1e-4, atol=1e-7)
  assert learner.ObjectiveSettings(approximate_sampler=True).importance_weight == "token"
  assert learner.ObjectiveSettings(method="spg", beta=0.0,
                                   approximate_sampler=True).importance_weight == "none"


def test_an_update_with_non_finite_new_parameters_is_skipped():
  setup, batch, _, keys = _replayed("diffu_grpo", 1)
  _, policy, trainable, frozen, _, objective, *_ = setup
  # b2 = -1: the second step's bias correction 1 - b2^2 is 0, so finite loss and gradients give
  # NaN parameters (the probe's optim.b2=-1 run saved 14,076 of them).
  bad = optax.adamw(1e-2, b2=-1.0)
  update = jax.jit(learner.make_update_fn(policy.bind, bad, objective))
  first, opt_state, m = update(trainable, frozen, bad.init(trainable), batch, 0, keys[0])
  assert float(m["skipped"]) == 0.0
  second, _, m = update(first, frozen, opt_state, batch, 0, keys[0])
  assert float(m["skipped"]) == 1.0 and np.isfinite(float(m["loss"]))
  assert np.isfinite(float(m["grad_norm"]))
  for a, b in zip(jax.tree.leaves(second), jax.tree.leaves(first)):
    np.testing.assert_array_equal(a, b)
