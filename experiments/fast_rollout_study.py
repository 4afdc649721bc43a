"""Does training on fast rollouts hurt learning? Plain rollouts against Fast-dLLM's dual cache +
threshold decoding, with and without the truncated importance weight, on a three-block tiny setting.

  python experiments/fast_rollout_study.py --root=/tmp/fast_rollouts --seeds=0,1,2

Every run is the tiny config's setting with trace (``sudoku:tiny``, ``method=trace``, N 2, 40
rollout batches × μ 4, β 0.01, lr 1.5e-4, the 800-step flawed-demonstrator base, shared by all
runs) with the completion decoded in three blocks of 8 (6 timesteps, 2 per block) so that the
cache matters. Arms differ only in how rollouts are drawn and corrected:

* ``plain``: full forwards at every step (the sampler is the policy the objective scores);
* ``fast_corrected``: ``sampler.kv_cache=dual``, ``sampler.threshold=0.9`` and the per-token
  truncated weight ``min(π_old / π_behaviour, 2)`` (``rl.behaviour.weight=auto`` turns it on);
* ``fast_uncorrected``: the same rollouts with ``rl.behaviour.weight=none``.

Held-out greedy cell accuracy is decoded with full forwards in the same three blocks for every arm.
Prints, per arm, the final held-out accuracy (mean ± SE over seeds), its paired difference to
``plain`` by seed, the mismatch metrics (``behaviour/*``, mean over rollout batches and seeds),
the timesteps and seconds per rollout batch; writes ``{root}/summary.json``. Rerunning skips
finished runs (each resumes from its work folder).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dispo_jax import recipes, train  # noqa: E402
from dispo_jax.run import metrics as metrics_lib  # noqa: E402

# arm -> (kv_cache, threshold, importance weight)
ARMS = {"plain": ("none", None, "auto"),
        "fast_corrected": ("dual", 0.9, "auto"),
        "fast_uncorrected": ("dual", 0.9, "none")}
MISMATCH = ("behaviour/abs_log_ratio_mean", "behaviour/abs_log_ratio_max",
            "behaviour/truncated_frac", "behaviour/kl")


def make_config(args, arm: str, seed: int):
  kv_cache, threshold, weight = ARMS[arm]
  c = recipes.task_config("sudoku", "tiny")
  c.method = "trace"  # the registered setting (the main command's method when it was registered)
  c.seed = seed
  c.sampler.block_length = args.block_length
  c.sampler.kv_cache = kv_cache
  c.sampler.threshold = threshold
  c.rl.behaviour.weight = weight
  c.base.cache_dir = args.base_cache or os.path.join(args.root, "_base_cache")
  c.export_hf = False
  c.checkpoint_every = c.num_steps
  return c


def mean_se(xs) -> tuple[float, float]:
  xs = np.asarray(xs, np.float64)
  return float(xs.mean()), float(xs.std(ddof=1) / np.sqrt(len(xs))) if len(xs) > 1 else 0.0


def per_rollout_mean(rows: list[dict], key: str) -> float:
  """``key`` averaged over rollout batches (the first row of a batch carries its values)."""
  seen = {}
  for r in rows:
    if r.get(key) is not None and "rollout" in r:
      seen.setdefault(int(r["rollout"]), float(r[key]))
  return float(np.mean(list(seen.values()))) if seen else float("nan")


def seconds_per_rollout(rows: list[dict]) -> float:
  """Seconds of a rollout batch (its rollout and μ updates), mean over batches after the first
  (which compiles)."""
  per_batch = {}
  for r in rows:
    if "rollout" in r and "step_seconds" in r:
      per_batch[int(r["rollout"])] = per_batch.get(int(r["rollout"]), 0.0) + r["step_seconds"]
  return float(np.mean([v for k, v in per_batch.items() if k > 0]))


def summarise(runs: dict) -> dict:
  final = {k: [r["eval/accuracy"] for r in rows if "eval/accuracy" in r][-1]
           for k, rows in runs.items()}
  base = {k: [r["eval/accuracy"] for r in rows if "eval/accuracy" in r][0]
          for k, rows in runs.items()}
  summary = {}
  for arm in ARMS:
    seeds = sorted(s for a, s in runs if a == arm)
    if not seeds:
      continue
    entry = {"seeds": seeds, "base": mean_se([base[(arm, s)] for s in seeds]),
             "accuracy": mean_se([final[(arm, s)] for s in seeds])}
    paired = [final[(arm, s)] - final[("plain", s)] for s in seeds if ("plain", s) in final]
    if arm != "plain" and len(paired) > 1:
      m, se = mean_se(paired)
      entry["minus_plain"] = (m, se, m / se if se > 0 else float("inf"))
    for key in MISMATCH + ("reward_mean", "sampler/timesteps_taken"):
      entry[key] = float(np.mean([per_rollout_mean(runs[(arm, s)], key) for s in seeds]))
    entry["seconds_per_rollout"] = float(np.mean([seconds_per_rollout(runs[(arm, s)])
                                                  for s in seeds]))
    summary[arm] = entry
  return summary


def print_table(summary: dict) -> None:
  f = lambda ms: f"{ms[0]:.3f} ± {ms[1]:.3f}"
  print("\nheld-out greedy cell accuracy after 40 rollout batches (mean ± SE over seeds); paired "
        "difference to plain by seed (t); mismatch metrics averaged over rollout batches")
  print("| arm | seeds | base | after RL | − plain (t) | |log π_old − log π_b| mean / max | "
        "truncated | KL | rollout reward | timesteps | s / rollout batch |")
  print("|---|---|---|---|---|---|---|---|---|---|---|")
  for arm, e in summary.items():
    paired = ("—" if "minus_plain" not in e else
              f"{e['minus_plain'][0]:+.3f} ± {e['minus_plain'][1]:.3f} ({e['minus_plain'][2]:.1f})")
    print(f"| {arm} | {len(e['seeds'])} | {f(e['base'])} | {f(e['accuracy'])} | {paired} | "
          f"{e['behaviour/abs_log_ratio_mean']:.3f} / {e['behaviour/abs_log_ratio_max']:.2f} | "
          f"{e['behaviour/truncated_frac']:.4f} | {e['behaviour/kl']:.4f} | "
          f"{e['reward_mean']:.3f} | {e['sampler/timesteps_taken']:.1f} | "
          f"{e['seconds_per_rollout']:.1f} |")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--root", default="/tmp/fast_rollouts")
  parser.add_argument("--seeds", default="0,1,2")
  parser.add_argument("--arms", default=",".join(ARMS))
  parser.add_argument("--block-length", type=int, default=8, help="gen 24 in 24 / this blocks")
  parser.add_argument("--base-cache", default="", help="tiny-base cache (default: ROOT/_base_cache)")
  parser.add_argument("--summary-only", action="store_true", help="summarise finished runs only")
  args = parser.parse_args()
  runs = {}
  for seed in [int(s) for s in args.seeds.split(",")]:
    for arm in args.arms.split(","):
      workdir = os.path.join(args.root, f"{arm}_seed{seed}")
      if not args.summary_only:
        train.train(make_config(args, arm, seed), workdir)
      path = os.path.join(workdir, "metrics.jsonl")
      if os.path.exists(path):
        runs[(arm, seed)] = metrics_lib.read_rows(path)
  summary = summarise(runs)
  with open(os.path.join(args.root, "summary.json"), "w") as f:
    json.dump({f"{a}": e for a, e in summary.items()}, f, indent=1)
  print_table(summary)


if __name__ == "__main__":
  main()
