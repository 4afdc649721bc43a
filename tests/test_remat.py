"""Rematerialisation (the recipe's ``model.remat=True``) wherever a forward runs.

Remat may change memory and schedule, never numbers: the sampler in each of its modes gives the
same tokens, commit steps and cached branch logits with and without it, and one update of every
objective family gets the same gradients. A test also checks remat is really applied (the
backward's program holds one remat region per block), so the parity tests cannot pass by remat doing nothing.
"""

import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dispo_jax import pipeline
from dispo_jax.model import llada
from dispo_jax.model.config import LoRAConfig, get_config
from dispo_jax.rl import learner
from dispo_jax.rl.policy import make_policy
from dispo_jax.sampling import SamplerSettings, generate

LORA = LoRAConfig(rank=4, alpha=8, dropout=0.05, targets=("q_proj", "k_proj", "v_proj", "up_proj"))


def _policies(compute_dtype="float32"):
  """``{remat: (policy, trainable, frozen)}`` with the same weights and non-zero adapters."""
  cfg = get_config("tiny", vocab_size=32, d_model=32, n_layers=2, n_heads=2, mlp_hidden_size=64,
                   compute_dtype=compute_dtype)
  _, state = llada.init_model(cfg, seed=0)
  state["ff_out"]["kernel"][...] = state["ff_out"]["kernel"][...] * 20  # peaked, like a trained head
  out = {}
  for remat in (False, True):
    c = cfg.replace(remat=remat)
    graphdef = llada.abstract_model(c)[0]
    policy, trainable, frozen = make_policy(c, graphdef, state, LORA, seed=0)
    trainable = jax.tree.map(lambda x: x + 0.05, trainable)  # B != 0: adapters change the output
    out[remat] = (policy, trainable, frozen)
  return cfg, out


def _backward_jaxpr(remat: bool) -> str:
  cfg = get_config("tiny", vocab_size=32, d_model=32, n_layers=2, n_heads=2, mlp_hidden_size=64,
                   remat=remat)
  graphdef, state = llada.init_model(cfg, seed=0)
  tokens = jnp.zeros((1, 4), jnp.int32)
  loss = lambda s: llada.forward(graphdef, s, tokens).astype(jnp.float32).mean()
  return str(jax.make_jaxpr(jax.grad(loss))(state))


def _remat_equations(remat: bool) -> int:
  return len(re.findall(r"= remat\d*\[", _backward_jaxpr(remat)))


def test_remat_is_applied_in_the_backward():
  """One rematerialised region per block in the backward's program, none without remat."""
  assert _remat_equations(True) == 2 and _remat_equations(False) == 0


SAMPLER_MODES = {
    "plain": {},
    "dual_cache": {"kv_cache": "dual"},
    "threshold": {"threshold": 0.5},
    "cfg": {"cfg_scale": 1.0},
    "top_k_cache": {"cache_top_k": 5},
}


@pytest.mark.parametrize("mode, compute_dtype", [
    *((mode, "float32") for mode in sorted(SAMPLER_MODES)),
    ("plain", "bfloat16"), ("dual_cache", "bfloat16")])  # the recipe's dtype
def test_generation_with_remat_equals_without(mode, compute_dtype):
  cfg, policies = _policies(compute_dtype)
  s = SamplerSettings(gen_length=8, block_length=4, num_timesteps=4, temperature=0.9,
                      mask_id=cfg.mask_token_id, **SAMPLER_MODES[mode])
  prompts = jnp.array([[3, 4, 5, 6], [0, 0, 7, 8]], jnp.int32)
  lengths = jnp.array([4, 2], jnp.int32)
  branch_timesteps = jnp.array([[1, 3], [2, -1]], jnp.int32)
  results = {}
  for remat, (policy, trainable, frozen) in policies.items():
    results[remat] = generate(policy.graphdef, policy.model_state((trainable, frozen)), prompts,
                              lengths, jax.random.key(4), s, branch_timesteps)
  off, on = results[False], results[True]
  np.testing.assert_array_equal(on.tokens, off.tokens)
  np.testing.assert_array_equal(on.commit_timestep, off.commit_timestep)
  np.testing.assert_array_equal(on.branch_canvas, off.branch_canvas)
  np.testing.assert_array_equal(np.asarray(on.branch_logits, np.float32),
                                np.asarray(off.branch_logits, np.float32))
  assert float(jnp.abs(off.branch_logits.astype(jnp.float32)).max()) > 0  # states were cached


def _setup_batch(method: str, policies, cfg):
  sampler = SamplerSettings(gen_length=8, block_length=4, num_timesteps=4, temperature=1.0,
                            mask_id=cfg.mask_token_id)
  objective = learner.ObjectiveSettings(
      method=method, mask_id=cfg.mask_token_id, beta=0.0 if method == "spg" else 0.04,
      num_iterations=1, num_timesteps=sampler.num_timesteps,
      trace=dataclasses.replace(learner.ObjectiveSettings().trace, segments=2),
      spg=dataclasses.replace(learner.ObjectiveSettings().spg, block_length=4))
  rollout = pipeline.RolloutSettings(group_size=4, num_branches=2)
  prompts = np.tile(np.arange(3, dtype=np.int32) + 1, (2, 1))
  lengths = np.full((2,), 3, np.int32)
  policy, trainable, frozen = policies[True]
  reward = lambda completions, _: (np.asarray(completions) % 3 == 0).mean(-1)
  batch, _ = pipeline.collect(
      jax.random.key(0), policy.graphdef, policy.model_state((trainable, frozen)), prompts,
      lengths, reward, pipeline.CollectSettings(sampler, objective, rollout, cfg.eos_token_id))
  return objective, batch


@pytest.mark.parametrize("method", ["dispo", "dispo_trace", "dispo_spg"])  # each base + the state term
def test_one_update_with_remat_matches_without(method):
  """Replay (old and reference log-probs), then one update's loss, gradient norm and new adapters
  with LoRA dropout on: remat on the recipe's path changes nothing beyond fp32 rounding."""
  cfg, policies = _policies()
  objective, batch = _setup_batch(method, policies, cfg)
  keys = jax.random.split(jax.random.key(1), objective.num_iterations)
  sgd = optax.sgd(1.0)
  outputs = {}
  for remat, (policy, trainable, frozen) in policies.items():
    replayed = jax.jit(lambda p, b, k, policy=policy: learner.with_old_and_ref_logprobs(
        policy.bind(p), policy.bind_reference(p), b, k, objective))((trainable, frozen), batch,
                                                                    keys)
    update = jax.jit(learner.make_update_fn(policy.bind, sgd, objective, lora_dropout=True))
    new, _, metrics = update(trainable, frozen, sgd.init(trainable), replayed, 0, keys[0],
                             jax.random.key(2))
    outputs[remat] = (replayed.replay, new, metrics)
  (replay0, new0, m0), (replay1, new1, m1) = outputs[False], outputs[True]
  for a, b in zip(jax.tree.leaves(replay0), jax.tree.leaves(replay1)):
    np.testing.assert_allclose(a, b, atol=1e-5)
  assert float(m0["grad_norm"]) > 0 and float(m0["skipped"]) == 0
  np.testing.assert_allclose(m1["loss"], m0["loss"], rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(m1["grad_norm"], m0["grad_norm"], rtol=1e-5)
  for a, b in zip(jax.tree.leaves(new0), jax.tree.leaves(new1)):  # sgd(1): new - old = −grad
    np.testing.assert_allclose(a, b, atol=1e-6)
