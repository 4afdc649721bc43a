"""Parity with d1's own reward functions and prompts, on a recorded fixture.

``tests/data/d1_parity.json`` holds d1's outputs (``diffu-grpo/reward_func.py``) for 3000
adversarial completions per task and d1's training prompts (``data_utils.py``) rendered with
LLaDA-8B-Instruct's chat template; ``tests/data/make_d1_parity.py`` regenerates it from a d1
checkout. With ``d1_compat=True`` every reward term must equal d1's to 1e-9.
"""

import json
import os

import numpy as np
import pytest

from dispo_jax.model import tokenizer as tok
from dispo_jax.tasks import get_task

FIXTURE = os.path.join(os.path.dirname(__file__), "data", "d1_parity.json")


@pytest.fixture(scope="module")
def fixture():
  with open(FIXTURE, encoding="utf-8") as f:
    return json.load(f)


@pytest.mark.parametrize("task_name", ["gsm8k", "math500", "sudoku", "countdown"])
def test_d1_compat_rewards_equal_d1s(fixture, task_name):
  task = get_task(task_name, d1_compat=True)
  cases = fixture["rewards"][task_name]
  assert len(cases) >= 2000
  mismatches = []
  for case in cases:
    ours = task.reward_breakdown(case["text"], case["row"])
    assert set(ours) == set(case["terms"]), (set(ours), set(case["terms"]))
    for name, expected in case["terms"].items():
      if abs(ours[name] - expected) > 1e-9:
        mismatches.append((name, case["text"], ours[name], expected))
    if abs(task.reward(case["text"], case["row"]) - sum(case["terms"].values())) > 1e-9:
      mismatches.append(("sum", case["text"], task.reward(case["text"], case["row"]), None))
  assert not mismatches, f"{len(mismatches)} of {len(cases)} differ, e.g. {mismatches[:5]}"


def test_prompts_render_as_d1s(fixture):
  """The training prompt of every task, through the project's renderer and through a tokenizer
  carrying LLaDA's template, is d1's prompt through LLaDA's template."""
  tokenizer = tok.build_bpe_tokenizer(["Sudoku 1234 <answer>"], vocab_size=300)
  seen = set()
  for case in fixture["prompts"]:
    task = get_task(case["task"], d1_compat=True)
    content = task.train_prompt(case["row"])
    assert tok.render_chat(content) == case["rendered"], case["task"]
    assert tok.render_prompt(tokenizer, content) == case["rendered"], case["task"]
    seen.add(case["task"])
  assert seen == {"gsm8k", "math500", "sudoku", "countdown"}
