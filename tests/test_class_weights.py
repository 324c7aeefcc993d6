"""config.optimizer.class_weights (Keras's class_weight) and validation's macro F1."""
import json
import re

import jax
import numpy as np
import optax
import pytest
from sklearn.datasets import load_digits
from sklearn.metrics import f1_score
from sklearn.utils.class_weight import compute_class_weight

import flaxnets
from flaxnets.config import ConfigError
from flaxnets.models import registry
from flaxnets.training import parallel, steps
from flaxnets.training.state import create_state
from helpers import quiet_config

BATCH = 32  # 4 rows per device on 8 devices


def _digits(minority_share=0.05, seed=0):
  """The real digits, shuffled; classes 0-4 of the first 1,400 kept at `minority_share`
  (about 8 a class against 140 of each of 5-9) for training, the other 397 as test."""
  d = load_digits()
  rng = np.random.default_rng(seed)
  order = rng.permutation(len(d.target))
  x, y = d.images.astype(np.float32)[order][..., None], d.target[order]
  keep = (y[:1400] >= 5) | (rng.random(1400) < minority_share)
  return (x[:1400][keep], y[:1400][keep]), (x[1400:], y[1400:])


def _one_sgd_step(strategy_name, batch, class_weights, accum=1):
  """The gradient (params before - after one SGD step at rate 1) and the step's metrics."""
  model = registry.build_model("simple_cnn", num_classes=10, features=(8, 16), hidden=32)
  strategy = parallel.Strategy(strategy_name)
  state = create_state(model, optax.sgd(1.0), jax.random.PRNGKey(0), (8, 8, 1), "image")
  step = strategy.compile_train(steps.make_train_step(
      num_classes=10, stats={}, schedule=optax.constant_schedule(1.0),
      axis_name=strategy.axis_name, grad_accum_steps=accum,
      order_micro_batches=strategy_name != "mesh", class_weights=class_weights))
  new, metrics = step(strategy.put_state(state), strategy.put_batch(batch))
  grads = jax.tree.map(np.subtract, jax.device_get(state.params),
                       strategy.get_state(new).params)
  return state, grads, strategy.unreplicate(metrics)


def test_the_loss_is_each_examples_loss_times_its_class_weight_over_the_count():
  """Keras's reduction: sum(w[y] * loss) / examples (padding rows out), the gradient
  equal to that written out, on one device, in micro-batches, under pmap and a mesh."""
  rng = np.random.default_rng(0)
  (x, y), _ = _digits(minority_share=1.0)
  batch = {"inputs": x[:BATCH], "labels": y[:BATCH].astype(np.int32),
           "mask": rng.random(BATCH) < 0.7}
  w = np.linspace(0.2, 3.0, 10).astype(np.float32)
  state, want_grads, want = _one_sgd_step("single", batch, w)

  def loss(params):
    logits = state.apply_fn({"params": params}, batch["inputs"])
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["labels"])
    return (ce * w[batch["labels"]] * batch["mask"]).sum() / batch["mask"].sum(), ce

  (value, ce), grads = jax.value_and_grad(loss, has_aux=True)(state.params)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=2e-6), want_grads, grads)
  np.testing.assert_allclose(float(want["loss_sum"]) / float(want["count"]), float(value),
                             rtol=1e-5)
  assert float(want["count"]) == batch["mask"].sum()
  # accuracy stays a count of examples, not weighed
  logits = state.apply_fn({"params": state.params}, batch["inputs"])
  assert float(want["correct"]) == ((logits.argmax(-1) == batch["labels"]) * batch["mask"]).sum()
  # unweighted differs (the test can tell them apart)
  _, plain, _ = _one_sgd_step("single", batch, None)
  assert not np.allclose(plain["head"]["kernel"], grads["head"]["kernel"], atol=1e-4)
  for strategy, accum in [("single", 4), ("pmap", 2), ("mesh", 2)]:
    _, got, metrics = _one_sgd_step(strategy, batch, w, accum)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=2e-6,
                                                         err_msg=f"{strategy} k={accum}"),
                 got, want_grads)
    np.testing.assert_allclose(float(metrics["loss_sum"]), float(want["loss_sum"]), rtol=1e-5)


def test_balanced_weights_are_scikit_learns_and_lift_the_rare_classes():
  """On the real digits with classes 0-4 at ~5% of their examples: 'balanced' is
  compute_class_weight('balanced'), and it lifts those classes' test recall (0.12 -> 0.66
  when this was written) and the macro F1."""
  (x, y), test = _digits()
  runs = {}
  for setting in ("", "balanced"):
    config = quiet_config(num_epochs=3, **{"dataset.name": "arrays",
                                           "dataset.val_fraction": 0.0,
                                           "optimizer.class_weights": setting})
    runs[setting] = flaxnets.train(config, data={"train": (x, y), "test": test})
  np.testing.assert_allclose(
      steps.class_weight_vector("balanced", y, [str(i) for i in range(10)]),
      compute_class_weight("balanced", classes=np.arange(10), y=y), rtol=1e-6)
  recall = {}
  for setting, result in runs.items():
    cm = np.asarray(result.test_metrics["confusion_matrix"])
    recall[setting] = (np.diag(cm) / cm.sum(1))[:5].mean()
  assert recall["balanced"] > recall[""] + 0.3, recall
  assert runs["balanced"].test_metrics["macro_f1"] > runs[""].test_metrics["macro_f1"] + 0.15


def test_names_indices_and_a_list_weigh_alike_and_the_run_records_them(tmp_path):
  names = [str(i) for i in range(10)]
  labels = np.arange(10).repeat(3)
  want = np.ones(10, np.float32)
  want[[2, 7]] = [4.0, 0.5]
  # numpy as scikit-learn gives it: compute_class_weight's array, and a dict of it keyed
  # by np.unique's integers (which ml_collections does not copy as they are)
  for setting in ({"2": 4, "7": 0.5}, {2: 4.0, 7: 0.5}, tuple(want), want,
                  dict(zip(np.unique(labels), want))):
    config = quiet_config(**{"optimizer.class_weights": setting})
    setting = flaxnets.config.validate(flaxnets.config.resolved_copy(config)
                                       ).optimizer.class_weights
    np.testing.assert_array_equal(steps.class_weight_vector(setting, labels, names), want)
  config = quiet_config(num_epochs=1, **{"optimizer.class_weights": dict(
      zip(np.arange(10), want))})
  flaxnets.train(config, str(tmp_path))
  assert type(next(iter(config.optimizer.class_weights))) is np.int64  # the caller's, as it was
  results = json.loads((tmp_path / "results.json").read_text())
  assert results["class_weights"] == dict(zip(names, want.tolist()))


@pytest.mark.parametrize("setting, message", [
    ("inverse", "expected '' (off), 'balanced', a dict"),
    ({}, "expected '' (off), 'balanced', a dict"),
    ({0: 1.0, "3": 2.0}, "={0: 1.0, '3': 2.0}: expected '' (off), 'balanced', a dict "
                         "{class name or index: weight} or one weight per class; the keys "
                         "are all class names (str) or all class indices (int)"),
    ({"3": -1.0}, "weight -1.0: expected a finite number >= 0"),
    ((1.0, float("inf")), "weight inf: expected a finite number >= 0"),
    ((0.0, 0.0), "every weight is 0"),
    (2.0, "got float"),
])
def test_a_malformed_setting_is_refused_before_any_data_is_read(setting, message):
  config = quiet_config(**{"optimizer.class_weights": setting,
                           "dataset.name": "text_table", "dataset.path": "/nonexistent"})
  with pytest.raises(ConfigError, match=r"config\.optimizer\.class_weights.*" +
                     re.escape(message)):
    flaxnets.train(config)


@pytest.mark.parametrize("setting, message", [
    ({"ten": 2.0}, "'ten' is not a class of this dataset; expected names among ['0', '1'"),
    ({10: 2.0}, "class index 10 out of range; this dataset has 10 classes, indices 0..9"),
    ((1.0, 2.0), "2 weights; expected one for each of the dataset's 10 classes"),
    ({str(i): 0.0 for i in range(10)}, "every training example would weigh 0"),
])
def test_weights_that_do_not_fit_the_classes_are_refused_with_the_workdir_kept(
    tmp_path, setting, message):
  step = tmp_path / "checkpoints" / "7"
  step.mkdir(parents=True)
  with pytest.raises(ConfigError, match=r"config\.optimizer\.class_weights=.*" +
                     re.escape(message)):
    flaxnets.train(quiet_config(**{"optimizer.class_weights": setting}), str(tmp_path),
                   restart=True)
  assert step.is_dir()


def test_a_language_model_takes_neither_class_weights_nor_macro_f1(tmp_path):
  text = tmp_path / "corpus.txt"
  text.write_text("the quick brown fox jumps over the lazy dog. " * 40)
  base = {"dataset.name": "text_file", "dataset.path": str(text), "dataset.seq_len": 16,
          "dataset.val_fraction": 0.2, "model.name": "char_lm", "num_epochs": 1}
  with pytest.raises(ConfigError, match=r"class_weights='balanced': class weights weigh the "
                                        r"classes of a classification task.* lm task"):
    flaxnets.train(quiet_config(**base, **{"optimizer.class_weights": "balanced"}))
  with pytest.raises(ConfigError, match=r"config\.checkpoint\.best_metric='macro_f1': "
                                        r"expected 'loss' or 'accuracy' for language-model"):
    flaxnets.train(quiet_config(**base, **{"checkpoint.best_metric": "macro_f1"}))
  result = flaxnets.train(quiet_config(**base))  # and its validation reports no macro F1
  assert all("macro_f1" not in h for h in result.history)


def test_validation_macro_f1_is_scikit_learns_and_can_pick_the_best_checkpoint(tmp_path):
  (x, y), test = _digits(minority_share=0.3)
  rng = np.random.default_rng(1)
  val = rng.random(len(y)) < 0.25
  config = quiet_config(num_epochs=4, **{"dataset.name": "arrays",
                                         "checkpoint.best_metric": "macro_f1",
                                         "optimizer.learning_rate": 1e-3})
  result = flaxnets.train(config, str(tmp_path), data={
      "train": (x[~val], y[~val]), "val": (x[val], y[val]), "test": test})
  vals = [h for h in result.history if h["split"] == "val"]
  assert [h["epoch"] for h in vals] == [1, 2, 3, 4]
  logits = result.model.apply({"params": result.state.params},
                              (x[val] - result.stats["mean"]) / result.stats["std"])
  assert vals[-1]["macro_f1"] == pytest.approx(
      f1_score(y[val], np.asarray(logits).argmax(-1), average="macro"), abs=1e-9)
  assert result.val_metrics["macro_f1"] == vals[-1]["macro_f1"]
  best = max(vals, key=lambda h: h["macro_f1"])
  predictor = flaxnets.load(str(tmp_path), step="best")
  assert int(predictor.path.name) == best["step"]


def test_a_resume_compares_the_weights_as_one_setting(tmp_path, capsys):
  """The checkpoint's JSON keys an index dict by text: the same weights are no change, and
  other weights are one changed setting, applied from the resume."""
  def run(epochs, weights):
    config = quiet_config(num_epochs=epochs, **{"optimizer.class_weights": weights})
    return flaxnets.train(config, str(tmp_path))

  run(1, {2: 4.0, 7: 0.5})
  capsys.readouterr()
  run(2, {2: 4, 7: 0.5})
  assert ("changed settings, which apply from step 39 on:\n  num_epochs: 1 -> 2\n"
          "epoch   2:") in capsys.readouterr().out
  result = run(3, "balanced")
  out = capsys.readouterr().out
  assert ("resumed with changed settings, which apply from step 78 on:\n  "
          "num_epochs: 2 -> 3\n  optimizer.class_weights: [[2, 4.0], [7, 0.5]] -> "
          "'balanced'\n") in out
  assert result.history[-1]["epoch"] == 3


def test_index_and_name_keys_stay_apart_through_the_checkpoint(tmp_path, capsys):
  """Labels named '1' and '2' (star ratings): {1: 5.0} weighs index 1 (class '2') and
  {'1': 5.0} class '1'; switching between them at a resume is a changed setting, and the
  recorded config keeps the key's type."""
  (x, y), _ = _digits(minority_share=1.0)
  y = y % 2
  data = {"train": (x, y), "label_names": ["1", "2"]}

  def run(epochs, weights):
    config = quiet_config(num_epochs=epochs, **{"dataset.name": "arrays",
                                                "optimizer.class_weights": weights})
    return flaxnets.train(config, str(tmp_path), data=data)

  run(1, {1: 5.0})
  assert "class weights in the training loss (given): 1 1, 2 5" in capsys.readouterr().out
  assert json.loads((tmp_path / "results.json").read_text())["config"]["optimizer"][
      "class_weights"] == [[1, 5.0]]
  run(2, {"1": 5.0})
  out = capsys.readouterr().out
  assert "optimizer.class_weights: [[1, 5.0]] -> [['1', 5.0]]" in out
  assert "class weights in the training loss (given): 1 5, 2 1" in out


def test_names_with_dots_numpy_strings_and_jax_arrays_are_taken():
  """What scikit-learn and numpy hand over: np.unique's str_ keys, and names such as
  'U.S.' or 'n01440764.tench', which a ConfigDict key may not hold; a jax array."""
  import jax.numpy as jnp
  names = ["U.S.", "ham", "spam"]
  labels = np.array([0, 1, 2, 2])
  for setting, want in [({"U.S.": 2.0}, [2.0, 1.0, 1.0]),
                        (dict(zip(np.unique(np.array(["ham", "spam"])), [0.5, 3.0])),
                         [1.0, 0.5, 3.0]),
                        (jnp.array([1.0, 3.0, 0.25]), [1.0, 3.0, 0.25])]:
    config = quiet_config(**{"optimizer.class_weights": setting})
    held = flaxnets.config.validate(flaxnets.config.resolved_copy(config)
                                    ).optimizer.class_weights
    np.testing.assert_array_equal(steps.class_weight_vector(held, labels, names), want)


def test_the_config_train_returns_takes_another_setting(tmp_path):
  """result.config (the validated copy) can be changed and trained again, as get_config()'s:
  ml_collections fixes a copied field's type to its value's."""
  result = flaxnets.train(quiet_config(num_epochs=1, **{"optimizer.class_weights": {"3": 2.0}}))
  config = result.config
  config.optimizer.class_weights = "balanced"
  config.optimizer.class_weights = [1.0] * 10
  config.init.step = "latest"
  config.init.step = 7
  assert config.optimizer.class_weights == [1.0] * 10 and config.init.step == 7


def test_the_callers_config_is_left_linked_and_a_frozen_one_trains():
  """train() reads the setting without setting it: a FieldReference the caller holds stays
  the field's, and a FrozenConfigDict (which copies into another frozen one) trains."""
  import ml_collections
  shared = ml_collections.FieldReference({"3": 2.0}, field_type=object)
  config = quiet_config(num_epochs=0)  # refused after the copy: nothing trains
  config.optimizer.class_weights = shared
  with pytest.raises(ConfigError, match="num_epochs=0"):
    flaxnets.train(config)
  shared.set("balanced")
  assert config.optimizer.class_weights == "balanced"
  config = quiet_config(num_epochs=1, **{"optimizer.class_weights": (("3", 2.0),)})
  result = flaxnets.train(ml_collections.FrozenConfigDict(config))
  assert result.test_metrics["accuracy"] > 0.5


@pytest.mark.parametrize("setting, message", [
    (np.array(["1.5", "2"]), "dtype <U3; expected 1-D numbers"),
    (np.array([True, False]), "dtype bool; expected 1-D numbers"),
    (np.array([1 + 1j, 2]), "dtype complex128; expected 1-D numbers"),
    (np.ones((2, 2)), "an array of 2 dimension(s)"),
    ([(0, 5.0), (0, 1.0)], "class 0 is given more than one weight"),
])
def test_arrays_of_other_than_numbers_and_repeated_classes_are_refused(setting, message):
  with pytest.raises(ConfigError, match=re.escape(message)):
    flaxnets.train(quiet_config(**{"optimizer.class_weights": setting}))
