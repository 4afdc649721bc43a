"""The small interface every task implements, and answer-extraction helpers shared by tasks.

A task turns a dataset row (a plain ``dict``) into a training prompt and an evaluation prompt (user
content; the chat template is applied by the caller), scores a decoded completion with its reward
terms, and measures it with its evaluation metric. Rewards and metrics never raise on model output:
any text gets a value in the documented range.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable, Dict, Mapping, Sequence

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

_ANSWER_BLOCK = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
MAX_TEXT_CHARS = 100_000  # longer model outputs are cut before parsing (bounds regex time)


def clip_text(text: Any) -> str:
  """Model output as a bounded ``str`` (non-strings become their ``str``)."""
  if not isinstance(text, str):
    text = str(text)
  return text[:MAX_TEXT_CHARS]


def last_answer_block(text: str) -> str | None:
  """Content of the last complete ``<answer>...</answer>`` block, stripped; None if there is none."""
  matches = _ANSWER_BLOCK.findall(clip_text(text))
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
  """

  name: str
  train_prompt: Callable[[Example], str]
  eval_prompt: Callable[[Example], str]
  reward_terms: Mapping[str, Callable[[str, Example], float]]
  score: Callable[[str, Example], Score]
  max_reward: float
  eval_size: int | None = None

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
