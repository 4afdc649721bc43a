"""Which digit a tiny Sudoku model writes into each blank, by the true digit (a confusion table).

  python experiments/digit_confusion.py --config=configs/sudoku.py:tiny            # the config's base
  python experiments/digit_confusion.py --config=configs/sudoku.py:tiny --model=/tmp/run/export

Decodes the config's held-out puzzles greedily and at the sampler's temperature (the rollout
distribution) and prints, for each true digit of a blank cell, the fraction written as 1-4 (0: no
parsable answer). The tiny base's flawed demonstrator (``data.sft_error``) shows up here: with
``four_as_one`` the base writes 1 where a 4 belongs. ``--model`` is an HF folder with its tokenizer
(a run's ``export/``); without it the config's cached tiny base is used (trained if missing).
"""

from __future__ import annotations

import os
import sys

import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dispo_jax import tiny_base as tiny, train  # noqa: E402
from dispo_jax.evaluate import generate_texts  # noqa: E402
from dispo_jax.model import checkpoint, tokenizer as tok  # noqa: E402
from dispo_jax.sampling import SamplerSettings  # noqa: E402
from dispo_jax.tasks import DataSettings, get_task, sudoku  # noqa: E402

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", "configs/sudoku.py:tiny", "A tiny Sudoku config.")
flags.DEFINE_string("model", "", "HF folder with tokenizer (a run's export/); '' = the tiny base.")
flags.DEFINE_integer("rows", 256, "held-out puzzles decoded")
flags.DEFINE_integer("seed", 0, "sampling seed")


def confusion(texts: list[str], rows: list[dict]) -> np.ndarray:
  """``[4, 5]`` fractions: row d-1 = blanks whose true digit is d; column k = written as k (0: no
  parsable answer)."""
  counts = np.zeros((4, 5))
  for text, row in zip(texts, rows):
    answer = sudoku.parse_answer(text) or "0" * 16
    for cell, given in enumerate(row["puzzle"]):
      if given == "0":
        written = answer[cell] if answer[cell] in "1234" else "0"
        counts[int(row["solution"][cell]) - 1, int(written)] += 1
  return counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)


def main(_):
  c = FLAGS.config
  if FLAGS.model:
    tokenizer = tok.load_tokenizer(FLAGS.model)
    cfg, graphdef, state = checkpoint.load_hf_checkpoint(FLAGS.model)
  else:
    tokenizer, cfg, graphdef, state = tiny.prepare_base(train.base_spec(c))
  task = get_task("sudoku")
  rows = task.tiny.rows(DataSettings(**c.data.to_dict()))[1][:FLAGS.rows]
  prompts = [tok.render_chat(task.tiny.prompt(r)) for r in rows]
  eos = tok.special_ids(tokenizer).eos
  for temperature in (0.0, c.sampler.temperature):
    settings = SamplerSettings(gen_length=c.sampler.gen_length, block_length=c.sampler.block_length,
                               num_timesteps=c.sampler.num_timesteps, temperature=temperature,
                               mask_id=cfg.mask_token_id)
    texts = generate_texts(graphdef, state, tokenizer, prompts, settings,
                           c.rollout.max_prompt_length, eos, jax.random.key(FLAGS.seed))
    table = confusion(texts, rows)
    print(f"\nτ = {temperature}, {c.sampler.num_timesteps} timesteps, {len(rows)} held-out puzzles: "
          "fraction of blanks written as")
    print("| true digit | 1 | 2 | 3 | 4 | unparsed |\n|---|---|---|---|---|---|")
    for d in range(4):
      print(f"| {d + 1} | " + " | ".join(f"{table[d, k]:.2f}" for k in (1, 2, 3, 4, 0)) + " |")


if __name__ == "__main__":
  app.run(main)
