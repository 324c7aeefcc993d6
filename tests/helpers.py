"""Helpers the test modules share (tests/ is on sys.path under pytest's default imports)."""
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
