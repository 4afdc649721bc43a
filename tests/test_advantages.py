"""rl/advantages.py: group and branch advantages."""

import jax.numpy as jnp
import numpy as np
import pytest

from dispo_jax import rl


def test_advantages():
  r = jnp.asarray([[1.0, 0.0, 0.5], [2.0, 2.0, 2.0]])
  np.testing.assert_allclose(rl.get_advantage("mean")(r), [[0.5, -0.5, 0.0], [0, 0, 0]])
  loo = np.asarray(rl.get_advantage("leave_one_out")(r))
  np.testing.assert_allclose(loo[0], [1 - 0.25, 0 - 0.75, 0.5 - 0.5])
  np.testing.assert_allclose(rl.group_advantages(jnp.asarray([1.0, 0, 3, 5]), 2), [0.5, -0.5, -1, 1])
  with pytest.raises(KeyError, match="unknown advantage 'bogus'"):
    rl.get_advantage("bogus")
  with pytest.raises(ValueError, match="groups of 3"):
    rl.group_advantages(jnp.ones(4), 3)
