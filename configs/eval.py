"""d1 evaluation protocol: greedy, timesteps = gen_length / 2, block 32, gen lengths 128 / 256 / 512.

  python -m dispo_jax.evaluate --config=configs/eval.py --workdir=/tmp/eval \\
      --config.checkpoint=/path/to/LLaDA-8B-Instruct
"""

from dispo_jax import recipes


def get_config(arg: str = ""):
  return recipes.eval_config(arg)
