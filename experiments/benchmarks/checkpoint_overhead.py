"""Step-time overhead of checkpointing every epoch: asynchronous vs synchronous vs none.

    python experiments/benchmarks/checkpoint_overhead.py [--epochs 6] [--repeats 3]
        [--models small,wide] [--batch_size 16]

Trains SimpleCNN on the built-in digits with a workdir, three ways: checkpoints off,
a checkpoint at every epoch end saved asynchronously (the default), and the same
saved synchronously. The figure of merit is the wall time from one epoch's end to
the next (validation + save + the next epoch's training, which overlaps an
asynchronous commit), per training step, averaged over epochs 2.. (epoch 1
compiles). It also times the part of each save that blocks the loop. Variants are
interleaved and repeated, and the median run is reported, because the host may be
shared. Prints a table and writes experiments/results/checkpoint_overhead.json.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import statistics
import sys
import tempfile
import time
from typing import Any

# "small": the default SimpleCNN (53 k params, 0.6 MB with Adam state); "wide": a
# 4096-unit hidden layer (1.1 M params, 13 MB), so that writing the state is not free.
MODELS = {"small": {}, "wide": {"hidden": 4096}}
VARIANTS = {"none": dict(enabled=False), "async": dict(enabled=True, async_save=True),
            "sync": dict(enabled=True, async_save=False)}
RESULTS = pathlib.Path(__file__).resolve().parents[1] / "results" / "checkpoint_overhead.json"


class SaveTimer:
  """Wraps Checkpointer.save and .close to time what the training loop waits for."""

  def __init__(self):
    from flaxnets.training import checkpoint
    self.cls = checkpoint.Checkpointer
    self.save_s: list[float] = []
    self.close_s: list[float] = []
    self._orig = (self.cls.save, self.cls.close)

  def __enter__(self):
    timer, (save, close) = self, self._orig

    def timed_save(ckpt, *args, **kwargs):
      start = time.perf_counter()
      save(ckpt, *args, **kwargs)
      timer.save_s.append(time.perf_counter() - start)

    def timed_close(ckpt):
      start = time.perf_counter()
      close(ckpt)
      timer.close_s.append(time.perf_counter() - start)

    self.cls.save, self.cls.close = timed_save, timed_close
    return self

  def __exit__(self, *exc):
    self.cls.save, self.cls.close = self._orig
    return False


def dir_bytes(path: pathlib.Path) -> int:
  return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def run_once(model: str, variant: str, epochs: int, batch_size: int,
             workdir: pathlib.Path) -> dict[str, Any]:
  """One training run; epoch periods from metrics.jsonl, save timings from SaveTimer."""
  import jax
  import flaxnets
  config = flaxnets.get_config()
  config.num_epochs = epochs
  config.batch_size = batch_size
  config.progress = False
  config.log_every_steps = 10 ** 6  # no logging syncs inside the epoch
  for key, value in MODELS[model].items():
    config.model[key] = value
  for key, value in VARIANTS[variant].items():
    config.checkpoint[key] = value
  with SaveTimer() as timer:
    result = flaxnets.train(config, str(workdir))
  records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  ends = [r["wall_time"] for r in records if r["split"] == "train"]
  steps = [r["step"] for r in records if r["split"] == "train"]
  steps_per_epoch = steps[0]
  # Skip the first period too: it holds the first validation's compile and first save.
  periods = [b - a for a, b in zip(ends, ends[1:])][1:]
  ckpt_dir = workdir / "checkpoints"
  newest = max(ckpt_dir.iterdir(), key=lambda p: int(p.name)) if ckpt_dir.is_dir() else None
  return {"model": model, "variant": variant, "steps_per_epoch": steps_per_epoch,
          "epoch_period_s": periods, "step_ms": 1e3 * statistics.mean(periods) / steps_per_epoch,
          "save_blocking_ms": [1e3 * s for s in timer.save_s],
          "close_wait_ms": [1e3 * s for s in timer.close_s],
          "checkpoint_bytes": dir_bytes(newest) if newest else 0,
          "params": int(sum(x.size for x in jax.tree.leaves(result.state.params))),
          "test_accuracy": result.test_metrics["accuracy"]}


def main(argv: list[str] | None = None) -> int:
  from common import positive_int  # this folder is on sys.path when run as a file
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--epochs", type=positive_int, default=6)
  parser.add_argument("--repeats", type=positive_int, default=3)
  parser.add_argument("--batch_size", type=positive_int, default=16)
  parser.add_argument("--models", default="small,wide")
  parser.add_argument("--out", default=str(RESULTS))
  args = parser.parse_args(argv)
  if args.epochs < 3:
    parser.error(f"--epochs={args.epochs}: expected >= 3 (epoch 1 compiles; periods need 2)")
  models = args.models.split(",")
  for m in models:
    if m not in MODELS:
      parser.error(f"--models: {m!r} is not one of {sorted(MODELS)}")

  import jax
  load_before = os.getloadavg()
  runs = []
  with tempfile.TemporaryDirectory() as tmp:
    for model in models:
      for repeat in range(args.repeats):
        for variant in VARIANTS:  # interleaved: a busy moment hits every variant alike
          workdir = pathlib.Path(tmp) / f"{model}-{variant}-{repeat}"
          run = run_once(model, variant, args.epochs, args.batch_size, workdir)
          run["repeat"] = repeat
          runs.append(run)
          print(f"  {model:<6} {variant:<6} #{repeat}: {run['step_ms']:.3f} ms/step", flush=True)

  rows = []
  for model in models:
    base = statistics.median(r["step_ms"] for r in runs
                             if r["model"] == model and r["variant"] == "none")
    for variant in VARIANTS:
      mine = [r for r in runs if r["model"] == model and r["variant"] == variant]
      step_ms = statistics.median(r["step_ms"] for r in mine)
      saves = [s for r in mine for s in r["save_blocking_ms"]]
      rows.append({
          "model": model, "variant": variant, "params": mine[0]["params"],
          "checkpoint_mb": mine[0]["checkpoint_bytes"] / 2 ** 20,
          "steps_per_epoch": mine[0]["steps_per_epoch"], "step_ms": step_ms,
          "overhead_ms_per_step": step_ms - base,
          "overhead_pct": 100.0 * (step_ms - base) / base,
          "overhead_ms_per_epoch": (step_ms - base) * mine[0]["steps_per_epoch"],
          "save_blocking_ms_median": statistics.median(saves) if saves else 0.0,
          "step_ms_runs": [r["step_ms"] for r in mine]})

  header = (f"{'model':<6} {'saving':<6} {'params':>9} {'ckpt MB':>8} {'ms/step':>8} "
            f"{'overhead ms/step':>17} {'overhead %':>10} {'ms/epoch':>9} {'save blocks ms':>15}")
  print()
  print(f"checkpoint every epoch, digits, batch {args.batch_size}, {args.epochs} epochs, "
        f"median of {args.repeats}; {jax.device_count()} {jax.default_backend()} device(s)")
  print(header)
  print("-" * len(header))
  for r in rows:
    print(f"{r['model']:<6} {r['variant']:<6} {r['params']:>9,} {r['checkpoint_mb']:>8.2f} "
          f"{r['step_ms']:>8.3f} {r['overhead_ms_per_step']:>+17.3f} {r['overhead_pct']:>+10.1f} "
          f"{r['overhead_ms_per_epoch']:>+9.1f} {r['save_blocking_ms_median']:>15.1f}")

  out = pathlib.Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps({
      "benchmark": "checkpoint_overhead", "epochs": args.epochs, "repeats": args.repeats,
      "batch_size": args.batch_size, "dataset": "digits", "model": "simple_cnn",
      "model_variants": MODELS, "rows": rows, "runs": runs,
      "environment": {"jax": jax.__version__, "backend": jax.default_backend(),
                      "devices": jax.device_count(),
                      "device_kind": jax.devices()[0].device_kind,
                      "cpu_count": os.cpu_count(), "load_average_before": load_before,
                      "load_average_after": os.getloadavg(), "python": sys.version.split()[0],
                      "platform": platform.platform()},
      "metric": "wall time between consecutive epoch ends (validation + save + next "
                "epoch), per training step, epochs 2.., median over repeats"}, indent=2))
  print(f"\nwrote {out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
