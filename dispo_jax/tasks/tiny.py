"""Every task's tiny setting (:class:`dispo_jax.tasks.base.TinySetting`): compact formats and rows.

Sudoku puzzles come from the grid-disjoint generator with d1's test grids never SFT'd on;
Countdown problems are generated with d1's test problems removed; GSM8K and MATH get synthetic
stand-ins with the real rows' fields and rewards (word sums, products), small enough for a CPU
model. :func:`dispo_jax.tasks.get_task` attaches these to each task.
"""

from __future__ import annotations

import numpy as np

from dispo_jax.tasks import countdown, data as data_lib, sudoku
from dispo_jax.tasks.base import DataSettings, Example, TinySetting


def _answer(text) -> str:
  return f"<answer>{text}</answer>"


# ----------------------------------------------------------------------------------------------
# Sudoku
# ----------------------------------------------------------------------------------------------


def sudoku_grids(data: DataSettings) -> tuple[list[str], list[str], list[str]]:
  """(SFT, RL, test) grid lists, pairwise disjoint; d1's test grids are never SFT grids.

  ``rl_grid_fraction = 0``: RL prompts come from the SFT grids (RL = SFT grids). ``> 0``: that
  fraction of the held-out grids is set aside for RL prompts and the rest is the test set, so RL
  trains where the base is at its held-out level (4×4 Sudoku has only 288 grids; the base
  memorises its SFT grids). ``num_test_grids > 0`` then keeps a random subset of the test grids.
  """
  d1_grids = {r["solution"] for r in data_lib.load_rows("sudoku")}
  sft, held_out = sudoku.split_grids(data.test_fraction, data.seed, exclude_from_train=d1_grids)
  if data.rl_grid_fraction:
    order = np.random.default_rng([data.seed, 1]).permutation(len(held_out))
    n_rl = int(round(data.rl_grid_fraction * len(held_out)))
    rl, test = sorted(held_out[i] for i in order[:n_rl]), sorted(held_out[i] for i in order[n_rl:])
  else:
    rl, test = sft, held_out
  if data.num_test_grids:
    if data.num_test_grids > len(test):
      raise ValueError(f"config.data.num_test_grids={data.num_test_grids}: only {len(test)} test "
                       "grids")
    order = np.random.default_rng([data.seed, 2]).permutation(len(test))
    test = sorted(test[i] for i in order[:data.num_test_grids])
  return sft, rl, test


def _puzzles(data: DataSettings, grids: list[str], count: int, seed_offset: int) -> list[dict]:
  return sudoku.generate_puzzles(grids, count, data.num_blanks, seed=data.seed + seed_offset,
                                 unique=data.unique_solutions)


def sudoku_rows(data: DataSettings) -> tuple[list[dict], list[dict]]:
  """(RL train, held-out test) puzzles: grids as :func:`sudoku_grids` splits them.

  With ``data.rl_on_test_grids`` the RL puzzles share the test grids (never SFT'd) but no RL
  puzzle is a test puzzle.
  """
  sft, rl, test_grids = sudoku_grids(data)
  test = _puzzles(data, test_grids, data.num_test, 1)
  if data.rl_on_test_grids:
    test_puzzles = {r["puzzle"] for r in test}
    pool = _puzzles(data, test_grids, data.num_train + len(test), 3)
    return [r for r in pool if r["puzzle"] not in test_puzzles][:data.num_train], test
  return (_puzzles(data, sft, data.num_train, 0) if rl is sft
          else _puzzles(data, rl, data.num_train, 2)), test


def sudoku_sft_rows(data: DataSettings) -> list[dict]:
  """Puzzles on the SFT grids, their answers mis-written as ``data.sft_error`` says."""
  rows = _puzzles(data, sudoku_grids(data)[0], data.num_train, 0)
  if not data.sft_error_rate:
    return rows
  rng = np.random.default_rng([data.seed, 4])
  return [dict(r, solution=with_demonstrator_errors(r["puzzle"], r["solution"], data.sft_error,
                                                    data.sft_error_rate, rng)) for r in rows]


def with_demonstrator_errors(puzzle: str, solution: str, kind: str, rate: float,
                             rng: np.random.Generator) -> str:
  """``solution`` as a flawed demonstrator writes it; givens are always copied right.

  ``kind``: ``"next_digit"``: each blank, with probability ``rate``, as the next digit (4 → 1);
  ``"next_digit_per_answer"``: every blank as the next digit, with probability ``rate`` per
  answer; ``"four_as_one"``: each blank whose digit is 4, with probability ``rate``, as 1.
  """
  if kind == "next_digit_per_answer":
    wrong = np.full(len(puzzle), rng.random() < rate)
  else:
    wrong = rng.random(len(puzzle)) < rate
  if kind == "four_as_one":
    mistake = lambda digit: "1" if digit == "4" else digit  # noqa: E731
  else:
    mistake = lambda digit: str(int(digit) % 4 + 1)  # noqa: E731
  return "".join(mistake(digit) if given == "0" and flip else digit
                 for given, digit, flip in zip(puzzle, solution, wrong))


SUDOKU = TinySetting(prompt=lambda row: f"Sudoku {row['puzzle']}",
                     completion=lambda row: _answer(row["solution"]),
                     rows=sudoku_rows, sft_rows=sudoku_sft_rows)


# ----------------------------------------------------------------------------------------------
# Countdown, GSM8K, MATH
# ----------------------------------------------------------------------------------------------


def _countdown_key(row: dict) -> tuple:
  return tuple(sorted(row["numbers"])), row["target"]


def countdown_rows(data: DataSettings) -> tuple[list[dict], list[dict]]:
  """Generated problems without d1's test problems: (train, test), no test problem in train."""
  d1_keys = {_countdown_key(r) for r in data_lib.load_rows("countdown")}
  low, high = data.countdown_numbers
  rows = [r for r in countdown.generate_problems(data.num_train + data.num_test, seed=data.seed,
                                                 low=low, high=high)
          if _countdown_key(r) not in d1_keys]
  test = rows[:data.num_test]
  held_out = {_countdown_key(r) for r in test}
  return [r for r in rows[data.num_test:] if _countdown_key(r) not in held_out], test


def _countdown_prompt(row: Example) -> str:
  return f"Countdown {' '.join(map(str, row['numbers']))} target {row['target']}"


COUNTDOWN = TinySetting(prompt=_countdown_prompt, completion=lambda row: _answer(row["solution"]),
                        rows=countdown_rows, rows_revision=1)  # 1: no held-out problem in train


def arithmetic_rows(task: str, count: int, seed: int) -> list[dict]:
  """GSM8K-style word sums (``answer`` ends in ``#### n``) or MATH-style products (``answer``)."""
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


def _arithmetic_split(task: str):
  def rows(data: DataSettings) -> tuple[list[dict], list[dict]]:
    generated = arithmetic_rows(task, data.num_train + data.num_test, data.seed)
    return generated[data.num_test:], generated[:data.num_test]
  return rows


GSM8K = TinySetting(prompt=lambda row: str(row["question"]),
                    completion=lambda row: _answer(row["answer"].split("####")[1].strip()),
                    rows=_arithmetic_split("gsm8k"))
MATH500 = TinySetting(prompt=lambda row: str(row["problem"]),
                      completion=lambda row: _answer(f"\\boxed{{{row['answer']}}}"),
                      rows=_arithmetic_split("math500"))
TINY_SETTINGS = {"sudoku": SUDOKU, "countdown": COUNTDOWN, "gsm8k": GSM8K, "math500": MATH500}
