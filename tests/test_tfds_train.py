"""The TFDS task configs train end to end on tfds.testing.mock_data, without TensorFlow.

mock_data replaces the prepared ArrayRecord files with random examples generated from
each dataset's feature spec (policy USE_CODE: no metadata files needed), so these tests
run offline and check the whole path: config -> tfds_source -> pipeline -> train ->
evaluate. Images come through as uint8 [N, H, W, C]; imdb_reviews has no 'image'
feature, so flaxnets.data.local.tfds_dataset falls back to its 'text' column.
"""
from __future__ import annotations

import importlib.util
import pathlib

import pytest

import flaxnets

tfds = pytest.importorskip("tensorflow_datasets")

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "experiments" / "configs"
NUM_EXAMPLES = 64  # per split; the stratified 10% validation carve needs a few per class


def _task_config(name: str):
  spec = importlib.util.spec_from_file_location(name, CONFIGS / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c = module.get_config()
  # Small and quick: one epoch of tiny batches on one device.
  c.num_epochs = 1
  c.batch_size = 8
  c.eval_batch_size = 16
  c.progress = False
  c.parallel.strategy = "single"
  c.dataset.val_fraction = 0.25
  return c


def _train_on_mock(config):
  with tfds.testing.mock_data(num_examples=NUM_EXAMPLES,
                              policy=tfds.testing.MockPolicy.USE_CODE):
    return flaxnets.train(config)


def test_runs_without_tensorflow():
  """The trainings below then prove that reading TFDS data needs no TensorFlow."""
  if importlib.util.find_spec("tensorflow") is not None:
    pytest.skip("TensorFlow is installed here, so the TensorFlow-free path is not isolated")


def test_mnist_config_on_mock_tfds():
  c = _task_config("mnist")
  assert c.dataset.name == "tfds:mnist"
  result = _train_on_mock(c)
  ds = result.dataset
  assert ds.input_kind == "image" and ds.input_shape == (28, 28, 1)
  assert ds.num_classes == 10 and len(ds.label_names) == 10
  n_val = len(ds.val["labels"])
  assert n_val > 0 and len(ds.train["labels"]) + n_val == NUM_EXAMPLES
  assert result.test_metrics["count"] == NUM_EXAMPLES
  assert result.val_metrics["count"] == n_val


def test_cifar10_config_on_mock_tfds():
  c = _task_config("cifar10_resnet")
  c.dataset.name = "tfds:cifar10"   # the config's documented TFDS variant
  c.dataset.path = ""
  # ResNet-20 itself compiles for about a minute on a loaded 2-core CPU; the data path
  # (uint8 RGB images, augmentation, normalisation, SGD recipe) is what is tested here.
  c.model = flaxnets.get_config().model
  c.model.name = "simple_cnn"
  c.model.features = (8,)
  c.model.hidden = 16
  result = _train_on_mock(c)
  ds = result.dataset
  assert ds.input_kind == "image" and ds.input_shape == (32, 32, 3)
  assert ds.num_classes == 10
  assert result.test_metrics["count"] == NUM_EXAMPLES
  assert set(result.stats) == {"mean", "std"} and result.stats["mean"].shape == (3,)


def test_imdb_reviews_config_on_mock_tfds():
  c = _task_config("imdb_lstm")
  c.dataset.name = "tfds:imdb_reviews"
  c.dataset.path = ""
  c.dataset.min_freq = 1            # mock texts are random letters: keep every token
  c.model.hidden_size = 8
  c.model.embed_dim = 8
  assert c.dataset.text_column == "text"
  result = _train_on_mock(c)
  ds = result.dataset
  assert ds.input_kind == "tokens" and ds.label_names == ["neg", "pos"]
  assert ds.vocab is not None and len(ds.vocab) > 2
  assert ds.train["inputs"].shape[1] <= c.dataset.max_len
  assert "seq_lengths" in ds.train and (ds.train["seq_lengths"] >= 1).all()
  assert result.test_metrics["count"] == NUM_EXAMPLES


def test_image_size_resizes_tfds_images_of_any_size():
  from flaxnets.data import sources
  c = flaxnets.get_config()
  c.dataset.name, c.dataset.image_size, c.dataset.test_split = "tfds:mnist", 8, ""
  with tfds.testing.mock_data(num_examples=16, policy=tfds.testing.MockPolicy.USE_CODE):
    ds = sources.load_dataset(c.dataset)  # it was ignored: 28x28
    assert ds.input_shape == (8, 8, 1)
    c.dataset.name = "tfds:tf_flowers"  # mock images of random sizes, as the real ones
    c.dataset.image_size = 0
    with pytest.raises(ValueError, match=r"example \d+ has image shape .* set "
                                         r"config\.dataset\.image_size"):
      sources.load_dataset(c.dataset)
    c.dataset.image_size = 12
    assert sources.load_dataset(c.dataset).input_shape == (12, 12, 3)
  c.dataset.name = "arrays"
  with pytest.raises(flaxnets.ConfigError, match=r"config\.dataset\.image_size=12: only "
                                                 r"image_folder and tfds:<name> datasets"):
    flaxnets.validate(c)
