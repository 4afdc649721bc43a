"""Sharding: the one table from logical axis names to mesh axes, and the helpers that apply it.

Parameters carry ``logical_axes`` metadata (see :mod:`dispo_jax.model.llada`); activations use the
same names. ``LOGICAL_AXIS_RULES`` is the only place that decides which mesh axis shards what:

  =========  ==================  =================================================
  logical    mesh axes           what it is
  =========  ==================  =================================================
  batch      ("data", "fsdp")    rows of a batch (pure data parallel + FSDP)
  length     None                sequence positions (replicated)
  vocab      "tensor"            embedding rows / LM-head columns
  embed      "fsdp"              model width: parameters sharded ZeRO-3 style
  heads      "tensor"            attention projections (Megatron column/row split)
  mlp        "tensor"            SwiGLU hidden width
  norm       None                RMSNorm weights (tiny, replicated)
  lora_rank  None                LoRA rank dimension
  =========  ==================  =================================================

Mesh axes are always created with explicit ``AxisType.Auto`` (GSPMD propagation inside
``jax.jit`` with in/out shardings); ``jax.make_mesh`` would otherwise default to Explicit axes.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec
from flax import nnx

MESH_AXES = ("data", "fsdp", "tensor")

LOGICAL_AXIS_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("mlp", "tensor"),
    ("norm", None),
    ("lora_rank", None),
)


def make_mesh(data: int = 1, fsdp: int = 1, tensor: int = 1,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A ``(data, fsdp, tensor)`` mesh with Auto axis types. ``-1`` in one axis takes the rest."""
  devices = list(jax.devices() if devices is None else devices)
  shape = [data, fsdp, tensor]
  if shape.count(-1) > 1:
    raise ValueError(f"At most one mesh axis may be -1, got {dict(zip(MESH_AXES, shape))}")
  if -1 in shape:
    known = math.prod(s for s in shape if s != -1)
    if len(devices) % known:
      raise ValueError(f"{len(devices)} devices cannot fill mesh {dict(zip(MESH_AXES, shape))}")
    shape[shape.index(-1)] = len(devices) // known
  if math.prod(shape) > len(devices):
    raise ValueError(f"Mesh {dict(zip(MESH_AXES, shape))} needs {math.prod(shape)} devices, "
                     f"have {len(devices)}")
  if math.prod(shape) < len(devices):
    logging.warning("Mesh %s uses %d of %d devices", dict(zip(MESH_AXES, shape)),
                    math.prod(shape), len(devices))
    devices = devices[:math.prod(shape)]
  return jax.make_mesh(tuple(shape), MESH_AXES, axis_types=(AxisType.Auto,) * 3, devices=devices)


def logical_to_mesh_axes(logical_axes: Sequence[str | None],
                         rules=LOGICAL_AXIS_RULES) -> PartitionSpec:
  """Maps logical names to a ``PartitionSpec``; a mesh axis is used at most once per spec."""
  table = dict(rules)
  used: set[str] = set()
  spec = []
  for name in logical_axes:
    if name is None:
      spec.append(None)
      continue
    if name not in table:
      raise KeyError(f"Logical axis {name!r} has no rule; known: {sorted(table)}")
    target = table[name]
    targets = (target,) if isinstance(target, str) else tuple(target or ())
    targets = tuple(t for t in targets if t not in used)
    used.update(targets)
    spec.append(None if not targets else targets[0] if len(targets) == 1 else targets)
  return PartitionSpec(*spec)


def constrain(x: jax.Array, *logical_axes: str | None, rules=LOGICAL_AXIS_RULES) -> jax.Array:
  """Activation sharding constraint from the rules table, under the ambient mesh
  (``jax.set_mesh``); a no-op without one, so single-device code is unchanged."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or not set(MESH_AXES) <= set(mesh.axis_names):
    return x
  spec = fit_spec_to_shape(logical_to_mesh_axes(logical_axes, rules), x.shape, mesh)
  return jax.lax.with_sharding_constraint(x, spec)


def fit_spec_to_shape(spec: PartitionSpec, shape: Sequence[int], mesh) -> PartitionSpec:
  """Drops mesh axes from dimensions they do not divide (those dimensions become replicated)."""
  fitted = []
  for dim, entry in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
    axes = (entry,) if isinstance(entry, str) else tuple(entry or ())
    size = math.prod(mesh.shape[a] for a in axes)
    if axes and dim % size:
      logging.info("Replicating a dimension of size %d: not divisible by mesh axes %s (%d)",
                   dim, axes, size)
      axes = ()
    fitted.append(None if not axes else axes[0] if len(axes) == 1 else axes)
  return PartitionSpec(*fitted)


def _is_variable(x: Any) -> bool:
  return isinstance(x, nnx.Variable)


def state_partition_specs(state: nnx.State, mesh: Mesh, rules=LOGICAL_AXIS_RULES) -> nnx.State:
  """A state-shaped tree of ``PartitionSpec`` from each variable's ``logical_axes``."""

  def spec_for(var):
    axes = var.get_metadata().get("logical_axes")
    shape = var.get_value().shape
    if axes is None:
      return PartitionSpec()
    if len(axes) != len(shape):
      raise ValueError(f"logical_axes {axes} do not match a parameter of shape {shape}")
    return fit_spec_to_shape(logical_to_mesh_axes(axes, rules), shape, mesh)

  return jax.tree.map(spec_for, state, is_leaf=_is_variable)


def state_shardings(state: nnx.State, mesh: Mesh, rules=LOGICAL_AXIS_RULES) -> nnx.State:
  """A state-shaped tree of ``NamedSharding`` (the ``out_shardings`` of a sharded init)."""
  specs = state_partition_specs(state, mesh, rules)
  return jax.tree.map(lambda s: NamedSharding(mesh, s), specs,
                      is_leaf=lambda x: isinstance(x, PartitionSpec))


def optimizer_state_shardings(opt_state: Any, param_shardings: Any, mesh: Mesh) -> Any:
  """The one placement rule for an optimizer's state: every subtree shaped like the parameters
  (Adam's moments, a weight-decay mask) takes the parameters' shardings; every other leaf (step
  counters, scalars) is replicated.

  Args:
    opt_state: the state, or its ``jax.eval_shape`` (any pytree of arrays or shape structs).
    param_shardings: the trainable parameters' ``NamedSharding`` tree.
  Returns:
    a ``NamedSharding`` tree with ``opt_state``'s structure.
  """
  param_tree = jax.tree.structure(param_shardings)
  replicated = NamedSharding(mesh, PartitionSpec())

  def like_params(x) -> bool:
    structure = jax.tree.structure(x)
    return structure == param_tree and not jax.tree_util.treedef_is_leaf(structure)

  return jax.tree.map(
      lambda sub: param_shardings if like_params(sub) else jax.tree.map(lambda _: replicated, sub),
      opt_state, is_leaf=like_params)


def place(tree: Any, shardings: Any) -> Any:
  """Puts every array of ``tree`` into the matching sharding of ``shardings`` (same leaf order, e.g.
  from :func:`state_shardings`), copying to each device only its slice of the host value.

  Unlike ``jax.device_put`` this works for shardings that span other processes' devices (every
  process holds the same host value), with no cross-host transfer.
  """
  leaves, treedef = jax.tree.flatten(tree)
  targets = jax.tree.leaves(shardings, is_leaf=lambda x: isinstance(x, jax.sharding.Sharding))
  if len(targets) == 1 and len(leaves) > 1:
    targets = targets * len(leaves)
  if len(targets) != len(leaves):
    raise ValueError(f"{len(leaves)} arrays but {len(targets)} shardings")

  def put(x, target):
    if isinstance(x, jax.Array) and x.sharding == target:
      return x
    host = np.asarray(jax.device_get(x))
    return jax.make_array_from_callback(host.shape, target, lambda index: host[index],
                                        dtype=host.dtype)

  return treedef.unflatten([put(x, t) for x, t in zip(leaves, targets)])


def row_placer(row_sharding) -> Callable[[Any], jax.Array]:
  """Host array -> global array with rows sharded over the data axes (identity without a mesh).

  Every process holds the same host rows; ``make_array_from_process_local_data`` hands each
  device its slice, so the batch is sharded by process on multi-host meshes.
  """
  if row_sharding is None:
    return jnp.asarray

  def place(x):
    x = np.asarray(x)
    spec = jax.sharding.PartitionSpec(row_sharding.spec[0], *([None] * (x.ndim - 1)))
    sharding = jax.sharding.NamedSharding(row_sharding.mesh, spec)
    return jax.make_array_from_process_local_data(sharding, x, x.shape)
  return place


def to_host(x) -> np.ndarray:
  """A (possibly multi-host sharded) array as a full host ``np.ndarray`` on every process."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    from jax.experimental import multihost_utils
    x = multihost_utils.process_allgather(x, tiled=True)
  return np.asarray(jax.device_get(x))


def logical_sharding(mesh: Mesh, *logical_axes: str | None,
                     rules=LOGICAL_AXIS_RULES) -> NamedSharding:
  """``NamedSharding`` for an activation or batch with the given logical axes."""
  return NamedSharding(mesh, logical_to_mesh_axes(logical_axes, rules))
