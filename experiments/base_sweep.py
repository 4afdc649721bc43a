"""Where to stop the tiny Sudoku base: held-out cell accuracy against SFT steps and timesteps.

  python experiments/base_sweep.py --root=/tmp/base_sweep --base-steps=200,300,400 --timesteps=6,12,24

For each SFT length, trains the base of ``configs/sudoku.py:tiny`` (reused from ``{root}/base_{n}``
if it exists) and reports, on the grid-disjoint held-out puzzles, the greedy cell accuracy and the
mean reward of τ = 0.9 samples (what RL rollouts see) at each number of timesteps. The target is
a base whose accuracy under the RL decoding settings is roughly 30–60 %.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import jax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import sudoku as sudoku_config  # noqa: E402
from experiments import tiny_data_flags  # noqa: E402
from dispo_jax import tiny_base as tiny, train  # noqa: E402
from dispo_jax.evaluate import evaluate_task, generate_texts  # noqa: E402
from dispo_jax.model import tokenizer as tok  # noqa: E402
from dispo_jax.sampling import SamplerSettings  # noqa: E402
from dispo_jax.tasks import DataSettings, get_task, metric  # noqa: E402


def sampled_reward(task, rows, graphdef, state, tokenizer, c, steps: int, mask_id: int,
                   eos_id: int, samples: int, seed: int) -> float:
  """Mean reward of ``samples`` τ-sampled completions per row (the rollout distribution)."""
  settings = SamplerSettings(gen_length=c.sampler.gen_length, block_length=c.sampler.block_length,
                             num_timesteps=steps, temperature=c.sampler.temperature, mask_id=mask_id)
  prompts = [tok.render_chat(task.tiny.prompt(r)) for r in rows]
  scores = []
  for s in range(samples):
    texts = generate_texts(graphdef, state, tokenizer, prompts, settings,
                           c.rollout.max_prompt_length, eos_id, jax.random.key(seed + s))
    scores += [task.score(t, r) for t, r in zip(texts, rows)]
  return metric(scores)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--root", default="/tmp/base_sweep")
  parser.add_argument("--base-steps", default="200,300,400")
  parser.add_argument("--timesteps", "--decode-steps", default="6,12,24")
  parser.add_argument("--eval-rows", type=int, default=256)
  parser.add_argument("--base-lr", type=float, default=3e-3, help="SFT learning rate")
  parser.add_argument("--samples", type=int, default=2)
  tiny_data_flags.add(parser)
  args = parser.parse_args()
  task = get_task("sudoku")
  table = {}
  for n in (int(s) for s in args.base_steps.split(",")):
    c = sudoku_config.get_config("tiny")
    c.base.steps = n
    c.base.learning_rate = args.base_lr
    c.base.cache_dir = args.root
    tiny_data_flags.apply(c, args)
    tokenizer, cfg, graphdef, state = tiny.prepare_base(train.base_spec(c))
    ids = tok.special_ids(tokenizer)
    _, eval_rows = task.tiny.rows(DataSettings(**c.data.to_dict()))
    eval_rows = eval_rows[: args.eval_rows]
    for steps in (int(s) for s in args.timesteps.split(",")):
      greedy = evaluate_task(task, eval_rows, graphdef, state, tokenizer,
                             gen_length=c.sampler.gen_length, block_length=c.sampler.block_length,
                             num_timesteps=steps, batch_size=64, max_prompt_length=c.rollout.max_prompt_length,
                             mask_id=cfg.mask_token_id, eos_id=ids.eos, progress=False,
                             prompt_fn=task.tiny.prompt)["accuracy"]
      sampled = sampled_reward(task, eval_rows, graphdef, state, tokenizer, c, steps,
                               cfg.mask_token_id, ids.eos, args.samples, seed=1000)
      table[f"{n}/{steps}"] = {"base_steps": n, "timesteps": steps, "greedy": greedy,
                               "sampled": sampled}
      print(f"base {n:4d} SFT steps, {steps:2d} timesteps: greedy {greedy:.3f}, "
            f"sampled (τ={c.sampler.temperature}) {sampled:.3f}", flush=True)
  with open(os.path.join(args.root, "base_sweep.json"), "w") as f:
    json.dump(table, f, indent=2)


if __name__ == "__main__":
  main()
