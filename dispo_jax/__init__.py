"""dispo_jax: DiSPO (Diffusion-State Policy Optimization) on a JAX/Flax port of LLaDA.

Layers (imports point one way):
  model/     LLaDA in Flax NNX, HF checkpoint I/O, tokenizer, sharding rules
  sampling/  the one-jit denoising loop, branch-state logit cache, branching resampler
  rl/        surrogate log-probs, advantages, losses, the learner (pure and jittable)
  pipeline/  rollout + host-side rewards -> RLBatch; a rollout batch and its updates on a TrainState
  train.py, evaluate.py   the CLIs: config, mesh, loop, checkpoints, metrics
  tasks/     prompts, rewards, parsers, metrics, datasets, tiny settings (never imported by rl/)
"""

__version__ = "0.1.0"
