"""run/workdir.py: a work folder belongs to one run: its record (config.json, renamed keys), its lock
(heartbeat, take-over), its parts, and where it lies by default."""

import json
import os
import re
import socket
import subprocess
import sys
import time

import pytest

from dispo_jax import tiny_base, train as train_lib
from dispo_jax.run import config as config_lib
from dispo_jax.run import workdir as wd
from dispo_jax.run.config import ConfigError
from tests.helpers import REPO, small_config


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
    outputs = [p.communicate(timeout=120) for p in starts]
    assert all(out.split() for out, _ in outputs), [err[-2000:] for _, err in outputs]
    results = [out.split()[-1] for out, _ in outputs]
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


def test_a_key_added_at_its_default_does_not_move_the_run_folder():
  """A run recorded before a key existed keeps its folder; the key at another value moves it."""
  from dispo_jax import recipes
  c = recipes.get_config("sudoku", "tiny")
  flat = wd.flatten(c.to_dict())
  assert {k: flat[k] for k in config_lib.ADDED_KEYS} == config_lib.ADDED_KEYS  # recipe defaults
  folder = wd.config_hash(c)
  before_the_key = recipes.get_config("sudoku", "tiny")
  del before_the_key.data["countdown_numbers"]
  assert wd.config_hash(before_the_key) == folder
  c.data.countdown_numbers = (1, 9)
  assert wd.config_hash(c) != folder


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
