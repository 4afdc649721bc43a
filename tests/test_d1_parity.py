"""Parity with d1's own reward functions and prompts, on a recorded fixture.

``tests/data/d1_parity.json`` holds d1's outputs (``diffu-grpo/reward_func.py``) for 3000
adversarial completions per task and d1's training prompts (``data_utils.py``) rendered with
LLaDA-8B-Instruct's chat template; ``tests/data/make_d1_parity.py`` regenerates it from a d1
checkout. With ``d1_compat=True`` every reward term must equal d1's to 1e-9, and the step before
it — token ids decoded as d1 decodes them — gives d1's text.
"""

import json
import os

import numpy as np
import pytest

from dispo_jax.model import tokenizer as tok
from dispo_jax.pipeline.rewards import make_reward_fn
from dispo_jax.sampling import decode_completions
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


@pytest.fixture(scope="module")
def hf_tokenizer(fixture, tmp_path_factory):
  """A byte-level BPE tokenizer with LLaDA's special tokens, loaded from its folder as a run
  loads one (``AutoTokenizer``)."""
  texts = [case["text"] for cases in fixture["rewards"].values() for case in cases[:200]]
  folder = str(tmp_path_factory.mktemp("d1_tokenizer"))
  tok.build_bpe_tokenizer(texts, vocab_size=400, folder=folder)
  return tok.load_tokenizer(folder)


@pytest.mark.parametrize("task_name", ["gsm8k", "math500", "sudoku", "countdown"])
def test_token_ids_to_rewards_equal_d1s(fixture, hf_tokenizer, task_name):
  """Token ids → the pipeline's decode → the task's reward equals d1's recorded reward, for
  completions that end in EOS padding with other special tokens mixed in, as LLaDA's do."""
  task = get_task(task_name, d1_compat=True)
  ids = tok.special_ids(hf_tokenizer)
  specials = [ids.eos, hf_tokenizer.convert_tokens_to_ids(tok.EOT), ids.eos, ids.eos]
  cases = fixture["rewards"][task_name][::10]
  rows = [case["row"] for case in cases]
  decode = lambda completions: decode_completions(hf_tokenizer, completions, ids.eos, "whole")
  completions, expected = [], []
  for case in cases:
    body = hf_tokenizer.encode(case["text"], add_special_tokens=False)
    completions.append(body + specials)
    expected.append(sum(case["terms"].values()))
  width = max(map(len, completions))
  padded = np.asarray([c + [ids.eos] * (width - len(c)) for c in completions])
  reward_fn = make_reward_fn(task, decode, rows)
  rewards = reward_fn(padded, np.arange(len(rows)))
  np.testing.assert_allclose(rewards, expected, atol=1e-6)


def test_whole_completion_text_is_d1s_batch_decode(hf_tokenizer):
  """d1 decodes the whole completion with ``skip_special_tokens=True``: ordinary tokens after an
  EOS reach its rewards; ``first_eos`` cuts them."""
  ids = tok.special_ids(hf_tokenizer)
  head = hf_tokenizer.encode("<answer>12</answer>", add_special_tokens=False)
  tail = hf_tokenizer.encode(" 3412 more", add_special_tokens=False)
  row = head + [ids.eos] + tail + [ids.eos, ids.eos]
  d1_text = hf_tokenizer.batch_decode([row], skip_special_tokens=True)[0]  # d1's own call
  assert d1_text == "<answer>12</answer> 3412 more"
  assert decode_completions(hf_tokenizer, np.asarray([row]), ids.eos, "whole") == [d1_text]
  assert decode_completions(hf_tokenizer, np.asarray([row]), ids.eos,
                            "first_eos") == ["<answer>12</answer>"]
