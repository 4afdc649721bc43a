"""``metrics.jsonl`` and TensorBoard events of a run, written from process 0.

One JSON object per line: ``{"step": int, "rollout": int, name: float | null, ...}``; a non-finite
value is written as ``null`` (valid JSON). On resume, rows logged after the checkpoint are dropped
(training rows of later steps; evaluations of the checkpoint itself are kept); an unreadable line is
skipped with a warning and the rest kept; TensorBoard purges events after the resumed step.
"""

from __future__ import annotations

import hashlib
import json
import math
import os

import jax
import numpy as np
from absl import logging
from etils import epath

from dispo_jax.run.storage import LineFile, is_object_store, replace_text
from dispo_jax.run.workdir import warn


def _logged_before(row: dict, resume_step: int) -> bool:
  """Whether a metrics row belongs to the run up to checkpoint ``resume_step``: training rows of
  steps before it, and evaluations of the checkpoint itself (logged at ``step == resume_step``)."""
  if row["step"] < resume_step:
    return True
  return row["step"] == resume_step and all(k == "step" or k.startswith("eval/") for k in row)


def read_rows(path) -> list[dict]:
  """Every readable row of a metrics file (unreadable lines skipped, with a warning)."""
  rows = []
  with epath.Path(path).open("rb") as f:
    for number, line in enumerate(f, 1):
      try:
        row = json.loads(line)
      except ValueError:  # JSONDecodeError, UnicodeDecodeError
        row = None
      step = row.get("step") if isinstance(row, dict) else None
      if type(step) is int:  # noqa: E721 - not a bool, a float, inf or a string
        rows.append(row)
      elif line.strip():
        logging.warning("%s:%d: unreadable metrics line skipped (not an object with an integer "
                        "step)", path, number)
  return rows


def start_wandb(project: str, workdir: str, record: dict | None):
  """A Weights & Biases run for ``workdir`` (its id derived from the folder, so a resumed run
  continues the same W&B run); ``record``: the config, logged with it."""
  try:
    import wandb
  except ImportError:
    raise ImportError(f"config.wandb_project={project!r} needs Weights & Biases: "
                      f"pip install 'dispo_jax[wandb]'") from None
  folder = str(epath.Path(workdir))
  run_id = hashlib.sha256(folder.encode()).hexdigest()[:16]
  return wandb.init(project=project, name=os.path.basename(folder.rstrip("/")), id=run_id,
                    resume="allow", config=record or {})


# The least seconds between two uploads of ``metrics.jsonl`` on an object store (rewritten whole).
UPLOAD_EVERY_S = 60.0


class MetricWriter:
  """JSONL + TensorBoard (+ Weights & Biases with ``wandb_project``); on resume, keeps exactly
  what was logged up to the checkpoint."""

  def __init__(self, workdir: str, resume_step: int, wandb_project: str = "",
               record: dict | None = None):
    self.enabled = jax.process_index() == 0
    self.path = epath.Path(workdir) / "metrics.jsonl"
    self.wandb = None
    if not self.enabled:
      return
    if wandb_project:
      self.wandb = start_wandb(wandb_project, workdir, record)
    local = not is_object_store(self.path)
    if local and os.path.islink(self.path):
      warn(f"{self.path} is a symbolic link (to {os.readlink(self.path)}); replaced by this run's "
           f"own file, its target left untouched")
      os.unlink(self.path)
    if local and not resume_step and os.path.isfile(self.path) and os.path.getsize(self.path):
      self._set_aside()
    kept = ""
    if self.path.exists():
      kept = "".join(json.dumps(r) + "\n" for r in read_rows(self.path)
                     if _logged_before(r, resume_step))
      replace_text(self.path, kept)
    self.file = LineFile(self.path, kept, upload_every_s=UPLOAD_EVERY_S)
    from tensorboardX import SummaryWriter
    self.tb = SummaryWriter(str(epath.Path(workdir) / "tensorboard"),
                            purge_step=resume_step if resume_step else None)

  def _set_aside(self) -> None:
    """A run starting from step 0 keeps no earlier rows: a ``metrics.jsonl`` already there (a
    start that stopped before its first checkpoint, or another program's file) is renamed to
    ``metrics.jsonl.before-<n>``, with a warning, instead of being emptied."""
    n = 1
    while (aside := self.path.parent / f"{self.path.name}.before-{n}").exists():
      n += 1
    warn(f"{self.path}: holds rows no checkpoint of this run covers; kept as {aside}, this run's "
         f"metrics start afresh")
    os.rename(self.path, aside)

  def write(self, step: int, metrics: dict) -> None:
    if not self.enabled:
      return
    clean = {}
    for k, v in metrics.items():
      if np.ndim(v) == 0:
        v = int(v) if k == "rollout" else float(v)
        clean[k] = v if math.isfinite(v) else None
    self.file.append([json.dumps({"step": step, **clean}) + "\n"])
    for k, v in clean.items():
      if v is not None:
        self.tb.add_scalar(k, v, step)
    self.tb.flush()
    if self.wandb is not None:
      self.wandb.log({k: v for k, v in clean.items() if v is not None}, step=step)

  def flush(self) -> None:
    """Writes out every row logged so far (an object-store file is uploaded at most once every
    :data:`UPLOAD_EVERY_S`; the trainer flushes before each checkpoint so that a resumed run finds
    every row up to its step)."""
    if self.enabled:
      self.file.flush()

  def close(self):
    if self.enabled:
      self.file.flush()
      self.tb.close()
      if self.wandb is not None:
        self.wandb.finish()
