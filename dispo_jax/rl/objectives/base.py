"""The interface of a terminal-reward objective, its registry, and how a method name composes one
with DiSPO's fixed-state term.

An objective is the base term ``L_base`` of ``L = α_base·L_base + α_state·L_state``: it scores the
K completions of each prompt against their terminal advantages. It answers four questions, one
method each, and nothing else in the learner or the rollout branches on which objective runs:

* what it needs replayed (:attr:`Objective.replays_logprobs`: old and reference log-probs
  ``[μ, N, G]`` computed once per rollout batch, or nothing for a ratio-free objective);
* its row weights (:meth:`Objective.row_weights`: the ``RLBatch`` fields of its normaliser,
  computed on the whole batch at rollout time so micro-batching never changes them);
* its log-probs (:meth:`Objective.logprobs`, ``[N, G]``);
* its loss (:meth:`Objective.loss`).

Adding one is one file and one registration::

  @register_objective("reinforce")
  class Reinforce(Objective):
    replays_logprobs = False
    def loss(self, apply, batch, replay, key, s): ...

after which ``method=reinforce`` trains it and ``method=dispo_reinforce`` adds DiSPO's term.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Dict, Iterator

import jax

from dispo_jax.registry import Registry
from dispo_jax.rl import behaviour as behaviour_lib
from dispo_jax.rl import losses as losses_lib
from dispo_jax.rl.batch import ReplayLogprobs, RLBatch
from dispo_jax.rl.logprobs import Apply

if TYPE_CHECKING:
  from dispo_jax.rl.learner import ObjectiveSettings

Array = jax.Array
STATE_TERM_PREFIX = "dispo_"


def base_key(key: Array) -> Array:
  """The mask key of the base term (DiSPO's state term folds in 1)."""
  return jax.random.fold_in(key, 0)


class Objective:
  """A terminal-reward objective. Subclass, override what differs, and register an instance.

  The defaults are a ratio objective scored with the clipped token loss of
  :mod:`dispo_jax.rl.losses` (``s.base_loss``, diffu-GRPO's by default), the behaviour policy's
  importance weights and d1's per-group token normaliser; a subclass that keeps them only
  provides :meth:`logprobs`.
  """

  name: str = ""
  replays_logprobs: bool = True

  def problems(self, s: "ObjectiveSettings") -> Iterator[str]:
    """One line per setting this objective cannot run with (empty: it can)."""
    return iter(())

  def row_weights(self, completion_mask: Array, group_size: int, s: "ObjectiveSettings"
                  ) -> Dict[str, Array]:
    """``RLBatch`` fields of this objective's normaliser (``[N]`` float32 each), from the whole
    batch's ``completion_mask [N, G]`` bool."""
    return {"base_row_weights": losses_lib.base_row_weights(completion_mask, group_size,
                                                            s.base_normaliser)}

  def logprobs(self, apply: Apply, batch: RLBatch, key: Array, s: "ObjectiveSettings") -> Array:
    """``[N, G]`` float32 log-probs of the completion tokens under ``apply`` with mask key
    ``key`` (the same key gives the same masks for the old, reference and current policy)."""
    raise NotImplementedError(f"objective {self.name!r} replays log-probs but defines none")

  def loss(self, apply: Apply, batch: RLBatch, replay: ReplayLogprobs, key: Array,
           s: "ObjectiveSettings") -> tuple[Array, Dict[str, Array]]:
    """``(loss, diagnostics)`` of one inner iteration: ``replay`` holds its ``[N, ...]`` slices."""
    weights = importance_weights(batch, replay, s)
    return losses_lib.get_loss(s.base_loss or "diffu_grpo")(
        self.logprobs(apply, batch, key, s), replay.base_old, replay.base_ref, batch.advantages,
        batch.completion_mask, epsilon_low=s.epsilon_low, epsilon_high=s.epsilon_high,
        beta=s.beta, row_weights=batch.base_row_weights,
        **({} if weights is None else {"token_weights": weights}))


def importance_weights(batch: RLBatch, replay: ReplayLogprobs, s: "ObjectiveSettings"
                       ) -> Array | None:
  """``[N, G]`` truncated importance weights of the base term (None when off); see
  :mod:`dispo_jax.rl.behaviour`."""
  kind = s.importance_weight
  if kind == "none":
    return None
  if batch.behaviour_logp is None or replay.base_old is None:
    raise ValueError(f"behaviour.weight={kind!r} needs RLBatch.behaviour_logp and the replayed "
                     f"old log-probs")
  return behaviour_lib.importance_weights(replay.base_old, batch.behaviour_logp,
                                          batch.completion_mask, kind, s.behaviour.cap)


OBJECTIVES: Registry[Objective] = Registry("objective")


def register_objective(name: str):
  """Class decorator: registers an instance of the decorated :class:`Objective` as ``name``."""
  def wrap(cls):
    instance = cls()
    instance.name = name
    OBJECTIVES.register(name)(instance)
    return cls
  return wrap


def parse_method(method: str) -> tuple[str, bool]:
  """``method -> (objective name, whether DiSPO's fixed-state term is added)``: ``dispo`` is
  diffu-GRPO with the term, ``dispo_<name>`` objective ``<name>`` with it, any other name the
  objective alone. ``ValueError`` naming the registered methods for an unknown one."""
  if method == "dispo":
    name, state_term = "diffu_grpo", True
  elif method.startswith(STATE_TERM_PREFIX):
    name, state_term = method[len(STATE_TERM_PREFIX):], True
  else:
    name, state_term = method, False
  if name not in OBJECTIVES:
    raise ValueError(f"method={method!r} is not one of {method_names()}")
  return name, state_term


def method_names() -> list[str]:
  """Every method name: each registered objective alone and with DiSPO's term."""
  names = [n for n in OBJECTIVES]
  return ["dispo"] + sorted(names + [STATE_TERM_PREFIX + n for n in names if n != "diffu_grpo"])
