"""The data-parallel mesh and the shardings of batches and replicated state."""

from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from common.errors import UserError

DATA_AXIS = 'data'


def data_mesh(devices: list | None = None) -> jax.sharding.Mesh:
  """A 1-D mesh over all devices of all processes: synchronous data parallelism, as the paper's 8 GPUs."""
  devices = devices if devices is not None else jax.devices()
  return jax.make_mesh((len(devices),), (DATA_AXIS,), axis_types=(jax.sharding.AxisType.Auto,), devices=devices)


def batch_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def check_batch_size(batch_size: int, mesh: jax.sharding.Mesh, field: str = 'config.batch_size') -> None:
  """The global batch must split evenly over devices and processes."""
  n = mesh.devices.size
  if batch_size <= 0 or batch_size % n:
    raise UserError(
      f'{field}={batch_size} does not split over {n} devices; set {field} to a positive multiple '
      f'of {n} (or run on fewer devices).'
    )


def to_global(batch: dict[str, np.ndarray], mesh: jax.sharding.Mesh) -> dict[str, jax.Array]:
  """This process's rows of the global batch -> global arrays sharded on the data axis."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}


def gather(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Every process's rows of a batch, in process order: the global batch, on every host (for sample grids)."""
  if jax.process_count() == 1:
    return batch
  return jax.tree.map(np.asarray, multihost_utils.process_allgather(batch, tiled=True))


def replicate(x: np.ndarray, mesh: jax.sharding.Mesh) -> jax.Array:
  """A host array that every process holds the same copy of -> one array replicated over the mesh."""
  return jax.make_array_from_process_local_data(replicated(mesh), np.asarray(x))


def state_shardings(abstract_state: Any, mesh: jax.sharding.Mesh) -> Any:
  """Every leaf of the train state is replicated (data parallelism)."""
  return jax.tree.map(lambda _: replicated(mesh), abstract_state)
