"""Sharding rules and sharded execution on 8 fake CPU devices."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, PartitionSpec as P

from dispo_jax.model import llada, sharding
from dispo_jax.model.config import get_config


def test_rules_table_maps_logical_names():
  assert sharding.logical_to_mesh_axes(("embed", "heads")) == P("fsdp", "tensor")
  assert sharding.logical_to_mesh_axes(("vocab", "embed")) == P("tensor", "fsdp")
  assert sharding.logical_to_mesh_axes(("batch", "length")) == P(("data", "fsdp"), None)
  # a mesh axis is never used twice in one spec
  assert sharding.logical_to_mesh_axes(("batch", "embed")) == P(("data", "fsdp"), None)
  with pytest.raises(KeyError, match="'nonsense' has no rule"):
    sharding.logical_to_mesh_axes(("nonsense",))


def test_mesh_axis_types_are_explicitly_auto():
  mesh = sharding.make_mesh(data=2, fsdp=4, tensor=1)
  assert mesh.axis_names == ("data", "fsdp", "tensor")
  assert tuple(mesh.axis_types) == (AxisType.Auto,) * 3
  assert sharding.make_mesh(data=-1, tensor=2).shape["data"] == 4
  with pytest.raises(ValueError, match="needs 16 devices"):
    sharding.make_mesh(data=4, fsdp=4)
  assert sharding.make_mesh(data=1).devices.size == 1  # a sub-mesh of the first devices


def test_indivisible_dimension_is_replicated():
  mesh = sharding.make_mesh(fsdp=8)
  assert sharding.fit_spec_to_shape(P("fsdp", None), (12, 4), mesh) == P(None, None)
  assert sharding.fit_spec_to_shape(P("fsdp", None), (16, 4), mesh) == P("fsdp", None)


@pytest.mark.parametrize("shape", [(2, 4, 1), (1, 2, 4), (8, 1, 1)])
def test_sharded_init_and_forward_match_single_device(shape):
  cfg = get_config("tiny")
  mesh = sharding.make_mesh(*shape)
  graphdef, sharded_state = llada.init_sharded(cfg, mesh, seed=5)
  _, single_state = llada.init_model(cfg, seed=5)
  # every parameter follows the rules table
  q = sharded_state["blocks"][0]["attn"]["q_proj"]["kernel"][...]
  expected = sharding.fit_spec_to_shape(P("fsdp", "tensor"), q.shape, mesh)
  assert q.sharding.spec == expected
  for a, b in zip(jax.tree.leaves(sharded_state), jax.tree.leaves(single_state)):
    # same PRNG stream; the jitted init may fuse the scale multiply differently (1 ulp)
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-9)
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, cfg.vocab_size, (8, 12)), jnp.int32)
  batch_sharding = sharding.logical_sharding(mesh, "batch", "length")
  fwd = jax.jit(llada.forward, static_argnums=0)
  sharded_logits = fwd(graphdef, sharded_state, jax.device_put(tokens, batch_sharding))
  single_logits = fwd(graphdef, single_state, tokens)
  np.testing.assert_allclose(np.asarray(sharded_logits), np.asarray(single_logits), atol=1e-5)


def test_block_boundaries_carry_activation_constraints_under_a_mesh():
  """Under ``jax.set_mesh`` every block boundary constrains (batch, length, embed) by the rules
  table; without a mesh the program has none (single-device code unchanged)."""
  cfg = get_config("tiny", n_layers=3)
  graphdef, state = llada.init_model(cfg)
  tokens = jnp.zeros((8, 16), jnp.int32)
  lower = lambda: jax.jit(llada.forward, static_argnums=0).lower(graphdef, state, tokens).as_text()
  assert "sharding_constraint" not in lower()
  mesh = sharding.make_mesh(2, 4, 1)
  with jax.set_mesh(mesh):
    text = lower()
    out = jax.jit(llada.forward, static_argnums=0)(graphdef, state, tokens)
  assert text.count("sharding_constraint") >= cfg.n_layers + 1, text.count("sharding_constraint")
  assert '[{"data", "fsdp"}, {}, {}]' in text  # rows over data × fsdp, width left to the weights
  np.testing.assert_allclose(out, llada.forward(graphdef, state, tokens), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("lora_rank", [0, 8])  # full fine-tuning (tiny) and LoRA (the recipe)
def test_optimizer_moments_follow_their_parameters_in_training_and_in_the_plan(lora_rank):
  """train's step-0 optimizer state (``pipeline.setup_step`` on a mesh) follows the one placement
  rule (plan_scale's abstract state uses the same function): Adam's moments sharded as their
  parameters, counters replicated."""
  from dispo_jax import pipeline
  from dispo_jax.model.config import LoRAConfig
  from dispo_jax.rl import learner
  from dispo_jax.rl.optimizer import OptimizerSettings, make_optimizer
  from dispo_jax.sampling import SamplerSettings
  cfg, mesh = get_config("tiny"), sharding.make_mesh(2, 4, 1)
  lora = LoRAConfig(rank=lora_rank, alpha=16.0) if lora_rank else None
  optimizer = make_optimizer(OptimizerSettings())
  graphdef, state = llada.init_model(cfg, seed=0)
  settings = pipeline.CollectSettings(
      SamplerSettings(mask_id=cfg.mask_token_id),
      learner.ObjectiveSettings(method="diffu_grpo", beta=0.0, mask_id=cfg.mask_token_id),
      pipeline.RolloutSettings(), cfg.eos_token_id)
  _, real = pipeline.setup_step(cfg, graphdef, state, settings, optimizer, lora, mesh=mesh,
                                copy_reference=False)
  planned = jax.tree.map(lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh),
                         jax.eval_shape(optimizer.init, real.trainable),
                         sharding.optimizer_state_shardings(
                             jax.eval_shape(optimizer.init, real.trainable),
                             jax.tree.map(lambda x: x.sharding, real.trainable), mesh))
  real_leaves, planned_leaves = jax.tree.leaves(real.opt_state), jax.tree.leaves(planned)
  assert len(real_leaves) == len(planned_leaves)
  for a, b in zip(real_leaves, planned_leaves):
    assert a.shape == b.shape and a.sharding.is_equivalent_to(b.sharding, a.ndim), (a.shape,
                                                                                   a.sharding)
  params = [x.sharding.spec for x in jax.tree.leaves(real.trainable)]
  moments = [x for x in real_leaves if x.ndim]  # mu, then nu, each in the parameters' order
  assert len(moments) == 2 * len(params)
  assert [x.sharding.spec for x in moments] == params + params
  assert any(x.sharding.spec != P() for x in moments)  # sharded, not replicated
  assert all(x.sharding.spec == P() for x in real_leaves if x.ndim == 0)
