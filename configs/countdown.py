"""countdown: the paper's LLaDA-8B recipe (d1 diffu-GRPO + DiSPO). `--config=configs/countdown.py:tiny` (or `--config=countdown:tiny`) runs on a CPU.

  python -m dispo_jax.train --config=configs/countdown.py --workdir=/tmp/countdown \\
      --config.model.checkpoint=/path/to/LLaDA-8B-Instruct --config.method=dispo

Variants, comma-separated after the colon: tiny (CPU), spg / dispo_spg (SPG's objective with the
DiSPO paper's SPG recipe, App. D.3; add spg_repo for SPG's own repository's run; with tiny only the
objective). E.g. `--config=configs/countdown.py:tiny,dispo_spg`.
"""

from dispo_jax import recipes


def get_config(arg: str = ""):
  return recipes.task_config("countdown", arg)
