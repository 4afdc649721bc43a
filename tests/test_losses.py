"""rl/losses.py: the token losses' exact estimator tests on an enumerable model (DiSPO's state term,
diffu-GRPO), and their properties (clipping, KL, normalisers, row weights, the tokens scored)."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dispo_jax import rl
from dispo_jax.rl import losses as rl_losses
from dispo_jax.sampling import completion_mask, sample_branches


def _flat(tree):
  return jnp.concatenate([jnp.ravel(x) for x in jax.tree.leaves(tree)])


@pytest.mark.parametrize("advantage, factor", [("mean", 0.5), ("leave_one_out", 1.0)])
def test_dispo_gradient_matches_exact_fixed_state_objective(micro, advantage, factor):
  """E[∇(−L_state)] = (Z−1)/Z ∇J_state with the mean baseline, ∇J_state with leave-one-out (Z = 2).

  J_state(θ) = Σ_a π_θ(a | s) R(a) is enumerated over all 4² fillings of the two masked positions.
  The Monte Carlo mean over 6000 keys is compared along ∇J and three random directions; the
  tolerance is 5 standard errors of that mean (a false failure has probability < 1e-5 per check).
  """
  cfg, apply_fn, params = micro
  mask = cfg.mask_token_id
  prompt = jnp.asarray([[1, 0]], jnp.int32)
  state_canvas = jnp.asarray([[2, mask, mask]], jnp.int32)
  reward_table = jnp.asarray(np.random.default_rng(0).uniform(0, 1, (4, 4)), jnp.float32)
  row = jnp.zeros((1,), jnp.int32)
  key0 = jax.random.key(0)

  def state_logprobs(p, targets):
    return rl.surrogate_logprobs(lambda t, k: apply_fn(p, t, k), prompt, None, state_canvas, targets, key0, row,
                                 p_mask_prompt=0.0, mask_id=mask)

  fillings = jnp.asarray(list(itertools.product(range(4), repeat=2)), jnp.int32)  # [16, 2]
  full_targets = jnp.concatenate([jnp.full((16, 1), 2, jnp.int32), fillings], axis=1)[None]

  def exact_objective(p):
    logp = state_logprobs(p, full_targets)[0, :, 1:].sum(-1)  # [16]
    return jnp.sum(jnp.exp(logp) * reward_table[fillings[:, 0], fillings[:, 1]])

  probs_sum = jnp.exp(state_logprobs(params, full_targets)[0, :, 1:].sum(-1)).sum()
  np.testing.assert_allclose(probs_sum, 1.0, rtol=1e-5)  # the enumeration is complete
  grad_exact = _flat(jax.grad(exact_objective)(params))

  logits = apply_fn(params, jnp.concatenate([prompt, state_canvas], 1), None)[:, 2:]  # [1, G, V]
  action_mask = (state_canvas == mask)[:, None]  # [N=1, S=1, G]

  def one_key(key):
    filled, _ = sample_branches(key, state_canvas[:, None], logits[:, None], None, 2, 1.0, mask)
    rewards = reward_table[filled[..., 1], filled[..., 2]]  # [1, 1, Z]
    adv = rl.get_advantage(advantage)(rewards)

    def neg_loss(p):
      logp = state_logprobs(p, filled[:, 0])[:, None]  # [1, 1, Z, G]
      loss, _ = rl.state_term_loss(logp, jax.lax.stop_gradient(logp), None, adv, action_mask,
                                   beta=0.0, normaliser="sum")
      return -loss
    return _flat(jax.grad(neg_loss)(params))

  grads = jax.jit(jax.vmap(one_key))(jax.random.split(jax.random.key(1), 6000))  # [M, D]
  directions = [grad_exact / jnp.linalg.norm(grad_exact)]
  directions += list(jax.random.normal(jax.random.key(2), (3, grad_exact.size)))
  for u in directions:
    proj = grads @ u
    mean, se = float(proj.mean()), float(proj.std() / np.sqrt(proj.size))
    target = factor * float(grad_exact @ u)
    assert abs(mean - target) <= 5 * se, (advantage, mean, target, se)
  # the test can tell the two estimators apart: along ∇J they differ by many standard errors
  proj = grads @ directions[0]
  other = (1.5 - factor) * float(grad_exact @ directions[0])  # 1.0 <-> 0.5
  assert abs(float(proj.mean()) - other) > 10 * float(proj.std() / np.sqrt(proj.size))


def test_dispo_gradient_on_the_default_training_path(micro):
  """The training path's defaults — branches drawn at τ = 0.5, prompt masking, action tokens cut at
  the branch's first EOS, the token normaliser, k3 KL — against the exact expectation of the
  estimator, enumerated over all 16 × 16 branch pairs (the denominator depends on the pair). The
  test can tell it from branches drawn at τ = 1 and from an uncut EOS tail (> 10 SE)."""
  cfg, apply_fn, params = micro
  # token 1 plays EOS: the micro model's most likely filling, so the cut changes many pairs
  mask, eos, tau, z = cfg.mask_token_id, 1, 0.5, 2
  prompt = jnp.asarray([[1, 0, 2]], jnp.int32)
  state_canvas = jnp.asarray([[2, mask, mask]], jnp.int32)
  reward_table = jnp.asarray(np.random.default_rng(4).uniform(0, 1, (4, 4)), jnp.float32)
  row, key0 = jnp.zeros((1,), jnp.int32), jax.random.key(5)
  assert 0 < int(rl.prompt_mask(key0, row, 3, 0.5).sum()) < 3  # the prompt really is masked

  def surrogate(p, targets):  # [1, ..., G] targets
    return rl.surrogate_logprobs(lambda t, k: apply_fn(p, t, k), prompt, None, state_canvas, targets, key0, row,
                                 p_mask_prompt=0.5, mask_id=mask)

  logits = apply_fn(params, jnp.concatenate([prompt, state_canvas], 1), None)[:, 3:]  # sampler's
  fillings = np.asarray(list(itertools.product(range(4), repeat=2)), np.int32)  # [16, 2]
  full = jnp.concatenate([jnp.full((16, 1), 2, jnp.int32), jnp.asarray(fillings)], axis=1)[None]
  rewards = np.asarray(reward_table)[fillings[:, 0], fillings[:, 1]]
  pairs = np.asarray(list(itertools.product(range(16), repeat=2)))  # [256, 2]
  adv = rewards[pairs] - rewards[pairs].mean(-1, keepdims=True)  # [256, Z]

  def exact_gradient(sample_tau, cut_at_eos):
    q = jax.nn.softmax(jnp.where(jnp.arange(5) == mask, -jnp.inf,
                                 logits[0, 1:].astype(jnp.float32)) / sample_tau)  # [2, V]
    q_fill = np.asarray(q[0, fillings[:, 0]] * q[1, fillings[:, 1]])  # [16]
    weight = q_fill[pairs[:, 0]] * q_fill[pairs[:, 1]]
    np.testing.assert_allclose(weight.sum(), 1.0, rtol=1e-5)  # the enumeration is complete
    second = (fillings[:, 0] != eos) if cut_at_eos else np.ones(16, bool)  # position 2 scored
    denominator = (1 + second.astype(np.float32))[pairs].sum(-1)  # tokens of both branches

    def expected_neg_loss(p):
      logp = surrogate(p, full)[0]  # [16, G]
      per_fill = logp[:, 1] + jnp.where(jnp.asarray(second), logp[:, 2], 0.0)  # Σ_{i∈M}
      return jnp.sum(jnp.asarray(weight / denominator)
                     * jnp.sum(jnp.asarray(adv) * per_fill[jnp.asarray(pairs)], -1))
    return _flat(jax.grad(expected_neg_loss)(params))

  def one_key(key):
    filled, action_mask = sample_branches(key, state_canvas[:, None], logits[:, None], None, z,
                                          tau, mask)
    scored = rl_losses.state_token_mask(action_mask, filled, eos, "action")
    adv_z = rl.get_advantage("mean")(reward_table[filled[..., 1], filled[..., 2]])

    def neg_loss(p):
      logp = surrogate(p, filled[:, 0])[:, None]  # [1, 1, Z, G]
      loss, _ = rl.state_term_loss(logp, jax.lax.stop_gradient(logp),
                                   jax.lax.stop_gradient(logp), adv_z, scored, beta=0.04)
      return -loss
    return _flat(jax.grad(neg_loss)(params))

  grads = jax.jit(jax.vmap(one_key))(jax.random.split(jax.random.key(6), 6000))
  exact = exact_gradient(tau, True)
  directions = [exact / jnp.linalg.norm(exact)]
  directions += list(jax.random.normal(jax.random.key(7), (3, exact.size)))
  for u in directions:
    proj = grads @ u
    mean, se = float(proj.mean()), float(proj.std() / np.sqrt(proj.size))
    assert abs(mean - float(exact @ u)) <= 5 * se, (mean, float(exact @ u), se)
  for wrong in (exact_gradient(1.0, True), exact_gradient(tau, False)):
    gaps = []
    for u in directions + [(wrong - exact) / jnp.linalg.norm(wrong - exact)]:
      proj = grads @ u
      gaps.append(abs(float(proj.mean()) - float(wrong @ u)) / float(proj.std() / np.sqrt(proj.size)))
    assert max(gaps) > 10, gaps


@pytest.mark.parametrize("normaliser", ["group", "batch"])
def test_diffu_grpo_gradient_at_ratio_one_is_reinforce(micro, normaliser):
  """At ρ = 1 the gradient is REINFORCE's with d1's normaliser, written out row by row here."""
  cfg, apply_fn, params = micro
  mask = cfg.mask_token_id
  rng = np.random.default_rng(0)
  prompts = jnp.asarray(rng.integers(0, 4, (4, 3)), jnp.int32)
  completion = jnp.asarray([[0, 1, 3, 2], [2, 2, 2, 2], [3, 0, 1, 1], [1, 3, 3, 0]], jnp.int32)
  cmask = completion_mask(completion, cfg.eos_token_id)  # eos = 3: 3, 4, 1, 2 tokens
  rewards = jnp.asarray([1.0, 0.0, 0.2, 0.9])
  adv = rl.group_advantages(rewards, group_size=2)
  key, rows = jax.random.key(3), jnp.arange(4)
  masked = jnp.full(completion.shape, mask, jnp.int32)
  weights = rl.base_row_weights(cmask, 2, normaliser)

  def logp_fn(p):
    return rl.surrogate_logprobs(lambda t, k: apply_fn(p, t, k), prompts, None, masked, completion, key, rows,
                                 p_mask_prompt=0.15, mask_id=mask)

  def grpo(p):
    logp = logp_fn(p)
    return rl.diffu_grpo_loss(logp, jax.lax.stop_gradient(logp), None, adv, cmask, beta=0.0,
                              row_weights=weights)[0]

  tokens = [3, 4, 1, 2]  # completion tokens of each row, counted by hand

  def reinforce(p):
    logp = logp_fn(p)
    row_sums = [-adv[r] * jnp.sum(logp[r, :tokens[r]]) for r in range(4)]
    if normaliser == "batch":  # one token mean over the batch
      return sum(row_sums) / sum(tokens)
    # d1: token mean within each group (rows 0-1: 7 tokens, rows 2-3: 3), then mean over groups
    return ((row_sums[0] + row_sums[1]) / 7 + (row_sums[2] + row_sums[3]) / 3) / 2

  g1, g2 = jax.grad(grpo)(params), jax.grad(reinforce)(params)
  np.testing.assert_allclose(_flat(g1), _flat(g2), rtol=1e-5, atol=1e-8)
  assert float(jnp.abs(_flat(g1)).max()) > 0


def test_base_row_weights_by_hand():
  cmask = jnp.asarray([[1, 1, 0], [1, 0, 0], [1, 1, 1], [1, 1, 1]], bool)
  np.testing.assert_allclose(rl.base_row_weights(cmask, 2, "group"),
                             [1 / 3 / 2, 1 / 3 / 2, 1 / 6 / 2, 1 / 6 / 2], rtol=1e-6)
  np.testing.assert_allclose(rl.base_row_weights(cmask, 2, "batch"), [1 / 9] * 4, rtol=1e-6)
  with pytest.raises(ValueError, match="unknown base normaliser"):
    rl.base_row_weights(cmask, 2, "device")


def test_branch_ratio_is_eq5():
  """``state_ratio='branch'``: one ratio per branch, exp of the summed log-ratio, clipped per branch."""
  rng = np.random.default_rng(1)
  n, s, z, g = 2, 1, 2, 4
  logp = jnp.asarray(rng.normal(-1.0, 0.3, (n, s, z, g)), jnp.float32)
  old = logp - jnp.asarray(rng.normal(0.0, 0.2, (n, s, z, g)), jnp.float32)
  adv = jnp.asarray([[[1.0, -1.0]], [[0.5, -0.5]]], jnp.float32)
  mask = jnp.asarray(rng.uniform(size=(n, s, z, g)) < 0.7).at[..., 0].set(True)
  loss, diag = rl.state_term_loss(logp, old, None, adv, mask, beta=0.0, normaliser="sum",
                                  ratio="branch", epsilon_low=0.2, epsilon_high=0.2)
  expected = 0.0
  lp, od, m, a = (np.asarray(x, np.float64) for x in (logp, old, mask, adv))
  for i in range(n):
    rho = np.exp(((lp[i, 0] - od[i, 0]) * m[i, 0]).sum(-1))  # [Z]
    per_branch = -np.minimum(rho * a[i, 0], np.clip(rho, 0.8, 1.2) * a[i, 0])
    expected += per_branch.sum() / z
  np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
  branch_means = np.abs(((lp - od) * m).sum(-1) / m.sum(-1)).ravel()  # every branch has a token
  np.testing.assert_allclose(float(diag["state/log_ratio_median"]), np.median(branch_means),
                             rtol=1e-5)
  np.testing.assert_allclose(float(diag["state/log_ratio_p99"]), np.percentile(branch_means, 99),
                             rtol=1e-5)
  with pytest.raises(ValueError, match="needs normaliser 'branch' or 'sum'"):
    rl.state_term_loss(logp, old, None, adv, mask, normaliser="tokens", ratio="branch")


def test_only_action_positions_receive_gradient():
  rng = np.random.default_rng(0)
  n, s, z, g, v, mask_id = 2, 1, 3, 5, 6, 5
  logits = jnp.asarray(rng.standard_normal((n * s, g, v)), jnp.float32)
  action_mask = jnp.asarray([[[1, 0, 1, 0, 0]], [[0, 0, 0, 1, 1]]], bool)
  targets = jnp.asarray(rng.integers(0, 5, (n * s, z, g)), jnp.int32)
  adv = jnp.asarray(rng.standard_normal((n, s, z)), jnp.float32)
  old = rl.token_logprobs(logits, targets, mask_id).reshape(n, s, z, g) - 0.3
  ref = old + 0.1

  def loss(lg):
    logp = rl.token_logprobs(lg, targets, mask_id).reshape(n, s, z, g)
    return rl.state_term_loss(logp, old, ref, adv, action_mask, beta=0.04)[0]

  grad = np.asarray(jax.grad(loss)(logits)).reshape(n, s, g, v)
  am = np.asarray(action_mask)
  assert (grad[~am] == 0).all()  # exactly zero off the action positions
  assert (np.abs(grad[am]).sum(-1) > 0).all()
  assert (grad[..., mask_id] == 0).all()  # MASK is outside the action space


def test_clipping_on_both_sides():
  eps = 0.5
  old = jnp.zeros((4, 1))
  logp = jnp.log(jnp.asarray([[2.0], [0.3], [2.0], [0.3]]))  # ratios
  adv = jnp.asarray([1.0, -1.0, -1.0, 1.0])
  mask = jnp.ones((4, 1), bool)

  def per_row(lp):
    loss, aux = rl.losses.clipped_token_loss(lp, old, None, adv[:, None], eps, eps, 0.0)
    return loss, aux

  loss, aux = per_row(logp)
  np.testing.assert_allclose(np.asarray(loss)[:, 0], [-1.5, 0.5, 2.0, -0.3], rtol=1e-6)
  grads = np.asarray(jax.grad(lambda lp: per_row(lp)[0].sum())(logp))[:, 0]
  assert grads[0] == 0 and grads[1] == 0  # clipped above (A>0) and below (A<0): no gradient
  assert grads[2] != 0 and grads[3] != 0  # the pessimistic branch is unclipped
  _, diag = rl.diffu_grpo_loss(logp, old, None, adv, mask, epsilon_low=eps, epsilon_high=eps,
                               beta=0.0)
  np.testing.assert_allclose([diag["base/clip_high_frac"], diag["base/clip_low_frac"]],
                             [0.25, 0.25])
  np.testing.assert_allclose([diag["base/ratio_min"], diag["base/ratio_max"]], [0.3, 2.0],
                             rtol=1e-6)


def test_kl_is_zero_when_policies_agree_and_positive_otherwise():
  logp = jnp.log(jnp.asarray([0.1, 0.5, 0.9]))
  np.testing.assert_array_equal(rl.k3_kl(logp, logp), 0.0)
  assert (np.asarray(rl.k3_kl(logp, logp + 0.2)) > 0).all()
  g = jax.grad(lambda lp: rl.k3_kl(lp, logp).sum())(logp)
  np.testing.assert_array_equal(g, 0.0)


def test_log_ratio_stats_average_within_each_unit_before_the_quantiles():
  # three completions: token log-ratios (0.2, 0.4 | 0.0 masked), (−1.0 | rest masked), none scored
  logp = jnp.asarray([[0.2, 0.4, 9.0], [-1.0, 5.0, 5.0], [3.0, 3.0, 3.0]])
  mask = jnp.asarray([[1, 1, 0], [1, 0, 0], [0, 0, 0]], bool)
  stats = rl.log_ratio_stats(logp, jnp.zeros_like(logp), mask, "base/")
  # unit means |0.3| and |−1.0|; the unscored completion is left out (a sum would give 0.6)
  np.testing.assert_allclose(float(stats["base/log_ratio_median"]), 0.65, rtol=1e-6)
  np.testing.assert_allclose(float(stats["base/log_ratio_p99"]), 0.3 + 0.99 * 0.7, rtol=1e-6)


@pytest.mark.parametrize("normaliser, ratio", [("branch", "token"), ("tokens", "token"),
                                               ("branch", "branch")])
def test_state_term_kl_and_its_gradient_away_from_the_reference(normaliser, ratio):
  """θ ≠ θ_ref, zero advantages: the step loss is β times the normalised k3 KL and its gradient
  per token is ``β (1 − exp(ref − logp)) · weight``, computed here in NumPy (float64)."""
  rng = np.random.default_rng(4)
  n, s, z, g, beta = 2, 2, 2, 5, 0.3
  logp = jnp.asarray(rng.normal(-2.0, 0.5, (n, s, z, g)), jnp.float32)
  ref = jnp.asarray(rng.normal(-2.0, 0.5, (n, s, z, g)), jnp.float32)
  mask = jnp.asarray(rng.uniform(size=(n, s, z, g)) < 0.6).at[..., 0].set(True)
  adv = jnp.zeros((n, s, z))
  loss_of = lambda lp: rl.state_term_loss(lp, logp, ref, adv, mask, beta=beta,
                                          normaliser=normaliser, ratio=ratio)[0]
  loss, grad = jax.value_and_grad(loss_of)(logp)
  lp, rf, m = (np.asarray(x, np.float64) for x in (logp, ref, mask))
  kl = np.exp(rf - lp) - (rf - lp) - 1
  dkl = 1 - np.exp(rf - lp)
  tokens = m.sum(-1, keepdims=True)
  if normaliser == "tokens":
    weight = m / m.sum()
  else:  # a token mean in each branch, the mean over Z, then over the n·s states
    weight = m / tokens / z / (n * s)
  np.testing.assert_allclose(float(loss), beta * (kl * weight).sum(), rtol=1e-5)
  np.testing.assert_allclose(grad, beta * dkl * weight, rtol=1e-4, atol=1e-7)
  assert float(loss) > 1e-3


def test_state_normalisers():
  n, s, z, g = 2, 1, 2, 3
  logp = jnp.zeros((n, s, z, g))
  adv = jnp.asarray([[[1.0, -1.0]], [[0.0, 0.0]]])
  action = jnp.asarray([[[1, 1, 0]], [[1, 1, 1]]], bool)
  # at ratio 1 and β = 0 each action token contributes −A
  tokens = rl.state_term_loss(logp, logp, None, adv, action, beta=0.0, normaliser="tokens")[0]
  assert float(tokens) == 0.0
  adv2 = jnp.asarray([[[1.0, 0.0]], [[0.0, 0.0]]])
  results = {name: float(rl.state_term_loss(logp, logp, None, adv2, action, beta=0.0,
                                            normaliser=name)[0])
             for name in ("tokens", "nonzero_tokens", "branch", "sum")}
  np.testing.assert_allclose(results["tokens"], -2 / 10)      # 2 tokens × −1 over 10 tokens
  np.testing.assert_allclose(results["nonzero_tokens"], -2 / 4)  # only state 1's 4 tokens
  # branch: row 0's branches have token means −1 and 0, row 1's 0 and 0; mean over Z, then states
  np.testing.assert_allclose(results["branch"], (-0.5 + 0) / 2)
  np.testing.assert_allclose(results["sum"], -2 / 2)
  # group: rows 0 and 1 in groups of one: row 0 sums −2 over its 4 tokens, row 1 0 over 6; the
  # mean over the 2 groups is −0.25 (one group of two rows is the token mean, −0.2)
  for group_size, expected in ((1, -2 / 4 / 2), (2, -2 / 10)):
    weights = rl.state_row_weights(rl.branch_mask(action, z), group_size)
    loss = rl.state_term_loss(logp, logp, None, adv2, action, beta=0.0, normaliser="group",
                              row_weights=weights)[0]
    np.testing.assert_allclose(float(loss), expected)
  with pytest.raises(ValueError, match="unknown state normaliser"):
    rl.state_term_loss(logp, logp, None, adv, action, normaliser="bogus")


def test_state_token_mask_by_hand():
  filled = jnp.asarray([[[[2, 1, 0, 2], [2, 0, 2, 0]]]], jnp.int32)  # [N=1, S=1, Z=2, G=4]
  action_mask = jnp.asarray([[[False, True, True, True]]])  # [N, S, G]
  expected = {"action": [[0, 1, 0, 0], [0, 1, 1, 1]],  # branch 0 ends at its EOS (id 1)
              "action_with_tail": [[0, 1, 1, 1], [0, 1, 1, 1]],
              "all": [[1, 1, 0, 0], [1, 1, 1, 1]]}  # every token up to the EOS
  for name, rows in expected.items():
    got = rl_losses.state_token_mask(action_mask, filled, 1, name)
    np.testing.assert_array_equal(np.asarray(got)[0, 0], np.asarray(rows, bool), err_msg=name)
  unused = rl_losses.state_token_mask(jnp.zeros_like(action_mask), filled, 1, "all")
  assert not np.asarray(unused).any()  # an unused state slot scores nothing
