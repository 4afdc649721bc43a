"""Tasks: prompts, rewards, parsers, metrics and datasets. The RL core never imports this package;
training wires a task's reward into a plain function."""

from __future__ import annotations

import dataclasses

from dispo_jax.tasks import countdown, gsm8k, math500, sudoku
from dispo_jax.tasks.base import DataSettings, Score, Task, TinySetting, metric
from dispo_jax.tasks.tiny import TINY_SETTINGS

_FACTORIES = {
    "sudoku": sudoku.make_task,
    "countdown": countdown.make_task,
    "gsm8k": gsm8k.make_task,
    "math500": math500.make_task,
}
TASK_NAMES = tuple(_FACTORIES)


# Rewards a task offers besides its default (d1's): config key ``reward``.
TASK_REWARDS = {"sudoku": sudoku.REWARDS}


def get_task(name: str, d1_compat: bool = False, reward: str = "default") -> Task:
  """The task ``name`` with its tiny setting; ``d1_compat=True`` reproduces d1's reward bugs
  exactly (see each module); ``reward`` picks one of :data:`TASK_REWARDS` (``"default"``: d1's)."""
  if name not in _FACTORIES:
    raise KeyError(f"unknown task {name!r}; choose one of {list(TASK_NAMES)}")
  if reward == "default":
    task = _FACTORIES[name](d1_compat)
  elif reward in TASK_REWARDS.get(name, ()):
    task = _FACTORIES[name](d1_compat, reward_name=reward)
  else:
    raise KeyError(f"unknown reward {reward!r} for task {name}; choose one of "
                   f"{['default', *TASK_REWARDS.get(name, ())]}")
  return dataclasses.replace(task, tiny=TINY_SETTINGS.get(name))


__all__ = ["DataSettings", "Score", "TASK_NAMES", "TASK_REWARDS", "Task", "TinySetting", "get_task",
           "metric"]
