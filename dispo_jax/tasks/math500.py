"""MATH500 (d1): ``\\boxed{}`` extraction, LaTeX answer normalisation, rewards and metric.

Reward (d1): correctness 2.0 when the last ``\\boxed{}`` of the completion is equivalent to the
reference answer after normalisation, plus format ``0.5 × [1 if an <answer> block exists, plus 1.0 if
"\\boxed" is inside it (else 0.5)]``. d1's check is written ``"\\boxed" in r`` with a single backslash,
i.e. a backspace character followed by "oxed", which never matches, so the inner term is always 0.5;
``d1_compat=True`` reproduces that, the default checks for ``\\boxed`` as intended.

Normalisation follows the Hendrycks MATH convention (the rules d1 uses): drop line breaks, ``\\!``,
``\\left``/``\\right``, degree marks, ``\\$``, ``\\%`` and a trailing ``\\text{ unit}``; ``tfrac``/``dfrac``
→ ``frac``; a leading ``.`` gets a ``0``; a short ``x = `` prefix is dropped; ``\\sqrt2`` → ``\\sqrt{2}``;
spaces removed; ``\\frac12`` → ``\\frac{1}{2}``; ``0.5`` → ``\\frac{1}{2}``; ``a/b`` of integers →
``\\frac{a}{b}``.
"""

from __future__ import annotations

import re

from dispo_jax.tasks.base import Example, Score, SYSTEM_PROMPT, Task, clip_text, last_answer_block

MATH_INSTRUCTION = ("You are a math expert. You will be given a question to solve. Solve it step by "
                    "step. Wrap the final answer in a \\boxed{}. ")
# d1's MATH500 evaluation prompt (Apache-2.0, dllm-reasoning/d1), verbatim, trailing quote included.
EVAL_SYSTEM_PROMPT = ("You are a math expert. You will be given a question to solve. Solve it step "
                      "by step. Wrap the final answer in a \\boxed{}.\nRespond in the following "
                      "format:\n<reasoning>\nYour reasoning here\n</reasoning>\n<answer>\n"
                      "\\boxed{...}\n</answer>\" \n")


def last_boxed(text: str) -> str | None:
  """The last ``\\boxed{...}`` (balanced braces) or ``\\boxed x`` or ``\\fbox{...}``; None if absent."""
  text = clip_text(text)
  idx = text.rfind("\\boxed")
  if "\\boxed " in text:
    return "\\boxed " + text.split("\\boxed ")[-1].split("$")[0]
  if idx < 0:
    idx = text.rfind("\\fbox")
    if idx < 0:
      return None
  depth = 0
  for i in range(idx, len(text)):
    if text[i] == "{":
      depth += 1
    elif text[i] == "}":
      depth -= 1
      if depth == 0:
        return text[idx:i + 1]
  return None


def strip_boxed(boxed: str) -> str:
  """Content of ``\\boxed{...}`` / ``\\boxed x`` / ``\\fbox{...}``."""
  for prefix in ("\\boxed ", "\\boxed{", "\\fbox{"):
    if boxed.startswith(prefix):
      inner = boxed[len(prefix):]
      return inner if prefix.endswith(" ") else (inner[:-1] if inner.endswith("}") else inner)
  return boxed


def _fix_fracs(s: str) -> str:
  parts = s.split("\\frac")
  out = parts[0]
  for part in parts[1:]:
    out += "\\frac"
    if part.startswith("{") or len(part) < 2:
      if len(part) < 2 and not part.startswith("{"):
        return s
      out += part
      continue
    a, b, rest = part[0], part[1], part[2:]
    out += "{" + a + "}" + (b + rest if b == "{" else "{" + b + "}" + rest)
  return out


def _fix_sqrt(s: str) -> str:
  parts = s.split("\\sqrt")
  out = parts[0]
  for part in parts[1:]:
    if part and not part.startswith("{"):
      part = "{" + part[0] + "}" + part[1:]
    out += "\\sqrt" + part
  return out


def _fix_slash(s: str) -> str:
  m = re.fullmatch(r"(-?\d{1,18})/(-?\d{1,18})", s)
  return f"\\frac{{{int(m.group(1))}}}{{{int(m.group(2))}}}" if m else s


def normalize_answer(s: str) -> str:
  """Hendrycks-style normalisation of a LaTeX answer string (never raises)."""
  s = clip_text(s).replace("\n", "").replace("\\!", "").replace("\\\\", "\\")
  s = s.replace("tfrac", "frac").replace("dfrac", "frac")
  s = s.replace("\\left", "").replace("\\right", "")
  s = s.replace("^{\\circ}", "").replace("^\\circ", "").replace("\\$", "")
  if s.count("\\text{ ") == 1:
    s = s.split("\\text{ ")[0]
  s = s.replace("\\%", "")
  s = s.replace(" .", " 0.").replace("{.", "{0.")
  if not s:
    return s
  if s[0] == ".":
    s = "0" + s
  halves = s.split("=")
  if len(halves) == 2 and len(halves[0]) <= 2:
    s = halves[1]
  s = _fix_sqrt(s).replace(" ", "")
  s = _fix_fracs(s)
  if s == "0.5":
    s = "\\frac{1}{2}"
  return _fix_slash(s)


def is_equiv(a: str | None, b: str | None) -> bool:
  if a is None or b is None:
    return a is None and b is None
  return normalize_answer(a) == normalize_answer(b)


class _D1Raised(ValueError):
  """Where d1's ``strip_string`` raises; its ``is_equiv`` then compares the raw strings."""


def _d1_normalize(s: str) -> str:
  """d1's ``strip_string`` step for step, raising :class:`_D1Raised` wherever it raises: two or
  more ``"\\text{ "``, a ``\\sqrt`` or ``\\frac`` at the very end, an ``a/b`` whose parts are
  not integers. Unlike :func:`normalize_answer`, ``a/b`` becomes a fraction only when
  ``"{int(a)}/{int(b)}"`` gives the string back (no leading zeros or signs), and any run of
  Unicode digits that ``int`` reads counts."""
  for old, new in (("\n", ""), ("\\!", ""), ("\\\\", "\\"), ("tfrac", "frac"), ("dfrac", "frac"),
                   ("\\left", ""), ("\\right", ""), ("^{\\circ}", ""), ("^\\circ", ""), ("\\$", "")):
    s = s.replace(old, new)
  if "\\text{ " in s:
    parts = s.split("\\text{ ")
    if len(parts) != 2:
      raise _D1Raised("units")
    s = parts[0]
  s = s.replace("\\%", "").replace(" .", " 0.").replace("{.", "{0.")
  if not s:
    return s
  if s[0] == ".":
    s = "0" + s
  if len(s.split("=")) == 2 and len(s.split("=")[0]) <= 2:
    s = s.split("=")[1]
  if "\\sqrt" in s:
    head, *rest = s.split("\\sqrt")
    if any(not part for part in rest):
      raise _D1Raised("sqrt")
    s = head + "".join("\\sqrt" + (p if p[0] == "{" else "{" + p[0] + "}" + p[1:]) for p in rest)
  s = s.replace(" ", "")
  s = _d1_fix_fracs(s)
  if s == "0.5":
    s = "\\frac{1}{2}"
  parts = s.split("/")
  if len(parts) == 2:
    try:
      a, b = int(parts[0]), int(parts[1])
    except ValueError as e:
      raise _D1Raised("slash") from e
    if s == f"{a}/{b}":
      s = f"\\frac{{{a}}}{{{b}}}"
  return s


def _d1_fix_fracs(s: str) -> str:
  """d1's ``fix_fracs``: parts after ``\\frac`` in order; an empty one raises, a one-character one
  (not ``{``) gives back the input unchanged."""
  head, *rest = s.split("\\frac")
  out = head
  for part in rest:
    if not part:
      raise _D1Raised("frac")
    if part[0] == "{":
      out += "\\frac" + part
    elif len(part) < 2:
      return s
    else:
      a, b, tail = part[0], part[1], part[2:]
      out += "\\frac{" + a + "}" + (b + tail if b == "{" else "{" + b + "}" + tail)
  return out


def _d1_is_equiv(a: str, b: str) -> bool:
  try:
    return _d1_normalize(a) == _d1_normalize(b)
  except _D1Raised:
    return a == b


def reference_answer(row: Example) -> str:
  """The row's answer: the ``answer`` field (MATH-500) or the last boxed of ``solution``."""
  if row.get("answer"):
    return str(row["answer"])
  boxed = last_boxed(str(row.get("solution", "")))
  return strip_boxed(boxed) if boxed else str(row.get("solution", ""))


def extract_answer(text: str) -> str | None:
  boxed = last_boxed(text)
  return strip_boxed(boxed) if boxed is not None else None


def correctness_reward(text: str, row: Example, d1_compat: bool = False) -> float:
  """2.0 when the last box equals the reference after normalisation (the whole response is
  compared when there is no box, as d1 does). ``d1_compat=True``: d1's extraction (an ``\\fbox``
  keeps its wrapper, so it never matches) and d1's normalisation (:func:`_d1_normalize`)."""
  text = clip_text(text)
  if d1_compat:
    boxed = last_boxed(text)
    answer = text if boxed is None else (boxed if boxed.startswith("\\fbox") else strip_boxed(boxed))
    return 2.0 if _d1_is_equiv(answer, reference_answer(row)) else 0.0
  answer = extract_answer(text)
  if answer is None:
    answer = text
  return 2.0 if is_equiv(answer, reference_answer(row)) else 0.0


def format_reward(text: str, row: Example, d1_compat: bool = False) -> float:
  """``0.5 × [answer tags + (1.0 if a box is inside them, else 0.5)]``.

  Default: the tags count when a ``</answer>`` closes the first ``<answer>``, and the box is
  ``\\boxed``. ``d1_compat=True`` is d1's check: the opening tag alone earns the tag credit (the
  inside runs to the next ``</answer>`` or the end), the whole text is searched without one, and
  the needle is the backspace character followed by "oxed".
  """
  text = clip_text(text)
  if d1_compat:
    has_tags = "<answer>" in text
    inside = text.split("<answer>")[1].split("</answer>")[0] if has_tags else text
    return 0.5 * ((1.0 if has_tags else 0.0) + (1.0 if "\x08oxed" in inside else 0.5))
  has_tags = "<answer>" in text and "</answer>" in text.split("<answer>", 1)[1]
  inside = text.split("<answer>", 1)[1].split("</answer>")[0] if has_tags else text
  return 0.5 * ((1.0 if has_tags else 0.0) + (1.0 if "\\boxed" in inside else 0.5))


def score(text: str, row: Example) -> Score:
  answer = extract_answer(text)
  if not answer:
    answer = last_answer_block(text)
  return Score(float(answer is not None and is_equiv(answer, reference_answer(row))), 1.0)


def train_prompt(row: Example) -> str:
  return f"{SYSTEM_PROMPT}\n\n{MATH_INSTRUCTION}\n\n{row['problem']}"


def eval_prompt(row: Example) -> str:
  return f"{EVAL_SYSTEM_PROMPT}\n\n{row['problem']}"


def make_task(d1_compat: bool = False) -> Task:
  return Task(name="math500", train_prompt=train_prompt, eval_prompt=eval_prompt,
              reward_terms={"correctness": lambda t, r: correctness_reward(t, r, d1_compat),
                            "format": lambda t, r: format_reward(t, r, d1_compat)},
              score=score, max_reward=3.0, eval_size=500)


TASK = make_task()
