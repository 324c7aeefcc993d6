"""CRNN on MNIST-1D: 1-D conv blocks, then a bidirectional GRU over time, mean-pooled.

Run:      flaxnets train --config experiments/configs/mnist1d_crnn.py --config.seed=0
Seeds:    python experiments/run.py experiments/configs/mnist1d_crnn.py --seeds 0 1 2
Runtime and result: experiments/results/RESULTS.md
"""
import flaxnets


def get_config():
  c = flaxnets.get_config()
  c.dataset.name = "mnist1d"
  c.model.name = "crnn"
  c.model.conv_features = (32, 64)
  c.model.hidden_size = 64
  c.model.bidirectional = True
  c.model.pooling = "mean"
  c.num_epochs = 30
  c.batch_size = 64
  c.optimizer.learning_rate = 3e-3
  return c
