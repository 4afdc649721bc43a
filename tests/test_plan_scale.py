"""plan_scale reads the same config file and overrides as train and compiles on a fake mesh."""

import os
import subprocess
import sys

import pytest

from tests.helpers import REPO


def test_plan_scale_reads_train_config_and_its_mesh_overrides():
  cmd = [sys.executable, "-m", "dispo_jax.plan_scale", "--config=configs/sudoku.py:tiny",
         "--config.method=dispo", "--config.mesh.data=1", "--config.mesh.fsdp=2",
         "--config.rollout.prompts_per_batch=2", "--config.rollout.group_size=2",
         "--devices=2", "--preset=tiny", "--microbatches=0"]
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  header = out.stdout.splitlines()[0]  # one line: the file, its overrides, the shapes
  assert header.startswith("configs/sudoku.py:tiny --config.method=dispo --config.mesh.data=1")
  assert "method=dispo" in header and "mesh(data,fsdp,tensor)=(1,2,1)" in header
  assert "rows=4 tokens/row=56" in out.stdout  # 2 prompts × K 2; prompt 32 + completion 24
  assert "per device peak estimate" in out.stdout
  bad = subprocess.run(cmd + ["--config.optim.b2=-1"], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=600)
  assert bad.returncode != 0 and "optim" in bad.stderr


def test_plan_scale_compiles_the_sampler_with_fewer_layers():
  cmd = [sys.executable, "-m", "dispo_jax.plan_scale", "--config=configs/sudoku.py:tiny",
         "--config.method=dispo", "--config.mesh.data=1", "--config.mesh.fsdp=2",
         "--config.rollout.prompts_per_batch=2", "--config.rollout.group_size=2",
         "--devices=2", "--preset=tiny", "--layers=1", "--part=sampler"]
  out = subprocess.run(cmd, cwd=REPO, env={**os.environ, "JAX_PLATFORMS": "cpu"},
                       capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "part=sampler method=dispo preset=tiny layers=1" in out.stdout
  assert "per device peak estimate" in out.stdout

@pytest.mark.parametrize("config, method", [("configs/sudoku.py:tiny,spg", "spg"),
                                            ("configs/sudoku.py:tiny", "dispo_trace")])
def test_plan_scale_compiles_each_objectives_own_batch(config, method):
  """The abstract batch comes from the objective's own assembly: SPG's sequence weights and no
  replayed base log-probs; trace with DiSPO's branch fields and the group normaliser's weights."""
  cmd = [sys.executable, "-m", "dispo_jax.plan_scale", f"--config={config}",
         f"--config.method={method}", "--config.mesh.data=1", "--config.mesh.fsdp=2",
         "--config.rollout.prompts_per_batch=2", "--config.rollout.group_size=2",
         "--config.rl.state_normaliser=group", "--devices=2", "--preset=tiny", "--layers=1",
         "--microbatches=0"]
  out = subprocess.run(cmd, cwd=REPO, env={**os.environ, "JAX_PLATFORMS": "cpu"},
                       capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  assert f"method={method}" in out.stdout and "per device peak estimate" in out.stdout
