"""RL training: diffu-GRPO, DiSPO, SPG or the trace surrogate on LLaDA.

  python -m dispo_jax.train                      # the tiny CPU setting (configs/sudoku.py:tiny)
  python -m dispo_jax.train --config=configs/sudoku.py --workdir=gs://bucket/run \\
      --config.model.checkpoint=/path/to/LLaDA-8B-Instruct --config.rl.alpha_state=0.5

``setup`` builds a :class:`Run` and the first :class:`TrainState` (or resumes one); ``train_loop``
runs :func:`dispo_jax.pipeline.rollout_and_update` once per rollout batch (μ optimizer updates each) and
evaluates, checkpoints and logs between them. Every random choice is a function of (seed, rollout
index, iteration) and the data position a function of the rollout index, so a resumed run repeats
a straight run exactly.
"""

from __future__ import annotations

import dataclasses
import errno
import importlib.util
import os
import sys
from typing import Any, Callable

import jax
import numpy as np
from absl import app, flags, logging
from etils import epath
from tqdm import tqdm

from dispo_jax import evaluate as eval_lib, tiny_base as tiny_lib
from dispo_jax.run import checkpoints, config as config_lib, export as export_lib
from dispo_jax.run.distributed import Preemption, initialize_distributed
from dispo_jax.run import workdir as workdir_lib
from dispo_jax.run.config import ConfigError, LoopSettings, settings_from
from dispo_jax.run.metrics import MetricWriter, read_rows
from dispo_jax.model import checkpoint as hf_io, sharding, tokenizer as tok
from dispo_jax.model.config import LLADA_MASK_ID, LoRAConfig
from dispo_jax.pipeline import (CollectSettings, RolloutSettings, StepFunctions, TrainState,
                                make_reward_fn, prompts_for_batch, rollout_and_update, setup_step,
                                shuffle_within_groups)
from dispo_jax.rl import learner, objectives
from dispo_jax.rl.optimizer import OptimizerSettings, make_optimizer
from dispo_jax.sampling import SamplerSettings, decode_completions
from dispo_jax.tasks import (TASK_NAMES, TASK_REWARDS, DataSettings, Task, data as data_lib,
                             get_task, sudoku)

__all__ = ["Run", "RunSettings", "TrainState", "run_settings", "setup", "shuffle_within_groups",
           "train", "train_loop", "validate_config"]


# ----------------------------------------------------------------------------------------------
# Settings: one dataclass per config section
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RunSettings:
  """The config's sections as settings dataclasses (``settings_from`` builds each directly) and
  its top-level keys (``loop``)."""

  loop: LoopSettings
  sampler: SamplerSettings
  rollout: RolloutSettings
  objective: learner.ObjectiveSettings
  optim: OptimizerSettings
  lora: LoRAConfig | None
  data: DataSettings
  base: tiny_lib.BaseSettings


def run_settings(c, mask_id: int = LLADA_MASK_ID) -> RunSettings:
  """Every section of config ``c`` as its dataclass; raises :class:`ConfigError` naming the key."""
  sampler = settings_from(SamplerSettings, c.sampler, "sampler", mask_id=mask_id)
  if c.method not in objectives.method_names():
    raise ConfigError(f"config.method={c.method!r} is invalid: must be one of "
                      f"{objectives.method_names()}")
  return RunSettings(
      loop=LoopSettings(**{f.name: c[f.name] for f in dataclasses.fields(LoopSettings)}),
      sampler=sampler,
      rollout=settings_from(RolloutSettings, c.rollout, "rollout"),
      objective=settings_from(learner.ObjectiveSettings, c.rl, "rl", method=c.method,
                              num_timesteps=sampler.max_timesteps, mask_id=mask_id,
                              approximate_sampler=sampler.approximate),
      optim=settings_from(OptimizerSettings, c.optim, "optim"),
      lora=(settings_from(LoRAConfig, c.lora, "lora", exclude=("enabled",))
            if c.lora.enabled else None),
      data=settings_from(DataSettings, c.data, "data"),
      base=settings_from(tiny_lib.BaseSettings, c.base, "base"))


def base_spec(c) -> tiny_lib.BaseSpec:
  """The tiny base config ``c`` starts from: its task's SFT rows, model shape and SFT settings."""
  return tiny_lib.BaseSpec(task=c.task, data=settings_from(DataSettings, c.data, "data"),
                           base=settings_from(tiny_lib.BaseSettings, c.base, "base"),
                           preset=c.model.preset, overrides=c.model.overrides.to_dict(),
                           max_prompt_length=c.rollout.max_prompt_length,
                           gen_length=c.sampler.gen_length)


def validate_config(c) -> RunSettings:
  """Every check that needs no model or data; raises :class:`ConfigError` naming the key."""
  if not isinstance(c.rl.num_iterations, int) or c.rl.num_iterations < 1:
    raise ConfigError(f"config.rl.num_iterations={c.rl.num_iterations!r} is invalid: must be >= 1 "
                      f"(optimizer updates per rollout batch)")
  mu = c.rl.num_iterations
  checks = [
      ("task", c.task in TASK_NAMES, f"one of {list(TASK_NAMES)}"),
      ("reward", c.reward == "default" or c.reward in TASK_REWARDS.get(c.task, ()),
       f"'default' or one of {list(TASK_REWARDS.get(c.task, ()))} for task {c.task}"),
      ("seed", c.seed >= 0, ">= 0"),
      ("num_steps", c.num_steps > 0, "> 0"),
      ("max_bad_steps", c.max_bad_steps >= 1, ">= 1"),
      ("keep_checkpoints", c.keep_checkpoints >= 1, ">= 1 (0 would delete every checkpoint)"),
      ("eval_rows", c.eval_rows >= 1, ">= 1"),
      ("distributed_timeout_s", c.distributed_timeout_s > 0, "> 0 seconds"),
      ("checkpoint_every", c.checkpoint_every >= 1 and c.checkpoint_every % mu == 0,
       "a positive multiple of rl.num_iterations (checkpoints fall between rollout batches)"),
      ("max_steps", c.max_steps <= 0 or c.max_steps % mu == 0,
       "<= 0 (no cap) or a multiple of rl.num_iterations (a run stops between rollout batches)"),
  ]
  for key, ok, what in checks:
    if not ok:
      raise ConfigError(f"config.{key}={c[key]!r} is invalid: must be {what}")

  if c.wandb_project and importlib.util.find_spec("wandb") is None:
    raise ConfigError(f"config.wandb_project={c.wandb_project!r} needs Weights & Biases: "
                      f"pip install 'dispo_jax[wandb]'")
  _validate_model(c)
  s = run_settings(c)
  rows = s.rollout.prompts_per_batch * s.rollout.group_size
  if rows % s.objective.num_microbatches:
    raise ConfigError(f"config.rl.num_microbatches={s.objective.num_microbatches} is invalid: "
                      f"must divide rollout.prompts_per_batch × rollout.group_size = {rows}")
  if s.sampler.allow_mask_action:
    raise ConfigError("config.sampler.allow_mask_action=True is invalid for training: a MASK kept "
                      "in a completion is outside the policy's action space (its log-prob is "
                      "-inf, its ratio NaN); it is for reproducing LLaDA's generate only")
  if s.rollout.states_per_prompt > s.sampler.num_timesteps:
    raise ConfigError(f"config.rollout.states_per_prompt={s.rollout.states_per_prompt} is "
                      f"invalid: must be <= sampler.num_timesteps={s.sampler.num_timesteps}")
  _validate_data(c, s.data)
  return s


LLADA_HUB_ID = "GSAI-ML/LLaDA-8B-Instruct"


def _validate_model(c) -> None:
  if c.model.checkpoint and c.model.preset:
    raise ConfigError(f"config.model.preset={c.model.preset!r} is invalid with a "
                      f"model.checkpoint: the checkpoint's config.json defines the model; clear one")
  if not c.model.checkpoint and c.model.preset != "tiny":
    raise ConfigError(
        f"config.model.checkpoint is empty: the {c.task} recipe trains an HF LLaDA folder; "
        f"download {LLADA_HUB_ID} (hf download {LLADA_HUB_ID} --local-dir LLaDA-8B-Instruct; "
        f"huggingface-cli download with huggingface_hub < 1.0) and pass "
        f"--config.model.checkpoint=LLaDA-8B-Instruct, or run the CPU setting with "
        f"--config={c.task}:tiny")
  if c.model.preset == "tiny" and c.base.steps < 1:
    raise ConfigError(f"config.base.steps={c.base.steps!r} is invalid with model.preset='tiny': "
                      f"the tiny setting SFTs its base model here (>= 1 step)")
  if c.model.checkpoint and not os.path.isfile(os.path.join(c.model.checkpoint, hf_io.CONFIG_FILE)):
    raise ConfigError(f"config.model.checkpoint={c.model.checkpoint!r} is not an HF LLaDA folder: "
                      f"it has no {hf_io.CONFIG_FILE}")


def _validate_data(c, data: DataSettings) -> None:
  if data.few_shot and (c.task != "sudoku" or not c.model.checkpoint):
    raise ConfigError(f"config.data.few_shot={data.few_shot!r} is invalid: few-shot prompts are "
                      f"SPG's Sudoku setting (task 'sudoku' with a model.checkpoint)")
  if data.few_shot > len(sudoku.FEW_SHOT_PUZZLES):
    raise ConfigError(f"config.data.few_shot={data.few_shot!r} is invalid: must be in "
                      f"[0, {len(sudoku.FEW_SHOT_PUZZLES)}]")
  if not c.model.checkpoint and (data.train_file or data.eval_file):
    raise ConfigError("config.data.train_file / eval_file are set but the tiny setting (no "
                      "model.checkpoint) generates its rows; give a model.checkpoint or clear them")


# ----------------------------------------------------------------------------------------------
# Setup
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass
class ModelAndData:
  """What :func:`load_model_and_data` returns."""

  tokenizer: Any
  cfg: Any
  graphdef: Any
  state: Any
  train_rows: list
  eval_rows: list
  prompt_fn: Callable[[dict], str]
  eval_prompt_fn: Callable[[dict], str]


def load_model_and_data(c, task: Task, data: DataSettings, mesh) -> ModelAndData:
  """An HF LLaDA checkpoint (read straight into its shardings on ``mesh``) with the task's real
  data, or the tiny setting's cached base."""
  if not c.model.checkpoint:
    tokenizer, cfg, graphdef, state = tiny_lib.prepare_base(base_spec(c))
    train_rows, eval_rows = task.tiny.rows(data)
    return ModelAndData(tokenizer, cfg, graphdef, state, train_rows, eval_rows[: c.eval_rows],
                        task.tiny.prompt, task.tiny.prompt)
  cfg, graphdef, state = hf_io.load_hf_checkpoint(
      c.model.checkpoint, mesh, param_dtype=c.model.param_dtype,
      compute_dtype=c.model.compute_dtype, remat=c.model.remat)
  tokenizer = tok.load_tokenizer(c.model.tokenizer or c.model.checkpoint)
  if len(tokenizer) > cfg.vocab_size:
    raise ConfigError(f"config.model.tokenizer: {len(tokenizer)} tokens do not fit the model's "
                      f"vocab_size {cfg.vocab_size} ({c.model.checkpoint})")
  if c.task == "sudoku" and not data.train_file:
    train_rows = task.tiny.rows(data)[0]  # generated puzzles on the non-test grids
  elif not data.train_file:
    raise ConfigError(f"config.data.train_file is empty: give a local {c.task} file")
  else:
    train_rows = data_lib.load_rows(c.task, data.train_file)
  eval_rows = data_lib.load_rows(c.task, data.eval_file or None)[: c.eval_rows]
  prompt, eval_prompt = task.train_prompt, task.eval_prompt
  if data.few_shot:  # SPG's Sudoku setting: the same few-shot prompt for training and eval
    prompt = eval_prompt = sudoku.few_shot_prompt(data.few_shot)
  return ModelAndData(tokenizer, cfg, graphdef, state, train_rows, eval_rows, prompt, eval_prompt)


@dataclasses.dataclass
class Run:
  """Everything a training loop needs besides the :class:`TrainState`."""

  c: Any
  workdir: str
  settings: RunSettings
  task: Task
  md: ModelAndData
  ids: tok.SpecialIds
  fns: StepFunctions
  manager: Any
  writer: MetricWriter
  preempted: "Preemption"
  mesh: Any = None
  warned_truncation: bool = False


def setup(c, workdir: str, preempted: "Preemption | None" = None) -> tuple[Run, TrainState]:
  """Validates, claims the folder, loads model and data, builds the step and restores."""
  s = validate_config(c)
  initialize_distributed(c.distributed_timeout_s)
  epath.Path(workdir).mkdir(parents=True, exist_ok=True)
  resuming = workdir_lib.record_or_check_config(workdir, c, write=jax.process_index() == 0)
  mesh = sharding.make_mesh(c.mesh.data, c.mesh.fsdp, c.mesh.tensor)
  task = get_task(c.task, c.d1_compat, c.reward)
  md = load_model_and_data(c, task, s.data, mesh)
  s = run_settings(c, mask_id=md.cfg.mask_token_id)
  ids = tok.special_ids(md.tokenizer)
  fns, state = setup_step(
      md.cfg, md.graphdef, md.state, CollectSettings(s.sampler, s.objective, s.rollout, ids.eos),
      make_optimizer(s.optim), s.lora, mesh=mesh, seed=s.loop.seed,
      copy_reference=s.objective.beta > 0,
      row_sharding=sharding.logical_sharding(mesh, "batch", "length"))
  manager, state, meta = checkpoints.restore_latest(workdir, s.loop.keep_checkpoints, state)
  if state.step % s.objective.num_iterations and state.step < s.loop.num_steps:
    raise ValueError(f"{workdir}/checkpoints: the latest checkpoint (step {state.step}) is inside "
                     f"a rollout batch of rl.num_iterations={s.objective.num_iterations} updates; "
                     f"resume needs a checkpoint at a rollout boundary")
  if jax.process_index() == 0 and (meta is not None or resuming):
    print(f"resuming {workdir} from step {state.step} of {s.loop.end_step}", flush=True)
  writer = MetricWriter(workdir, state.step, s.loop.wandb_project, c.to_dict())
  run = Run(c, workdir, s, task, md, ids, fns, manager, writer, preempted or Preemption(), mesh)
  return run, state


# ----------------------------------------------------------------------------------------------
# The loop
# ----------------------------------------------------------------------------------------------


def evaluate(run: Run, state: TrainState, step: int) -> float:
  md, sampler = run.md, run.settings.sampler
  result = eval_lib.evaluate_task(
      run.task, md.eval_rows, run.fns.policy.graphdef, run.fns.policy.model_state(state.params),
      md.tokenizer, gen_length=sampler.gen_length, block_length=sampler.block_length,
      num_timesteps=sampler.num_timesteps, batch_size=max(1, min(64, len(md.eval_rows))),
      max_prompt_length=run.settings.rollout.max_prompt_length, mask_id=md.cfg.mask_token_id,
      eos_id=run.ids.eos, mask_padding=sampler.mask_padding, progress=False,
      prompt_fn=md.eval_prompt_fn, place=sharding.row_placer(run.fns.row_sharding))
  run.writer.write(step, {"eval/accuracy": result["accuracy"]})
  return result["accuracy"]


def rollout_batch(run: Run, state: TrainState, rollout_index: int) -> tuple[TrainState, list]:
  """Prompts and rewards of rollout batch ``rollout_index``, then :func:`rollout_and_update`."""
  md, loop, rollout = run.md, run.settings.loop, run.settings.rollout
  rows = prompts_for_batch(md.train_rows, rollout_index, rollout.prompts_per_batch, loop.seed)
  texts = [tok.render_prompt(md.tokenizer, md.prompt_fn(r)) for r in rows]
  tokens, lengths, truncated = tok.encode_prompts(md.tokenizer, texts, rollout.max_prompt_length,
                                                  run.ids.pad, count_truncated=True)
  if truncated and not run.warned_truncation:
    run.warned_truncation = True
    logging.warning("prompts longer than rollout.max_prompt_length=%d are left-truncated (%d of %d "
                    "in rollout batch %d; counted in the metric prompts_truncated)",
                    rollout.max_prompt_length, truncated, len(texts), rollout_index)
  shuffle = np.random.default_rng([loop.seed, rollout_index]) if loop.shuffle_rewards else None
  decode = lambda completions: decode_completions(md.tokenizer, completions, run.ids.eos,
                                                  rollout.reward_text)
  reward_fn = make_reward_fn(run.task, decode, rows, shuffle)
  key = jax.random.fold_in(jax.random.key(loop.seed), rollout_index)
  updates = min(run.settings.objective.num_iterations, loop.num_steps - state.step)
  state, rows = rollout_and_update(run.fns, state, tokens, lengths, reward_fn, key, updates)
  return state, [{**m, "prompts_truncated": truncated} for m in rows]


def log_updates(run: Run, first_step: int, rollout_index: int, rows: list, bad: int,
                progress) -> int:
  """Writes one metrics row per update; returns the consecutive skipped-update count."""
  for i, m in enumerate(rows):
    run.writer.write(first_step + i, {"rollout": rollout_index, **m})
    bad = bad + 1 if m["skipped"] else 0
    progress.update(1)
    progress.set_postfix({"reward": f"{m['reward_mean']:.3f}", **{
        name: f"{m[key]:.4f}" for name, key in (("kl", "base/kl"), ("clip", "base/clip_frac"),
                                                ("elbo", "base/elbo")) if key in m}})
  if bad >= run.settings.loop.max_bad_steps:
    run.manager.wait_until_finished()
    raise RuntimeError(
        f"{bad} consecutive steps had non-finite losses, gradients or parameters (last at step "
        f"{first_step + len(rows) - 1}); stopping. The last good checkpoint (step "
        f"{run.manager.latest_step()}) is intact in {run.workdir}/checkpoints")
  return bad


def train_loop(run: Run, state: TrainState) -> dict[str, Any]:
  """Rollout batches until ``end_step`` (or a preemption every host agrees on); returns the last
  metrics."""
  loop, mu = run.settings.loop, run.settings.objective.num_iterations
  start_step, metrics, bad, stop = state.step, {}, 0, False
  before = evaluate(run, state, 0) if loop.eval_every > 0 and start_step == 0 else None
  progress = tqdm(total=loop.end_step, initial=start_step, desc=f"{loop.method}/{loop.task}",
                  disable=jax.process_index() != 0)
  while state.step < loop.end_step and not stop:
    first, rollout_index = state.step, state.step // mu
    state, rows = rollout_batch(run, state, rollout_index)
    bad = log_updates(run, first, rollout_index, rows, bad, progress)
    metrics = {"rollout": rollout_index, **rows[-1]}
    if loop.eval_every > 0 and (state.step // loop.eval_every > first // loop.eval_every
                                or state.step == loop.num_steps):
      metrics["eval/accuracy"] = evaluate(run, state, state.step)
    stop = run.preempted.agreed()  # every process saves the same step and leaves together
    if state.step % loop.checkpoint_every == 0 or stop or state.step == loop.end_step:
      rollouts_done = -(-state.step // mu)
      run.writer.flush()
      checkpoints.save(run.manager, state, {
          "step": state.step, "rollout": rollouts_done, "seed": loop.seed,
          "data_position": rollouts_done * run.settings.rollout.prompts_per_batch})
  progress.close()
  finish(run, state, before, start_step, metrics, preempted=stop)
  return metrics


def finish(run: Run, state: TrainState, before: float | None, start_step: int,
           metrics: dict, preempted: bool) -> None:
  """Waits for the last save; prints the before/after table; exports a finished run."""
  loop = run.settings.loop
  run.manager.wait_until_finished()
  run.writer.close()
  if jax.process_index() == 0 and "eval/accuracy" in metrics:
    print(summary_table(loop, run.settings.sampler.num_timesteps, run.task.metric_name, before,
                        metrics["eval/accuracy"], start_step, state.step, len(run.md.eval_rows)))
    line = credit_line(read_rows(epath.Path(run.workdir) / "metrics.jsonl"))
    if line:
      print(line + "\n")
  if loop.export_hf and state.step >= loop.num_steps and not preempted:
    export_lib.export_model(
        run.md.cfg, run.fns.policy.graphdef, run.fns.policy.model_state(state.params),
        run.md.tokenizer, export_record(run.c, state.step), epath.Path(run.workdir) / "export")


def export_record(c, step: int) -> dict[str, Any]:
  """How the exported model was trained and is decoded (``python -m dispo_jax.evaluate`` reads
  it to evaluate a tiny run's export on its own prompts, rows and sampler shape)."""
  return {"prompt_format": "chat" if c.model.checkpoint else "tiny", "task": c.task,
          "method": c.method, "step": step, "d1_compat": c.d1_compat, "reward": c.reward,
          "data": c.data.to_dict(),
          "eval_rows": c.eval_rows, "max_prompt_length": c.rollout.max_prompt_length,
          "sampler": {k: c.sampler[k] for k in ("gen_length", "block_length", "num_timesteps",
                                                "mask_padding")}}


def train(c, workdir: str | None = None) -> dict[str, Any]:
  """Runs (or resumes) training in ``workdir`` (None: derived from the config); returns the
  final metrics."""
  validate_config(c)
  initialize_distributed(c.distributed_timeout_s)  # before anything that starts the backend
  workdir = str(workdir or workdir_lib.default_workdir(c))
  print_run_paths(workdir, finished=False)
  epath.Path(workdir).mkdir(parents=True, exist_ok=True)
  lock = workdir_lib.WorkdirLock(workdir)
  if jax.process_index() == 0:
    workdir_lib.check_run_parts(workdir)
    lock.acquire()
  preempted = Preemption()  # before the minutes an 8B start-up takes
  try:
    run, state = setup(c, workdir, preempted)
    with jax.set_mesh(run.mesh):  # activation constraints (model/sharding.constrain) see the mesh
      return train_loop(run, state)
  finally:
    preempted.restore()
    lock.release()


def summary_table(loop: LoopSettings, num_timesteps: int, metric: str, before: float | None,
                  after: float, first: int, last: int, n: int) -> str:
  before_text = "n/a (resumed)" if before is None else f"{before:.3f}"
  return (f"\n{loop.method} on {loop.task}: held-out {metric} over {n} rows (greedy, "
          f"{num_timesteps} timesteps)\n"
          f"  {'before RL (step ' + str(first) + ')':28s} {before_text}\n"
          f"  {'after RL (step ' + str(last) + ')':28s} {after:.3f}\n")


def credit_line(rows: list[dict]) -> str | None:
  """Where the run's credit came from, averaged over its rollout batches (``metrics.jsonl`` rows):
  prompt groups whose K rewards tie (no signal for the terminal term), tokens credited by the
  terminal term, and, with DiSPO's state term, reward-distinguishable branch states and the tokens
  that term credits. None when no rollout batch was logged."""
  batches = {}
  for r in rows:
    if "rollout" in r and "group_zero_adv_frac" in r:
      batches.setdefault(r["rollout"], r)
  if not batches:
    return None

  def mean(key: str) -> float:
    values = [b[key] for b in batches.values() if b.get(key) is not None]
    return float(np.mean(values)) if values else float("nan")

  line = (f"credit per rollout batch (mean of {len(batches)}): "
          f"{100 * mean('group_zero_adv_frac'):.1f}% of prompt groups tied (no terminal signal), "
          f"{mean('base/credited_tokens'):,.0f} tokens credited by the terminal term")
  if any("state/credited_tokens" in b for b in batches.values()):
    line += (f"; {100 * mean('state/distinguishable_frac'):.1f}% of branch states "
             f"reward-distinguishable, {mean('state/credited_tokens'):,.0f} tokens credited by the "
             f"state term")
  return line


FLAGS = flags.FLAGS


def fatal_message(error: BaseException, workdir: str) -> str | None:
  """The one line to end on for errors a user fixes outside the code (None: show the trace).

  A full disk often surfaces as a later, unrelated exception (an ``ImportError`` raised while the
  ``OSError`` was being handled), so the whole chain is searched.
  """
  if isinstance(error, (ConfigError, data_lib.DataError, hf_io.CheckpointError,
                        workdir_lib.WorkdirError, checkpoints.CheckpointMismatch)):
    return f"error: {error}"
  seen = error
  while seen is not None:
    if isinstance(seen, OSError) and seen.errno == errno.ENOSPC:
      return f"error: No space left on device while writing the work folder {workdir}"
    seen = seen.__cause__ or seen.__context__
  return None


def print_run_paths(workdir: str, finished: bool) -> None:
  """Where the run is: its folder at the start; folder, TensorBoard, metrics and export at the end."""
  if jax.process_index() != 0:
    return
  if not finished:
    print(f"work folder: {workdir}", flush=True)
    return
  folder = epath.Path(workdir)
  print(f"\nrun folder:  {workdir}\n"
        f"metrics:     {folder / 'metrics.jsonl'}\n"
        f"tensorboard: tensorboard --logdir {folder / 'tensorboard'}", flush=True)
  if (folder / "export" / hf_io.CONFIG_FILE).exists():
    print(f"HF export:   {folder / 'export'} "
          f"(python -m dispo_jax.evaluate --config.checkpoint={folder / 'export'})", flush=True)


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # orbax logs every file operation at INFO
  workdir = str(FLAGS.workdir or workdir_lib.default_workdir(FLAGS.config))
  if FLAGS.print_config:
    print(FLAGS.config.to_json_best_effort(indent=2, sort_keys=True))
    print(f"work folder: {workdir}")
    return
  try:
    train(FLAGS.config, workdir)
  except Exception as e:  # noqa: BLE001 - re-raised unless it has a one-line explanation
    message = fatal_message(e, workdir)
    if message is None:
      raise
    sys.exit(message)
  print_run_paths(workdir, finished=True)


def cli():
  """``dispo-train`` / ``python -m dispo_jax.train``."""
  main_module = sys.modules["__main__"]
  if not main_module.__doc__:  # the dispo-* console script: absl's --help prints this module's
    main_module.__doc__ = __doc__
  config_lib.define_config_flag(
      "config", "sudoku:tiny",
      "Training config: a recipe name (sudoku | countdown | gsm8k | math500) or a config file "
      "(configs/<task>.py), with comma-separated variants after a colon (sudoku:tiny,dispo_spg). "
      "Override any key with --config.<section>.<key>=value; "
      + config_lib.config_sections_help() + ".")
  flags.DEFINE_string("workdir", "", "Work folder (checkpoints, metrics); default: "
                      "$DISPO_JAX_RUNS (~/.cache/dispo_jax/runs)/<task>-<method>-<config hash>.",
                      module_name=sys.argv[0])
  flags.DEFINE_bool("print_config", False, "Print the resolved config and work folder, then exit.",
                    module_name=sys.argv[0])
  app.run(main, flags_parser=config_lib.parse_flags)


if __name__ == "__main__":
  cli()
