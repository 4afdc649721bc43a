"""A work folder cannot silently mix, lose or misreport a run (one test per fault of a fault
probe): a folder belongs to one run, nothing non-finite is trained on or saved, damaged
checkpoints, logs and signals, data files, bounded parsers. (Evaluation fingerprints are in
tests/test_evaluate.py.)
"""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from dispo_jax import tiny_base, train as train_lib
from dispo_jax.run import checkpoints, config as config_lib, distributed, metrics as metrics_lib
from dispo_jax.run import workdir as wd
from dispo_jax.run.config import ConfigError
from dispo_jax.tasks import data, get_task, gsm8k
from dispo_jax.tasks.base import find_delimited
from tests.helpers import REPO, fresh_workdir, read_metrics, small_config, trainable_leaves


# A work folder belongs to one run ----


def test_resume_with_another_method_stops_naming_the_key(tmp_path):
  workdir = str(tmp_path / "run")
  os.makedirs(workdir)
  wd.record_or_check_config(workdir, small_config())
  with pytest.raises(ConfigError, match=r"holds another run .*method: 'dispo' -> 'diffu_grpo'"):
    train_lib.train(small_config(method="diffu_grpo"), workdir)
  with pytest.raises(ConfigError, match=r"seed: 0 -> 1; .*rollout\.group_size: 4 -> 8|"
                     r"rollout\.group_size: 4 -> 8; seed: 0 -> 1"):
    wd.record_or_check_config(workdir, small_config(seed=1, **{"rollout.group_size": 8}))
  # Cadence, caps, paths and the mesh may change on resume.
  assert wd.record_or_check_config(workdir, small_config(max_steps=2, eval_every=2,
                                                         checkpoint_every=4))
  recorded = json.load(open(os.path.join(workdir, "config.json")))
  assert recorded["package_version"] and recorded["config"]["method"] == "dispo"


def test_a_run_recorded_before_a_key_existed_resumes_and_the_key_is_named(tmp_path, caplog):
  workdir = str(tmp_path / "run")
  os.makedirs(workdir)
  wd.record_or_check_config(workdir, small_config())
  path = os.path.join(workdir, "config.json")
  record = json.load(open(path))
  del record["config"]["data.unique_solutions"]  # as written by a version without the key
  json.dump(record, open(path, "w"))
  assert wd.record_or_check_config(workdir, small_config())
  assert "added since this run began" in caplog.text
  record["config"]["seed"] = 7  # a recorded key that differs still stops the run
  json.dump(record, open(path, "w"))
  with pytest.raises(ConfigError, match=r"seed: 7 -> 0"):
    wd.record_or_check_config(workdir, small_config())


def test_a_run_recorded_under_old_key_names_resumes_and_the_new_names_are_given(tmp_path, caplog):
  workdir = str(tmp_path / "run")
  os.makedirs(workdir)
  wd.record_or_check_config(workdir, small_config())
  path = os.path.join(workdir, "config.json")
  record = json.load(open(path))
  for old, new in config_lib.RENAMED_KEYS.items():  # as written before the keys were renamed
    record["config"][old] = record["config"].pop(new)
  json.dump(record, open(path, "w"))
  assert wd.record_or_check_config(workdir, small_config())
  assert "rl.alpha_step is now called rl.alpha_state" in caplog.text
  assert "added since this run began" not in caplog.text
  record["config"]["sampler.steps"] += 1  # an old-named key that differs still stops the run
  json.dump(record, open(path, "w"))
  with pytest.raises(ConfigError, match=r"sampler\.num_timesteps: \d+ -> \d+"):
    wd.record_or_check_config(workdir, small_config())


def test_a_second_writer_stops_and_a_stale_lock_is_taken_over(tmp_path, caplog):
  workdir = str(tmp_path / "locked")
  os.makedirs(workdir)
  with wd.WorkdirLock(workdir):
    with pytest.raises(RuntimeError, match=r"in use by another run .*pid %d" % os.getpid()):
      train_lib.train(small_config(), workdir)
  dead = subprocess.Popen([sys.executable, "-c", "pass"])
  dead.wait()
  with open(os.path.join(workdir, "lock"), "w") as f:
    json.dump({"host": wd.socket.gethostname(), "pid": dead.pid}, f)
  lock = wd.WorkdirLock(workdir)
  lock.acquire()
  assert "taking over a stale lock" in caplog.text
  assert json.load(open(lock.path))["pid"] == os.getpid()
  lock.release()
  assert not os.path.exists(lock.path)


@pytest.mark.parametrize("content, match", [
    (b'{"config": {"method": "dis', r"unreadable run record \(JSONDecodeError"),
    (b'{"config": \xff\xfe}', r"unreadable run record \(UnicodeDecodeError"),
    (b'[1, 2]', r"not a dispo_jax run record \(a JSON list without a 'config' object\)"),
    (b'{"config": [1]}', r"not a dispo_jax run record \(a JSON dict"),
    (json.dumps({"architectures": ["LLaDAModelLM"], "model_type": "llada", "d_model": 64}).encode(),
     r"an HF model's config\.json: --workdir names a model folder"),
])
def test_a_corrupt_run_record_stops_on_one_line_and_touches_nothing(tmp_path, content, match):
  workdir = tmp_path / "run"
  workdir.mkdir()
  (workdir / "config.json").write_bytes(content)
  (workdir / "model.safetensors").write_bytes(b"weights")
  before = {p.name: p.read_bytes() for p in workdir.iterdir()}
  with pytest.raises(ConfigError, match=re.escape(str(workdir / "config.json")) + ": " + match):
    train_lib.train(small_config(), str(workdir))
  assert {p.name: p.read_bytes() for p in workdir.iterdir()} == before


def test_another_hosts_lock_is_taken_over_only_once_its_heartbeat_stopped(tmp_path, caplog):
  """A run restarted on a new VM after a preemption finds the old VM's lock: refused while its
  heartbeat is fresh, taken over once it is ``stale_after_s`` old; a lock without a heartbeat
  (cannot be judged) stays refused."""
  workdir = tmp_path / "run"
  workdir.mkdir()
  lock_file = workdir / "lock"
  old_vm = {"host": "preempted-vm", "pid": 4242}
  lock_file.write_text(json.dumps({**old_vm, "heartbeat": time.time() - 30}))
  with pytest.raises(wd.WorkdirError, match=r"host preempted-vm, pid 4242; its heartbeat is "
                     r"3\d s old, taken over at 600 s"):
    wd.WorkdirLock(str(workdir)).acquire()
  lock_file.write_text(json.dumps(old_vm))
  with pytest.raises(wd.WorkdirError, match=r"in use by another run \(host preempted-vm, pid 4242\)"):
    wd.WorkdirLock(str(workdir)).acquire()
  lock_file.write_text(json.dumps({**old_vm, "heartbeat": time.time() - 601}))
  lock = wd.WorkdirLock(str(workdir))
  lock.acquire()
  assert "taking over the lock of host preempted-vm (pid 4242): no heartbeat for 601 s" in caplog.text
  assert json.loads(lock_file.read_text())["pid"] == os.getpid()
  lock.release()
  assert not lock_file.exists()


def test_a_held_lock_keeps_its_heartbeat_fresh_until_released(tmp_path):
  workdir = tmp_path / "run"
  workdir.mkdir()
  lock = wd.WorkdirLock(str(workdir), heartbeat_every_s=0.05)
  lock.acquire()
  first = json.loads((workdir / "lock").read_text())["heartbeat"]
  time.sleep(0.5)
  later = json.loads((workdir / "lock").read_text())
  assert later["heartbeat"] > first and later["pid"] == os.getpid()
  lock.release()
  time.sleep(0.2)  # a heartbeat thread left running would write the lock again
  assert not (workdir / "lock").exists() and not (workdir / "lock.tmp").exists()


def test_an_empty_lock_left_by_a_failed_start_is_taken_over(tmp_path, caplog):
  workdir = tmp_path / "run"
  workdir.mkdir()
  (workdir / "lock").write_bytes(b"")  # a start that hit a full disk while writing it
  lock = wd.WorkdirLock(str(workdir))
  lock.acquire()
  assert "taking over an empty lock" in caplog.text
  assert json.load(open(lock.path))["pid"] == os.getpid()
  lock.release()


TAKE_LOCK = """
import sys, time
from dispo_jax.run import workdir as wd
try:
  wd.WorkdirLock(sys.argv[1]).acquire()
except wd.WorkdirError:
  print("lost", flush=True)
  sys.exit(0)
print("won", flush=True)
time.sleep(8)  # hold it while the others try
"""


def test_a_stale_lock_is_taken_over_by_exactly_one_of_several_starts(tmp_path):
  gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                        capture_output=True, text=True).stdout.strip()
  for trial in range(3):
    workdir = tmp_path / f"run{trial}"
    workdir.mkdir()
    (workdir / "lock").write_text(json.dumps({"host": socket.gethostname(), "pid": int(gone)}))
    starts = [subprocess.Popen([sys.executable, "-c", TAKE_LOCK, str(workdir)], cwd=REPO,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
              for _ in range(4)]
    results = [p.communicate(timeout=120)[0].split()[-1] for p in starts]
    assert sorted(results) == ["lost"] * 3 + ["won"], (trial, results)


def test_a_symlinked_run_part_stops_the_run_and_releases_the_lock(tmp_path):
  shared = tmp_path / "shared_checkpoints"
  shared.mkdir()
  workdir = tmp_path / "run"
  workdir.mkdir()
  os.symlink(shared, workdir / "checkpoints")
  with pytest.raises(wd.WorkdirError, match=r"run/checkpoints is a symbolic link \(to .*"
                     r"shared_checkpoints\); a run's parts must be its own"):
    train_lib.train(small_config(), str(workdir))
  assert not (workdir / "lock").exists() and not (workdir / "config.json").exists()


def test_the_default_work_folder_is_under_the_users_own_cache(monkeypatch, tmp_path):
  monkeypatch.delenv("DISPO_JAX_RUNS", raising=False)
  monkeypatch.setenv("HOME", str(tmp_path))
  folder = wd.default_workdir(small_config())
  assert folder.startswith(str(tmp_path / ".cache" / "dispo_jax" / "runs") + os.sep)


def test_checkpoints_without_a_run_record_stop_the_run(tmp_path):
  workdir = tmp_path / "run"
  (workdir / "checkpoints" / "8").mkdir(parents=True)
  with pytest.raises(ConfigError, match=r"holds checkpoints but no config\.json"):
    wd.record_or_check_config(str(workdir), small_config(method="diffu_grpo"))
  assert not (workdir / "config.json").exists()
  (workdir / "config.json").write_text("")  # emptied: unreadable, not a fresh start
  with pytest.raises(ConfigError, match=r"unreadable run record"):
    wd.record_or_check_config(str(workdir), small_config(method="diffu_grpo"))


@pytest.mark.parametrize("content", [b"\x00\xffgarbage", b"[1, 2]", b'{"host": "h", "pid": "12"}',
                                     b'{"host": "h", "pid": true}'])
def test_an_unreadable_lock_stops_on_one_line_naming_it(tmp_path, content):
  workdir = tmp_path / "run"
  workdir.mkdir()
  (workdir / "lock").write_bytes(content)
  with pytest.raises(wd.WorkdirError, match=re.escape(str(workdir / "lock")) + ": not a lock"):
    wd.WorkdirLock(str(workdir)).acquire()
  assert (workdir / "lock").read_bytes() == content
  message = train_lib.fatal_message(wd.WorkdirError("x"), str(workdir))
  assert message == "error: x"


def test_default_workdir_and_base_cache_are_keyed_on_the_config():
  a, b = small_config(), small_config(method="diffu_grpo")
  assert wd.default_workdir(a) == wd.default_workdir(small_config())
  assert wd.default_workdir(a) != wd.default_workdir(b)
  assert wd.default_workdir(a) == wd.default_workdir(small_config(max_steps=2))  # same run
  folder = lambda c: tiny_base.base_folder(train_lib.base_spec(c))
  assert folder(a) == folder(b)  # the base does not depend on the method
  for change in ({"model.overrides.d_model": 64}, {"base.steps": 151}, {"data.seed": 1},
                 {"sampler.gen_length": 32, "sampler.block_length": 32}):
    assert folder(small_config(**change)) != folder(a), change


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


# Nothing non-finite is trained on or saved ----


def test_a_diverging_base_sft_stops_naming_the_key_and_caches_nothing(tmp_path):
  c = small_config(**{"base.learning_rate": 1e38, "base.cache_dir": str(tmp_path)})
  with pytest.raises(ConfigError, match=r"config\.base\.learning_rate=1e\+38: the tiny base's SFT "
                     r"diverged \(SFT step \d+: the loss is nan"):
    tiny_base.prepare_base(train_lib.base_spec(c), progress=False)
  root = tmp_path / "tiny_base"
  assert not root.exists() or not any(root.iterdir())


# Damaged checkpoints ----


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, base_dir):
  workdir = str(tmp_path_factory.mktemp("finished") / "run")
  os.makedirs(workdir)
  train_lib.train(small_config(num_steps=4, checkpoint_every=2), workdir)
  return workdir


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


# Logs and signals ----


def test_a_symlinked_metrics_file_is_replaced_never_written_through(tmp_path, caplog):
  outside = tmp_path / "elsewhere.jsonl"
  outside.write_text('{"step": 0, "theirs": 1}\n')
  workdir = tmp_path / "run"
  workdir.mkdir()
  os.symlink(outside, workdir / "metrics.jsonl")
  writer = metrics_lib.MetricWriter(str(workdir), resume_step=0)
  writer.write(0, {"loss": 1.0})
  writer.close()
  assert "is a symbolic link" in caplog.text
  assert outside.read_text() == '{"step": 0, "theirs": 1}\n'
  assert not os.path.islink(workdir / "metrics.jsonl")
  assert [json.loads(l) for l in open(workdir / "metrics.jsonl")] == [{"step": 0, "loss": 1.0}]


def test_object_store_metrics_are_uploaded_at_most_once_a_minute_and_whole_at_a_flush(
    tmp_path, monkeypatch):
  """An object-store ``metrics.jsonl`` is rewritten whole (no appends there): once every
  ``UPLOAD_EVERY_S``, not per row, and completely at the flush before a checkpoint and at close."""
  from dispo_jax.run import storage
  for module in (storage, metrics_lib):  # this folder behaves as a gs:// one
    monkeypatch.setattr(module, "is_object_store", lambda path: True)
  now = [1000.0]
  monkeypatch.setattr(storage.time, "monotonic", lambda: now[0])
  writer = metrics_lib.MetricWriter(str(tmp_path), resume_step=0)
  steps_uploaded = lambda: [r["step"] for r in metrics_lib.read_rows(str(tmp_path / "metrics.jsonl"))]
  writer.write(0, {"loss": 1.0})
  assert steps_uploaded() == [0]  # the first row goes out at once
  for step in (1, 2):
    now[0] += 20
    writer.write(step, {"loss": 1.0})
  assert steps_uploaded() == [0]
  now[0] += metrics_lib.UPLOAD_EVERY_S
  writer.write(3, {"loss": 1.0})
  assert steps_uploaded() == [0, 1, 2, 3]
  writer.write(4, {"loss": 1.0})
  writer.flush()
  assert steps_uploaded() == [0, 1, 2, 3, 4]
  writer.write(5, {"loss": 1.0})
  writer.close()
  assert steps_uploaded() == [0, 1, 2, 3, 4, 5]


def test_a_corrupt_metrics_line_is_skipped_not_the_rest_and_nan_is_null(tmp_path):
  path = tmp_path / "metrics.jsonl"
  rows = [{"step": i, "loss": float(i)} for i in range(6)]
  lines = [json.dumps(r) + "\n" for r in rows]
  lines[2] = '{"step": 2, "loss": 0.\n'  # torn in the middle of the history
  path.write_text("".join(lines))
  writer = metrics_lib.MetricWriter(str(tmp_path), resume_step=5)
  writer.write(5, {"loss": float("nan"), "rollout": 2})
  writer.close()
  kept = [json.loads(line) for line in path.read_text().splitlines()]
  assert [r["step"] for r in kept] == [0, 1, 3, 4, 5]
  assert kept[-1] == {"step": 5, "loss": None, "rollout": 2}
  assert "NaN" not in path.read_text()


def test_a_fresh_run_keeps_a_metrics_file_it_finds_beside_its_own(tmp_path, caplog):
  theirs = '{"step": 0, "theirs": 1}\n'
  for n in (1, 2):
    (tmp_path / "metrics.jsonl").write_text(theirs)
    writer = metrics_lib.MetricWriter(str(tmp_path), resume_step=0)
    writer.write(0, {"loss": 1.0})
    writer.close()
    assert (tmp_path / f"metrics.jsonl.before-{n}").read_text() == theirs
    assert "kept as" in caplog.text
    caplog.clear()
  assert [json.loads(l) for l in open(tmp_path / "metrics.jsonl")] == [{"step": 0, "loss": 1.0}]


def test_metrics_rows_without_an_integer_step_are_skipped(tmp_path):
  path = tmp_path / "metrics.jsonl"
  path.write_text('{"step": 0, "loss": 1.0}\n{"step": "1", "loss": 2.0}\n{"step": Infinity}\n'
                  '{"step": 1.0}\n{"step": true}\n[3]\n{"step": 2, "loss": 3.0}\n')
  assert [r["step"] for r in metrics_lib.read_rows(str(path))] == [0, 2]
  writer = metrics_lib.MetricWriter(str(tmp_path), resume_step=2)  # resume keeps the good rows
  writer.close()
  assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [0]


def test_ctrl_c_asks_for_a_clean_stop_and_a_second_one_aborts():
  before = signal.getsignal(signal.SIGINT)
  preempted = distributed.Preemption()
  try:
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(0.1)
    assert preempted.flag
    with pytest.raises(KeyboardInterrupt):
      os.kill(os.getpid(), signal.SIGINT)
      time.sleep(0.1)
  finally:
    preempted.restore()
  assert signal.getsignal(signal.SIGINT) is before


# Data files ----


def test_bad_data_files_name_file_and_line(tmp_path):
  bad_bytes = tmp_path / "bad.jsonl"
  bad_bytes.write_bytes(b'{"nums": [1, 2], "target": 3}\n{"nums": [1], "target": "\xff"}\n')
  with pytest.raises(data.DataError, match=r"bad\.jsonl:2: not UTF-8"):
    data.load_countdown(str(bad_bytes))
  csv_bad = tmp_path / "s.csv"
  csv_bad.write_bytes(b"Puzzle,Solution\n" + b"\xfe" * 3 + b",x\n")
  with pytest.raises(data.DataError, match=r"s\.csv:2: not UTF-8"):
    data.load_sudoku_csv(str(csv_bad))
  huge = tmp_path / "huge.csv"
  huge.write_text("Puzzle,Solution\n\"" + "1" * 200_000 + "\",x\n")
  with pytest.raises(data.DataError, match=r"huge\.csv:\d+: malformed CSV"):
    data.load_sudoku_csv(str(huge))
  for name, loader in (("e.jsonl", data.load_gsm8k), ("e.csv", data.load_sudoku_csv)):
    (tmp_path / name).write_text("\n\n" if name.endswith("jsonl") else "Puzzle,Solution\n")
    with pytest.raises(data.DataError, match=re.escape(name) + r": no rows"):
      loader(str(tmp_path / name))
  for row, what in (('{"nums": [1, 2], "target": 6.7}', "target=6.7"),
                    ('{"nums": [true, 2], "target": 3}', "nums=True"),
                    ('{"nums": [], "target": 3}', "no numbers"),
                    ('{"input": "1,2.5", "output": "3"}', "input='2.5'")):
    (tmp_path / "c.jsonl").write_text(row + "\n")
    with pytest.raises(data.DataError, match=r"c\.jsonl:1: .*" + re.escape(what)):
      data.load_countdown(str(tmp_path / "c.jsonl"))


def test_the_tiny_setting_rejects_data_files_and_truncation_is_counted(finished_run):
  with pytest.raises(ConfigError, match=r"data\.train_file / eval_file are set but the tiny"):
    train_lib.validate_config(small_config(**{"data.train_file": "/tmp/x.jsonl"}))
  rows = [r for r in read_metrics(finished_run) if "loss" in r]
  assert rows and all(r["prompts_truncated"] == 0 for r in rows)  # counted on every update
  from dispo_jax.model import tokenizer as tok
  base = tiny_base.base_folder(train_lib.base_spec(small_config()))
  tokenizer = tok.load_tokenizer(os.path.join(base, "tokenizer"))
  texts = [tok.render_chat("Sudoku 0200012413000001"), "short"]
  full = len(tokenizer(texts[0], add_special_tokens=False)["input_ids"])
  tokens, lengths, truncated = tok.encode_prompts(tokenizer, texts, full - 1, count_truncated=True)
  assert truncated == 1 and lengths[0] == full - 1


# Bounded parsers ----


PIECES = ["<answer>", "</answer>", "<answer>\n", "\\boxed{", "<reasoning>", "</reasoning>",
          "</reasoning>\n<answer>", "\n</reasoning>\n<answer>\n", "{", "}", "\n", "1", "=", "####",
          "\\frac{", "$", "\\\\", "<reasoning>\n"]


@pytest.mark.parametrize("name", ["sudoku", "countdown", "gsm8k", "math500"])
def test_every_reward_and_metric_is_fast_on_100k_characters(name):
  """The answer regexes were quadratic (5-18 s on these strings); linear code takes milliseconds.
  The bound is loose (0.5 s) so a busy CI machine cannot fail it; a quadratic parser would."""
  row = {"sudoku": {"puzzle": "0" * 16, "solution": "1234" * 4},
         "countdown": {"numbers": [1, 2, 3], "target": 6},
         "gsm8k": {"question": "q", "answer": "x\n#### 3"},
         "math500": {"problem": "p", "answer": "3"}}[name]
  for d1_compat in (False, True):
    task = get_task(name, d1_compat)
    fns = {**task.reward_terms, "score": task.score}
    for i, piece in enumerate(PIECES):
      prefix = "<reasoning>" if i % 2 else ""
      text = (prefix + piece * (100_000 // len(piece)))[:100_000]
      for term, fn in fns.items():
        start = time.perf_counter()
        fn(text, row)
        assert time.perf_counter() - start < 0.5, (name, d1_compat, term, piece)


def test_linear_parsers_agree_with_the_regexes_they_replace():
  rng = np.random.default_rng(0)
  alphabet = ["<reasoning>", "</reasoning>", "<answer>", "</answer>", "\n", " ", "a", "\\boxed{",
              "}", "<reasoning>\n", "\n</answer>\n"]
  for _ in range(20_000):
    text = "".join(rng.choice(alphabet, rng.integers(0, 10)))
    if rng.random() < 0.5:
      text = "<reasoning>" + text
    for dotall in (True, False):
      flags = re.DOTALL if dotall else 0
      assert find_delimited(text, "<answer>", "</answer>", dotall) == re.findall(
          r"<answer>(.*?)</answer>", text, flags)
      assert find_delimited(text, "\\boxed{", "}", dotall) == re.findall(
          r"\\boxed{(.*?)}", text, flags)
      assert gsm8k.soft_format_match(text, dotall) == bool(re.match(gsm8k._SOFT, text, flags))
      assert gsm8k.strict_format_match(text, dotall) == bool(re.match(gsm8k._STRICT, text, flags))


# The launcher, export permissions, a full disk ----


def test_configuration_errors_print_one_line_without_a_traceback(tmp_path):
  result = subprocess.run(
      [sys.executable, "-m", "dispo_jax.train", "--config=configs/sudoku.py:tiny",
       f"--workdir={tmp_path}", "--config.optim.b2=-1.0"],
      cwd=REPO, capture_output=True, text=True, timeout=120)
  assert result.returncode != 0
  assert "Traceback" not in result.stderr
  assert result.stderr.strip().splitlines()[-1] == (
      "error: config.optim: b2=-1.0 must be in [0, 1)")


def test_the_tpu_launcher_quotes_paths_for_the_remote_shell(tmp_path):
  script = open(os.path.join(REPO, "launch", "tpu_pod.sh")).read()
  assert "--workdir=$WORKDIR" not in script.replace('"--workdir=$WORKDIR"', "")
  assert "printf '%q' \"--workdir=$WORKDIR\"" in script
  assert "printf '%q' \"--config.model.checkpoint=$CHECKPOINT\"" in script


def test_exported_weights_are_readable_by_the_group(tmp_path):
  from dispo_jax.model import checkpoint, llada
  from dispo_jax.model.config import get_config
  cfg = get_config("tiny", vocab_size=64, d_model=32, n_layers=1, n_heads=2, mlp_hidden_size=64)
  _, state = llada.init_model(cfg)
  old = os.umask(0o022)
  try:
    files = checkpoint.export_hf_checkpoint(cfg, state, str(tmp_path / "export"), dtype="float32")
  finally:
    os.umask(old)
  assert all(os.stat(f).st_mode & 0o777 == 0o644 for f in files)


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
