"""SimpleCNN on MNIST through TFDS (`tfds:mnist`, read with tfds.data_source).

Needs a prepared copy: flaxnets.data.tfds_source.prepare_tfds('mnist') once (downloads
MNIST; TFDS needs TensorFlow to prepare image sets). Reading it needs no TensorFlow.
Validation is a seeded, stratified 10% of train (6,000 images); test is the 10,000.

Run:      flaxnets train --config experiments/configs/mnist.py
Seeds:    python experiments/run.py experiments/configs/mnist.py --seeds 0 1 2
Runtime:  not measured here (this machine has no prepared TFDS MNIST and no network);
          tests/test_tfds_train.py trains this config end to end on TFDS mock data.
Result:   not measured here. SimpleCNN reaches about 99% test accuracy on MNIST in a
          few epochs in comparable Flax examples.
"""
import flaxnets


def get_config():
  c = flaxnets.get_config()
  c.dataset.name = "tfds:mnist"
  c.dataset.train_split = "train"
  c.dataset.val_split = ""          # carve 10% of train, seeded and stratified
  c.dataset.test_split = "test"
  c.model.name = "simple_cnn"
  c.model.features = (32, 64)
  c.model.hidden = 128
  c.model.dropout = 0.25
  c.num_epochs = 5
  c.batch_size = 128
  c.optimizer.name = "adam"
  c.optimizer.learning_rate = 1e-3
  return c
