"""SPG: block masks on hand-built cases, exact bounds by enumeration, the log-space EUBO, the loss."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dispo_jax.model import llada
from dispo_jax.model.config import get_config
from dispo_jax.rl import learner, losses
from dispo_jax.rl.objectives import spg
from experiments.spg_bounds import exact_quantities

# ----------------------------------------------------------------------------------------------
# Block masks
# ----------------------------------------------------------------------------------------------


def _sample(block, count, priority, earlier, length, block_length=4):
  masked, counted = spg.block_sample_mask(jnp.int32(block), jnp.int32(count),
                                          jnp.asarray(priority, jnp.float32),
                                          jnp.asarray(earlier, bool), jnp.int32(length),
                                          block_length)
  return np.flatnonzero(masked).tolist(), np.flatnonzero(counted).tolist()


def test_block_sample_mask_hand_built_cases():
  # G = 8 in blocks of 4; the completion is 6 tokens long (EOS at position 5), so 6 and 7 are after it.
  priority = [5, 0, 7, 1, 6, 2, 3, 4]
  none = [False] * 8
  # block 0, k = 2: the two lowest-priority tokens of block 0 (1, 3), all of block 1, never 6/7 counted
  assert _sample(0, 2, priority, none, 6) == ([1, 3, 4, 5, 6, 7], [1, 3, 4, 5])
  # block 0, k = 4: the whole block
  assert _sample(0, 4, priority, none, 6) == ([0, 1, 2, 3, 4, 5, 6, 7], [0, 1, 2, 3, 4, 5])
  # block 1 holds only 2 completion tokens (4, 5); k = 1 takes the lower priority of the two (5)
  earlier = [True, False, False, True, False, False, False, False]
  assert _sample(1, 1, priority, earlier, 6) == ([0, 3, 5, 6, 7], [0, 3, 5])
  # earlier-block draws apply only before the chosen block
  assert _sample(0, 1, priority, [True] * 8, 6) == ([1, 4, 5, 6, 7], [1, 4, 5])
  # a completion that ends inside block 0 (L = 2): block 1 is entirely after the end
  assert _sample(0, 1, priority, none, 2) == ([1, 2, 3, 4, 5, 6, 7], [1])


def _masks(lengths, g=8, block_length=4, m=2, p=0.15, prompt_length=5, rows=None, key=0,
           block_choice="cycled"):
  lengths = np.asarray(lengths)
  completion_mask = jnp.asarray(np.arange(g)[None] < lengths[:, None])
  row_ids = jnp.arange(len(lengths)) if rows is None else jnp.asarray(rows)
  out = spg.block_masks(jax.random.key(key), row_ids, completion_mask, prompt_length,
                        num_samples=m, block_length=block_length, p_mask_prompt=p,
                        block_choice=block_choice)
  choices = spg.block_choices(jax.random.key(key), row_ids, completion_mask, num_samples=m,
                              block_length=block_length, block_choice=block_choice)
  return [np.asarray(x) for x in out + choices]


def test_block_masks_follow_their_block_choices_over_many_rows():
  g, b, n, m = 12, 4, 3000, 2
  lengths = np.random.default_rng(0).integers(1, g + 1, n)
  prompt, masked, counted, blocks, counts = _masks(lengths, g=g, block_length=b, m=m, p=0.15)
  pos = np.arange(g)
  earlier_masked, earlier_total = 0, 0
  for r in range(n):
    length = lengths[r]
    covered = -(-length // b)
    assert blocks[r].max() < covered
    if covered >= m:
      assert len(set(blocks[r])) == m  # distinct blocks while there are enough
    for j in range(m):
      start = blocks[r, j] * b
      n_b = min(b, length - start)
      assert 1 <= counts[r, j] <= n_b
      assert counted[r, j, start:start + n_b].sum() == counts[r, j]  # k tokens of the block
      assert masked[r, j, start + b:].all()  # every later block
      assert masked[r, j, pos >= length].all() and not counted[r, j, pos >= length].any()
      np.testing.assert_array_equal(counted[r, j], masked[r, j] & (pos < length))
      earlier_masked += masked[r, j, :start].sum()
      earlier_total += start
  # prompt and earlier-block tokens are masked at p = 0.15 (5 standard errors ≈ 0.01 and 0.02)
  assert abs(prompt.mean() - 0.15) < 0.01
  assert abs(earlier_masked / earlier_total - 0.15) < 0.02


def test_block_choice_and_count_are_uniform():
  n, g, b = 20000, 12, 4
  _, _, _, blocks, counts = _masks(np.full(n, 10), g=g, block_length=b, m=1)
  # the completion covers blocks 0, 1, 2 (the last holds 2 tokens)
  assert all(abs((blocks == k).mean() - 1 / 3) < 0.02 for k in range(3))
  for block, n_b in ((0, 4), (2, 2)):
    ks = counts[blocks == block]
    assert set(np.unique(ks)) == set(range(1, n_b + 1))
    assert all(abs((ks == k).mean() - 1 / n_b) < 0.04 for k in range(1, n_b + 1))


def test_spg_block_choice_is_a_permutation_of_all_blocks_modulo_the_covered_ones():
  """SPG's trainer: ``randperm(num_blocks) % covered``. With 3 blocks and a completion covering 2,
  the first sample is block 0 with probability 2/3 (indices 0 and 2) and both samples share a block
  with probability 1/3 (orders (0, 2) and (2, 0) of the 6) — unlike the cycled choice."""
  n = 30000
  _, masked, _, blocks, _ = _masks(np.full(n, 5), g=12, block_length=4, m=2,
                                   block_choice="spg")
  se = lambda p: 5 * np.sqrt(p * (1 - p) / n)
  assert abs((blocks[:, 0] == 0).mean() - 2 / 3) < se(2 / 3)
  assert abs((blocks[:, 0] == blocks[:, 1]).mean() - 1 / 3) < se(1 / 3)
  assert blocks.max() == 1
  _, _, _, cycled, _ = _masks(np.full(2000, 5), g=12, block_length=4, m=2)
  assert (cycled[:, 0] != cycled[:, 1]).all()
  with pytest.raises(ValueError, match="unknown block_choice"):
    _masks(np.full(2, 5), block_choice="random")


def test_block_masks_depend_on_row_id_not_on_batch_position():
  lengths = np.array([8, 5, 3, 7])
  full = _masks(lengths, rows=[0, 1, 2, 3])
  part = _masks(lengths[[3, 1]], rows=[3, 1])
  assert len(full) == len(part) == 5
  for a, b in zip(full, part):
    np.testing.assert_array_equal(a[[3, 1]], b)


# ----------------------------------------------------------------------------------------------
# Exact bounds on a 3-token completion
# ----------------------------------------------------------------------------------------------

L, V = 3, 4  # completion length, action vocabulary (id V is MASK)
MASK = V
PROMPT = np.array([1, 0])


def _table_apply(seed, scale):
  """A fully context-dependent denoiser: logits looked up by which completion positions are masked.

  For scoring one fixed completion ``o`` this is a general conditional model p(o_i | o_{¬M}): every
  mask pattern M gets its own random logits, so the bounds are tested without any independence.
  """
  table = jnp.asarray(np.random.default_rng(seed).normal(size=(2 ** L, L, V)) * scale, jnp.float32)

  def apply(tokens, key_mask=None):
    comp = tokens[:, -L:]
    index = jnp.sum((comp == MASK) * (2 ** jnp.arange(L)), -1)
    logits = jnp.concatenate([table[index], jnp.full((tokens.shape[0], L, 1), -1e9)], -1)
    pad = jnp.zeros((tokens.shape[0], tokens.shape[1] - L, V + 1))
    return jnp.concatenate([pad, logits], 1)
  return apply


def _llada_apply(seed, scale):
  cfg = get_config("tiny", vocab_size=V + 1, d_model=16, n_layers=1, n_heads=2, mlp_hidden_size=32)
  assert cfg.mask_token_id == MASK
  graphdef, state = llada.init_model(cfg, seed=seed)
  state["ff_out"]["kernel"][...] = state["ff_out"]["kernel"][...] * scale
  return lambda tokens, key_mask=None: llada.forward(graphdef, state, tokens, key_mask)


def _conditionals(apply, o):
  """``{masked set M: log p(o_i | o_{¬M}) for i in 0..L-1}`` for every mask pattern."""
  subsets = [frozenset(s) for r in range(1, L + 1) for s in itertools.combinations(range(L), r)]
  canvases = np.stack([np.concatenate([PROMPT, [MASK if i in m else o[i] for i in range(L)]])
                       for m in subsets])
  logits = apply(jnp.asarray(canvases, jnp.int32))[:, len(PROMPT):]
  logp = jax.nn.log_softmax(logits[..., :V].astype(jnp.float32), -1)
  logp = np.asarray(jnp.take_along_axis(logp, jnp.asarray(np.tile(o, (len(subsets), 1)))[..., None],
                                        -1)[..., 0], np.float64)
  return {m: logp[j] for j, m in enumerate(subsets)}


MODELS = [("table", s, 3.0) for s in range(6)] + [("llada", 1, 6.0), ("llada", 2, 12.0)]


@pytest.mark.parametrize("kind, seed, scale", MODELS)
@pytest.mark.parametrize("beta", [3.0, 4.5])
def test_exact_elbo_below_likelihood_below_eubo_when_beta_at_least_length(kind, seed, scale, beta):
  """ELBO ≤ log p ≤ token EUBO ≤ sequence EUBO for β ≥ L.

  log p = log E_σ Π_k p(o_σk | o_σ<k) (uniform any-order unmasking). With r_i the probability of
  o_i at the step it is revealed, a_i = E[1(i∈M) p_i^β / t] = E_σ[r_i^β]; Hölder gives
  E Π r_i ≤ Π (E r_i^L)^(1/L) and the power-mean inequality lifts L to any β ≥ L, so
  log p ≤ (L/β) mean_i log a_i; Jensen puts that below (L/β) log(Σ_i a_i / L).
  """
  apply = _table_apply(seed, scale) if kind == "table" else _llada_apply(seed, scale)
  o = np.random.default_rng(100 + seed).integers(0, V, L)
  cond = _conditionals(apply, o)
  log_likelihood, elbo, token_eubo, sequence_eubo = exact_quantities(cond, L, beta)
  assert elbo <= log_likelihood + 1e-9
  assert log_likelihood <= token_eubo + 1e-9
  assert token_eubo <= sequence_eubo + 1e-9
  # the library's estimators, given SPG's mask distribution exactly, are these values
  library_elbo, library_eubo = _library_bounds_on_every_mask(apply, o, beta)
  np.testing.assert_allclose(library_elbo, elbo, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(library_eubo, token_eubo, rtol=1e-5, atol=1e-5)
  assert library_elbo <= log_likelihood + 1e-5 <= library_eubo + 2e-5


def _library_bounds_on_every_mask(apply, o, beta):
  """``L·spg.elbo`` and ``L·spg.eubo`` on every mask pattern of one completion, each repeated in
  proportion to its probability under SPG's sampler (k ~ U{1..L}, then a uniform k-subset: a
  k-subset has probability 1 / (L·C(L, k))), so the estimators' sample means are expectations."""
  import math
  unit = math.lcm(*(L * math.comb(L, k) for k in range(1, L + 1)))
  patterns = []
  for k in range(1, L + 1):
    for subset in itertools.combinations(range(L), k):
      patterns += [np.isin(np.arange(L), subset)] * (unit // (L * math.comb(L, k)))
  counted = jnp.asarray(np.stack(patterns)[None])  # [1, m, L]
  logp = spg.masked_logprobs(apply, jnp.asarray(PROMPT[None], jnp.int32), None,
                             jnp.asarray(o[None], jnp.int32), jnp.zeros((1, counted.shape[1],
                                                                         len(PROMPT)), bool),
                             counted, MASK)
  completion_mask = jnp.ones((1, L), bool)
  return (L * float(spg.elbo(logp, counted)[0]),
          L * float(spg.eubo(logp, counted, completion_mask, beta)[0]))


def test_eubo_with_beta_below_length_is_not_an_upper_bound():
  """SPG runs β = 1.5 on completions of hundreds of tokens (β ≪ L): there the 'EUBO' can fall below
  log p. On these random 3-token models β = 1 gives a value below the exact log-likelihood."""
  below = 0
  for seed in range(40):
    cond = _conditionals(_table_apply(seed, 3.0), np.random.default_rng(100 + seed).integers(0, V, L))
    log_likelihood, _, token_eubo, _ = exact_quantities(cond, L, 1.0)
    below += token_eubo < log_likelihood - 1e-9
  assert below >= 5, below


@pytest.mark.parametrize("beta", [3.0, 1.5])
def test_monte_carlo_bounds_converge_to_the_exact_values(beta):
  """SPG's estimators with one block covering the completion and p_mask_prompt = 0 sample
  k ~ U{1..L} and a uniform k-subset, whose 1/t_τ = L/k weighting has the same expectation as
  t ~ U(0,1): L·ELBO estimate → exact ELBO (unbiased), L·EUBO estimate → exact token EUBO
  (consistent: a log of an average)."""
  apply = _table_apply(3, 3.0)
  o = np.random.default_rng(103).integers(0, V, L)
  _, elbo_exact, token_exact, _ = exact_quantities(_conditionals(apply, o), L, beta)
  completion = jnp.asarray(o[None], jnp.int32)
  completion_mask = jnp.ones((1, L), bool)
  errors = {}
  for m in (4, 16384):
    pm, cm, counted = spg.block_masks(jax.random.key(m), jnp.zeros((1,), jnp.int32),
                                      completion_mask, len(PROMPT), num_samples=m,
                                      block_length=4, p_mask_prompt=0.0)
    assert not pm.any()
    logp = spg.masked_logprobs(apply, jnp.asarray(PROMPT[None], jnp.int32), None, completion, pm,
                               cm, MASK)
    elbo_mc = L * float(spg.elbo(logp, counted)[0])
    eubo_mc = L * float(spg.eubo(logp, counted, completion_mask, beta)[0])
    errors[m] = (elbo_mc - elbo_exact, eubo_mc - token_exact)
    if m > 1000:  # standard errors of the two means, from the samples themselves
      c = np.asarray(counted[0], np.float64)
      lp = np.asarray(logp[0], np.float64)
      per_sample = L * (lp * c).sum(-1) / c.sum(-1)
      se_elbo = per_sample.std() / np.sqrt(m)
      x = c * np.exp(beta * lp) / (c.sum(-1, keepdims=True) / L)
      se_eubo = (L / beta) * np.sqrt(np.mean((x.std(0) / x.mean(0)) ** 2) / m)
      assert abs(errors[m][0]) < 5 * se_elbo + 1e-6, (errors, se_elbo)
      assert abs(errors[m][1]) < 5 * se_eubo + 1e-6, (errors, se_eubo)
  assert abs(errors[16384][0]) < 0.05 and abs(errors[16384][1]) < 0.05, errors


# ----------------------------------------------------------------------------------------------
# Log-space EUBO
# ----------------------------------------------------------------------------------------------


def eubo_direct(logp, counted, completion_mask, beta):
  """The EUBO term written as SPG's code writes it, ``p^β`` in linear space (underflows)."""
  m = logp.shape[1]
  counted_f = counted.astype(jnp.float32)
  length = jnp.sum(completion_mask, -1).astype(jnp.float32)
  t = jnp.sum(counted_f, -1) / length[:, None]
  a = jnp.sum(jnp.exp(logp) ** beta * counted_f / jnp.maximum(t, 1e-8)[..., None], 1) / m
  weights = (a > 0).astype(jnp.float32)
  return jnp.sum(jnp.log(jnp.where(a > 0, a, 1.0)) * weights, -1) / jnp.maximum(
      jnp.sum(weights, -1), 1.0) / beta


def test_log_space_eubo_equals_direct_formula_without_underflow():
  rng = np.random.default_rng(0)
  logp = jnp.asarray(np.log(rng.uniform(0.05, 1.0, (5, 3, 10))), jnp.float32)
  counted = jnp.asarray(rng.uniform(size=(5, 3, 10)) < 0.5)
  completion_mask = jnp.asarray(np.arange(10)[None] < np.array([10, 8, 6, 10, 9])[:, None])
  counted = counted & completion_mask[:, None]
  for beta in (1.0, 1.5, 3.0):
    np.testing.assert_allclose(spg.eubo(logp, counted, completion_mask, beta),
                               eubo_direct(logp, counted, completion_mask, beta), rtol=1e-5)


def test_log_space_eubo_stays_finite_where_the_direct_formula_underflows():
  # two samples; token 0 has p = e^-120 (p^1.5 = e^-180 underflows fp32), token 1 is ordinary
  logp = jnp.asarray([[[-120.0, -0.5], [-110.0, -0.7]]], jnp.float32)
  counted = jnp.ones((1, 2, 2), bool)
  completion_mask = jnp.ones((1, 2), bool)
  beta = 1.5
  value = spg.eubo(logp, counted, completion_mask, beta)
  direct = eubo_direct(logp, counted, completion_mask, beta)
  # reference in float64 log space: t = 1 for both samples, a_i = mean_τ p^β
  lp = np.asarray(logp, np.float64)[0]
  log_a = np.logaddexp(beta * lp[0], beta * lp[1]) - np.log(2)
  expected = np.mean(log_a) / beta
  assert np.isfinite(value).all()
  np.testing.assert_allclose(float(value[0]), expected, rtol=1e-5)
  assert abs(float(direct[0]) - expected) > 10  # the direct form silently dropped token 0
  grad = jax.grad(lambda x: spg.eubo(x, counted, completion_mask, beta).sum())(logp)
  assert np.isfinite(grad).all()


# ----------------------------------------------------------------------------------------------
# Sequence bounds and the loss
# ----------------------------------------------------------------------------------------------


def test_sequence_logp_picks_the_bound_by_advantage_sign():
  rng = np.random.default_rng(1)
  logp = jnp.asarray(np.log(rng.uniform(0.1, 1, (3, 2, 6))), jnp.float32)
  counted = jnp.asarray(rng.uniform(size=(3, 2, 6)) < 0.6).at[:, :, 0].set(True)
  cmask = jnp.ones((3, 6), bool)
  adv = jnp.asarray([0.5, -0.5, 0.0])
  lower = spg.elbo(logp, counted)
  upper = spg.eubo(logp, counted, cmask, 1.5)
  for bound, negative in [("mix", 0.3 * upper + 0.7 * lower), ("eubo", upper), ("elbo", lower),
                          ("none", jnp.zeros(3))]:
    s, _ = spg.sequence_logp(logp, counted, cmask, adv, negative_bound=bound, mix_weight=0.3,
                             eubo_beta=1.5)
    np.testing.assert_allclose(s, jnp.where(adv > 0, lower, negative), rtol=1e-6)
  with pytest.raises(ValueError, match="negative_bound"):
    spg.sequence_logp(logp, counted, cmask, adv, negative_bound="upper")


def test_sequence_weights_normalise_per_group_and_average_groups():
  cmask = jnp.asarray(np.arange(4)[None] < np.array([4, 2, 1, 1])[:, None])
  w = np.asarray(spg.sequence_weights(cmask, 2))
  np.testing.assert_allclose(w, [4 / 6 / 2, 2 / 6 / 2, 1 / 2 / 2, 1 / 2 / 2])
  # the loss is Σ_groups (1/G) Σ_j −A_j L_j s_j / Σ_group L
  seq, adv = jnp.asarray([-1.0, -2.0, -3.0, -4.0]), jnp.asarray([1.0, -1.0, 0.5, -0.5])
  loss, _ = losses.get_loss("spg")(seq, adv, jnp.asarray(w))
  expected = 0.5 * (-(1 * 4 * -1.0 + -1 * 2 * -2.0) / 6 - (0.5 * -3.0 - 0.5 * -4.0) / 2)
  np.testing.assert_allclose(float(loss), expected, rtol=1e-6)
  with pytest.raises(ValueError, match="groups of 3"):
    spg.sequence_weights(cmask, 3)


def test_spg_settings_are_validated():
  with pytest.raises(ValueError, match="beta must be 0"):
    learner.ObjectiveSettings(method="spg", beta=0.04)
  learner.ObjectiveSettings(method="dispo_spg", beta=0.04)  # the KL belongs to the state term
  with pytest.raises(ValueError, match="negative_bound='upper' is not one of"):
    spg.SPGSettings(negative_bound="upper")
  with pytest.raises(ValueError, match="mix_weight"):
    spg.SPGSettings(mix_weight=1.5)
  s = learner.ObjectiveSettings(method="dispo_spg", beta=0.0)
  assert s.base_term.name == "spg" and s.adds_state_term
