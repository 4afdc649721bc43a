"""math500: the paper's LLaDA-8B recipe (d1 diffu-GRPO + DiSPO). (No tiny variant: the CPU setting
covers Sudoku and Countdown, whose data it generates.)

  python -m dispo_jax.train --config=configs/math500.py --workdir=/tmp/math500 \\
      --config.model.checkpoint=/path/to/LLaDA-8B-Instruct --config.method=dispo
"""

from configs import common


def get_config(arg: str = ""):
  c = common.base_config()
  c.task = "math500"
  c.num_steps = 6600
  c.rl.num_iterations = 12
  if arg:
    raise ValueError(f"unknown config variant {arg!r}; {c.task} has only the 8B recipe")
  return c
