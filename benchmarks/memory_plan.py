"""Per-method memory at the paper's shapes on 8 devices (fsdp 8): one plan_scale compile per row.

  python -m benchmarks.memory_plan                           # every method and the sampler
  python -m benchmarks.memory_plan --methods=dispo --no-sampler

For each method, ``dispo_jax.plan_scale`` compiles one optimizer update of ``configs/sudoku.py``
(LLaDA-8B, LoRA r128, bf16, remat, 96 rows of 200 + 256 tokens in 12 micro-batches); the sampler
row compiles one rollout (generate with DiSPO's branch cache, 96 rows × 456 tokens). Each full
8B compile takes ~15 minutes on two cores. ``--layers=N`` compiles N blocks for a quick look; it
does not extrapolate: XLA:CPU's buffer assignment is not affine in the block count (DiSPO's update
grew by 3.0 GiB per block from 2 to 4 blocks, which would predict 102 GiB at 32 blocks, where a
full compile measured 37 GiB). The numbers are XLA:CPU buffer assignments on fake devices: a
planning estimate, not an accelerator measurement.
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


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--methods", default=",".join(METHODS))
  parser.add_argument("--layers", type=int, default=0, help="0: LLaDA-8B's 32 blocks")
  parser.add_argument("--sampler", action=argparse.BooleanOptionalAction, default=True)
  args = parser.parse_args()
  rows = [(m, *METHODS[m], "update") for m in args.methods.split(",")]
  if args.sampler:
    rows.append(("sampler (dispo rollout)", *METHODS["dispo"], "sampler"))
  print(f"| method | blocks | arguments / device | temporaries / device | peak / device |")
  print("|---|---|---|---|---|")
  for name, config, overrides, part in rows:
    v = measure(config, overrides, args.layers, part)
    print(f"| {name} | {args.layers or 32} | {v['arguments']:.2f} GiB | {v['temporaries']:.2f} GiB "
          f"| {v['peak']:.2f} GiB |", flush=True)


if __name__ == "__main__":
  main()
