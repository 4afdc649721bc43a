"""sudoku: the paper's LLaDA-8B recipe (d1 diffu-GRPO + DiSPO). `--config=configs/sudoku.py:tiny` runs on a CPU.

  python -m dispo_jax.train --config=configs/sudoku.py --workdir=/tmp/sudoku \\
      --config.model.checkpoint=/path/to/LLaDA-8B-Instruct --config.method=dispo

Variants, comma-separated after the colon: tiny (CPU), spg / dispo_spg (SPG's objective with the
DiSPO paper's SPG recipe, App. D.3; add spg_repo for SPG's own repository's run; with tiny only the
objective), 3shot (SPG's few-shot prompts). E.g. `--config=configs/sudoku.py:tiny,dispo_spg`.
"""

from configs import common


def get_config(arg: str = ""):
  c = common.base_config()
  c.task = "sudoku"
  c.num_steps = 3800
  c.rl.num_iterations = 12       # App. J and d1's run.sh (its sbatch file uses 8)
  return common.with_variants(c, arg, spg_steps=4000, spg_repo_steps=2500,
                              spg_eubo_beta=1.0, spg_repo_temperature=0.3,
                              extra={"3shot": three_shot})


def three_shot(c):
  """SPG's Sudoku prompts: three worked examples before the question (checkpoint runs only)."""
  c.data.few_shot = 3
  c.rollout.max_prompt_length = 1500
  return c
