"""d1 evaluation protocol: greedy, steps = gen_length / 2, block 32, gen lengths 128 / 256 / 512.

  python -m dispo_jax.evaluate --config=configs/eval.py --workdir=/tmp/eval \\
      --config.checkpoint=/path/to/LLaDA-8B-Instruct
"""

import ml_collections


def get_config(arg: str = ""):
  c = ml_collections.ConfigDict()
  c.checkpoint = ""          # HF LLaDA folder (config.json + safetensors) or an exported run
  c.tokenizer = ""           # default: the checkpoint folder
  c.param_dtype = ""         # "" = the checkpoint's torch_dtype
  c.compute_dtype = ""
  c.tasks = "sudoku,countdown,gsm8k,math500"
  c.data_files = ml_collections.ConfigDict({"gsm8k": "", "math500": ""})  # local HF-format files
  c.gen_lengths = (128, 256, 512)
  c.block_length = 32
  c.batch_size = 8
  c.max_prompt_length = 512
  c.eval_size = -1           # -1: d1's sizes (Sudoku 256, Countdown 256, GSM8K 1319, MATH500 500)
  c.limit = 0                # >0: only the first rows of the subset (smoke tests)
  c.seed = 42                # d1's subsampling seed
  c.d1_compat = False
  c.mask_padding = True
  c.sudoku_few_shot = 0      # SPG's Sudoku protocol: 3 worked examples before the question
  c.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})  # as training's
  if arg == "tiny":
    c.tasks = "sudoku"
    c.gen_lengths = (32,)
    c.block_length = 16
    c.batch_size = 4
    c.max_prompt_length = 64
    c.limit = 8
  return c
