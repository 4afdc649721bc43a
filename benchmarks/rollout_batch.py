"""Seconds per rollout batch (its rollout and μ updates) with fast rollouts, on the `small` preset,
measured in one run, split into rollout, replay and updates.

  python -m benchmarks.rollout_batch [--prompts 2] [--group 4] [--gen 256] [--timesteps 128]
                                     [--mu 12] [--threshold 0.9] [--repeats 3]
                                     [--policy random|sft] [--sft-steps 300]

One DiSPO rollout batch (Z = 2, |S| = 1 state per rollout, the branch states included) at the
paper's rollout shapes (256 tokens, blocks of 32, 128 timesteps, μ = 12 inner updates): the rollout, the
replayed old / reference log-probs for the μ mask keys, and the μ updates, for three samplers —
plain, the dual KV cache, and the dual cache with Fast-dLLM's threshold rule — with the importance
weight on for the two approximate ones (``rl.behaviour.weight=auto``). Prints seconds per rollout
batch, the speed-up over plain (goal ≥ 2.5× for cache + threshold), the timesteps the threshold
used, the mismatch metrics of the cached rollouts, and the ceiling any sampler could reach: the
plain batch's seconds over its seconds without the rollout (Amdahl's bound).

Random weights are not confident, so Fast-dLLM's rule (at least one token per timestep) can take
up to ``gen`` timesteps; ``--policy=sft`` times a confident policy instead: the preset SFT'd on
tiny Sudoku at the benchmark's shapes (cached after the first run), prompted with held-out
puzzles.
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np

from benchmarks.common import TOY, model_config, random_prompts
from dispo_jax import pipeline
from dispo_jax.model import llada
from dispo_jax.model.config import LoRAConfig
from dispo_jax.rl import learner
from dispo_jax.rl.optimizer import OptimizerSettings, make_optimizer
from dispo_jax.sampling import SamplerSettings

LORA = LoRAConfig(rank=16, alpha=8, dropout=0.0)
SAMPLERS = {"plain": {}, "dual cache": {"kv_cache": "dual"},
            "dual cache + threshold": {"kv_cache": "dual", "threshold": None}}


def reward_fn(completions, prompt_index):
  return (np.asarray(completions) % 7 == 0).mean(-1)


def build(args, cfg, graphdef, state, options):
  """The initial :class:`TrainState` and compiled step functions of DiSPO with one sampler."""
  sampler = SamplerSettings(gen_length=args.gen, block_length=32, num_timesteps=args.timesteps,
                            temperature=0.9, mask_id=cfg.mask_token_id, **options)
  objective = learner.ObjectiveSettings(method="dispo", mask_id=cfg.mask_token_id,
                                        num_iterations=args.mu, num_timesteps=sampler.max_timesteps,
                                        approximate_sampler=sampler.approximate)
  rollout = pipeline.RolloutSettings(prompts_per_batch=args.prompts, group_size=args.group)
  opt = make_optimizer(OptimizerSettings(learning_rate=3e-6, grad_clip=1e9))
  settings = pipeline.CollectSettings(sampler, objective, rollout, cfg.eos_token_id)
  fns, train_state = pipeline.setup_step(cfg, graphdef, state, settings, opt, LORA)
  return train_state, fns


PHASES = ("rollout", "replay", "updates")


def phase_seconds(rows: list[dict], total: float) -> dict[str, float]:
  """One rollout batch's seconds by phase, from its metric rows (the updates: the rest)."""
  rollout, replay = rows[0]["time/rollout_seconds"], rows[0]["time/replay_seconds"]
  return {"rollout": rollout, "replay": replay, "updates": total - rollout - replay}


def time_rollout_batches(fns, train_state, prompts, lengths, repeats: int
                         ) -> tuple[float, dict[str, float], list, object]:
  """Median seconds of ``repeats`` rollout batches (after one that compiles), the median of each
  phase, the last one's metric rows and the state after it (the updates donate the state passed
  in)."""
  holder = {"state": train_state}

  def one_batch(seed):
    holder["state"], rows = pipeline.rollout_and_update(fns, holder["state"], prompts, lengths, reward_fn,
                                             jax.random.key(seed))
    return rows

  one_batch(100)
  times, phases, rows = [], [], []
  for r in range(repeats):
    start = time.perf_counter()
    rows = one_batch(r)
    times.append(time.perf_counter() - start)
    phases.append(phase_seconds(rows, times[-1]))
  medians = {p: float(np.median([x[p] for x in phases])) for p in PHASES}
  return float(np.median(times)), medians, rows, holder["state"]


def one_rollout(fns, train_state, prompts, lengths) -> tuple[int, float]:
  """One more rollout batch: the most timesteps any row took (the threshold's saving) and the
  fraction of completion tokens before the first EOS (the answers' share of ``--gen``)."""
  batch, metrics = pipeline.collect(jax.random.key(7), fns.policy.graphdef,
                                    fns.policy.model_state(train_state.params), prompts, lengths,
                                    reward_fn, fns.settings)
  eos_id = fns.settings.eos_id
  before_eos = np.asarray(batch.completion_mask) & (np.asarray(batch.completion) != eos_id)
  return int(metrics["sampler/timesteps_taken"]), float(before_eos.mean())


def sft_policy(args):
  """``(cfg, graphdef, state, prompts [n, P], lengths [n])``: the preset SFT'd ``--sft-steps`` on
  tiny Sudoku at the benchmark's prompt and completion lengths (LLaDA's SFT objective, cached as
  the tiny setting's bases are), with held-out puzzles as prompts. A trained policy's confidence:
  its answers are a few tokens, then EOS to ``--gen``, which it commits confidently (as a trained
  LLaDA's EOS padding)."""
  from dispo_jax import tiny_base
  from dispo_jax.tasks import DataSettings, get_task

  data = DataSettings()
  preset, overrides = args.preset, {}
  if preset == "toy":  # the tokenizer sets the vocabulary
    preset, overrides = "tiny", {k: v for k, v in TOY.items() if k != "vocab_size"}
  spec = tiny_base.BaseSpec(task="sudoku", data=data, preset=preset, overrides=overrides,
                            base=tiny_base.BaseSettings(steps=args.sft_steps, batch_size=16),
                            max_prompt_length=args.prompt_len, gen_length=args.gen)
  tokenizer, cfg, graphdef, state = tiny_base.prepare_base(spec)
  task = get_task("sudoku")
  held_out = task.tiny.rows(data)[1][:args.prompts]
  prompts, lengths, _ = tiny_base.encode_pairs(tokenizer, task, held_out, args.prompt_len, args.gen)
  return cfg, graphdef, state, prompts, lengths


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--prompts", type=int, default=2)
  parser.add_argument("--group", type=int, default=4)
  parser.add_argument("--prompt-len", type=int, default=32)
  parser.add_argument("--gen", type=int, default=256)
  parser.add_argument("--timesteps", "--steps", type=int, default=128)
  parser.add_argument("--mu", type=int, default=12)
  parser.add_argument("--threshold", type=float, default=0.9)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--preset", default="small", help="model preset (toy: a seconds-long smoke run)")
  parser.add_argument("--policy", default="random", choices=("random", "sft"),
                      help="random weights, or the preset SFT'd on tiny Sudoku (a confident policy)")
  parser.add_argument("--sft-steps", type=int, default=300, help="SFT steps of --policy=sft")
  args = parser.parse_args()
  if args.policy == "sft":
    cfg, graphdef, state, prompts, lengths = sft_policy(args)
  else:
    cfg = model_config(args.preset)
    graphdef, state = llada.init_model(cfg)
    prompts, lengths = random_prompts(cfg, args.prompts, args.prompt_len, high=100)
  policy = f"SFT {args.sft_steps} steps on tiny Sudoku" if args.policy == "sft" else "random"
  print(f"backend={jax.default_backend()} preset={args.preset} policy={policy} "
        f"rows={args.prompts * args.group} prompt={args.prompt_len} gen={args.gen} block=32 "
        f"timesteps={args.timesteps} mu={args.mu} method=dispo (Z=2) threshold={args.threshold} "
        f"(LoRA r16)")
  seconds, phases = {}, {}
  for name, options in SAMPLERS.items():
    options = {k: (args.threshold if k == "threshold" else v) for k, v in options.items()}
    train_state, fns = build(args, cfg, graphdef, state, options)
    seconds[name], phases[name], rows, train_state = time_rollout_batches(
        fns, train_state, prompts, lengths, args.repeats)
    used, answer_fraction = one_rollout(fns, train_state, prompts, lengths)
    mismatch = " | ".join(f"{k.split('/')[1]} {rows[0][k]:.4f}" for k in
                          ("behaviour/abs_log_ratio_mean", "behaviour/truncated_frac",
                           "behaviour/kl") if k in rows[0])
    if name == "plain":
      print(f"completion tokens before the first EOS: {answer_fraction:.0%}")
    split = ", ".join(f"{p} {phases[name][p]:.2f}" for p in PHASES)
    print(f"{name}: {seconds[name]:.2f} s per rollout batch ({split}), {used} timesteps, "
          f"importance weight {fns.settings.objective.importance_weight} | {mismatch}")
  plain = seconds["plain"]
  print(f"speed-up over plain: dual cache {plain / seconds['dual cache']:.2f}x | dual cache + "
        f"threshold {plain / seconds['dual cache + threshold']:.2f}x (goal >= 2.5x)")
  rest = plain - phases["plain"]["rollout"]
  print(f"rollout share of the plain batch {phases['plain']['rollout'] / plain:.0%}: a rollout "
        f"that cost nothing would give {plain / rest:.2f}x (the ceiling of any sampler here)")


if __name__ == "__main__":
  main()
