"""LSTM (128 hidden, last state) on MNIST-1D; published (GRU): 91% (Greydanus 2020).

Run:      flaxnets train --config experiments/configs/mnist1d_lstm.py --config.seed=0
Seeds:    python experiments/run.py experiments/configs/mnist1d_lstm.py --seeds 0 1 2
Runtime and result: experiments/results/RESULTS.md
"""
import flaxnets


def get_config():
  c = flaxnets.get_config()
  c.dataset.name = "mnist1d"
  c.model.name = "rnn"
  c.model.cell = "lstm"
  c.model.hidden_size = 128
  c.model.pooling = "last"
  c.num_epochs = 30
  c.batch_size = 64
  c.optimizer.learning_rate = 3e-3
  return c
