"""gsm8k: the paper's LLaDA-8B recipe (d1 diffu-GRPO + DiSPO). (No tiny variant: the CPU setting
covers Sudoku and Countdown, whose data it generates.)

  python -m dispo_jax.train --config=configs/gsm8k.py --workdir=/tmp/gsm8k \\
      --config.model.checkpoint=/path/to/LLaDA-8B-Instruct --config.method=dispo
"""

from configs import common


def get_config(arg: str = ""):
  c = common.base_config()
  c.task = "gsm8k"
  c.num_steps = 7700
  c.rl.num_iterations = 12
  if arg:
    raise ValueError(f"unknown config variant {arg!r}; {c.task} has only the 8B recipe")
  return c
