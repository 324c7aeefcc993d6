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
    and its mirror), and without; also airbench's level-2 TTA (flip, plus the flipped
    pair of the image shifted one pixel each way, reflect-padded), reported apart.

airbench94 pieces the config cannot express, each off by default (the recorded
results were measured without them) and all on with --airbench:
  --bias-lr-mult 64  BatchNorm biases train at 64x the learning rate, with weight decay
                     / 64 so that their decay per step equals the kernels';
  --lookahead        from epoch 3 on, after every 5th step the weights and BN statistics
                     move to an EMA of themselves (decay 0.95^5 * (step / total)^3; the
                     first such step only starts the EMA), and each epoch ends on the EMA;
  --dirac            each 3x3 conv's first `in` filters start as the identity;
  --torch-init       kernels start as PyTorch's default, U(+-1/sqrt(fan_in)) (flax's
                     lecun_normal has sqrt(3)x their spread; with BN after every conv
                     that sets the effective learning rate).
--muon instead runs airbench94_muon's recipe (the one behind the issue's 90.7% in 1.56 s):
Muon (optax.contrib.scale_by_muon, 3 Newton-Schulz steps, Nesterov momentum 0.6, lr
0.24, each filter bank rescaled to norm sqrt(out) before its step) for the 3x3 conv
kernels; Nesterov SGD (momentum 0.85) for the BN biases and the stem bias (lr 0.053)
and the head (lr 0.67), lrs per example of a summed loss as airbench states them,
weight decay 2e-6 per example; linear decay to 0 without warmup, the stem bias over
its first 3 epochs only; batch 2000, 8 epochs, logits / 256 from a head of unit std,
dirac and PyTorch init. No lookahead.
FastCNN's BN momentum 0.6 already matches airbench's (its BatchNorm passes PyTorch
momentum 1 - 0.6, so the old statistics keep weight 0.6, as flax's momentum 0.6 does).

Timing: train_s is the training alone; eval_s is the evaluation pass that computes all
three accuracies (6 forward passes per test image, the cost of airbench's level-2 TTA,
which airbench counts inside its time), reported apart.

  python experiments/benchmarks/cifar10_speedrun.py --runs 5          # GPU
  python experiments/benchmarks/cifar10_speedrun.py --tiny            # CPU smoke test
  python experiments/benchmarks/cifar10_speedrun.py --set num_epochs=12 optimizer.learning_rate=2.0
  python experiments/benchmarks/cifar10_speedrun.py --airbench --runs 5 --set num_epochs=8
  python experiments/benchmarks/cifar10_speedrun.py --muon --runs 5

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
  from common import positive_int  # this folder is on sys.path when run as a file
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--runs", type=positive_int, default=None, help="timed runs (default 5, tiny 2)")
  p.add_argument("--data", default=None, help="folder with train.tar.gz and test.tar.gz")
  p.add_argument("--subset", type=positive_int, default=None, help="train on the first N (shuffled) images")
  p.add_argument("--test-subset", type=positive_int, default=None)
  p.add_argument("--dtype", default=None, help="model dtype (default: config's; float32 on CPU)")
  p.add_argument("--no-whiten", action="store_true", help="keep the stem's default init")
  p.add_argument("--scan-epochs", action="store_true",
                 help="one lax.scan per epoch instead of one dispatch per step")
  p.add_argument("--set", nargs="*", default=[], help="config overrides key=value")
  p.add_argument("--bias-lr-mult", type=float, default=1.0,
                 help="BatchNorm biases: learning rate x this, weight decay / this (airbench: 64)")
  p.add_argument("--lookahead", action="store_true", help="airbench's lookahead EMA every 5 steps")
  p.add_argument("--dirac", action="store_true", help="3x3 convs: first `in` filters = identity")
  p.add_argument("--torch-init", action="store_true", help="kernels ~ U(+-1/sqrt(fan_in))")
  p.add_argument("--airbench", action="store_true", help="all four above (bias lr x64)")
  p.add_argument("--muon", action="store_true", help="airbench94_muon's recipe (see above)")
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


def _names(path) -> list[str]:
  return [getattr(k, "key", str(k)) for k in path]


def param_group(path, *, whiten: bool, bias_lr_mult: float) -> str:
  """The optimizer group of the param at `path`: "frozen" (the whitened stem kernel),
  "bn_bias" (BatchNorm biases, with --bias-lr-mult) or "train"."""
  names = _names(path)
  if whiten and names == ["stem", "kernel"]:
    return "frozen"
  if bias_lr_mult != 1.0 and names[0].startswith("BatchNorm") and names[-1] == "bias":
    return "bn_bias"
  return "train"


def muon_group(path) -> str:
  """airbench94_muon's optimizer groups: "frozen" stem kernel, "whiten_bias", "bn_bias",
  "head", "filters" (the 3x3 conv kernels, for Muon)."""
  names = _names(path)
  if names[0] == "stem":
    return "frozen" if names[-1] == "kernel" else "whiten_bias"
  if names[0] == "head":
    return "head"
  if names[0].startswith("BatchNorm"):
    return "bn_bias"
  return "filters"


def muon_optimizer(*, batch_size: int, steps_per_epoch: int, total_steps: int):
  """airbench94_muon's optimizers as one optax transformation over muon_group's labels.

  airbench sums its loss over the batch; flaxnets averages it, so each SGD group's lr
  here is airbench's times the batch size, and its coupled decay is airbench's
  weight_decay / lr per summed-loss unit (the decay per step stays 2e-6 * batch * lr
  factor). Muon's step does not depend on the gradient's scale.
  """
  import jax
  import jax.numpy as jnp
  import optax
  from optax import contrib

  wd = 2e-6 * batch_size
  decay = optax.linear_schedule(1.0, 0.0, total_steps)
  whiten_decay = optax.linear_schedule(1.0, 0.0, 3 * steps_per_epoch)

  def sgd(lr, factor):
    return optax.chain(optax.add_decayed_weights(wd / (lr * batch_size)),
                       optax.sgd(lambda c: lr * batch_size * factor(c), momentum=0.85,
                                 nesterov=True))

  def renormalise():
    """Adds p * (sqrt(out) / |p| - 1): the step starts from p rescaled to norm sqrt(out)."""
    def update(updates, state, params):
      def one(u, p):
        scale = jnp.sqrt(jnp.float32(p.shape[-1])) / jnp.linalg.norm(p.astype(jnp.float32))
        return (u + p * (scale - 1)).astype(u.dtype)
      return jax.tree.map(one, updates, params), state
    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)

  filters = optax.chain(
      contrib.scale_by_muon(  # a conv kernel [kh, kw, in, out] as a [kh*kw*in, out] matrix
          ns_steps=3, beta=0.6, nesterov=True,
          weight_dimension_numbers=lambda updates: jax.tree.map(
              lambda _: contrib.MuonDimensionNumbers(reduction_axis=(0, 1, 2), output_axis=3),
              updates)),
      optax.scale_by_learning_rate(lambda c: 0.24 * decay(c)),
      renormalise())
  groups = {"frozen": optax.set_to_zero(), "whiten_bias": sgd(0.053, whiten_decay),
            "bn_bias": sgd(0.053, decay), "head": sgd(0.67, decay), "filters": filters}
  return optax.multi_transform(
      groups, lambda params: jax.tree_util.tree_map_with_path(lambda p, _: muon_group(p), params))


def reinit_kernels(params, key, *, torch_init: bool, dirac: bool, unit_std_head: bool = False):
  """Kernels other than the stem's: PyTorch's default init (kaiming_uniform(a=sqrt(5)),
  bound 1/sqrt(fan_in)) and/or airbench's dirac init of 3x3 convs (dirac_(w[:in]): the
  first min(in, out) output filters pass their own input channel through);
  unit_std_head: the head's kernel divided by its std afterwards (airbench94_muon).
  -> new params.
  """
  import jax
  import jax.numpy as jnp
  import numpy as np
  leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
  keys = jax.random.split(key, len(leaves))
  out = []
  for (path, leaf), k in zip(leaves, keys):
    names = _names(path)
    if names[-1] == "kernel" and names[0] != "stem":
      if torch_init:
        bound = 1.0 / np.sqrt(int(np.prod(leaf.shape[:-1])))
        leaf = jax.random.uniform(k, leaf.shape, leaf.dtype, -bound, bound)
      if dirac and leaf.ndim == 4 and leaf.shape[:2] == (3, 3):
        cin, cout = leaf.shape[2], leaf.shape[3]
        n = min(cin, cout)
        eye = jnp.zeros((3, 3, cin, n), leaf.dtype).at[1, 1, jnp.arange(n), jnp.arange(n)].set(1)
        leaf = leaf.at[..., :n].set(eye)
      if unit_std_head and names[0] == "head":
        leaf = leaf / jnp.std(leaf)
    out.append(leaf)
  return jax.tree_util.tree_unflatten(treedef, out)


def lookahead_update(state, ema, *, steps_per_epoch: int, total_steps: int,
                     start_epochs: int = 3, every: int = 5, decay_base: float = 0.95,
                     decay_pow: float = 3.0):
  """airbench94's LookaheadState after the step that made state.step = k; -> (state, ema).

  * k > start and k % every == 0: ema <- lerp(ema, net, 1 - rho), net <- ema, with
    rho = decay_base^every * (k / total_steps)^decay_pow; the first such step only takes
    the snapshot (ema <- net), as airbench creates its state there;
  * at the end of an epoch, once the snapshot exists: net <- ema (airbench's decay 1).
  `net` is {"params", "batch_stats"}; `ema` has the same structure (any values before the
  snapshot). start = start_epochs * steps_per_epoch.
  """
  import jax
  import jax.numpy as jnp
  start = start_epochs * steps_per_epoch
  first = (start // every + 1) * every
  k = state.step
  blend_now = (k > start) & (k % every == 0)
  epoch_end = (k >= first) & (k % steps_per_epoch == 0)

  def blend(args):
    state, ema = args
    rho = decay_base ** every * (k.astype(jnp.float32) / total_steps) ** decay_pow
    decay = jnp.where(blend_now, jnp.where(k == first, 0.0, rho), 1.0)
    net = {"params": state.params, "batch_stats": state.batch_stats}
    ema = jax.tree.map(lambda e, x: (decay * e + (1 - decay) * x).astype(e.dtype), ema, net)
    return state.replace(params=ema["params"], batch_stats=ema["batch_stats"]), ema

  return jax.lax.cond(blend_now | epoch_end, blend, lambda a: a, (state, ema))


def tta_logits(net, x):
  """(plain, mirror, level 2) logits of images x [B, H, W, C] under `net` (x -> logits).

  mirror = mean of x and its left-right flip; level 2 (airbench's) = half the mirror
  pair, half the mean of the mirror pairs of x shifted one pixel up-left and one
  down-right (reflect padding).
  """
  import jax.numpy as jnp
  mirror = lambda v: 0.5 * (net(v) + net(v[:, :, ::-1, :]))
  h, w = x.shape[1:3]
  padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
  shifted = 0.5 * (mirror(padded[:, :h, :w]) + mirror(padded[:, 2:h + 2, 2:w + 2]))
  pair = mirror(x)
  return net(x), pair, 0.5 * pair + 0.5 * shifted


def main(argv=None) -> int:
  args = parse_args(argv)
  if args.airbench:
    args.bias_lr_mult = 64.0 if args.bias_lr_mult == 1.0 else args.bias_lr_mult
    args.lookahead = args.dirac = args.torch_init = True
  if args.bias_lr_mult <= 0:
    raise ValueError(f"--bias-lr-mult={args.bias_lr_mult}: expected > 0")
  if args.muon:
    if args.lookahead or args.bias_lr_mult != 1.0:
      raise ValueError("--muon is its own recipe: without --airbench, --lookahead, --bias-lr-mult")
    args.dirac = args.torch_init = True
  # airbench94_muon's batch, epochs and logit scale (1 / block3 width); --tiny and --set win.
  recipe = ["batch_size=2000", "num_epochs=8", "model.logit_scale=0.00390625"] if args.muon else []
  import jax
  import jax.numpy as jnp
  import numpy as np
  import optax
  from flaxnets.data import files, pipeline
  from flaxnets.models import registry
  from flaxnets.training import optim, steps
  from flaxnets.training.state import create_state

  backend = jax.default_backend()
  config = load_config(recipe + (["num_epochs=1", "batch_size=250", "eval_batch_size=500"]
                                 if args.tiny else []) + args.set)
  runs = args.runs or (2 if args.tiny else 5)
  subset = args.subset or (2000 if args.tiny else None)
  test_subset = args.test_subset or (1000 if args.tiny else None)
  dtype_name = args.dtype or ("float32" if backend == "cpu" else config.model.dtype)
  config.model.dtype = dtype_name

  # ---- data (outside the clock) --------------------------------------------------------
  try:
    data_dir = find_data(args.data)
  except FileNotFoundError as e:  # one line, exit status 2, as a bad flag gets
    print(f"cifar10_speedrun.py: {e}", file=sys.stderr)
    return 2
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
  mult = args.bias_lr_mult
  if args.muon:
    if not whiten:
      raise ValueError("--muon trains from the whitened stem: drop --no-whiten")
    tx = muon_optimizer(batch_size=batch, steps_per_epoch=steps_per_epoch,
                        total_steps=steps_per_epoch * epochs)
  else:
    groups = {"train": base_tx}
    if whiten:  # the whitening kernel stays as initialised
      groups["frozen"] = optax.set_to_zero()
    if mult != 1.0:  # airbench's BN-bias group: lr x mult, decay / mult (biases decay too)
      ocfg = config.optimizer
      if ocfg.name != "sgd" or ocfg.clip_norm > 0:
        raise ValueError(f"--bias-lr-mult needs optimizer.name='sgd' without clip_norm, got "
                         f"name={ocfg.name!r}, clip_norm={ocfg.clip_norm}")
      groups["bn_bias"] = optax.chain(
          optax.add_decayed_weights(ocfg.weight_decay / mult),
          optax.sgd(lambda count: mult * schedule(count), momentum=ocfg.momentum or None,
                    nesterov=ocfg.nesterov))
    tx = base_tx if len(groups) == 1 else optax.multi_transform(
        groups, lambda params: jax.tree_util.tree_map_with_path(
            lambda p, _: param_group(p, whiten=whiten, bias_lr_mult=mult), params))
  train_step = steps.make_train_step(
      num_classes=num_classes, stats=stats, schedule=schedule,
      label_smoothing=config.optimizer.label_smoothing,
      crop_padding=config.augment.crop_padding, flip=config.augment.flip)

  def init(seed):
    state = create_state(model, tx, jax.random.PRNGKey(seed), x_train.shape[1:], "image")
    if args.torch_init or args.dirac:
      params = reinit_kernels(state.params, jax.random.PRNGKey(10_000 + seed),
                              torch_init=args.torch_init, dirac=args.dirac,
                              unit_std_head=args.muon)
      state = state.replace(params=params, opt_state=tx.init(params))
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

  total_steps = steps_per_epoch * epochs

  # The loop carries the train state, or (state, ema) with --lookahead.
  def start(state):
    """The carry of a run that begins at `state` (the EMA starts as a copy of it)."""
    if not args.lookahead:
      return state
    return state, jax.tree.map(jnp.copy, {"params": state.params,
                                          "batch_stats": state.batch_stats})

  def finish(carry):
    """The state a run ends on (the last step ended an epoch: with --lookahead, on the EMA)."""
    return carry[0] if args.lookahead else carry

  def one_step(carry, perm, i, train_x, train_y):
    state, ema = carry if args.lookahead else (carry, None)
    idx = jax.lax.dynamic_index_in_dim(perm, i, keepdims=False)
    state, m = train_step(state, {"inputs": train_x[idx], "labels": train_y[idx]})
    if args.lookahead:
      carry = lookahead_update(state, ema, steps_per_epoch=steps_per_epoch,
                               total_steps=total_steps)
    else:
      carry = state
    return carry, jnp.stack([m["loss_sum"], m["correct"], m["count"]])

  def scanned_epoch(carry, perm, train_x, train_y):
    def body(carry, i):
      return one_step(carry, perm, i, train_x, train_y)
    return jax.lax.scan(body, carry, jnp.arange(steps_per_epoch))  # sums [steps, 3]

  eval_batch = config.eval_batch_size

  def evaluate(state, test_x, test_y):
    n = len(y_test) // eval_batch * eval_batch
    xs = test_x[:n].reshape(-1, eval_batch, *x_test.shape[1:])
    ys = test_y[:n].reshape(-1, eval_batch)
    variables = {"params": state.params, "batch_stats": state.batch_stats}

    def body(carry, xy):
      x, y = xy
      x = steps.preprocess(x, stats)
      logits, logits_mirror, logits_tta2 = tta_logits(
          lambda v: state.apply_fn(variables, v, None, train=False), x)
      count = lambda lg: jnp.sum(jnp.argmax(lg, -1) == y)
      return carry, (count(logits), count(logits_mirror), count(logits_tta2))

    _, (plain, tta, tta2) = jax.lax.scan(body, None, (xs, ys))
    return plain.sum() / n, tta.sum() / n, tta2.sum() / n

  # ---- compile (outside the clock) ---------------------------------------------------------
  t0 = time.perf_counter()
  state0 = init(0)
  key0 = jax.random.key(0)
  perm_c = jax.jit(permutation).lower(key0).compile()
  perm0 = perm_c(key0)
  start_c = jax.jit(start).lower(state0).compile()
  finish_c = jax.jit(finish, donate_argnums=(0,)).lower(start_c(state0)).compile()
  if args.scan_epochs:
    scan_c = jax.jit(scanned_epoch, donate_argnums=(0,)).lower(
        start_c(state0), perm0, train_x, train_y).compile()
  else:
    step_c = jax.jit(one_step, donate_argnums=(0,)).lower(
        start_c(state0), perm0, jnp.int32(0), train_x, train_y).compile()

  def run_epoch(carry, key):
    """One epoch, dispatched without waiting; -> (carry, per-step [loss_sum, correct, count])."""
    perm = perm_c(key)
    if args.scan_epochs:
      return scan_c(carry, perm, train_x, train_y)
    sums = []
    for i in range(steps_per_epoch):
      carry, m = step_c(carry, perm, jnp.int32(i), train_x, train_y)
      sums.append(m)
    return carry, sums

  whiten_c = jax.jit(whiten_stem).lower(state0, train_x).compile() if whiten else None
  eval_c = jax.jit(evaluate).lower(state0, test_x, test_y).compile()
  compile_s = time.perf_counter() - t0
  print(f"compiled in {compile_s:.1f} s", flush=True)
  # Warm-up: one untimed epoch (allocator, autotuning caches), as airbench's warm-up run.
  warm, _ = run_epoch(start_c(whiten_c(state0, train_x) if whiten else state0), key0)
  warm = finish_c(warm)
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
               for k in ("train_s", "test_accuracy_tta", "test_accuracy", "test_accuracy_tta2")}
    summary["median_train_s"] = statistics.median(r["train_s"] for r in results)
    summary["median_eval_s"] = statistics.median(r["eval_s"] for r in results)
    out = {"benchmark": "cifar10_speedrun", "backend": backend, "device_kind": device.device_kind,
           "jax": jax.__version__, "config_file": str(CONFIG.relative_to(REPO)),
           "overrides": args.set, "tiny": args.tiny, "dtype": dtype_name, "whitening_init": whiten,
           "bias_lr_mult": args.bias_lr_mult, "lookahead": args.lookahead, "dirac": args.dirac,
           "torch_init": args.torch_init, "muon": args.muon,
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
    carry = start_c(state)
    for e in range(epochs):
      carry, sums = run_epoch(carry, keys[e])
    state = finish_c(carry)
    jax.block_until_ready(state)
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    acc, acc_tta, acc_tta2 = (float(v) for v in eval_c(state, test_x, test_y))
    eval_s = time.perf_counter() - t0
    loss_sum, correct, count = np.asarray(jnp.stack(sums) if isinstance(sums, list)
                                          else sums).sum(axis=0)
    last_loss, last_acc = float(loss_sum / count), float(correct / count)
    results.append({"run": run, "train_s": train_s, "eval_s": eval_s, "test_accuracy_tta": acc_tta,
                    "test_accuracy": acc, "test_accuracy_tta2": acc_tta2,
                    "final_train_loss": last_loss,
                    "final_train_accuracy": last_acc})
    print(f"run {run}: {train_s:7.2f} s (+ {eval_s:.2f} s eval)  test acc {acc_tta:.4f} (TTA)  {acc:.4f} (no TTA)  "
          f"{acc_tta2:.4f} (TTA level 2)  "
          f"last-epoch train loss {last_loss:.3f}", flush=True)
    record(final=False)

  print(f"\n{'runs':>4} {'train s (mean)':>15} {'median s':>9} {'eval s':>7} {'test acc TTA':>13} "
        f"{'no TTA':>8} {'TTA 2':>8} {'compile s':>10} {'data s':>7}")
  out = record(final=True)
  s = out["summary"]
  print(f"{runs:>4} {s['train_s']['mean']:>9.2f} ±{s['train_s']['std']:<4.2f} "
        f"{s['median_train_s']:>9.2f} {s['median_eval_s']:>7.2f} "
        f"{s['test_accuracy_tta']['mean']:>8.4f} ±{s['test_accuracy_tta']['std']:.3f}"
        f" {s['test_accuracy']['mean']:>8.4f} {s['test_accuracy_tta2']['mean']:>8.4f}"
        f" {compile_s:>10.1f} {load_s:>7.1f}")
  print(f"wrote {path}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
