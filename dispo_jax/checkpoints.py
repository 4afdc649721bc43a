"""Orbax checkpoints of a :class:`TrainState`, with a fingerprint and a fallback on damage.

Each checkpoint holds the trainable parameters, the optimizer state and a JSON ``meta`` record that
includes a fingerprint of every array (per leaf: the sum, the sum of absolute values and the count
of non-finite entries, computed on device, so it works on any mesh and host count). A restore
checks the fingerprint; a step that fails to restore or to match is moved aside
(``checkpoints/damaged-<step>``) with a warning and the previous step is tried.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from flax import nnx

from dispo_jax.pipeline.step import TrainState
from dispo_jax.workdir import is_object_store


def checkpoint_folder(workdir: str) -> epath.Path:
  """``<workdir>/checkpoints`` (local paths made absolute, ``gs://`` kept as is)."""
  root = str(workdir) if is_object_store(workdir) else os.path.abspath(workdir)
  return epath.Path(root) / "checkpoints"


def manager(workdir: str, keep: int) -> ocp.CheckpointManager:
  # On object stores orbax knows an unfinished step only by its missing commit file and, with
  # cleanup on, deletes it while restore_latest moves it aside: there the move is the only cleanup.
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=True,
                                         cleanup_tmp_directories=not is_object_store(workdir))
  return ocp.CheckpointManager(checkpoint_folder(workdir), options=options)


@jax.jit
def _leaf_fingerprint(x):
  x = x.astype(jnp.float32)
  finite = jnp.isfinite(x)
  clean = jnp.where(finite, x, 0.0)
  return jnp.stack([clean.sum(), jnp.abs(clean).sum(), (~finite).sum().astype(jnp.float32)])


def fingerprint(tree) -> list[list[float]]:
  """``[[sum, sum |x|, non-finite count], ...]`` over the leaves of ``tree`` (floating leaves)."""
  leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)]
  return [[float(v) for v in jax.device_get(_leaf_fingerprint(x))] for x in leaves]


def fingerprints_match(saved: list, restored: list, rtol: float = 1e-4) -> bool:
  if len(saved) != len(restored):
    return False
  for (s_sum, s_abs, s_bad), (r_sum, r_abs, r_bad) in zip(saved, restored):
    scale = rtol * max(s_abs, 1e-30)
    if s_bad != r_bad or abs(s_sum - r_sum) > scale or abs(s_abs - r_abs) > scale:
      return False
  return True


def save(mgr: ocp.CheckpointManager, state: TrainState, meta: dict) -> None:
  items = {"trainable": nnx.to_pure_dict(state.trainable), "opt_state": state.opt_state}
  meta = {**meta, "fingerprint": fingerprint(items)}
  mgr.save(state.step, args=ocp.args.Composite(
      trainable=ocp.args.StandardSave(items["trainable"]),
      opt_state=ocp.args.StandardSave(items["opt_state"]),
      meta=ocp.args.JsonSave(meta)))


def _restore_step(mgr, step: int, state: TrainState) -> tuple[TrainState, dict]:
  abstract = lambda tree: jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)
  restored = mgr.restore(step, args=ocp.args.Composite(
      trainable=ocp.args.StandardRestore(abstract(nnx.to_pure_dict(state.trainable))),
      opt_state=ocp.args.StandardRestore(abstract(state.opt_state)),
      meta=ocp.args.JsonRestore()))
  items = {"trainable": restored["trainable"], "opt_state": restored["opt_state"]}
  meta = restored["meta"]
  if "fingerprint" in meta and not fingerprints_match(meta["fingerprint"], fingerprint(items)):
    raise ValueError("its arrays do not match the fingerprint recorded when it was saved")
  trainable = state.trainable
  nnx.replace_by_pure_dict(trainable, restored["trainable"])
  return state.replace(trainable=trainable, opt_state=restored["opt_state"], step=step), meta


def restore_latest(workdir: str, keep: int, state: TrainState
                   ) -> tuple[ocp.CheckpointManager, TrainState, dict | None]:
  """``(manager, state, meta)`` from the newest intact checkpoint (``meta`` None: none found).

  A damaged newest step (missing or truncated files, an empty folder, arrays that do not match
  their fingerprint) is moved to ``checkpoints/damaged-<step>`` and the previous one is tried.
  """
  while True:
    mgr = manager(workdir, keep)
    unlisted = _unlisted_step_folders(workdir, mgr)
    if unlisted:  # e.g. an empty or half-deleted step folder orbax does not recognise
      _move_aside(mgr, workdir, unlisted[-1], ValueError("not a complete orbax checkpoint"))
      continue
    step = mgr.latest_step()
    if step is None:
      return mgr, state, None
    try:
      new_state, meta = _restore_step(mgr, step, state)
      return mgr, new_state, meta
    except Exception as e:  # orbax raises many types for damaged files
      _move_aside(mgr, workdir, step, e)


def _unlisted_step_folders(workdir: str, mgr) -> list[int]:
  folder = checkpoint_folder(workdir)
  if not folder.is_dir():
    return []
  listed = set(mgr.all_steps())
  return sorted(int(p.name) for p in folder.iterdir()
                if p.name.isdigit() and int(p.name) not in listed)


def _move_folder(src: epath.Path, dst: epath.Path) -> None:
  """Renames a local folder; on object stores (no folders, no renames) copies each object and
  deletes it: the source prefix is gone once it holds no objects."""
  if not is_object_store(src):
    src.rename(dst)
    return
  bucket_path = str(src).split("://", 1)[1]  # walk yields folders without the scheme
  for folder, _, files in src.walk():  # one listing of the prefix (no recursive glob on gcs)
    relative = os.path.relpath(str(folder).split("://")[-1], bucket_path)
    for name in files:
      item = src / relative / name
      item.copy(dst / relative / name, overwrite=True)
      item.unlink()


def _move_aside(mgr, workdir: str, step: int, error: Exception) -> None:
  folder = checkpoint_folder(workdir)
  bad = folder / f"damaged-{step}"
  message = (f"{folder}/{step}: cannot be restored ({type(error).__name__}: "
             f"{str(error).splitlines()[0][:200] if str(error) else ''}); moved to {bad}, "
             f"falling back to the previous checkpoint")
  logging.warning(message)
  print(f"warning: {message}")
  mgr.close()
  if jax.process_index() == 0:
    if bad.exists():
      bad.rmtree()
    _move_folder(folder / str(step), bad)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(f"checkpoint-fallback-{step}")

