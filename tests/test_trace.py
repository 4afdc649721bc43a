"""The trajectory-consistent surrogate: exact against the sampler's own logits, N = 1 = diffu-GRPO."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dispo_jax.model import llada
from dispo_jax.model.config import get_config
from dispo_jax.rl import learner
from dispo_jax.rl.logprobs import token_logprobs
from dispo_jax.rl.objectives import trace
from dispo_jax.rl.objectives.trace import TraceSettings
from dispo_jax.sampling import SamplerSettings, completion_mask, generate


@pytest.fixture(scope="module")
def rollout():
  cfg = get_config("tiny", vocab_size=48, n_layers=2)
  graphdef, state = llada.init_model(cfg, seed=3)
  state["ff_out"]["kernel"][...] = state["ff_out"]["kernel"][...] * 10
  s = SamplerSettings(gen_length=12, block_length=6, num_timesteps=6, temperature=1.0,
                      mask_id=cfg.mask_token_id)
  rng = np.random.default_rng(0)
  b, p = 4, 5
  lengths = np.array([5, 3, 4, 2], np.int32)
  prompt = np.full((b, p), cfg.pad_token_id, np.int32)
  for i, n in enumerate(lengths):
    prompt[i, p - n:] = rng.integers(0, cfg.vocab_size - 3, n)
  every_timestep = jnp.tile(jnp.arange(s.num_timesteps, dtype=jnp.int32), (b, 1))  # cache every state
  result = generate(graphdef, state, jnp.asarray(prompt), jnp.asarray(lengths),
                    jax.random.key(1), s, every_timestep)
  key_mask = jnp.asarray(np.arange(p)[None] >= (p - lengths)[:, None])
  apply = lambda tokens, m: llada.forward(graphdef, state, tokens, m)
  return cfg, s, jnp.asarray(prompt), key_mask, result, apply


def test_segments_and_canvases_by_hand():
  np.testing.assert_array_equal(trace.segment_starts(6, 4), [0, 1, 3, 4, 6])
  commit = jnp.asarray([[0, 5, 2, 3, 1, 4]])
  np.testing.assert_array_equal(trace.segment_of(commit, 6, 4), [[0, 3, 1, 2, 1, 3]])
  canvases = trace.segment_canvases(jnp.asarray([[10, 11, 12, 13, 14, 15]]), commit, 6, 4, 99)
  np.testing.assert_array_equal(canvases[0], [[99, 99, 99, 99, 99, 99],   # step 0: all masked
                                              [10, 99, 99, 99, 99, 99],   # step 1
                                              [10, 99, 12, 99, 14, 99],   # step 3
                                              [10, 99, 12, 13, 14, 99]])  # step 4
  with pytest.raises(ValueError, match="must be in"):
    trace.segment_starts(6, 7)


def test_n_equals_t_reproduces_the_samplers_own_log_probs(rollout):
  """N = T, τ = 1, no prompt masking: each token's log-prob is the log-softmax of the logits the
  sampler drew it from (cached at every step), to 1e-5."""
  cfg, s, prompt, key_mask, result, apply = rollout
  logp = trace.trace_logprobs(apply, prompt, key_mask, result.completion, result.commit_timestep,
                              jax.random.key(0), jnp.arange(prompt.shape[0]), segments=s.num_timesteps,
                              total_timesteps=s.num_timesteps, p_mask_prompt=0.0, mask_id=cfg.mask_token_id)
  cached = token_logprobs(result.branch_logits.reshape(-1, *result.branch_logits.shape[2:]),
                          jnp.repeat(result.completion, s.num_timesteps, axis=0), cfg.mask_token_id)
  cached = cached.reshape(result.branch_logits.shape[:3])  # [B, T, G]: every token at every step
  expected = jnp.take_along_axis(cached, result.commit_timestep[:, None, :], axis=1)[:, 0]
  assert (np.asarray(result.commit_timestep) >= 0).all()
  np.testing.assert_allclose(logp, expected, atol=1e-5)
  # the canvas matters: scoring every token on the all-MASK canvas gives other numbers
  one_step = trace.trace_logprobs(apply, prompt, key_mask, result.completion, result.commit_timestep,
                                  jax.random.key(0), jnp.arange(prompt.shape[0]), segments=1,
                                  total_timesteps=s.num_timesteps, p_mask_prompt=0.0,
                                  mask_id=cfg.mask_token_id)
  assert float(jnp.abs(one_step - expected).max()) > 1e-2


def test_n_equals_t_at_the_rollout_temperature_with_prompt_masking_against_numpy():
  """An independent reference: every token re-scored in float64 NumPy on the canvas the sampler
  recorded at its commit step, the prompt masked with the iteration's per-row draw, at the
  rollout's τ = 0.7: ``log softmax(logits / τ)`` at the token, MASK excluded."""
  cfg = get_config("tiny", vocab_size=48, n_layers=2)
  graphdef, state = llada.init_model(cfg, seed=5)
  state["ff_out"]["kernel"][...] = state["ff_out"]["kernel"][...] * 10
  tau, p_mask, b, p = 0.7, 0.4, 3, 5
  s = SamplerSettings(gen_length=8, block_length=4, num_timesteps=4, temperature=tau,
                      mask_id=cfg.mask_token_id)
  prompt = jnp.asarray(np.random.default_rng(2).integers(0, cfg.vocab_size - 3, (b, p)), jnp.int32)
  every_timestep = jnp.tile(jnp.arange(s.num_timesteps, dtype=jnp.int32), (b, 1))
  r = generate(graphdef, state, prompt, jnp.full((b,), p, jnp.int32), jax.random.key(8), s,
               every_timestep)
  key, row_ids = jax.random.key(9), jnp.arange(b) + 10
  apply = lambda tokens, m: llada.forward(graphdef, state, tokens, m)
  logp = trace.trace_logprobs(apply, prompt, None, r.completion, r.commit_timestep, key, row_ids,
                              segments=s.num_timesteps, total_timesteps=s.num_timesteps, p_mask_prompt=p_mask,
                              mask_id=cfg.mask_token_id, temperature=tau)
  masked = np.stack([np.asarray(jax.random.bernoulli(jax.random.fold_in(key, int(i)), p_mask,
                                                     (p,))) for i in row_ids])
  assert masked.any() and not masked.all()
  expected = np.zeros(r.completion.shape)
  for row in range(b):
    for j, t in enumerate(np.asarray(r.commit_timestep[row])):
      canvas = np.concatenate([np.where(masked[row], cfg.mask_token_id, prompt[row]),
                               r.branch_canvas[row, t]])
      logits = np.array(llada.forward(graphdef, state, jnp.asarray(canvas)[None])[0, p + j],
                        np.float64)
      logits[cfg.mask_token_id] = -np.inf
      z = logits / tau
      expected[row, j] = z[r.completion[row, j]] - z.max() - np.log(np.exp(z - z.max()).sum())
  np.testing.assert_allclose(logp, expected, atol=2e-5)
  at_one = trace.trace_logprobs(apply, prompt, None, r.completion, r.commit_timestep, key, row_ids,
                                segments=s.num_timesteps, total_timesteps=s.num_timesteps, p_mask_prompt=p_mask,
                                mask_id=cfg.mask_token_id)
  assert float(jnp.abs(at_one - expected).max()) > 1e-2  # the temperature matters here


def test_one_segment_is_diffu_grpos_surrogate(rollout):
  cfg, s, prompt, key_mask, result, apply = rollout
  n = prompt.shape[0]
  batch = learner.RLBatch(prompt_tokens=prompt, prompt_key_mask=key_mask,
                          completion=result.completion,
                          completion_mask=completion_mask(result.completion, cfg.eos_token_id),
                          advantages=jnp.zeros((n,)), row_ids=jnp.arange(n),
                          commit_timestep=result.commit_timestep)
  key = jax.random.key(4)
  settings = dict(p_mask_prompt=0.3, mask_id=cfg.mask_token_id, num_timesteps=s.num_timesteps)
  logprobs = lambda s: s.base_term.logprobs(apply, batch, key, s)
  grpo = logprobs(learner.ObjectiveSettings(method="diffu_grpo", **settings))
  one = logprobs(learner.ObjectiveSettings(method="trace", trace=TraceSettings(1), **settings))
  np.testing.assert_allclose(one, grpo, atol=1e-6)
  three = logprobs(learner.ObjectiveSettings(method="trace", trace=TraceSettings(3), **settings))
  assert float(jnp.abs(three - grpo).max()) > 1e-2


def test_trace_settings_are_validated():
  with pytest.raises(ValueError, match=r"trace.segments=9 must be in"):
    learner.ObjectiveSettings(method="dispo_trace", trace=TraceSettings(9), num_timesteps=6)


def _behaviour_and_trace_logprobs(s: SamplerSettings):
  """``(rollout, trace N = T log-probs at s.temperature without prompt masking)`` of one rollout
  of a sharpened 2-layer model on 3 random prompts."""
  cfg = get_config("tiny", vocab_size=48, n_layers=2)
  graphdef, state = llada.init_model(cfg, seed=3)
  state["ff_out"]["kernel"][...] = state["ff_out"]["kernel"][...] * 10
  s = dataclasses.replace(s, mask_id=cfg.mask_token_id)
  b, p = 3, 4
  prompt = jnp.asarray(np.random.default_rng(1).integers(0, cfg.vocab_size - 3, (b, p)), jnp.int32)
  r = generate(graphdef, state, prompt, jnp.full((b,), p, jnp.int32), jax.random.key(2), s)
  apply = lambda tokens, m: llada.forward(graphdef, state, tokens, m)
  logp = trace.trace_logprobs(apply, prompt, None, r.completion, r.commit_timestep, jax.random.key(0),
                              jnp.arange(b), segments=s.num_timesteps, total_timesteps=s.num_timesteps,
                              p_mask_prompt=0.0, mask_id=cfg.mask_token_id,
                              temperature=s.temperature)
  return r, logp


@pytest.mark.parametrize("temperature, kv_cache", [(1.0, "none"), (0.7, "none"), (0.7, "dual")])
def test_the_samplers_behaviour_log_probs_are_trace_at_n_equals_t(temperature, kv_cache):
  """With a full forward at every step (the plain sampler, or the dual cache at one step per
  block) the log-prob the sampler records for each token is the trace objective's N = T log-prob
  at the same temperature, without prompt masking."""
  r, logp = _behaviour_and_trace_logprobs(SamplerSettings(
      gen_length=12, block_length=3 if kv_cache == "dual" else 6,
      num_timesteps=4 if kv_cache == "dual" else 6, temperature=temperature, kv_cache=kv_cache))
  np.testing.assert_allclose(r.behaviour_logp, logp, atol=2e-5)
  assert float(jnp.min(r.behaviour_logp)) < -1e-3  # not trivially certain


def test_the_dual_caches_behaviour_log_probs_differ_from_the_full_forwards():
  """Several steps per block: the block path's logits are approximate and the recorded log-probs
  are theirs, not the full model's (the gap the importance weight corrects)."""
  r, logp = _behaviour_and_trace_logprobs(SamplerSettings(
      gen_length=12, block_length=6, num_timesteps=6, temperature=1.0, kv_cache="dual"))
  gap = np.abs(np.asarray(r.behaviour_logp) - np.asarray(logp))
  first_steps = np.isin(np.asarray(r.commit_timestep), [0, 3])  # each block's refresh step is exact
  assert gap[first_steps].max() < 2e-5 and gap[~first_steps].max() > 1e-4
