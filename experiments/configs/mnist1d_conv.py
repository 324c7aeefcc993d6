"""ConvNet1D on MNIST-1D; published CNN: 94% (Greydanus 2020).

Run:      flaxnets train --config experiments/configs/mnist1d_conv.py --config.seed=0
Seeds:    python experiments/run.py experiments/configs/mnist1d_conv.py --seeds 0 1 2
Runtime and result: experiments/results/RESULTS.md
"""
import flaxnets


def get_config():
  c = flaxnets.get_config()
  c.dataset.name = "mnist1d"
  c.model.name = "conv1d"
  c.num_epochs = 60
  c.batch_size = 100
  c.optimizer.learning_rate = 3e-3
  c.optimizer.warmup_epochs = 2.0
  return c
