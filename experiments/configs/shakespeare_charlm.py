"""Character-level LSTM language model on tiny-shakespeare (1,115,394 characters).

The last 10% of the text is validation (contiguous, not shuffled windows, so no
validation text leaks into training); training windows of 128 characters overlap by
half. Metrics are per character: loss is cross-entropy in nats, accuracy is
next-character accuracy. Sample from a trained model with
`flaxnets generate WORKDIR "ROMEO:"` (Predictor.generate).

Run:      flaxnets train --config experiments/configs/shakespeare_charlm.py   (from the repo root)
Seeds:    python experiments/run.py experiments/configs/shakespeare_charlm.py --seeds 0
Runtime:  about 270-295 s per epoch (245 steps of 64 windows) on a shared, loaded 2-core
          CPU (1 device), 2026-11-27; 10 epochs: about 50 min.
Result:   stopped after 3 of 10 epochs: validation loss 1.94 / 1.72 / 1.63 nats per
          character after epochs 1 / 2 / 3, next-character accuracy 51.4% (see
          experiments/results/NOTES.md and shakespeare_charlm_sample.txt).
"""
import flaxnets


def get_config():
  c = flaxnets.get_config()
  c.dataset.name = "text_file"
  c.dataset.path = "../shared/data/tinyshakespeare/input.txt"   # relative to the repo root
  c.dataset.vocab_level = "char"
  c.dataset.lowercase = False
  c.dataset.seq_len = 128
  c.dataset.val_fraction = 0.1
  c.dataset.normalize = False
  c.model.name = "char_lm"
  c.model.cell = "lstm"
  c.model.embed_dim = 64
  c.model.hidden_size = 256
  c.model.num_layers = 2
  c.model.dropout = 0.2
  c.num_epochs = 10
  c.batch_size = 64
  c.eval_batch_size = 256
  c.log_every_steps = 50
  c.optimizer.name = "adam"
  c.optimizer.learning_rate = 2e-3
  c.optimizer.clip_norm = 1.0
  c.checkpoint.best_metric = "loss"
  c.checkpoint.best_mode = "min"
  c.checkpoint.every_steps = 200
  return c
