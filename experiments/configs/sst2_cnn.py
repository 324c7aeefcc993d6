"""Kim (2014) CNN on SST-2 (sentence level, Kim's split), random embeddings.

Kernels 3, 4, 5 with 100 filters each, relu, max over time, dropout 0.5, dense.
Kim's CNN-rand reaches 82.7% on SST-2 when trained on the treebank's phrases as well;
on these 6,920 sentences alone quick baselines reach about 80% dev accuracy.

Run:      flaxnets train --config experiments/configs/sst2_cnn.py --config.seed=0
Seeds:    python experiments/run.py experiments/configs/sst2_cnn.py --seeds 0 1 2
Runtime:  44-52 s per seed (6 epochs, loading and compilation included) on a shared
          2-core CPU (1 device), 2026-11-27.
Result:   best-epoch dev accuracy 79.47 / 79.01 / 79.36 % (seeds 0 / 1 / 2), mean
          79.28 % (experiments/results/sst2_cnn.json); under the previous Grain shuffle
          79.13 / 79.82 / 80.05 %, mean 79.66 %. Quick plain-Flax Kim CNN baseline
          here: 79.8 %. Best epochs are 2-3: it fits the training set by epoch 4.
"""
import flaxnets


def get_config():
  c = flaxnets.get_config()
  c.dataset.name = "text_table"
  c.dataset.path = "../shared/data/sst2"   # relative to the repository root
  c.dataset.val_split = "dev"
  c.dataset.test_split = ""                # SST-2 has no labelled test table here
  c.model.name = "text_cnn"
  c.model.embed_dim = 300
  c.model.kernel_sizes = (3, 4, 5)
  c.model.features = 100
  c.model.pooling = "max"
  c.model.dropout = 0.5
  c.num_epochs = 6
  c.batch_size = 50
  c.optimizer.name = "adam"
  c.optimizer.learning_rate = 1e-3
  return c
