"""Text tasks end to end: text tables (RNN, TextCNN), a character LM, and the real sets."""
from __future__ import annotations

import importlib.util
import os
import pathlib
import re

import numpy as np
import pytest

import flaxnets
from flaxnets.cli import main
from flaxnets.data.text import UNK_ID
from helpers import quiet_config

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIGS = REPO / "experiments" / "configs"

_POSITIVE = ["good", "great", "fine", "superb"]
_NEGATIVE = ["bad", "awful", "poor", "dreadful"]
_FILLER = ["the", "movie", "was", "plot", "acting", "a", "really", "story", "it", "quite"]


def _write_table(path: pathlib.Path, n: int, seed: int, extra_word: str | None = None) -> None:
  """A sentiment table: the label is whether a positive or a negative word appears."""
  rng = np.random.default_rng(seed)
  lines = ["label\tsentence"]
  for i in range(n):
    label = int(rng.integers(2))
    words = list(rng.choice(_FILLER, size=int(rng.integers(2, 12))))
    key = str(rng.choice(_POSITIVE if label else _NEGATIVE))
    words.insert(int(rng.integers(len(words) + 1)), key)
    if extra_word is not None and i == 0:
      words.append(extra_word)
    lines.append(f"{label}\t{' '.join(words)}")
  path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _config(tmp_path: pathlib.Path, model: str):
  _write_table(tmp_path / "train.tsv", 320, seed=0)
  _write_table(tmp_path / "test.tsv", 80, seed=1, extra_word="zebra")  # zebra: test only
  c = flaxnets.get_config()
  c.dataset.name = "text_table"
  c.dataset.path = str(tmp_path)
  c.dataset.val_fraction = 0.25
  c.model.name = model
  c.model.embed_dim = 16
  if model == "rnn":
    c.model.hidden_size = 16
    c.model.bidirectional = True
    c.model.pooling = "max"
  else:
    c.model.features = 16
    c.model.kernel_sizes = (2, 3)
    c.model.dropout = 0.2
  c.num_epochs = 6
  c.batch_size = 16
  c.optimizer.learning_rate = 1e-2
  c.progress = False
  c.parallel.strategy = "single"  # 8 forced CPU devices only slow a tiny job down
  return c


@pytest.mark.parametrize("model", ["rnn", "text_cnn"])
def test_text_table_trains_end_to_end(tmp_path, model):
  result = flaxnets.train(_config(tmp_path, model))
  ds = result.dataset
  assert ds.input_kind == "tokens" and ds.num_classes == 2 and ds.label_names == ["0", "1"]
  assert len(ds.train["labels"]) == 240 and len(ds.val["labels"]) == 80  # stratified carve
  assert result.test_metrics["count"] == 80
  assert result.test_metrics["accuracy"] > 0.9, result.test_metrics
  # The vocabulary comes from the training table only.
  vocab = ds.vocab
  assert "zebra" not in vocab.tokens and "good" in vocab.tokens
  zebra_row = ds.test["inputs"][0][:ds.test["seq_lengths"][0]]
  assert zebra_row[-1] == UNK_ID
  assert vocab.decode(zebra_row).split()[-1] == "<unk>"


def test_char_lm_on_a_text_file(tmp_path, capsys):
  corpus = tmp_path / "corpus.txt"
  line = "to be, or not to be, that is the question.\n"
  corpus.write_text(line * 60, encoding="utf-8")
  c = flaxnets.get_config()
  c.dataset.name = "text_file"
  c.dataset.path = str(corpus)
  c.dataset.vocab_level = "char"
  c.dataset.seq_len = 32
  c.dataset.val_fraction = 0.1
  c.model.name = "char_lm"
  c.model.embed_dim = 16
  c.model.hidden_size = 64
  c.model.num_layers = 1
  c.num_epochs = 4
  c.batch_size = 16
  c.optimizer.learning_rate = 1e-2
  c.progress = False
  c.parallel.strategy = "single"
  result = flaxnets.train(c)
  ds = result.dataset
  assert ds.task == "lm" and ds.vocab.level == "char"
  assert len(ds.vocab) == len(set(line)) + 2  # + <pad>, <unk>
  assert ds.train["inputs"].shape[1] == 32
  losses = [h["loss"] for h in result.history if h["split"] == "train"]
  assert losses[-1] < 0.5 * losses[0], losses
  val = [h["loss"] for h in result.history if h["split"] == "val"]
  assert val[-1] < val[0] and val[-1] < 1.0, val   # ln(17) = 2.8 for a uniform guess
  # Every validation target counts once, the tail too (a partial last window had been
  # dropped): the held-out 10% of the characters, less the first, which is no target.
  n_val = len(line) * 60 - int(len(line) * 60 * 0.9) - 1
  assert n_val % 32 and result.val_metrics["count"] == n_val
  # ... and the final table names them tokens (its column had said "examples")
  table = capsys.readouterr().out.split("\nsplit ")[-1].splitlines()
  assert table[0].split() == ["loss", "accuracy", "tokens"]
  assert table[1].split()[0] == "val" and int(table[1].split()[-1]) == n_val
  # Train rates: examples are windows, as in the per-step records; tokens are their targets.
  for h in result.history:
    if h["split"] == "train":
      assert h["tokens_per_sec"] == pytest.approx(32 * h["examples_per_sec"], rel=1e-6)


# ---- the real datasets in ../shared/data (skipped without them) ---------------------------
def _task_config(name: str):
  spec = importlib.util.spec_from_file_location(name, CONFIGS / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c = module.get_config()
  c.progress = False
  return c


@pytest.fixture
def in_repo_root():
  """Task configs name their data relative to the repository root."""
  cwd = os.getcwd()
  os.chdir(REPO)
  yield REPO
  os.chdir(cwd)


def test_sst2_and_trec_tables_load(shared_data, in_repo_root):
  from flaxnets.data import sources
  sst = sources.load_dataset(_task_config("sst2_bilstm").dataset)
  assert len(sst.train["labels"]) == 6920 and len(sst.val["labels"]) == 872
  assert sst.test is None and sst.label_names == ["0", "1"]
  assert sst.vocab.tokens[:2] == ["<pad>", "<unk>"]
  trec = sources.load_dataset(_task_config("trec_cnn").dataset)
  assert trec.num_classes == 6 and trec.test is None
  n_train, n_val = len(trec.train["labels"]), len(trec.val["labels"])
  assert n_train + n_val == 5452 and abs(n_val - 545) <= 3
  # Stratified: every class is in validation in about its training proportion.
  for c in range(6):
    share_val = np.mean(trec.val["labels"] == c)
    share_train = np.mean(trec.train["labels"] == c)
    assert abs(share_val - share_train) < 0.01
  # The carve is seeded apart from the training seed: the other TREC config (another
  # vocabulary, so other ids) holds out the same questions.
  again = sources.load_dataset(_task_config("trec_lstm").dataset)
  np.testing.assert_array_equal(again.val["labels"], trec.val["labels"])
  np.testing.assert_array_equal(again.val["seq_lengths"], trec.val["seq_lengths"])


@pytest.mark.slow
def test_sst2_one_epoch_learns(shared_data, in_repo_root):
  c = _task_config("sst2_cnn")
  c.num_epochs = 1
  c.parallel.strategy = "single"  # batch 50 does not split over the 8 test devices
  result = flaxnets.train(c)
  assert result.val_metrics["count"] == 872
  assert result.val_metrics["accuracy"] > 0.70, result.val_metrics


def _tiny_lm(tmp_path, text, level="char", **changes):
  """A char_lm trained 3 epochs on `text` repeated, saved in tmp_path / 'lm'."""
  corpus = tmp_path / "corpus.txt"
  corpus.write_text(text * 2000)
  config = quiet_config(num_epochs=3, batch_size=32, **{
      "dataset.name": "text_file", "dataset.path": str(corpus), "dataset.vocab_level": level,
      "dataset.seq_len": 16, "model.name": "char_lm", "model.embed_dim": 16,
      "model.hidden_size": 32, "model.num_layers": 1, "optimizer.learning_rate": 1e-2,
      **changes})
  flaxnets.train(config, str(tmp_path / "lm"))
  return flaxnets.load(str(tmp_path / "lm"))


def test_a_language_model_continues_a_prompt(tmp_path, capsys):
  """Predictor.generate: the prompt, then tokens the model draws (a learned cycle 'abcd'
  continued exactly at a low temperature), seeded; never '<pad>' or '<unk>'."""
  lm = _tiny_lm(tmp_path, "abcd")
  capsys.readouterr()
  assert lm.generate("ab", 18, temperature=0.3) == "ab" + "cdab" * 4 + "cd"
  assert lm.generate("bc", 5, temperature=0.3, seed=3) == "bcdabcd"
  hot = [lm.generate("a", 40, temperature=5.0, seed=s) for s in (0, 0, 1)]
  assert hot[0] == hot[1] != hot[2]  # seeded draws
  assert all(len(h) == 41 and set(h) <= set("abcd") for h in hot)  # no '<unk>' text
  # An unknown character reads as '<unk>' and the model goes on from the next ones.
  assert lm.generate("zzcd", 4, temperature=0.3) == "zzcdabcd"
  assert main(["generate", str(tmp_path / "lm"), "da", "--length", "6",
               "--temperature", "0.3"]) == 0
  assert capsys.readouterr().out == "dabcdabc\n"
  for kwargs, message in [({"prompt": ""}, "prompt='': no tokens"),
                          ({"prompt": b"ab"}, "prompt of type bytes: expected a text string"),
                          ({"seed": -1}, "seed=-1: expected an integer >= 0"),
                          ({"length": -1}, "length=-1: expected an integer >= 0"),
                          ({"window": 0}, "window=0: expected an integer >= 1")]:
    with pytest.raises(ValueError, match=re.escape(message)):
      lm.generate(**{"prompt": "ab", **kwargs})


def test_a_word_language_model_joins_words_and_a_classifier_does_not_generate(tmp_path):
  lm = _tiny_lm(tmp_path, "red green blue . ", level="word")
  out = lm.generate("red green", 6, temperature=0.3)
  assert out == "red green blue . red green blue .", out
  flaxnets.train(quiet_config(num_epochs=1), str(tmp_path / "digits"))
  with pytest.raises(ValueError, match="generate: this is a classifier"):
    flaxnets.load(str(tmp_path / "digits")).generate("ab")
