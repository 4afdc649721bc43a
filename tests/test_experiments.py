"""The study script's summary arithmetic (the numbers docs/RESULTS.md reports come from it),
on hand-built metric rows."""

import argparse

import numpy as np
import pytest

from experiments import sudoku_study


def _rows(accuracies, seconds_per_update, mu=2):
  """Metric rows of a run: evaluations every rollout batch, μ update rows per batch."""
  rows = [{"step": 0, "eval/accuracy": accuracies[0]}]
  for batch, acc in enumerate(accuracies[1:]):
    for i in range(mu):
      rows.append({"step": batch * mu + i, "rollout": batch, "reward_mean": 0.5, "loss": 0.0,
                   "step_seconds": seconds_per_update, "group_zero_adv_frac": 0.25,
                   "base/credited_tokens": 10.0})
    rows.append({"step": (batch + 1) * mu, "eval/accuracy": acc})
  return rows


def test_seconds_before_each_evaluation_add_the_updates_before_it():
  rows = _rows([0.1, 0.2, 0.3], seconds_per_update=1.5)
  assert sudoku_study.seconds_at_evals(rows, mu=2) == {0: 0.0, 1: 3.0, 2: 6.0}


def test_paired_differences_by_seed_with_their_t_values():
  args = argparse.Namespace(methods="diffu_grpo,dispo,control", last_evals=2, rollouts=2)
  finals = {"diffu_grpo": [0.30, 0.40, 0.50], "dispo": [0.34, 0.42, 0.56],
            "control": [0.20, 0.30, 0.40]}
  runs = {(name, seed): _rows([0.2, value, value], 1.0)
          for name, values in finals.items() for seed, value in enumerate(values)}
  summary = sudoku_study.summarise(runs, args, mu=2)
  diffs = np.array([0.04, 0.02, 0.06])
  mean, se = diffs.mean(), diffs.std(ddof=1) / np.sqrt(3)
  assert summary["dispo"]["minus_diffu_grpo"] == pytest.approx((mean, se, mean / se))
  assert summary["dispo"]["accuracy"][0] == pytest.approx(np.mean(finals["dispo"]))
  assert summary["diffu_grpo"]["minus_control"][0] == pytest.approx(0.1)
  assert "minus_diffu_grpo" not in summary["diffu_grpo"]
  assert summary["dispo"]["credit"]["group_zero_adv_frac"] == pytest.approx(0.25)
