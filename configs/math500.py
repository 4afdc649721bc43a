"""math500: the paper's LLaDA-8B recipe (d1 diffu-GRPO + DiSPO). `--config=configs/math500.py:tiny` runs on a CPU
(synthetic arithmetic rows with the task's fields and reward; see dispo_jax/tiny.py).

  python -m dispo_jax.train --config=configs/math500.py --workdir=/tmp/math500 \\
      --config.model.checkpoint=/path/to/LLaDA-8B-Instruct --config.method=dispo
"""

from configs import common


def get_config(arg: str = ""):
  c = common.base_config()
  c.task = "math500"
  c.num_steps = 6600
  c.rl.num_iterations = 12
  if arg == "tiny":
    c = common.tiny(c)
    c.task = "math500"
  elif arg:
    raise ValueError(f"unknown config variant {arg!r}; use '' or 'tiny'")
  return c
