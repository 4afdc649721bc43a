"""The jitted sampler against a plain step-by-step NumPy reference of LLaDA's `generate`."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dispo_jax.model import llada
from dispo_jax.model.config import get_config
from dispo_jax.sampling import (SamplerSettings, completion_mask, generate, sample_branches,
                                sample_rollout_branches)
from dispo_jax.sampling.sampler import _timestep_keys

_fwd = jax.jit(llada.forward, static_argnums=0)


def llada_schedule(x, p, s: SamplerSettings):
  """LLaDA's block schedule: yields ``(global step, block start, block end, [B] tokens to commit)``;
  the counts are taken from the canvas ``x`` (updated by the caller) at each block's first step."""
  steps_b = s.num_timesteps // s.num_blocks
  for blk in range(s.num_blocks):
    lo, hi = p + blk * s.block_length, p + (blk + 1) * s.block_length
    n_masked = (x[:, lo:hi] == s.mask_id).sum(1)
    base, rem = n_masked // steps_b, n_masked % steps_b
    for j in range(steps_b):
      yield blk * steps_b + j, lo, hi, base + (j < rem)


def reference_generate(graphdef, state, prompt, lengths, key, s: SamplerSettings):
  """The project's sampler semantics (the module docstring of ``sampler.py``) step by step, selection
  on the host in NumPy (as the PyTorch reference runs).

  Shares only the model forward and the per-step PRNG keys with the implementation under test.
  """
  b, p = prompt.shape
  x = np.concatenate([prompt, np.full((b, s.gen_length), s.mask_id)], axis=1).astype(np.int32)
  length = x.shape[1]
  key_mask = (np.arange(length)[None] >= (p - lengths)[:, None]) if s.mask_padding else None
  prompt_index = np.arange(length) < p
  for t, lo, hi, num_transfer in llada_schedule(x, p, s):
    mask_index = x == s.mask_id
    logits = np.asarray(_fwd(graphdef, state, jnp.asarray(x),
                             None if key_mask is None else jnp.asarray(key_mask)), np.float32)
    if s.cfg_scale > 0:
      un_x = x.copy()
      un_x[:, prompt_index] = s.mask_id
      un = np.asarray(_fwd(graphdef, state, jnp.asarray(un_x),
                           None if key_mask is None else jnp.asarray(key_mask)), np.float32)
      logits = un + (s.cfg_scale + 1) * (logits - un)
    logits = logits.copy()
    logits[..., s.mask_id] = -np.inf
    gumbel_key, remask_key = _timestep_keys(key, t)
    block_logits = logits[:, lo:hi]
    if s.temperature == 0:
      x0_block = block_logits.argmax(-1)
    else:
      g = np.asarray(jax.random.gumbel(gumbel_key, block_logits.shape, jnp.float32))
      x0_block = (block_logits / np.float32(s.temperature) + g).argmax(-1)
    if s.remasking == "low_confidence":
      z = block_logits - block_logits.max(-1, keepdims=True)
      probs = np.exp(z) / np.exp(z).sum(-1, keepdims=True)
      conf_block = np.take_along_axis(probs, x0_block[..., None], -1)[..., 0]
    else:
      conf_block = np.asarray(jax.random.uniform(remask_key, x0_block.shape, jnp.float32))
    x0 = x.copy()
    x0[:, lo:hi] = x0_block
    confidence = np.full(x.shape, -np.inf, np.float32)
    confidence[:, lo:hi] = conf_block
    x0 = np.where(mask_index, x0, x)
    confidence = np.where(mask_index, confidence, -np.inf)
    for row in range(b):
      chosen = np.argsort(-confidence[row], kind="stable")[: num_transfer[row]]
      x[row, chosen] = x0[row, chosen]
  return x


def llada_generate_reference(graphdef, state, prompt, key, s: SamplerSettings):
  """LLaDA's published ``generate``, step by step in float64 NumPy: MASK stays in the vocabulary,
  pads are attended to, Gumbel noise in the ``exp(logits) / (−log u)^τ`` form, confidence from a
  float64 softmax, everything right of the current block at ``−∞``, still-masked positions anywhere
  to its left eligible. Shares only the forward and the noise draws (``u`` recovered from the
  implementation's Gumbel draw, ``g = −log(−log u)``) with the code under test.
  """
  b, p = prompt.shape
  x = np.concatenate([prompt, np.full((b, s.gen_length), s.mask_id)], axis=1).astype(np.int64)
  for t, lo, hi, num_transfer in llada_schedule(x, p, s):
    mask_index = x == s.mask_id
    logits = np.asarray(_fwd(graphdef, state, jnp.asarray(x, jnp.int32), None), np.float64)
    gumbel_key, remask_key = _timestep_keys(key, t)
    completion_logits = logits[:, p:]
    if s.temperature == 0:
      x0_c = completion_logits.argmax(-1)
    else:
      g = np.asarray(jax.random.gumbel(gumbel_key, completion_logits.shape, jnp.float32),
                     np.float64)
      u = np.exp(-np.exp(-g))
      x0_c = (np.exp(completion_logits) / (-np.log(u)) ** s.temperature).argmax(-1)
    if s.remasking == "low_confidence":
      z = completion_logits - completion_logits.max(-1, keepdims=True)
      probs = np.exp(z) / np.exp(z).sum(-1, keepdims=True)
      conf_c = np.take_along_axis(probs, x0_c[..., None], -1)[..., 0]
    else:
      conf_c = np.asarray(jax.random.uniform(remask_key, x0_c.shape, jnp.float32), np.float64)
    x0 = x.copy()
    x0[:, p:] = x0_c
    x0_p = np.full(x.shape, -np.inf)
    x0_p[:, p:] = conf_c
    x0_p[:, hi:] = -np.inf
    x0 = np.where(mask_index, x0, x)
    confidence = np.where(mask_index, x0_p, -np.inf)
    for row in range(b):
      chosen = np.argsort(-confidence[row], kind="stable")[: num_transfer[row]]
      x[row, chosen] = x0[row, chosen]
  return x


@pytest.fixture(scope="module")
def model():
  cfg = get_config("tiny", vocab_size=64, n_layers=2)
  graphdef, state = llada.init_model(cfg, seed=11)
  # Sharpen the head so greedy decoding is far from ties.
  state["ff_out"]["kernel"][...] = state["ff_out"]["kernel"][...] * 30
  return cfg, graphdef, state


@pytest.fixture(scope="module")
def soft_model():
  """The same model with an unsharpened head: confidences spread over (0, 1), so a confidence
  taken from the wrong softmax (tempered instead of plain) changes which positions commit."""
  cfg = get_config("tiny", vocab_size=64, n_layers=2)
  graphdef, state = llada.init_model(cfg, seed=11)
  state["ff_out"]["kernel"][...] = state["ff_out"]["kernel"][...] * 8
  return cfg, graphdef, state


def _prompts(cfg, b=3, p=7, seed=0):
  rng = np.random.default_rng(seed)
  lengths = np.array([7, 4, 2, 6, 5, 3][:b], np.int32)
  prompt = np.full((b, p), cfg.pad_token_id, np.int32)
  for i, n in enumerate(lengths):
    prompt[i, p - n:] = rng.integers(0, cfg.vocab_size - 3, n)
  return prompt, lengths


CASES = [
    # gen, block, steps, remasking, temperature, cfg
    (16, 8, 6, "low_confidence", 0.0, 0.0),   # 8 % 3 = 2 remainder
    (12, 4, 9, "low_confidence", 0.0, 0.0),   # three blocks, 4 % 3 = 1
    (10, 10, 4, "random", 0.0, 0.0),          # one block, remainder 2
    (8, 4, 10, "low_confidence", 0.0, 0.0),   # more steps than tokens: zero-commit steps
    (16, 8, 8, "low_confidence", 0.0, 1.5),   # CFG
    (12, 6, 4, "random", 0.0, 0.5),           # random remasking with CFG
    (16, 8, 6, "low_confidence", 0.8, 0.0),   # Gumbel sampling with shared noise
]


@pytest.mark.parametrize("gen, block, steps, remasking, temperature, cfg_scale", CASES)
@pytest.mark.parametrize("mask_padding", [True, False])
def test_matches_numpy_reference(model, gen, block, steps, remasking, temperature, cfg_scale,
                                 mask_padding):
  cfg, graphdef, state = model
  s = SamplerSettings(gen_length=gen, block_length=block, num_timesteps=steps, remasking=remasking,
                      temperature=temperature, cfg_scale=cfg_scale, mask_id=cfg.mask_token_id,
                      mask_padding=mask_padding)
  prompt, lengths = _prompts(cfg)
  key = jax.random.key(3)
  rollout = generate(graphdef, state, jnp.asarray(prompt), jnp.asarray(lengths), key, s)
  expected = reference_generate(graphdef, state, prompt, lengths, key, s)
  np.testing.assert_array_equal(np.asarray(rollout.tokens), expected)
  assert not (np.asarray(rollout.completion) == cfg.mask_token_id).any()


@pytest.mark.parametrize("temperature", [0.5, 2.0])
def test_matches_numpy_reference_with_unsaturated_confidences(soft_model, temperature):
  """At τ ≠ 1 with confidences well inside (0, 1), ranking by the tempered softmax would commit
  other positions than LLaDA's untempered ``softmax(logits)[x0]``."""
  cfg, graphdef, state = soft_model
  s = SamplerSettings(gen_length=16, block_length=8, num_timesteps=4, temperature=temperature,
                      mask_id=cfg.mask_token_id)
  prompt, lengths = _prompts(cfg)
  key = jax.random.key(7)
  rollout = generate(graphdef, state, jnp.asarray(prompt), jnp.asarray(lengths), key, s)
  np.testing.assert_array_equal(np.asarray(rollout.tokens),
                                reference_generate(graphdef, state, prompt, lengths, key, s))


@pytest.mark.parametrize("gen, block, steps, remasking, temperature", [
    (16, 8, 6, "low_confidence", 0.0), (12, 4, 9, "low_confidence", 0.8),
    (12, 6, 4, "random", 0.5)])
def test_allow_mask_action_matches_llada_generate(model, gen, block, steps, remasking,
                                                  temperature):
  cfg, graphdef, state = model
  s = SamplerSettings(gen_length=gen, block_length=block, num_timesteps=steps, remasking=remasking,
                      temperature=temperature, mask_id=cfg.mask_token_id, mask_padding=False,
                      allow_mask_action=True)
  prompt, lengths = _prompts(cfg)
  key = jax.random.key(5)
  rollout = generate(graphdef, state, jnp.asarray(prompt), jnp.asarray(lengths), key, s)
  expected = llada_generate_reference(graphdef, state, prompt, key, s)
  np.testing.assert_array_equal(np.asarray(rollout.tokens), expected)


def test_allow_mask_action_can_leave_mask_in_the_completion(model):
  """The LLaDA-semantics mode is exercised: with MASK's logit raised, MASK is committed in early
  blocks, re-drawn in later ones (a block-only window fails this case) and some stays."""
  cfg, graphdef, state = model
  state = jax.tree.map(jnp.copy, state)
  state["ff_out"]["kernel"][...] = state["ff_out"]["kernel"][...].at[:, cfg.mask_token_id].add(
      0.6 * jnp.abs(state["ff_out"]["kernel"][...]).max())
  s = SamplerSettings(gen_length=12, block_length=4, num_timesteps=6, temperature=1.0,
                      mask_id=cfg.mask_token_id, mask_padding=False, allow_mask_action=True)
  prompt, lengths = _prompts(cfg)
  rollout = generate(graphdef, state, jnp.asarray(prompt), jnp.asarray(lengths),
                     jax.random.key(0), s)
  assert (np.asarray(rollout.completion) == cfg.mask_token_id).any()
  expected = llada_generate_reference(graphdef, state, prompt, jax.random.key(0), s)
  np.testing.assert_array_equal(np.asarray(rollout.tokens), expected)


def test_same_key_same_output_different_key_differs(model):
  cfg, graphdef, state = model
  s = SamplerSettings(gen_length=16, block_length=8, num_timesteps=8, temperature=1.0,
                      mask_id=cfg.mask_token_id)
  prompt, lengths = map(jnp.asarray, _prompts(cfg))
  a = generate(graphdef, state, prompt, lengths, jax.random.key(0), s)
  b = generate(graphdef, state, prompt, lengths, jax.random.key(0), s)
  c = generate(graphdef, state, prompt, lengths, jax.random.key(1), s)
  np.testing.assert_array_equal(a.tokens, b.tokens)
  np.testing.assert_array_equal(a.commit_timestep, b.commit_timestep)
  assert (np.asarray(a.tokens) != np.asarray(c.tokens)).any()


@pytest.mark.parametrize("gen, block, steps", [(16, 8, 6), (12, 4, 9), (8, 4, 10)])
def test_commit_counts_blocks_and_no_remasking(model, gen, block, steps):
  cfg, graphdef, state = model
  s = SamplerSettings(gen_length=gen, block_length=block, num_timesteps=steps, temperature=0.7,
                      mask_id=cfg.mask_token_id)
  prompt, lengths = map(jnp.asarray, _prompts(cfg))
  every_timestep = jnp.tile(jnp.arange(steps, dtype=jnp.int32)[None], (prompt.shape[0], 1))
  r = generate(graphdef, state, prompt, lengths, jax.random.key(5), s, branch_timesteps=every_timestep)
  commit = np.asarray(r.commit_timestep)
  for row in commit:
    np.testing.assert_array_equal(np.bincount(row, minlength=steps), s.commits_per_timestep())
  # a block's tokens are committed only during that block's steps
  block_of_pos = np.arange(gen) // block
  assert (commit // s.timesteps_per_block == block_of_pos[None]).all()
  # the canvas at step t holds exactly the tokens committed before t, never remasked
  canvases = np.asarray(r.branch_canvas)  # [B, T, G]
  final = np.asarray(r.completion)
  for t in range(steps):
    committed = commit < t
    state_t = canvases[:, t]
    np.testing.assert_array_equal(state_t != cfg.mask_token_id, committed)
    np.testing.assert_array_equal(state_t[committed], final[committed])


def test_cached_logits_equal_a_separate_forward(model):
  cfg, graphdef, state = model
  s = SamplerSettings(gen_length=16, block_length=8, num_timesteps=8, temperature=0.9,
                      mask_id=cfg.mask_token_id)
  prompt, lengths = map(jnp.asarray, _prompts(cfg))
  branch_timesteps = jnp.asarray([[2, 7], [0, -1], [5, 6]], jnp.int32)
  r = generate(graphdef, state, prompt, lengths, jax.random.key(2), s, branch_timesteps=branch_timesteps)
  p = prompt.shape[1]
  key_mask = jnp.arange(p + 16)[None] >= (p - lengths)[:, None]
  for row in range(3):
    for slot in range(2):
      if int(branch_timesteps[row, slot]) < 0:
        continue
      canvas = jnp.concatenate([prompt[row], r.branch_canvas[row, slot]])[None]
      logits = _fwd(graphdef, state, canvas, key_mask[row][None])[0, p:]
      np.testing.assert_allclose(np.asarray(r.branch_logits[row, slot]), np.asarray(logits),
                                 atol=1e-5, rtol=1e-5)
  # the state at step 0 is the fully masked completion
  assert (np.asarray(r.branch_canvas[1, 0]) == cfg.mask_token_id).all()


def test_top_k_cache_is_the_top_of_the_full_cache(model):
  cfg, graphdef, state = model
  args = dict(gen_length=8, block_length=8, num_timesteps=4, temperature=0.5, mask_id=cfg.mask_token_id)
  prompt, lengths = map(jnp.asarray, _prompts(cfg))
  steps = jnp.asarray([[1], [2], [3]], jnp.int32)
  full = generate(graphdef, state, prompt, lengths, jax.random.key(4), SamplerSettings(**args),
                  branch_timesteps=steps)
  top = generate(graphdef, state, prompt, lengths, jax.random.key(4),
                 SamplerSettings(**args, cache_top_k=5), branch_timesteps=steps)
  np.testing.assert_array_equal(full.tokens, top.tokens)
  assert top.branch_logits.shape == (3, 1, 8, 5)
  expected = jax.lax.top_k(full.branch_logits.at[..., cfg.mask_token_id].set(-jnp.inf), 5)
  np.testing.assert_allclose(top.branch_logits, expected[0], atol=1e-6)
  np.testing.assert_array_equal(top.branch_logit_ids, expected[1])


def test_branch_samples_follow_tempered_softmax():
  """Frequency test on a 5-token vocabulary (id 4 = MASK, which must never be drawn)."""
  mask_id, z, tau = 4, 40_000, 0.7
  logits = jnp.asarray([[1.0, 0.0, -1.0, 2.0, 9.0], [0.5, 0.5, 0.0, -3.0, 9.0],
                        [3.0, 0.0, 0.0, 0.0, 9.0]], jnp.float32)  # [G=3, V=5]
  canvas = jnp.asarray([[mask_id, 2, mask_id]], jnp.int32)[None]  # [B=1, S=1, G=3]
  filled, action_mask = sample_branches(jax.random.key(0), canvas, logits[None, None], None,
                                        num_branches=z, temperature=tau, mask_id=mask_id)
  filled = np.asarray(filled)[0, 0]  # [Z, G]
  np.testing.assert_array_equal(np.asarray(action_mask)[0, 0], [True, False, True])
  assert (filled[:, 1] == 2).all()  # unmasked positions never change
  assert not (filled == mask_id).any()
  for pos in (0, 2):
    expected = np.asarray(jax.nn.softmax(logits[pos, :4] / tau))
    freq = np.bincount(filled[:, pos], minlength=5)[:4] / z
    # 5 standard errors of a binomial proportion: a false failure has probability < 1e-5
    tol = 5 * np.sqrt(expected * (1 - expected) / z)
    assert (np.abs(freq - expected) <= tol + 1e-12).all(), (pos, freq, expected)


def test_branch_top_k_and_greedy():
  mask_id = 9
  logits = jnp.asarray([[[[5.0, 1.0, 0.0]]]])  # top-3 values
  ids = jnp.asarray([[[[9, 3, 7]]]], jnp.int32)  # the best entry is MASK: excluded
  canvas = jnp.asarray([[[mask_id]]], jnp.int32)
  filled, _ = sample_branches(jax.random.key(0), canvas, logits, ids, 2000, 1.0, mask_id)
  values = np.asarray(filled).ravel()
  assert set(values.tolist()) <= {3, 7}
  np.testing.assert_allclose((values == 3).mean(), 1 / (1 + np.exp(-1.0)), atol=0.04)
  greedy, _ = sample_branches(jax.random.key(0), canvas, logits, ids, 3, 0.0, mask_id)
  assert (np.asarray(greedy) == 3).all()


def test_rollout_branches_fill_only_masked_positions(model):
  cfg, graphdef, state = model
  s = SamplerSettings(gen_length=16, block_length=8, num_timesteps=8, temperature=0.9,
                      mask_id=cfg.mask_token_id)
  prompt, lengths = map(jnp.asarray, _prompts(cfg))
  r = generate(graphdef, state, prompt, lengths, jax.random.key(2), s,
               branch_timesteps=jnp.asarray([[3], [5], [7]], jnp.int32))
  filled, action = sample_rollout_branches(jax.random.key(9), r, 4, 0.9, cfg.mask_token_id)
  filled, action, canvas = map(np.asarray, (filled, action, r.branch_canvas))
  assert filled.shape == (3, 1, 4, 16)
  assert not (filled == cfg.mask_token_id).any()
  kept = np.broadcast_to(canvas[:, :, None], filled.shape)
  np.testing.assert_array_equal(np.where(action[:, :, None], 0, filled),
                                np.where(action[:, :, None], 0, kept))
  np.testing.assert_array_equal(action.sum(-1)[:, 0], 16 - np.array([3, 5, 7]) * 2)


def test_completion_mask_includes_first_eos():
  eos = 1
  comp = jnp.asarray([[5, 6, 1, 7, 1], [1, 2, 3, 4, 5], [2, 2, 2, 2, 2]])
  np.testing.assert_array_equal(completion_mask(comp, eos),
                                [[1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 1]])


@pytest.mark.parametrize("bad, match", [
    (dict(gen_length=10, block_length=4), "not a multiple of block_length"),
    (dict(gen_length=16, block_length=8, num_timesteps=5), "multiple of the number of blocks"),
    (dict(remasking="entropy"), "remasking"),
    (dict(temperature=-1.0), "temperature"),
])
def test_settings_validation(bad, match):
  with pytest.raises(ValueError, match=match):
    SamplerSettings(**bad)


def test_schedule_matches_llada_remainders():
  s = SamplerSettings(gen_length=64, block_length=32, num_timesteps=10)
  np.testing.assert_array_equal(s.transfer_schedule(), [7, 7, 6, 6, 6])
  assert s.commits_per_timestep().sum() == 64


# ----------------------------------------------------------------------------------------------
# Fast-dLLM's approximate dual KV cache (kv_cache="dual")
# ----------------------------------------------------------------------------------------------


def test_block_forward_on_its_own_cache_equals_the_full_forward(model):
  """The block path is exact when the cached keys/values are the current canvas's."""
  cfg, graphdef, state = model
  m = llada.merge_model(graphdef, state)
  prompt, lengths = _prompts(cfg)
  tokens = jnp.concatenate([jnp.asarray(prompt), jnp.asarray(
      np.random.default_rng(1).integers(0, cfg.vocab_size, (3, 16)), jnp.int32)], axis=1)
  key_mask = jnp.arange(tokens.shape[1])[None] >= (7 - jnp.asarray(lengths))[:, None]
  full, kv = m.hidden_states_and_kv(tokens, key_mask)
  np.testing.assert_allclose(full, m.hidden_states(tokens, key_mask), atol=1e-6)
  block = m.block_hidden_states(tokens[:, 11:19], 11, kv, key_mask)
  np.testing.assert_allclose(block, full[:, 11:19], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("temperature", [0.0, 0.9])
def test_dual_cache_refreshed_every_step_equals_the_plain_sampler(model, temperature):
  """One step per block: the cache is refreshed at every step, so every token (and the branch
  cache) equals the plain sampler's; with several steps per block it is an approximation."""
  cfg, graphdef, state = model
  prompt, lengths = map(jnp.asarray, _prompts(cfg))
  branch_timesteps = jnp.asarray([[1], [3], [-1]], jnp.int32)
  runs = {}
  for cache in ("none", "dual"):
    s = SamplerSettings(gen_length=16, block_length=4, num_timesteps=4, temperature=temperature,
                        mask_id=cfg.mask_token_id, kv_cache=cache)
    runs[cache] = generate(graphdef, state, prompt, lengths, jax.random.key(3), s, branch_timesteps)
  np.testing.assert_array_equal(runs["none"].tokens, runs["dual"].tokens)
  np.testing.assert_array_equal(runs["none"].commit_timestep, runs["dual"].commit_timestep)
  np.testing.assert_allclose(runs["none"].branch_logits, runs["dual"].branch_logits, atol=1e-5)


def test_one_layer_dual_cache_is_exact_with_several_steps_per_block():
  """In a one-layer model the cached keys and values of the prefix and suffix depend only on
  their own (unchanged) tokens, so the dual cache is exact: with 4 steps per block the block path
  (queries over the block's fresh keys and values and the cached rest) must give the plain
  sampler's rollout token for token."""
  cfg = get_config("tiny", vocab_size=64, n_layers=1)
  graphdef, state = llada.init_model(cfg, seed=3)
  state["ff_out"]["kernel"][...] = state["ff_out"]["kernel"][...] * 8
  prompt, lengths = map(jnp.asarray, _prompts(cfg))
  runs = {}
  for cache in ("none", "dual"):
    s = SamplerSettings(gen_length=16, block_length=8, num_timesteps=8, temperature=0.7,
                        mask_id=cfg.mask_token_id, kv_cache=cache)
    runs[cache] = generate(graphdef, state, prompt, lengths, jax.random.key(4), s)
  np.testing.assert_array_equal(runs["none"].tokens, runs["dual"].tokens)
  np.testing.assert_array_equal(runs["none"].commit_timestep, runs["dual"].commit_timestep)


@pytest.mark.parametrize("threshold", [None, 0.3])
def test_dual_cache_rollout_does_not_depend_on_branch_steps(model, threshold):
  """The branch states get their own full forward; the block's cache is refreshed only at the
  block's first step, so the same key gives the same tokens with or without branch steps (the
  rollouts of diffu-GRPO and DiSPO stay matched)."""
  cfg, graphdef, state = model
  prompt, lengths = map(jnp.asarray, _prompts(cfg))
  s = SamplerSettings(gen_length=16, block_length=8, num_timesteps=8, temperature=0.9,
                      mask_id=cfg.mask_token_id, kv_cache="dual", threshold=threshold)
  plain = generate(graphdef, state, prompt, lengths, jax.random.key(6), s)
  branched = generate(graphdef, state, prompt, lengths, jax.random.key(6), s,
                      jnp.asarray([[1, 6], [3, -1], [2, 5]], jnp.int32))
  np.testing.assert_array_equal(plain.tokens, branched.tokens)
  np.testing.assert_array_equal(plain.commit_timestep, branched.commit_timestep)


def test_dual_cache_branch_logits_are_a_full_forward_of_the_branch_state(model):
  """DiSPO branches from the logits the sampler used: at a branch step the cached sampler runs a
  full forward, so the cached logits are exactly the full model's at that state."""
  cfg, graphdef, state = model
  prompt, lengths = map(jnp.asarray, _prompts(cfg))
  s = SamplerSettings(gen_length=16, block_length=8, num_timesteps=8, temperature=0.9,
                      mask_id=cfg.mask_token_id, kv_cache="dual")
  branch_timesteps = jnp.asarray([[2], [5], [7]], jnp.int32)
  r = generate(graphdef, state, prompt, lengths, jax.random.key(2), s, branch_timesteps=branch_timesteps)
  p = prompt.shape[1]
  key_mask = jnp.arange(p + 16)[None] >= (p - lengths)[:, None]
  for row in range(3):
    canvas = jnp.concatenate([prompt[row], r.branch_canvas[row, 0]])[None]
    logits = _fwd(graphdef, state, canvas, key_mask[row][None])[0, p:]
    np.testing.assert_allclose(r.branch_logits[row, 0], logits, atol=1e-5, rtol=1e-5)
  counts = [(np.asarray(r.commit_timestep) == t).sum(-1) for t in range(8)]
  assert all((c == 2).all() for c in counts)  # the schedule is unchanged: 8 tokens in 4 steps


def test_dual_cache_on_an_8_device_mesh_matches_one_device(model):
  cfg, graphdef, state = model
  from dispo_jax.model import sharding
  prompt, lengths = _prompts(cfg, b=6)
  prompt, lengths = np.tile(prompt, (4, 1))[:8], np.tile(lengths, 4)[:8]
  s = SamplerSettings(gen_length=16, block_length=8, num_timesteps=8, temperature=0.0,
                      mask_id=cfg.mask_token_id, kv_cache="dual")
  one = generate(graphdef, state, jnp.asarray(prompt), jnp.asarray(lengths), jax.random.key(0), s)
  mesh = sharding.make_mesh(8, 1, 1)
  rows = sharding.logical_sharding(mesh, "batch", "length")
  with jax.set_mesh(mesh):
    many = generate(graphdef, state, jax.device_put(prompt, rows),
                    jax.device_put(lengths, sharding.logical_sharding(mesh, "batch")),
                    jax.random.key(0), s)
  np.testing.assert_array_equal(one.tokens, many.tokens)


# ----------------------------------------------------------------------------------------------
# Confidence-threshold parallel decoding (threshold=...)
# ----------------------------------------------------------------------------------------------


def fast_dllm_reference(graphdef, state, prompt, lengths, key, s: SamplerSettings):
  """Fast-dLLM's threshold timestep by step in NumPy: each block is decoded until it has no
  MASK left; at each step every row with masks in the block commits its most confident masked
  position and every other one with confidence >= threshold (confidence: the untempered softmax
  at the Gumbel-max candidate). Returns ``(tokens [B, P+G], steps taken)``; shares only the
  forward and the per-step PRNG keys with the implementation."""
  b, p = prompt.shape
  x = np.concatenate([prompt, np.full((b, s.gen_length), s.mask_id)], axis=1).astype(np.int32)
  key_mask = jnp.asarray(np.arange(x.shape[1])[None] >= (p - lengths)[:, None])
  t = 0
  for blk in range(s.num_blocks):
    lo, hi = p + blk * s.block_length, p + (blk + 1) * s.block_length
    while (x[:, lo:hi] == s.mask_id).any():
      logits = np.array(_fwd(graphdef, state, jnp.asarray(x), key_mask), np.float32)[:, lo:hi]
      logits[..., s.mask_id] = -np.inf
      gumbel_key, _ = _timestep_keys(key, t)
      g = np.asarray(jax.random.gumbel(gumbel_key, logits.shape, jnp.float32))
      x0 = (logits / np.float32(s.temperature) + g).argmax(-1)
      z = np.exp(logits - logits.max(-1, keepdims=True))
      confidence = np.take_along_axis(z / z.sum(-1, keepdims=True), x0[..., None], -1)[..., 0]
      masked = x[:, lo:hi] == s.mask_id
      confidence = np.where(masked, confidence, -np.inf)
      for row in np.flatnonzero(masked.any(-1)):
        commit = masked[row] & (confidence[row] >= s.threshold)
        commit[np.argmax(confidence[row])] = True
        x[row, lo:hi] = np.where(commit, x0[row], x[row, lo:hi])
      t += 1
  return x, t


@pytest.mark.parametrize("kv_cache", ["none", "dual"])
def test_a_threshold_above_every_confidence(model, kv_cache):
  """Fast-dLLM's rule then commits one token per step (the plain sampler at T = G); the
  schedule-plus rule commits the schedule's (the plain sampler at the configured T)."""
  cfg, graphdef, state = model
  prompt, lengths = map(jnp.asarray, _prompts(cfg))
  branch_timesteps = jnp.asarray([[1, 5], [3, -1], [0, 7]], jnp.int32)
  for rule, plain_timesteps in (("schedule_plus", 8), ("fast_dllm", 16)):
    plain = SamplerSettings(gen_length=16, block_length=8, num_timesteps=plain_timesteps, temperature=0.9,
                            mask_id=cfg.mask_token_id, kv_cache=kv_cache)
    a = generate(graphdef, state, prompt, lengths, jax.random.key(5), plain, branch_timesteps)
    b = generate(graphdef, state, prompt, lengths, jax.random.key(5), dataclasses.replace(
        plain, num_timesteps=8, threshold=2.0, threshold_rule=rule), branch_timesteps)
    np.testing.assert_array_equal(a.tokens, b.tokens, err_msg=rule)
    np.testing.assert_array_equal(a.commit_timestep, b.commit_timestep, err_msg=rule)
    if rule == "schedule_plus":  # the same states (Fast-dLLM's: progress levels of T = 8)
      np.testing.assert_array_equal(a.branch_canvas, b.branch_canvas)
      np.testing.assert_allclose(a.branch_logits, b.branch_logits, atol=1e-5)


@pytest.mark.parametrize("threshold", [0.2, 0.3])
def test_fast_dllm_threshold_rule_matches_numpy_reference(soft_model, threshold):
  cfg, graphdef, state = soft_model
  prompt, lengths = _prompts(cfg)
  s = SamplerSettings(gen_length=16, block_length=8, num_timesteps=4, temperature=0.7,
                      mask_id=cfg.mask_token_id, threshold=threshold)
  key = jax.random.key(2)
  r = generate(graphdef, state, jnp.asarray(prompt), jnp.asarray(lengths), key, s)
  expected, timesteps_taken = fast_dllm_reference(graphdef, state, prompt, lengths, key, s)
  np.testing.assert_array_equal(np.asarray(r.tokens), expected)
  commit = np.asarray(r.commit_timestep)
  assert commit.max() == timesteps_taken - 1
  per_step = np.stack([(commit == t).sum(-1) for t in range(timesteps_taken)])  # [steps, B]
  assert (per_step == 1).any() and (per_step > 1).any()  # both halves of the rule fire


@pytest.mark.parametrize("kv_cache", ["none", "dual"])
def test_a_low_threshold_finishes_early_and_records_what_it_did(model, kv_cache):
  cfg, graphdef, state = model
  prompt, lengths = map(jnp.asarray, _prompts(cfg))
  s = SamplerSettings(gen_length=16, block_length=8, num_timesteps=16, temperature=0.0,
                      mask_id=cfg.mask_token_id, threshold=0.3, kv_cache=kv_cache)
  branch_timesteps = jnp.asarray([[4], [8], [12]], jnp.int32)
  r = generate(graphdef, state, prompt, lengths, jax.random.key(0), s, branch_timesteps)
  commit = np.asarray(r.commit_timestep)
  assert (commit >= 0).all() and (np.asarray(r.completion) != cfg.mask_token_id).all()
  assert commit.max() < s.num_timesteps - 1  # the sharpened model is confident: fewer steps than planned
  assert (commit[:, :8].max(-1) < commit[:, 8:].min(-1)).all()  # blocks stay left to right
  planned = np.concatenate([[0], np.cumsum(s.commits_per_timestep())])
  p = prompt.shape[1]
  key_mask = jnp.arange(p + 16)[None] >= (p - lengths)[:, None]
  for row in range(3):
    canvas = np.asarray(r.branch_canvas[row, 0])
    filled = (canvas != cfg.mask_token_id).sum()
    level = planned[int(branch_timesteps[row, 0])]
    assert filled <= level < (commit[row] <= commit[row][canvas == cfg.mask_token_id].min()).sum()
    logits = _fwd(graphdef, state, jnp.concatenate([prompt[row], canvas])[None],
                  key_mask[row][None])[0, p:]
    np.testing.assert_allclose(r.branch_logits[row, 0], logits, atol=1e-5, rtol=1e-5)
    # the cached canvas is the input of the step that committed the next tokens
    step = commit[row][canvas == cfg.mask_token_id].min()
    np.testing.assert_array_equal(canvas != cfg.mask_token_id, commit[row] < step)
