"""rl/timesteps.py: the branch-timestep schedule ω(t) and its sampler."""

import jax
import numpy as np
import pytest

from dispo_jax import rl


def test_timestep_weights_and_sampler():
  w = rl.timestep_weights(4, "late", 4)
  np.testing.assert_allclose(w, np.array([1, 16, 81, 256]) / 354)
  np.testing.assert_allclose(rl.timestep_weights(4, "early", 4), np.array([256, 81, 16, 1]) / 354)
  np.testing.assert_allclose(rl.timestep_weights(5, "uniform"), np.full(5, 0.2))
  steps = np.asarray(rl.sample_branch_timesteps(jax.random.key(0), 3000, 4, 8, states_per_prompt=2))
  assert steps.shape == (12000, 2)
  groups = steps.reshape(3000, 4, 2)
  assert (groups == groups[:, :1]).all()  # shared by the K trajectories of a prompt
  assert (groups[..., 0] < groups[..., 1]).all()  # distinct, sorted
  one = np.asarray(rl.sample_branch_timesteps(jax.random.key(1), 20000, 1, 8))[:, 0]
  freq = np.bincount(one, minlength=8) / one.size
  expected = rl.timestep_weights(8)
  assert (np.abs(freq - expected) <= 5 * np.sqrt(expected * (1 - expected) / one.size)).all()
  with pytest.raises(ValueError, match="unknown timestep schedule"):
    rl.timestep_weights(4, "middle")
