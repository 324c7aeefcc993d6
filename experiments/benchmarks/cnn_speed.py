"""Benchmark: CIFAR ResNet training throughput, bare jitted step vs flaxnets.train's loop vs PyTorch.

Four ways to train the same network on 32x32x3 CIFAR-shaped batches (random uint8
images and labels: the device work does not depend on the pixel values):

  plain flax      a minimal jitted step (cross-entropy, SGD+Nesterov, weight decay,
                  batch-norm statistics), float inputs already on the device: the
                  issue's "plain Flax jit" baseline;
  flaxnets step   the library's own step (steps.make_train_step: uint8 -> standardise,
                  random crop + flip on the device, metric sums) compiled by
                  parallel.Strategy('single'), called in a tight Python loop over
                  batches already on the device: the "bare jitted step";
  flaxnets.train  the whole library loop (`flaxnets.train(config, data=...)`: Grain
                  shuffling, host batches, prefetch to the device, the same step,
                  metric accumulation), examples/s from its per-epoch history
                  (epoch 1 holds the compilation and is left out);
  torch eager / torch.compile
                  the same ResNet in PyTorch (channels_last, SGD+Nesterov, weight
                  decay; bf16 via torch.autocast), when torch is installed.

Reported: ms per step, examples/s, loop/bare (target >= 0.95 on GPU) and
flaxnets/torch throughput ratios (target >= 1.5x in bf16 on GPU).

  python experiments/benchmarks/cnn_speed.py                       # GPU: resnet18, batch 512, fp32 + bf16
  python experiments/benchmarks/cnn_speed.py --tiny                # CPU smoke test: resnet20, batch 64
  python experiments/benchmarks/cnn_speed.py --model resnet20 --batch 128 --dtypes float32

Writes experiments/results/cnn_speed_<backend>[_tiny].json (or --out).
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import pathlib
import platform
import statistics
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
RESULTS = REPO / "experiments" / "results"
NUM_CLASSES = 10
IMAGE_SHAPE = (32, 32, 3)
# Issue 7's H200 figures, ms per ResNet-18 train step at batch 512 (fp32 / bf16).
REFERENCE_MS = {"float32": {"torch eager (issue, H200)": 13.8, "torch.compile (issue, H200)": 12.4,
                            "plain flax jit (issue, H200)": 12.3},
                "bfloat16": {"torch eager (issue, H200)": 9.1, "torch.compile (issue, H200)": 9.5,
                             "plain flax jit (issue, H200)": 6.0}}


def parse_args(argv=None):
  from common import positive_int  # this folder is on sys.path when run as a file
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--model", default=None, help="resnet18 (default), resnet20, ...")
  p.add_argument("--batch", type=positive_int, default=None, help="default 512 (tiny 64)")
  p.add_argument("--steps", type=positive_int, default=None, help="timed steps per repeat (default 50, tiny 4)")
  p.add_argument("--repeats", type=positive_int, default=None, help="timed repeats, median kept (default 5, tiny 2)")
  p.add_argument("--loop-epochs", type=positive_int, default=None,
                 help="flaxnets.train epochs; epoch 1 (compile) is not counted (default 4, tiny 2)")
  p.add_argument("--loop-steps", type=positive_int, default=None,
                 help="steps per flaxnets.train epoch (default 100, tiny 4)")
  p.add_argument("--dtypes", nargs="*", default=None,
                 help="default: float32 bfloat16 on accelerators, float32 on CPU")
  p.add_argument("--no-torch", action="store_true")
  p.add_argument("--torch-compile", choices=("auto", "yes", "no"), default="auto",
                 help="time torch.compile too (auto: on GPU only; CPU compiles take minutes)")
  p.add_argument("--torch-compile-dtypes", nargs="*", default=None,
                 help="dtypes to time torch.compile in (default: all; each compile takes ~1 min)")
  p.add_argument("--tiny", action="store_true", help="CPU smoke test: resnet20, batch 64, 4 steps")
  p.add_argument("--out", default=None)
  return p.parse_args(argv)


def random_data(n: int, seed: int = 0):
  import numpy as np
  rng = np.random.default_rng(seed)
  return (rng.integers(0, 256, (n,) + IMAGE_SHAPE, dtype=np.uint8),
          rng.integers(0, NUM_CLASSES, n).astype(np.int32))


def optimizer_config():
  """The cifar10_resnet.py recipe's optimizer (without warmup: nothing to converge here)."""
  import flaxnets
  o = flaxnets.get_config().optimizer
  o.name, o.learning_rate, o.momentum, o.nesterov = "sgd", 0.1, 0.9, True
  o.weight_decay, o.schedule = 5e-4, "cosine"
  return o


# ----------------------------------------------------------------------------- JAX


def time_steps(step, state, batches, steps: int, repeats: int):
  """-> (median seconds per step over repeats, all repeat times, final state)."""
  import jax
  state, m = step(state, batches[0])  # compile + warm up
  jax.block_until_ready((state, m))
  per_step = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    for i in range(steps):
      state, m = step(state, batches[i % len(batches)])
    jax.block_until_ready((state, m))
    per_step.append((time.perf_counter() - t0) / steps)
  return statistics.median(per_step), per_step, state


def plain_flax(model_name: str, dtype, batch: int, steps: int, repeats: int):
  """A minimal jitted train step, as a user would write it with Flax + Optax."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  import optax
  from flaxnets.models import registry
  model = registry.build_model(model_name, num_classes=NUM_CLASSES, dtype=dtype)
  x = jnp.asarray(np.random.default_rng(0).standard_normal((batch,) + IMAGE_SHAPE, np.float32))
  y = jnp.asarray(np.random.default_rng(1).integers(0, NUM_CLASSES, batch).astype(np.int32))
  variables = jax.jit(functools.partial(model.init, train=False))(jax.random.key(0), x)
  tx = optax.chain(optax.add_decayed_weights(5e-4), optax.sgd(0.1, momentum=0.9, nesterov=True))
  state = (variables["params"], variables["batch_stats"], tx.init(variables["params"]))

  @functools.partial(jax.jit, donate_argnums=(0,))
  def step(state, batch):
    params, stats, opt = state

    def loss_fn(p):
      logits, upd = model.apply({"params": p, "batch_stats": stats}, batch[0], train=True,
                                mutable=["batch_stats"])
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch[1]).mean()
      return loss, upd["batch_stats"]

    (loss, stats), g = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt = tx.update(g, opt, params)
    return (optax.apply_updates(params, updates), stats, opt), loss

  t0 = time.perf_counter()
  sec, all_s, _ = time_steps(step, state, [(x, y)], steps, repeats)
  return {"ms_per_step": 1e3 * sec, "examples_per_s": batch / sec,
          "repeats_ms": [1e3 * s for s in all_s], "wall_s": time.perf_counter() - t0}


def flaxnets_step(model_name: str, dtype_name: str, batch: int, steps: int, repeats: int):
  """The library's train step, compiled by its Strategy, on batches already on the device."""
  import jax
  from flaxnets.data import pipeline
  from flaxnets.models import registry
  from flaxnets.training import optim, parallel
  from flaxnets.training import steps as steps_lib
  from flaxnets.training.state import create_state
  x, y = random_data(batch * 4)
  stats = pipeline.input_stats({"inputs": x, "labels": y}, "image")
  strategy = parallel.Strategy("single")
  model = registry.build_model(model_name, num_classes=NUM_CLASSES, dtype=dtype_name)
  tx, schedule = optim.make_optimizer(optimizer_config(), 1000, 1)
  state = create_state(model, tx, jax.random.PRNGKey(0), IMAGE_SHAPE, "image")
  step = strategy.compile_train(steps_lib.make_train_step(
      num_classes=NUM_CLASSES, stats=stats, schedule=schedule, crop_padding=4, flip=True))
  # On the device ahead of time (put_batch hands a single CPU device numpy, as the loop
  # wants, which would time a copy in each step here)
  batches = [jax.device_put({"inputs": x[i * batch:(i + 1) * batch],
                             "labels": y[i * batch:(i + 1) * batch]}, strategy.data_sharding)
             for i in range(4)]
  t0 = time.perf_counter()
  sec, all_s, _ = time_steps(step, strategy.put_state(state), batches, steps, repeats)
  return {"ms_per_step": 1e3 * sec, "examples_per_s": batch / sec,
          "repeats_ms": [1e3 * s for s in all_s], "wall_s": time.perf_counter() - t0}


def flaxnets_loop(model_name: str, dtype_name: str, batch: int, epochs: int, steps_per_epoch: int):
  """flaxnets.train on in-memory arrays; examples/s of every epoch after the first."""
  import flaxnets
  c = flaxnets.get_config()
  c.dataset.name = "arrays"
  c.dataset.val_fraction = 0.0
  c.model.name = model_name
  c.model.dtype = dtype_name
  c.batch_size = batch
  c.num_epochs = epochs
  c.log_every_steps = 10 ** 9  # the host syncs at epoch ends only
  c.progress = False
  c.tensorboard = False
  c.parallel.strategy = "single"
  c.optimizer = optimizer_config()
  c.augment.crop_padding = 4
  c.augment.flip = True
  x, y = random_data(batch * steps_per_epoch)
  t0 = time.perf_counter()
  result = flaxnets.train(c, data={"train": (x, y)})
  rates = [h["examples_per_sec"] for h in result.history if h["split"] == "train"]
  steady = rates[1:] or rates
  eps = statistics.median(steady)
  return {"examples_per_s": eps, "ms_per_step": 1e3 * batch / eps, "epoch_examples_per_s": rates,
          "epochs": epochs, "steps_per_epoch": steps_per_epoch, "wall_s": time.perf_counter() - t0}


# ----------------------------------------------------------------------------- torch


def torch_resnet(model_name: str):
  """The flaxnets CIFAR ResNet (3x3 stem, no maxpool, basic blocks, 1x1+BN projections)."""
  import torch.nn as tnn
  stage_sizes, width = {"resnet18": ((2, 2, 2, 2), 64), "resnet20": ((3, 3, 3), 16)}[model_name]

  class Block(tnn.Module):
    def __init__(self, cin, cout, stride):
      super().__init__()
      self.c1 = tnn.Conv2d(cin, cout, 3, stride, 1, bias=False)
      self.b1 = tnn.BatchNorm2d(cout)
      self.c2 = tnn.Conv2d(cout, cout, 3, 1, 1, bias=False)
      self.b2 = tnn.BatchNorm2d(cout)
      self.proj = None
      if stride != 1 or cin != cout:
        self.proj = tnn.Sequential(tnn.Conv2d(cin, cout, 1, stride, bias=False), tnn.BatchNorm2d(cout))

    def forward(self, x):
      y = self.b2(self.c2(tnn.functional.relu(self.b1(self.c1(x)))))
      return tnn.functional.relu(y + (x if self.proj is None else self.proj(x)))

  layers = [tnn.Conv2d(3, width, 3, 1, 1, bias=False), tnn.BatchNorm2d(width), tnn.ReLU()]
  cin = width
  for i, n in enumerate(stage_sizes):
    for j in range(n):
      cout = width * 2 ** i
      layers.append(Block(cin, cout, 2 if i > 0 and j == 0 else 1))
      cin = cout
  layers += [tnn.AdaptiveAvgPool2d(1), tnn.Flatten(), tnn.Linear(cin, NUM_CLASSES)]
  return tnn.Sequential(*layers)


def torch_steps(model_name: str, dtype_name: str, batch: int, steps: int, repeats: int,
                compile_: bool, device: str):
  import torch
  torch.manual_seed(0)
  model = torch_resnet(model_name).to(device).to(memory_format=torch.channels_last)
  opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
  x = torch.randn(batch, 3, 32, 32, device=device).to(memory_format=torch.channels_last)
  y = torch.randint(0, NUM_CLASSES, (batch,), device=device)
  amp = dtype_name == "bfloat16"
  fwd = torch.compile(model) if compile_ else model
  sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

  def step():
    opt.zero_grad(set_to_none=True)
    with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=amp):
      loss = torch.nn.functional.cross_entropy(fwd(x), y)
    loss.backward()
    opt.step()

  t0 = time.perf_counter()
  for _ in range(3):
    step()
  sync()
  warm = time.perf_counter() - t0
  per_step = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    for _ in range(steps):
      step()
    sync()
    per_step.append((time.perf_counter() - t0) / steps)
  sec = statistics.median(per_step)
  return {"ms_per_step": 1e3 * sec, "examples_per_s": batch / sec,
          "repeats_ms": [1e3 * s for s in per_step], "warmup_s": warm}


# ----------------------------------------------------------------------------- main


def main(argv=None) -> int:
  args = parse_args(argv)
  import jax
  backend = jax.default_backend()
  tiny = args.tiny
  model_name = args.model or ("resnet20" if tiny else "resnet18")
  batch = args.batch or (64 if tiny else 512)
  steps = args.steps or (4 if tiny else 50)
  repeats = args.repeats or (2 if tiny else 5)
  loop_epochs = args.loop_epochs or (2 if tiny else 4)
  loop_steps = args.loop_steps or (4 if tiny else 100)
  dtypes = args.dtypes or (["float32"] if backend == "cpu" else ["float32", "bfloat16"])
  have_torch = not args.no_torch and __import__("importlib.util").util.find_spec("torch") is not None
  if not args.no_torch and not have_torch:
    print("torch is not installed: the PyTorch rows are skipped (pip install '.[bench]')")
  compile_ = args.torch_compile == "yes" or (args.torch_compile == "auto" and backend != "cpu")
  device = "cpu" if backend == "cpu" else "cuda"
  out = {"benchmark": "cnn_speed", "model": model_name, "batch": batch, "backend": backend,
         "device_kind": jax.devices()[0].device_kind, "device_count": jax.device_count(),
         "jax": jax.__version__, "steps": steps, "repeats": repeats, "loop_epochs": loop_epochs,
         "loop_steps_per_epoch": loop_steps, "host": platform.processor() or platform.machine(),
         "cpu_count": os.cpu_count(), "loadavg_start": [round(v, 1) for v in os.getloadavg()],
         "date": time.strftime("%Y-%m-%d %H:%M"),
         "command": "python experiments/benchmarks/cnn_speed.py " + " ".join(
             sys.argv[1:] if argv is None else argv), "rows": {}}
  if have_torch:
    import torch
    out["torch"] = torch.__version__
  path = pathlib.Path(args.out) if args.out else \
      RESULTS / f"cnn_speed_{backend}{'_tiny' if tiny else ''}.json"
  for dtype_name in dtypes:
    import jax.numpy as jnp
    dtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[dtype_name]
    rows = {}
    print(f"{model_name} batch {batch} {dtype_name} on {backend}", flush=True)
    rows["plain flax"] = plain_flax(model_name, dtype, batch, steps, repeats)
    print(f"  plain flax      {rows['plain flax']['ms_per_step']:.2f} ms/step", flush=True)
    rows["flaxnets step"] = flaxnets_step(model_name, dtype_name, batch, steps, repeats)
    print(f"  flaxnets step   {rows['flaxnets step']['ms_per_step']:.2f} ms/step", flush=True)
    rows["flaxnets.train"] = flaxnets_loop(model_name, dtype_name, batch, loop_epochs, loop_steps)
    print(f"  flaxnets.train  {rows['flaxnets.train']['ms_per_step']:.2f} ms/step", flush=True)
    # The bare step again after the loop: a drifting machine shows up as a change here.
    rows["flaxnets step (again)"] = flaxnets_step(model_name, dtype_name, batch, steps, repeats)
    if have_torch:
      rows["torch eager"] = torch_steps(model_name, dtype_name, batch, steps, repeats, False, device)
      print(f"  torch eager     {rows['torch eager']['ms_per_step']:.2f} ms/step", flush=True)
      if compile_ and (args.torch_compile_dtypes is None or dtype_name in args.torch_compile_dtypes):
        rows["torch.compile"] = torch_steps(model_name, dtype_name, batch, steps, repeats, True, device)
    bare = statistics.mean([rows["flaxnets step"]["examples_per_s"],
                            rows["flaxnets step (again)"]["examples_per_s"]])
    summary = {"loop_over_bare_step": rows["flaxnets.train"]["examples_per_s"] / bare}
    torch_best = max((r["examples_per_s"] for k, r in rows.items() if k.startswith("torch")),
                     default=None)
    if torch_best:
      summary["loop_over_best_torch"] = rows["flaxnets.train"]["examples_per_s"] / torch_best
      summary["bare_step_over_best_torch"] = bare / torch_best
    out["rows"][dtype_name] = {"rows": rows, "summary": summary,
                               "reference_ms": REFERENCE_MS[dtype_name] if model_name == "resnet18"
                               and batch == 512 else {}}
    # Written after each dtype: a run stopped by a time limit keeps what it measured.
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**out, "partial": True}, indent=2))
  out["loadavg_end"] = [round(v, 1) for v in os.getloadavg()]
  out["notes"] = (
      "CPU run on a shared, loaded 2-core machine (load average recorded): these figures only "
      "show that the script works and how the loop compares with the bare step on CPU; the "
      "targets (loop >= 95% of the bare step, >= 1.5x torch in bf16) are GPU targets."
      if backend == "cpu" else "Accelerator run. torch bf16 = torch.autocast(bfloat16), channels_last.")

  print(f"\n{model_name}, batch {batch}, {backend} ({out['device_kind']}); "
        f"load average {out['loadavg_start']} -> {out['loadavg_end']}")
  hdr = f"{'dtype':<9} {'variant':<30} {'ms/step':>9} {'examples/s':>11} {'vs flaxnets step':>17}"
  print(hdr)
  print("-" * len(hdr))
  for dtype_name, block in out["rows"].items():
    bare = block["rows"]["flaxnets step"]["examples_per_s"]
    for name, r in block["rows"].items():
      print(f"{dtype_name:<9} {name:<30} {r['ms_per_step']:>9.2f} {r['examples_per_s']:>11.0f} "
            f"{r['examples_per_s'] / bare:>16.2f}x")
    for name, ms in block["reference_ms"].items():
      print(f"{dtype_name:<9} {name:<30} {ms:>9.2f} {batch / ms * 1e3:>11.0f}")
    s = block["summary"]
    print(f"{dtype_name:<9} flaxnets.train / bare step = {s['loop_over_bare_step']:.3f}"
          + (f"; flaxnets.train / best torch = {s['loop_over_best_torch']:.2f}x"
             if "loop_over_best_torch" in s else ""))
  path.write_text(json.dumps(out, indent=2))
  print(f"wrote {path}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
