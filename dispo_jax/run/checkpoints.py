"""Orbax checkpoints of a :class:`TrainState`, with a fingerprint and a fallback on damage.

Each checkpoint holds the trainable parameters, the optimizer state and a JSON ``meta`` record that
includes the shape and dtype of every array and a fingerprint of every floating array (per leaf:
the sum, the sum of absolute values, the count of non-finite entries and two position-weighted
checksums of the bit patterns, computed on device, so they work on any mesh and host count). A
restore checks the fingerprint. A step that fails to restore or to match is then told apart: if
its recorded shapes are not the run's model, the run stops (:class:`CheckpointMismatch`, nothing
moved); otherwise it is damaged and moved aside (``checkpoints/damaged-<step>``, then
``damaged-<step>-2``, …: earlier evidence is kept) with a warning and the previous step is tried.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from etils import epath
from flax import nnx

from dispo_jax.rl.state import TrainState
from dispo_jax.run.storage import is_object_store, move_folder
from dispo_jax.run.workdir import warn


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


class CheckpointMismatch(ValueError):
  """A checkpoint written by another model (shapes, dtypes or tree differ): not damage."""


@jax.jit
def _leaf_fingerprint(x):
  values = x.astype(jnp.float32)
  finite = jnp.isfinite(values)
  clean = jnp.where(finite, values, 0.0)
  return jnp.stack([clean.sum(), jnp.abs(clean).sum(), (~finite).sum().astype(jnp.float32)])


@jax.jit
def _leaf_checksums(x):
  """Two sums, modulo 2^32, of the bit patterns times odd position-dependent multipliers: any
  single flipped bit changes both (an odd multiple of a power of two below 2^32 is not 0 mod 2^32)."""
  unsigned = {2: jnp.uint16, 4: jnp.uint32}[x.dtype.itemsize]
  bits = jax.lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32)
  index = jnp.arange(x.size, dtype=jnp.uint32).reshape(x.shape)
  first = index * jnp.uint32(2654435761) * jnp.uint32(2) + jnp.uint32(1)
  second = (index ^ jnp.uint32(0x9E3779B9)) * jnp.uint32(0x85EBCA6B) | jnp.uint32(1)
  return jnp.stack([jnp.sum(bits * first, dtype=jnp.uint32),
                    jnp.sum(bits * second, dtype=jnp.uint32)])


def fingerprint(tree) -> list[list[float]]:
  """``[[sum, sum |x|, non-finite count, checksum 1, checksum 2], ...]`` over the floating leaves
  of ``tree``."""
  leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)]
  out = []
  for x in leaves:
    x = jnp.asarray(x)
    stats, checksums = jax.device_get((_leaf_fingerprint(x), _leaf_checksums(x)))
    out.append([float(v) for v in stats] + [int(v) for v in checksums])
  return out


def fingerprints_match(saved: list, restored: list, rtol: float = 1e-4) -> bool:
  """Whether restored arrays are the saved ones: the checksums exactly (where the checkpoint has
  them; older ones hold only the three sums), the sums to ``rtol``."""
  if len(saved) != len(restored):
    return False
  for old, new in zip(saved, restored):
    (s_sum, s_abs, s_bad), (r_sum, r_abs, r_bad) = old[:3], new[:3]
    scale = rtol * max(s_abs, 1e-30)
    if s_bad != r_bad or abs(s_sum - r_sum) > scale or abs(s_abs - r_abs) > scale:
      return False
    if len(old) == 5 and [int(v) for v in old[3:]] != [int(v) for v in new[3:]]:
      return False
  return True


def array_shapes(tree) -> list[str]:
  """``["path shape dtype", ...]`` of every leaf: what a checkpoint's model looks like."""
  return [f"{jax.tree_util.keystr(path)} {tuple(x.shape)} {x.dtype}"
          for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]]


def _items(state: TrainState) -> dict:
  """The arrays a checkpoint holds: ``{"trainable": pure dict, "opt_state": ...}``."""
  return {"trainable": nnx.to_pure_dict(state.trainable), "opt_state": state.opt_state}


def save(mgr: ocp.CheckpointManager, state: TrainState, meta: dict) -> None:
  items = _items(state)
  meta = {**meta, "fingerprint": fingerprint(items), "arrays": array_shapes(items)}
  mgr.save(state.step, args=ocp.args.Composite(
      trainable=ocp.args.StandardSave(items["trainable"]),
      opt_state=ocp.args.StandardSave(items["opt_state"]),
      meta=ocp.args.JsonSave(meta)))


def _check_same_model(mgr, step: int, state: TrainState) -> None:
  """:class:`CheckpointMismatch` when step ``step`` (which failed to restore) records other arrays
  than ``state`` has; an unreadable or older record says nothing (the step is then damaged)."""
  try:
    meta = mgr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
  except Exception:  # orbax raises many types for damaged files
    return
  recorded = meta.get("arrays") if isinstance(meta, dict) else None
  if not isinstance(recorded, list):
    return  # written before shapes were recorded
  current = array_shapes(_items(state))
  if recorded != current:
    differ = next((f"saved {a!r}, this run {b!r}" for a, b in zip(recorded, current) if a != b),
                  f"{len(recorded)} arrays saved, {len(current)} in this run")
    raise CheckpointMismatch(
        f"{mgr.directory}/{step}: written by another model than this run's ({differ}); the "
        f"checkpoint is intact and was left in place: restore the run's config, or use another "
        f"--workdir")


def _restore_step(mgr, step: int, state: TrainState) -> tuple[TrainState, dict]:
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, _items(state))
  restored = mgr.restore(step, args=ocp.args.Composite(
      trainable=ocp.args.StandardRestore(abstract["trainable"]),
      opt_state=ocp.args.StandardRestore(abstract["opt_state"]),
      meta=ocp.args.JsonRestore()))
  items = {"trainable": restored["trainable"], "opt_state": restored["opt_state"]}
  meta = restored["meta"]
  if "fingerprint" not in meta:
    warn(f"{mgr.directory}/{step}: written without a fingerprint (an older dispo_jax); its arrays "
         f"cannot be verified and are restored as they are")
  elif not fingerprints_match(meta["fingerprint"], fingerprint(items)):
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
      try:
        _check_same_model(mgr, step, state)
      except CheckpointMismatch:
        mgr.close()
        raise
      _move_aside(mgr, workdir, step, e)


def _unlisted_step_folders(workdir: str, mgr) -> list[int]:
  folder = checkpoint_folder(workdir)
  if not folder.is_dir():
    return []
  listed = set(mgr.all_steps())
  return sorted(int(p.name) for p in folder.iterdir()
                if p.name.isdigit() and int(p.name) not in listed)


def _move_aside(mgr, workdir: str, step: int, error: Exception) -> None:
  folder = checkpoint_folder(workdir)
  bad, n = folder / f"damaged-{step}", 1
  while bad.exists():  # keep the evidence of every damage
    n += 1
    bad = folder / f"damaged-{step}-{n}"
  message = (f"{folder}/{step}: cannot be restored ({type(error).__name__}: "
             f"{str(error).splitlines()[0][:200] if str(error) else ''}); moved to {bad}, "
             f"falling back to the previous checkpoint")
  warn(message)
  mgr.close()
  if jax.process_index() == 0:
    move_folder(folder / str(step), bad)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(f"checkpoint-fallback-{step}")

