"""Parallel strategies: one device, pmap, or jit over a device mesh.

This is the only module that knows how a step runs across devices. Every strategy
compiles the same pure step functions from steps.py:

- single: jax.jit on one device (a one-device mesh, so it shares the mesh code path);
- pmap:   jax.pmap with axis name 'batch'. The state is replicated with a leading
          device axis [devices, ...]; a batch [B, ...] is reshaped to
          [devices, B / devices, ...]. The step reduces gradients, metric sums and
          batch-norm statistics itself with collectives over the axis name;
- mesh:   jax.jit over Mesh(devices, ('data',)). The state is replicated, a batch is
          sharded on its first axis with NamedSharding; the step sees the global
          batch and XLA inserts the cross-device reductions (gradients, metric
          sums and batch-norm statistics are all means over the *global* batch).

Randomness (dropout, augmentation) comes from the state's key folded with the step.
Under pmap the device index is folded in too, so every device draws its own
reproducible stream; under mesh a random array has the global batch's shape and
threefry is partitionable (jax_threefry_partitionable, the default), so each device
computes a different slice of the very numbers one device would draw: a mesh run
equals a one-device run even with dropout and augmentation.

Several processes (jax.distributed): each process feeds the rows of the global batch
that the pipeline gave it; mesh assembles the global array with
jax.make_array_from_process_local_data, pmap takes host-local arrays and maps over
the devices of every process. Devices are ordered by process so that process p's
rows land on process p's devices.

Which strategy 'auto' picks (see `choose`) was decided by
experiments/benchmarks/scaling.py; the figures are in experiments/results/scaling.json.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

STRATEGIES = ("auto", "single", "pmap", "mesh")
AXIS = "batch"  # pmap axis name; models read it as `bn_axis_name`


def choose(strategy: str, num_devices: int | None = None) -> str:
  """Resolve a config.parallel.strategy value to 'single', 'pmap' or 'mesh'.

  'auto' runs one device with 'single' and several with 'mesh'. Why mesh, not pmap:
  they measure alike, so mesh wins on everything else. In jax 0.10 jax.pmap is
  itself implemented as jit(shard_map) over a one-axis mesh, so both run the same
  collectives. experiments/benchmarks/scaling.py (simple_cnn, 32x32x3, global batch
  128, 8 host CPU devices on 2 shared cores, jax 0.10.2) gave mesh / pmap throughput
  ratios of 1.10, 1.06, 1.03 on 2, 4, 8 devices (experiments/results/scaling.json)
  and 0.94, 1.09, 0.93 in an earlier run, while one configuration's passes varied by
  up to 2x between repeats: no measurable difference. Mesh then needs less: no
  device axis on the state (no unreplicating for checkpoints and results), no
  reshape of every host batch, no per-device RNG folding (so a mesh run equals a
  one-device run even with dropout and augmentation), and it is the form JAX
  develops (pmap is documented as legacy) and the one that extends to sharding
  models. Re-measure on accelerators with scaling.py before changing this.

  Args:
    strategy: one of STRATEGIES.
    num_devices: devices that will run the step (default: all, over all processes).
  Returns:
    'single', 'pmap' or 'mesh'.
  """
  if strategy not in STRATEGIES:
    raise ValueError(f"config.parallel.strategy={strategy!r}: expected one of {STRATEGIES}")
  if strategy != "auto":
    return strategy
  n = jax.device_count() if num_devices is None else num_devices
  return "single" if n == 1 and jax.process_count() == 1 else "mesh"


def _by_process(devices: Sequence[Any]) -> list[Any]:
  """Devices grouped by process (stable), so each process's batch rows stay local."""
  return sorted(devices, key=lambda d: d.process_index)


def _first_copy(x: Any) -> np.ndarray:
  """Host value of one device's copy of a pmap-replicated array [devices, ...] -> [...].

  Replicated state and psum-reduced metrics hold the same value on every device.
  """
  if isinstance(x, jax.Array):
    # One shard's buffer: slicing the global array would compile a gather per leaf.
    return np.asarray(x.addressable_shards[0].data)[0]
  return np.asarray(x)[0]


class Strategy:
  """Places state and batches on devices and compiles steps for one strategy.

  Attributes:
    name: 'single', 'pmap' or 'mesh' ('auto' resolved).
    devices: the devices that run a step, of every process, grouped by process.
    local_devices: this process's share of `devices`.
    axis_name: AXIS under pmap (pass it to the steps and models), else None.
  """

  def __init__(self, name: str = "auto", devices: Sequence[Any] | None = None):
    if devices is not None and not len(devices):
      raise ValueError("Strategy(devices=[]): expected at least one device")
    self.name = choose(name, None if devices is None else len(devices))
    if self.name == "single":
      if jax.process_count() > 1:
        raise ValueError("config.parallel.strategy='single' cannot run with "
                         f"{jax.process_count()} processes; use 'mesh' or 'pmap'")
      self.devices = [jax.local_devices()[0] if devices is None else devices[0]]
    else:
      self.devices = _by_process(jax.devices() if devices is None else devices)
    self.local_devices = [d for d in self.devices if d.process_index == jax.process_index()]
    if jax.process_count() > 1 and len(self.devices) != jax.device_count():
      raise ValueError(f"{len(self.devices)} of {jax.device_count()} devices given with "
                       f"{jax.process_count()} processes; multi-process runs use them all")
    self.axis_name = AXIS if self.name == "pmap" else None
    if self.name == "pmap":
      # pmap takes per-process arrays [local devices, ...] laid out on this mesh.
      self.local_mesh = Mesh(np.array(self.local_devices), (AXIS,))
      self.stacked = NamedSharding(self.local_mesh, P(AXIS))
    else:
      self.mesh = Mesh(np.array(self.devices), ("data",))
      self.replicated = NamedSharding(self.mesh, P())
      self.data_sharding = NamedSharding(self.mesh, P("data"))

  @property
  def num_devices(self) -> int:
    return len(self.devices)

  def __repr__(self) -> str:
    return (f"Strategy({self.name!r}, {self.num_devices} {self.devices[0].platform} "
            f"device(s), {jax.process_count()} process(es))")

  def check_batch(self, global_batch: int, key: str = "batch_size", micro_batches: int = 1
                  ) -> None:
    """Raise unless a global batch splits evenly over the devices (and processes), and
    each device's rows into `micro_batches` (config.grad_accum_steps)."""
    n = self.num_devices * micro_batches
    if global_batch % n:
      lower = global_batch // n * n
      hint = f"{lower} or {lower + n}" if lower else str(n)
      processes = len({d.process_index for d in self.devices})
      over = (f"{self.num_devices} devices" +
              (f" of {processes} processes ({len(self.local_devices)} on this one)"
               if processes > 1 else "") + f" (strategy {self.name!r})")
      if micro_batches > 1:
        over = f"config.grad_accum_steps={micro_batches} micro-batches" + (
            f" on each of {over}" if self.num_devices > 1 else "")
      raise ValueError(f"config.{key}={global_batch} does not divide evenly over {over}; "
                       f"expected a multiple of {n}, e.g. {hint}")

  # -- placement -------------------------------------------------------------------------
  def put_state(self, state: Any) -> Any:
    """A host (or one-device) state -> replicated device arrays for the compiled step."""
    host = jax.device_get(state)  # host numpy: device_put to other processes' devices needs it
    if self.name == "pmap":
      n = len(self.local_devices)
      # broadcast_to is a view: each device is sent one copy, the host holds none.
      stacked = jax.tree.map(lambda x: np.broadcast_to(np.asarray(x)[None],
                                                       (n,) + np.shape(x)), host)
      return jax.device_put(stacked, self.stacked)
    return jax.device_put(host, self.replicated)

  def put_batch(self, batch: dict[str, np.ndarray]) -> Any:
    """This process's rows of a global batch {k: [B_local, ...]} -> device arrays.

    pmap gets {k: [local devices, B_local / local devices, ...]}; mesh gets global
    arrays {k: [B, ...]} sharded over 'data'; a single CPU device gets the numpy batch
    itself, which the jitted step reads in place.
    """
    if self.name == "pmap":
      n = len(self.local_devices)
      rows = next(iter(batch.values())).shape[0]
      if rows % n:
        raise ValueError(f"a batch of {rows} rows on this process does not divide over its "
                         f"{n} devices; expected a multiple of {n}")
      shaped = {k: v.reshape((n, v.shape[0] // n) + v.shape[1:]) for k, v in batch.items()}
      return jax.device_put(shaped, self.stacked)
    if jax.process_count() > 1:
      return {k: jax.make_array_from_process_local_data(self.data_sharding, v)
              for k, v in batch.items()}
    if self.name == "single" and self.devices[0].platform == "cpu":
      # The device's memory is the host's: the jitted step takes numpy as it is, where
      # device_put had cost 160 us a digits batch against 22 (a tenth of a small step).
      return batch
    return jax.device_put(batch, self.data_sharding)

  # -- back to the host -------------------------------------------------------------------
  def get_state(self, state: Any) -> Any:
    """The state as host numpy arrays without a device axis (checkpoints, results)."""
    if self.name == "pmap":
      return jax.tree.map(_first_copy, state)
    return jax.device_get(state)  # replicated: every process holds the whole value

  def unreplicate(self, tree: Any) -> Any:
    """Step metrics (already reduced over devices) as host values of the global batch."""
    if self.name == "pmap":
      return jax.tree.map(_first_copy, tree)
    return jax.device_get(tree)

  def to_host(self, tree: Any) -> Any:
    """Step outputs -> numpy in one transfer; arrays split over processes are gathered."""
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils

      def gather(x):
        if isinstance(x, jax.Array) and not (x.is_fully_addressable or x.is_fully_replicated):
          return multihost_utils.process_allgather(x, tiled=True)
        return x

      tree = jax.tree.map(gather, tree)
    return jax.device_get(tree)

  def gather_preds(self, preds: Any) -> np.ndarray:
    """Per-example outputs of an eval step -> [B, ...] for the whole global batch, in order."""
    if self.name == "pmap":
      preds = np.asarray(preds)
      preds = preds.reshape((-1,) + preds.shape[2:])  # [local devices * rows, ...]
      if jax.process_count() > 1:  # process p holds rows p * B_local .. (p + 1) * B_local
        from jax.experimental import multihost_utils
        preds = multihost_utils.process_allgather(preds, tiled=True)
      return np.asarray(preds)
    return np.asarray(self.to_host(preds))

  # -- compilation ------------------------------------------------------------------------
  def compile_train(self, train_step: Callable, running_sums: bool = False) -> Callable:
    """`train_step(state, batch) -> (state, metrics)`, compiled; the old state is donated.

    With `running_sums` the step is `steps.with_running_sums`' `(state, batch, sums) ->
    (state, metrics, sums)`: the sums are placed like the state (`put_state`) and donated.
    """
    donate = (0, 2) if running_sums else (0,)
    if self.name == "pmap":
      return jax.pmap(train_step, axis_name=AXIS, devices=self.devices, donate_argnums=donate)
    ins = (self.replicated, self.data_sharding) + ((self.replicated,) if running_sums else ())
    return jax.jit(train_step, in_shardings=ins, out_shardings=self.replicated,
                   donate_argnums=donate)

  def compile_eval(self, eval_step: Callable) -> Callable:
    """`eval_step(state, batch) -> metrics`, compiled (per-example outputs stay sharded)."""
    if self.name == "pmap":
      return jax.pmap(eval_step, axis_name=AXIS, devices=self.devices)
    return jax.jit(eval_step, in_shardings=(self.replicated, self.data_sharding))
