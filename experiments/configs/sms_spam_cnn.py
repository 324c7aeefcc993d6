"""Kim (2014) CNN on the SMS Spam Collection: 5,574 messages, 747 (13.4%) spam.

The collection has no split of its own: validation is a seeded, stratified 20% carve
(1,115 messages, 149 spam; the carve's seed is fixed, independent of the training
seed), used only to report the final epoch's weights (no epoch is picked on it).
The classes are imbalanced, so the figure is validation macro F1 (the mean of ham's and
spam's F1) next to accuracy; `class_weights` variants weigh spam up in the loss.

Run:      flaxnets train --config experiments/configs/sms_spam_cnn.py --config.seed=0
Seeds:    python experiments/run.py experiments/configs/sms_spam_cnn.py --seeds 0 1 2
Balanced: python experiments/run.py experiments/configs/sms_spam_cnn.py --seeds 0 1 2 \\
            --set optimizer.class_weights=balanced --name sms_spam_cnn_balanced
Runtime:  15-19 s per seed (5 epochs, loading and compilation included) on the 2-core
          CPU (1 device), 2026-11-30.
Result:   final validation macro F1 0.9721 / 0.9606 / 0.9719 (seeds 0 / 1 / 2), mean
          0.9682, accuracy 98.57%, spam recall 91.50%, precision 97.65%; with
          class_weights='balanced' 0.9633 / 0.9603 / 0.9668, mean 0.9635, accuracy
          98.30%, spam recall 94.41%, precision 93.02% (experiments/results/NOTES.md).
"""
import flaxnets


def get_config():
  c = flaxnets.get_config()
  c.dataset.name = "text_table"
  c.dataset.path = "../shared/data/sms_spam"  # relative to the repository root
  c.dataset.train_split = "sms_spam"          # the one table, sms_spam.tsv
  c.dataset.text_column = "text"
  c.dataset.val_split = ""                    # carve val_fraction of train
  c.dataset.val_fraction = 0.2
  c.dataset.test_split = ""
  c.dataset.split_punctuation = True          # raw text: "lar..." -> "lar", "..."
  c.dataset.max_len = 100                     # tokens; 15 of the 5,574 messages are longer
  c.model.name = "text_cnn"
  c.model.embed_dim = 128
  c.model.kernel_sizes = (3, 4, 5)
  c.model.features = 100
  c.model.pooling = "max"
  c.model.dropout = 0.5
  c.num_epochs = 5
  c.batch_size = 50
  c.optimizer.name = "adam"
  c.optimizer.learning_rate = 1e-3
  return c
