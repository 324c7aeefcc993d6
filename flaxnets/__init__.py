"""flaxnets: train convolutional and recurrent networks with JAX, Flax, Optax and Orbax.

    import flaxnets
    config = flaxnets.get_config()          # SimpleCNN on the built-in digits
    result = flaxnets.train(config, workdir="runs/digits")
    print(result.test_metrics["accuracy"])
    predictor = flaxnets.load("runs/digits")  # best checkpoint, params only
    predictor.predict(images)
"""
from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["train", "evaluate", "load", "lr_find", "Predictor", "get_config", "ConfigError",
           "Interrupted", "CheckpointError", "EpochEnd", "__version__"]


def __getattr__(name):
  # Lazy: `import flaxnets` stays cheap; jax is imported on first use.
  if name in ("train", "evaluate", "TrainResult", "Interrupted", "EpochEnd"):
    from flaxnets.training import loop
    return getattr(loop, name)
  if name in ("get_config", "ConfigError", "validate"):
    from flaxnets import config
    return getattr(config, name)
  if name == "CheckpointError":  # a failed save, a damaged step, a busy or foreign workdir
    from flaxnets.training import checkpoint
    return checkpoint.CheckpointError
  if name in ("lr_find", "LRFindResult"):  # the learning-rate range test
    from flaxnets.training import lr_find
    return getattr(lr_find, name)
  if name in ("load", "Predictor"):
    from flaxnets import inference
    return getattr(inference, name)
  raise AttributeError(f"module 'flaxnets' has no attribute {name!r}")
