"""The tiny CPU setting: a compact Sudoku format, a project-built tokenizer and an SFT'd base model.

The d1 prompts are hundreds of tokens; on two CPU cores the tiny configurations use a compact format
with the same reward: user content ``"Sudoku <puzzle>"`` through LLaDA's chat template, completion
``"<answer><solution></answer>"``. Puzzles come from the grid-disjoint generator; the d1 test grids
are held out of training. The base model is trained with LLaDA's SFT objective
(:mod:`dispo_jax.pretrain`) and cached in the work folder.
"""

from __future__ import annotations

import os
import time

import numpy as np
from absl import logging

from dispo_jax.model import checkpoint, llada, tokenizer as tok
from dispo_jax.model.config import get_config
from dispo_jax.pretrain import train_sft
from dispo_jax.tasks import data as data_lib, sudoku


TINY_TASKS = ("sudoku", "countdown", "gsm8k", "math500")


def compact_prompt(row) -> str:
  if "puzzle" in row:
    return f"Sudoku {row['puzzle']}"
  if "numbers" in row:
    return f"Countdown {' '.join(map(str, row['numbers']))} target {row['target']}"
  return str(row.get("question") or row["problem"])


def compact_completion(row) -> str:
  if "puzzle" in row:
    return f"<answer>{row['solution']}</answer>"
  if "numbers" in row:
    return f"<answer>{row['solution']}</answer>"
  if "question" in row:  # GSM8K-style: the answer after '####'
    return f"<answer>{row['answer'].split('####')[1].strip()}</answer>"
  return f"<answer>\\boxed{{{row['answer']}}}</answer>"


def arithmetic_rows(task: str, count: int, seed: int) -> list[dict]:
  """Synthetic stand-ins with the real rows' fields and rewards, small enough for a CPU model:
  GSM8K-style word sums (``answer`` ends in ``#### n``) and MATH-style products (``answer``)."""
  rng = np.random.default_rng(seed)
  rows = []
  for _ in range(count):
    a, b = (int(x) for x in rng.integers(2, 50, 2))
    if task == "gsm8k":
      rows.append({"question": f"Ann has {a} pens and buys {b} more. How many pens?",
                   "answer": f"{a} + {b} = {a + b}\n#### {a + b}"})
    else:
      rows.append({"problem": f"Compute ${a} \\times {b}$.", "answer": str(a * b)})
  return rows


def task_rows(config) -> tuple[list[dict], list[dict]]:
  """(train, held-out test) rows of the tiny setting for ``config.task``."""
  if config.task == "sudoku":
    return sudoku_rows(config)
  if config.task == "countdown":
    from dispo_jax.tasks import countdown
    test_keys = {(tuple(sorted(r["numbers"])), r["target"]) for r in data_lib.load_rows("countdown")}
    rows = [r for r in countdown.generate_problems(config.data.num_train + config.data.num_test,
                                                   seed=config.data.seed)
            if (tuple(sorted(r["numbers"])), r["target"]) not in test_keys]
    return rows[config.data.num_test:], rows[:config.data.num_test]
  if config.task in ("gsm8k", "math500"):
    rows = arithmetic_rows(config.task, config.data.num_train + config.data.num_test,
                           config.data.seed)
    return rows[config.data.num_test:], rows[:config.data.num_test]
  raise ValueError(f"task={config.task!r}: the tiny setting implements {TINY_TASKS}")


def sudoku_grids(config) -> tuple[list[str], list[str], list[str]]:
  """(SFT, RL, test) grid lists, pairwise disjoint; d1's test grids are never SFT grids.

  ``data.rl_grid_fraction = 0``: RL prompts come from the SFT grids (RL = SFT grids). ``> 0``: that
  fraction of the held-out grids is set aside for RL prompts and the rest is the test set, so RL
  trains where the base is at its held-out level (4×4 Sudoku has only 288 grids; the base
  memorises its SFT grids).
  """
  d1_grids = {r["solution"] for r in data_lib.load_rows("sudoku")}
  sft, held_out = sudoku.split_grids(config.data.test_fraction, config.data.seed,
                                     exclude_from_train=d1_grids)
  fraction = config.data.rl_grid_fraction
  if not fraction:
    return sft, sft, held_out
  order = np.random.default_rng([config.data.seed, 1]).permutation(len(held_out))
  n_rl = int(round(fraction * len(held_out)))
  rl = sorted(held_out[i] for i in order[:n_rl])
  return sft, rl, sorted(held_out[i] for i in order[n_rl:])


def sudoku_rows(config) -> tuple[list[dict], list[dict]]:
  """(RL train, held-out test) rows: generated puzzles on disjoint grids (:func:`sudoku_grids`)."""
  sft, rl, test_grids = sudoku_grids(config)
  blanks = tuple(config.data.num_blanks)
  if rl is sft:
    train = sudoku.generate_puzzles(sft, config.data.num_train, blanks, seed=config.data.seed)
  else:
    train = sudoku.generate_puzzles(rl, config.data.num_train, blanks, seed=config.data.seed + 2)
  test = sudoku.generate_puzzles(test_grids, config.data.num_test, blanks,
                                 seed=config.data.seed + 1)
  return train, test


def sft_rows(config) -> list[dict]:
  """The rows the base is SFT'd on: Sudoku puzzles on the SFT grids, else the task's train rows."""
  if config.task == "sudoku":
    sft, _, _ = sudoku_grids(config)
    return sudoku.generate_puzzles(sft, config.data.num_train, tuple(config.data.num_blanks),
                                   seed=config.data.seed)
  return task_rows(config)[0]


def build_tokenizer(folder: str, rows: list[dict]):
  if os.path.exists(os.path.join(folder, "tokenizer.json")):
    return tok.load_tokenizer(folder)
  corpus = [tok.render_chat(compact_prompt(r)) + compact_completion(r) for r in rows[:2000]]
  tok.build_bpe_tokenizer(corpus, vocab_size=300, folder=folder, individual_digits=True)
  return tok.load_tokenizer(folder)


def encode_pairs(tokenizer, rows: list[dict], prompt_length: int, gen_length: int):
  """Left-padded prompts and EOS-padded completions as int32 arrays."""
  ids = tok.special_ids(tokenizer)
  prompts, lengths = tok.encode_prompts(tokenizer, [tok.render_chat(compact_prompt(r))
                                                    for r in rows], prompt_length)
  completions = np.full((len(rows), gen_length), ids.eos, np.int32)
  for i, r in enumerate(rows):
    c = tokenizer(compact_completion(r), add_special_tokens=False)["input_ids"][:gen_length - 1]
    completions[i, :len(c)] = c
  return prompts, lengths, completions


def prepare_base(config, workdir: str):
  """Tokenizer and base model for the tiny setting, trained once and reused from ``workdir``."""
  train_rows = sft_rows(config)
  tokenizer = build_tokenizer(os.path.join(workdir, "tokenizer"), train_rows)
  base_dir = os.path.join(workdir, "base")
  if os.path.exists(os.path.join(base_dir, "config.json")):
    cfg, graphdef, state = checkpoint.load_hf_checkpoint(base_dir)
    return tokenizer, cfg, graphdef, state
  ids = tok.special_ids(tokenizer)
  cfg = get_config(config.model.preset, vocab_size=len(tokenizer), bos_token_id=ids.bos,
                   eos_token_id=ids.eos, pad_token_id=ids.pad, mask_token_id=ids.mask,
                   **dict(config.model.overrides))
  graphdef, state = llada.init_model(cfg, seed=config.data.seed)
  prompts, lengths, completions = encode_pairs(tokenizer, train_rows,
                                               config.rollout.max_prompt_length,
                                               config.rollout.gen_length)
  start = time.perf_counter()
  log_every = max(1, config.base.steps // 10)
  state = train_sft(graphdef, state, prompts, lengths, completions, steps=config.base.steps,
                    batch_size=config.base.batch_size, learning_rate=config.base.learning_rate,
                    mask_id=cfg.mask_token_id, seed=config.data.seed,
                    callback=lambda i, loss: (i % log_every == 0) and logging.info(
                        "base SFT step %d loss %.4f", i, loss))
  logging.info("base SFT: %d steps in %.1fs", config.base.steps, time.perf_counter() - start)
  checkpoint.export_hf_checkpoint(cfg, state, base_dir, dtype="float32")
  return tokenizer, cfg, graphdef, state
