"""Two processes on loopback (jax.distributed, 4 CPU devices each) train like one 8-device process."""

import os
import subprocess
import sys

import numpy as np

from tests.helpers import REPO, free_port, fresh_workdir, read_metrics, tiny_flags, trainable_leaves


def _cmd(workdir):
  flags = {**tiny_flags(), "num_steps": 2, "mesh.data": 8, "eval_every": 2}
  return [sys.executable, "-m", "dispo_jax.train", "--config=configs/sudoku.py:tiny",
          f"--workdir={workdir}"] + [f"--config.{k}={v}" for k, v in flags.items()]


def test_two_processes_match_one(tmp_path, base_dir):
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  single = fresh_workdir(tmp_path, "single")
  subprocess.run(_cmd(single), cwd=REPO, check=True, capture_output=True, timeout=600,
                 env={**env, "JAX_NUM_CPU_DEVICES": "8"})
  multi = fresh_workdir(tmp_path, "multi")
  port = free_port()
  procs = [subprocess.Popen(_cmd(multi), cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True,
                            env={**env, "JAX_NUM_CPU_DEVICES": "4",
                                 "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}",
                                 "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": str(i)})
           for i in range(2)]
  errors = [p.communicate(timeout=600)[1] for p in procs]
  assert all(p.returncode == 0 for p in procs), "\n\n".join(
      f"process {i} (exit {p.returncode}):\n{err[-2500:]}" for i, (p, err) in
      enumerate(zip(procs, errors)))
  e1 = [(r["step"], r["eval/accuracy"]) for r in read_metrics(single) if "eval/accuracy" in r]
  e2 = [(r["step"], r["eval/accuracy"]) for r in read_metrics(multi) if "eval/accuracy" in r]
  assert [s for s, _ in e1] == [0, 2] and e1 == e2  # evaluation inside train on two hosts
  m1 = [r for r in read_metrics(single) if "loss" in r]
  m2 = [r for r in read_metrics(multi) if "loss" in r]
  assert len(m1) == len(m2) == 2
  for a, b in zip(m1, m2):
    assert a["reward_mean"] == b["reward_mean"]
    np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-4, atol=1e-6)
  for x, y in zip(trainable_leaves(single)[1], trainable_leaves(multi)[1]):
    np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6)


def test_sigterm_to_one_host_stops_both_at_the_same_step(tmp_path, base_dir):
  """Preemption is agreed across hosts: SIGTERM to process 1 only makes both save the same step
  and exit 0 (a per-process flag would leave process 0 waiting in a collective)."""
  import signal
  import time
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_NUM_CPU_DEVICES": "4"}
  workdir = fresh_workdir(tmp_path, "term")
  port = free_port()
  cmd = _cmd(workdir) + ["--config.num_steps=1000", "--config.checkpoint_every=1000",
                         "--config.eval_every=0"]
  procs = [subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, env={**env, "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}",
                                            "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": str(i)})
           for i in range(2)]
  metrics = os.path.join(workdir, "metrics.jsonl")
  deadline = time.time() + 400
  while time.time() < deadline and not (os.path.exists(metrics) and open(metrics).read()):
    time.sleep(0.2)
  procs[1].send_signal(signal.SIGTERM)
  errors = [p.communicate(timeout=400)[1] for p in procs]
  assert all(p.returncode == 0 for p in procs), "\n\n".join(e[-2000:] for e in errors)
  steps = sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit())
  assert len(steps) == 1 and steps[0] % 2 == 0 and 0 < steps[0] < 1000, steps
  assert trainable_leaves(workdir)[0] == steps[0]
