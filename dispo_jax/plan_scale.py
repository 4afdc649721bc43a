"""Plan for scale: compile a config's train step for LLaDA-8B on a fake CPU mesh, no weights.

  python -m dispo_jax.plan_scale --config=configs/sudoku.py --config.mesh.fsdp=8 --devices=8
  python -m dispo_jax.plan_scale --config=configs/gsm8k.py --config.mesh.data=4 \
      --config.mesh.fsdp=8 --devices=32 --microbatches=12
  python -m dispo_jax.plan_scale --config=configs/sudoku.py --config.mesh.fsdp=8 --part=sampler

``--layers=N`` compiles N blocks instead of the preset's (full 8B compiles take ~15 minutes on two
cores): memory is affine in the number of blocks, so two small runs give the per-layer cost.

The config file and its ``--config.<key>=<value>`` overrides are read exactly as ``train`` reads
them; the mesh is the config's ``mesh`` section (``-1`` takes the remaining devices).

Reads the run's config (method, LoRA, optimizer, rollout batch, prompt and completion lengths, DiSPO's
Z and |S|, μ), lowers and compiles its ``update`` with abstract inputs sharded by the logical-axis
rules, and prints XLA's per-device ``memory_analysis()``. The fake devices are host CPU devices, so
the numbers are XLA's buffer assignment for this program, a planning estimate for accelerators
(which use their own compiler and fusion decisions).
"""

from __future__ import annotations

import dataclasses
import time

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", "configs/sudoku.py",
                                          "config file[:variants], as for train")
_DEVICES = flags.DEFINE_integer("devices", 8, "fake CPU devices")
_PRESET = flags.DEFINE_string("preset", "llada_8b", "model preset")
_MICROBATCHES = flags.DEFINE_integer("microbatches", 12, "0: the config's rl.num_microbatches")
_LAYERS = flags.DEFINE_integer("layers", 0, "0: the preset's; > 0: compile with this many "
                               "blocks (two such runs give the per-layer cost to extrapolate)")
_PART = flags.DEFINE_enum("part", "update", ["update", "sampler"],
                          "update: one optimizer update; sampler: one rollout (generate with "
                          "DiSPO's branch cache)")


def abstract_state(cfg, lora, mesh, optimizer):
  """``(graphdef, trainable, frozen, opt_state)`` as sharded ``ShapeDtypeStruct`` trees (frozen:
  the base weights under LoRA, the reference copy under full fine-tuning)."""
  import jax
  from flax import nnx

  from dispo_jax.model import llada, sharding

  graphdef, lora_abs, base_abs = nnx.split(
      nnx.eval_shape(lambda: llada.LLaDA(cfg, rngs=llada.model_rngs(0), lora=lora)),
      llada.LoRAParam, ...)

  def with_sharding(state):
    shardings = sharding.state_shardings(state, mesh)
    leaves, treedef = jax.tree.flatten(state)
    return treedef.unflatten([jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s)
                              for x, s in zip(leaves, jax.tree.leaves(shardings))])

  if lora is None:  # full fine-tuning: every weight trains; the reference is a copy (as in train)
    trainable = frozen = with_sharding(base_abs)
  else:
    trainable, frozen = with_sharding(lora_abs), with_sharding(base_abs)
  opt_abstract = jax.eval_shape(optimizer.init, trainable)
  opt_shardings = sharding.optimizer_state_shardings(
      opt_abstract, jax.tree.map(lambda x: x.sharding, trainable), mesh)
  opt_state = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                           opt_abstract, opt_shardings)
  return graphdef, trainable, frozen, opt_state


def abstract_batch(s, mesh, policy, params):
  """The :class:`RLBatch` an update receives for run settings ``s``, as ``ShapeDtypeStruct`` with
  rows over the data axes: the rollout's fields, then ``jax.eval_shape`` over the assembly the run
  itself applies (the objective's weight fields and the replayed log-probs), so an objective's
  fields are whatever it produces."""
  import jax
  import jax.numpy as jnp
  from jax.sharding import NamedSharding, PartitionSpec as P

  from dispo_jax.model import sharding
  from dispo_jax.pipeline import rollout
  from dispo_jax.rl import learner
  from dispo_jax.rl.batch import RLBatch

  k = s.rollout.group_size
  n = s.rollout.prompts_per_batch * k
  p, g, mu = s.rollout.max_prompt_length, s.sampler.gen_length, s.objective.num_iterations
  n_states, z = s.rollout.states_per_prompt, s.rollout.num_branches
  sds = jax.ShapeDtypeStruct
  branches = s.objective.adds_state_term
  sampled = RLBatch(
      prompt_tokens=sds((n, p), jnp.int32), prompt_key_mask=sds((n, p), jnp.bool_),
      completion=sds((n, g), jnp.int32), completion_mask=sds((n, g), jnp.bool_),
      advantages=sds((n,), jnp.float32), row_ids=sds((n,), jnp.int32),
      commit_timestep=sds((n, g), jnp.int32), behaviour_logp=sds((n, g), jnp.float32),
      state_canvas=sds((n, n_states, g), jnp.int32) if branches else None,
      actions=sds((n, n_states, z, g), jnp.int32) if branches else None,
      action_mask=sds((n, n_states, z, g), jnp.bool_) if branches else None,
      branch_advantages=sds((n, n_states, z), jnp.float32) if branches else None)

  def assemble(batch, params):
    batch = batch.replace(**rollout.weight_fields(batch.completion_mask, batch.action_mask, k,
                                                  s.objective))
    apply = policy.bind(params)
    keys = jax.random.split(jax.random.key(0), mu)
    return learner.with_old_and_ref_logprobs(apply, policy.bind_reference(params), batch, keys,
                                             s.objective)

  shapes = jax.eval_shape(assemble, sampled, params)
  rows = NamedSharding(mesh, sharding.logical_to_mesh_axes(("batch",)))
  rows_mu = NamedSharding(mesh, P(None, *sharding.logical_to_mesh_axes(("batch",))))
  placed = lambda tree, sh: jax.tree.map(lambda x: sds(x.shape, x.dtype, sharding=sh), tree)
  return placed(shapes.replace(replay=None), rows).replace(replay=placed(shapes.replay, rows_mu))


def lower_sampler(s, mesh, graphdef, model_state):
  """The rollout's compiled ``generate`` (branch cache for |T_sub| states per row) on abstract,
  sharded prompts."""
  import jax
  import jax.numpy as jnp
  from jax.sharding import NamedSharding

  from dispo_jax.model import sharding
  from dispo_jax.sampling import sampler

  n = s.rollout.prompts_per_batch * s.rollout.group_size
  rows = lambda *axes: NamedSharding(mesh, sharding.logical_to_mesh_axes(("batch",) + axes))
  tokens = jax.ShapeDtypeStruct((n, s.rollout.max_prompt_length), jnp.int32,
                                sharding=rows("length"))
  lengths = jax.ShapeDtypeStruct((n,), jnp.int32, sharding=rows())
  branch_timesteps = jax.ShapeDtypeStruct((n, s.rollout.states_per_prompt), jnp.int32, sharding=rows(None))
  with jax.set_mesh(mesh):
    return sampler._generate_jit.lower(graphdef, model_state, tokens, lengths, jax.random.key(0),
                                       s.sampler, branch_timesteps).compile()


def report(compiled, seconds: float, mesh_shape: str, s, params: int, cfg) -> None:
  mem = compiled.memory_analysis()
  gib = lambda b: b / 2**30
  n = s.rollout.prompts_per_batch * s.rollout.group_size
  config = config_flags.get_config_filename(flags.FLAGS["config"])
  overrides = " ".join(f"--config.{k}={v}" for k, v in
                       config_flags.get_override_values(flags.FLAGS["config"]).items())
  print(f"{config} {overrides}: part={_PART.value} method={s.objective.method} "
        f"preset={_PRESET.value} layers={cfg.n_layers} params={params:,} "
        f"devices={_DEVICES.value} mesh(data,fsdp,tensor)=({mesh_shape}) rows={n} tokens/row="
        f"{s.rollout.max_prompt_length + s.sampler.gen_length} microbatches="
        f"{s.objective.num_microbatches} (compiled in {seconds:.0f}s)")
  print(f"per device: arguments {gib(mem.argument_size_in_bytes):.2f} GiB | outputs "
        f"{gib(mem.output_size_in_bytes):.2f} GiB | temporaries {gib(mem.temp_size_in_bytes):.2f} "
        f"GiB | aliased {gib(mem.alias_size_in_bytes):.2f} GiB | generated code "
        f"{gib(mem.generated_code_size_in_bytes):.3f} GiB")
  total = (mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
           - mem.alias_size_in_bytes)
  print(f"per device peak estimate (arguments + outputs + temporaries - aliased): {gib(total):.2f} GiB")


def main(argv) -> None:
  del argv
  import jax
  jax.config.update("jax_num_cpu_devices", _DEVICES.value)

  from dispo_jax.model import sharding
  from dispo_jax.model.config import get_config
  from dispo_jax import pipeline
  from dispo_jax.rl.optimizer import make_optimizer
  from dispo_jax.rl.policy import Policy
  from dispo_jax.train import run_settings

  c = _CONFIG.value
  layers = {"n_layers": _LAYERS.value} if _LAYERS.value > 0 else {}
  cfg = get_config(_PRESET.value, remat=c.model.remat, **layers)
  s = run_settings(c, mask_id=cfg.mask_token_id)
  if _MICROBATCHES.value:
    s = dataclasses.replace(s, objective=dataclasses.replace(
        s.objective, num_microbatches=_MICROBATCHES.value))
  mesh = sharding.make_mesh(c.mesh.data, c.mesh.fsdp, c.mesh.tensor)
  mesh_shape = ",".join(str(n) for n in mesh.devices.shape)
  optimizer = make_optimizer(s.optim)
  graphdef, trainable, frozen, opt_state = abstract_state(cfg, s.lora, mesh, optimizer)
  params = sum(x.size for x in jax.tree.leaves((trainable, frozen) if s.lora else trainable))
  if _PART.value == "sampler":
    start = time.perf_counter()
    compiled = lower_sampler(s, mesh, graphdef, (frozen, trainable) if s.lora else trainable)
    report(compiled, time.perf_counter() - start, mesh_shape, s, params, cfg)
    return
  policy = Policy(graphdef, s.lora is not None)
  fns = pipeline.make_step_functions(  # train's own jitted update, on the abstract state
      policy, optimizer, pipeline.CollectSettings(s.sampler, s.objective, s.rollout,
                                                  cfg.eos_token_id),
      pipeline.TrainState(trainable, frozen, opt_state),
      lora_dropout=bool(s.lora and s.lora.dropout))
  key = jax.random.key(0)
  start = time.perf_counter()
  with jax.set_mesh(mesh):  # as train: activations constrained at block boundaries
    batch = abstract_batch(s, mesh, policy, (trainable, frozen))
    compiled = fns.update.lower(trainable, frozen, opt_state, batch, 0, key, key).compile()
  report(compiled, time.perf_counter() - start, mesh_shape, s, params, cfg)


if __name__ == "__main__":
  app.run(main)
