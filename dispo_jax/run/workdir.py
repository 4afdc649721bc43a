"""A work folder belongs to one run: its resolved config, a lock, and a name derived from the config.

* ``config.json`` is written when a run starts (with the package version and, when known, the git
  commit); a rerun in the same folder must have the same config except for the keys in
  :data:`MAY_CHANGE_ON_RESUME` (cadence, caps, paths, the mesh), else it stops before any compute
  naming every changed key.
* ``lock`` holds the owner's host, pid and heartbeat (refreshed every minute while the run lives): a
  second writer stops; a lock whose process is gone (same host), or whose heartbeat stopped long
  ago (another host: a preempted or moved run), is taken over with a warning.
* :func:`default_workdir` names a folder by task, method and a short hash of the config, so two
  different runs never share a folder by accident.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import math
import os
import socket
import subprocess
import threading
import time

from absl import logging
from etils import epath

from dispo_jax.run.config import (ConfigError, current_names, first_names,
                                  without_added_defaults)
from dispo_jax.run.storage import is_object_store, replace_text

# Keys that may differ between a run and its resumption: they do not change what is trained.
MAY_CHANGE_ON_RESUME = ("max_steps", "eval_every", "eval_rows", "checkpoint_every",
                        "keep_checkpoints", "export_hf", "max_bad_steps", "mesh.data", "mesh.fsdp",
                        "mesh.tensor", "model.checkpoint", "model.tokenizer", "base.cache_dir",
                        "data.train_file", "data.eval_file", "distributed_timeout_s", "wandb_project")


def flatten(tree: dict, prefix: str = "") -> dict:
  """``{"a": {"b": 1}} -> {"a.b": 1}``; tuples become lists (as JSON stores them)."""
  out = {}
  for key, value in tree.items():
    name = f"{prefix}{key}"
    if isinstance(value, dict):
      out.update(flatten(value, name + "."))
    else:
      out[name] = list(value) if isinstance(value, tuple) else value
  return out


def run_identity(c) -> dict:
  """The config keys that define what a run trains (everything but :data:`MAY_CHANGE_ON_RESUME`)."""
  return {k: v for k, v in flatten(c.to_dict()).items() if k not in MAY_CHANGE_ON_RESUME}


def config_hash(c) -> str:
  """Eight hex digits of the run identity's SHA-256, over the keys' first names, without the keys
  added at their defaults (:mod:`dispo_jax.run.config`: renaming or adding a key never moves a
  run's folder)."""
  identity = without_added_defaults(run_identity(c))
  blob = json.dumps(first_names(identity), sort_keys=True, default=str)
  return hashlib.sha256(blob.encode()).hexdigest()[:8]


def default_workdir(c) -> str:
  """``$DISPO_JAX_RUNS`` (default ``~/.cache/dispo_jax/runs``: the user's own folder, not a
  shared, predictable one under ``/tmp``) / ``<task>-<method>-<hash>``."""
  root = os.environ.get("DISPO_JAX_RUNS") or os.path.join(
      os.path.expanduser("~"), ".cache", "dispo_jax", "runs")
  return os.path.join(root, f"{c.task}-{c.method}-{config_hash(c)}")


def warn(message: str) -> None:
  """A warning, once: absl's log writes it to the terminal (stderr) and to its log file."""
  logging.warning(message)


RUN_PARTS = ("config.json", "checkpoints", "tensorboard", "export")


def check_run_parts(workdir: str) -> None:
  """:class:`WorkdirError` when a part of a local run folder is a symbolic link: a run's record,
  checkpoints and outputs must be its own (two folders sharing a linked ``checkpoints/`` would
  resume each other's runs)."""
  if is_object_store(workdir):
    return
  for name in RUN_PARTS:
    path = os.path.join(workdir, name)
    if os.path.islink(path):
      raise WorkdirError(f"{path} is a symbolic link (to {os.readlink(path)}); a run's parts must "
                         f"be its own: replace it with the folder or file itself, or use another "
                         f"--workdir")


def _git_commit() -> str | None:
  try:
    out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                         cwd=os.path.dirname(os.path.abspath(__file__)))
    return out.stdout.strip() or None if out.returncode == 0 else None
  except (OSError, subprocess.SubprocessError):
    return None


def config_changes(recorded: dict, current: dict) -> list[str]:
  """``key: old -> new`` for every identity key that differs (removed keys too).

  A key the recorded run does not have was added to the code after the run began; by the
  project's convention a new key's default keeps the earlier behaviour, so it is not a change
  (:func:`record_or_check_config` names such keys in a warning).
  """
  changes = []
  for key in sorted(recorded.keys() | current.keys()):
    if key in MAY_CHANGE_ON_RESUME or key not in recorded:
      continue
    old, new = recorded[key], current.get(key, "<absent>")
    if old != new:
      changes.append(f"{key}: {old!r} -> {new!r}")
  return changes


def record_or_check_config(workdir: str, c, write: bool = True) -> bool:
  """Writes ``config.json`` for a new run, or checks a rerun against it.

  Returns whether the folder already belonged to this run. Raises :class:`ConfigError` naming
  every changed key when it belonged to another.
  """
  path = epath.Path(workdir) / "config.json"
  current = json.loads(json.dumps(flatten(c.to_dict()), default=str))
  if path.exists():
    recorded = _recorded_config(path)
    changes = config_changes(recorded, current)
    added = sorted(current.keys() - recorded.keys())
    if added and not changes:
      message = (f"{workdir}: config keys added since this run began, taken as the behaviour it "
                 f"had: {', '.join(f'{k}={current[k]!r}' for k in added)}")
      warn(message)
    if changes:
      raise ConfigError(f"{workdir} holds another run (its config.json differs in "
                        f"{len(changes)} key(s): {'; '.join(changes)}); use another --workdir, or "
                        f"delete the folder to start over")
    return True
  if _has_checkpoints(workdir):
    raise ConfigError(f"{workdir}: holds checkpoints but no config.json, the record of the run "
                      f"that wrote them; restore it, or use another --workdir")
  if write:
    from dispo_jax import __version__
    record = json.dumps({"config": current, "package_version": __version__,
                         "git_commit": _git_commit()}, indent=1, sort_keys=True)
    replace_text(path, record)
  return False


def _has_checkpoints(workdir: str) -> bool:
  folder = epath.Path(workdir) / "checkpoints"
  return folder.exists() and any(p.name.isdigit() for p in folder.iterdir())


def _recorded_config(path: epath.Path) -> dict:
  """The ``config`` object of a run record, or a :class:`ConfigError` naming the file."""
  try:
    record = json.loads(path.read_text())
  except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
    raise ConfigError(f"{path}: unreadable run record ({e.__class__.__name__}: {e}); restore it, "
                      f"or use another --workdir") from None
  if isinstance(record, dict) and isinstance(record.get("config"), dict):
    return current_names(record["config"], str(path))
  model = isinstance(record, dict) and ("model_type" in record or "architectures" in record)
  what = ("an HF model's config.json: --workdir names a model folder" if model else
          f"not a dispo_jax run record (a JSON {type(record).__name__} without a 'config' object)")
  raise ConfigError(f"{path}: {what}; use another --workdir")


# A held lock's heartbeat period, and the silence after which another host's lock is taken over
# (a run restarted elsewhere after a preemption); both in seconds.
HEARTBEAT_EVERY_S = 60.0
STALE_AFTER_S = 600.0


class WorkdirError(RuntimeError):
  """A work folder that a run may not write now (held lock, unreadable lock); names the file."""


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except OSError as e:
    return e.errno == errno.EPERM
  return True


class WorkdirLock:
  """``<workdir>/lock`` = ``{"host", "pid", "heartbeat"}`` while a run writes the folder (a context
  manager); ``heartbeat`` (unix seconds) is rewritten every ``heartbeat_every_s`` by a thread.

  On a local folder the lock is created atomically (``O_EXCL``) while the folder itself is held
  with ``flock``, so taking over a stale lock (its process gone, or an empty file left by a start
  that could not write it) and creating the new one is one step no other start can interleave
  with. On an object store (``gs://``) it is checked, then written: a guard against mistakes, not
  against two runs started in the same second.

  A lock of another host cannot be checked by its pid: it is taken over once its heartbeat is
  ``stale_after_s`` old (a run restarted on a new VM after a preemption), and refused before that.
  """

  def __init__(self, workdir: str, heartbeat_every_s: float = HEARTBEAT_EVERY_S,
               stale_after_s: float = STALE_AFTER_S):
    self.local = not is_object_store(workdir)
    self.path = os.path.join(workdir, "lock") if self.local else epath.Path(workdir) / "lock"
    self.owner = {"host": socket.gethostname(), "pid": os.getpid()}
    self.heartbeat_every_s, self.stale_after_s = heartbeat_every_s, stale_after_s
    self.held = False
    self._stop = threading.Event()
    self._beats = None

  def acquire(self) -> None:
    if not self.local:
      if self.path.exists():
        self._take_over_if_stale()
      self.path.write_text(self._record())
    else:
      folder = os.open(os.path.dirname(os.path.abspath(self.path)), os.O_RDONLY)
      try:
        fcntl.flock(folder, fcntl.LOCK_EX)  # released when the descriptor is closed
        if os.path.exists(self.path):
          self._take_over_if_stale()
        self._create()
      finally:
        os.close(folder)
    self.held = True
    self._stop.clear()
    self._beats = threading.Thread(target=self._beat, name="workdir-lock-heartbeat", daemon=True)
    self._beats.start()

  def _record(self) -> str:
    return json.dumps({**self.owner, "heartbeat": time.time()})

  def _beat(self) -> None:
    """Rewrites the lock with a fresh heartbeat until released (a failed write is retried)."""
    while not self._stop.wait(self.heartbeat_every_s):
      try:
        replace_text(epath.Path(self.path), self._record())
      except OSError as e:
        logging.warning("%s: heartbeat not written (%s)", self.path, e)

  def _create(self) -> None:
    """Writes the lock with ``O_EXCL``; a lock that cannot be written whole is removed again."""
    fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    try:
      with os.fdopen(fd, "w") as f:
        f.write(self._record())
    except BaseException:
      os.unlink(self.path)
      raise

  def _read_owner(self) -> dict | None:
    """The lock's ``{"host", "pid"[, "heartbeat"]}``, or None when the file is not such a record."""
    try:
      owner = json.loads(epath.Path(self.path).read_text())
    except (OSError, ValueError):  # JSONDecodeError, UnicodeDecodeError
      return None
    if not (isinstance(owner, dict) and isinstance(owner.get("host"), str)
            and type(owner.get("pid")) is int):  # noqa: E721 - not a bool, a float or a string
      return None
    beat = owner.get("heartbeat")  # absent in locks written before heartbeats
    if beat is not None and (type(beat) not in (int, float) or not math.isfinite(beat)):
      return None
    return owner

  def _take_over_if_stale(self) -> None:
    if self.local and os.path.getsize(self.path) == 0:  # a start that could not write its lock
      warn(f"{self.path}: taking over an empty lock (a start could not write it)")
      os.unlink(self.path)
      return
    owner = self._read_owner()
    if owner is None:
      raise WorkdirError(f"{self.path}: not a lock this program wrote (unreadable, or not "
                         f'{{"host", "pid"}}); delete it if no run is using '
                         f"{epath.Path(self.path).parent}")
    if owner["host"] == self.owner["host"] and not _pid_alive(owner["pid"]):
      warn(f"{self.path}: taking over a stale lock (pid {owner['pid']} is gone)")
      epath.Path(self.path).unlink(missing_ok=True)
      return
    silent_s = time.time() - owner["heartbeat"] if "heartbeat" in owner else None
    if owner["host"] != self.owner["host"] and silent_s is not None and (
        silent_s >= self.stale_after_s):
      warn(f"{self.path}: taking over the lock of host {owner['host']} (pid {owner['pid']}): no "
           f"heartbeat for {silent_s:.0f} s, its run is gone (preempted or moved)")
      epath.Path(self.path).unlink(missing_ok=True)
      return
    alive = (f"; its heartbeat is {silent_s:.0f} s old, taken over at {self.stale_after_s:.0f} s"
             if silent_s is not None and owner["host"] != self.owner["host"] else "")
    raise WorkdirError(f"{epath.Path(self.path).parent} is in use by another run (host "
                       f"{owner['host']}, pid {owner['pid']}{alive}); wait for it, use another "
                       f"--workdir, or delete {self.path} if that run is gone")

  def release(self) -> None:
    self._stop.set()
    if self._beats is not None:
      self._beats.join()
      self._beats = None
    if self.held:
      epath.Path(self.path).unlink(missing_ok=True)
      self.held = False

  def __enter__(self):
    self.acquire()
    return self

  def __exit__(self, *exc):
    self.release()
