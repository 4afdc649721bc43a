"""run/checkpoints.py: a damaged newest checkpoint falls back to the previous one and keeps its
evidence; another model's checkpoint stops the run; the array fingerprints that tell them apart."""

import os
import shutil

import jax
import numpy as np
import pytest

from dispo_jax import train as train_lib
from dispo_jax.run import checkpoints
from tests.helpers import small_config


def _array_files(step_dir):
  files = [os.path.join(root, f) for root, _, names in os.walk(os.path.join(step_dir, "trainable"))
           for f in names]
  return sorted(files, key=os.path.getsize)


@pytest.mark.parametrize("damage", ["truncate", "overwrite", "empty_folder"])
def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, finished_run, damage,
                                                                    capsys, caplog):
  workdir = str(tmp_path / "run")
  shutil.copytree(finished_run, workdir)
  newest = os.path.join(workdir, "checkpoints", "4")
  if damage == "empty_folder":
    shutil.rmtree(newest)
    os.makedirs(newest)
  else:
    target = _array_files(newest)[-1]  # the largest array file
    size = os.path.getsize(target)
    with open(target, "r+b") as f:
      if damage == "truncate":
        f.truncate(size // 2)
      else:
        f.seek(size // 2)
        f.write(np.random.default_rng(0).bytes(400))
  c = small_config(num_steps=4, checkpoint_every=2)
  run, state = train_lib.setup(c, workdir)
  assert state.step == 2, "did not fall back to step 2"
  assert "falling back to the previous checkpoint" in caplog.text
  assert os.path.isdir(os.path.join(workdir, "checkpoints", "damaged-4"))
  run.manager.close()
  run.preempted.restore()


def _damage(step_dir, seed=0):
  target = _array_files(step_dir)[-1]
  with open(target, "r+b") as f:
    f.seek(os.path.getsize(target) // 2)
    f.write(np.random.default_rng(seed).bytes(400))


def test_a_second_damage_of_the_same_step_keeps_the_first_evidence(tmp_path, finished_run):
  workdir = str(tmp_path / "run")
  shutil.copytree(finished_run, workdir)
  folder = os.path.join(workdir, "checkpoints")
  c = small_config(num_steps=4, checkpoint_every=2)
  for attempt in range(2):
    if attempt:  # the step is written again and damaged again
      shutil.copytree(os.path.join(finished_run, "checkpoints", "4"), os.path.join(folder, "4"))
    _damage(os.path.join(folder, "4"), seed=attempt)
    assert _state_of(c, workdir).step == 2
  assert {"damaged-4", "damaged-4-2"} <= set(os.listdir(folder))


def _state_of(c, workdir):
  """The TrainState a run of ``c`` starts from in ``workdir`` (its lock released)."""
  run, state = train_lib.setup(c, workdir)
  run.manager.close()
  run.preempted.restore()
  return state


def test_a_checkpoint_of_another_model_stops_the_run_and_stays_in_place(tmp_path, finished_run):
  import jax.numpy as jnp
  workdir = str(tmp_path / "run")
  shutil.copytree(finished_run, workdir)
  state = _state_of(small_config(num_steps=4, checkpoint_every=2), workdir)
  other = state.replace(opt_state={"mu": jnp.zeros((3, 5))})
  with pytest.raises(checkpoints.CheckpointMismatch, match=r"checkpoints/4: written by another "
                     r"model than this run's \(.*\); the checkpoint is intact and was left"):
    checkpoints.restore_latest(workdir, 3, other)
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2", "4"]


def test_every_single_bit_flip_changes_the_fingerprint():
  rng = np.random.default_rng(1)
  for dtype in (np.float32, jax.numpy.bfloat16):
    x = np.asarray(rng.normal(size=(7, 9)), np.float32).astype(dtype)
    saved = checkpoints.fingerprint([jax.numpy.asarray(x)])
    width = np.dtype(dtype).itemsize * 8
    unsigned = {16: np.uint16, 32: np.uint32}[width]
    for position in rng.choice(x.size, 40):
      for bit in (0, width // 2, width - 2):  # low mantissa, mid, exponent
        flipped = x.copy().view(unsigned).ravel()
        flipped[position] ^= unsigned(1 << bit)
        changed = flipped.view(x.dtype).reshape(x.shape)
        assert not checkpoints.fingerprints_match(
            saved, checkpoints.fingerprint([jax.numpy.asarray(changed)])), (dtype, position, bit)
  # a checkpoint written with the three sums only is still compared by them
  old_format = [entry[:3] for entry in saved]
  assert checkpoints.fingerprints_match(old_format, checkpoints.fingerprint([jax.numpy.asarray(x)]))


def test_fingerprints_tell_a_changed_array_from_a_resharded_one():
  tree = {"a": np.arange(12, dtype=np.float32).reshape(3, 4), "b": np.ones(5, np.float32)}
  saved = checkpoints.fingerprint(jax.tree.map(jax.numpy.asarray, tree))
  assert checkpoints.fingerprints_match(saved, checkpoints.fingerprint(tree))
  tree["a"][1, 2] += 1e-2
  assert not checkpoints.fingerprints_match(saved, checkpoints.fingerprint(tree))
  tree["a"][1, 2] = np.nan
  assert not checkpoints.fingerprints_match(saved, checkpoints.fingerprint(tree))
