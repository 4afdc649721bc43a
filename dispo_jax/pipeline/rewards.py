"""Host-side rewards and the data order of a run.

A reward function here is ``reward_fn(completions [R, G] int, prompt_index [R] int) -> [R] float``:
it decodes and scores; the RL core only ever sees the array it returns.
"""

from __future__ import annotations

from typing import Callable, Protocol, Sequence

import numpy as np

RewardFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


class ScoresCompletions(Protocol):
  """What the pipeline needs of a task (:class:`dispo_jax.tasks.base.Task` provides it)."""

  def rewards(self, texts: Sequence[str], rows: Sequence[dict]) -> np.ndarray:
    ...


def shuffle_within_groups(rewards, prompt_index, rng: np.random.Generator) -> np.ndarray:
  """The no-signal control (docs/RESULTS.md): rewards permuted among the entries of each prompt,
  so the update keeps its size and the advantages their distribution but carry no information."""
  rewards = np.array(rewards, dtype=np.float32)
  prompt_index = np.asarray(prompt_index)
  for p in np.unique(prompt_index):
    where = np.flatnonzero(prompt_index == p)
    rewards[where] = rewards[rng.permutation(where)]
  return rewards


def make_reward_fn(task: ScoresCompletions, decode: Callable[[np.ndarray], list],
                   rows: Sequence[dict], shuffle_rng: np.random.Generator | None = None
                   ) -> RewardFn:
  """Scores completions of ``rows``: ``decode`` turns ``[R, G]`` token ids into texts, the task
  scores each against its row; ``shuffle_rng`` makes it the shuffled-reward control."""

  def reward_fn(completions: np.ndarray, prompt_index: np.ndarray) -> np.ndarray:
    rewards = task.rewards(decode(completions), [rows[i] for i in prompt_index])
    if shuffle_rng is not None:
      rewards = shuffle_within_groups(rewards, prompt_index, shuffle_rng)
    return rewards
  return reward_fn


def prompts_for_batch(rows: list, rollout_index: int, per_batch: int, seed: int) -> list:
  """The rows of rollout batch ``rollout_index``: consecutive slices of a per-epoch seeded
  permutation."""
  out = []
  for position in range(rollout_index * per_batch, (rollout_index + 1) * per_batch):
    epoch, offset = divmod(position, len(rows))
    order = np.random.default_rng([seed, epoch]).permutation(len(rows))
    out.append(rows[order[offset]])
  return out
