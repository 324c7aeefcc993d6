"""Helpers the test modules share (tests/ is on sys.path under pytest's default imports)."""
import contextlib

import jax

import flaxnets


def quiet_config(**changes):
  """The default config without progress bars or TensorBoard, with dotted-key changes
  (model fields included, which update_from_flattened_dict would skip)."""
  config = flaxnets.get_config()
  config.progress = False
  config.tensorboard = False
  for dotted, value in changes.items():
    *parents, leaf = dotted.split(".")
    node = config
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config


@contextlib.contextmanager
def counting_compiles():
  """Yields a list that gets one entry per XLA compilation made inside the block."""
  compiles = []

  def listener(event, secs, **kwargs):
    if event == "/jax/core/compile/backend_compile_duration":
      compiles.append(secs)

  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    yield compiles
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
