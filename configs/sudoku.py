"""sudoku: the paper's LLaDA-8B recipe (d1 diffu-GRPO + DiSPO). `--config=configs/sudoku.py:tiny` runs on a CPU.

  python -m dispo_jax.train --config=configs/sudoku.py --workdir=/tmp/sudoku \\
      --config.model.checkpoint=/path/to/LLaDA-8B-Instruct --config.method=dispo
"""

from configs import common


def get_config(arg: str = ""):
  c = common.base_config()
  c.task = "sudoku"
  c.num_steps = 3800
  c.rl.num_iterations = 8
  if arg == "tiny":
    c = common.tiny(c)
    c.task = "sudoku"
  elif arg:
    raise ValueError(f"unknown config variant {arg!r}; use '' or 'tiny'")
  return c
