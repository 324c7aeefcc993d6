"""Parallel strategies: one device, pmap, or jit over a device mesh.

This is the only module that knows how a step is run across devices. Every strategy
takes the same step functions from steps.py:
- single: jax.jit on one device;
- pmap:   jax.pmap with axis name 'batch'; state replicated with a leading device
          axis, batch reshaped to [devices, batch / devices, ...];
- mesh:   jax.jit over Mesh(devices, ('data',)); batch sharded on its first axis
          with NamedSharding, state replicated. XLA inserts the reductions.
Multi-process runs give each process its slice of the global batch; the mesh
strategy assembles the global array with jax.make_array_from_process_local_data.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

AXIS = "batch"


def choose(strategy: str) -> str:
  """Resolve 'auto': one device -> single, several -> mesh (see README: measured faster)."""
  if strategy != "auto":
    return strategy
  return "single" if jax.device_count() == 1 else "mesh"


class Strategy:
  """Places state and batches on devices and compiles steps for one strategy."""

  def __init__(self, name: str, devices: list | None = None):
    if name not in ("single", "pmap", "mesh"):
      raise ValueError(f"config.parallel.strategy={name!r}: expected one of "
                       "('auto', 'single', 'pmap', 'mesh')")
    self.name = choose(name)
    if self.name == "single":
      self.devices = [jax.local_devices()[0]] if devices is None else devices[:1]
      if jax.process_count() > 1:
        raise ValueError("config.parallel.strategy='single' cannot run with "
                         f"{jax.process_count()} processes; use 'mesh' or 'pmap'")
    else:
      self.devices = list(jax.devices()) if devices is None else list(devices)
    self.local_devices = [d for d in self.devices if d.process_index == jax.process_index()]
    self.axis_name = AXIS if self.name == "pmap" else None
    if self.name != "pmap":
      self.mesh = Mesh(np.array(self.devices), ("data",))
      self.replicated = NamedSharding(self.mesh, P())
      self.data_sharding = NamedSharding(self.mesh, P("data"))

  @property
  def num_devices(self) -> int:
    return len(self.devices)

  def check_batch(self, global_batch: int, key: str = "batch_size") -> None:
    if global_batch % self.num_devices:
      raise ValueError(f"config.{key}={global_batch} does not divide evenly over "
                       f"{self.num_devices} devices ({self.name}); use a multiple of "
                       f"{self.num_devices}")

  # -- placement -------------------------------------------------------------------
  def put_state(self, state: Any) -> Any:
    if self.name == "pmap":
      return jax.device_put_replicated(state, self.local_devices)
    return jax.device_put(state, self.replicated)

  def put_batch(self, batch: dict[str, np.ndarray]) -> Any:
    """A host batch (this process's slice) -> device arrays for the compiled step."""
    if self.name == "pmap":
      n = len(self.local_devices)
      shaped = {k: v.reshape((n, v.shape[0] // n) + v.shape[1:]) for k, v in batch.items()}
      return jax.device_put_sharded([{k: v[i] for k, v in shaped.items()} for i in range(n)],
                                    self.local_devices)
    if jax.process_count() > 1:
      return {k: jax.make_array_from_process_local_data(self.data_sharding, v)
              for k, v in batch.items()}
    return jax.device_put(batch, self.data_sharding)

  def get_state(self, state: Any) -> Any:
    """The state as host numpy arrays, without a device axis (for checkpoints, results)."""
    if self.name == "pmap":
      state = jax.tree.map(lambda x: x[0], state)
    return jax.device_get(state)

  def unreplicate(self, tree: Any) -> Any:
    """Metrics from a step: the first copy under pmap (they are psum-reduced)."""
    if self.name == "pmap":
      return jax.tree.map(lambda x: x[0], tree)
    return tree

  def gather_preds(self, preds: Any) -> np.ndarray:
    """Per-example outputs of an eval step, in batch order, for this process's rows."""
    if self.name == "pmap":
      preds = np.asarray(preds)
      return preds.reshape((-1,) + preds.shape[2:])
    if jax.process_count() > 1:
      preds = jax.experimental.multihost_utils.process_allgather(preds, tiled=True)
      return np.asarray(preds)
    return np.asarray(preds)

  # -- compilation -------------------------------------------------------------------
  def compile_train(self, train_step: Callable) -> Callable:
    if self.name == "pmap":
      return jax.pmap(train_step, axis_name=AXIS, donate_argnums=(0,))
    return jax.jit(train_step, in_shardings=(self.replicated, self.data_sharding),
                   out_shardings=(self.replicated, self.replicated), donate_argnums=(0,))

  def compile_eval(self, eval_step: Callable) -> Callable:
    if self.name == "pmap":
      return jax.pmap(eval_step, axis_name=AXIS)
    return jax.jit(eval_step, in_shardings=(self.replicated, self.data_sharding))
