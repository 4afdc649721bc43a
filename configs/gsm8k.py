"""gsm8k: the paper's LLaDA-8B recipe (d1 diffu-GRPO + DiSPO). `--config=configs/gsm8k.py:tiny` runs on a CPU
(synthetic arithmetic rows with the task's fields and reward; see dispo_jax/tiny.py).

  python -m dispo_jax.train --config=configs/gsm8k.py --workdir=/tmp/gsm8k \\
      --config.model.checkpoint=/path/to/LLaDA-8B-Instruct --config.method=dispo
"""

from configs import common


def get_config(arg: str = ""):
  c = common.base_config()
  c.task = "gsm8k"
  c.num_steps = 7700
  c.rl.num_iterations = 12
  if arg == "tiny":
    c = common.tiny(c)
    c.task = "gsm8k"
  elif arg:
    raise ValueError(f"unknown config variant {arg!r}; use '' or 'tiny'")
  return c
