"""CIFAR-10 speedrun: the airbench94-style recipe (experiments/configs/cifar10_fast.py), timed.

Timed like airbench94: the training of each run, from fresh weights to the last
step, with compilation, data loading and evaluation outside the clock (they are
reported separately). What it runs:

  * data: ../shared/data/cifar10_jpg (or --data) read by
    flaxnets.data.files.read_image_folder, then kept on the accelerator as uint8;
  * the library's own train step (flaxnets.training.steps.make_train_step:
    standardisation, random crop + flip on the device, label smoothing), jitted
    with the batch gather: each step takes (state, permutation, step index) and
    gathers its batch from the device-resident images, so the host only dispatches
    (asynchronously; it never waits inside a run). --scan-epochs runs each epoch as
    one lax.scan over the steps instead (one dispatch per epoch); on XLA:CPU that
    was ~30x slower per step (convolutions inside a while loop lose their fast
    kernels), so it is not the default;
  * FastCNN's stem initialised as airbench's 2x2 patch-whitening filter (from 5,000
    training images, on the device, inside the timed region), its kernel then frozen
    (its bias trains), as airbench does;
  * Nesterov SGD, schedule, weight decay, label smoothing from the config;
  * test accuracy with test-time flip augmentation (mean of the logits of the image
    and its mirror), and without.

  python experiments/benchmarks/cifar10_speedrun.py --runs 5          # GPU
  python experiments/benchmarks/cifar10_speedrun.py --tiny            # CPU smoke test
  python experiments/benchmarks/cifar10_speedrun.py --set num_epochs=12 optimizer.learning_rate=2.0

Writes experiments/results/cifar10_speedrun_<backend>[_tiny].json (or --out).
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

REPO = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
RESULTS = REPO / "experiments" / "results"
CONFIG = REPO / "experiments" / "configs" / "cifar10_fast.py"
# A copy inside the repo (git-ignored, carried to a GPU machine) wins over ../shared.
DATA_CANDIDATES = (REPO / ".data" / "cifar10_jpg", REPO.parent / "shared" / "data" / "cifar10_jpg")


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--runs", type=int, default=None, help="timed runs (default 5, tiny 2)")
  p.add_argument("--data", default=None, help="folder with train.tar.gz and test.tar.gz")
  p.add_argument("--subset", type=int, default=None, help="train on the first N (shuffled) images")
  p.add_argument("--test-subset", type=int, default=None)
  p.add_argument("--dtype", default=None, help="model dtype (default: config's; float32 on CPU)")
  p.add_argument("--no-whiten", action="store_true", help="keep the stem's default init")
  p.add_argument("--scan-epochs", action="store_true",
                 help="one lax.scan per epoch instead of one dispatch per step")
  p.add_argument("--set", nargs="*", default=[], help="config overrides key=value")
  p.add_argument("--tiny", action="store_true",
                 help="smoke test: 2,000 train / 1,000 test images, 1 epoch, batch 250, 2 runs")
  p.add_argument("--out", default=None)
  return p.parse_args(argv)


def load_config(overrides):
  """cifar10_fast.py's config with `key=value` overrides (experiments/run.py's parsing)."""
  from experiments import run
  config = run.load_config(str(CONFIG))
  run.apply_overrides(config, overrides)
  return config


def find_data(arg):
  candidates = (pathlib.Path(arg),) if arg else DATA_CANDIDATES
  for path in candidates:
    if (path / "train.tar.gz").is_file() and (path / "test.tar.gz").is_file():
      return path
  raise FileNotFoundError(f"no CIFAR-10 JPEG copy (train.tar.gz, test.tar.gz) in "
                          f"{[str(c) for c in candidates]}; pass --data")


def whitening_kernel(x_std, kernel_shape, eps: float = 5e-4):
  """airbench's patch-whitening stem: [kh, kw, C, 2 * kh * kw * C] from standardised images."""
  import jax.numpy as jnp
  kh, kw, c, out = kernel_shape
  n, h, w, _ = x_std.shape
  patches = jnp.stack([x_std[:, i:h - kh + 1 + i, j:w - kw + 1 + j, :]
                       for i in range(kh) for j in range(kw)], axis=3)  # [N, H', W', kh*kw, C]
  flat = patches.reshape(-1, kh * kw * c).astype(jnp.float32)  # (kh, kw, C) order = flax's
  cov = flat.T @ flat / flat.shape[0]
  eigvals, eigvecs = jnp.linalg.eigh(cov)
  scaled = eigvecs / jnp.sqrt(eigvals + eps)[None, :]
  kernel = jnp.concatenate([scaled, -scaled], axis=1)
  if kernel.shape[1] != out:
    raise ValueError(f"stem has {out} filters; patch whitening gives 2 * {kh * kw * c}")
  return kernel.reshape(kh, kw, c, out)


def main(argv=None) -> int:
  args = parse_args(argv)
  import jax
  import jax.numpy as jnp
  import numpy as np
  import optax
  from flaxnets.data import files, pipeline
  from flaxnets.models import registry
  from flaxnets.training import optim, steps
  from flaxnets.training.state import create_state

  backend = jax.default_backend()
  config = load_config((["num_epochs=1", "batch_size=250", "eval_batch_size=500"]
                        if args.tiny else []) + args.set)
  runs = args.runs or (2 if args.tiny else 5)
  subset = args.subset or (2000 if args.tiny else None)
  test_subset = args.test_subset or (1000 if args.tiny else None)
  dtype_name = args.dtype or ("float32" if backend == "cpu" else config.model.dtype)
  config.model.dtype = dtype_name

  # ---- data (outside the clock) --------------------------------------------------------
  data_dir = find_data(args.data)
  t0 = time.perf_counter()
  x_train, y_train, names = files.read_image_folder(data_dir / "train.tar.gz", split="train")
  x_test, y_test, _ = files.read_image_folder(data_dir / "test.tar.gz", split="test",
                                              class_names=names)
  load_s = time.perf_counter() - t0
  rng = np.random.default_rng(0)
  if subset:
    idx = np.sort(rng.permutation(len(y_train))[:subset])
    x_train, y_train = x_train[idx], y_train[idx]
  if test_subset:
    idx = np.sort(rng.permutation(len(y_test))[:test_subset])
    x_test, y_test = x_test[idx], y_test[idx]
  stats = pipeline.input_stats({"inputs": x_train, "labels": y_train}, "image")
  device = jax.devices()[0]
  train_x, train_y = jax.device_put(x_train, device), jax.device_put(y_train, device)
  test_x, test_y = jax.device_put(x_test, device), jax.device_put(y_test, device)
  num_classes = len(names)
  batch = config.batch_size
  steps_per_epoch = len(y_train) // batch
  epochs = config.num_epochs
  print(f"CIFAR-10 from {data_dir}: {len(y_train)} train / {len(y_test)} test images, read in "
        f"{load_s:.1f} s; fast_cnn {dtype_name}, batch {batch}, {epochs} epochs x "
        f"{steps_per_epoch} steps, on {backend} ({device.device_kind})", flush=True)

  # ---- model, optimizer, step --------------------------------------------------------------
  model_kwargs = {k: v for k, v in config.model.items() if k != "name"}
  model = registry.build_model(config.model.name, num_classes=num_classes, **model_kwargs)
  base_tx, schedule = optim.make_optimizer(config.optimizer, steps_per_epoch, epochs)
  whiten = not args.no_whiten
  if whiten:  # the whitening kernel stays as initialised; everything else trains
    labels_fn = lambda params: jax.tree_util.tree_map_with_path(
        lambda path, _: "frozen" if jax.tree_util.keystr(path) == "['stem']['kernel']"
        else "train", params)
    tx = optax.multi_transform({"train": base_tx, "frozen": optax.set_to_zero()}, labels_fn)
  else:
    tx = base_tx
  train_step = steps.make_train_step(
      num_classes=num_classes, stats=stats, schedule=schedule,
      label_smoothing=config.optimizer.label_smoothing,
      crop_padding=config.augment.crop_padding, flip=config.augment.flip)

  def init(seed):
    state = create_state(model, tx, jax.random.PRNGKey(seed), x_train.shape[1:], "image")
    return state

  # Data arrays are passed as arguments (a closed-over array could become an HLO constant).
  def whiten_stem(state, train_x):
    x = steps.preprocess(train_x[:5000], stats)
    kernel = state.params["stem"]["kernel"]
    new = whitening_kernel(x, kernel.shape).astype(kernel.dtype)
    params = {**state.params, "stem": {**state.params["stem"], "kernel": new}}
    return state.replace(params=params)

  def permutation(key):  # [steps, batch] example indices of one epoch
    perm = jax.random.permutation(key, len(y_train))[:steps_per_epoch * batch]
    return perm.reshape(steps_per_epoch, batch)

  def one_step(state, perm, i, train_x, train_y):
    idx = jax.lax.dynamic_index_in_dim(perm, i, keepdims=False)
    state, m = train_step(state, {"inputs": train_x[idx], "labels": train_y[idx]})
    return state, jnp.stack([m["loss_sum"], m["correct"], m["count"]])

  def scanned_epoch(state, perm, train_x, train_y):
    def body(state, i):
      return one_step(state, perm, i, train_x, train_y)
    return jax.lax.scan(body, state, jnp.arange(steps_per_epoch))  # sums [steps, 3]

  eval_batch = config.eval_batch_size

  def evaluate(state, test_x, test_y):
    n = len(y_test) // eval_batch * eval_batch
    xs = test_x[:n].reshape(-1, eval_batch, *x_test.shape[1:])
    ys = test_y[:n].reshape(-1, eval_batch)
    variables = {"params": state.params, "batch_stats": state.batch_stats}

    def body(carry, xy):
      x, y = xy
      x = steps.preprocess(x, stats)
      logits = state.apply_fn(variables, x, None, train=False)
      logits_flip = state.apply_fn(variables, x[:, :, ::-1, :], None, train=False)
      plain = jnp.sum(jnp.argmax(logits, -1) == y)
      tta = jnp.sum(jnp.argmax(logits + logits_flip, -1) == y)
      return carry, (plain, tta)

    _, (plain, tta) = jax.lax.scan(body, None, (xs, ys))
    return plain.sum() / n, tta.sum() / n

  # ---- compile (outside the clock) ---------------------------------------------------------
  t0 = time.perf_counter()
  state0 = init(0)
  key0 = jax.random.key(0)
  perm_c = jax.jit(permutation).lower(key0).compile()
  perm0 = perm_c(key0)
  if args.scan_epochs:
    scan_c = jax.jit(scanned_epoch, donate_argnums=(0,)).lower(
        state0, perm0, train_x, train_y).compile()
  else:
    step_c = jax.jit(one_step, donate_argnums=(0,)).lower(
        state0, perm0, jnp.int32(0), train_x, train_y).compile()

  def run_epoch(state, key):
    """One epoch, dispatched without waiting; -> (state, per-step [loss_sum, correct, count])."""
    perm = perm_c(key)
    if args.scan_epochs:
      return scan_c(state, perm, train_x, train_y)
    sums = []
    for i in range(steps_per_epoch):
      state, m = step_c(state, perm, jnp.int32(i), train_x, train_y)
      sums.append(m)
    return state, sums

  whiten_c = jax.jit(whiten_stem).lower(state0, train_x).compile() if whiten else None
  eval_c = jax.jit(evaluate).lower(state0, test_x, test_y).compile()
  compile_s = time.perf_counter() - t0
  print(f"compiled in {compile_s:.1f} s", flush=True)
  # Warm-up: one untimed epoch (allocator, autotuning caches), as airbench's warm-up run.
  warm, _ = run_epoch(whiten_c(state0, train_x) if whiten else state0, key0)
  jax.block_until_ready(warm)
  del warm

  # ---- timed runs --------------------------------------------------------------------------
  path = pathlib.Path(args.out) if args.out else \
      RESULTS / f"cifar10_speedrun_{backend}{'_tiny' if args.tiny else ''}.json"
  results = []

  def record(final: bool) -> dict:
    """The JSON record of the runs so far (written after each run: a time limit keeps them)."""
    def mean_std(key):
      vals = [r[key] for r in results]
      return statistics.mean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)

    summary = {k: dict(zip(("mean", "std"), mean_std(k)))
               for k in ("train_s", "test_accuracy_tta", "test_accuracy")}
    summary["median_train_s"] = statistics.median(r["train_s"] for r in results)
    out = {"benchmark": "cifar10_speedrun", "backend": backend, "device_kind": device.device_kind,
           "jax": jax.__version__, "config_file": str(CONFIG.relative_to(REPO)),
           "overrides": args.set, "tiny": args.tiny, "dtype": dtype_name, "whitening_init": whiten,
           "loop": "lax.scan per epoch" if args.scan_epochs else "one jitted dispatch per step",
           "train_images": int(len(y_train)), "test_images": int(len(y_test)), "batch_size": batch,
           "epochs": epochs, "steps_per_epoch": steps_per_epoch, "data_dir": str(data_dir),
           "data_load_s": load_s, "compile_s": compile_s, "runs": results, "summary": summary,
           "config": config.to_dict(), "host": platform.processor() or platform.machine(),
           "cpu_count": os.cpu_count(), "loadavg": [round(v, 1) for v in os.getloadavg()],
           "date": time.strftime("%Y-%m-%d %H:%M"),
           "command": "python experiments/benchmarks/cifar10_speedrun.py " + " ".join(
               sys.argv[1:] if argv is None else argv),
           "notes": ("CPU smoke test on a shared, loaded 2-core machine: checks the script end to "
                     "end; times and accuracies say nothing about the GPU targets."
                     if backend == "cpu" else
                     "Train time excludes data loading, compilation, the warm-up epoch and "
                     "evaluation; airbench94 on the same JPEG copy, H200: 90.7% in 1.56 s.")}
    if not final:
      out["partial"] = True
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2))
    return out

  for run in range(runs):
    state = init(run + 1)
    jax.block_until_ready(state)
    keys = jax.random.split(jax.random.key(1000 + run), epochs)
    t0 = time.perf_counter()
    if whiten:
      state = whiten_c(state, train_x)
    for e in range(epochs):
      state, sums = run_epoch(state, keys[e])
    jax.block_until_ready(state)
    train_s = time.perf_counter() - t0
    acc, acc_tta = (float(v) for v in eval_c(state, test_x, test_y))
    loss_sum, correct, count = np.asarray(jnp.stack(sums) if isinstance(sums, list)
                                          else sums).sum(axis=0)
    last_loss, last_acc = float(loss_sum / count), float(correct / count)
    results.append({"run": run, "train_s": train_s, "test_accuracy_tta": acc_tta,
                    "test_accuracy": acc, "final_train_loss": last_loss,
                    "final_train_accuracy": last_acc})
    print(f"run {run}: {train_s:7.2f} s  test acc {acc_tta:.4f} (TTA)  {acc:.4f} (no TTA)  "
          f"last-epoch train loss {last_loss:.3f}", flush=True)
    record(final=False)

  print(f"\n{'runs':>4} {'train s (mean)':>15} {'median s':>9} {'test acc TTA':>13} "
        f"{'no TTA':>8} {'compile s':>10} {'data s':>7}")
  out = record(final=True)
  s = out["summary"]
  print(f"{runs:>4} {s['train_s']['mean']:>9.2f} ±{s['train_s']['std']:<4.2f} "
        f"{s['median_train_s']:>9.2f} {s['test_accuracy_tta']['mean']:>8.4f} ±{s['test_accuracy_tta']['std']:.3f}"
        f" {s['test_accuracy']['mean']:>8.4f} {compile_s:>10.1f} {load_s:>7.1f}")
  print(f"wrote {path}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
