"""sampling/decoding.py: the completion mask and its EOS truncation."""

import jax.numpy as jnp

from dispo_jax import rl
from dispo_jax.sampling import completion_mask


def test_eos_truncation_of_the_completion_mask():
  logp = jnp.log(jnp.full((1, 5), 0.5))
  cmask = completion_mask(jnp.asarray([[4, 4, 1, 4, 4]]), eos_id=1)
  base, _ = rl.diffu_grpo_loss(logp, logp - 0.1, None, jnp.asarray([1.0]), cmask, beta=0.0)
  after_eos = logp.at[0, 3:].set(-9.0)
  moved, _ = rl.diffu_grpo_loss(after_eos, logp - 0.1, None, jnp.asarray([1.0]), cmask, beta=0.0)
  assert float(base) == float(moved)
  before = logp.at[0, 2].set(-2.0)  # the EOS token itself counts
  assert float(rl.diffu_grpo_loss(before, logp - 0.1, None, jnp.asarray([1.0]), cmask,
                                  beta=0.0)[0]) != float(base)
