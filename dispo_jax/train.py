"""RL training: diffu-GRPO or DiSPO on LLaDA.

  python -m dispo_jax.train --config=configs/sudoku.py:tiny --workdir=/tmp/sudoku_tiny
  python -m dispo_jax.train --config=configs/sudoku.py --workdir=gs://bucket/run \\
      --config.model.checkpoint=/path/to/LLaDA-8B-Instruct --config.rl.alpha_step=0.5

Per step (d1's data flow): rollout with the sampler (DiSPO's branch states drawn from ω(t) first, so
only their logits are cached) → rewards → advantages → old and reference log-probs for μ mask seeds →
μ inner updates → metrics. Every random choice is a function of (seed, step), and the data position
is a function of the step, so a resumed run repeats a straight run exactly.
"""

from __future__ import annotations

import json
import os
import signal
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from absl import app, flags, logging
from flax import nnx
from ml_collections import config_flags
from tqdm import tqdm

from dispo_jax import evaluate as eval_lib
from dispo_jax import tiny as tiny_lib
from dispo_jax.model import checkpoint as hf_io, llada, sharding, tokenizer as tok
from dispo_jax.model.config import LoRAConfig
from dispo_jax.rl import learner, rollout as rollout_lib, timesteps
from dispo_jax.rl.policy import make_policy
from dispo_jax.sampling import SamplerSettings, decode_completions
from dispo_jax.tasks import TASK_NAMES, data as data_lib, get_task, sudoku as sudoku_task


# ----------------------------------------------------------------------------------------------
# Config validation (before any compute)
# ----------------------------------------------------------------------------------------------


def validate_config(c) -> None:
  """Raises ``ValueError`` naming the first bad key of the config."""
  checks = [
      ("task", c.task in TASK_NAMES, f"one of {list(TASK_NAMES)}"),
      ("method", c.method in learner.METHODS, f"one of {list(learner.METHODS)}"),
      ("num_steps", c.num_steps > 0, "> 0"),
      ("optim.learning_rate", c.optim.learning_rate > 0, "> 0"),
      ("optim.grad_clip", c.optim.grad_clip > 0, "> 0"),
      ("rollout.prompts_per_step", c.rollout.prompts_per_step > 0, "> 0"),
      ("rollout.group_size", c.rollout.group_size >= 2, ">= 2 (group-centred advantages)"),
      ("rollout.temperature", c.rollout.temperature >= 0, ">= 0"),
      ("rl.num_iterations", c.rl.num_iterations >= 1, ">= 1"),
      ("rl.epsilon", c.rl.epsilon > 0, "> 0"),
      ("rl.beta", c.rl.beta >= 0, ">= 0"),
      ("rl.p_mask_prompt", 0 <= c.rl.p_mask_prompt < 1, "in [0, 1)"),
      ("rl.alpha_base", c.rl.alpha_base >= 0, ">= 0"),
      ("rl.alpha_step", c.rl.alpha_step >= 0, ">= 0"),
      ("rl.num_branches", c.rl.num_branches >= 2, ">= 2"),
      ("rl.states_per_prompt", 1 <= c.rl.states_per_prompt <= c.rollout.steps,
       "in [1, rollout.steps]"),
      ("rl.timestep_schedule", c.rl.timestep_schedule in timesteps.SCHEDULES,
       f"one of {list(timesteps.SCHEDULES)}"),
      ("rl.branch_advantage", c.rl.branch_advantage in ("mean", "leave_one_out"),
       "'mean' or 'leave_one_out'"),
      ("rl.num_microbatches",
       c.rl.num_microbatches >= 1
       and (c.rollout.prompts_per_step * c.rollout.group_size) % c.rl.num_microbatches == 0,
       "a divisor of prompts_per_step × group_size"),
      ("max_bad_steps", c.max_bad_steps >= 1, ">= 1"),
      ("checkpoint_every", c.checkpoint_every > 0 and c.checkpoint_every % c.rl.num_iterations == 0,
       "a positive multiple of rl.num_iterations (checkpoints fall between rollout batches)"),
      ("max_steps", c.max_steps <= 0 or c.max_steps % c.rl.num_iterations == 0,
       "<= 0 (no cap) or a multiple of rl.num_iterations (a run stops between rollout batches)"),
  ]
  for key, ok, what in checks:
    if not ok:
      value = c
      for part in key.split("."):
        value = value[part]
      raise ValueError(f"config.{key}={value!r} is invalid: must be {what}")
  if c.data.few_shot and (c.task != "sudoku" or not c.model.checkpoint):
    raise ValueError(f"config.data.few_shot={c.data.few_shot!r} is invalid: few-shot prompts are "
                     f"SPG's Sudoku setting (task 'sudoku' with a model.checkpoint)")
  if c.data.few_shot and not 0 < c.data.few_shot <= len(sudoku_task.FEW_SHOT_PUZZLES):
    raise ValueError(f"config.data.few_shot={c.data.few_shot!r} is invalid: must be in "
                     f"[0, {len(sudoku_task.FEW_SHOT_PUZZLES)}]")
  if not c.model.checkpoint and c.task not in tiny_lib.TINY_TASKS:
    raise ValueError(f"config.model.checkpoint is empty and config.task={c.task!r} has no tiny "
                     f"setting ({list(tiny_lib.TINY_TASKS)}): give an HF LLaDA checkpoint")
  try:  # the remaining constraints live with the settings classes
    sampler_settings(c, mask_id=0)
    objective_settings(c, mask_id=0)
    if c.lora.enabled:
      LoRAConfig(rank=c.lora.rank, alpha=c.lora.alpha, dropout=c.lora.dropout,
                 targets=tuple(c.lora.targets))
  except ValueError as e:
    raise ValueError(f"config: {e}") from e


def sampler_settings(c, mask_id: int) -> SamplerSettings:
  return SamplerSettings(gen_length=c.rollout.gen_length, block_length=c.rollout.block_length,
                         steps=c.rollout.steps, temperature=c.rollout.temperature,
                         remasking=c.rollout.remasking, mask_id=mask_id,
                         mask_padding=c.rollout.mask_padding,
                         cache_top_k=c.rollout.cache_top_k or None)


def objective_settings(c, mask_id: int) -> learner.ObjectiveSettings:
  return learner.ObjectiveSettings(
      method=c.method, alpha_base=c.rl.alpha_base, alpha_step=c.rl.alpha_step,
      epsilon_low=c.rl.epsilon, epsilon_high=c.rl.epsilon, beta=c.rl.beta,
      p_mask_prompt=c.rl.p_mask_prompt, step_normaliser=c.rl.step_normaliser,
      base_normaliser=c.rl.base_normaliser, step_ratio=c.rl.step_ratio,
      step_tokens=c.rl.step_tokens,
      spg_num_masks=c.rl.spg.num_masks, spg_block_length=c.rl.spg.block_length,
      spg_negative_bound=c.rl.spg.negative_bound, spg_mix_weight=c.rl.spg.mix_weight,
      spg_eubo_beta=c.rl.spg.eubo_beta, spg_block_choice=c.rl.spg.block_choice,
      trace_segments=c.rl.trace.segments, denoising_steps=c.rollout.steps, mask_id=mask_id)


def rollout_settings(c) -> rollout_lib.RolloutSettings:
  return rollout_lib.RolloutSettings(
      group_size=c.rollout.group_size, num_branches=c.rl.num_branches,
      states_per_prompt=c.rl.states_per_prompt, timestep_schedule=c.rl.timestep_schedule,
      timestep_degree=c.rl.timestep_degree, branch_advantage=c.rl.branch_advantage)


# ----------------------------------------------------------------------------------------------
# Multi-host
# ----------------------------------------------------------------------------------------------


def initialize_distributed() -> None:
  """``jax.distributed.initialize()`` on TPU pods, SLURM GPU clusters or an explicit coordinator;
  a no-op on one host."""
  if jax.distributed.is_initialized():
    return
  env = os.environ
  multi_slurm = int(env.get("SLURM_NTASKS", "1")) > 1
  tpu_pod = len([h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]) > 1
  if env.get("JAX_COORDINATOR_ADDRESS"):
    if env.get("JAX_PLATFORMS", "cpu") == "cpu":  # CPU processes talk through gloo
      jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=env["JAX_COORDINATOR_ADDRESS"],
                               num_processes=int(env["JAX_NUM_PROCESSES"]),
                               process_id=int(env["JAX_PROCESS_ID"]))
  elif multi_slurm or tpu_pod:
    jax.distributed.initialize()  # cluster auto-detection (SLURM, Cloud TPU)


# ----------------------------------------------------------------------------------------------
# Model, data, prompts
# ----------------------------------------------------------------------------------------------


def load_model_and_data(c, workdir: str):
  """``(tokenizer, cfg, graphdef, state, train_rows, eval_rows, prompt_fn, eval_prompt_fn)``."""
  if c.model.checkpoint:
    cfg, graphdef, state = hf_io.load_hf_checkpoint(
        c.model.checkpoint, param_dtype=c.model.param_dtype, compute_dtype=c.model.compute_dtype)
    cfg = cfg.replace(remat=c.model.remat)
    graphdef, state = nnx.split(nnx.merge(*llada.abstract_model(cfg)[:1], state))
    tokenizer = tok.load_tokenizer(c.model.tokenizer or c.model.checkpoint)
    task = get_task(c.task, c.d1_compat)
    if c.task == "sudoku" and not c.data.train_file:
      train_rows, _ = tiny_lib.sudoku_rows(c)
    else:
      if not c.data.train_file:
        raise ValueError(f"config.data.train_file is empty: give a local {c.task} file")
      train_rows = data_lib.load_rows(c.task, c.data.train_file)
    eval_rows = data_lib.load_rows(c.task, c.data.eval_file or None)[: c.eval_rows]
    if c.data.few_shot:  # SPG's Sudoku setting: the same few-shot prompt for training and eval
      prompt = sudoku_task.few_shot_prompt(c.data.few_shot)
      return tokenizer, cfg, graphdef, state, train_rows, eval_rows, prompt, prompt
    return (tokenizer, cfg, graphdef, state, train_rows, eval_rows, task.train_prompt,
            task.eval_prompt)
  tokenizer, cfg, graphdef, state = tiny_lib.prepare_base(c, workdir)
  train_rows, eval_rows = tiny_lib.task_rows(c)
  return (tokenizer, cfg, graphdef, state, train_rows, eval_rows[: c.eval_rows],
          tiny_lib.compact_prompt, tiny_lib.compact_prompt)


def make_params(c, cfg, graphdef, state):
  """``(policy, trainable, frozen)`` with LoRA adapters (reference = base) or full fine-tuning."""
  lora = None
  if c.lora.enabled:
    lora = LoRAConfig(rank=c.lora.rank, alpha=c.lora.alpha, dropout=c.lora.dropout,
                      targets=tuple(c.lora.targets))
  return make_policy(cfg, graphdef, state, lora, seed=c.seed, copy_reference=c.rl.beta > 0)


def prompts_for_step(rows: list, step: int, per_step: int, seed: int) -> list:
  """The rows of optimizer step ``step``: consecutive slices of a per-epoch seeded permutation."""
  out = []
  for position in range(step * per_step, (step + 1) * per_step):
    epoch, offset = divmod(position, len(rows))
    order = np.random.default_rng([seed, epoch]).permutation(len(rows))
    out.append(rows[order[offset]])
  return out


# ----------------------------------------------------------------------------------------------
# Checkpoints and metrics
# ----------------------------------------------------------------------------------------------


def checkpoint_manager(workdir: str, keep: int) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=True)
  return ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), "checkpoints"),
                               options=options)


def save_checkpoint(manager, step: int, trainable, opt_state, meta: dict) -> None:
  manager.save(step, args=ocp.args.Composite(
      trainable=ocp.args.StandardSave(nnx.to_pure_dict(trainable)),
      opt_state=ocp.args.StandardSave(opt_state),
      meta=ocp.args.JsonSave(meta)))


def restore_checkpoint(manager, trainable, opt_state):
  step = manager.latest_step()
  if step is None:
    return None
  abstract = lambda tree: jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)
  restored = manager.restore(step, args=ocp.args.Composite(
      trainable=ocp.args.StandardRestore(abstract(nnx.to_pure_dict(trainable))),
      opt_state=ocp.args.StandardRestore(abstract(opt_state)),
      meta=ocp.args.JsonRestore()))
  nnx.replace_by_pure_dict(trainable, restored["trainable"])
  return step, trainable, restored["opt_state"], restored["meta"]


def _logged_before(row: dict, resume_step: int) -> bool:
  """Whether a metrics row belongs to the run up to checkpoint ``resume_step``: training rows of
  steps before it, and evaluations of the checkpoint itself (logged at ``step == resume_step``)."""
  if row["step"] < resume_step:
    return True
  return row["step"] == resume_step and all(k == "step" or k.startswith("eval/") for k in row)


class MetricWriter:
  """JSONL + TensorBoard from process 0; on resume, drops what was logged after the checkpoint."""

  def __init__(self, workdir: str, resume_step: int):
    self.enabled = jax.process_index() == 0
    self.path = os.path.join(workdir, "metrics.jsonl")
    if not self.enabled:
      return
    if os.path.exists(self.path):
      kept = []
      for line in open(self.path):
        try:
          if _logged_before(json.loads(line), resume_step):
            kept.append(line)
        except (json.JSONDecodeError, KeyError):
          break
      with open(self.path, "w") as f:
        f.writelines(kept)
    from tensorboardX import SummaryWriter
    self.tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def write(self, step: int, metrics: dict) -> None:
    if not self.enabled:
      return
    clean = {k: int(v) if k == "rollout" else float(v) for k, v in metrics.items()
             if np.ndim(v) == 0}
    with open(self.path, "a") as f:
      f.write(json.dumps({"step": step, **clean}) + "\n")
    for k, v in clean.items():
      if np.isfinite(v):
        self.tb.add_scalar(k, v, step)
    self.tb.flush()

  def close(self):
    if self.enabled:
      self.tb.close()


# ----------------------------------------------------------------------------------------------
# The loop
# ----------------------------------------------------------------------------------------------


class _Preempted:
  def __init__(self):
    self.flag = False
    signal.signal(signal.SIGTERM, self._handler)

  def _handler(self, signum, frame):
    logging.warning("SIGTERM: finishing the current step, saving, exiting")
    self.flag = True


def train(c, workdir: str) -> dict[str, Any]:
  """Runs (or resumes) training in ``workdir``; returns the final metrics."""
  validate_config(c)
  initialize_distributed()
  os.makedirs(workdir, exist_ok=True)
  mesh = sharding.make_mesh(c.mesh.data, c.mesh.fsdp, c.mesh.tensor)
  task = get_task(c.task, c.d1_compat)
  (tokenizer, cfg, graphdef, state, train_rows, eval_rows, prompt_fn,
   eval_prompt_fn) = load_model_and_data(c, workdir)
  ids = tok.special_ids(tokenizer)
  policy, trainable, frozen = make_params(c, cfg, graphdef, state)
  trainable = sharding.place(trainable, sharding.state_shardings(trainable, mesh))
  frozen = sharding.place(frozen, sharding.state_shardings(frozen, mesh))

  sampler = sampler_settings(c, cfg.mask_token_id)
  objective = objective_settings(c, cfg.mask_token_id)
  rs = rollout_settings(c)
  optimizer = optax.chain(
      optax.clip_by_global_norm(c.optim.grad_clip),
      optax.adamw(optax.linear_schedule(0.0, c.optim.learning_rate, max(c.optim.warmup_steps, 1))
                  if c.optim.warmup_steps else c.optim.learning_rate,
                  b1=c.optim.b1, b2=c.optim.b2, weight_decay=c.optim.weight_decay))
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  opt_state = jax.jit(optimizer.init)(trainable)
  opt_state = sharding.place(opt_state, [  # moments follow the params; counters are replicated
      x.sharding if isinstance(x.sharding, jax.sharding.NamedSharding) and x.sharding.mesh == mesh
      else replicated for x in jax.tree.leaves(opt_state)])

  manager = checkpoint_manager(workdir, c.keep_checkpoints)
  start_step = 0
  restored = restore_checkpoint(manager, trainable, opt_state)
  if restored is not None:
    start_step, trainable, opt_state, meta = restored
    logging.info("resumed from step %d (%s)", start_step, meta)
  train_shardings = jax.tree.map(lambda x: x.sharding, trainable)
  opt_shardings = jax.tree.map(lambda x: x.sharding, opt_state)

  update = jax.jit(learner.make_update_fn(policy.apply, optimizer, objective,
                                          c.rl.num_microbatches,
                                          lora_dropout=c.lora.enabled and c.lora.dropout > 0),
                   donate_argnums=(0, 2), out_shardings=(train_shardings, opt_shardings, None))
  old_and_ref = jax.jit(lambda params, batch, keys: learner.with_old_and_ref_logprobs(
      policy.apply, policy.apply_reference, params, batch, keys, objective))
  row_sharding = sharding.logical_sharding(mesh, "batch", "length")

  end_step = c.num_steps if c.max_steps <= 0 else min(c.num_steps, start_step + c.max_steps)
  if start_step % c.rl.num_iterations and start_step < c.num_steps:
    raise ValueError(f"{workdir}/checkpoints: the latest checkpoint (step {start_step}) is inside a "
                     f"rollout batch of rl.num_iterations={c.rl.num_iterations} updates; resume needs "
                     f"a checkpoint at a rollout boundary")
  writer = MetricWriter(workdir, start_step)
  preempted = _Preempted()
  base_key = jax.random.key(c.seed)
  bad_steps, metrics = 0, {}

  def run_eval(step):
    result = eval_lib.evaluate_task(
        task, eval_rows, policy.graphdef, policy.model_state((trainable, frozen)), tokenizer,
        gen_length=c.rollout.gen_length, block_length=c.rollout.block_length,
        steps=c.rollout.steps, batch_size=max(1, min(64, len(eval_rows))),
        max_prompt_length=c.rollout.max_prompt_length, mask_id=cfg.mask_token_id,
        eos_id=ids.eos, mask_padding=c.rollout.mask_padding, progress=False,
        prompt_fn=eval_prompt_fn)
    writer.write(step, {"eval/accuracy": result["accuracy"]})
    return result["accuracy"]

  def reward_fn_for(rows, rollout_index):
    shuffle_rng = np.random.default_rng([c.seed, rollout_index]) if c.shuffle_rewards else None

    def reward_fn(completions, prompt_index):
      texts = decode_completions(tokenizer, completions, ids.eos)
      rewards = task.rewards(texts, [rows[i] for i in prompt_index])
      if shuffle_rng is not None:
        rewards = shuffle_within_groups(rewards, prompt_index, shuffle_rng)
      return rewards
    return reward_fn

  def new_rollout_batch(rollout_index):
    """Rollout batch ``rollout_index``: rollout, rewards, old/ref log-probs for its μ updates."""
    rows = prompts_for_step(train_rows, rollout_index, c.rollout.prompts_per_step, c.seed)
    texts = [tok.render_prompt(tokenizer, prompt_fn(r)) for r in rows]
    tokens, lengths = tok.encode_prompts(tokenizer, texts, c.rollout.max_prompt_length, ids.pad)
    key = jax.random.fold_in(base_key, rollout_index)
    roll_key, mask_key, dropout_key = jax.random.split(key, 3)
    batch, rollout_metrics = rollout_lib.collect(
        roll_key, policy.graphdef, policy.model_state((trainable, frozen)), tokens, lengths,
        reward_fn_for(rows, rollout_index), sampler, objective, rs, eos_id=ids.eos,
        row_sharding=row_sharding)
    rollout_metrics.pop("rollout")
    rollout_metrics.pop("rewards")
    mask_keys = jax.random.split(mask_key, c.rl.num_iterations)
    return old_and_ref((trainable, frozen), batch, mask_keys), rollout_metrics, mask_keys, dropout_key

  accuracy_before = None
  if c.eval_every > 0 and start_step == 0:
    accuracy_before = run_eval(0)
  progress = tqdm(range(start_step, end_step), initial=start_step, total=end_step,
                  disable=jax.process_index() != 0, desc=f"{c.method}/{c.task}")
  step = start_step
  rollout_state = None
  for step in progress:
    start = time.perf_counter()
    rollout_index, iteration = divmod(step, c.rl.num_iterations)
    if iteration == 0:
      rollout_state = new_rollout_batch(rollout_index)
    batch, rollout_metrics, mask_keys, dropout_key = rollout_state
    trainable, opt_state, m = update(trainable, frozen, opt_state, batch, iteration,
                                     mask_keys[iteration], jax.random.fold_in(dropout_key, iteration))
    m = jax.device_get(m)
    skipped = float(m["skipped"])
    metrics = {"rollout": rollout_index, **rollout_metrics,
               **{name: float(value) for name, value in m.items()}}
    metrics["skipped_updates"] = skipped
    metrics["step_seconds"] = time.perf_counter() - start
    bad_steps = bad_steps + 1 if skipped else 0
    writer.write(step, metrics)
    progress.set_postfix({"reward": f"{metrics['reward_mean']:.3f}", **{
        name: f"{metrics[key]:.4f}" for name, key in (("kl", "base/kl"), ("clip", "base/clip_frac"),
                                                      ("elbo", "base/elbo")) if key in metrics}})
    if bad_steps >= c.max_bad_steps:
      manager.wait_until_finished()
      raise RuntimeError(
          f"{bad_steps} consecutive steps had non-finite losses or gradients (last at step "
          f"{step}); stopping. The last good checkpoint (step {manager.latest_step()}) is intact in "
          f"{workdir}/checkpoints")
    done = step + 1
    if c.eval_every > 0 and (done % c.eval_every == 0 or done == c.num_steps):
      metrics["eval/accuracy"] = run_eval(done)
    at_boundary = done % c.rl.num_iterations == 0 or done == c.num_steps
    if at_boundary and (done % c.checkpoint_every == 0 or preempted.flag or done == end_step):
      if not skipped:
        rollouts_done = -(-done // c.rl.num_iterations)
        save_checkpoint(manager, done, trainable, opt_state,
                        {"step": done, "rollout": rollouts_done, "seed": c.seed,
                         "data_position": rollouts_done * c.rollout.prompts_per_step})
    if preempted.flag and at_boundary:
      break
  manager.wait_until_finished()
  writer.close()
  if jax.process_index() == 0 and "eval/accuracy" in metrics:
    print(summary_table(c, accuracy_before, metrics["eval/accuracy"], start_step, step + 1,
                        len(eval_rows)))
  if c.export_hf and step + 1 >= c.num_steps and not preempted.flag:
    export_dir = os.path.join(workdir, "export")
    merged = llada.merge_model(policy.graphdef, policy.model_state((trainable, frozen)))
    hf_io.export_hf_checkpoint(cfg, merged_base_state(merged), export_dir,
                               dtype=cfg.param_dtype)
    tokenizer.save_pretrained(export_dir)
  return metrics


def shuffle_within_groups(rewards, prompt_index, rng: np.random.Generator) -> np.ndarray:
  """The no-signal control (docs/RESULTS.md): rewards permuted among the entries of each prompt,
  so the update keeps its size and the advantages their distribution but carry no information."""
  rewards = np.array(rewards, dtype=np.float32)
  prompt_index = np.asarray(prompt_index)
  for p in np.unique(prompt_index):
    where = np.flatnonzero(prompt_index == p)
    rewards[where] = rewards[rng.permutation(where)]
  return rewards


def summary_table(c, before: float | None, after: float, first: int, last: int, n: int) -> str:
  metric = "cell accuracy" if c.task == "sudoku" else "accuracy"
  before_text = "n/a (resumed)" if before is None else f"{before:.3f}"
  return (f"\n{c.method} on {c.task}: held-out {metric} over {n} rows (greedy, "
          f"{c.rollout.steps} steps)\n"
          f"  {'before RL (step ' + str(first) + ')':28s} {before_text}\n"
          f"  {'after RL (step ' + str(last) + ')':28s} {after:.3f}\n")


def merged_base_state(model: llada.LLaDA) -> nnx.State:
  """Base weights with LoRA folded in: ``W + scale · A @ B`` for every adapted projection."""
  for _, module in nnx.iter_modules(model):
    if isinstance(module, llada.Linear) and module.has_lora:
      delta = module.lora_scale * (module.lora_a[...] @ module.lora_b[...])
      module.kernel[...] = (module.kernel[...].astype(jnp.float32) + delta).astype(
          module.kernel[...].dtype)
  _, _, base = nnx.split(model, llada.LoRAParam, ...)
  return base


FLAGS = flags.FLAGS


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # orbax logs every file operation at INFO
  train(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
  config_flags.DEFINE_config_file("config", "configs/sudoku.py:tiny",
                                  "Training config file (configs/<task>.py[:tiny]).",
                                  lock_config=True)
  flags.DEFINE_string("workdir", "/tmp/dispo_jax_run", "Work folder (checkpoints, metrics).")
  app.run(main)
