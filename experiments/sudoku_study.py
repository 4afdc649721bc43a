"""Small-scale study on tiny Sudoku: diffu-GRPO, DiSPO, trace, DiSPO + trace and the shuffled-reward
control at matched rollouts and optimizer updates, several seeds.

  python experiments/sudoku_study.py --root=/tmp/study --seeds=0,1,2,3,4 --rollouts=30

One SFT'd base (``configs/sudoku.py:tiny`` with ``--base-steps``) is shared by every run; runs
differ only in method and RL seed. Runs of one seed see the same prompts at every rollout batch.
The testbed: ``--rl-grid-fraction`` of the held-out grids is set aside for RL prompts (the base
memorises its SFT grids), evaluation uses the remaining grids, and rollouts and evaluation decode
with ``--timesteps`` timesteps. ``--rollouts`` counts rollout batches; each gets μ
optimizer updates (``num_steps = rollouts × μ``). Reports, per method, the held-out greedy metric
(cell accuracy; puzzles solved with ``--reward=solved``) averaged over the last ``--last-evals``
evaluation points (mean ± standard error over seeds), its gain over the base and its difference
from the control, diffu-GRPO and trace (paired by seed, with t), the rollout reward,
distinguishable branch states per timestep bin (the paper's Table 7) and seconds per rollout
batch. Writes ``{root}/summary.json`` and a PNG under ``--plots`` (the rollout reward, and the
held-out metric against rollout batches and against training seconds); rerunning skips
finished runs (each resumes from its work folder).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from experiments import tiny_data_flags  # noqa: E402
from dispo_jax import recipes, train  # noqa: E402
from dispo_jax.rl import objectives  # noqa: E402

# run name -> (config variant, method, α_state, shuffled-reward control, Z fillings per branch state)
METHODS = {"diffu_grpo": ("tiny", "diffu_grpo", 0.0, False, 2),
           "dispo": ("tiny", "dispo", 0.5, False, 2),
           "dispo_z4": ("tiny", "dispo", 0.5, False, 4),
           "trace": ("tiny", "trace", 0.0, False, 2),
           "dispo_trace": ("tiny", "dispo_trace", 0.5, False, 2),
           "control": ("tiny", "diffu_grpo", 0.0, True, 2),
           "spg": ("tiny,spg", "spg", 0.0, False, 2),
           "dispo_spg": ("tiny,dispo_spg", "dispo_spg", 0.5, False, 2)}
COLORS = {"diffu_grpo": "tab:gray", "dispo": "tab:blue", "trace": "tab:orange",
          "dispo_z4": "tab:cyan", "dispo_trace": "tab:red", "control": "black", "spg": "tab:green",
          "dispo_spg": "tab:purple"}


# Where credit comes from, per rollout batch: groups whose K rewards tie, tokens the terminal term
# credits, reward-distinguishable branch states, tokens the state term credits.
CREDIT_KEYS = ("group_zero_adv_frac", "base/credited_tokens", "state/distinguishable_frac",
               "state/credited_tokens")


def make_config(args, name: str, seed: int):
  variant, method, alpha, shuffled, branches = METHODS[name]
  c = recipes.task_config(args.task, variant)
  c.method, c.rl.alpha_state, c.seed, c.shuffle_rewards = method, alpha, seed, shuffled
  mu = args.mu
  c.num_steps = args.rollouts * mu
  c.optim.learning_rate = args.lr
  c.base.steps = args.base_steps
  c.sampler.num_timesteps = args.timesteps
  c.sampler.gen_length = args.gen_length or c.sampler.gen_length
  c.sampler.block_length = args.block_length or c.sampler.gen_length
  c.reward = args.reward
  c.data.seed = args.data_seed
  c.rollout.num_branches = branches
  c.rl.trace.segments = args.segments or args.timesteps
  if args.temperature is not None:
    c.sampler.temperature = args.temperature
  c.rollout.group_size = args.group
  c.rollout.prompts_per_batch = args.prompts
  c.data.rl_grid_fraction = 0.0 if args.rl_on_test_grids else args.rl_grid_fraction
  c.data.rl_on_test_grids = args.rl_on_test_grids
  c.data.num_test_grids = args.test_grids
  tiny_data_flags.apply(c, args)
  c.rl.num_iterations = args.mu
  c.rollout.terminal_advantage = c.rollout.branch_advantage = args.advantage
  if objectives.parse_method(method)[0] != "spg":  # SPG's base term has no KL: its variant's β 0 stays
    c.rl.beta = args.beta
  c.base.cache_dir = args.base_cache or os.path.join(args.root, "_base_cache")  # one base for all runs
  c.eval_every = args.eval_every * mu
  c.eval_rows = args.eval_rows
  c.checkpoint_every = max(c.num_steps, mu)
  c.export_hf = False
  return c


def per_rollout(rows: list[dict], key: str) -> dict[int, float]:
  """``key`` of each rollout batch (the first row of the batch carries the rollout's values)."""
  out = {}
  for r in rows:
    if key in r and "rollout" in r:
      out.setdefault(int(r["rollout"]), float(r[key]))
  return out


def evals(rows: list[dict], mu: int) -> dict[int, float]:
  """Held-out accuracy by rollout batches done (step 0: the base)."""
  return {int(r["step"]) // mu: float(r["eval/accuracy"]) for r in rows if "eval/accuracy" in r}


def seconds_at_evals(rows: list[dict], mu: int) -> dict[int, float]:
  """Training seconds (rollouts and updates, evaluation excluded) before each evaluation, by
  rollout batches done."""
  updates = [(int(r["step"]), float(r["step_seconds"])) for r in rows if "step_seconds" in r]
  return {done: sum(sec for step, sec in updates if step < done * mu) for done in evals(rows, mu)}


def metric_name(args) -> str:
  """What the runs' ``eval/accuracy`` is: the task's held-out metric under ``--reward``."""
  if args.task == "sudoku":
    return "puzzles solved" if args.reward == "solved" else "cell accuracy"
  return "problems solved"


def mean_se(xs) -> tuple[float, float]:
  xs = np.asarray(xs, np.float64)
  return float(xs.mean()), float(xs.std(ddof=1) / np.sqrt(len(xs))) if len(xs) > 1 else 0.0


def summarise(runs: dict, args, mu: int) -> dict:
  seeds = sorted({s for _, s in runs})
  final = {}  # (name, seed) -> mean over the last evaluation points
  for (name, seed), rows in runs.items():
    points = sorted(evals(rows, mu).items())
    final[(name, seed)] = float(np.mean([v for _, v in points[-args.last_evals:]]))
  summary = {}
  for name in args.methods.split(","):
    have = [s for s in seeds if (name, s) in runs]
    if not have:
      continue
    base = [evals(runs[(name, s)], mu)[0] for s in have]
    acc = [final[(name, s)] for s in have]
    rewards = [per_rollout(runs[(name, s)], "reward_mean") for s in have]
    half = args.rollouts // 2
    entry = {"seeds": have, "base": mean_se(base), "accuracy": mean_se(acc),
             "gain_over_base": mean_se(np.subtract(acc, base)),
             "reward_first5": mean_se([np.mean([r[i] for i in sorted(r)[:5]]) for r in rewards]),
             "reward_2nd_half": mean_se([np.mean([v for i, v in r.items() if i >= half])
                                         for r in rewards]),
             "seconds_per_rollout": float(np.mean([
                 np.sum([r["step_seconds"] for r in runs[(name, s)] if "step_seconds" in r][mu:])
                 / max(args.rollouts - 1, 1) for s in have]))}
    for other in ("control", "diffu_grpo", "trace"):
      paired = [final[(name, s)] - final[(other, s)] for s in have if (other, s) in final]
      if other != name and len(paired) > 1:
        m, se = mean_se(paired)
        entry[f"minus_{other}"] = (m, se, m / se if se > 0 else float("inf"))
    entry["credit"] = {key: float(np.mean([np.mean(list(per_rollout(runs[(name, s)], key).values())
                                                   or [np.nan]) for s in have]))
                       for key in CREDIT_KEYS}
    bins = {}
    for b in ("early", "mid", "late"):
      vals = [r[f"state/distinguishable_{b}"] for s in have for r in runs[(name, s)]
              if r.get(f"state/states_{b}", 0) > 0]
      bins[b] = float(np.mean(vals)) if vals else None
    entry["distinguishable"] = bins
    summary[name] = entry
  return summary


def print_table(summary: dict, args) -> None:
  f = lambda ms: f"{ms[0]:.3f} ± {ms[1]:.3f}"
  print(f"\nheld-out {metric_name(args)} (greedy), mean of the last {args.last_evals} evaluations, "
        f"mean ± SE over seeds; paired differences by seed (t = mean / SE)")
  print("| method | seeds | base | after RL | gain over base | − control (t) | − diffu-GRPO (t) | "
        "− trace (t) | rollout reward first 5 → 2nd half | s / rollout batch |")
  print("|---|---|---|---|---|---|---|---|---|---|")
  for name, e in summary.items():
    paired = lambda k: "—" if k not in e else f"{e[k][0]:+.3f} ± {e[k][1]:.3f} ({e[k][2]:.1f})"
    print(f"| {name} | {len(e['seeds'])} | {f(e['base'])} | {f(e['accuracy'])} | "
          f"{e['gain_over_base'][0]:+.3f} ± {e['gain_over_base'][1]:.3f} | "
          f"{paired('minus_control')} | {paired('minus_diffu_grpo')} | {paired('minus_trace')} | "
          f"{f(e['reward_first5'])} → {f(e['reward_2nd_half'])} | "
          f"{e['seconds_per_rollout']:.1f} |")
  print("\ncredit per rollout batch (means over batches and seeds)")
  print("| method | groups tied | tokens credited, terminal term | branch states distinguishable | "
        "tokens credited, state term |")
  print("|---|---|---|---|---|")
  for name, e in summary.items():
    cr = e["credit"]
    print(f"| {name} | {100 * cr['group_zero_adv_frac']:.1f}% | {cr['base/credited_tokens']:.0f} | "
          f"{100 * cr['state/distinguishable_frac']:.1f}% | {cr['state/credited_tokens']:.0f} |")
  for name, e in summary.items():
    d = e["distinguishable"]
    if any(v is not None for v in d.values()):
      print(f"{name}: distinguishable branch states early / mid / late = "
            + " / ".join("n/a" if d[b] is None else f"{100 * d[b]:.1f}%" for b in d))


def plot(runs: dict, args, mu: int) -> str:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, (a, b, c) = plt.subplots(1, 3, figsize=(17, 4))
  first_seed = min(s for _, s in runs)
  for (name, seed), rows in sorted(runs.items()):
    reward = per_rollout(rows, "reward_mean")
    xs = sorted(reward)
    width = min(5, len(xs))
    smooth = np.convolve([reward[i] for i in xs], np.ones(width) / width, mode="valid")
    label = name if seed == first_seed else None
    a.plot(xs[width - 1:], smooth, color=COLORS[name], alpha=0.6, label=label)
    ev = sorted(evals(rows, mu).items())
    b.plot(*zip(*ev), color=COLORS[name], marker="o", alpha=0.6, label=label)
    seconds = seconds_at_evals(rows, mu)
    c.plot([seconds[i] for i, _ in ev], [v for _, v in ev], color=COLORS[name], marker="o",
           alpha=0.6, label=label)
  metric = f"held-out {metric_name(args)} (greedy)"
  a.set(xlabel="rollout batch", ylabel="rollout reward (5-batch mean)", title="training reward")
  b.set(xlabel="rollout batch", ylabel=metric, title="evaluation")
  c.set(xlabel="training seconds (evaluation excluded)", ylabel=metric,
        title="evaluation against wall clock")
  for axis in (a, b, c):
    axis.legend()
  plt.tight_layout()
  os.makedirs(args.plots, exist_ok=True)
  tag = args.tag or f"lr{args.lr:g}_base{args.base_steps}_T{args.timesteps}"
  path = os.path.join(args.plots, f"sudoku_study_{tag}.png")
  plt.savefig(path, dpi=110)
  return path


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--root", default="/tmp/sudoku_study")
  parser.add_argument("--seeds", default="0,1,2,3,4")
  parser.add_argument("--methods", default="diffu_grpo,dispo,trace,dispo_trace,control")
  parser.add_argument("--task", default="sudoku", help="tiny task: sudoku | countdown")
  parser.add_argument("--rollouts", type=int, default=30, help="rollout batches per run")
  parser.add_argument("--reward", default="default", help="config.reward (sudoku: default | solved)")
  parser.add_argument("--gen-length", type=int, default=0, help="completion tokens (0: the config's)")
  parser.add_argument("--block-length", type=int, default=0, help="semi-AR block (0: one block)")
  parser.add_argument("--data-seed", type=int, default=0,
                      help="data.seed: the grid split and puzzles (probes use another replicate)")
  parser.add_argument("--lr", type=float, default=1e-4)
  parser.add_argument("--base-steps", type=int, default=1500)
  parser.add_argument("--timesteps", "--decode-steps", type=int, default=3)
  parser.add_argument("--rl-grid-fraction", type=float, default=0.5)
  parser.add_argument("--rl-on-test-grids", action="store_true",
                      help="RL puzzles on the test grids (none a test puzzle); overrides the fraction")
  parser.add_argument("--test-grids", type=int, default=0, help="keep this many test grids (0: all)")
  tiny_data_flags.add(parser)
  parser.add_argument("--advantage", default="mean",
                      help="terminal and branch advantage (mean: d1's R - mean; zscore: GRPO's)")
  parser.add_argument("--beta", type=float, default=0.04, help="KL weight (SPG methods keep 0)")
  parser.add_argument("--segments", type=int, default=0,
                      help="trace segments N (0: one per timestep, exact)")
  parser.add_argument("--temperature", type=float, default=None,
                      help="rollout sampling temperature (default: the config's)")
  parser.add_argument("--mu", type=int, default=4, help="optimizer updates per rollout batch")
  parser.add_argument("--group", type=int, default=8)
  parser.add_argument("--prompts", type=int, default=8)
  parser.add_argument("--eval-every", type=int, default=10, help="in rollout batches")
  parser.add_argument("--eval-rows", type=int, default=256)
  parser.add_argument("--last-evals", type=int, default=2)
  parser.add_argument("--base-cache", default="", help="tiny-base cache folder (default: ROOT/_base_cache)")
  parser.add_argument("--plots", default="docs")
  parser.add_argument("--summary-only", action="store_true",
                      help="train nothing; summarise the finished runs under --root")
  parser.add_argument("--tag", default="", help="plot name suffix (default: lr, base, timesteps)")
  args = parser.parse_args()
  os.makedirs(args.root, exist_ok=True)
  first = args.methods.split(",")[0]
  mu = make_config(args, first, 0).rl.num_iterations

  runs = {}
  for seed in (int(s) for s in args.seeds.split(",")):  # seeds outermost: complete seeds first
    for name in args.methods.split(","):
      workdir = os.path.join(args.root, f"{name}_seed{seed}")
      path = os.path.join(workdir, "metrics.jsonl")
      if not args.summary_only:
        start = time.perf_counter()
        train.train(make_config(args, name, seed), workdir)
        print(f"{name} seed {seed}: {time.perf_counter() - start:.0f}s", flush=True)
      rows = [json.loads(line) for line in open(path)] if os.path.exists(path) else []
      if args.rollouts in evals(rows, mu):  # finished runs only
        runs[(name, seed)] = rows

  summary = summarise(runs, args, mu)
  with open(os.path.join(args.root, "summary.json"), "w") as f:
    json.dump({"args": vars(args), "summary": summary}, f, indent=2)
  print_table(summary, args)
  print("plot:", plot(runs, args, mu))


if __name__ == "__main__":
  main()
