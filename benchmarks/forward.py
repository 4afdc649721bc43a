"""Tokens/s of the jitted LLaDA forward on the CPU presets.

  python -m benchmarks.forward [--presets tiny,small] [--batch 8] [--length 256]
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp

from benchmarks.common import time_fn
from dispo_jax.model import llada
from dispo_jax.model.config import get_config


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--presets", default="tiny,small")
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--length", type=int, default=256)
  parser.add_argument("--repeats", type=int, default=5)
  args = parser.parse_args()
  print(f"backend={jax.default_backend()} devices={len(jax.devices())} "
        f"batch={args.batch} length={args.length}")
  for name in args.presets.split(","):
    cfg = get_config(name)
    graphdef, state = llada.init_model(cfg)
    tokens = jnp.zeros((args.batch, args.length), jnp.int32)
    fwd = jax.jit(llada.forward, static_argnums=0)
    seconds = time_fn(lambda: fwd(graphdef, state, tokens), repeats=args.repeats)
    n = args.batch * args.length
    print(f"{name:6s} params={llada.count_params(state):>11,d}  forward {seconds * 1e3:8.2f} ms  "
          f"{n / seconds:12,.0f} tokens/s")


if __name__ == "__main__":
  main()
