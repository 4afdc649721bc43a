"""The thin host-side pipeline between ``rl/`` and the CLIs: rollout, rewards, advantages.

``rl/`` stays pure and jittable; here live the host calls (decoding completions, scoring them with a
task's reward functions) and the assembly of an :class:`dispo_jax.rl.batch.RLBatch`.
"""

from dispo_jax.pipeline.rewards import make_reward_fn, prompts_for_batch, shuffle_within_groups
from dispo_jax.pipeline.rollout import CollectSettings, RolloutSettings, collect
from dispo_jax.pipeline.step import (StepFunctions, TrainState, make_step_functions,
                                     rollout_and_update, setup_step)

__all__ = ["CollectSettings", "RolloutSettings", "StepFunctions", "TrainState",
           "collect", "make_reward_fn", "make_step_functions", "prompts_for_batch",
           "rollout_and_update", "setup_step", "shuffle_within_groups"]
