"""pipeline.step: the one set-up of RL training, and updates that compile once."""

import jax
import numpy as np

from dispo_jax import pipeline
from dispo_jax.model import llada
from dispo_jax.model.config import LoRAConfig, get_config
from dispo_jax.rl import learner
from dispo_jax.rl.optimizer import OptimizerSettings, make_optimizer
from dispo_jax.sampling import SamplerSettings


def _reward(completions, prompt_index):
  return (np.asarray(completions) % 3 == 0).mean(-1)


def test_the_set_up_state_runs_every_rollout_batch_on_one_compiled_update():
  """The step-0 state is committed where the update's outputs land, so the second rollout batch
  reuses the first one's compiled update and replay (an uncommitted state recompiled both, and
  a benchmark timing the second step measured the compile)."""
  cfg = get_config("tiny", vocab_size=32, d_model=32, n_layers=1, n_heads=2, mlp_hidden_size=64)
  graphdef, state = llada.init_model(cfg, seed=0)
  sampler = SamplerSettings(gen_length=8, block_length=8, num_timesteps=4, mask_id=cfg.mask_token_id)
  settings = pipeline.CollectSettings(
      sampler, learner.ObjectiveSettings(method="dispo", mask_id=cfg.mask_token_id,
                                         num_iterations=2, num_timesteps=4),
      pipeline.RolloutSettings(prompts_per_batch=2, group_size=2), cfg.eos_token_id)
  fns, train_state = pipeline.setup_step(cfg, graphdef, state, settings,
                                         make_optimizer(OptimizerSettings()),
                                         LoRAConfig(rank=4, alpha=8, dropout=0.0))
  prompts, lengths = np.ones((2, 3), np.int32), np.full((2,), 3, np.int32)
  for seed in range(3):
    train_state, rows = pipeline.rollout_and_update(fns, train_state, prompts, lengths, _reward,
                                         jax.random.key(seed))
  assert train_state.step == 6 and len(rows) == 2
  assert fns.update._cache_size() == 1 and fns.replay._cache_size() == 1
