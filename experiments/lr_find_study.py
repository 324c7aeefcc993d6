"""How good is `flaxnets.lr_find`'s suggestion? SimpleCNN (8/16 filters, 32 hidden) on the
built-in digits, adam and sgd, 3 seeds: the range test's suggestion (steepest fall of a
centred moving average, before its minimum) beside the steepest fall of the exponential
average that fastai and Lightning read; then 3 epochs of training at a grid of fixed
rates, to see where each choice lands. Prints tables; writes
experiments/results/lr_find_study.json. About 2 minutes on the 2-core CPU.

    python experiments/lr_find_study.py
"""
from __future__ import annotations

import contextlib
import datetime
import io
import json
import os
import pathlib
import platform

import jax
import numpy as np

import flaxnets
from flaxnets.training.lr_find import suggest

RESULTS = pathlib.Path(__file__).resolve().parent / "results"
GRID = {"adam": (1e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1), "sgd": (1e-2, 3e-2, 0.1, 0.2, 0.5)}


def config(opt: str, **changes):
  c = flaxnets.get_config()
  c.progress = False
  c.tensorboard = False
  c.model.features = (8, 16)
  c.model.hidden = 32
  c.optimizer.name = opt
  for k, v in changes.items():
    c[k] = v
  return c


def ema_steepest(result, skip_begin=10, skip_end=1) -> float:
  """Lightning's pick: the steepest fall of the exponential moving average."""
  s = result.smoothed_losses[skip_begin:len(result.smoothed_losses) - skip_end]
  return float(result.learning_rates[skip_begin + int(np.argmin(np.gradient(s)))])


def main() -> None:
  out = {"benchmark": "lr_find_study",
         "what": "flaxnets.lr_find's suggestion (centred average) beside the exponential "
                 "average's steepest fall (Lightning's pick), SimpleCNN on digits; then "
                 "validation accuracy after 3 epochs at fixed rates",
         "command": "python experiments/lr_find_study.py",
         "device_kind": jax.devices()[0].device_kind, "machine": platform.machine(),
         "cpu_count": os.cpu_count(), "jax_version": jax.__version__,
         "date": datetime.date.today().isoformat(), "sweeps": [], "grid": []}
  print("optimizer seed  suggestion  min-loss rate  EMA steepest  diverged")
  for opt in GRID:
    for seed in (0, 1, 2):
      with contextlib.redirect_stdout(io.StringIO()):
        r = flaxnets.lr_find(config(opt, seed=seed))
      row = {"optimizer": opt, "seed": seed, "suggestion": r.suggestion,
             "min_loss_lr": r.min_loss_lr, "ema_steepest": ema_steepest(r),
             "stopped_early": r.stopped_early, "steps": len(r.losses)}
      n = len(r.losses) - (1 if r.stopped_early else 0)  # a diverged last point is not read
      assert suggest(r.learning_rates[:n], r.losses[:n])[0] == r.suggestion
      out["sweeps"].append(row)
      print(f"{opt:9} {seed:4}  {r.suggestion:10.3g}  {r.min_loss_lr:13.3g}  "
            f"{row['ema_steepest']:12.3g}  {r.stopped_early}")
  print("\noptimizer  learning rate  val accuracy after 3 epochs (seed 0)")
  for opt, rates in GRID.items():
    for lr in rates:
      c = config(opt, num_epochs=3)
      c.optimizer.learning_rate = lr
      with contextlib.redirect_stdout(io.StringIO()):
        res = flaxnets.train(c)
      acc = res.val_metrics["accuracy"]
      out["grid"].append({"optimizer": opt, "learning_rate": lr, "val_accuracy": acc})
      print(f"{opt:9}  {lr:13g}  {acc:.2%}")
  RESULTS.mkdir(exist_ok=True)
  path = RESULTS / "lr_find_study.json"
  path.write_text(json.dumps(out, indent=2))
  print(f"\nwrote {path}")


if __name__ == "__main__":
  main()
