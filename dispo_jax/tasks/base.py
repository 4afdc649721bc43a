"""The small interface every task implements, and answer-extraction helpers shared by tasks.

A task turns a dataset row (a plain ``dict``) into a training prompt and an evaluation prompt (user
content; the chat template is applied by the caller), scores a decoded completion with its reward
terms, and measures it with its evaluation metric. Rewards and metrics never raise on model output:
any text gets a value in the documented range.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, Mapping, Sequence

from dispo_jax.checks import require

Example = Mapping[str, Any]

# d1's training system prompt (Apache-2.0, dllm-reasoning/d1), kept verbatim: prompts are part of
# the protocol being reproduced.
SYSTEM_PROMPT = """
Respond in the following format:
<reasoning>
...
</reasoning>
<answer>
...
</answer>
"""

SFT_ERRORS = ("next_digit", "next_digit_per_answer", "four_as_one")  # DataSettings.sft_error
MAX_TEXT_CHARS = 100_000  # longer model outputs are cut before parsing (bounds regex time)


def clip_text(text: Any) -> str:
  """Model output as a bounded ``str`` (non-strings become their ``str``)."""
  if not isinstance(text, str):
    text = str(text)
  return text[:MAX_TEXT_CHARS]


class NextOccurrence:
  """``text.find(needle, start)`` for non-decreasing ``start`` in amortised linear total time."""

  def __init__(self, text: str, needle: str):
    self.text, self.needle, self.found, self.start = text, needle, None, -1

  def __call__(self, start: int) -> int:
    if self.found is not None and start >= self.start and (self.found == -1 or self.found >= start):
      return self.found
    self.start, self.found = start, self.text.find(self.needle, start)
    return self.found


def find_delimited(text: str, opening: str, closing: str, dotall: bool = True) -> list[str]:
  """``re.findall(re.escape(opening) + "(.*?)" + re.escape(closing), text, re.DOTALL if dotall
  else 0)`` in linear time (the regex is quadratic on repeated openings without a closing)."""
  out, pos = [], 0
  next_open, next_close = NextOccurrence(text, opening), NextOccurrence(text, closing)
  next_newline = NextOccurrence(text, "\n")
  while True:
    start = next_open(pos)
    if start == -1:
      return out
    body = start + len(opening)
    end = next_close(body)
    if end == -1:
      return out
    newline = -1 if dotall else next_newline(body)
    if newline != -1 and newline < end:  # '.' stops at a newline: try the next opening
      pos = start + 1
      continue
    out.append(text[body:end])
    pos = end + len(closing)


def last_answer_block(text: str) -> str | None:
  """Content of the last complete ``<answer>...</answer>`` block, stripped; None if there is none."""
  matches = find_delimited(clip_text(text), "<answer>", "</answer>")
  return matches[-1].strip() if matches else None


def split_answer(text: str) -> str:
  """d1's ``extract_xml_answer``: text after the last ``<answer>`` up to the next ``</answer>``.

  Unlike :func:`last_answer_block` it needs no closing tag and returns the whole text when there is
  no ``<answer>`` at all.
  """
  return clip_text(text).split("<answer>")[-1].split("</answer>")[0].strip()


@dataclasses.dataclass(frozen=True)
class Score:
  """An evaluation result: ``correct`` out of ``total`` (cells for Sudoku, problems otherwise)."""
  correct: float
  total: float


@dataclasses.dataclass(frozen=True)
class DataSettings:
  """Where a run's rows come from (config section ``data``, one key per field).

  Attributes:
    train_file, eval_file: local dataset files (HF formats; Sudoku: d1's CSV); "" = the task's
      default (d1's bundled test sets for evaluation; the tiny setting's generated rows).
    num_train, num_test: rows the tiny setting generates.
    test_fraction: tiny Sudoku: fraction of the grids held out of SFT.
    rl_grid_fraction: tiny Sudoku: > 0 sets this fraction of held-out grids aside for RL prompts.
    rl_on_test_grids: tiny Sudoku: RL prompts are puzzles on the test grids, none of them a test
      puzzle (d1's situation: any large 4×4 puzzle set covers all 288 grids); the base never saw
      those grids.
    num_test_grids: tiny Sudoku: > 0 keeps only this many test grids (a fixed random subset).
    num_blanks: tiny Sudoku: (fewest, most) blank cells of a generated puzzle.
    countdown_numbers: tiny Countdown: (smallest, largest) number of a generated problem.
    unique_solutions: tiny Sudoku: only puzzles with one solution (False: any number; the reward
      then scores an answer against the puzzle's solution closest to it).
    sft_error, sft_error_rate: tiny Sudoku: the SFT answers come from a demonstrator with a
      systematic error, made at this rate (0: none): ``next_digit`` (a blank written as the next
      digit, 4 → 1), ``next_digit_per_answer`` (all blanks of an answer so) or ``four_as_one``
      (a blank 4 written as 1). The base imitates it; the reward and the held-out metric pay only
      for the true solution, so RL has a known error to unlearn. RL and test rows are exact.
    seed: data generation and the grid split (independent of the run's seed).
    few_shot: Sudoku with a checkpoint: worked examples in the prompt (SPG's protocol: 3).
  """

  train_file: str = ""
  eval_file: str = ""
  num_train: int = 4000
  num_test: int = 256
  test_fraction: float = 0.2
  rl_grid_fraction: float = 0.0
  rl_on_test_grids: bool = False
  num_test_grids: int = 0
  num_blanks: tuple[int, int] = (6, 10)
  countdown_numbers: tuple[int, int] = (1, 99)
  unique_solutions: bool = True
  sft_error: str = "next_digit"
  sft_error_rate: float = 0.0
  seed: int = 0
  few_shot: int = 0

  def __post_init__(self):
    object.__setattr__(self, "num_blanks", tuple(self.num_blanks))
    object.__setattr__(self, "countdown_numbers", tuple(self.countdown_numbers))
    checks = [
        ("num_train", self.num_train >= 1, ">= 1"),
        ("num_test", self.num_test >= 1, ">= 1"),
        ("test_fraction", 0 < self.test_fraction < 1, "in (0, 1)"),
        ("rl_grid_fraction", 0 <= self.rl_grid_fraction < 1, "in [0, 1)"),
        ("rl_on_test_grids", not (self.rl_on_test_grids and self.rl_grid_fraction),
         "False when rl_grid_fraction > 0 (RL grids are either a split or the test grids)"),
        ("num_test_grids", self.num_test_grids >= 0, ">= 0 (0: every held-out grid)"),
        ("num_blanks", len(self.num_blanks) == 2 and 1 <= self.num_blanks[0]
         <= self.num_blanks[1] <= (12 if self.unique_solutions else 16),
         "(fewest, most) with 1 <= fewest <= most <= 12 (16 with unique_solutions=False)"),
        ("countdown_numbers", len(self.countdown_numbers) == 2
         and 1 <= self.countdown_numbers[0] <= self.countdown_numbers[1],
         "(smallest, largest) with 1 <= smallest <= largest"),
        ("sft_error_rate", 0 <= self.sft_error_rate < 1, "in [0, 1)"),
        ("sft_error", self.sft_error in SFT_ERRORS, f"one of {SFT_ERRORS}"),
        ("seed", self.seed >= 0, ">= 0"),
        ("few_shot", self.few_shot >= 0, ">= 0"),
    ]
    require(self, checks)


@dataclasses.dataclass(frozen=True)
class TinySetting:
  """A task at CPU scale: a compact prompt/completion format and generated rows.

  The real prompts are hundreds of tokens; the tiny setting keeps the task's reward but asks with
  a compact user content (``"Sudoku <puzzle>"``) and answers ``"<answer>...</answer>"``.

  Attributes:
    prompt: row -> compact user content (training and evaluation).
    completion: row -> the target completion the base model is SFT'd on.
    rows: ``DataSettings -> (RL train rows, held-out test rows)``.
    sft_rows: ``DataSettings -> rows`` the base is SFT'd on (None: the RL train rows).
    rows_revision: raised when the rows a setting generates change, so that cached bases SFT'd
      on the earlier rows are not reused (0: the rows as first generated).
  """

  prompt: Callable[[Example], str]
  completion: Callable[[Example], str]
  rows: Callable[[DataSettings], tuple[list, list]]
  sft_rows: Callable[[DataSettings], list] | None = None
  rows_revision: int = 0

  def base_rows(self, data: DataSettings) -> list:
    return self.sft_rows(data) if self.sft_rows is not None else self.rows(data)[0]


@dataclasses.dataclass(frozen=True)
class Task:
  """A task: prompts, reward terms (summed into the reward), and the evaluation metric.

  Attributes:
    name: registry name.
    train_prompt: row -> user content of the training prompt (as d1 builds it).
    eval_prompt: row -> user content of the evaluation prompt (d1's eval scripts).
    reward_terms: ``{name: fn(text, row) -> float}``; the reward is their sum.
    score: ``fn(text, row) -> Score`` for the evaluation metric.
    max_reward: the largest possible reward (for logging and range checks).
    eval_size: d1's evaluation set size (None = the whole test set).
    tiny: the task's CPU-scale setting (:class:`TinySetting`), or None.
    metric_name: what ``score`` aggregates to, in words (printed with results).
  """

  name: str
  train_prompt: Callable[[Example], str]
  eval_prompt: Callable[[Example], str]
  reward_terms: Mapping[str, Callable[[str, Example], float]]
  score: Callable[[str, Example], Score]
  max_reward: float
  eval_size: int | None = None
  tiny: TinySetting | None = None
  metric_name: str = "accuracy"

  def reward(self, text: str, row: Example) -> float:
    return float(sum(fn(text, row) for fn in self.reward_terms.values()))

  def reward_breakdown(self, text: str, row: Example) -> Dict[str, float]:
    return {name: float(fn(text, row)) for name, fn in self.reward_terms.items()}

  def rewards(self, texts: Sequence[str], rows: Sequence[Example]) -> list[float]:
    if len(texts) != len(rows):
      raise ValueError(f"{len(texts)} completions for {len(rows)} rows")
    return [self.reward(t, r) for t, r in zip(texts, rows)]


def metric(scores: Sequence[Score]) -> float:
  """Σ correct / Σ total (cell accuracy for Sudoku, accuracy otherwise); NaN when empty."""
  total = sum(s.total for s in scores)
  return float(sum(s.correct for s in scores) / total) if total else float("nan")
