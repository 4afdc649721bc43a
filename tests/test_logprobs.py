"""rl/logprobs.py: token log-probs against a NumPy log-softmax, a backward whose memory does not
grow with the number of branches sharing the logits, per-row prompt masks, and one forward shared
by a state's branches."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dispo_jax import rl
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


def _split_and_plain(vocab=64, remat=False):
  from dispo_jax.model import llada
  from dispo_jax.model.config import get_config
  from dispo_jax.rl.policy import make_policy
  cfg = get_config("tiny", vocab_size=vocab, d_model=32, n_layers=2, n_heads=2,
                   mlp_hidden_size=64, remat=remat)
  graphdef, state = llada.init_model(cfg, seed=0)
  policy, trainable, frozen = make_policy(cfg, graphdef, state, None, copy_reference=False)
  split = lambda t: policy.bind((t, frozen))
  plain = lambda t: (lambda tokens, key_mask: split(t)(tokens, key_mask))  # logits only
  return cfg, trainable, split, plain


def test_split_forward_logprobs_equal_the_plain_forward():
  """The policy's split forward (chunked head) gives the plain forward's log-probs and gradients."""
  from dispo_jax.rl.logprobs import canvas_logprobs
  cfg, trainable, split, plain = _split_and_plain()
  r, p, g = 2, 5, 64
  prompt = jax.random.randint(jax.random.key(0), (r, p), 0, cfg.mask_token_id)
  canvas = jnp.full((r, g), cfg.mask_token_id, jnp.int32)
  targets = jax.random.randint(jax.random.key(1), (r, 2, g), 0, cfg.mask_token_id)
  weights = jax.random.normal(jax.random.key(2), targets.shape)
  outs = [jax.value_and_grad(lambda t: jnp.sum(weights * canvas_logprobs(
      bind(t), prompt, None, canvas, targets, cfg.mask_token_id)))(trainable)
          for bind in (split, plain)]
  np.testing.assert_allclose(outs[0][0], outs[1][0], rtol=1e-5)
  for a, b in zip(jax.tree.leaves(outs[0][1]), jax.tree.leaves(outs[1][1])):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)  # fp32 reassociation only


def test_chunked_head_keeps_no_vocab_tensor_through_the_backward():
  """Vocab 8192, 4 rows of 256 completion tokens: through the plain forward the backward holds an
  [R, G, V] fp32 tensor (32 MiB) several times over; the chunked head stays below one."""
  from dispo_jax.rl.logprobs import canvas_logprobs
  cfg, trainable, split, plain = _split_and_plain(vocab=8192)
  r, p, g = 4, 8, 256
  args = (jnp.zeros((r, p), jnp.int32), None, jnp.full((r, g), cfg.mask_token_id, jnp.int32),
          jnp.zeros((r, 2, g), jnp.int32), cfg.mask_token_id)

  def temp_bytes(bind):
    loss = lambda t: jnp.sum(canvas_logprobs(bind(t), *args))
    return jax.jit(jax.grad(loss)).lower(trainable).compile().memory_analysis().temp_size_in_bytes

  fp32_vocab = r * g * cfg.vocab_size * 4
  plain_bytes, split_bytes = temp_bytes(plain), temp_bytes(split)  # 112 MiB and 26 MiB here
  assert plain_bytes >= 3 * fp32_vocab
  assert split_bytes < fp32_vocab and split_bytes < plain_bytes / 3


def test_prompt_masks_are_per_row_and_independent_of_batch_split():
  key = jax.random.key(0)
  full = np.asarray(rl.prompt_mask(key, jnp.arange(64), 200, 0.15))
  half = np.asarray(rl.prompt_mask(key, jnp.arange(32, 64), 200, 0.15))
  np.testing.assert_array_equal(full[32:], half)
  assert abs(full.mean() - 0.15) < 0.01
  other = np.asarray(rl.prompt_mask(jax.random.key(1), jnp.arange(64), 200, 0.15))
  assert (full != other).any()


def test_branches_share_one_forward(micro):
  """Log-probs of Z targets read from one forward equal Z separate passes."""
  cfg, apply_fn, params = micro
  mask = cfg.mask_token_id
  prompt = jnp.asarray([[1, 0, 2]], jnp.int32)
  canvas = jnp.asarray([[mask, 1, mask, mask]], jnp.int32)
  targets = jnp.asarray([[[0, 1, 2, 3], [3, 1, 0, 0], [1, 1, 1, 1]]], jnp.int32)
  args = dict(p_mask_prompt=0.15, mask_id=mask)
  together = rl.surrogate_logprobs(lambda t, k: apply_fn(params, t, k), prompt, None, canvas, targets,
                                   jax.random.key(4), jnp.zeros(1, jnp.int32), **args)
  for zi in range(3):
    alone = rl.surrogate_logprobs(lambda t, k: apply_fn(params, t, k), prompt, None, canvas, targets[:, zi],
                                  jax.random.key(4), jnp.zeros(1, jnp.int32), **args)
    np.testing.assert_allclose(together[:, zi], alone, atol=1e-6)
