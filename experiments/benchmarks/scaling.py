"""Benchmark: data-parallel training throughput on 1, 2, 4 and 8 devices, pmap vs mesh.

Runs the library's real train step (steps.make_train_step, compiled by
parallel.Strategy, batches placed by Strategy.put_batch with the loop's prefetch)
for a convnet on random 32x32x3 uint8 images at a fixed global batch, and reports
examples/s per strategy and device count. This is the measurement behind
`parallel.choose('auto')`. Prints a table and writes experiments/results/scaling.json.

  python experiments/benchmarks/scaling.py [--model simple_cnn] [--batch 128]
      [--steps 8] [--repeats 5] [--platform cpu|gpu|tpu]

Without accelerators the devices are host CPU devices
(XLA_FLAGS=--xla_force_host_platform_device_count=8, set below before jax is
imported). They share the machine's cores, so on a small machine more of them is
not a speedup: the figures then compare the strategies' overheads, not scaling.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import statistics
import sys
import time

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()

import jax  # noqa: E402
import numpy as np  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
import flaxnets  # noqa: E402
from flaxnets.data import pipeline  # noqa: E402
from flaxnets.models import registry  # noqa: E402
from flaxnets.training import loop, optim, parallel, steps  # noqa: E402
from flaxnets.training.state import create_state  # noqa: E402

IMAGE_SHAPE = (32, 32, 3)
NUM_CLASSES = 10


def make_batches(num: int, batch: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
  """`num` host batches {'inputs': uint8 [batch, 32, 32, 3], 'labels': int32 [batch]}."""
  rng = np.random.default_rng(seed)
  return [{"inputs": rng.integers(0, 256, (batch,) + IMAGE_SHAPE, dtype=np.uint8),
           "labels": rng.integers(0, NUM_CLASSES, batch).astype(np.int32)} for _ in range(num)]


class Runner:
  """One strategy on `devices`, compiled, with its state placed; `run()` times one pass."""

  def __init__(self, strategy_name: str, devices: list, model_name: str, batches: list[dict]):
    self.strategy = strategy = parallel.Strategy(strategy_name, devices)
    strategy.check_batch(len(batches[0]["labels"]))
    kwargs = {"num_classes": NUM_CLASSES}
    if "bn_axis_name" in registry.model_fields(model_name):
      kwargs["bn_axis_name"] = strategy.axis_name
    model = registry.build_model(model_name, **kwargs)
    tx, schedule = optim.make_optimizer(flaxnets.get_config().optimizer, len(batches), 1)
    stats = pipeline.input_stats(batches[0], "image")
    state = create_state(model, tx, jax.random.PRNGKey(0), IMAGE_SHAPE, "image")
    self.train_step = strategy.compile_train(steps.make_train_step(
        num_classes=NUM_CLASSES, stats=stats, schedule=schedule, axis_name=strategy.axis_name))
    self.state = strategy.put_state(state)
    self.batches = batches
    self.times: list[float] = []
    self.first_pass_s = self.run(record=False)  # compiles

  def run(self, record: bool = True) -> float:
    """Seconds for one pass over the batches, as the training loop runs it."""
    start = time.perf_counter()
    state = self.state
    for batch in loop.prefetch(iter(self.batches), self.strategy):
      state, metrics = self.train_step(state, batch)
    jax.block_until_ready((state, metrics))
    seconds = time.perf_counter() - start
    self.state = state
    if record:
      self.times.append(seconds)
    return seconds

  def result(self) -> dict:
    median = statistics.median(self.times)
    examples = len(self.batches) * len(self.batches[0]["labels"])
    return {"strategy": self.strategy.name, "devices": self.strategy.num_devices,
            "examples_per_s": examples / median,
            "step_ms": 1e3 * median / len(self.batches),
            "step_ms_min": 1e3 * min(self.times) / len(self.batches),
            "first_pass_s": self.first_pass_s}


def main() -> None:
  from common import positive_int  # this folder is on sys.path when run as a file
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  image_models = sorted(n for n, cls in registry.MODELS.items()  # it feeds image batches
                        if "image" in getattr(cls, "input_kinds", ("image",)))
  parser.add_argument("--model", default="simple_cnn", choices=image_models)
  parser.add_argument("--batch", type=positive_int, default=128, help="global batch (fixed)")
  parser.add_argument("--steps", type=positive_int, default=8, help="timed steps per pass")
  parser.add_argument("--repeats", type=positive_int, default=5, help="timed passes (median)")
  parser.add_argument("--platform", default=None,
                      help="jax platform (default: accelerators if any, else cpu)")
  parser.add_argument("--out", default=str(REPO / "experiments" / "results" / "scaling.json"))
  args = parser.parse_args()

  all_devices = jax.devices(args.platform) if args.platform else jax.devices()
  counts = [n for n in (1, 2, 4, 8) if n <= len(all_devices)]
  if args.batch % counts[-1]:
    parser.error(f"--batch {args.batch}: expected a multiple of {counts[-1]}, the most "
                 "devices it runs on (the global batch is split over them)")
  batches = make_batches(args.steps, args.batch)
  host_devices = all_devices[0].platform == "cpu"
  cores = os.cpu_count()
  load_before = os.getloadavg()[0]  # other processes' load makes the figures noisy
  runners = [Runner(name, all_devices[:n], args.model, batches)
             for n in counts for name in (["single"] if n == 1 else []) + ["pmap", "mesh"]]
  # Round robin over the configurations: load from other processes on a shared
  # machine then slows every configuration alike instead of whichever ran at the time.
  for r in range(args.repeats):
    for runner in runners:
      runner.run()
    print(f"  pass {r + 1}/{args.repeats} done", flush=True)
  rows = [runner.result() for runner in runners]
  base = rows[0]["examples_per_s"]
  for row in rows:
    row["vs_single"] = row["examples_per_s"] / base

  note = (f"{len(all_devices)} host CPU devices sharing {cores} cores: more devices split "
          "the same cores, so this is not real speedup; it compares the strategies' "
          "overheads" if host_devices else
          f"{len(all_devices)} {all_devices[0].device_kind} devices")
  header = f"{'strategy':<8} {'devices':>7} {'ex/s':>9} {'step ms':>8} {'vs single':>9}"
  print(f"\n{args.model}, global batch {args.batch}, {args.steps} steps x {args.repeats} "
        f"(median); {all_devices[0].device_kind}, jax {jax.__version__}")
  print(header)
  print("-" * len(header))
  for row in rows:
    print(f"{row['strategy']:<8} {row['devices']:>7} {row['examples_per_s']:>9.0f} "
          f"{row['step_ms']:>8.1f} {row['vs_single']:>9.2f}")
  print("note:", note)
  print(f"load average (1 min) before / after: {load_before:.1f} / {os.getloadavg()[0]:.1f}")
  pairs = []
  for n in counts[1:]:
    by = {r["strategy"]: r for r in rows if r["devices"] == n}
    ratio = by["mesh"]["examples_per_s"] / by["pmap"]["examples_per_s"]
    pairs.append({"devices": n, "mesh_over_pmap": ratio})
    print(f"mesh / pmap on {n} devices: {ratio:.2f}")

  out = pathlib.Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps({
      "benchmark": "scaling", "model": args.model, "image_shape": list(IMAGE_SHAPE),
      "global_batch": args.batch, "steps": args.steps, "repeats": args.repeats,
      "platform": all_devices[0].platform, "device_kind": all_devices[0].device_kind,
      "num_devices": len(all_devices), "host_cpu_devices": host_devices, "cpu_cores": cores,
      "jax_version": jax.__version__, "python": platform.python_version(),
      "machine": platform.machine(), "note": note,
      "load_average_1min": [load_before, os.getloadavg()[0]], "results": rows,
      "mesh_over_pmap": pairs}, indent=2))
  print(f"wrote {out}")


if __name__ == "__main__":
  main()
