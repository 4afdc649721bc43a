"""Countdown with 3 numbers (d1): prompts, the reward, a safe arithmetic evaluator, a generator.

Reward (training, d1): 1.0 if the last ``<answer>`` equation uses each given number exactly once and
evaluates to the target (|diff| < 1e-5); 0.1 if an answer is present but wrong or invalid; 0 without
``<answer>``. Evaluation (d1's eval script) reads the last ``\\boxed{}`` first, then the answer block.

Equations are evaluated by walking a Python AST that admits only numbers, ``+ − × ÷``, unary signs
and parentheses, with bounds on length, depth and magnitude — never ``eval``. d1 calls ``eval`` on
anything matching ``[\\d+\\-*/().\\s]``, which also admits ``**`` and ``//``; ``d1_compat=True`` accepts
those too, with powers bounded so that nothing can hang.
"""

from __future__ import annotations

import ast
import json
import math
import re

import numpy as np

from dispo_jax.tasks.base import Example, Score, SYSTEM_PROMPT, Task, clip_text, last_answer_block
from dispo_jax.tasks.math500 import last_boxed, strip_boxed

_ALLOWED_CHARS = re.compile(r"^[\d+\-*/().\s]+$")
MAX_EQUATION_CHARS = 200
MAX_DEPTH = 32
MAX_MAGNITUDE = 1e12


class _Invalid(Exception):
  pass


def safe_evaluate(equation: str, d1_compat: bool = False) -> float | None:
  """Value of an arithmetic expression, or None if it is invalid, too large, or divides by zero."""
  equation = clip_text(equation).strip()
  if not equation or len(equation) > MAX_EQUATION_CHARS or not _ALLOWED_CHARS.match(equation):
    return None
  try:
    tree = ast.parse(equation, mode="eval")
    return float(_eval_node(tree.body, 0, d1_compat))
  except (_Invalid, SyntaxError, ValueError, ZeroDivisionError, OverflowError, RecursionError,
          MemoryError, TypeError):
    return None


def _eval_node(node, depth: int, d1_compat: bool) -> float:
  if depth > MAX_DEPTH:
    raise _Invalid("too deep")
  if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) \
      and not isinstance(node.value, bool):
    value = float(node.value)
  elif isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.UAdd, ast.USub)):
    inner = _eval_node(node.operand, depth + 1, d1_compat)
    value = inner if isinstance(node.op, ast.UAdd) else -inner
  elif isinstance(node, ast.BinOp):
    left = _eval_node(node.left, depth + 1, d1_compat)
    right = _eval_node(node.right, depth + 1, d1_compat)
    op = node.op
    if isinstance(op, ast.Add):
      value = left + right
    elif isinstance(op, ast.Sub):
      value = left - right
    elif isinstance(op, ast.Mult):
      value = left * right
    elif isinstance(op, ast.Div):
      value = left / right
    elif d1_compat and isinstance(op, ast.FloorDiv):
      value = float(math.floor(left / right))
    elif d1_compat and isinstance(op, ast.Pow):
      if abs(right) > 64 or (abs(left) > 1 and abs(right) * math.log10(abs(left)) > 12):
        raise _Invalid("power too large")
      value = float(left ** right)
      if isinstance(value, complex):
        raise _Invalid("complex")
    else:
      raise _Invalid(f"operator {type(op).__name__}")
  else:
    raise _Invalid(f"node {type(node).__name__}")
  if not math.isfinite(value) or abs(value) > MAX_MAGNITUDE:
    raise _Invalid("magnitude")
  return value


def uses_each_number_once(equation: str, numbers) -> bool:
  """The integers written in the equation are exactly ``numbers`` (as a multiset)."""
  found = re.findall(r"\d+", clip_text(equation))
  if len(found) > 16 or any(len(n.lstrip("0")) > 18 for n in found):
    return False
  return sorted(int(n) for n in found) == sorted(int(n) for n in numbers)


def numbers_and_target(row: Example) -> tuple[list[int], float]:
  return [int(n) for n in row["numbers"]], float(row["target"])


def equation_reward(equation: str | None, row: Example, d1_compat: bool = False) -> float:
  if equation is None:
    return 0.0
  numbers, target = numbers_and_target(row)
  if not uses_each_number_once(equation, numbers):
    return 0.1
  value = safe_evaluate(equation, d1_compat)
  if value is None:
    return 0.1
  return 1.0 if abs(value - target) < 1e-5 else 0.1


def reward(text: str, row: Example, d1_compat: bool = False) -> float:
  return equation_reward(last_answer_block(text), row, d1_compat)


def eval_equation(text: str) -> str | None:
  """The equation d1's eval reads: the last ``\\boxed{}`` if any, else the last answer block."""
  boxed = last_boxed(text)
  if boxed is not None:
    return strip_boxed(boxed)
  return last_answer_block(text)


def latex_to_python(equation: str) -> str:
  return (equation.replace("\\times", "*").replace("\\cdot", "*").replace("\\div", "/")
          .replace("\\left", "").replace("\\right", "").replace("{", "(").replace("}", ")"))


def score(text: str, row: Example) -> Score:
  equation = eval_equation(text)
  if equation is None:
    return Score(0.0, 1.0)
  return Score(float(equation_reward(latex_to_python(equation), row) == 1.0), 1.0)


def train_prompt(row: Example) -> str:
  numbers, target = row["numbers"], row["target"]
  # d1's training prompt (Apache-2.0, dllm-reasoning/d1), verbatim.
  return (f"{SYSTEM_PROMPT}\nUsing only the numbers {list(numbers)}, create an arithmetic "
          f"expression that evaluates to exactly {target}. You must use all numbers from the list, "
          "and each number must be used exactly once. You may use the operations +, -, *, and / as "
          "needed. After reasoning, provide only your final expression inside <answer></answer> "
          "tags without including an equals sign or the target number. For example, if the "
          "numbers are [2, 3, 4] and the target is 5, a valid answer is: <answer>\n2*4-3\n</answer>")


# d1's evaluation prompt for Countdown (Apache-2.0, dllm-reasoning/d1), verbatim.
EVAL_SYSTEM_PROMPT = (
    "Using only the provided numbers, create an arithmetic expression that evaluates to exactly the "
    "provided target number. You may use the operations +, -, *, and / as needed, but each number "
    "must be used exactly once. Think step-by-step. After reasoning, provide only your final "
    "expression inside \\boxed{} tags without including an equals sign or the target number. For "
    "example: \\boxed{a + b * c}Respond in the following format:\n<reasoning>\nYour reasoning "
    "here\n</reasoning>\n<answer>\n\\boxed{...}\n</answer>")


def eval_prompt(row: Example) -> str:
  numbers, target = list(row["numbers"]), int(row["target"])
  return f"{EVAL_SYSTEM_PROMPT}\n\nNumbers: {numbers}\nTarget: {target}"


def make_task(d1_compat: bool = False) -> Task:
  return Task(name="countdown", train_prompt=train_prompt, eval_prompt=eval_prompt,
              reward_terms={"equation": lambda t, r: reward(t, r, d1_compat)}, score=score,
              max_reward=1.0, eval_size=256)


TASK = make_task()


def generate_problems(num_problems: int, seed: int = 0, low: int = 1, high: int = 99,
                      max_target: int = 999) -> list[dict]:
  """Solvable 3-number problems ``{"numbers": [a, b, c], "target": t}`` with an integer target in
  ``[1, max_target]``, built from a random expression over a random order of the numbers."""
  rng = np.random.default_rng(seed)
  ops = ["+", "-", "*", "/"]
  rows = []
  while len(rows) < num_problems:
    numbers = rng.integers(low, high + 1, 3).tolist()
    a, b, c = rng.permutation(numbers).tolist()
    o1, o2 = rng.choice(ops, 2).tolist()
    shape = "({a}{o1}{b}){o2}{c}" if rng.random() < 0.5 else "{a}{o1}({b}{o2}{c})"
    equation = shape.format(a=a, b=b, c=c, o1=o1, o2=o2)
    value = safe_evaluate(equation)
    if value is None or value != round(value) or not 1 <= value <= max_target:
      continue
    rows.append({"numbers": numbers, "target": int(round(value)), "solution": equation})
  return rows


def to_jsonl_row(row: Example) -> str:
  """d1's JSONL format: ``{"input": "a,b,c", "output": "t"}``."""
  return json.dumps({"input": ",".join(str(n) for n in row["numbers"]),
                     "output": str(row["target"])})
