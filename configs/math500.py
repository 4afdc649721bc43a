"""math500: the paper's LLaDA-8B recipe (d1 diffu-GRPO + DiSPO). `--config=configs/math500.py:tiny` (or `--config=math500:tiny`) runs on a CPU
(synthetic arithmetic rows with the task's fields and reward; see dispo_jax/tasks/tiny.py).

  python -m dispo_jax.train --config=configs/math500.py --workdir=/tmp/math500 \\
      --config.model.checkpoint=/path/to/LLaDA-8B-Instruct --config.method=dispo

Variants, comma-separated after the colon: tiny (CPU), spg / dispo_spg (SPG's objective with the
DiSPO paper's SPG recipe, App. D.3; add spg_repo for SPG's own repository's run; with tiny only the
objective). E.g. `--config=configs/math500.py:tiny,dispo_spg`.
"""

from dispo_jax import recipes


def get_config(arg: str = ""):
  return recipes.task_config("math500", arg)
