"""RL objectives: surrogate log-probs, advantages, losses, the timestep sampler, diagnostics.

Pure, jittable functions. Rewards arrive as plain arrays: nothing here imports a task.
"""

from dispo_jax.rl.advantages import ADVANTAGES, get_advantage, group_advantages, register_advantage
from dispo_jax.rl.diagnostics import branch_diagnostics, group_diagnostics
from dispo_jax.rl.logprobs import (canvas_logprobs, prompt_mask, surrogate_logprobs,
                                   token_logprobs)
from dispo_jax.rl.losses import (LOSSES, base_row_weights, branch_mask, combine_losses,
                                 diffu_grpo_loss, state_term_loss, get_loss, k3_kl, log_ratio_stats,
                                 register_loss,
                                 state_row_weights)
from dispo_jax.rl.objectives.spg import block_masks, elbo, eubo, sequence_logp, sequence_weights
from dispo_jax.rl.timesteps import sample_branch_timesteps, timestep_bins, timestep_weights

__all__ = ["ADVANTAGES", "LOSSES", "base_row_weights", "block_masks", "branch_diagnostics",
           "branch_mask", "canvas_logprobs",
           "combine_losses", "diffu_grpo_loss", "state_term_loss", "elbo", "eubo", "get_advantage",
           "get_loss", "group_advantages", "group_diagnostics", "k3_kl", "log_ratio_stats", "prompt_mask",
           "register_advantage", "register_loss", "sample_branch_timesteps", "sequence_logp",
           "sequence_weights", "state_row_weights", "surrogate_logprobs", "timestep_bins", "timestep_weights",
           "token_logprobs"]
