"""4×4 Sudoku (d1): prompts, the cell-accuracy reward, a unique-solution generator and grid split.

Grids are 16-character row-major strings of digits 1–4; puzzles use '0' for an empty cell.
Reward = fraction of the puzzle's empty cells whose digit in the last ``<answer>`` block (digits
only, right-padded with '0' or truncated to 16) equals the solution. The evaluation metric is the same
cell accuracy, aggregated as Σ correct / Σ empty over the set (not puzzle accuracy).
"""

from __future__ import annotations

import functools
import itertools
from typing import Iterable, Iterator

import numpy as np

from dispo_jax.tasks.base import Example, Score, Task, last_answer_block

# d1's Sudoku prompt (Apache-2.0, dllm-reasoning/d1), verbatim: part of the protocol.
SUDOKU_SYSTEM_PROMPT = """
Please solve the following 4x4 Sudoku puzzle. The puzzle is provided as a 16-character string reading left-to-right, top-to-bottom, where '0' represents empty cells.

Rules:
- Fill empty cells with digits 1-4
- Each row must contain digits 1-4 exactly once
- Each column must contain digits 1-4 exactly once
- Each 2x2 box must contain digits 1-4 exactly once

Important: Your solution must be a COMPLETE 16-character string with only the digits 1-4, representing your final solved grid.

Respond in this exact format:
<reasoning>
Your step-by-step solving process
</reasoning>
<answer>
[16-character solution string with no spaces or separators]
</answer>
"""

NUM_GRIDS = 288
MAX_UNIQUE_BLANKS = 12  # a 4x4 Sudoku needs at least 4 givens for a unique solution


def train_prompt(row: Example) -> str:
  return f"{SUDOKU_SYSTEM_PROMPT}\n\nSolve the following Sudoku puzzle: {row['puzzle']}\n"


def eval_prompt(row: Example) -> str:
  # d1's eval script reuses the same system prompt with the GSM8K-style question wrapper.
  return f"{SUDOKU_SYSTEM_PROMPT}\n\nSolve the following Sudoku puzzle: {row['puzzle']}\n"


# Worked-example puzzles of the few-shot prompts: unique solutions on grids outside d1's test set,
# solvable by naked singles.
FEW_SHOT_PUZZLES = ("0200001230210003", "0000102420103042", "1030000423010020")


def solve_by_singles(puzzle: str) -> list[tuple[int, str]]:
  """Fills a puzzle cell by cell, each time with a cell that has exactly one candidate.

  Returns the fills ``(cell index, digit)`` in order; raises ``ValueError`` when the puzzle needs
  more than naked singles (the few-shot puzzles do not).
  """
  grid = list(puzzle)
  units = ([[4 * r + c for c in range(4)] for r in range(4)]
           + [[4 * r + c for r in range(4)] for c in range(4)]
           + [[4 * (r0 + r) + c0 + c for r in range(2) for c in range(2)]
              for r0 in (0, 2) for c0 in (0, 2)])
  fills = []
  while "0" in grid:
    for cell in (i for i, ch in enumerate(grid) if ch == "0"):
      seen = {grid[j] for u in units if cell in u for j in u}
      candidates = sorted(set("1234") - seen)
      if len(candidates) == 1:
        grid[cell] = candidates[0]
        fills.append((cell, candidates[0]))
        break
    else:
      raise ValueError(f"puzzle {puzzle} needs more than naked singles")
  return fills


def worked_example(puzzle: str) -> str:
  """One few-shot example: the question, a row-by-row reasoning trace and the answer."""
  rows = lambda g: "\n".join(f"Row {r + 1}: {' '.join(g[4 * r:4 * r + 4])}" for r in range(4))
  grid = list(puzzle)
  steps = []
  for cell, digit in solve_by_singles(puzzle):
    grid[cell] = digit
    steps.append(f"r{cell // 4 + 1}c{cell % 4 + 1} = {digit}, the one digit its row, column and "
                 f"box lack.")
  solution = "".join(grid)
  return (f"Question: Solve the following Sudoku puzzle: {puzzle}\nAnswer:\n<reasoning>\n"
          f"The grid, 0 = empty:\n{rows(puzzle)}\n" + "\n".join(steps)
          + f"\nSolved grid:\n{rows(solution)}\n</reasoning>\n<answer>\n{solution}\n</answer>")


def few_shot_prompt(num_examples: int):
  """SPG's few-shot Sudoku prompt layout: d1's instructions, ``num_examples`` worked examples, then
  ``Question: ... Answer:``. The worked examples are the project's own (:data:`FEW_SHOT_PUZZLES`)."""
  if not 0 < num_examples <= len(FEW_SHOT_PUZZLES):
    raise ValueError(f"few_shot={num_examples}: choose 1..{len(FEW_SHOT_PUZZLES)}")
  header = SUDOKU_SYSTEM_PROMPT + "\n\n" + "\n\n".join(
      worked_example(p) for p in FEW_SHOT_PUZZLES[:num_examples])

  def prompt(row: Example) -> str:
    return f"{header}\n\nQuestion: Solve the following Sudoku puzzle: {row['puzzle']}\nAnswer:\n"
  return prompt


def parse_answer(text: str, d1_compat: bool = False) -> str | None:
  """Digits of the last ``<answer>`` block, or None without one. d1 keeps every character that
  ``str.isdigit`` accepts (full-width ``"１"`` and superscripts too, which then shift the grid);
  ``d1_compat=True`` does the same, the default keeps ASCII digits only."""
  block = last_answer_block(text)
  if block is None:
    return None
  return "".join(ch for ch in block if ch.isdigit() and (d1_compat or ch.isascii()))


def cell_score(text: str, row: Example, d1_compat: bool = False) -> Score:
  """Blank cells the answer gets right (``correct``) of the puzzle's blanks (``total``).

  d1 compares against the row's stored solution; the default compares against the puzzle's
  solution closest to the answer, so a valid alternative completion of a puzzle with several
  solutions scores as correct (for a unique-solution puzzle both are the same).
  """
  puzzle = row["puzzle"]
  empty = [i for i in range(16) if puzzle[i] == "0"]
  answer = parse_answer(text, d1_compat)
  if not answer:
    return Score(0.0, float(len(empty)))
  answer = (answer + "0" * 16)[:16]
  targets = (row["solution"],) if d1_compat else (solutions(puzzle) or (row["solution"],))
  return Score(float(max(sum(answer[i] == t[i] for i in empty) for t in targets)),
               float(len(empty)))


def reward(text: str, row: Example, d1_compat: bool = False) -> float:
  s = cell_score(text, row, d1_compat)
  return s.correct / s.total if s.total else 0.0


def solved_score(text: str, row: Example, d1_compat: bool = False) -> Score:
  """1 of 1 when every blank cell is right (the puzzle is solved), else 0 of 1."""
  cells = cell_score(text, row, d1_compat)
  return Score(float(cells.total > 0 and cells.correct == cells.total), 1.0)


# The rewards of :func:`make_task`: d1's dense cell reward, or a sparse one that pays only for a
# solved puzzle (terminal credit is coarse there: one bit per completion).
REWARDS = ("cells", "solved")


def make_task(d1_compat: bool = False, reward_name: str = "cells") -> Task:
  if reward_name == "cells":
    terms, score = {"cells": lambda t, r: reward(t, r, d1_compat)}, cell_score
    metric_name = "cell accuracy"
  elif reward_name == "solved":
    terms = {"solved": lambda t, r: solved_score(t, r, d1_compat).correct}
    score, metric_name = solved_score, "puzzles solved"
  else:
    raise ValueError(f"unknown sudoku reward {reward_name!r}; choose one of {list(REWARDS)}")
  return Task(name="sudoku", train_prompt=train_prompt, eval_prompt=eval_prompt,
              reward_terms=terms, score=score, max_reward=1.0, eval_size=256,
              metric_name=metric_name)


TASK = make_task()


# ----------------------------------------------------------------------------------------------
# Grids, puzzles, split
# ----------------------------------------------------------------------------------------------


def is_valid_grid(grid: str) -> bool:
  if len(grid) != 16 or set(grid) - set("1234"):
    return False
  rows = [grid[4 * r:4 * r + 4] for r in range(4)]
  cols = ["".join(rows[r][c] for r in range(4)) for c in range(4)]
  boxes = ["".join(grid[4 * (2 * br + r) + 2 * bc + c] for r in range(2) for c in range(2))
           for br in range(2) for bc in range(2)]
  return all(sorted(unit) == list("1234") for unit in rows + cols + boxes)


@functools.lru_cache(maxsize=1)
def all_grids() -> tuple[str, ...]:
  """All 288 valid 4×4 grids, sorted."""
  grids = []
  perms = ["".join(p) for p in itertools.permutations("1234")]
  for rows in itertools.product(perms, repeat=4):
    grid = "".join(rows)
    if is_valid_grid(grid):
      grids.append(grid)
  return tuple(sorted(grids))


def _consistent_grids(puzzle: str) -> Iterator[str]:
  """The valid grids that agree with the puzzle's givens (``"0"`` = blank), lazily."""
  given = [(i, ch) for i, ch in enumerate(puzzle) if ch != "0"]
  return (g for g in all_grids() if all(g[i] == ch for i, ch in given))


@functools.lru_cache(maxsize=65536)
def solutions(puzzle: str) -> tuple[str, ...]:
  """Every valid grid consistent with the puzzle's givens (at most 288)."""
  return tuple(_consistent_grids(puzzle[:16]))


def count_solutions(puzzle: str, limit: int = 2) -> int:
  """Number of valid grids consistent with the puzzle's givens (stops at ``limit``)."""
  return sum(1 for _ in itertools.islice(_consistent_grids(puzzle), limit))


def make_puzzle(grid: str, num_blanks: int, rng: np.random.Generator,
                max_tries: int = 1000, unique: bool = True) -> str | None:
  """Blanks ``num_blanks`` random cells of ``grid``; with ``unique`` only such that the solution
  stays unique (None if no try succeeds)."""
  limit = MAX_UNIQUE_BLANKS if unique else 16
  if not 0 <= num_blanks <= limit:
    raise ValueError(f"num_blanks={num_blanks}: a 4x4 puzzle"
                     f"{' with a unique solution' if unique else ''} has 0..{limit} blanks")
  for _ in range(max_tries):
    blanks = set(rng.choice(16, size=num_blanks, replace=False).tolist())
    puzzle = "".join("0" if i in blanks else ch for i, ch in enumerate(grid))
    if not unique or count_solutions(puzzle) == 1:
      return puzzle
  return None


def split_grids(test_fraction: float = 0.2, seed: int = 0,
                exclude_from_train: Iterable[str] = ()) -> tuple[list[str], list[str]]:
  """Disjoint (train, test) grid lists. Grids in ``exclude_from_train`` go to test."""
  grids = list(all_grids())
  order = np.random.default_rng(seed).permutation(len(grids))
  n_test = int(round(test_fraction * len(grids)))
  test = {grids[i] for i in order[:n_test]} | set(exclude_from_train)
  train = [g for g in grids if g not in test]
  return train, sorted(test)


def generate_puzzles(grids: list[str], num_puzzles: int, num_blanks: int | tuple[int, int],
                     seed: int = 0, unique: bool = True) -> list[dict]:
  """``num_puzzles`` rows ``{"puzzle", "solution"}`` from ``grids`` with unique solutions.

  ``num_blanks`` is a count or an inclusive ``(low, high)`` range drawn per puzzle; ``unique=False``
  admits puzzles with several solutions (``solution`` is then the grid the puzzle was cut from).
  """
  if not grids:
    raise ValueError("generate_puzzles needs at least one grid")
  rng = np.random.default_rng(seed)
  rows = []
  while len(rows) < num_puzzles:
    grid = grids[int(rng.integers(len(grids)))]
    n = num_blanks if isinstance(num_blanks, int) else int(rng.integers(num_blanks[0],
                                                                        num_blanks[1] + 1))
    puzzle = make_puzzle(grid, n, rng, unique=unique)
    if puzzle is not None:
      rows.append({"puzzle": puzzle, "solution": grid})
  return rows
