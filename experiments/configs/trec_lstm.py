"""BiLSTM on TREC-6 question classification, random embeddings, max-pooled.

TREC ships only a training table here (5,452 questions): validation is a seeded,
stratified 10% of it (545 questions; the carve uses a fixed seed, independent of the
training seed).

Run:      flaxnets train --config experiments/configs/trec_lstm.py --config.seed=0
Seeds:    python experiments/run.py experiments/configs/trec_lstm.py --seeds 0 1 2
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
  c.model.name = "rnn"
  c.model.cell = "lstm"
  c.model.bidirectional = True
  c.model.hidden_size = 128
  c.model.embed_dim = 128
  c.model.pooling = "max"
  c.model.embed_dropout = 0.3
  c.model.dropout = 0.5
  c.num_epochs = 10
  c.batch_size = 32
  c.optimizer.name = "adamw"
  c.optimizer.learning_rate = 2e-3
  c.optimizer.weight_decay = 1e-4
  c.optimizer.clip_norm = 5.0
  return c
