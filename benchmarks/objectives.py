"""Cost of DiSPO relative to diffu-GRPO, on the `small` preset, measured in one run.

  python -m benchmarks.objectives [--prompts 2] [--group 4] [--prompt-len 32] [--gen 64]

Prints:
  (a) one DiSPO update (Z = 2, |S| = K) / one diffu-GRPO update on the same batch (floor ≈ 2×:
      one extra forward+backward on the K state canvases; goal ≤ 2.1×), and Z = 4 / Z = 2;
  (c) one SPG update (m = 2 block masks) / one diffu-GRPO update, and DiSPO+SPG / SPG;
  (d) one trace update (the trajectory-consistent surrogate) at N = 4 and N = 16 segments / one
      diffu-GRPO update (N forwards and backwards on the segment canvases instead of one);
  (b) a whole rollout batch — rollout with `steps` timesteps, old/ref log-probs for μ seeds, μ
      updates — DiSPO / diffu-GRPO at the paper's ratio of steps to inner updates (128 steps, μ = 12
      by default; goal ≤ 1.35×).
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np

from benchmarks.common import model_config, random_prompts, time_fn
from dispo_jax.model import llada
from dispo_jax.model.config import LoRAConfig
from dispo_jax import pipeline
from dispo_jax.rl import learner
from dispo_jax.rl.optimizer import OptimizerSettings, make_optimizer
from dispo_jax.rl.objectives.trace import TraceSettings
from dispo_jax.sampling import SamplerSettings


LORA = LoRAConfig(rank=16, alpha=8, dropout=0.0)


def reward_fn(completions, prompt_index):
  return (np.asarray(completions) % 7 == 0).mean(-1)


def build(method, z, args, cfg, graphdef, state, segments=4, mu=1):
  """The policy, initial :class:`TrainState` and compiled step functions of one method."""
  sampler = SamplerSettings(gen_length=args.gen, block_length=32, num_timesteps=args.timesteps,
                            temperature=0.9, mask_id=cfg.mask_token_id)
  objective = learner.ObjectiveSettings(method=method, mask_id=cfg.mask_token_id,
                                        num_iterations=mu, beta=0.0 if method == "spg" else 0.04,
                                        trace=TraceSettings(segments), num_timesteps=args.timesteps)
  rollout = pipeline.RolloutSettings(prompts_per_batch=args.prompts, group_size=args.group,
                                     num_branches=z)
  opt = make_optimizer(OptimizerSettings(learning_rate=3e-6, grad_clip=1e9))
  settings = pipeline.CollectSettings(sampler, objective, rollout, cfg.eos_token_id)
  fns, train_state = pipeline.setup_step(cfg, graphdef, state, settings, opt, LORA)
  return train_state, fns


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--prompts", type=int, default=2)
  parser.add_argument("--group", type=int, default=4)
  parser.add_argument("--prompt-len", type=int, default=32)
  parser.add_argument("--gen", type=int, default=64)
  parser.add_argument("--timesteps", "--steps", type=int, default=128)
  parser.add_argument("--mu", type=int, default=12)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--skip-step", action="store_true", help="parts (a), (c), (d) only")
  parser.add_argument("--preset", default="small", help="model preset (toy: a seconds-long smoke run)")
  args = parser.parse_args()
  cfg = model_config(args.preset)
  graphdef, state = llada.init_model(cfg)
  prompts, lengths = random_prompts(cfg, args.prompts, args.prompt_len, high=100)
  print(f"backend={jax.default_backend()} preset=small rows={args.prompts * args.group} "
        f"prompt={args.prompt_len} gen={args.gen} timesteps={args.timesteps} mu={args.mu} (LoRA r16)")

  # (a) one update on the same batch
  update_times = {}
  batches = {}
  for method, z, segments in (("diffu_grpo", 2, 4), ("dispo", 2, 4), ("dispo", 4, 4),
                              ("spg", 2, 4), ("dispo_spg", 2, 4), ("trace", 2, 4),
                              ("trace", 2, 16)):
    train_state, fns = build(method, z, args, cfg, graphdef, state, segments)
    batch, _ = pipeline.collect(jax.random.key(0), fns.policy.graphdef,
                                   fns.policy.model_state(train_state.params), prompts, lengths,
                                   reward_fn, fns.settings)
    keys = jax.random.split(jax.random.key(1), 1)
    batch = fns.replay(train_state.params, batch, keys)
    holder = {"t": train_state.trainable, "o": train_state.opt_state}

    def one():
      holder["t"], holder["o"], m = fns.update(holder["t"], train_state.frozen, holder["o"], batch,
                                               0, keys[0], None)
      return m["loss"]
    name = (method, segments) if method == "trace" else (method, z)
    update_times[name] = time_fn(one, repeats=args.repeats * 2)
    batches[name] = batch
  grpo = update_times[("diffu_grpo", 2)]
  print(f"(a) update: diffu-GRPO {grpo * 1e3:.1f} ms | DiSPO Z=2 "
        f"{update_times[('dispo', 2)] * 1e3:.1f} ms -> {update_times[('dispo', 2)] / grpo:.2f}x "
        f"(goal <= 2.1x) | DiSPO Z=4 / Z=2 = "
        f"{update_times[('dispo', 4)] / update_times[('dispo', 2)]:.2f}")
  spg = update_times[("spg", 2)]
  print(f"(c) update: SPG {spg * 1e3:.1f} ms -> {spg / grpo:.2f}x diffu-GRPO | DiSPO+SPG "
        f"{update_times[('dispo_spg', 2)] * 1e3:.1f} ms -> {update_times[('dispo_spg', 2)] / spg:.2f}x "
        f"SPG")
  print(f"(d) update: trace N=4 {update_times[('trace', 4)] * 1e3:.1f} ms -> "
        f"{update_times[('trace', 4)] / grpo:.2f}x diffu-GRPO | trace N=16 "
        f"{update_times[('trace', 16)] * 1e3:.1f} ms -> {update_times[('trace', 16)] / grpo:.2f}x")
  if args.skip_step:
    return

  # (b) a whole rollout batch
  batch_times = {}
  for method in ("diffu_grpo", "dispo"):
    train_state, fns = build(method, 2, args, cfg, graphdef, state, mu=args.mu)
    holder = {"state": train_state}

    def one_batch(seed):
      holder["state"], rows = pipeline.rollout_and_update(fns, holder["state"], prompts, lengths,
                                                          reward_fn, jax.random.key(seed))
      return rows[-1]["loss"]

    one_batch(100)  # compile
    times = []
    for r in range(args.repeats):
      start = time.perf_counter()
      one_batch(r)
      times.append(time.perf_counter() - start)
    batch_times[method] = float(np.median(times))
  ratio = batch_times["dispo"] / batch_times["diffu_grpo"]
  print(f"(b) rollout batch: diffu-GRPO {batch_times['diffu_grpo']:.2f} s | DiSPO "
        f"{batch_times['dispo']:.2f} s -> {ratio:.2f}x (goal <= 1.35x; throughput "
        f"{1 / ratio:.2f}x of the baseline; the paper's implementation: 0.4x)")


if __name__ == "__main__":
  main()
