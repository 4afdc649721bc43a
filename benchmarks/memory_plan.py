"""Per-method memory at the paper's shapes on 8 devices (fsdp 8), from plan_scale compiles.

  python -m benchmarks.memory_plan                           # every method, 2 and 4 blocks -> 32
  python -m benchmarks.memory_plan --methods=dispo --layers=32   # one full-depth compile

For each method, ``dispo_jax.plan_scale`` compiles one optimizer update of ``configs/sudoku.py``
(LLaDA-8B, LoRA r128, bf16, remat, 96 rows of 200 + 256 tokens in 12 micro-batches) under the run's
mesh; the sampler row compiles one rollout (generate with DiSPO's branch cache, 96 rows × 456
tokens). A full 8B compile takes ~15 minutes on two cores, so by default each row compiles 2 and 4
blocks and extrapolates linearly to 32: ``v(32) = v(2) + 30 · (v(4) − v(2)) / 2``. Checked once
against a full compile: DiSPO's update, 101.96 GiB extrapolated, 101.90 GiB compiled at 32 blocks.
The numbers are XLA:CPU buffer assignments on fake devices: a planning estimate, not an
accelerator measurement.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys

METHODS = {  # method -> config file[:variants] and overrides
    "diffu_grpo": ("configs/sudoku.py", ["--config.method=diffu_grpo"]),
    "dispo": ("configs/sudoku.py", ["--config.method=dispo"]),
    "trace": ("configs/sudoku.py", ["--config.method=trace", "--config.rl.trace.segments=16"]),
    "dispo_trace": ("configs/sudoku.py", ["--config.method=dispo_trace",
                                          "--config.rl.trace.segments=16"]),
    "spg": ("configs/sudoku.py:spg", []),
    "dispo_spg": ("configs/sudoku.py:dispo_spg", []),
}
FIELDS = ("arguments", "temporaries", "peak")


def measure(config: str, overrides: list[str], layers: int, part: str) -> dict[str, float]:
  cmd = [sys.executable, "-m", "dispo_jax.plan_scale", f"--config={config}", *overrides,
         "--config.mesh.fsdp=8", "--devices=8", f"--layers={layers}", f"--part={part}"]
  out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ,
                                                                 "JAX_PLATFORMS": "cpu"})
  if out.returncode:
    raise SystemExit(f"{' '.join(cmd)} failed:\n{out.stderr[-2000:]}")
  text = out.stdout
  grab = lambda pattern: float(re.search(pattern, text).group(1))
  return {"arguments": grab(r"arguments ([\d.]+) GiB"),
          "temporaries": grab(r"temporaries ([\d.]+) GiB"),
          "peak": grab(r"peak estimate .*: ([\d.]+) GiB")}


def extrapolate(a: int, va: dict, b: int, vb: dict, target: int = 32) -> dict[str, float]:
  return {k: va[k] + (target - a) * (vb[k] - va[k]) / (b - a) for k in FIELDS}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--methods", default=",".join(METHODS))
  parser.add_argument("--layers", default="2,4",
                      help="two block counts to extrapolate from, or one (32: a full compile)")
  parser.add_argument("--sampler", action=argparse.BooleanOptionalAction, default=True)
  args = parser.parse_args()
  layers = [int(x) for x in args.layers.split(",")]
  rows = [(m, *METHODS[m], "update") for m in args.methods.split(",")]
  if args.sampler:
    rows.append(("sampler (dispo rollout)", *METHODS["dispo"], "sampler"))
  how = ("compiled at 32 blocks" if len(layers) == 1 else
         f"extrapolated to 32 blocks from {layers[0]} and {layers[1]}")
  print(f"per device, {how}:")
  print("| method | arguments | temporaries | peak |")
  print("|---|---|---|---|")
  for name, config, overrides, part in rows:
    values = [measure(config, overrides, n, part) for n in layers]
    v = values[0] if len(layers) == 1 else extrapolate(layers[0], values[0], layers[1], values[1])
    print(f"| {name} | {v['arguments']:.2f} GiB | {v['temporaries']:.2f} GiB | "
          f"{v['peak']:.2f} GiB |", flush=True)


if __name__ == "__main__":
  main()
