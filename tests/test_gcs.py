"""A gs:// work folder end to end, offline: a GCS emulator on loopback started by the test.

A tiny run writes config.json, metrics, TensorBoard events, orbax checkpoints and the HF export into
the bucket; killed after its first checkpoint and rerun, it resumes from the bucket and ends with
exactly the weights of a straight run; ``evaluate`` reads the exported model back from gs://.

The emulator is gcp-storage-emulator with the ``x-goog-generation`` headers tensorstore needs
(``tests/gcs_emulator.py``); both it and gcsfs are in the test extra.
"""

import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

pytest.importorskip("gcp_storage_emulator")
pytest.importorskip("gcsfs")

from tests.helpers import REPO, tiny_flags  # noqa: E402

BUCKET = "test-bucket"
# The tests' shrunk tiny config, with a checkpoint every 2 updates (the kill comes after the
# first) and the HF export the evaluation reads back.
FLAGS = {**tiny_flags(), "checkpoint_every": 2, "export_hf": True}


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.fixture(scope="module")
def emulator():
  """``(env for the clients, url)`` of a fresh in-memory emulator holding an empty bucket."""
  port = _free_port()
  url = f"http://127.0.0.1:{port}"
  proc = subprocess.Popen([sys.executable, os.path.join(REPO, "tests", "gcs_emulator.py"),
                           str(port), BUCKET], stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  deadline = time.time() + 60
  while time.time() < deadline:
    try:
      socket.create_connection(("127.0.0.1", port), timeout=1).close()
      break
    except OSError:
      time.sleep(0.2)
  env = {"STORAGE_EMULATOR_HOST": url, "TENSORSTORE_GCS_HTTP_URL": url,
         "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator", "JAX_PLATFORMS": "cpu"}
  old = {k: os.environ.get(k) for k in env}
  os.environ.update(env)  # for epath in this process too
  yield env
  for k, v in old.items():
    if v is None:
      os.environ.pop(k, None)
    else:
      os.environ[k] = v
  proc.send_signal(signal.SIGTERM)
  proc.wait(timeout=30)


def _cli(workdir):
  return [sys.executable, "-m", "dispo_jax.train", "--config=configs/sudoku.py:tiny",
          f"--workdir={workdir}"] + [f"--config.{k}={v}" for k, v in FLAGS.items()]


def _weights(workdir):
  """The newest checkpoint's trainable arrays (orbax reads gs:// through tensorstore)."""
  import jax
  import orbax.checkpoint as ocp
  from etils import epath
  folder = epath.Path(workdir) / "checkpoints"
  step = max(int(p.name) for p in folder.iterdir() if p.name.isdigit())
  checkpointer = ocp.StandardCheckpointer()
  tree = checkpointer.metadata(folder / str(step) / "trainable").item_metadata
  local = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=local), tree)
  return step, jax.tree.leaves(checkpointer.restore(folder / str(step) / "trainable", target))


def _first_error(stderr: str) -> str:
  """The first error line of a failed run and what follows (gcsfs's shutdown noise left out)."""
  lines = [l for l in stderr.splitlines() if "Error" in l and "Event loop is closed" not in l]
  return "\n".join(lines[:20]) or stderr[-3000:]


def test_a_gs_work_folder_trains_resumes_exactly_and_evaluates(emulator, tmp_path):
  from etils import epath
  env = {**os.environ, **emulator}
  straight, resumed = f"gs://{BUCKET}/straight", f"gs://{BUCKET}/resumed"
  result = subprocess.run(_cli(straight), cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)
  assert result.returncode == 0, _first_error(result.stderr)
  run = epath.Path(straight)
  assert {p.name for p in run.iterdir()} >= {"config.json", "metrics.jsonl", "checkpoints",
                                             "tensorboard", "export"}
  assert len([line for line in (run / "metrics.jsonl").read_text().splitlines()]) == 4

  proc = subprocess.Popen(_cli(resumed), cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  first = epath.Path(resumed) / "checkpoints" / "2" / "_CHECKPOINT_METADATA"
  deadline = time.time() + 400
  while time.time() < deadline and not first.exists():
    time.sleep(0.5)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert first.exists(), "no checkpoint at step 2 in the bucket before the kill"
  result = subprocess.run(_cli(resumed), cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)
  assert result.returncode == 0, _first_error(result.stderr)
  assert f"resuming {resumed} from step" in result.stdout
  (a_step, a), (b_step, b) = _weights(straight), _weights(resumed)
  assert a_step == b_step == 4
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)

  from dispo_jax import evaluate, recipes
  c = recipes.eval_config("tiny")
  c.checkpoint, c.limit, c.batch_size = f"{straight}/export", 4, 4
  out = evaluate.run(c, str(tmp_path / "eval"))
  assert out["sudoku"][24]["n"] == 4  # the tiny export's own sampler shape (its record)
