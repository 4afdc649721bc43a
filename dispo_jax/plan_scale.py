"""Plan for scale: compile the DiSPO train step for LLaDA-8B on a fake CPU mesh, no weights.

  python -m dispo_jax.plan_scale --devices=8 --mesh=1,8,1
  python -m dispo_jax.plan_scale --devices=32 --mesh=4,8,1 --microbatches=12

Lowers and compiles ``update`` (LoRA r128 over bf16 base weights, DiSPO Z=2, |S|=K, the paper's
batch of 16 prompts × 6, prompt 200 + completion 256 tokens) with abstract inputs sharded by the
logical-axis rules, and prints XLA's per-device ``memory_analysis()``. The fake devices are host CPU
devices, so the numbers are XLA's buffer assignment for this program, a planning estimate for
accelerators (which use their own compiler and fusion decisions).
"""

from __future__ import annotations

import argparse
import time


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--devices", type=int, default=8)
  parser.add_argument("--mesh", default="1,8,1", help="data,fsdp,tensor")
  parser.add_argument("--preset", default="llada_8b")
  parser.add_argument("--microbatches", type=int, default=12)
  parser.add_argument("--prompts", type=int, default=16)
  parser.add_argument("--group", type=int, default=6)
  parser.add_argument("--prompt-len", type=int, default=200)
  parser.add_argument("--gen", type=int, default=256)
  parser.add_argument("--mu", type=int, default=8)
  args = parser.parse_args()

  import jax
  jax.config.update("jax_num_cpu_devices", args.devices)
  import jax.numpy as jnp
  import optax
  from flax import nnx
  from jax.sharding import NamedSharding, PartitionSpec as P

  from dispo_jax.model import llada, sharding
  from dispo_jax.model.config import LoRAConfig, get_config
  from dispo_jax.rl import learner
  from dispo_jax.rl.policy import Policy

  data, fsdp, tensor = (int(x) for x in args.mesh.split(","))
  mesh = sharding.make_mesh(data, fsdp, tensor)
  cfg = get_config(args.preset, remat=True)
  lora = LoRAConfig(rank=128, alpha=64, dropout=0.05)
  graphdef, lora_abs, base_abs = nnx.split(
      nnx.eval_shape(lambda: llada.LLaDA(cfg, rngs=llada.model_rngs(0), lora=lora)),
      llada.LoRAParam, ...)

  def with_sharding(state):
    shardings = sharding.state_shardings(state, mesh)
    leaves, treedef = jax.tree.flatten(state)
    return treedef.unflatten([jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s)
                              for x, s in zip(leaves, jax.tree.leaves(shardings))])

  trainable, frozen = with_sharding(lora_abs), with_sharding(base_abs)
  optimizer = optax.chain(optax.clip_by_global_norm(0.2),
                          optax.adamw(3e-6, b1=0.9, b2=0.99, weight_decay=0.1))
  opt_state = jax.eval_shape(optimizer.init, trainable)
  opt_state = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=NamedSharding(
          mesh, sharding.fit_spec_to_shape(sharding.logical_to_mesh_axes(
              ("embed",) + (None,) * (len(x.shape) - 1)), x.shape, mesh) if x.ndim else P())),
      opt_state)

  n, p, g, s, z, mu = args.prompts * args.group, args.prompt_len, args.gen, 1, 2, args.mu
  rows = NamedSharding(mesh, sharding.logical_to_mesh_axes(("batch",)))
  rows_mu = NamedSharding(mesh, P(None, *sharding.logical_to_mesh_axes(("batch",))))
  sds = lambda shape, dtype, sh: jax.ShapeDtypeStruct(shape, dtype, sharding=sh)
  batch = learner.RLBatch(
      prompt_tokens=sds((n, p), jnp.int32, rows), prompt_key_mask=sds((n, p), jnp.bool_, rows),
      completion=sds((n, g), jnp.int32, rows), completion_mask=sds((n, g), jnp.bool_, rows),
      advantages=sds((n,), jnp.float32, rows), row_ids=sds((n,), jnp.int32, rows),
      base_row_weights=sds((n,), jnp.float32, rows),
      base_old_logp=sds((mu, n, g), jnp.float32, rows_mu),
      base_ref_logp=sds((mu, n, g), jnp.float32, rows_mu),
      state_canvas=sds((n, s, g), jnp.int32, rows), actions=sds((n, s, z, g), jnp.int32, rows),
      action_mask=sds((n, s, z, g), jnp.bool_, rows),
      branch_advantages=sds((n, s, z), jnp.float32, rows),
      step_old_logp=sds((mu, n, s, z, g), jnp.float32, rows_mu),
      step_ref_logp=sds((mu, n, s, z, g), jnp.float32, rows_mu))
  policy = Policy(graphdef, True)
  objective = learner.ObjectiveSettings(method="dispo", mask_id=cfg.mask_token_id)
  update = learner.make_update_fn(policy.apply, optimizer, objective, args.microbatches,
                                  lora_dropout=True)
  key = jax.random.key(0)
  shard_of = lambda tree: jax.tree.map(lambda x: x.sharding, tree)
  jitted = jax.jit(update, donate_argnums=(0, 2),
                   out_shardings=(shard_of(trainable), shard_of(opt_state), None))
  start = time.perf_counter()
  lowered = jitted.lower(trainable, frozen, opt_state, batch, 0, key, key)
  compiled = lowered.compile()
  seconds = time.perf_counter() - start
  mem = compiled.memory_analysis()
  gib = lambda b: b / 2**30
  params = sum(x.size for x in jax.tree.leaves(base_abs)) + sum(
      x.size for x in jax.tree.leaves(lora_abs))
  print(f"preset={args.preset} params={params:,} devices={args.devices} mesh(data,fsdp,tensor)="
        f"{(data, fsdp, tensor)} rows={n} tokens/row={p + g} microbatches={args.microbatches} "
        f"(compiled in {seconds:.0f}s)")
  print(f"per device: arguments {gib(mem.argument_size_in_bytes):.2f} GiB | outputs "
        f"{gib(mem.output_size_in_bytes):.2f} GiB | temporaries {gib(mem.temp_size_in_bytes):.2f} "
        f"GiB | aliased {gib(mem.alias_size_in_bytes):.2f} GiB | generated code "
        f"{gib(mem.generated_code_size_in_bytes):.3f} GiB")
  total = (mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
           - mem.alias_size_in_bytes)
  print(f"per device peak estimate (arguments + outputs + temporaries - aliased): {gib(total):.2f} GiB")


if __name__ == "__main__":
  main()
