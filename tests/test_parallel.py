"""Data parallelism on 8 host CPU devices: pmap and mesh train like one device.

One train step serves every strategy, so N steps under pmap, under jit over a mesh
and on one device with the same global batch must give the same params, metrics
and batch-norm statistics (to float32 reduction-order noise). Plain SGD is used in
the step tests because Adam would hide a gradient that is off by a constant factor
(such as a sum over devices instead of a mean).
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import flaxnets
from flaxnets.config import ConfigError
from flaxnets.models import registry
from flaxnets.training import loop, parallel, steps
from flaxnets.training.state import create_state

GLOBAL_BATCH = 32  # 4 rows per device on 8 devices
ATOL = 1e-5


def _batches(num: int, seed: int = 0, shape=(8, 8, 3)) -> list[dict[str, np.ndarray]]:
  rng = np.random.default_rng(seed)
  return [{"inputs": rng.normal(size=(GLOBAL_BATCH,) + shape).astype(np.float32),
           "labels": rng.integers(0, 10, GLOBAL_BATCH).astype(np.int32)} for _ in range(num)]


def _model(name: str, strategy: parallel.Strategy, sync_bn: bool = True, **kwargs):
  """The registered model, with batch norm bound to the pmap axis where it has one."""
  if "bn_axis_name" in registry.model_fields(name):
    kwargs["bn_axis_name"] = strategy.axis_name if sync_bn else None
  return registry.build_model(name, num_classes=10, **kwargs)


_STATES: dict = {}


def _initial_state(name: str, **kwargs):
  """Host initial state per model, built once: initialisation compiles slowly on CPU."""
  kwargs.pop("dropout", None)  # no parameters of its own
  key = (name, tuple(sorted(kwargs.items())))
  if key not in _STATES:
    model = registry.build_model(name, num_classes=10, **kwargs)
    tx = optax.sgd(0.1, momentum=0.9)
    _STATES[key] = jax.device_get(create_state(model, tx, jax.random.PRNGKey(0), (8, 8, 3),
                                               "image"))
  return _STATES[key]


_SINGLE: dict = {}


def _train(strategy_name: str, name: str, num_steps: int, seed: int, sync_bn: bool = True,
           crop_padding: int = 0, flip: bool = False, accum: int = 1, **kwargs):
  """`num_steps` train steps on _batches(num_steps, seed), each in `accum` micro-batches;
  (host state, [host metrics])."""
  if strategy_name == "single":  # the reference of several tests: computed once
    key = (name, num_steps, seed, crop_padding, flip, accum, tuple(sorted(kwargs.items())))
    if key not in _SINGLE:
      _SINGLE[key] = _train_uncached("single", name, num_steps, seed, sync_bn, crop_padding,
                                     flip, accum, **kwargs)
    return _SINGLE[key]
  return _train_uncached(strategy_name, name, num_steps, seed, sync_bn, crop_padding, flip,
                         accum, **kwargs)


def _train_uncached(strategy_name: str, name: str, num_steps: int, seed: int, sync_bn: bool,
                    crop_padding: int, flip: bool, accum: int, **kwargs):
  strategy = parallel.Strategy(strategy_name)
  model = _model(name, strategy, sync_bn, **kwargs)
  state = _initial_state(name, **kwargs).replace(apply_fn=model.apply)
  step = strategy.compile_train(steps.make_train_step(
      num_classes=10, stats={}, schedule=optax.constant_schedule(0.1),
      crop_padding=crop_padding, flip=flip, axis_name=strategy.axis_name,
      grad_accum_steps=accum, order_micro_batches=strategy_name != "mesh"))
  state = strategy.put_state(state)
  history = []
  for batch in _batches(num_steps, seed):
    state, metrics = step(state, strategy.put_batch(batch))
    history.append(strategy.unreplicate(metrics))
  return strategy.get_state(state), history


def _assert_trees_close(a, b, atol=ATOL, what="params"):
  flat_a = jax.tree_util.tree_leaves_with_path(a)
  flat_b = jax.tree.leaves(b)
  assert len(flat_a) == len(flat_b), f"{what}: different structures"
  for (path, x), y in zip(flat_a, flat_b):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=atol, rtol=0,
                               err_msg=f"{what}{jax.tree_util.keystr(path)}")


def _assert_metrics_close(h1, h2):
  for m1, m2 in zip(h1, h2):
    assert float(m1["count"]) == float(m2["count"]) == GLOBAL_BATCH  # global, not per device
    for k in ("loss_sum", "correct", "grad_norm", "learning_rate"):
      np.testing.assert_allclose(float(m1[k]), float(m2[k]), rtol=1e-5, atol=1e-5, err_msg=k)


def test_eight_devices():
  assert jax.device_count() == 8, "conftest should force 8 host CPU devices"


@pytest.mark.parametrize("strategy", ["pmap", "mesh"])
def test_steps_match_one_device_without_batch_norm(strategy):
  want_state, want_history = _train("single", "simple_cnn", 3, 0, features=(8, 16), hidden=32)
  got_state, got_history = _train(strategy, "simple_cnn", 3, 0, features=(8, 16), hidden=32)
  _assert_trees_close(got_state.params, want_state.params)
  _assert_trees_close(got_state.opt_state, want_state.opt_state, what="opt_state")
  assert int(got_state.step) == 3
  _assert_metrics_close(got_history, want_history)
  # The steps must have moved the params, or equality would prove nothing.
  moved = max(float(np.abs(a - b).max()) for a, b in zip(
      jax.tree.leaves(got_state.params),
      jax.tree.leaves(_initial_state("simple_cnn", features=(8, 16), hidden=32).params)))
  assert moved > 1e-3


@pytest.mark.parametrize("strategy", ["pmap", "mesh"])
def test_batch_norm_statistics_are_global(strategy):
  kwargs = dict(stage_features=(8, 16), convs_per_stage=1)
  want_state, want_history = _train("single", "vgg", 2, 1, **kwargs)
  got_state, got_history = _train(strategy, "vgg", 2, 1, **kwargs)
  _assert_trees_close(got_state.batch_stats, want_state.batch_stats, what="batch_stats")
  _assert_trees_close(got_state.params, want_state.params)
  _assert_metrics_close(got_history, want_history)


def test_masked_batch_norm_under_pmap_is_global():
  """conv1d's batch norm skips padded steps. Under pmap Flax averaged each device's own
  masked mean, which is not the global one when devices hold different numbers of real
  steps: pmap trained another model than one device (a mesh matched)."""
  from helpers import quiet_config
  rng = np.random.default_rng(0)
  x = rng.normal(size=(128, 32, 1)).astype(np.float32)
  lengths = rng.integers(2, 33, size=128).astype(np.int32)
  x[np.arange(32)[None, :] >= lengths[:, None]] = 0.0
  y = (x[:, :2, 0].mean(1) > 0).astype(np.int32)
  results = {}
  for strategy in ("single", "pmap"):
    config = quiet_config(num_epochs=1, batch_size=64, **{
        "dataset.name": "arrays", "dataset.val_fraction": 0.0, "model.name": "conv1d",
        "model.features": (4,), "model.num_pools": 1, "optimizer.schedule": "constant",
        "parallel.strategy": strategy})
    results[strategy] = flaxnets.train(config, data={"train": (x, y, lengths)})
  assert results["pmap"].history[0]["loss"] == pytest.approx(
      results["single"].history[0]["loss"], abs=1e-5)
  _assert_trees_close(results["pmap"].state.batch_stats, results["single"].state.batch_stats,
                      what="batch_stats")
  _assert_trees_close(results["pmap"].state.params, results["single"].state.params)


def test_unsynchronised_batch_norm_differs():
  """Control for the test above: per-device statistics are detectably different."""
  kwargs = dict(stage_features=(8, 16), convs_per_stage=1)
  want_state, _ = _train("single", "vgg", 2, 1, **kwargs)
  got_state, _ = _train("pmap", "vgg", 2, 1, sync_bn=False, **kwargs)
  diff = max(float(np.abs(a - b).max()) for a, b in zip(
      jax.tree.leaves(got_state.batch_stats), jax.tree.leaves(want_state.batch_stats)))
  assert diff > 100 * ATOL


def test_mesh_matches_one_device_with_dropout_and_augmentation():
  """Mesh draws the global batch's random numbers, sharded: the same as one device."""
  kwargs = dict(features=(8, 16), hidden=32, dropout=0.5)
  want_state, want_history = _train("single", "simple_cnn", 3, 2, crop_padding=2, flip=True,
                                    **kwargs)
  got_state, got_history = _train("mesh", "simple_cnn", 3, 2, crop_padding=2, flip=True,
                                  **kwargs)
  _assert_trees_close(got_state.params, want_state.params)
  _assert_metrics_close(got_history, want_history)
  # Control: the randomness did change the result (else the equality proves nothing).
  plain_state, _ = _train("single", "simple_cnn", 3, 2, features=(8, 16), hidden=32)
  diff = max(float(np.abs(a - b).max()) for a, b in zip(
      jax.tree.leaves(got_state.params), jax.tree.leaves(plain_state.params)))
  assert diff > 1e-3


class NoiseProbe(nn.Module):
  """Stores the dropout-stream numbers each device drew (as a 'batch_stats' variable)."""
  num_classes: int = 10

  @nn.compact
  def __call__(self, x, seq_lengths=None, *, train: bool = False):
    drawn = self.variable("batch_stats", "drawn", jnp.zeros, (x.shape[0],))
    if train:
      drawn.value = jax.random.uniform(self.make_rng("dropout"), (x.shape[0],))
    w = self.param("w", nn.initializers.zeros, (x.shape[-1], self.num_classes))
    return x.mean((1, 2)) @ w


def _probe_draws(strategy_name: str, batch) -> np.ndarray:
  """The numbers drawn from the dropout stream in one step: [devices, rows per device]."""
  strategy = parallel.Strategy(strategy_name)
  model = NoiseProbe()
  state = create_state(model, optax.sgd(0.1), jax.random.PRNGKey(3), (8, 8, 3), "image")
  step = strategy.compile_train(steps.make_train_step(
      num_classes=10, stats={}, schedule=optax.constant_schedule(0.1),
      axis_name=strategy.axis_name))
  state, _ = step(strategy.put_state(state), strategy.put_batch(batch))
  if strategy.name == "pmap":  # per-device states: [devices, rows per device]
    return np.asarray(state.batch_stats["drawn"])
  return np.asarray(state.batch_stats["drawn"]).reshape(8, -1)


@pytest.mark.parametrize("strategy", ["pmap", "mesh"])
def test_random_streams_differ_between_devices_and_reproduce(strategy):
  batch = _batches(1, seed=4)[0]
  draws = _probe_draws(strategy, batch)
  assert draws.shape == (8, GLOBAL_BATCH // 8)
  assert len({row.tobytes() for row in draws}) == 8, f"devices share a stream:\n{draws}"
  np.testing.assert_array_equal(draws, _probe_draws(strategy, batch))
  if strategy == "mesh":  # the global draw is the one-device draw, sharded
    np.testing.assert_array_equal(draws.reshape(-1), _probe_draws("single", batch).reshape(-1))


@pytest.mark.parametrize("strategy", ["single", "pmap", "mesh"])
def test_running_sums_add_each_steps_metrics(strategy):
  """The loop's step adds the epoch's metric sums inside the compiled step: its state and
  per-step metrics are the plain step's, and its sums are theirs added up."""
  want_state, want_history = _train("single", "simple_cnn", 3, 0, features=(8, 16), hidden=32)
  s = parallel.Strategy(strategy)
  model = _model("simple_cnn", s, features=(8, 16), hidden=32)
  state = _initial_state("simple_cnn", features=(8, 16), hidden=32).replace(apply_fn=model.apply)
  step = s.compile_train(steps.with_running_sums(steps.make_train_step(
      num_classes=10, stats={}, schedule=optax.constant_schedule(0.1),
      axis_name=s.axis_name)), running_sums=True)
  state, sums, history = s.put_state(state), s.put_state(steps.zero_sums()), []
  for batch in _batches(3, 0):
    state, metrics, sums = step(state, s.put_batch(batch), sums)
    history.append(s.unreplicate(metrics))
  _assert_trees_close(s.get_state(state).params, want_state.params)
  _assert_metrics_close(history, want_history)
  sums = s.unreplicate(sums)
  assert set(sums) == set(steps.TRAIN_METRICS)
  for k in steps.TRAIN_METRICS:
    assert np.asarray(sums[k]).dtype == np.float32
    np.testing.assert_allclose(float(sums[k]), sum(float(m[k]) for m in history), rtol=1e-6,
                               err_msg=k)
  assert float(sums["count"]) == 3 * GLOBAL_BATCH


@pytest.mark.parametrize("strategy", ["single", "pmap", "mesh"])
def test_eval_counts_every_example_once(strategy):
  """37 examples, eval batches of 16 over 8 devices: the padded tail counts zero times."""
  rng = np.random.default_rng(5)
  split = {"inputs": rng.normal(size=(37, 8, 8, 3)).astype(np.float32),
           "labels": rng.integers(0, 10, 37).astype(np.int32)}
  s = parallel.Strategy(strategy)
  state = _initial_state("simple_cnn", features=(8, 16), hidden=32)
  eval_step = s.compile_eval(steps.make_eval_step(num_classes=10, stats={},
                                                  axis_name=s.axis_name))
  got = loop.run_eval(eval_step, s.put_state(state), split, 16, s, None, 10)
  logits = np.asarray(state.apply_fn({"params": state.params}, split["inputs"]))
  want_loss = float(optax.softmax_cross_entropy_with_integer_labels(
      logits, split["labels"]).mean())
  assert got["count"] == 37
  np.testing.assert_allclose(got["loss"], want_loss, rtol=1e-5)
  assert got["accuracy"] == pytest.approx(float((logits.argmax(-1) == split["labels"]).mean()))
  cm = np.asarray(got["confusion_matrix"])
  assert cm.sum() == 37
  np.testing.assert_array_equal(cm.sum(1), np.bincount(split["labels"], minlength=10))


# ---- errors -------------------------------------------------------------------------------


# ---- gradient accumulation (config.grad_accum_steps) ------------------------------------------
@pytest.mark.parametrize("strategy,accum", [("single", 4), ("pmap", 2), ("mesh", 2)])
def test_micro_batches_sum_to_the_whole_batchs_gradient(strategy, accum):
  """Without batch norm or dropout, k micro-batches of B/k make the update of one batch of
  B: the same params, optimizer state and metric sums (to float32 reduction noise)."""
  kwargs = dict(features=(8, 16), hidden=32)
  want_state, want_history = _train("single", "simple_cnn", 3, 0, **kwargs)
  got_state, got_history = _train(strategy, "simple_cnn", 3, 0, accum=accum, **kwargs)
  _assert_trees_close(got_state.params, want_state.params)
  _assert_trees_close(got_state.opt_state, want_state.opt_state, what="opt_state")
  _assert_metrics_close(got_history, want_history)
  assert int(got_state.step) == 3  # one optimizer step per batch, not per micro-batch


def _gradient_and_metrics(strategy_name, model, shape, kind, batch, accum, label_smoothing):
  """One plain-SGD step at learning rate 1: (params before - after, i.e. the gradient; the
  step's metrics), as host values."""
  strategy = parallel.Strategy(strategy_name)
  state = create_state(model, optax.sgd(1.0), jax.random.PRNGKey(0), shape, kind)
  step = strategy.compile_train(steps.make_train_step(
      num_classes=model.vocab_size if kind == "tokens" else 10, stats={},
      schedule=optax.constant_schedule(1.0), label_smoothing=label_smoothing,
      axis_name=strategy.axis_name, grad_accum_steps=accum,
      order_micro_batches=strategy_name != "mesh"))
  new, metrics = step(strategy.put_state(state), strategy.put_batch(batch))
  grads = jax.tree.map(np.subtract, jax.device_get(state.params),
                       strategy.get_state(new).params)
  return grads, strategy.unreplicate(metrics)


def test_micro_batches_of_unequal_weight_make_the_mean_over_the_whole_batch():
  """Micro-batches holding different numbers of real targets (padding rows; a language
  model's [B, T] targets past seq_lengths) still make the mean over the whole batch, not
  a mean of micro-batch means; with label smoothing, on one device, pmap and a mesh."""
  rng = np.random.default_rng(0)
  images = {"inputs": rng.normal(size=(GLOBAL_BATCH, 8, 8, 3)).astype(np.float32),
            "labels": rng.integers(0, 10, GLOBAL_BATCH).astype(np.int32),
            "mask": rng.random(GLOBAL_BATCH) < 0.6}
  text = {"inputs": rng.integers(1, 50, (GLOBAL_BATCH, 12)).astype(np.int32),
          "labels": rng.integers(1, 50, (GLOBAL_BATCH, 12)).astype(np.int32),
          "seq_lengths": rng.integers(1, 13, GLOBAL_BATCH).astype(np.int32)}
  cases = [(registry.build_model("simple_cnn", num_classes=10, features=(8, 16), hidden=32),
            (8, 8, 3), "image", images),
           (registry.build_model("char_lm", vocab_size=50, embed_dim=16, hidden_size=32,
                                 num_layers=1), (12,), "tokens", text)]
  for model, shape, kind, batch in cases:
    want, want_metrics = _gradient_and_metrics("single", model, shape, kind, batch, 1, 0.1)
    for strategy, accum in [("single", 4), ("pmap", 2), ("mesh", 2)]:
      got, metrics = _gradient_and_metrics(strategy, model, shape, kind, batch, accum, 0.1)
      _assert_trees_close(got, want, what=f"{kind} {strategy} k={accum} gradient")
      for k in ("loss_sum", "correct", "count", "grad_norm"):
        np.testing.assert_allclose(float(metrics[k]), float(want_metrics[k]), rtol=1e-5,
                                   err_msg=f"{kind} {strategy} k={accum} {k}")


class DrawRecorder(nn.Module):
  """Keeps the last 32 numbers drawn from the dropout stream, oldest first (a 'batch_stats'
  variable shifted by each call), so that a step in micro-batches leaves all their draws."""

  @nn.compact
  def __call__(self, x, seq_lengths=None, *, train: bool = False):
    drawn = self.variable("batch_stats", "drawn", jnp.zeros, (GLOBAL_BATCH,))
    if train:
      new = jax.random.uniform(self.make_rng("dropout"), (x.shape[0],))
      drawn.value = jnp.concatenate([drawn.value[x.shape[0]:], new])
    w = self.param("w", nn.initializers.zeros, (x.shape[-1], 10))
    return x.mean((1, 2)) @ w


def test_each_micro_batch_draws_its_own_dropout_masks():
  """A batch of identical micro-batches: reusing one key would give each the same masks."""
  model = DrawRecorder()
  state = create_state(model, optax.sgd(0.1), jax.random.PRNGKey(3), (8, 8, 3), "image")
  batch = {"inputs": np.ones((GLOBAL_BATCH, 8, 8, 3), np.float32),
           "labels": np.zeros(GLOBAL_BATCH, np.int32)}
  step = jax.jit(steps.make_train_step(num_classes=10, stats={},
                                       schedule=optax.constant_schedule(0.1),
                                       grad_accum_steps=4))
  new, _ = step(state, batch)
  draws = np.asarray(new.batch_stats["drawn"]).reshape(4, GLOBAL_BATCH // 4)
  assert len({row.tobytes() for row in draws}) == 4, f"micro-batches share masks:\n{draws}"


def test_micro_batches_on_a_mesh_equal_one_device_with_dropout_and_batch_norm():
  """Each micro-batch draws its own dropout and normalises by its own statistics, the same
  on a mesh of 8 as on one device; and that does differ from the unsplit batch."""
  kwargs = dict(features=(8, 16), hidden=32, dropout=0.5)
  want_state, want_history = _train("single", "simple_cnn", 3, 2, accum=2, flip=True, **kwargs)
  got_state, got_history = _train("mesh", "simple_cnn", 3, 2, accum=2, flip=True, **kwargs)
  _assert_trees_close(got_state.params, want_state.params)
  _assert_metrics_close(got_history, want_history)
  whole_state, _ = _train("single", "simple_cnn", 3, 2, flip=True, **kwargs)
  diff = max(float(np.abs(a - b).max()) for a, b in zip(
      jax.tree.leaves(got_state.params), jax.tree.leaves(whole_state.params)))
  assert diff > 1e-3  # other dropout masks: the equality above is not the unsplit step's
  bn = dict(stage_features=(8, 16), convs_per_stage=1)
  want_state, _ = _train("single", "vgg", 2, 1, accum=2, **bn)
  for strategy in ("mesh", "pmap"):
    got_state, _ = _train(strategy, "vgg", 2, 1, accum=2, **bn)
    _assert_trees_close(got_state.batch_stats, want_state.batch_stats, what="batch_stats")
    _assert_trees_close(got_state.params, want_state.params)
  whole_state, _ = _train("single", "vgg", 2, 1, **bn)
  diff = max(float(np.abs(a - b).max()) for a, b in zip(
      jax.tree.leaves(want_state.batch_stats), jax.tree.leaves(whole_state.batch_stats)))
  assert diff > 100 * ATOL  # statistics of half batches, updated twice a step


@pytest.mark.parametrize("name,kind,shape,fields", [
    ("text_cnn", "tokens", (64,), {"vocab_size": 100}),  # convolutions: unrolled on CPU
    ("rnn", "series", (64, 16), {"cell": "lstm"}),       # a loop over micro-batches
])
def test_micro_batches_hold_a_fraction_of_the_activations(name, kind, shape, fields):
  """The point of accumulating: the compiled step's temporary memory falls with k. (On CPU
  a convolutional model's micro-batches are unrolled, and save memory only if each waits
  for the gradients before it: XLA overlaps them otherwise.)"""
  model = registry.build_model(name, num_classes=10, **fields)
  state = create_state(model, optax.sgd(0.1), jax.random.PRNGKey(0), shape, kind)
  dtype = np.int32 if kind == "tokens" else np.float32
  batch = {"inputs": np.ones((256,) + shape, dtype), "labels": np.zeros(256, np.int32)}

  def temp_bytes(accum, order=True):
    step = jax.jit(steps.make_train_step(num_classes=10, stats={},
                                         schedule=optax.constant_schedule(0.1),
                                         grad_accum_steps=accum, order_micro_batches=order))
    return step.lower(state, batch).compile().memory_analysis().temp_size_in_bytes

  whole, halves, quarters = temp_bytes(1), temp_bytes(2), temp_bytes(4)
  assert halves < 0.6 * whole and quarters < 0.35 * whole, (whole, halves, quarters)
  if name == "text_cnn":  # the control: unordered, the micro-batches' activations coexist
    assert temp_bytes(4, order=False) > 2 * quarters


def test_micro_batches_that_do_not_split_evenly_are_a_clear_error():
  config = flaxnets.get_config()
  config.batch_size, config.grad_accum_steps = 30, 4
  with pytest.raises(ConfigError, match=r"config.batch_size=30: expected a multiple of "
                                        r"config.grad_accum_steps=4, .* e.g. 28 or 32$"):
    flaxnets.train(config)
  config.batch_size = 2
  with pytest.raises(ConfigError, match=r"config.batch_size=2: .* e.g. 4$"):
    flaxnets.train(config)
  config.batch_size, config.grad_accum_steps = 32, 8
  config.parallel.strategy = "mesh"
  with pytest.raises(ValueError, match=r"config.batch_size=32 does not divide evenly over "
                                       r"config.grad_accum_steps=8 micro-batches on each of 8 "
                                       r"devices \(strategy 'mesh'\); expected a multiple of "
                                       r"64, e.g. 64"):
    flaxnets.train(config)
  with pytest.raises(ValueError, match=r"grad_accum_steps=0: expected an integer >= 1"):
    steps.make_train_step(num_classes=10, stats={}, schedule=optax.constant_schedule(0.1),
                          grad_accum_steps=0)


def test_unknown_strategy_is_a_clear_error():
  with pytest.raises(ValueError, match=r"strategy='ddp'.*'auto', 'single', 'pmap', 'mesh'"):
    parallel.Strategy("ddp")
  config = flaxnets.get_config()
  config.parallel.strategy = "ddp"
  with pytest.raises(ConfigError, match="parallel.strategy='ddp'"):
    flaxnets.train(config)


def test_batch_that_does_not_divide_over_devices_is_a_clear_error():
  with pytest.raises(ValueError, match=r"batch_size=30 does not divide evenly over 8 devices"
                                       r".*multiple of 8, e.g. 24 or 32"):
    parallel.Strategy("mesh").check_batch(30)
  parallel.Strategy("single").check_batch(30)  # one device takes any batch
  config = flaxnets.get_config()
  config.batch_size = 36
  config.parallel.strategy = "pmap"
  with pytest.raises(ValueError, match="batch_size=36 does not divide evenly over 8 devices"):
    flaxnets.train(config)


def test_auto_resolves_by_device_count():
  assert parallel.choose("auto") == "mesh"
  assert parallel.choose("auto", num_devices=1) == "single"
  assert parallel.Strategy("auto", jax.devices()[:1]).name == "single"
  assert parallel.Strategy("pmap").num_devices == 8
  assert parallel.Strategy("single").num_devices == 1


# ---- end to end through flaxnets.train -------------------------------------------------------


def _digits_config(strategy: str, num_epochs: int):
  config = flaxnets.get_config()
  config.update_from_flattened_dict({
      "num_epochs": num_epochs, "batch_size": 64, "eval_batch_size": 128, "progress": False,
      "log_every_steps": 1000, "parallel.strategy": strategy,
      "optimizer.schedule": "constant"})  # num_epochs 2 then 4 = one 4-epoch trajectory
  config.model.features = (8, 16)
  config.model.hidden = 32
  return config


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """Two epochs of digits under each strategy, each leaving a checkpoint to resume."""
  out = {}
  for strategy in ("single", "pmap", "mesh"):
    workdir = str(tmp_path_factory.mktemp(strategy))
    out[strategy] = (workdir, flaxnets.train(_digits_config(strategy, 2), workdir))
  return out


@pytest.mark.parametrize("strategy", ["pmap", "mesh"])
def test_train_end_to_end_matches_one_device(runs, strategy):
  want, got = runs["single"][1], runs[strategy][1]
  assert got.test_metrics["count"] == want.test_metrics["count"] == 360
  _assert_trees_close(got.state.params, want.state.params)
  for key in ("loss", "accuracy"):
    assert got.test_metrics[key] == pytest.approx(want.test_metrics[key], abs=1e-5)
    for h_got, h_want in zip(got.history, want.history):
      assert h_got[key] == pytest.approx(h_want[key], abs=1e-5)


@pytest.fixture(scope="module")
def uninterrupted():
  return flaxnets.train(_digits_config("single", 4))


@pytest.mark.parametrize("first,then", [("pmap", "single"), ("single", "pmap"),
                                        ("mesh", "single")])
def test_resume_under_another_strategy(runs, uninterrupted, first, then):
  """Epochs 1-2 on `first`, 3-4 on `then` (8 devices <-> 1) = four epochs without a break.

  'single' is jit over a one-device mesh: the mesh code path on one device.
  """
  workdir, _ = runs[first]
  resumed = flaxnets.train(_digits_config(then, 4), workdir)
  assert int(resumed.state.step) == int(uninterrupted.state.step) == 4 * (1258 // 64)
  _assert_trees_close(resumed.state.params, uninterrupted.state.params)
  _assert_trees_close(resumed.state.opt_state, uninterrupted.state.opt_state, what="opt_state")
  assert resumed.test_metrics["accuracy"] == pytest.approx(
      uninterrupted.test_metrics["accuracy"], abs=1e-6)


def test_every_model_with_batch_norm_takes_the_pmap_axis():
  """Under pmap a batch-norm model without `bn_axis_name` would keep per-device statistics."""
  from flaxnets.training.state import dummy_inputs
  shapes = {"image": (16, 16, 3), "series": (20, 2), "tokens": (12,)}
  with_bn = []
  for name, cls in sorted(registry.MODELS.items()):
    model = registry.build_model(name)
    for kind in getattr(cls, "input_kinds", shapes):
      x, lengths = dummy_inputs(shapes[kind], kind)
      try:  # shapes only: no compilation
        variables = jax.eval_shape(lambda k: model.init({"params": k, "dropout": k}, x,
                                                        lengths, train=False),
                                   jax.random.PRNGKey(0))
      except (ValueError, TypeError):
        continue  # not this input kind
      if "batch_stats" in variables:
        with_bn.append(name)
        assert "bn_axis_name" in registry.model_fields(name), name
      break
  assert "vgg" in with_bn and "resnet20" in with_bn
