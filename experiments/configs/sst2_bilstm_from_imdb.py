"""The SST-2 BiLSTM (sst2_bilstm.py) fine-tuned from a BiLSTM trained on IMDB reviews.

The IMDB model (imdb_lstm.py: the same BiLSTM, 128 hidden, 128-d embeddings, max
pooling) is trained first, 3 epochs, without its 25,000-review test pass:

    python experiments/run.py experiments/configs/imdb_lstm.py --seeds 0 \
        --workdir runs --set num_epochs=3 "dataset.test_split=''" --name imdb_lstm_3epochs

Then this config starts each SST-2 run from that run's best checkpoint (config.init):
every array of the IMDB model, its 30,000-word embedding's rows matched to SST-2's
vocabulary by word (SST-2 words that IMDB's vocabulary lacks start fresh), and its
two-class head as it is (both label 1 = positive):

Run:      flaxnets train --config experiments/configs/sst2_bilstm_from_imdb.py
Seeds:    python experiments/run.py experiments/configs/sst2_bilstm_from_imdb.py --seeds 0 1 2
Runtime:  the IMDB run 649 s (3 epochs of 351 steps; best validation accuracy 88.84 %,
          experiments/results/imdb_lstm_3epochs.json, with --workdir /work/ft_runs and
          runs/ a link to it); each SST-2 run 49-62 s, on the 2-core CPU (1 device),
          2026-11-30.
Result:   best-epoch dev accuracy 81.42 / 81.65 / 81.08 % (seeds 0 / 1 / 2), mean 81.38 %,
          best dev loss 0.417 (experiments/results/sst2_bilstm_from_imdb.json); the same
          model from a random initialisation (sst2_bilstm.py): 79.36 / 80.16 / 80.62 %,
          mean 80.05 %, loss 0.448. 6,602 of SST-2's 7,142 vocabulary entries took their
          embedding row from IMDB's vocabulary. With IMDB's whole vocabulary instead
          (--set dataset.vocabulary=runs/imdb_lstm_3epochs_seed0 dataset.min_freq=1
          dataset.split_punctuation=True --name sst2_bilstm_from_imdb_vocab; 4.47 % of
          SST-2's training tokens are not in it): 81.65 / 81.19 / 81.77 %, mean 81.54 %,
          loss 0.422, 64-81 s a run (experiments/results/sst2_bilstm_from_imdb_vocab.json).
"""
import importlib.util
import pathlib


def get_config():
  here = pathlib.Path(__file__).resolve().parent
  spec = importlib.util.spec_from_file_location("sst2_bilstm", here / "sst2_bilstm.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c = module.get_config()
  c.init.workdir = str(here.parents[1] / "runs" / "imdb_lstm_3epochs_seed0")  # repo's runs/
  return c
