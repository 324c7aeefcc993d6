"""What config.grad_accum_steps buys: a train step's temporary memory and time by micro-batches.

    python experiments/benchmarks/grad_accum.py [--models resnet20 simple_cnn text_cnn rnn crnn]
        [--accum 1 2 4 8] [--batch 256] [--steps 3] [--no-cpu-variants] [--out FILE]

Compiles the library's own train step (steps.make_train_step, as flaxnets.train does on one
device) for each model with the batch split into k micro-batches, and reports:

- temp MiB: XLA's temporary buffers of the compiled step (`compiled.memory_analysis()`),
  the activation memory that accumulating is for; params, optimizer state and the batch
  (the arguments) do not change with k;
- compile s, and step ms: the median of --steps timed steps after one untimed step.

On CPU, a model with convolutions has its micro-batches unrolled and ordered (see
`steps.make_train_step`); for those, two more rows at the smallest k > 1 show why:
"unordered" (micro-batches not made to wait for each other's gradients: XLA overlaps
them and saves little memory) and "in a loop" (a `lax.scan` over micro-batches, as on
accelerators: XLA:CPU then runs the convolutions' backward passes without Eigen).
Prints a table and writes experiments/results/grad_accum_<platform>.json.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time

import common

# name -> (input kind, example shape, model fields)
MODELS = {
    "resnet20": ("image", (32, 32, 3), {}),
    "resnet18": ("image", (32, 32, 3), {}),
    "simple_cnn": ("image", (32, 32, 3), {}),
    "text_cnn": ("tokens", (64,), {"vocab_size": 20000}),
    "rnn": ("series", (64, 16), {"cell": "lstm", "hidden_size": 256}),
    "crnn": ("image", (28, 28, 1), {}),
}


def make_batch(kind: str, shape: tuple, batch: int):
  import numpy as np
  rng = np.random.default_rng(0)
  if kind == "tokens":
    x = rng.integers(1, 20000, (batch,) + shape).astype(np.int32)
  elif kind == "image":
    x = rng.integers(0, 256, (batch,) + shape).astype(np.uint8)
  else:
    x = rng.normal(size=(batch,) + shape).astype(np.float32)
  out = {"inputs": x, "labels": rng.integers(0, 10, batch).astype(np.int32)}
  if kind == "series":
    out["seq_lengths"] = np.full(batch, shape[0], np.int32)
  return out


def measure(name: str, accum: int, batch_size: int, steps_timed: int, order: bool = True,
            loop: bool = False) -> dict:
  import jax
  import numpy as np
  import optax
  from flaxnets.models import registry
  from flaxnets.training import steps
  from flaxnets.training.state import create_state
  kind, shape, fields = MODELS[name]
  model = registry.build_model(name, num_classes=10, **fields)
  host_state = jax.device_get(create_state(model, optax.sgd(0.1, momentum=0.9),
                                           jax.random.PRNGKey(0), shape, kind))
  batch = make_batch(kind, shape, batch_size)
  stats = ({"mean": np.full(shape[-1:], 120.0, np.float32),
            "std": np.full(shape[-1:], 60.0, np.float32)} if kind == "image" else {})
  saved = steps._has_convolutions
  if loop:  # the accelerator path (a lax.scan over micro-batches) on this platform
    steps._has_convolutions = lambda *a: False
  try:
    step = jax.jit(steps.make_train_step(
        num_classes=10, stats=stats, schedule=optax.constant_schedule(0.1),
        grad_accum_steps=accum, order_micro_batches=order), donate_argnums=0)
    start = time.perf_counter()
    compiled = step.lower(host_state, batch).compile()
    compile_s = time.perf_counter() - start
  finally:
    steps._has_convolutions = saved
  temp = compiled.memory_analysis().temp_size_in_bytes / 2**20
  state = jax.device_put(host_state)
  state, metrics = compiled(state, batch)
  jax.block_until_ready(metrics)
  times = []
  for _ in range(steps_timed):
    start = time.perf_counter()
    state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics)
    times.append(1e3 * (time.perf_counter() - start))
  return {"model": name, "batch": batch_size, "accum": accum,
          "micro_batch": batch_size // accum,
          "variant": "loop" if loop else ("default" if order else "unordered"),
          "temp_mib": round(temp, 1), "compile_s": round(compile_s, 2),
          "step_ms": round(statistics.median(times), 2),
          "loss": float(metrics["loss_sum"] / metrics["count"])}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--models", nargs="+", default=["resnet20", "simple_cnn", "text_cnn",
                                                      "rnn", "crnn"], choices=sorted(MODELS))
  parser.add_argument("--accum", nargs="+", type=common.positive_int, default=[1, 2, 4, 8])
  parser.add_argument("--batch", type=common.positive_int, default=256)
  parser.add_argument("--steps", type=common.positive_int, default=3)
  parser.add_argument("--no-cpu-variants", action="store_true",
                      help="skip the 'unordered' and 'in a loop' rows on CPU")
  parser.add_argument("--out", default=None)
  args = parser.parse_args()
  import jax
  from flaxnets.training import steps
  cpu = jax.default_backend() == "cpu"
  rows = []
  header = (f"{'model':<11} {'batch':>5} {'k':>2} {'micro':>5} {'variant':<10} "
            f"{'temp MiB':>9} {'x of k=1':>8} {'compile s':>9} {'step ms':>9}")
  print(header + "\n" + "-" * len(header))
  for name in args.models:
    variants = [(k, True, False) for k in args.accum]
    splits = [k for k in args.accum if k > 1]
    kind, shape, fields = MODELS[name]
    if cpu and splits and not args.no_cpu_variants:
      import jax.numpy as jnp
      import numpy as np
      from flaxnets.models import registry
      model = registry.build_model(name, num_classes=10, **fields)
      x = jnp.zeros((2,) + shape, jnp.int32 if kind == "tokens" else jnp.float32)
      if steps._has_convolutions(lambda v: model.init({"params": v, "dropout": v}, x,
                                                      None, train=False),
                                 jax.random.PRNGKey(0)):
        variants += [(min(splits), False, False), (min(splits), True, True)]
    base = None
    for accum, order, loop in variants:
      if args.batch % accum:
        print(f"{name:<11} batch {args.batch} does not split into {accum}: skipped")
        continue
      row = measure(name, accum, args.batch, args.steps, order, loop)
      if accum == 1:
        base = row["temp_mib"]
      row["temp_vs_whole"] = round(row["temp_mib"] / base, 3) if base else None
      rows.append(row)
      ratio = f"{row['temp_vs_whole']:.2f}" if base else "-"
      print(f"{name:<11} {row['batch']:>5} {accum:>2} {row['micro_batch']:>5} "
            f"{row['variant']:<10} {row['temp_mib']:>9.1f} {ratio:>8} "
            f"{row['compile_s']:>9.2f} {row['step_ms']:>9.1f}", flush=True)
      write(rows, args, quiet=True)  # after every row: a time limit keeps what was measured
  write(rows, args)


def write(rows: list[dict], args: argparse.Namespace, quiet: bool = False) -> None:
  import json
  import os
  import sys

  import jax
  cpu = jax.default_backend() == "cpu"
  result = {"benchmark": "grad_accum",
            "what": "one train step of the library's own step (steps.make_train_step) with "
                    "the batch in `accum` micro-batches (config.grad_accum_steps)",
            "metric": "temp_mib: XLA's temporary buffers of the compiled step "
                      "(memory_analysis), temp_vs_whole: of the unsplit step's; step_ms: "
                      "median of the timed steps after one untimed",
            "note": "variant 'default': as flaxnets.train runs it (on CPU, a model with "
                    "convolutions unrolled and ordered); 'unordered': unrolled, micro-batches "
                    "not made to wait for the gradients before them; 'loop': a lax.scan over "
                    "micro-batches (the accelerator path) on this platform",
            "platform": jax.default_backend(),
            "device_kind": jax.devices()[0].device_kind, "jax_version": jax.__version__,
            "machine": platform.machine(), "cpu_count": os.cpu_count(),
            "load_avg": [round(v, 2) for v in os.getloadavg()],
            "date": time.strftime("%Y-%m-%d %H:%M"),
            "command": " ".join(["python experiments/benchmarks/grad_accum.py", *sys.argv[1:]]),
            "rows": rows}
  name = f"grad_accum_{'cpu' if cpu else 'gpu'}.json"
  if quiet:
    path = common.pathlib.Path(args.out) if args.out else common.RESULTS / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2))
  else:
    common.write_result(result, args.out, name)


if __name__ == "__main__":
  main()
