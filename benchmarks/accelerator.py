"""An accelerator check: forward, sampler and one DiSPO update at the paper's shapes, on any backend.

  python -m benchmarks.accelerator                    # LLaDA-8B (random bf16 weights) on a GPU / TPU
  python -m benchmarks.accelerator --preset=small     # the same program at CPU scale

Measures, with random weights (no checkpoint needed):
  * forward tokens/s at batch × (prompt + gen) tokens;
  * the jitted sampler's ms per timestep at gen / block / steps (DiSPO's branch cache on);
  * one DiSPO optimizer update (LoRA r128, Z = 2, |S| = K, μ = 1 replay) on a rollout batch of
    prompts × K rows: compile seconds, step seconds, and the device's peak memory
    (``memory_stats()``; n/a where the backend reports none, e.g. the CPU).
Prints one table and one JSON line (``ACCELERATOR {...}``) with every number.
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.common import model_config, random_prompts, time_fn
from dispo_jax import pipeline
from dispo_jax.model import llada
from dispo_jax.model.config import LoRAConfig
from dispo_jax.rl import learner
from dispo_jax.rl.optimizer import OptimizerSettings, make_optimizer
from dispo_jax.sampling import SamplerSettings


# The paper's shapes (accelerators) and a CPU scale that finishes in about a minute on 2 cores.
PAPER = {"prompts": 16, "group": 6, "forward_batch": 16, "prompt_len": 200, "gen": 256,
         "block": 32, "timesteps": 128, "microbatches": 12, "lora_rank": 128}
CPU = {"prompts": 2, "group": 4, "forward_batch": 2, "prompt_len": 32, "gen": 64, "block": 32,
       "timesteps": 16, "microbatches": 2, "lora_rank": 16}


def parse_args() -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--preset", default="", help="default: llada_8b on an accelerator, small "
                      "on a CPU (toy: a seconds-long smoke run)")
  for name in PAPER:
    parser.add_argument("--" + name.replace("_", "-"), type=int, default=None,
                        help=f"default: {PAPER[name]} on an accelerator, {CPU[name]} on a CPU")
  args = parser.parse_args()
  defaults = CPU if jax.default_backend() == "cpu" else PAPER
  for name, value in defaults.items():
    if getattr(args, name) is None:
      setattr(args, name, value)
  return args


def peak_memory_gib() -> float | None:
  stats = jax.devices()[0].memory_stats() or {}
  peak = stats.get("peak_bytes_in_use")
  return None if peak is None else peak / 2**30


def forward_tokens_per_second(cfg, graphdef, state, args) -> float:
  tokens = jnp.zeros((args.forward_batch, args.prompt_len + args.gen), jnp.int32)
  fwd = jax.jit(llada.forward, static_argnums=0)
  return tokens.size / time_fn(lambda: fwd(graphdef, state, tokens), repeats=3)


def rollout_and_update(cfg, graphdef, state, args) -> dict:
  """One rollout batch (timed per timestep) and one DiSPO update (compile and step)."""
  sampler = SamplerSettings(gen_length=args.gen, block_length=args.block, num_timesteps=args.timesteps,
                            temperature=0.9, mask_id=cfg.mask_token_id)
  objective = learner.ObjectiveSettings(method="dispo", num_microbatches=args.microbatches,
                                        num_timesteps=args.timesteps, mask_id=cfg.mask_token_id)
  settings = pipeline.CollectSettings(sampler, objective, pipeline.RolloutSettings(
      prompts_per_batch=args.prompts, group_size=args.group), cfg.eos_token_id)
  fns, train_state = pipeline.setup_step(cfg, graphdef, state, settings,
                                         make_optimizer(OptimizerSettings()),
                                         LoRAConfig(rank=args.lora_rank, alpha=64.0))
  policy = fns.policy
  prompts, lengths = random_prompts(cfg, args.prompts, args.prompt_len)
  reward_fn = lambda completions, index: (np.asarray(completions) % 7 == 0).mean(-1)
  collect = lambda seed: pipeline.collect(jax.random.key(seed), policy.graphdef,
                                          policy.model_state(train_state.params), prompts,
                                          lengths, reward_fn, settings)[0]
  jax.block_until_ready(collect(0))  # compile
  rollout_seconds = time_fn(lambda: collect(1), repeats=1, warmup=0)
  batch = fns.replay(train_state.params, collect(2), jax.random.split(jax.random.key(3), 1))
  args_ = (train_state.trainable, train_state.frozen, train_state.opt_state, batch, 0,
           jax.random.key(4), None)
  start = time.perf_counter()
  compiled = fns.update.lower(*args_).compile()
  compile_seconds = time.perf_counter() - start
  holder = {"t": train_state.trainable, "o": train_state.opt_state}

  def one_update():
    holder["t"], holder["o"], m = compiled(holder["t"], train_state.frozen, holder["o"], batch,
                                           0, jax.random.key(4), None)
    return m["loss"]
  return {"sampler_ms_per_timestep": 1e3 * rollout_seconds / args.timesteps,
          "update_compile_s": compile_seconds, "update_s": time_fn(one_update, repeats=2)}


def main() -> None:
  args = parse_args()
  backend = jax.default_backend()
  preset = args.preset or ("small" if backend == "cpu" else "llada_8b")
  dtype = "float32" if backend == "cpu" else "bfloat16"
  cfg = model_config(preset, param_dtype=dtype, compute_dtype=dtype, remat=preset == "llada_8b")
  graphdef, state = llada.init_model(cfg)
  result = {"backend": backend, "device": str(jax.devices()[0].device_kind), "preset": preset,
            "dtype": dtype, "params": llada.count_params(state), "rows": args.prompts * args.group,
            "tokens_per_row": args.prompt_len + args.gen, "timesteps": args.timesteps}
  result["forward_tokens_per_s"] = forward_tokens_per_second(cfg, graphdef, state, args)
  result.update(rollout_and_update(cfg, graphdef, state, args))
  result["peak_memory_gib"] = peak_memory_gib()
  print(f"{result['device']} ({backend}), {preset} {dtype}, {result['params']:,} parameters")
  print("| measure | value |\n|---|---|")
  print(f"| forward, {args.forward_batch} × {args.prompt_len + args.gen} tokens | "
        f"{result['forward_tokens_per_s']:,.0f} tokens/s |")
  print(f"| sampler, gen {args.gen} / block {args.block} / {args.timesteps} timesteps, "
        f"{result['rows']} rows | {result['sampler_ms_per_timestep']:.1f} ms per timestep |")
  print(f"| DiSPO update (LoRA r{args.lora_rank}, {args.microbatches} micro-batches): compile | "
        f"{result['update_compile_s']:.1f} s |")
  print(f"| DiSPO update | {result['update_s']:.2f} s |")
  peak = result["peak_memory_gib"]
  print(f"| peak device memory | {'n/a' if peak is None else f'{peak:.1f} GiB'} |")
  print("ACCELERATOR " + json.dumps(result))


if __name__ == "__main__":
  main()
