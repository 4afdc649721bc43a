"""The denoising sampler, the branch-state cache and DiSPO's branching resampler."""

from dispo_jax.sampling.branching import sample_branches, sample_rollout_branches
from dispo_jax.sampling.decoding import completion_mask, decode_completions
from dispo_jax.sampling.sampler import (Rollout, SamplerSettings, action_logits, generate,
                                        gumbel_argmax)

__all__ = ["Rollout", "SamplerSettings", "action_logits", "completion_mask",
           "decode_completions", "generate", "gumbel_argmax", "sample_branches",
           "sample_rollout_branches"]
