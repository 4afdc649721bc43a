"""Terminal-reward objectives as registered objects (one file each) and DiSPO's fixed-state term.

:mod:`dispo_jax.rl.objectives.base` holds the interface and explains how to add one; importing
this package registers the built-ins: ``diffu_grpo``, ``trace`` and ``spg``.
"""

from dispo_jax.rl.objectives import diffu_grpo, spg, state_term, trace  # noqa: F401 (registers)
from dispo_jax.rl.objectives.base import (OBJECTIVES, Objective, importance_weights, method_names,
                                          parse_method, register_objective)

__all__ = ["OBJECTIVES", "Objective", "diffu_grpo", "importance_weights", "method_names",
           "parse_method", "register_objective", "spg", "state_term", "trace"]
