"""rl/behaviour.py: the importance weight of approximate (cached, threshold) rollouts."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dispo_jax import rl


def test_importance_weights_by_hand():
  from dispo_jax.rl import behaviour
  old = jnp.log(jnp.asarray([[0.5, 0.2, 0.9], [0.3, 0.3, 0.3]]))
  drawn = jnp.log(jnp.asarray([[0.25, 0.4, 0.9], [0.3, 0.05, 0.6]]))
  mask = jnp.asarray([[1, 1, 0], [1, 1, 1]], bool)
  token = behaviour.importance_weights(old, drawn, mask, "token", cap=3.0)
  np.testing.assert_allclose(token, [[2.0, 0.5, 1.0], [1.0, 3.0, 0.5]], rtol=1e-6)  # 6 → C = 3
  sequence = behaviour.importance_weights(old, drawn, mask, "sequence", cap=3.0)
  np.testing.assert_allclose(sequence, [[1.0, 1.0, 1.0], [3.0, 3.0, 3.0]], rtol=1e-6)  # 2·½; 1·6·½
  agree = behaviour.importance_weights(old, old, mask, "token", cap=3.0)
  np.testing.assert_array_equal(agree, 1.0)
  m = behaviour.mismatch_metrics(old, drawn, mask, cap=3.0)
  d = np.log([2.0, 0.5, 1.0, 6.0, 0.5])
  np.testing.assert_allclose(float(m["behaviour/abs_log_ratio_mean"]), np.abs(d).mean(), rtol=1e-6)
  np.testing.assert_allclose(float(m["behaviour/abs_log_ratio_max"]), np.log(6.0), rtol=1e-6)
  np.testing.assert_allclose(float(m["behaviour/truncated_frac"]), 1 / 5)
  np.testing.assert_allclose(float(m["behaviour/kl"]), (np.exp(d) - d - 1).mean(), rtol=1e-5)
  with pytest.raises(ValueError, match="cap=0.0 must be finite and > 0"):
    behaviour.BehaviourSettings(cap=0.0)
  assert behaviour.BehaviourSettings().resolved(True) == "token"
  assert behaviour.BehaviourSettings().resolved(False) == "none"


def test_token_weights_scale_the_policy_gradient_term_only():
  rng = np.random.default_rng(0)
  logp = jnp.asarray(rng.normal(-1.0, 0.3, (2, 3)), jnp.float32)
  old = logp + 0.1
  ref = logp - 0.2
  adv = jnp.asarray([1.0, -0.5])
  mask = jnp.ones((2, 3), bool)
  weights = jnp.asarray([[2.0, 1.0, 0.5], [1.0, 1.5, 0.0]])
  loss_of = lambda lp, w: rl.diffu_grpo_loss(lp, old, ref, adv, mask, epsilon_low=0.2,
                                             epsilon_high=0.2, beta=0.1, token_weights=w)[0]
  weighted, grad = jax.value_and_grad(loss_of)(logp, weights)
  lp, od, rf, a, w = (np.asarray(x, np.float64) for x in (logp, old, ref, adv, weights))
  rho = np.exp(lp - od)
  pg = -np.minimum(rho * a[:, None], np.clip(rho, 0.8, 1.2) * a[:, None])
  kl = np.exp(rf - lp) - (rf - lp) - 1
  np.testing.assert_allclose(float(weighted), ((w * pg + 0.1 * kl) / 6).sum(), rtol=1e-5)
  np.testing.assert_allclose(float(loss_of(logp, None)), ((pg + 0.1 * kl) / 6).sum(), rtol=1e-5)
  # the weights are constants: no gradient flows into them
  np.testing.assert_array_equal(jax.grad(loss_of, argnums=1)(logp, weights), 0.0)
  assert np.isfinite(np.asarray(grad)).all()
