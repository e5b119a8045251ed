"""Data-parallel mesh and shardings: a 1-D mesh over all devices, batches split on "data".

State is replicated (`P()`), batches are sharded along their first axis (`P("data")`). On
several hosts every process contributes its own slice of the global batch
(`jax.make_array_from_process_local_data`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A 1-D mesh with axis "data" over `devices` (default: all devices of all processes)."""
  devices = list(jax.devices() if devices is None else devices)
  axis_type = getattr(jax.sharding, "AxisType", None)
  kwargs = {}
  if axis_type is not None:
    kwargs["axis_types"] = (axis_type.Auto,)
  return jax.make_mesh((len(devices),), (DATA_AXIS,), devices=devices, **kwargs)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over the "data" axis."""
  return NamedSharding(mesh, P(DATA_AXIS))


def replicated_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def to_global_batch(batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Per-process numpy batches -> global `jax.Array`s sharded with P("data").

  Every process passes its own rows (per-process batch = global / process_count); the global
  batch size must divide evenly over the mesh's devices.
  """
  sharding = batch_sharding(mesh)
  num_shards = mesh.shape[DATA_AXIS]
  out = {}
  for key, local in batch.items():
    local = np.asarray(local)
    global_size = local.shape[0] * jax.process_count()
    if global_size % num_shards:
      raise ValueError(
          f"batch[{key!r}]: global batch size {global_size} ({local.shape[0]} per process x "
          f"{jax.process_count()} processes) is not divisible by the {num_shards} devices of the "
          f"mesh; choose a batch size that is a multiple of {num_shards}.")
    out[key] = jax.make_array_from_process_local_data(
        sharding, local, (global_size,) + local.shape[1:])
  return out


def replicate(tree: Any, mesh: Mesh) -> Any:
  """Places every leaf of `tree` on all devices of `mesh` (P())."""
  return jax.device_put(tree, replicated_sharding(mesh))
