"""BiLSTM on TREC-6 question classification, random embeddings, max-pooled.

TREC ships only a training table here (5,452 questions): validation is a seeded,
stratified 10% of it (545 questions; the carve uses a fixed seed, independent of the
training seed).

Run:      flaxnets train --config experiments/configs/trec_lstm.py --config.seed=0
Seeds:    python experiments/run.py experiments/configs/trec_lstm.py --seeds 0 1 2
Runtime:  32-43 s per seed (10 epochs, loading and compilation included) on the
          2-core CPU (1 device), 2026-11-28, with the CPU's 4 time segments.
Result:   best-epoch validation accuracy 86.79 / 87.89 / 87.34 % (seeds 0 / 1 / 2),
          mean 87.34 % (experiments/results/trec_lstm.json), with the vocabulary built
          from the training part only and the carve's size by largest remainder (545
          val questions; 1 segment, seed 0: 86.61 %). With 546 val questions: 87.73 /
          87.18 / 87.73 %, mean 87.55 % (1 segment 87.00 %). Before 2026-11-28
          the vocabulary also held the words of the validation questions (a leak):
          88.64 / 87.18 / 87.91 %, mean 87.91 %; figures below are from then too.
          Quick plain-Flax BiLSTM
          baseline here: 84.2 %. Tried earlier (3 seeds each, under the previous Grain
          shuffle, whose runs of this config gave 88.16 %): embed dropout 0.3, min_freq
          1, no label smoothing 86.08 %; min_freq 2 87.12 %; + last-state pooling
          86.08 %; + GRU 86.94 %; + embed 300 / hidden 256 87.12 %; + batch 16
          87.18 %; + cased text 87.42 %; + embed dropout 0.5 and label smoothing 0.1
          (this config) 88.16 % (cased: 87.91 %).
"""
import flaxnets


def get_config():
  c = flaxnets.get_config()
  c.dataset.name = "text_table"
  c.dataset.path = "../shared/data/trec6"  # relative to the repository root
  c.dataset.val_split = ""                 # carve val_fraction of train
  c.dataset.val_fraction = 0.1
  c.dataset.test_split = ""
  # Words seen once become <unk>, so the model learns what to do with unseen words.
  c.dataset.min_freq = 2
  c.model.name = "rnn"
  c.model.cell = "lstm"
  c.model.bidirectional = True
  c.model.hidden_size = 128
  c.model.embed_dim = 128
  c.model.pooling = "max"
  c.model.embed_dropout = 0.5          # train accuracy reaches 99% within 6 epochs
  c.model.dropout = 0.5
  c.num_epochs = 10
  c.batch_size = 32
  c.optimizer.name = "adamw"
  c.optimizer.learning_rate = 2e-3
  c.optimizer.weight_decay = 1e-4
  c.optimizer.clip_norm = 5.0
  c.optimizer.label_smoothing = 0.1
  return c
