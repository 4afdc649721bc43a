"""GSM8K (d1): prompts and the five reward terms, with the d1 format-regex bug behind a switch.

Terms: xml-count (≤ 0.5), soft format 0.5, strict format 0.5, integer answer 0.5, correctness 2.0
(the text after the last ``<answer>`` equals the reference after ``####``). d1's format regexes lack
``re.DOTALL``, so a ``<reasoning>`` block spanning lines never satisfies the soft format; the default
here matches across lines as intended, ``d1_compat=True`` reproduces the original exactly.
Evaluation (d1's eval parser): the first numeric ``\\boxed{}``, else the last number in the answer
block, compared as floats with the reference.
"""

from __future__ import annotations

import re

from dispo_jax.tasks.base import (Example, NextOccurrence, Score, SYSTEM_PROMPT, Task, clip_text,
                                  find_delimited, last_answer_block,
                                  split_answer)

_STRICT = r"^<reasoning>\n.*?\n</reasoning>\n<answer>\n.*?\n</answer>\n$"
_SOFT = r"<reasoning>.*?</reasoning>\s*<answer>.*?</answer>"
# d1's GSM8K evaluation prompt (Apache-2.0, dllm-reasoning/d1), verbatim.
EVAL_SYSTEM_PROMPT = ("You are a math expert. You will be given a question to solve. Solve it step "
                      "by step. Wrap the final answer in a \\boxed{}. \nRespond in the following "
                      "format:\n<reasoning>\nYour reasoning here\n</reasoning>\n<answer>\n"
                      "\\boxed{...}\n</answer>")


def reference_answer(row: Example) -> str:
  """The text after ``####`` of an HF GSM8K answer (or the ``answer`` field as is)."""
  answer = str(row["answer"])
  return answer.split("####")[1].strip() if "####" in answer else answer.strip()


def xml_count_reward(text: str, row: Example) -> float:
  text = clip_text(text)
  count = 0.0
  if text.count("<reasoning>\n") == 1:
    count += 0.125
  if text.count("\n</reasoning>\n") == 1:
    count += 0.125
  if text.count("\n<answer>\n") == 1:
    count += 0.125 - len(text.split("\n</answer>\n")[-1]) * 0.001
  if text.count("\n</answer>") == 1:
    count += 0.125 - (len(text.split("\n</answer>")[-1]) - 1) * 0.001
  return count


def soft_format_match(text: str, dotall: bool) -> bool:
  """``re.match(_SOFT, text, re.DOTALL if dotall else 0)`` in linear time.

  The text opens with ``<reasoning>``; some ``</reasoning>`` (inside the first line without DOTALL)
  is followed by whitespace and ``<answer>``, and a ``</answer>`` follows that (on the same line
  without DOTALL)."""
  if not text.startswith("<reasoning>"):
    return False
  first_newline = -1 if dotall else text.find("\n", len("<reasoning>"))
  first_newline = len(text) if first_newline == -1 else first_newline  # A = .*? ends by here
  next_tag, next_close = NextOccurrence(text, "</reasoning>"), NextOccurrence(text, "</answer>")
  next_newline = NextOccurrence(text, "\n")
  p = next_tag(11)
  while p != -1 and p <= first_newline:
    k = p + len("</reasoning>")
    while k < len(text) and text[k].isspace():
      k += 1
    if text.startswith("<answer>", k):
      close = next_close(k + len("<answer>"))
      if dotall:
        return close != -1
      newline = next_newline(k + len("<answer>"))
      if close != -1 and (newline == -1 or close < newline):
        return True
    p = next_tag(p + 1)
  return False


def strict_format_match(text: str, dotall: bool) -> bool:
  """``re.match(_STRICT, text, re.DOTALL if dotall else 0)`` in linear time: ``<reasoning>\\n A
  \\n</reasoning>\\n<answer>\\n B \\n</answer>\\n`` then the end or one more newline
  (``$``); without DOTALL A and B hold no newline."""
  head, sep, tail = "<reasoning>\n", "\n</reasoning>\n<answer>\n", "\n</answer>\n"
  if not text.startswith(head):
    return False
  ends = [e for e in (len(text) - len(tail), len(text) - len(tail) - 1)
          if e >= len(head) and text.startswith(tail, e) and text[e + len(tail):] in ("", "\n")]
  if dotall:
    first = text.find(sep, len(head))
    return any(first != -1 and first + len(sep) <= e for e in ends)
  split = text.find("\n", len(head))
  if split == -1 or not text.startswith(sep, split):
    return False
  return text.find("\n", split + len(sep)) in ends


def soft_format_reward(text: str, row: Example, d1_compat: bool = False) -> float:
  return 0.5 if soft_format_match(clip_text(text), dotall=not d1_compat) else 0.0


def strict_format_reward(text: str, row: Example, d1_compat: bool = False) -> float:
  return 0.5 if strict_format_match(clip_text(text), dotall=not d1_compat) else 0.0


def int_reward(text: str, row: Example, d1_compat: bool = False) -> float:
  """0.5 for an all-digit answer; d1's ``str.isdigit`` also takes non-ASCII digits (``"٣"``,
  ``"²"``), reproduced with ``d1_compat=True``."""
  answer = split_answer(text)
  return 0.5 if (d1_compat or answer.isascii()) and answer.isdigit() else 0.0


def correctness_reward(text: str, row: Example) -> float:
  return 2.0 if split_answer(text) == reference_answer(row) else 0.0


def parse_eval_answer(text: str) -> float | None:
  text = clip_text(text)
  for content in find_delimited(text, "\\boxed{", "}", dotall=False):
    content = content.strip()
    if not content or re.fullmatch(r"\.+", content):
      continue
    try:
      return float(content)
    except ValueError:
      numbers = re.findall(r"-?\d+\.?\d*", content)
      if numbers:
        return float(numbers[0])
  block = last_answer_block(text)
  if block:
    try:
      return float(block)
    except ValueError:
      numbers = re.findall(r"-?\d+\.?\d*", block)
      if numbers:
        return float(numbers[-1])
  return None


def score(text: str, row: Example) -> Score:
  parsed = parse_eval_answer(text)
  try:
    truth = float(reference_answer(row).replace(",", ""))
  except ValueError:
    return Score(0.0, 1.0)
  return Score(float(parsed is not None and parsed == truth), 1.0)


def train_prompt(row: Example) -> str:
  return SYSTEM_PROMPT + "\n\n" + str(row["question"])


def eval_prompt(row: Example) -> str:
  return f"{EVAL_SYSTEM_PROMPT}\n\n{row['question']}"


def make_task(d1_compat: bool = False) -> Task:
  return Task(
      name="gsm8k", train_prompt=train_prompt, eval_prompt=eval_prompt,
      reward_terms={"xml_count": xml_count_reward,
                    "soft_format": lambda t, r: soft_format_reward(t, r, d1_compat),
                    "strict_format": lambda t, r: strict_format_reward(t, r, d1_compat),
                    "int": lambda t, r: int_reward(t, r, d1_compat),
                    "correctness": correctness_reward},
      score=score, max_reward=4.0, eval_size=1319)


TASK = make_task()
