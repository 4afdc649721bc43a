"""Token log-probs against a NumPy log-softmax, and a backward whose memory does not grow with the
number of branches sharing the logits."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dispo_jax.rl.logprobs import token_logprobs

MASK = 49


def _numpy_logprobs(logits, targets):
  x = np.asarray(logits, np.float64)
  x[..., MASK] = -np.inf
  x = x - x.max(-1, keepdims=True)
  logp = x - np.log(np.exp(x).sum(-1, keepdims=True))  # [R, G, V]
  extra = targets.ndim - 2
  logp = logp.reshape(logp.shape[:1] + (1,) * extra + logp.shape[1:])
  return np.take_along_axis(np.broadcast_to(logp, targets.shape + logp.shape[-1:]),
                            np.asarray(targets)[..., None], -1)[..., 0]


@pytest.mark.parametrize("target_shape", [(3, 64), (3, 2, 64), (3, 1, 2, 64)])
def test_logprobs_equal_numpy(target_shape):
  logits = jax.random.normal(jax.random.key(0), (3, 64, 50)) * 3
  targets = jax.random.randint(jax.random.key(1), target_shape, 0, MASK)
  np.testing.assert_allclose(token_logprobs(logits, targets, MASK),
                             _numpy_logprobs(logits, targets), atol=2e-6)


def test_backward_memory_does_not_grow_with_branches():
  """bf16 logits [4, 256, 8192]: the backward's temporaries for Z = 4 branches stay those of one
  (a gather from logits broadcast to [R, Z, G, V] would add an fp32 copy per branch)."""
  r, g, v = 4, 256, 8192

  def temp_bytes(z):
    loss = lambda lg, t: jnp.sum(token_logprobs(lg, t, MASK))
    compiled = jax.jit(jax.grad(loss)).lower(jax.ShapeDtypeStruct((r, g, v), jnp.bfloat16),
                                             jax.ShapeDtypeStruct((r, z, g), jnp.int32)).compile()
    return compiled.memory_analysis().temp_size_in_bytes

  fp32_vocab = r * g * v * 4
  assert temp_bytes(4) < temp_bytes(1) + fp32_vocab / 8
