"""Small-scale reproduction: diffu-GRPO vs DiSPO (α_step 0.1, 0.5) on tiny Sudoku, matched compute.

  python experiments/sudoku_study.py --root=/tmp/sudoku_study --seeds=0,1,2 --steps=40 --lr=1e-4

One SFT'd base (configs/sudoku.py:tiny, grid-disjoint held-out puzzles) is shared by every run;
runs differ only in method, α_step and the RL seed (same rollouts per step count, optimizer steps
and μ). Writes ``{root}/summary.json`` and learning-curve PNGs into ``docs/`` and prints the table
that ``docs/RESULTS.md`` quotes. Rerunning skips finished runs (each resumes from its work folder).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import sudoku as sudoku_config  # noqa: E402
from dispo_jax import tiny, train  # noqa: E402

# run name -> (config variant, method, α_step, shuffled-reward control)
METHODS = {"diffu_grpo": ("tiny", "diffu_grpo", 0.0, False),
           "dispo_a0.1": ("tiny", "dispo", 0.1, False),
           "dispo_a0.5": ("tiny", "dispo", 0.5, False),
           "spg": ("tiny,spg", "spg", 0.0, False),
           "dispo_spg_a0.5": ("tiny,dispo_spg", "dispo_spg", 0.5, False),
           "diffu_grpo_shuffled": ("tiny", "diffu_grpo", 0.0, True)}
COLORS = {"diffu_grpo": "tab:gray", "dispo_a0.1": "tab:blue", "dispo_a0.5": "tab:red",
          "spg": "tab:green", "dispo_spg_a0.5": "tab:purple", "diffu_grpo_shuffled": "black"}


def make_config(args, name: str, seed: int):
  variant, method, alpha, shuffled = METHODS[name]
  c = sudoku_config.get_config(variant)
  c.method, c.rl.alpha_step, c.seed, c.shuffle_rewards = method, alpha, seed, shuffled
  c.num_steps = args.steps
  c.optim.learning_rate = args.lr
  c.base.steps = args.base_steps
  c.rollout.steps = args.decode_steps
  c.eval_every = args.eval_every
  c.eval_rows = args.eval_rows
  c.checkpoint_every = max(c.checkpoint_every, args.eval_every)
  c.export_hf = False
  return c


def paired_gain(runs: dict, name: str, args) -> list[float] | None:
  """Per seed: mean over the second half of the steps of (rollout reward − the shuffled control's).

  Runs of one seed draw the same prompts at every step, so the difference removes prompt
  difficulty, the largest source of step-to-step variation. None without the control run.
  """
  gains = []
  for (method, seed), rows in runs.items():
    control = runs.get(("diffu_grpo_shuffled", seed))
    if method != name or control is None:
      continue
    ref = {r["step"]: r["reward_mean"] for r in control if "reward_mean" in r}
    diff = [r["reward_mean"] - ref[r["step"]] for r in rows
            if "reward_mean" in r and r["step"] in ref and r["step"] >= args.steps // 2]
    gains.append(float(np.mean(diff)))
  return gains or None


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--root", default="/tmp/sudoku_study")
  parser.add_argument("--seeds", default="0,1,2")
  parser.add_argument("--methods", default=",".join(METHODS))
  parser.add_argument("--steps", type=int, default=40)
  parser.add_argument("--lr", type=float, default=1e-4)
  parser.add_argument("--base-steps", type=int, default=300)
  parser.add_argument("--decode-steps", type=int, default=6)
  parser.add_argument("--eval-every", type=int, default=10)
  parser.add_argument("--eval-rows", type=int, default=256)
  parser.add_argument("--plots", default="docs")
  parser.add_argument("--summary-only", action="store_true",
                      help="train nothing; summarise the finished runs under --root")
  parser.add_argument("--tag", default="", help="plot name suffix (default: lr, base, decode steps)")
  args = parser.parse_args()
  os.makedirs(args.root, exist_ok=True)
  base_dir = os.path.join(args.root, "_base")
  if not args.summary_only:
    tiny.prepare_base(make_config(args, "dispo_a0.5", 0), base_dir)

  runs = {}
  for seed in (int(s) for s in args.seeds.split(",")):  # seeds outermost: complete seeds first
    for name in args.methods.split(","):
      workdir = os.path.join(args.root, f"{name}_seed{seed}")
      if args.summary_only:  # summarise the runs that finished, train nothing
        path = os.path.join(workdir, "metrics.jsonl")
        rows = [json.loads(l) for l in open(path)] if os.path.exists(path) else []
        if any(r.get("step") == args.steps and "eval/accuracy" in r for r in rows):
          runs[(name, seed)] = rows
        continue
      for sub in ("base", "tokenizer"):
        if not os.path.exists(os.path.join(workdir, sub)):
          shutil.copytree(os.path.join(base_dir, sub), os.path.join(workdir, sub))
      start = time.perf_counter()
      train.train(make_config(args, name, seed), workdir)
      rows = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
      runs[(name, seed)] = rows
      print(f"{name} seed {seed}: {time.perf_counter() - start:.0f}s", flush=True)

  summary = {}
  for name in args.methods.split(","):
    per_seed = [runs[k] for k in runs if k[0] == name]
    def evals(rows):
      return {r["step"]: r["eval/accuracy"] for r in rows if "eval/accuracy" in r}
    before = [evals(r)[0] for r in per_seed]
    final = [np.mean([v for s, v in evals(r).items() if s >= args.steps // 2]) for r in per_seed]
    last = [evals(r)[args.steps] for r in per_seed]
    reward_first = [np.mean([r["reward_mean"] for r in rows if "reward_mean" in r][:5])
                    for rows in per_seed]
    reward_last = [np.mean([r["reward_mean"] for r in rows if "reward_mean" in r][-5:])
                   for rows in per_seed]
    bins = {}
    for b in ("early", "mid", "late"):
      vals = [r[f"step/distinguishable_{b}"] for rows in per_seed for r in rows
              if r.get(f"step/states_{b}", 0) > 0]
      bins[b] = float(np.mean(vals)) if vals else None
    seconds = [np.mean([r["step_seconds"] for r in rows if "step_seconds" in r][1:])
               for rows in per_seed]
    summary[name] = {"before": before, "last": last, "late_half_mean": final,
                     "reward_first5": reward_first, "reward_last5": reward_last,
                     "distinguishable": bins, "step_seconds": seconds,
                     "reward_minus_control": paired_gain(runs, name, args)}
  with open(os.path.join(args.root, "summary.json"), "w") as f:
    json.dump({"args": vars(args), "summary": summary}, f, indent=2)

  ms = lambda xs: f"{np.mean(xs):.3f} ± {np.std(xs):.3f}"
  print("\n| method | eval before | eval at step %d | eval mean, 2nd half | rollout reward first 5 → "
        "last 5 steps | rollout reward − control, 2nd half | s/step |" % args.steps)
  print("|---|---|---|---|---|---|---|")
  for name, s in summary.items():
    gain = "n/a" if s["reward_minus_control"] is None else ms(s["reward_minus_control"])
    print(f"| {name} | {ms(s['before'])} | {ms(s['last'])} | {ms(s['late_half_mean'])} | "
          f"{ms(s['reward_first5'])} → {ms(s['reward_last5'])} | {gain} | "
          f"{np.mean(s['step_seconds']):.1f} |")
  for name, s in summary.items():
    if name.startswith("dispo"):
      d = s["distinguishable"]
      print(f"{name}: distinguishable branch states early/mid/late = "
            + " / ".join("n/a" if d[b] is None else f"{100 * d[b]:.1f}%" for b in d))

  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4))
  for (name, seed), rows in runs.items():
    steps = [r["step"] for r in rows if "reward_mean" in r]
    rew = np.convolve([r["reward_mean"] for r in rows if "reward_mean" in r], np.ones(5) / 5,
                      mode="valid")
    a.plot(steps[4:], rew, color=COLORS[name], alpha=0.7,
           label=name if seed == int(args.seeds.split(",")[0]) else None)
    ev = sorted((r["step"], r["eval/accuracy"]) for r in rows if "eval/accuracy" in r)
    b.plot(*zip(*ev), color=COLORS[name], marker="o", alpha=0.7,
           label=name if seed == int(args.seeds.split(",")[0]) else None)
  a.set(xlabel="optimizer step", ylabel="rollout reward (5-step mean)", title="training reward")
  b.set(xlabel="optimizer step", ylabel="held-out cell accuracy (greedy)", title="evaluation")
  a.legend()
  b.legend()
  plt.tight_layout()
  os.makedirs(args.plots, exist_ok=True)
  tag = args.tag or f"lr{args.lr:g}_base{args.base_steps}_T{args.decode_steps}"
  path = os.path.join(args.plots, f"sudoku_study_{tag}.png")
  plt.savefig(path, dpi=110)
  print("plot:", path)


if __name__ == "__main__":
  main()
