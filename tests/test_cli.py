"""The command line as a newcomer meets it, run from a folder outside the clone: recipes by name,
one-line errors, --print_config, warnings once, and where the results are."""

import json
import os
import socket
import subprocess
import sys

import pytest

from dispo_jax import recipes
from dispo_jax.run import config as config_lib
from tests.helpers import REPO, tiny_flags




def _cli(module, args, cwd, timeout=300):
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env,
                        capture_output=True, text=True, timeout=timeout)


def _one_line_error(result) -> str:
  assert result.returncode != 0
  lines = [line for line in result.stderr.splitlines() if line.strip()]
  assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-3000:]
  return lines[0]


@pytest.mark.parametrize("task", sorted(recipes.TASKS))
@pytest.mark.parametrize("variants", ["", "tiny", "tiny,dispo_spg", "spg,spg_repo"])
def test_config_files_are_the_recipes(task, variants):
  from_file = config_lib.resolve_config(os.path.join(REPO, "configs", f"{task}.py:{variants}"))
  assert from_file.to_dict() == recipes.get_config(task, variants).to_dict()
  assert from_file.to_dict() == config_lib.resolve_config(f"{task}:{variants}").to_dict()


def test_recipes_keep_each_tasks_schedule():
  """The per-task numbers of d1's runs (num_steps, μ) and the SPG step counts, as configured."""
  assert [(recipes.get_config(t).num_steps, recipes.get_config(t).rl.num_iterations)
          for t in ("sudoku", "countdown", "gsm8k", "math500")] == [
              (3800, 12), (5000, 8), (7700, 12), (6600, 12)]
  assert recipes.get_config("sudoku", "dispo_spg").num_steps == 4000
  assert recipes.get_config("sudoku", "dispo_spg,spg_repo").sampler.temperature == 0.3
  assert recipes.get_config("sudoku", "3shot").data.few_shot == 3
  assert recipes.get_config("eval", "tiny").gen_lengths == (32,)


@pytest.mark.parametrize("args, match", [
    (["--config=configs/nope.py"], "configs/nope.py does not exist"),
    (["--config=sudoku:tny"], "unknown config variant 'tny'"),
    (["--config=sudok"], "sudok does not exist (give a config file"),
    (["--config.rl.num_iteratons=3"], "the config has no key 'num_iteratons' (did you mean"),
    (["--config.rl.num_iterations=0"], "config.rl.num_iterations=0 is invalid: must be >= 1"),
    (["--config.base.steps=0"], "config.base.steps=0 is invalid with model.preset='tiny'"),
    (["--config=sudoku", "--config.rl.beta=inf"], "config.model.checkpoint is empty"),
])
def test_training_errors_are_one_line(args, match, tmp_path):
  line = _one_line_error(_cli("dispo_jax.train", [*args, f"--workdir={tmp_path}/w"], tmp_path))
  assert match in line
  assert not os.path.exists(tmp_path / "w")  # nothing written before the config is sound


def test_weights_and_biases_without_wandb_is_one_line(tmp_path):
  import importlib.util
  if importlib.util.find_spec("wandb") is not None:
    pytest.skip("wandb is installed")
  line = _one_line_error(_cli("dispo_jax.train", ["--config.wandb_project=dispo",
                                                  f"--workdir={tmp_path}/w"], tmp_path))
  assert "config.wandb_project='dispo' needs Weights & Biases" in line


def test_a_held_folder_is_one_line(tmp_path):
  workdir = tmp_path / "held"
  workdir.mkdir()
  (workdir / "lock").write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid()}))
  line = _one_line_error(_cli("dispo_jax.train", [f"--workdir={workdir}"], tmp_path))
  assert f"{workdir} is in use by another run" in line


def test_evaluate_errors_are_one_line(tmp_path):
  assert "config.checkpoint is empty" in _one_line_error(
      _cli("dispo_jax.evaluate", [f"--workdir={tmp_path}/e"], tmp_path))
  assert f"{tmp_path}/none/config.json" in _one_line_error(_cli(
      "dispo_jax.evaluate", [f"--workdir={tmp_path}/e", f"--config.checkpoint={tmp_path}/none"],
      tmp_path))


def test_print_config_prints_the_resolved_config_and_folder(tmp_path):
  out = _cli("dispo_jax.train", ["--print_config", "--config=countdown:tiny",
                                 "--config.rl.beta=0.02"], tmp_path)
  assert out.returncode == 0, out.stderr[-2000:]
  text, folder = out.stdout.rsplit("work folder: ", 1)
  config = json.loads(text)
  assert config["task"] == "countdown" and config["rl"]["beta"] == 0.02
  assert config["model"]["preset"] == "tiny"
  assert os.path.basename(folder.strip()).startswith("countdown-dispo_trace-")
  assert not os.path.exists(folder.strip())


def test_renamed_keys_are_accepted_under_their_old_names_with_a_warning(tmp_path):
  """Every key of the rename table reaches the config under its current name from the command
  line (``=`` and space forms), with a warning naming the new key; the run's folder does not move."""
  old = {"sampler.steps": 12, "rollout.prompts_per_step": 4, "rl.alpha_step": 0.25,
         "rl.step_normaliser": "group", "rl.step_ratio": "branch", "rl.step_tokens": "all"}
  assert set(old) == set(config_lib.RENAMED_KEYS)
  args = [f"--config.{k}={v}" for k, v in old.items()]
  args[1:2] = args[1].split("=")  # --config.rollout.prompts_per_step 4
  out = _cli("dispo_jax.train", ["--print_config", *args], tmp_path)
  assert out.returncode == 0, out.stderr[-2000:]
  text, folder = out.stdout.rsplit("work folder: ", 1)
  config = json.loads(text)
  for key, value in old.items():
    section, name = config_lib.RENAMED_KEYS[key].split(".")
    assert config[section][name] == value and key.split(".")[1] not in config[section]
    assert f"--config.{key} is now called --config.{section}.{name}" in out.stderr
  renamed = _cli("dispo_jax.train", ["--print_config"] + [
      f"--config.{config_lib.RENAMED_KEYS[k]}={v}" for k, v in old.items()], tmp_path)
  assert renamed.stdout.rsplit("work folder: ", 1)[1] == folder  # the same run, the same folder
  assert "is now called" not in renamed.stderr


def test_the_recipe_docs_list_every_renamed_key():
  import re
  text = open(os.path.join(REPO, "docs", "RECIPE.md")).read()
  assert dict(re.findall(r"^\| `([\w.]+)` \| `([\w.]+)` \|$", text, re.M)) == config_lib.RENAMED_KEYS


def test_the_default_run_folder_hashes_keys_under_their_first_names():
  """A trace run of the tiny config keeps the folder it had before keys were renamed."""
  from dispo_jax.run import workdir as wd
  c = recipes.get_config("sudoku", "tiny")
  c.method = "trace"
  assert wd.config_hash(c) == "a7f31014"


def test_a_warning_is_printed_once(tmp_path):
  """A fresh run that finds another program's metrics.jsonl sets it aside, with one warning."""
  workdir = tmp_path / "w"
  workdir.mkdir()
  (workdir / "metrics.jsonl").write_text('{"step": 7}\n')
  flags = {**tiny_flags(), "num_steps": 2, "rl.num_iterations": 1}
  out = _cli("dispo_jax.train", [f"--workdir={workdir}"]
             + [f"--config.{k}={v}" for k, v in flags.items()], tmp_path)
  assert out.returncode == 0, out.stderr[-3000:]
  both = out.stdout + out.stderr
  assert both.count("kept as") == 1, both[-3000:]
  assert os.path.exists(workdir / "metrics.jsonl.before-1")
  assert f"work folder: {workdir}" in out.stdout and f"run folder:  {workdir}" in out.stdout
  assert f"metrics:     {workdir}/metrics.jsonl" in out.stdout


def test_configuration_errors_print_one_line_without_a_traceback(tmp_path):
  result = subprocess.run(
      [sys.executable, "-m", "dispo_jax.train", "--config=configs/sudoku.py:tiny",
       f"--workdir={tmp_path}", "--config.optim.b2=-1.0"],
      cwd=REPO, capture_output=True, text=True, timeout=120)
  assert result.returncode != 0
  assert "Traceback" not in result.stderr
  assert result.stderr.strip().splitlines()[-1] == (
      "error: config.optim: b2=-1.0 must be in [0, 1)")
