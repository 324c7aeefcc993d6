"""config.dataset.vocabulary: a fixed vocabulary (a run's, a saved one, or a file of one
token a line) instead of one built from the training split."""
from __future__ import annotations

import json
import pathlib
import re

import numpy as np
import pytest

import flaxnets
from flaxnets.config import ConfigError
from flaxnets.data import sources
from flaxnets.data.text import PAD, UNK, UNK_ID, Vocabulary
from helpers import quiet_config

_FILLER = ["the", "movie", "was", "plot", "acting", "a", "really", "story", "it", "quite"]


def _table(path: pathlib.Path, n: int, seed: int, positive, negative) -> pathlib.Path:
  """label<TAB>sentence rows: the label is whether a positive or a negative word appears."""
  rng = np.random.default_rng(seed)
  lines = ["label\tsentence"]
  for _ in range(n):
    label = int(rng.integers(2))
    words = list(rng.choice(_FILLER, size=int(rng.integers(2, 8))))
    words.insert(int(rng.integers(len(words) + 1)),
                 str(rng.choice(positive if label else negative)))
    lines.append(f"{label}\t{' '.join(words)}")
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text("\n".join(lines) + "\n", encoding="utf-8")
  return path


def _config(folder: pathlib.Path, **changes):
  return quiet_config(**{
      "dataset.name": "text_table", "dataset.path": str(folder), "dataset.val_fraction": 0.2,
      "model.name": "text_cnn", "model.embed_dim": 16, "model.features": 16,
      "model.kernel_sizes": (1, 2), "num_epochs": 4, "batch_size": 16,
      "optimizer.learning_rate": 1e-2, "parallel.strategy": "single", **changes})


# ---- files of one token a line ----------------------------------------------------------


def test_a_token_file_gives_ids_in_line_order(tmp_path):
  f = tmp_path / "vocab.txt"
  f.write_bytes("\ufeffthe \r\nmovie\n\tgood\nNaïve\n".encode("utf-8"))  # BOM, CRLF, blanks
  v = Vocabulary.from_token_file(f, lowercase=False)
  assert v.tokens == [PAD, UNK, "the", "movie", "good", "Naïve"]
  ids, lengths = v.encode(["the good zebra", "Naïve movie"], 4)
  np.testing.assert_array_equal(ids, [[2, 4, UNK_ID, 0], [5, 3, 0, 0]])
  np.testing.assert_array_equal(lengths, [3, 2])
  # the file's own padding and unknown lines, flaxnets' or Keras's get_vocabulary()'s
  for head in (f"{PAD}\n{UNK}\n", "\n[UNK]\n", f"{PAD} \r\n {UNK}\n", "[UNK]\n", f"{UNK}\n"):
    f.write_text(head + "the\nmovie\n")
    assert Vocabulary.from_token_file(f).tokens == [PAD, UNK, "the", "movie"]
  f.write_text("a\nb\n \n")  # a char vocabulary takes the space as a token
  assert Vocabulary.from_token_file(f, level="char").tokens == [PAD, UNK, "a", "b", " "]


@pytest.mark.parametrize("text,level,message", [
    ("the\nold movie\n", "word", r"line 2 is 'old movie': a word-level token holds no "
                                 r"whitespace"),
    ("the\n\nmovie\n", "word", r"line 2 is empty; expected one token a line"),
    ("the\nmovie\nthe\n", "word", r"line 3 is 'the', as line 1 is; expected each token once"),
    (f"the\n{UNK}\n", "word", r"line 2 is '<unk>'; expected the padding and unknown tokens "
                              r"only as the first lines \(ids 0 and 1\), or not at all"),
    ("\n[UNK]\nthe\n[UNK]\n", "word", r"line 4 is '\[UNK\]'; expected the padding"),
    (f"{PAD}\nthe\n", "word", r"line 1 is '<pad>'"),
    ("a\nbc\n", "char", r"line 2 is 'bc': expected one character a line \(level 'char'; a vocabulary "
                                  r"with a newline character is a .json"),
    ("", "word", r"no tokens; expected one token a line"),
    ("\n[UNK]\n", "word", r"no tokens"),
])
def test_a_bad_token_file_is_refused_naming_the_line(tmp_path, text, level, message):
  f = tmp_path / "vocab.txt"
  f.write_text(text)
  with pytest.raises(ValueError, match=re.escape(str(f)) + ": " + message):
    Vocabulary.from_token_file(f, level=level)


# ---- training with a given vocabulary ---------------------------------------------------


def test_training_encodes_every_split_with_the_given_vocabulary(tmp_path, capsys):
  data = tmp_path / "data"
  _table(data / "train.tsv", 200, 0, ["good"], ["bad"])
  _table(data / "test.tsv", 40, 1, ["great"], ["awful"])  # words the file has, train not
  vocab_file = tmp_path / "vocab.txt"
  vocab_file.write_text("good\nbad\ngreat\nawful\nthe\nmovie\n")
  config = _config(data, **{"dataset.vocabulary": str(vocab_file), "num_epochs": 1})
  dataset = sources.load_dataset(config.dataset)
  assert dataset.vocab.tokens == [PAD, UNK, "good", "bad", "great", "awful", "the", "movie"]
  for split in (dataset.train, dataset.val, dataset.test):
    assert split["inputs"].max() <= 7  # every other word is <unk>
  assert (dataset.test["inputs"] == 4).any() and not (dataset.train["inputs"] == 4).any()
  result = flaxnets.train(config, str(tmp_path / "run"))
  out = capsys.readouterr().out
  assert f"vocabulary: 8 tokens from {vocab_file} (word level); " in out
  assert "of the training tokens are not in it (<unk>)" in out
  assert result.dataset.vocab == dataset.vocab
  predictor = flaxnets.load(tmp_path / "run")
  assert predictor.vocab == dataset.vocab
  assert predictor.config.dataset.vocabulary == str(vocab_file)


def test_fine_tuning_with_the_source_vocabulary_keeps_words_the_new_data_lacks(tmp_path):
  """The source run learned 'superb' and 'dreadful'; the new run's training data has only
  'good' and 'bad', its test data only 'superb' and 'dreadful'. With the source's
  vocabulary those test words keep the source's embedding rows; with one built from the
  new training split they are '<unk>', and the test is a coin toss."""
  words = (["good", "superb"], ["bad", "dreadful"])
  _table(tmp_path / "source" / "train.tsv", 400, 0, *words)
  flaxnets.train(_config(tmp_path / "source"), str(tmp_path / "source_run"))
  new = tmp_path / "new"
  _table(new / "train.tsv", 200, 2, ["good"], ["bad"])
  _table(new / "test.tsv", 200, 3, ["superb"], ["dreadful"])
  init = {"init.workdir": str(tmp_path / "source_run"), "num_epochs": 2}
  own = flaxnets.train(_config(new, **init))
  shared = flaxnets.train(_config(new, **init, **{
      "dataset.vocabulary": str(tmp_path / "source_run")}), str(tmp_path / "shared_run"))
  assert shared.dataset.vocab == flaxnets.load(tmp_path / "source_run").vocab
  assert "superb" not in own.dataset.vocab.tokens
  assert shared.test_metrics["accuracy"] > 0.95, shared.test_metrics
  assert own.test_metrics["accuracy"] < 0.7, own.test_metrics
  # every array came from the source as it is, the embedding's rows in the same order
  notes = json.loads((tmp_path / "shared_run" / "results.json").read_text())[
      "initialised_from"]["notes"]
  assert notes == ["7 of 7 arrays from the checkpoint"], notes


def test_a_language_model_takes_a_vocabulary_too(tmp_path):
  corpus = tmp_path / "corpus.txt"
  corpus.write_text("abcd" * 500)
  chars = tmp_path / "chars.txt"
  chars.write_text("a\nb\nc\nd\ne\n")
  config = quiet_config(num_epochs=1, batch_size=32, **{
      "dataset.name": "text_file", "dataset.path": str(corpus), "dataset.vocab_level": "char",
      "dataset.vocabulary": str(chars), "dataset.seq_len": 16, "model.name": "char_lm",
      "model.embed_dim": 8, "model.hidden_size": 16, "model.num_layers": 1,
      "parallel.strategy": "single"})
  result = flaxnets.train(config)
  assert result.dataset.label_names == [PAD, UNK, "a", "b", "c", "d", "e"]
  assert result.dataset.num_classes == 7


# ---- where the vocabulary comes from, and what is refused -------------------------------


def test_saved_and_exported_vocabularies_are_read_with_their_rules(tmp_path):
  data = tmp_path / "data"
  _table(data / "train.tsv", 60, 0, ["good"], ["bad"])
  saved = Vocabulary(["<pad>", "<unk>", "good", "bad", "!"], split_punctuation=True)
  saved.save(tmp_path / "vocab.json")
  (tmp_path / "model.jax.json").write_text(json.dumps({
      "inputs": [], "label_names": ["0", "1"], "input_kind": "tokens",
      "vocab": saved.to_dict()}))
  for given in ("vocab.json", "model.jax.json"):
    config = _config(data, **{"dataset.vocabulary": str(tmp_path / given),
                              "dataset.split_punctuation": True})
    assert sources.load_dataset(config.dataset).vocab == saved
    # the config must say how the texts are split: the vocabulary's own rules
    config.dataset.split_punctuation = False
    with pytest.raises(ConfigError, match=r"config.dataset.split_punctuation=False: the "
                                          r"vocabulary of config.dataset.vocabulary=.* was "
                                          r"built with split_punctuation=True.*expected "
                                          r"split_punctuation=True"):
      sources.load_dataset(config.dataset)
    config.dataset.split_punctuation, config.dataset.vocab_level = True, "char"
    with pytest.raises(ConfigError, match=r"config.dataset.vocab_level='char'.*expected "
                                          r"vocab_level='word'"):
      sources.load_dataset(config.dataset)
  (tmp_path / "image.jax.json").write_text(json.dumps({"input_kind": "image", "vocab": None}))
  config = _config(data, **{"dataset.vocabulary": str(tmp_path / "image.jax.json")})
  with pytest.raises(ValueError, match=r"the exported model has no vocabulary \(input_kind "
                                       r"'image'\); expected a text model's"):
    sources.load_dataset(config.dataset)


def test_bad_vocabulary_settings_are_refused_before_anything_is_touched(tmp_path):
  data = tmp_path / "data"
  _table(data / "train.tsv", 60, 0, ["good"], ["bad"])
  workdir = tmp_path / "run"
  missing = tmp_path / "nowhere.txt"
  with pytest.raises(FileNotFoundError, match=r"config.dataset.vocabulary='.*nowhere.txt' "
                                              r"does not exist; expected a run's workdir"):
    flaxnets.train(_config(data, **{"dataset.vocabulary": str(missing)}), str(workdir))
  empty_run = tmp_path / "empty_run"
  empty_run.mkdir()
  with pytest.raises(FileNotFoundError, match=r"config.dataset.vocabulary=.*empty_run': no "
                                              r"checkpoints in"):
    flaxnets.train(_config(data, **{"dataset.vocabulary": str(empty_run)}), str(workdir))
  (tmp_path / "junk.json").write_text("[1, 2]")
  with pytest.raises(ValueError, match=r"junk.json is not a vocabulary file"):
    flaxnets.train(_config(data, **{"dataset.vocabulary": str(tmp_path / "junk.json")}),
                   str(workdir))
  vocab = tmp_path / "vocab.txt"
  vocab.write_text("good\nbad\n")
  for key, value in (("min_freq", 2), ("max_vocab", 100)):
    with pytest.raises(ConfigError, match=rf"config.dataset.{key}={value}: it chooses the "
                                          r"tokens of a vocabulary built from the training "
                                          r"split, and config.dataset.vocabulary="):
      flaxnets.train(_config(data, **{"dataset.vocabulary": str(vocab),
                                      f"dataset.{key}": value}), str(workdir))
  with pytest.raises(ConfigError, match=r"config.dataset.vocabulary=.*: only text_table, "
                                        r"text_file, tfds:<name> datasets read it"):
    flaxnets.train(quiet_config(**{"dataset.vocabulary": str(vocab)}), str(workdir))
  assert sorted(p.name for p in workdir.iterdir()) == [".lock"]  # (train's own lock)
  # an image model's run has no vocabulary to give
  image_run = tmp_path / "image_run"
  flaxnets.train(quiet_config(num_epochs=1, **{"model.features": (4,), "model.hidden": 8}),
                 str(image_run))
  with pytest.raises(ValueError, match=r"image_run'.*: the run in it trained on image "
                                       r"inputs, with no vocabulary; expected a text model's"):
    flaxnets.train(_config(data, **{"dataset.vocabulary": str(image_run)}), str(workdir))
  # capitals that lowercased text never matches: a warning
  vocab.write_text("good\nBad\n")
  config = _config(data, **{"dataset.vocabulary": str(vocab)})
  with pytest.warns(UserWarning, match=r"1 of its 2 tokens are never produced by config."
                                       r"dataset's tokenizer \(lowercase=True, split_punctuation"
                                       r"=False\), e.g. \['Bad'\] becomes \['bad'\]"):
    sources.load_dataset(config.dataset)
  vocab.write_text("good.\nbad\n")  # punctuation split off: 'good.' is never a token
  config.dataset.split_punctuation = True
  with pytest.warns(UserWarning, match=r"e.g. \['good.'\] becomes \['good', '.'\]"):
    sources.load_dataset(config.dataset)
  # a saved vocabulary of no tokens
  Vocabulary([PAD, UNK]).save(tmp_path / "empty.json")
  config = _config(data, **{"dataset.vocabulary": str(tmp_path / "empty.json")})
  with pytest.raises(ValueError, match=r"empty.json': it holds no tokens but '<pad>' and "
                                       r"'<unk>'; expected some"):
    sources.load_dataset(config.dataset)


def test_a_resume_with_another_vocabulary_is_refused(tmp_path):
  data = tmp_path / "data"
  _table(data / "train.tsv", 60, 0, ["good"], ["bad"])
  first, second = tmp_path / "a.txt", tmp_path / "b.txt"
  first.write_text("good\nbad\n")
  second.write_text("bad\ngood\n")
  workdir = tmp_path / "run"
  flaxnets.train(_config(data, **{"dataset.vocabulary": str(first), "num_epochs": 1}),
                 str(workdir))
  with pytest.raises(flaxnets.CheckpointError, match=r"dataset.vocabulary"):
    flaxnets.train(_config(data, **{"dataset.vocabulary": str(second), "num_epochs": 2}),
                   str(workdir))
  # the same file, resumed: one more epoch
  result = flaxnets.train(_config(data, **{"dataset.vocabulary": str(first),
                                           "num_epochs": 2}), str(workdir))
  assert [h["epoch"] for h in result.history if h["split"] == "val"] == [1, 2]


def test_evaluation_reads_the_checkpoints_copy_of_a_given_vocabulary(tmp_path, monkeypatch):
  """A run given a relative vocabulary path records it absolute; its checkpoint's copy of
  the vocabulary is what evaluate encodes with, so the source may change or go (a
  fine-tuning source run deleted), and a checkpoint written before the setting existed
  evaluates as before. The .json beside an export gives the vocabulary too."""
  data = tmp_path / "data"
  _table(data / "train.tsv", 120, 0, ["good"], ["bad"])
  _table(data / "test.tsv", 40, 1, ["good"], ["bad"])
  (tmp_path / "vocab.txt").write_text("good\nbad\nthe\n")
  monkeypatch.chdir(tmp_path)
  config = _config(data, **{"dataset.vocabulary": "vocab.txt", "num_epochs": 2})
  result = flaxnets.train(config, str(tmp_path / "run"))
  predictor = flaxnets.load(tmp_path / "run")
  assert predictor.config.dataset.vocabulary == str(tmp_path / "vocab.txt")
  expected = result.test_metrics["accuracy"]
  (tmp_path / "vocab.txt").write_text("the\nbad\ngood\nmovie\n")  # changed, then gone
  assert predictor.evaluate("test")["accuracy"] == pytest.approx(expected)
  (tmp_path / "vocab.txt").unlink()
  assert flaxnets.load(tmp_path / "run").evaluate("test")["accuracy"] == pytest.approx(expected)
  # a resume against the changed source names it
  (tmp_path / "vocab.txt").write_text("the\nbad\ngood\nmovie\n")
  config.num_epochs = 3
  with pytest.raises(flaxnets.CheckpointError, match=r"vocabulary: the one config.dataset."
                                                     r"vocabulary='.*vocab.txt' gives differs "
                                                     r"from the checkpoint's"):
    flaxnets.train(config, str(tmp_path / "run"))
  # a checkpoint whose config has no dataset.vocabulary (written before it existed)
  plain = flaxnets.train(_config(data, num_epochs=1), str(tmp_path / "plain"))
  for meta in (tmp_path / "plain").glob("*/*/meta/metadata"):
    m = json.loads(meta.read_text())
    del m["config"]["dataset"]["vocabulary"]
    meta.write_text(json.dumps(m))
  assert flaxnets.load(tmp_path / "plain").evaluate("test")["accuracy"] == pytest.approx(
      plain.test_metrics["accuracy"])
  # the .json beside an export
  predictor.export(tmp_path / "model.jax")
  assert Vocabulary.load(tmp_path / "model.jax.json") == predictor.vocab
  with pytest.raises(ValueError, match=r"model.jax is not a vocabulary file: expected UTF-8 "
                                       r"text.*an export's vocabulary is the .json beside it"):
    Vocabulary.from_token_file(tmp_path / "model.jax")
  # a damaged best step gives way to the same vocabulary in checkpoints/
  next((tmp_path / "run" / "best").glob("*/meta/metadata")).write_text("[1, 2]")
  config = _config(data, **{"dataset.vocabulary": str(tmp_path / "run")})
  assert sources.load_dataset(config.dataset).vocab == predictor.vocab


def test_resume_messages_say_which_side_gave_the_vocabulary():
  from flaxnets.training.checkpoint import data_differences

  def meta(tokens, given):
    return {"vocab": Vocabulary([PAD, UNK, *tokens]).to_dict(), "train_examples": 10,
            "config": {"dataset": {"vocabulary": given}}}
  assert data_differences(meta("a", ""), meta("b", "/v.txt"), ()) == [
      "vocabulary: built from the training data (checkpoint) vs given by '/v.txt' (now)"]
  assert data_differences(meta("a", "/v.txt"), meta("b", "/v.txt"), ()) == [
      "vocabulary: the one config.dataset.vocabulary='/v.txt' gives differs from the "
      "checkpoint's (it changed since)"]


def test_a_tfds_image_dataset_refuses_a_vocabulary(tmp_path):
  tfds = pytest.importorskip("tensorflow_datasets")
  (tmp_path / "vocab.txt").write_text("good\n")
  config = quiet_config(**{"dataset.name": "tfds:mnist", "dataset.vocabulary":
                           str(tmp_path / "vocab.txt")})
  with tfds.testing.mock_data(num_examples=20):
    with pytest.raises(ConfigError, match=r"config.dataset.vocabulary='.*vocab.txt': TFDS "
                                          r"dataset 'mnist' holds images, which have no "
                                          r"vocabulary"):
      sources.load_dataset(config.dataset)
