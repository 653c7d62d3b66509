"""What the four trainers (pixelsr.train, pixelsr.regression, imle.train, imle.srgan) share, as plain functions.

Each method module has the same public names for the same things, written down as the `Method` protocol below (checked
by the type checker against all four in launch/methods.py): `check_config(config)` (every field checked before
anything runs: common/validation.py, then the method's own sections), `model_config(config)` (the typed model config,
checked against the data), `create_train_state(config, rng, mesh)`, the pure `train_step` and `eval_step`,
`setup(config, mesh, ...)` -> `Setup` (the config parsed once; SRIM's and SRGAN's also take their frozen VGG inputs),
`compile_steps(setup, state)` -> (train_fn, eval_fn), the loop's step and the jitted eval step, `evaluate(state,
eval_batches, eval_fn, mesh)` (means over the eval set), `restore(config, workdir, step=None)` -> (model, variables)
for inference, and `train_and_evaluate(config, workdir)`.
What they have in common is here:
building a state with its shardings, jitting the steps, the masked eval sums, the data streams of the loop, the
sample grid's inputs and restoring the latest checkpoint. No registry and no base class: each method calls these,
and launch/methods.py maps `config.method` to its module.
"""

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from common import checkpoint, data, optim, sharding
from common.errors import UserError

Batch = dict[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class Setup:
  """A run's config parsed once into what its state and steps are built from, passed down instead of the config.
  `method` holds the method's own typed parts (SRIM's IMLE settings, feature map and frozen VGG weights; SRGAN's
  training settings, frozen weights and their preprocessing); None for the pixel recursive model and the
  regression."""

  config: ml_collections.ConfigDict  # The whole config: the loop's, the data's and the logs' fields.
  mesh: jax.sharding.Mesh
  model: Any  # The method's typed model config (its `model_config`).
  optimizer: Any  # optax.GradientTransformation
  schedule: Any  # optax.Schedule: the learning rate at a step, for the logs.
  num_parts: int  # `batch_parts`: how many parts the train step splits each device's batch into.
  method: Any = None


def make_setup(
  config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh, model: Any, method: Any = None, optimizer: Any = None
) -> Setup:
  """`config` with its typed `model` config and the method's own typed parts, the batch's parts on `mesh` (checked
  against the devices) and the optimiser: `optimizer` = (transformation, schedule), or config.optimizer's."""
  sharding.check_batch_size(config.batch_size, mesh)
  parts = config.get('train_batch_parts')  # Only the pixel recursive configs split the batch.
  num_parts = 1 if parts is None else batch_parts(parts, config.batch_size, mesh)
  optimizer, schedule = optimizer or optim.make_optimizer(config.optimizer)
  return Setup(config, mesh, model, optimizer, schedule, num_parts, method)


def create_sharded(init: Callable[[jax.Array], Any], rng: jax.Array, mesh: jax.sharding.Mesh) -> Any:
  """`init(rng)` built directly with its shardings (eval_shape -> shardings -> jitted init): no host copy."""
  shardings = sharding.state_shardings(jax.eval_shape(init, rng), mesh)
  return jax.jit(init, out_shardings=shardings)(rng)


def num_params(params: Any) -> str:
  """The parameter count, with thousands separators, for the logs."""
  return f'{sum(x.size for x in jax.tree.leaves(params)):,}'


def shardings_of(tree: Any) -> Any:
  """The sharding of every leaf of a tree of arrays (a state, frozen inputs), as jit's in/out_shardings take."""
  return jax.tree.map(lambda x: x.sharding, tree)


def jit_train_step(step: Callable, state: Any, mesh: jax.sharding.Mesh, frozen: dict | None = None) -> Callable:
  """`step(state, batch, rng[, frozen]) -> (state, metrics)` jitted with explicit shardings; the state is donated."""
  batch_sh, rep = sharding.batch_sharding(mesh), sharding.replicated(mesh)
  extra = () if frozen is None else (shardings_of(frozen),)
  return jax.jit(
    step,
    in_shardings=(shardings_of(state), batch_sh, rep, *extra),
    out_shardings=(shardings_of(state), rep),
    donate_argnums=0,
  )


def check_batch(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> None:
  """The global batch splits over the devices, and each device's batch into `config.train_batch_parts` parts."""
  sharding.check_batch_size(config.batch_size, mesh)
  batch_parts(config.train_batch_parts, config.batch_size, mesh)


def batch_parts(requested: int, batch_size: int, mesh: jax.sharding.Mesh) -> int:
  """How many parts the train step splits each device's batch into (`config.train_batch_parts`). 0 = auto: on CPU
  the most, up to 4, that divide the device's batch into parts of >= 8 examples (smaller parts add more overhead
  than the concurrency saves: benchmarks/README.md, "The batch in parts, and huge pages"); 1 on GPU/TPU, where
  splitting is not measured."""
  per_device = batch_size // mesh.devices.size
  if requested == 0:
    if mesh.devices.flat[0].platform != 'cpu':
      return 1
    return max((n for n in range(2, 5) if per_device % n == 0 and per_device // n >= 8), default=1)
  if per_device % requested:
    n = mesh.devices.size
    raise UserError(
      f'config.train_batch_parts={requested} does not divide the {per_device} examples of each device '
      f'(config.batch_size={batch_size} over {n} device{"s" if n > 1 else ""}); set it to a divisor of '
      f'{per_device}, or 0 to choose.'
    )
  return requested


def value_and_grad_in_parts(loss_fn: Callable, params: Any, batch: dict[str, jax.Array], num_parts: int) -> Any:
  """`jax.value_and_grad(loss_fn, has_aux=True)(params, batch)` for a `loss_fn(params, batch) -> (loss, metrics)`
  that averages over the batch's examples, computed as the mean over `num_parts` equal parts of the batch, each
  differentiated on its own: the same values, summed in another order. XLA:CPU runs the parts' independent ops
  concurrently on its cores, where the whole batch's convolution gradients kept the second core idle
  (benchmarks/README.md). Part i holds examples i, i + n, ...: the same number of every device's own rows, so no
  part crosses devices."""
  if num_parts == 1:
    return jax.value_and_grad(loss_fn, has_aux=True)(params, batch)
  parts = [jax.tree.map(lambda x, i=i: x.reshape(-1, num_parts, *x.shape[1:])[:, i], batch) for i in range(num_parts)]
  results = [jax.value_and_grad(loss_fn, has_aux=True)(params, part) for part in parts]
  return jax.tree.map(lambda *xs: sum(xs) / num_parts, *results)


def jit_eval_step(step: Callable, state: Any, mesh: jax.sharding.Mesh) -> Callable:
  """`step(state, batch) -> sums` jitted with explicit shardings (the state is kept)."""
  return jax.jit(
    step, in_shardings=(shardings_of(state), sharding.batch_sharding(mesh)), out_shardings=sharding.replicated(mesh)
  )


def masked_sums(per_example: dict[str, jax.Array], mask: jax.Array) -> dict[str, jax.Array]:
  """Sums over the real (mask == True) examples of a batch, and their 'count', so batches add up exactly."""
  mask = mask.astype(jnp.float32)
  sums = {k: (v * mask).sum() for k, v in per_example.items()}
  sums['count'] = mask.sum()
  return sums


def masked_means(state: Any, eval_batches: Iterator[Batch], eval_fn: Callable, mesh: jax.sharding.Mesh) -> dict:
  """Means over the whole eval set of `eval_fn(state, global batch)`'s `masked_sums`, each example counted once: a
  float per scalar sum, a float64 array per array sum (such as `relu_health.channel_sums`'s)."""
  totals: dict[str, np.ndarray] = {}
  for batch in eval_batches:
    for k, v in jax.device_get(eval_fn(state, sharding.to_global(batch, mesh))).items():
      totals[k] = totals.get(k, 0.0) + np.asarray(v, np.float64)
  count = float(totals.pop('count', 0.0))
  if not count:
    raise UserError('The eval split yielded no examples; check config.data.eval_split / num_eval_examples.')
  return {k: float(v) / count if v.ndim == 0 else v / count for k, v in totals.items()}


def train_batches(config: ml_collections.ConfigDict) -> Callable[[int], Iterator[Batch]]:
  """The loop's `train_batches(start_step)`: this process's rows of the training stream from that step on."""

  def batches(start_step: int) -> Iterator[Batch]:
    return data.make_dataset(
      config.data, 'train', batch_size=config.batch_size, seed=config.seed, start_index=start_step * config.batch_size
    )

  return batches


def eval_batches(config: ml_collections.ConfigDict) -> Iterator[Batch]:
  """One pass over this process's rows of the eval split, padded to whole batches with a mask."""
  return data.make_dataset(config.data, 'eval', batch_size=config.batch_size, seed=config.seed)


def grid_inputs(config: ml_collections.ConfigDict) -> tuple[np.ndarray, np.ndarray]:
  """(low-res, high-res) of the sample grids: the first `config.num_sample_images` eval examples of the global batch,
  the same on every process. Read before compiling, so that a missing dataset fails at once."""
  first_eval = sharding.gather(next(eval_batches(config)))
  num = min(config.num_sample_images, int(first_eval['mask'].sum()))
  return first_eval['lowres'][:num], first_eval['highres'][:num]


def restore_state(create: Callable[[jax.Array, jax.sharding.Mesh], Any], workdir: str, step: int | None = None) -> Any:
  """The train state of `workdir`'s latest checkpoint (or `step`'s), shaped and sharded as `create(rng, mesh)`'s,
  replicated over this host's devices. Nothing is initialised: only the shapes of `create` are traced."""
  mesh = sharding.data_mesh()
  abstract = jax.eval_shape(lambda rng: create(rng, mesh), jax.random.key(0))
  return checkpoint.restore_latest(checkpoint.open_manager(workdir), abstract, step)


class Method(Protocol):
  """The module-level functions of a method's trainer module (a module satisfies a protocol; no class is involved)."""

  def check_config(self, config: ml_collections.ConfigDict, /) -> None: ...

  def model_config(self, config: ml_collections.ConfigDict, /) -> Any: ...

  def create_train_state(
    self, config: ml_collections.ConfigDict, rng: jax.Array, mesh: jax.sharding.Mesh, /
  ) -> Any: ...

  def compile_steps(self, run: Setup, state: Any, /) -> tuple[Any, Any]: ...

  def evaluate(self, state: Any, eval_batches: Iterator[Batch], eval_fn: Any, mesh: jax.sharding.Mesh, /) -> dict: ...

  def restore(
    self, config: ml_collections.ConfigDict, workdir: str, step: int | None = None, /
  ) -> tuple[Any, dict]: ...

  def train_and_evaluate(self, config: ml_collections.ConfigDict, workdir: str, /) -> dict[str, float]: ...
