"""The path a LLaDA user takes: the paper's recipe configs, from an HF checkpoint folder, by the CLIs.

Each ``configs/<task>.py`` runs as written (LoRA r128 on q/k/v/up, bf16, remat, d1's rewards, the
group normaliser, the task's μ, DiSPO); only the model (a small LLaDA HF folder with LLaDA's special
tokens and chat template, briefly SFT'd to write ``<answer>`` blocks), the data files (in each task's published layout) and the sizes
change, through ``--config.`` flags. Two rollout batches with a stop and a resume between them, the
HF export, then ``python -m dispo_jax.evaluate`` on the export with d1's protocol. Once more on a
2-device fsdp mesh, and once on two processes over loopback.
"""

import importlib
import json
import os
import subprocess
import sys

import pytest

from tests.helpers import REPO, cached_llada_folder, free_port, read_metrics, write_task_files

SIZES = {"sampler.gen_length": 32, "sampler.block_length": 16, "sampler.num_timesteps": 8,
         "rollout.prompts_per_batch": 2, "rollout.group_size": 2,
         "rollout.max_prompt_length": 64, "eval_rows": 2}


@pytest.fixture(scope="module")
def recipe_inputs(tmp_path_factory):
  """``(HF folder, {task: (train file, eval file)})`` shared by every recipe run."""
  return cached_llada_folder(), write_task_files(str(tmp_path_factory.mktemp("recipe_data")))


def _mu(task: str) -> int:
  return importlib.import_module(f"configs.{task}").get_config("").rl.num_iterations


def _train_cmd(task, workdir, inputs, **flags):
  folder, files = inputs
  train_file, eval_file = files[task]
  flags = {"model.checkpoint": folder, "data.train_file": train_file,
           "data.eval_file": eval_file, "num_steps": 2 * _mu(task), **SIZES, **flags}
  return [sys.executable, "-m", "dispo_jax.train", f"--config=configs/{task}.py",
          f"--workdir={workdir}"] + [f"--config.{k}={v}" for k, v in flags.items()]


def _run(cmd, env=None, timeout=600):
  result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "JAX_PLATFORMS": "cpu", **(env or {})})
  assert result.returncode == 0, f"{' '.join(cmd[:4])} exited {result.returncode}:\n" + (
      result.stderr[-3000:])
  return result


def _checkpoints(workdir):
  return sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit())


def _evaluate(task, export, inputs, workdir):
  """d1's protocol on the export (greedy, timesteps = gen_length / 2, block 32, d1's rewards)."""
  _, files = inputs
  data = {f"data_files.{task}": files[task][1]} if task in ("gsm8k", "math500") else {}
  flags = {"checkpoint": export, "tasks": task, "gen_lengths": "(32,)", "batch_size": 2,
           "limit": 2, "max_prompt_length": 64, "d1_compat": True, **data}
  result = _run([sys.executable, "-m", "dispo_jax.evaluate", "--config=configs/eval.py",
                 f"--workdir={workdir}"] + [f"--config.{k}={v}" for k, v in flags.items()])
  metrics = json.load(open(os.path.join(workdir, "metrics.json")))
  assert metrics[task]["32"]["n"] == 2 and 0 <= metrics[task]["32"]["accuracy"] <= 1
  return result


def _check_recorded_recipe(workdir, task):
  """The run folder's record holds the paper's recipe, not a shrunk or tiny variant."""
  c = json.load(open(os.path.join(workdir, "config.json")))["config"]  # flat dotted keys
  assert (c["method"], c["d1_compat"], c["rl.base_normaliser"]) == ("dispo", True, "group")
  assert (c["model.remat"], c["model.param_dtype"], c["model.compute_dtype"]) == (
      True, "bfloat16", "bfloat16")
  assert c["lora.enabled"] and c["lora.rank"] == 128
  assert sorted(c["lora.targets"]) == ["k_proj", "q_proj", "up_proj", "v_proj"]
  assert c["rl.num_iterations"] == _mu(task)


@pytest.mark.parametrize("task", ["sudoku", "countdown", "gsm8k", "math500"])
def test_recipe_without_a_checkpoint_says_what_it_needs(task):
  from dispo_jax import train
  c = importlib.import_module(f"configs.{task}").get_config("")
  with pytest.raises(train.ConfigError) as error:
    train.validate_config(c)
  message = str(error.value)
  assert "\n" not in message and message.startswith("config.model.checkpoint is empty")
  assert "hf download GSAI-ML/LLaDA-8B-Instruct --local-dir" in message
  assert f"--config={task}:tiny" in message
  c.model.checkpoint = "/nonexistent/LLaDA-8B-Instruct"
  with pytest.raises(train.ConfigError, match=r"is not an HF LLaDA folder: it has no config\.json"):
    train.validate_config(c)


@pytest.mark.parametrize("task", ["sudoku", "countdown", "gsm8k", "math500"])
def test_recipe_trains_resumes_exports_and_evaluates(task, recipe_inputs, tmp_path):
  mu, workdir = _mu(task), str(tmp_path / "run")
  first = _run(_train_cmd(task, workdir, recipe_inputs, max_steps=mu))  # stops after one batch
  assert _checkpoints(workdir) == [mu] and not os.path.exists(os.path.join(workdir, "export"))
  second = _run(_train_cmd(task, workdir, recipe_inputs))
  assert f"resuming {workdir} from step {mu} of {2 * mu}" in second.stdout
  for output in (first, second):
    assert "to instantiate a model of type" not in output.stderr  # transformers' notice is quiet
  rows = [r for r in read_metrics(workdir) if "loss" in r]
  assert [r["step"] for r in rows] == list(range(2 * mu))
  assert [r["rollout"] for r in rows] == [0] * mu + [1] * mu
  assert all(r["skipped"] == 0 and r["grad_norm"] >= 0 for r in rows)
  if task == "sudoku":  # the folder's SFT'd answers earn per-cell rewards that differ
    assert all(r["grad_norm"] > 1e-6 for r in rows) and max(r["reward_mean"] for r in rows) > 0
  assert "state/ratio_min" in rows[0]  # DiSPO's state term ran
  assert [r["step"] for r in read_metrics(workdir) if "eval/accuracy" in r] == [0, 2 * mu]
  assert _checkpoints(workdir) == [mu, 2 * mu]
  _check_recorded_recipe(workdir, task)
  _evaluate(task, os.path.join(workdir, "export"), recipe_inputs, str(tmp_path / "eval"))


def test_recipe_on_a_two_device_fsdp_mesh(recipe_inputs, tmp_path):
  workdir = str(tmp_path / "run")
  _run(_train_cmd("countdown", workdir, recipe_inputs, **{"mesh.data": 1, "mesh.fsdp": 2}),
       env={"JAX_NUM_CPU_DEVICES": "2"})
  assert _checkpoints(workdir) == [2 * _mu("countdown")]
  assert os.path.exists(os.path.join(workdir, "export"))
  _evaluate("countdown", os.path.join(workdir, "export"), recipe_inputs, str(tmp_path / "eval"))


def _two_processes(cmd, timeout=600):
  port = free_port()
  procs = [subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "JAX_PLATFORMS": "cpu",
                                            "JAX_NUM_CPU_DEVICES": "1",
                                            "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}",
                                            "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": str(i)})
           for i in range(2)]
  outputs = [p.communicate(timeout=timeout) for p in procs]
  assert all(p.returncode == 0 for p in procs), "\n\n".join(
      f"process {i} (exit {p.returncode}):\n{err[-2500:]}" for i, (p, (_, err)) in
      enumerate(zip(procs, outputs)))
  return [out for out, _ in outputs]


def test_recipe_on_two_processes(recipe_inputs, tmp_path):
  """Two hosts of one device each, parameters sharded over both (fsdp 2): trains, checkpoints,
  exports from both processes' shards; the export then evaluates on one process."""
  workdir = str(tmp_path / "run")
  task = "countdown"  # μ 8: two rollout batches are 16 updates (Sudoku's μ 12 would make 24)
  _two_processes(_train_cmd(task, workdir, recipe_inputs, **{"mesh.data": 1, "mesh.fsdp": 2}))
  updates = 2 * _mu(task)
  assert _checkpoints(workdir) == [updates]
  assert [r["step"] for r in read_metrics(workdir) if "loss" in r] == list(range(updates))
  _evaluate(task, os.path.join(workdir, "export"), recipe_inputs, str(tmp_path / "eval"))


LOAD_PROBE = """
import json, os, sys
from dispo_jax.run.distributed import initialize_distributed
initialize_distributed(60)
import jax
from flax import nnx
from dispo_jax.model import checkpoint, sharding
from tests.helpers import SafetensorsReadSpy
spy = SafetensorsReadSpy()
checkpoint.safe_open = spy
mesh = sharding.make_mesh(data=1, fsdp=2, tensor=1)
_, _, state = checkpoint.load_hf_checkpoint(sys.argv[1], mesh)
held = sum(sum({str(s.index): s.data.nbytes for s in var.get_value().addressable_shards}.values())
           for _, var in nnx.to_flat_state(state))
total = sum(var.get_value().nbytes for _, var in nnx.to_flat_state(state))
print(json.dumps({"read": spy.bytes_read, "held": held, "total": total}))
"""


def test_each_process_reads_only_its_own_shards(recipe_inputs):
  """With parameters sharded over two processes, each reads from the bf16 files exactly the
  slices its device holds: about half of the model (the replicated norms in full), never all."""
  outputs = _two_processes([sys.executable, "-c", LOAD_PROBE, recipe_inputs[0]], timeout=300)
  reports = [json.loads(out.strip().splitlines()[-1]) for out in outputs]
  for r in reports:
    assert r["read"] == r["held"] < 0.55 * r["total"], r
