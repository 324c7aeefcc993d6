"""Kim (2014) CNN on TREC-6 question classification, random embeddings.

TREC ships only a training table here (5,452 questions): validation is a seeded,
stratified 10% of it (545 questions; the carve uses a fixed seed, independent of the
training seed). Kim's CNN-rand: 91.2% on the official 500-question test set.

Run:      flaxnets train --config experiments/configs/trec_cnn.py --config.seed=0
Seeds:    python experiments/run.py experiments/configs/trec_cnn.py --seeds 0 1 2
Runtime:  TBD
Result:   TBD
"""
import flaxnets


def get_config():
  c = flaxnets.get_config()
  c.dataset.name = "text_table"
  c.dataset.path = "../shared/data/trec6"  # relative to the repository root
  c.dataset.val_split = ""                 # carve val_fraction of train
  c.dataset.val_fraction = 0.1
  c.dataset.test_split = ""
  c.model.name = "text_cnn"
  c.model.embed_dim = 300
  c.model.kernel_sizes = (3, 4, 5)
  c.model.features = 100
  c.model.pooling = "max"
  c.model.dropout = 0.5
  c.num_epochs = 10
  c.batch_size = 50
  c.optimizer.name = "adam"
  c.optimizer.learning_rate = 1e-3
  return c
