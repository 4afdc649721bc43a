"""LLaDA in Flax NNX, its checkpoint I/O, tokenizer and sharding rules."""

from dispo_jax.model.config import PRESETS, LLaDAConfig, get_config
from dispo_jax.model.llada import (LLaDA, abstract_model, count_params, forward, hidden_states,
                                   init_model, lm_head)

__all__ = ["PRESETS", "LLaDA", "LLaDAConfig", "abstract_model", "count_params", "forward",
           "get_config", "hidden_states", "init_model", "lm_head"]
