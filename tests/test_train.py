"""End-to-end training through flaxnets.train on the built-in real data."""
import json

import numpy as np
import pytest

import flaxnets
from flaxnets.data import sources


def _quiet(config):
  config.progress = False
  return config


def test_default_job_learns_digits_and_writes_logs(tmp_path):
  config = _quiet(flaxnets.get_config())
  config.num_epochs = 3
  result = flaxnets.train(config, workdir=str(tmp_path))
  assert result.test_metrics["accuracy"] > 0.93
  assert result.test_metrics["count"] == 360  # every test example counted exactly once
  assert result.val_metrics["count"] == 179
  train_losses = [h["loss"] for h in result.history if h["split"] == "train"]
  assert train_losses[-1] < train_losses[0]

  rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  epochs = [r for r in rows if r["split"] in ("train", "val")]
  assert [(r["split"], r["epoch"]) for r in epochs] == [
      ("train", 1), ("val", 1), ("train", 2), ("val", 2), ("train", 3), ("val", 3)]
  for r in epochs:
    assert {"split", "epoch", "step", "loss", "accuracy", "wall_time"} <= set(r)
  assert all("examples_per_sec" in r for r in epochs if r["split"] == "train")

  results = json.loads((tmp_path / "results.json").read_text())
  assert results["test"]["accuracy"] == pytest.approx(result.test_metrics["accuracy"])
  assert results["config"]["model"]["name"] == "simple_cnn"
  assert {"train_time_s", "devices", "flaxnets_version", "val"} <= set(results)
  assert len(results["test"]["confusion_matrix"]) == 10


def test_same_config_same_numbers():
  config = _quiet(flaxnets.get_config())
  config.num_epochs = 1
  config.parallel.strategy = "single"
  a = flaxnets.train(config)
  b = flaxnets.train(config)
  for x, y in zip(np_leaves(a.state.params), np_leaves(b.state.params)):
    np.testing.assert_array_equal(x, y)


def np_leaves(tree):
  import jax
  return [np.asarray(x) for x in jax.tree.leaves(tree)]


def test_rnn_reads_digits_row_by_row():
  config = _quiet(flaxnets.get_config())
  config.model = flaxnets.get_config().model
  config.model.name = "rnn"
  config.model.cell = "gru"
  config.model.hidden_size = 32
  config.num_epochs = 4
  config.optimizer.learning_rate = 1e-2
  result = flaxnets.train(config)
  assert result.dataset.input_kind == "series"
  assert result.dataset.input_shape == (8, 8)
  assert result.test_metrics["accuracy"] > 0.8


def test_train_on_numpy_arrays_and_evaluate():
  rng = np.random.RandomState(0)
  x = rng.randn(200, 6).astype(np.float32)
  y = (x[:, 0] + x[:, 1] > 0).astype(np.int32)
  config = _quiet(flaxnets.get_config())
  config.dataset.name = "arrays"
  config.model.name = "rnn"
  config.model.hidden_size = 8
  config.num_epochs = 5
  config.batch_size = 16
  result = flaxnets.train(config, data={"train": (x[:160], y[:160]), "test": (x[160:], y[160:]),
                                        "label_names": ["neg", "pos"]})
  assert result.val_metrics["count"] == 16  # carved 10% of train
  metrics = flaxnets.evaluate(result, "test")
  assert metrics["count"] == 40
  assert metrics["accuracy"] == pytest.approx(result.test_metrics["accuracy"])
  with pytest.raises(ValueError, match=r"split='holdout': expected one of"):
    flaxnets.evaluate(result, "holdout")


def test_mismatched_arrays_raise():
  config = _quiet(flaxnets.get_config())
  config.dataset.name = "arrays"
  with pytest.raises(ValueError, match=r"data\['train'\]: 10 inputs but 9 labels"):
    flaxnets.train(config, data={"train": (np.zeros((10, 8, 8, 1)), np.zeros(9, np.int32))})


def test_digits_split_is_fixed_and_stratified():
  a, b = sources.digits(), sources.digits()
  np.testing.assert_array_equal(a.test["labels"], b.test["labels"])
  assert len(a.train["labels"]) + len(a.val["labels"]) + len(a.test["labels"]) == 1797
  counts = np.bincount(a.test["labels"], minlength=10)
  assert counts.min() >= 35 and counts.max() <= 37


def test_mnist1d_is_generated_locally():
  d = sources.mnist1d()
  assert d.train["inputs"].shape[1:] == (40, 1)
  assert len(d.train["labels"]) + len(d.val["labels"]) == 4000
  assert len(d.test["labels"]) == 1000
