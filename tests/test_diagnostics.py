"""rl/diagnostics.py: where credit comes from (distinguishable branch states by bin, credited
tokens)."""

import jax.numpy as jnp
import numpy as np

from dispo_jax import rl


def test_branch_diagnostics_by_bin():
  rewards = jnp.asarray([[[1.0, 0.0]], [[1.0, 1.0]], [[0.0, 0.5]], [[0.2, 0.2]]])
  adv = rl.get_advantage("mean")(rewards)
  timesteps = jnp.asarray([[1], [5], [9], [-1]])  # T = 10: early, mid, late, unused
  d = rl.branch_diagnostics(rewards, adv, timesteps, 10)
  np.testing.assert_allclose([d["state/distinguishable_early"], d["state/distinguishable_mid"],
                              d["state/distinguishable_late"]], [1.0, 0.0, 1.0])
  np.testing.assert_allclose(d["state/zero_adv_frac"], 1 / 3)
  assert int(d["state/states_late"]) == 1


def test_credited_tokens_count_scored_tokens_with_a_non_zero_advantage():
  from dispo_jax.rl.diagnostics import credited_tokens
  mask = jnp.asarray([[True, True, False], [True, True, True], [True, False, False]])
  assert float(credited_tokens(mask, jnp.asarray([0.5, 0.0, -1.0]))) == 3.0  # rows 0 and 2
  fillings = jnp.ones((2, 1, 2, 4), bool).at[0, 0, 1, 2:].set(False)  # [N, S, Z, G]
  assert float(credited_tokens(fillings, jnp.asarray([[[1.0, -1.0]], [[0.0, 0.0]]]))) == 6.0
