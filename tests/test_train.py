"""The training program: config guards, a short tiny run, resume exactness, SIGTERM, sharding."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from configs import sudoku as sudoku_config
from dispo_jax import train as train_lib
from dispo_jax.rl import learner
from tests.helpers import (REPO, fresh_workdir, read_metrics, small_config, tiny_flags,
                           trainable_leaves)



@pytest.mark.parametrize("key, value, match", [
    ("rl.alpha_state", -0.5, r"config\.rl: alpha_state=-0\.5 must be >= 0"),
    ("method", "ppo", r"config\.method='ppo' is invalid"),
    ("rollout.group_size", 1, r"config\.rollout: group_size=1 must be >= 2"),
    ("rl.num_microbatches", 3, r"config\.rl\.num_microbatches=3 is invalid"),
    ("sampler.block_length", 7, r"config\.sampler: .*gen_length=24 is not a multiple of "
     r"block_length=7"),
    ("lora.rank", 0, r"config\.lora: .*rank must be positive"),
    ("method", "spg", r"config\.rl: method='spg' has no KL term: beta must be 0"),
    ("rl.spg.negative_bound", "upper", r"config\.rl\.spg: negative_bound='upper' is not one of"),
    ("checkpoint_every", 3, r"config\.checkpoint_every=3 is invalid: must be a positive multiple"),
    ("max_steps", 3, r"config\.max_steps=3 is invalid"),
    ("rl.base_normaliser", "device", r"base_normaliser='device' is not one of"),
    ("rl.state_ratio", "branch", r"state_ratio='branch' \(Eq. 5\) needs state_normaliser"),
    ("rl.state_tokens", "some", r"state_tokens='some' is not one of"),
    ("sampler.allow_mask_action", True, r"allow_mask_action=True is invalid for training"),
    ("sampler.threshold_rule", "greedy", r"threshold_rule='greedy' is not one of"),
    ("rollout.reward_text", "all", r"reward_text"),
    ("rl.trace.temperature", 0.0, r"temperature=0.0 must be finite and > 0"),
    ("rl.behaviour.weight", "all", r"config\.rl\.behaviour: weight='all' is not one of"),
    ("rl.behaviour.cap", -1.0, r"cap=-1.0 must be finite and > 0"),
    ("optim.b2", -1.0, r"config\.optim: b2=-1\.0 must be in \[0, 1\)"),
    ("optim.learning_rate", float("nan"), r"config\.optim: learning_rate=nan must be finite"),
    ("optim.weight_decay", -0.1, r"config\.optim: weight_decay=-0\.1 must be finite and >= 0"),
    ("keep_checkpoints", 0, r"config\.keep_checkpoints=0 is invalid"),
    ("checkpoint_every", 0, r"config\.checkpoint_every=0 is invalid"),
    ("rollout.max_prompt_length", 0, r"config\.rollout: max_prompt_length=0 must be >= 1"),
    ("seed", -1, r"config\.seed=-1 is invalid"),
    ("data.num_train", 0, r"config\.data: num_train=0 must be >= 1"),
    ("rollout.timestep_degree", float("inf"), r"config\.rollout: timestep_degree=inf must be "
     r"finite"),
    ("data.train_file", "/tmp/x.csv", r"config\.data\.train_file / eval_file are set but the tiny"),
    ("rl.beta", float("inf"), r"config\.rl: beta=inf must be finite"),
    ("rl.alpha_state", float("inf"), r"config\.rl: alpha_state=inf must be finite"),
    ("rl.epsilon_high", float("inf"), r"config\.rl: epsilon_high=inf must be finite"),
    ("sampler.temperature", float("nan"), r"config\.sampler: temperature=nan must be finite"),
    ("sampler.cfg_scale", float("inf"), r"config\.sampler: cfg_scale=inf must be finite"),
    ("rollout.branch_temperature", float("inf"),
     r"config\.rollout: branch_temperature=inf must be finite"),
    ("lora.alpha", float("nan"), r"config\.lora: alpha=nan must be finite"),
    ("base.learning_rate", float("inf"), r"config\.base: learning_rate=inf must be finite"),
    ("rl.spg.eubo_beta", float("inf"), r"config\.rl\.spg: eubo_beta=inf must be finite"),
    ("distributed_timeout_s", -5, r"config\.distributed_timeout_s=-5 is invalid: must be > 0"),
    ("reward", "sparse", r"config\.reward='sparse' is invalid: must be 'default' or one of "
     r"\['cells', 'solved'\] for task sudoku"),
])
def test_bad_config_values_fail_before_compute(key, value, match):
  c = small_config(**{key: value})
  if key.startswith("lora."):
    c.lora.enabled = True
  with pytest.raises(ValueError, match=match):
    train_lib.validate_config(c)


@pytest.mark.parametrize("flag, line", [
    ("--config.rl.alpha_stepp=0.1", "error: --config.rl.alpha_stepp: the config has no key "
     "'alpha_stepp' (did you mean 'alpha_state'?)"),
    ("--config.log_every=3", "error: --config.log_every: the config has no key 'log_every'")])
def test_unknown_config_key_is_named_on_one_line(tmp_path, flag, line):
  result = subprocess.run(
      [sys.executable, "-m", "dispo_jax.train", "--config=configs/sudoku.py:tiny",
       f"--workdir={tmp_path}", flag], cwd=REPO, capture_output=True, text=True, timeout=120)
  assert result.returncode != 0
  assert result.stderr.strip().splitlines() == [line + " (the keys and their meaning: "
                                                "dispo_jax/recipes.py)"]
  assert not os.path.exists(tmp_path / "config.json")  # nothing was started


def test_tiny_run_logs_checkpoints_and_exports(tmp_path, base_dir):
  workdir = fresh_workdir(tmp_path, "run")
  c = small_config(export_hf=True, eval_every=2)
  final = train_lib.train(c, workdir)
  rows = read_metrics(workdir)
  assert [r["step"] for r in rows if "reward_mean" in r] == [0, 1, 2, 3]
  assert [r["rollout"] for r in rows if "reward_mean" in r] == [0, 0, 1, 1]  # μ = 2
  assert any("eval/accuracy" in r for r in rows)
  train_rows = [r for r in rows if "reward_mean" in r]
  for name in ("reward_mean", "base/kl", "base/clip_frac", "state/distinguishable_frac",
               "state/distinguishable_late", "loss", "grad_norm", "state/log_ratio_median",
               "state/log_ratio_p99", "base/log_ratio_p99", "policy_nll"):
    assert name in train_rows[0], name
  assert final["skipped_updates"] == 0
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints")))[-1] == "4"
  assert os.path.exists(os.path.join(workdir, "export", "model.safetensors.index.json"))
  assert os.listdir(os.path.join(workdir, "tensorboard"))


def _cli(workdir):
  return [sys.executable, "-m", "dispo_jax.train", "--config=configs/sudoku.py:tiny",
          f"--workdir={workdir}"] + [f"--config.{k}={v}" for k, v in tiny_flags().items()]


def test_resume_after_kill_9_repeats_the_straight_run(tmp_path, base_dir):
  """All runs are subprocesses: the same XLA environment (threads, devices) for every one."""
  straight = fresh_workdir(tmp_path, "straight")
  subprocess.run(_cli(straight), cwd=REPO, check=True, capture_output=True, timeout=600)

  resumed = fresh_workdir(tmp_path, "resumed")
  proc = subprocess.Popen(_cli(resumed) + ["--config.checkpoint_every=2"], cwd=REPO,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + 300
  ckpt = os.path.join(resumed, "checkpoints", "2")
  while time.time() < deadline and not os.path.isdir(ckpt):
    time.sleep(0.2)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert os.path.isdir(ckpt), "no checkpoint at step 2 before the kill"
  subprocess.run(_cli(resumed), cwd=REPO, check=True, capture_output=True, timeout=600)

  a_step, a = trainable_leaves(straight)
  b_step, b = trainable_leaves(resumed)
  assert a_step == b_step == 4
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)
  ma = {r["step"]: r for r in read_metrics(straight) if "reward_mean" in r}
  mb = {r["step"]: r for r in read_metrics(resumed) if "reward_mean" in r}
  assert sorted(ma) == sorted(mb) == [0, 1, 2, 3]
  for step in ma:
    for key in ("reward_mean", "loss", "base/kl"):
      assert ma[step][key] == mb[step][key], (step, key)


def test_sigterm_saves_a_usable_checkpoint(tmp_path, base_dir):
  workdir = fresh_workdir(tmp_path, "term")
  proc = subprocess.Popen(_cli(workdir) + ["--config.num_steps=1000", "--config.checkpoint_every=1000"],
                          cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  metrics = os.path.join(workdir, "metrics.jsonl")
  deadline = time.time() + 300
  while time.time() < deadline and not (os.path.exists(metrics) and open(metrics).read()):
    time.sleep(0.2)
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=300)
  assert proc.returncode == 0, err[-2000:]
  step, leaves = trainable_leaves(workdir)
  assert 1 <= step < 1000 and leaves
  assert step % 2 == 0  # SIGTERM finishes the rollout batch (μ = 2) before saving
  c = small_config(num_steps=1000, max_steps=step + 2)  # resumes from it, runs to step + 2
  train_lib.train(c, workdir)
  assert trainable_leaves(workdir)[0] == step + 2


def test_non_finite_updates_stop_the_run_with_the_checkpoint_intact(tmp_path, base_dir, monkeypatch):
  workdir = fresh_workdir(tmp_path, "nan")
  train_lib.train(small_config(num_steps=10, max_steps=2), workdir)  # a good checkpoint at 2
  real = learner.make_update_fn

  def poisoned(*args, **kwargs):
    update = real(*args, **kwargs)
    def wrapped(trainable, frozen, opt_state, batch, *rest):
      return update(trainable, frozen, opt_state,
                    batch.replace(advantages=batch.advantages * np.nan), *rest)
    return wrapped

  monkeypatch.setattr(learner, "make_update_fn", poisoned)
  with pytest.raises(RuntimeError, match=r"2 consecutive steps had non-finite losses.*last good "
                     r"checkpoint \(step 2\) is intact"):
    train_lib.train(small_config(num_steps=10, max_bad_steps=2), workdir)
  assert trainable_leaves(workdir)[0] == 2
  rows = [r for r in read_metrics(workdir) if "skipped_updates" in r]
  assert [r["skipped_updates"] for r in rows[-2:]] == [1.0, 1.0]


@pytest.mark.parametrize("mesh", [(2, 4, 1), (8, 1, 1)])
def test_sharded_training_matches_one_device(tmp_path, base_dir, mesh):
  results = {}
  for name, shape in (("one", (1, 1, 1)), ("many", mesh)):
    workdir = fresh_workdir(tmp_path, name)
    c = small_config(num_steps=2)
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = shape
    train_lib.train(c, workdir)
    results[name] = ([r for r in read_metrics(workdir) if "loss" in r], trainable_leaves(workdir)[1])
  (m1, p1), (m8, p8) = results["one"], results["many"]
  for a, b in zip(m1, m8):
    np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-4, atol=1e-6)
    assert a["reward_mean"] == b["reward_mean"]
  for x, y in zip(p1, p8):
    np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("task", ["countdown", "gsm8k", "math500"])
def test_every_task_has_a_tiny_variant_that_trains(tmp_path, task):
  import importlib
  c = importlib.import_module(f"configs.{task}").get_config("tiny")
  c.model.overrides.d_model, c.model.overrides.n_layers = 32, 1
  c.model.overrides.n_heads, c.model.overrides.mlp_hidden_size = 2, 64
  c.base.steps, c.num_steps, c.data.num_train, c.data.num_test = 20, 1, 100, 8
  c.rollout.prompts_per_batch, c.rollout.group_size, c.rl.num_iterations = 2, 4, 1
  c.eval_rows, c.eval_every, c.export_hf, c.mesh.data = 4, 1, False, 1
  final = train_lib.train(c, str(tmp_path))
  assert final["skipped_updates"] == 0 and 0.0 <= final["eval/accuracy"] <= 1.0


def test_tiny_config_reward_rises(tmp_path, base_dir, monkeypatch):
  """The whole loop moves the policy toward what the reward asks for.

  The reward here counts the digit '1' in the completion (a dense, learnable signal on the tiny
  Sudoku base). The real cell-accuracy reward does not rise within a few steps at this scale (see
  docs/RESULTS.md), so a test on it could not fail for the right reasons.
  """
  import dataclasses
  ones = lambda text, row: text.count("1") / 16.0
  real_get_task = train_lib.get_task
  monkeypatch.setattr(train_lib, "get_task", lambda name, d1_compat=False, reward="default":
                      dataclasses.replace(real_get_task(name, d1_compat, reward),
                                          reward_terms={"ones": ones}))
  workdir = fresh_workdir(tmp_path, "rise")
  train_lib.train(small_config(**{"num_steps": 16, "optim.learning_rate": 1e-3,
                                  "rollout.prompts_per_batch": 4}), workdir)
  per_rollout = {r["rollout"]: r["reward_mean"] for r in read_metrics(workdir) if "reward_mean" in r}
  rewards = [per_rollout[i] for i in sorted(per_rollout)]
  assert len(rewards) == 8
  assert np.mean(rewards[-3:]) > np.mean(rewards[:2]) + 0.1, rewards


@pytest.mark.parametrize("variant, method", [("tiny,spg", "spg"), ("tiny,dispo_spg", "dispo_spg")])
def test_spg_variants_of_the_tiny_config_train(tmp_path, base_dir, variant, method):
  c = sudoku_config.get_config(variant)
  assert c.method == method and c.rl.beta == 0.0 and c.rl.num_iterations == 4
  assert c.sampler.gen_length == 24 and c.optim.learning_rate == 1.5e-4  # tiny rollout kept
  small = small_config(method=method, **{"rl.beta": 0.0, "num_steps": 2})
  workdir = fresh_workdir(tmp_path, method)
  final = train_lib.train(small, workdir)
  assert final["skipped_updates"] == 0 and np.isfinite(final["loss"])
  assert "base/elbo" in final and ("state/loss" in final) == (method == "dispo_spg")


@pytest.mark.parametrize("method, segments", [("trace", 2), ("dispo_trace", 6)])
def test_trace_methods_train_the_tiny_config(tmp_path, base_dir, method, segments):
  workdir = fresh_workdir(tmp_path, method)
  final = train_lib.train(small_config(method=method, **{"rl.trace.segments": segments}), workdir)
  assert final["skipped_updates"] == 0 and np.isfinite(final["loss"])
  assert ("state/loss" in final) == (method == "dispo_trace") and "base/kl" in final
  with pytest.raises(ValueError, match=r"trace\.segments=7 must be in"):
    train_lib.validate_config(small_config(method=method, **{"rl.trace.segments": 7}))


def test_config_variants_carry_the_spg_recipe():
  import importlib
  for task, steps, repo_steps, beta in (("sudoku", 4000, 2500, 1.0), ("countdown", 4600, 6000, 1.5),
                                        ("gsm8k", 4600, 6000, 1.5), ("math500", 2600, 4000, 1.5)):
    module = importlib.import_module(f"configs.{task}")
    c = module.get_config("dispo_spg")  # the DiSPO paper's SPG runs (App. D.3)
    assert (c.method, c.num_steps, c.rl.spg.eubo_beta, c.optim.learning_rate) == (
        "dispo_spg", steps, beta, 3e-6)
    assert (c.rollout.prompts_per_batch, c.rollout.group_size, c.sampler.gen_length,
            c.sampler.num_timesteps, c.sampler.block_length, c.rl.beta) == (16, 6, 256, 128, 32, 0.0)
    assert c.sampler.temperature == 0.9 and c.rl.spg.block_choice == "spg"
    assert module.get_config("spg,spg_repo").num_steps == repo_steps  # SPG's own repository
  assert sudoku_config.get_config("spg,spg_repo").sampler.temperature == 0.3
  assert sudoku_config.get_config("spg,3shot").data.few_shot == 3
  with pytest.raises(ValueError, match="unknown config variant 'spgg'"):
    sudoku_config.get_config("tiny,spgg")
  with pytest.raises(ValueError, match="exclude each other"):
    sudoku_config.get_config("spg,dispo_spg")
  with pytest.raises(ValueError, match="'spg_repo' modifies"):
    sudoku_config.get_config("spg_repo")


def test_recipe_configs_train_with_d1s_rewards_and_normaliser():
  import importlib
  for task in ("sudoku", "countdown", "gsm8k", "math500"):
    module = importlib.import_module(f"configs.{task}")
    recipe, tiny = module.get_config(""), module.get_config("tiny")
    assert recipe.d1_compat and recipe.rl.base_normaliser == "group"
    assert not tiny.d1_compat and tiny.rl.base_normaliser == "batch"
    assert recipe.checkpoint_every % recipe.rl.num_iterations == 0
    assert tiny.num_steps == 40 * tiny.rl.num_iterations  # 40 rollout batches, as before


def test_num_steps_counts_optimizer_updates(tmp_path, base_dir):
  """8 updates at μ = 4: a checkpoint at step 8 and metrics from exactly 2 rollout batches."""
  workdir = fresh_workdir(tmp_path, "updates")
  train_lib.train(small_config(**{"num_steps": 8, "rl.num_iterations": 4,
                                  "checkpoint_every": 4}), workdir)
  rows = [r for r in read_metrics(workdir) if "loss" in r]
  assert [r["step"] for r in rows] == list(range(8))
  assert [r["rollout"] for r in rows] == [0] * 4 + [1] * 4
  assert len({r["reward_mean"] for r in rows[:4]}) == 1  # one rollout batch replayed μ times
  assert sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints"))) == [4, 8]


def test_every_update_uses_its_own_replayed_mask_key(tmp_path, base_dir, monkeypatch):
  """At the run level: update i of a rollout batch draws its masks with the i-th of the μ keys
  the replay log-probs were computed with, and no key repeats within or across rollout batches."""
  import dataclasses
  replayed, used = [], []

  def recording(make):
    def wrapped(*args, **kwargs):
      fns = make(*args, **kwargs)

      def replay(params, batch, mask_keys):
        replayed.append(np.asarray(jax.random.key_data(mask_keys)))
        return fns.replay(params, batch, mask_keys)

      def update(trainable, frozen, opt_state, batch, iteration, mask_key, dropout_key):
        used.append((int(iteration), np.asarray(jax.random.key_data(mask_key))))
        return fns.update(trainable, frozen, opt_state, batch, iteration, mask_key, dropout_key)
      return dataclasses.replace(fns, replay=replay, update=update)
    return wrapped

  from dispo_jax.pipeline import step as step_lib
  monkeypatch.setattr(step_lib, "make_step_functions", recording(step_lib.make_step_functions))
  train_lib.train(small_config(**{"num_steps": 6, "rl.num_iterations": 3, "checkpoint_every": 3,
                                  "method": "dispo"}), workdir=fresh_workdir(tmp_path, "keys"))
  assert len(replayed) == 2 and len(used) == 6
  for index, (iteration, key) in enumerate(used):
    assert iteration == index % 3
    np.testing.assert_array_equal(key, replayed[index // 3][iteration])
  assert len({key.tobytes() for _, key in used}) == 6


def test_a_cached_run_logs_its_mismatch_and_weights_its_tokens(tmp_path, base_dir):
  """``sampler.kv_cache=dual`` turns the importance weight on (``auto``) and every update's
  metrics row carries the sampler-vs-old-policy mismatch of its rollout batch."""
  workdir = fresh_workdir(tmp_path, "cached")
  c = small_config(**{"num_steps": 2, "rl.num_iterations": 2, "sampler.kv_cache": "dual",
                      "sampler.block_length": 8, "sampler.num_timesteps": 6})
  assert train_lib.run_settings(c).objective.importance_weight == "token"
  train_lib.train(c, workdir)
  rows = [r for r in read_metrics(workdir) if "loss" in r]
  for name in ("behaviour/abs_log_ratio_mean", "behaviour/abs_log_ratio_max",
               "behaviour/truncated_frac", "behaviour/kl"):
    assert all(np.isfinite(r[name]) for r in rows), name
  assert rows[0]["behaviour/abs_log_ratio_max"] > 0
  # ... and the phase times the rollout's share of the run is read from
  assert all(r["time/rollout_seconds"] > 0 and r["time/replay_seconds"] > 0 for r in rows)
  assert rows[0]["step_seconds"] > rows[0]["time/rollout_seconds"] + rows[0]["time/replay_seconds"]


def test_few_shot_needs_a_sudoku_checkpoint_run():
  c = small_config(**{"data.few_shot": 3})
  with pytest.raises(ValueError, match=r"config\.data\.few_shot=3 is invalid"):
    train_lib.validate_config(c)


def test_shuffled_rewards_keep_each_prompts_values():
  rewards = np.arange(12, dtype=np.float32)
  prompt_index = np.repeat([0, 1, 2], 4)
  out = train_lib.shuffle_within_groups(rewards, prompt_index, np.random.default_rng(0))
  for p in range(3):
    assert sorted(out[prompt_index == p]) == sorted(rewards[prompt_index == p])
  assert not np.array_equal(out, rewards)


def test_resuming_a_finished_run_keeps_its_final_evaluation(tmp_path, base_dir):
  workdir = fresh_workdir(tmp_path, "finished")
  c = small_config(num_steps=2, eval_every=2, checkpoint_every=2)
  train_lib.train(c, workdir)
  before = read_metrics(workdir)
  assert [r["step"] for r in before if "eval/accuracy" in r] == [0, 2]
  train_lib.train(c, workdir)  # resumes at step 2: nothing to train, nothing to drop
  assert read_metrics(workdir) == before


def test_credit_line_averages_each_rollout_batch_once():
  rows = [{"step": 0, "eval/accuracy": 0.5},
          {"step": 0, "rollout": 0, "group_zero_adv_frac": 0.5, "base/credited_tokens": 100.0,
           "state/distinguishable_frac": 0.25, "state/credited_tokens": 30.0},
          {"step": 1, "rollout": 0, "loss": 1.0},  # the batch's second update
          {"step": 2, "rollout": 1, "group_zero_adv_frac": 0.0, "base/credited_tokens": 200.0,
           "state/distinguishable_frac": 0.75, "state/credited_tokens": 10.0}]
  assert train_lib.credit_line(rows) == (
      "credit per rollout batch (mean of 2): 25.0% of prompt groups tied (no terminal signal), "
      "150 tokens credited by the terminal term; 50.0% of branch states reward-distinguishable, "
      "20 tokens credited by the state term")
  terminal_only = [{k: v for k, v in r.items() if not k.startswith("state/")} for r in rows]
  assert train_lib.credit_line(terminal_only).endswith("150 tokens credited by the terminal term")
  assert train_lib.credit_line(rows[:1]) is None


def test_a_finished_run_prints_its_table_and_credit_line(tmp_path, base_dir, capsys):
  workdir = fresh_workdir(tmp_path, "table")
  train_lib.train(small_config(eval_every=4), workdir)
  out = capsys.readouterr().out
  assert "dispo on sudoku: held-out cell accuracy over 8 rows" in out
  assert train_lib.credit_line(read_metrics(workdir)) in out
  assert "reward-distinguishable" in out  # DiSPO: the state term's part too


def test_a_sparse_reward_run_trains_on_it_and_reports_puzzles_solved(tmp_path, base_dir, capsys):
  workdir = fresh_workdir(tmp_path, "sparse")
  train_lib.train(small_config(reward="solved", eval_every=4), workdir)
  rows = read_metrics(workdir)
  rewards = [r["reward_mean"] for r in rows if "reward_mean" in r]
  group = small_config().rollout.group_size * small_config().rollout.prompts_per_batch
  assert all(abs(r * group - round(r * group)) < 1e-4 for r in rewards)  # each completion 0 or 1
  assert "held-out puzzles solved over 8 rows" in capsys.readouterr().out
  assert json.load(open(os.path.join(workdir, "config.json")))["config"]["reward"] == "solved"


def test_an_objective_registered_in_this_file_trains_alone_and_with_dispos_term(tmp_path, base_dir):
  """The objective interface is the one place an objective lives: a REINFORCE objective defined
  here (no replay, its own row weights and loss) trains as ``toy_reinforce`` and, with DiSPO's
  fixed-state term, as ``dispo_toy_reinforce``, with no other file touched."""
  import jax.numpy as jnp

  from dispo_jax.rl import objectives

  calls = []

  @objectives.register_objective("toy_reinforce")
  class ToyReinforce(objectives.Objective):
    replays_logprobs = False

    def row_weights(self, completion_mask, group_size, s):
      rows = completion_mask.shape[0]
      return {"sequence_weights": jnp.full((rows,), 1.0 / rows)}

    def loss(self, apply, batch, replay, key, s):
      logp = objectives.OBJECTIVES["diffu_grpo"].logprobs(apply, batch, key, s)
      calls.append(logp.shape)
      per_row = (logp * batch.completion_mask).sum(-1)
      loss = -jnp.sum(batch.advantages * batch.sequence_weights * per_row)
      return loss, {"base/loss": loss, "toy/rows": jnp.float32(per_row.shape[0])}

  try:
    for method in ("toy_reinforce", "dispo_toy_reinforce"):
      workdir = fresh_workdir(tmp_path, method)
      final = train_lib.train(small_config(method=method), workdir)
      rows = [r for r in read_metrics(workdir) if "loss" in r]
      assert final["skipped_updates"] == 0 and len(rows) == 4
      assert all(r["toy/rows"] == 8 and np.isfinite(r["base/loss"]) for r in rows)
      assert all(("state/loss" in r) == method.startswith("dispo_") for r in rows)
    assert calls  # traced by both runs' updates
  finally:
    del objectives.OBJECTIVES["toy_reinforce"]


def test_max_steps_caps_the_step_reached_and_a_resume_announces_itself(tmp_path, base_dir, capsys):
  workdir = fresh_workdir(tmp_path, "capped")
  c = small_config(num_steps=4, max_steps=2)
  train_lib.train(c, workdir)
  capsys.readouterr()
  train_lib.train(c, workdir)  # the same command again: the run is already at its cap
  out = capsys.readouterr().out
  assert f"resuming {workdir} from step 2 of 2" in out
  assert trainable_leaves(workdir)[0] == 2
  assert [r["step"] for r in read_metrics(workdir) if "loss" in r] == [0, 1]


def test_a_full_disk_ends_on_one_line_naming_the_folder():
  try:
    try:
      raise OSError(28, "No space left on device")
    except OSError:
      raise ImportError("cannot import name 'x' (partially initialized module)")
  except ImportError as e:
    message = train_lib.fatal_message(e, "/data/run")
  assert message == "error: No space left on device while writing the work folder /data/run"
  assert train_lib.fatal_message(ValueError("a bug"), "/data/run") is None
