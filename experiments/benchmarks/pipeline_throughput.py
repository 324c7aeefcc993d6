"""Benchmark: host input pipeline throughput (examples/s) on CIFAR-10 at batch 512.

Reads the training split of ../shared/data/cifar10_jpg through the `image_folder`
source (decoded once, into memory), then times
  (a) the host iterator alone: flaxnets.data.pipeline.TrainIterator batches
      (one seeded numpy permutation per epoch, sliced into batches by a Grain
      MapDataset; one numpy gather per array);
  (b) (a) + jax.device_put of every batch;
  (c) (b) + on-device preprocessing and augmentation, jitted: per-channel
      standardisation and flaxnets.training.steps.augment_images (random crop after
      4-pixel padding, horizontal flip), as the train step runs them.
Compilation is done before timing. The device works asynchronously: (b) and (c) wait
for each batch's result one batch later, so host and device overlap as in training.
Prints a table and writes experiments/results/pipeline_throughput.json.

  python experiments/benchmarks/pipeline_throughput.py [--data-dir DIR] [--batches 97]

Skips (exit 0) when the data folder is absent.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import pathlib
import platform
import sys
import time
from typing import Any, Callable, Iterator

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

BATCH = 512
MACHINE_NOTE = ("loaded 2-core CPU shared with other developers' jobs: figures are lower "
                "bounds and vary run to run")


def _batches(it: Any, n: int) -> Iterator[dict[str, np.ndarray]]:
  """n batches from a TrainIterator, across epoch ends."""
  done = 0
  while done < n:
    for batch in it.epoch_batches():
      yield batch
      done += 1
      if done == n:
        return


def _time(consume: Callable[[Iterator], None], make_it: Callable[[], Any],
          n: int, repeats: int) -> tuple[float, list[float]]:
  """Median wall seconds for n batches, and all repeats."""
  runs = []
  for _ in range(repeats):
    it = make_it()
    t = time.perf_counter()
    consume(_batches(it, n))
    runs.append(time.perf_counter() - t)
  return float(np.median(runs)), runs


def main() -> int:
  from common import positive_int  # this folder is on sys.path when run as a file
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--data-dir", type=pathlib.Path,
                      default=REPO.parent / "shared" / "data" / "cifar10_jpg")
  parser.add_argument("--batches", type=positive_int, default=97,
                      help="batches timed per run (97 = one epoch of 50,000 at 512)")
  parser.add_argument("--repeats", type=positive_int, default=3)
  parser.add_argument("--out", type=pathlib.Path,
                      default=REPO / "experiments" / "results" / "pipeline_throughput.json")
  args = parser.parse_args()
  if not (args.data_dir / "train.tar.gz").is_file() and not (args.data_dir / "train").is_dir():
    print(f"skipped: no CIFAR-10 training data in {args.data_dir}")
    return 0

  import jax
  import jax.numpy as jnp
  import ml_collections

  import flaxnets
  from flaxnets.data import local, pipeline
  from flaxnets.training import steps

  dcfg: ml_collections.ConfigDict = flaxnets.get_config().dataset
  dcfg.name, dcfg.path, dcfg.test_split, dcfg.val_fraction = \
      "image_folder", str(args.data_dir), "", 0.0
  t = time.perf_counter()
  dataset = local.image_folder_dataset(dcfg)
  load_s = time.perf_counter() - t
  train = dataset.train
  stats = pipeline.input_stats(train, "image")
  print(f"loaded {len(train['labels'])} images {train['inputs'].shape[1:]} in {load_s:.1f} s")

  def make_it():
    return pipeline.TrainIterator(train, BATCH, seed=0)

  @jax.jit
  def augment(batch: dict[str, jax.Array], rng: jax.Array) -> jax.Array:
    x = steps.preprocess(batch["inputs"], stats)
    return steps.augment_images(x, rng, crop_padding=4, flip=True)

  def host_only(batches):
    for b in batches:
      pass

  def pipelined(fn):
    """Consume batches through fn; wait for each result one batch later."""
    def consume(batches):
      pending: collections.deque = collections.deque()
      for i, b in enumerate(batches):
        pending.append(fn(b, i))
        if len(pending) > 1:
          jax.block_until_ready(pending.popleft())
      for out in pending:
        jax.block_until_ready(out)
    return consume

  key = jax.random.PRNGKey(0)
  put = pipelined(lambda b, i: jax.device_put(b))
  put_augment = pipelined(lambda b, i: augment(jax.device_put(b), jax.random.fold_in(key, i)))
  first = next(make_it().epoch_batches())
  jax.block_until_ready(augment(jax.device_put(first), key))  # compile outside the timing
  assert augment(jax.device_put(first), key).shape == (BATCH, 32, 32, 3)

  cases = [("(a) host iterator (TrainIterator)", host_only),
           ("(b) host iterator + device_put", put),
           ("(c) host iterator + device_put + jitted normalise/crop/flip", put_augment)]
  rows = []
  for name, consume in cases:
    seconds, runs = _time(consume, make_it, args.batches, args.repeats)
    examples = args.batches * BATCH
    rows.append({"method": name, "batch_size": BATCH, "batches": args.batches,
                 "examples": examples, "seconds": round(seconds, 3),
                 "examples_per_s": round(examples / seconds),
                 "batches_per_s": round(args.batches / seconds, 1),
                 "all_seconds": [round(r, 3) for r in runs]})
    print(f"  {name}: {examples / seconds:,.0f} ex/s", flush=True)

  print(f"\nCIFAR-10 host pipeline, batch {BATCH}, {args.batches} batches, median of "
        f"{args.repeats}; {jax.devices()[0].device_kind} backend; machine: {MACHINE_NOTE}")
  print(f"{'method':<62} {'examples/s':>11} {'batches/s':>10}")
  for r in rows:
    print(f"{r['method']:<62} {r['examples_per_s']:>11,} {r['batches_per_s']:>10}")
  result = {
      "benchmark": "pipeline_throughput",
      "what": "CIFAR-10 train split (50,000 JPEGs decoded to uint8 once), batch 512",
      "command": "python experiments/benchmarks/pipeline_throughput.py " + " ".join(sys.argv[1:]),
      "machine": MACHINE_NOTE, "cpu_count": os.cpu_count(),
      "load_average_at_end": [round(v, 2) for v in os.getloadavg()],
      "host": platform.processor() or platform.machine(),
      "backend": jax.default_backend(), "device": jax.devices()[0].device_kind,
      "decode_seconds": round(load_s, 2), "repeats": args.repeats, "rows": rows,
      "jax_version": jax.__version__, "flaxnets_version": flaxnets.__version__,
      "date": time.strftime("%Y-%m-%d")}
  args.out.parent.mkdir(parents=True, exist_ok=True)
  args.out.write_text(json.dumps(result, indent=2))
  print(f"wrote {args.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
