"""The benchmarks run end to end (on ``--preset=toy``, seconds; their timings mean nothing here):
the accelerator check is the first command on a lent GPU or TPU, and ``rollout_batch`` measures the
fast-rollout speed-up, so neither may rot when the code under them moves."""

import json
import os
import subprocess
import sys

from tests.helpers import REPO

ENV = {**os.environ, "JAX_PLATFORMS": "cpu"}


def _run(module, *flags):
  out = subprocess.run([sys.executable, "-m", module, "--preset=toy", *flags], cwd=REPO, env=ENV,
                       capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  return out.stdout


def test_accelerator_check_prints_its_table_and_json_line():
  out = _run("benchmarks.accelerator", "--prompts=1", "--group=2", "--forward-batch=1",
             "--prompt-len=8", "--gen=32", "--block=32", "--timesteps=8", "--microbatches=1",
             "--lora-rank=4")
  result = json.loads(out.split("ACCELERATOR ", 1)[1])
  assert result["preset"] == "toy" and result["rows"] == 2 and result["update_s"] > 0


def test_rollout_batch_benchmark_prints_the_fast_rollout_speed_ups():
  out = _run("benchmarks.rollout_batch", "--prompts=1", "--group=2", "--prompt-len=8", "--gen=32",
             "--timesteps=8", "--repeats=1", "--mu=1")
  assert "preset=toy" in out and "speed-up over plain: dual cache" in out
  assert out.count("s per rollout batch") == 3 and "a rollout that cost nothing would give" in out
  cached = [line for line in out.splitlines() if line.startswith("dual cache:")][0]
  assert "rollout " in cached and "replay " in cached and "updates " in cached
  # The prompts lie inside the toy vocabulary: an id past its embedding table reads NaN.
  assert "nan" not in cached, cached


def test_rollout_batch_benchmark_runs_on_a_policy_sft_d_at_its_shapes(tmp_path):
  env = {**ENV, "DISPO_JAX_CACHE": str(tmp_path)}
  out = subprocess.run([sys.executable, "-m", "benchmarks.rollout_batch", "--preset=toy",
                        "--policy=sft", "--sft-steps=5", "--prompts=1", "--group=2", "--gen=32",
                        "--timesteps=8", "--repeats=1", "--mu=1"],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "policy=SFT 5 steps on tiny Sudoku" in out.stdout
  assert "completion tokens before the first EOS" in out.stdout
  assert out.stdout.count("s per rollout batch") == 3
  assert os.listdir(os.path.join(tmp_path, "tiny_base"))  # the SFT'd policy was cached
