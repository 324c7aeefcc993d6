"""Tests for the local-file data layer: image folders/archives, text tables, labels,
vocabulary, length buckets, LM windows and TFDS data sources (mocked and tiny real)."""
from __future__ import annotations

import gzip
import importlib.util
import io
import json
import os
import pathlib
import tarfile
import warnings

import numpy as np
import pytest
from PIL import Image

import flaxnets
from flaxnets.data.files import encode_labels, read_image_folder, read_text_table
from flaxnets.data.text import (Vocabulary, bucket_length, default_buckets, lm_eval_windows,
                                lm_windows, padded_lengths)

# ----------------------------------------------------------------------------- helpers


def _image(rng, size=(6, 8), mode="RGB") -> Image.Image:
  shape = size + ((3,) if mode == "RGB" else ())
  return Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode)


def _make_tree(root: pathlib.Path, classes=("cat", "dog"), n=3, size=(6, 8), mode="RGB",
               seed=0) -> pathlib.Path:
  """root/<class>/<i>.png|.JPG, alternating formats, plus a non-image file."""
  rng = np.random.default_rng(seed)
  for c in classes:
    (root / c).mkdir(parents=True, exist_ok=True)
    for i in range(n):
      _image(rng, size, mode).save(root / c / (f"{i}.png" if i % 2 == 0 else f"{i}.JPG"))
    (root / c / "notes.txt").write_text("not an image")
  return root


def _tar(src: pathlib.Path, dest: pathlib.Path, prefix: str = "") -> pathlib.Path:
  with tarfile.open(dest, "w:gz") as tf:
    for p in sorted(src.rglob("*")):
      tf.add(p, arcname=prefix + p.relative_to(src).as_posix(), recursive=False)
  return dest


# ----------------------------------------------------------------------------- image folders


def test_folder_and_targz_give_identical_arrays(tmp_path):
  root = _make_tree(tmp_path / "imgs", classes=("dog", "cat", "eel"), n=4)
  archive = _tar(root, tmp_path / "imgs.tar.gz")
  x, y, names = read_image_folder(root)
  assert x.shape == (12, 6, 8, 3) and x.dtype == np.uint8 and y.dtype == np.int32
  assert names == ["cat", "dog", "eel"]
  np.testing.assert_array_equal(y, np.repeat([0, 1, 2], 4))
  # PNGs are lossless: the first cat image round-trips exactly.
  np.testing.assert_array_equal(x[0], np.asarray(Image.open(root / "cat" / "0.png")))
  for kw in ({}, {"num_workers": 1}, {"num_workers": 3}):
    xt, yt, names_t = read_image_folder(archive, **kw)
    np.testing.assert_array_equal(xt, x)
    np.testing.assert_array_equal(yt, y)
    assert names_t == names


def test_split_selection_folder_and_tar(tmp_path):
  root = tmp_path / "data"
  _make_tree(root / "train", n=3, seed=1)
  _make_tree(root / "test", n=2, seed=2)
  archive = _tar(root, tmp_path / "data.tgz", prefix="./")
  for src in (root, archive):
    x, y, names = read_image_folder(src, split="train")
    assert len(x) == 6 and names == ["cat", "dog"]
    x, y, _ = read_image_folder(src, split="test")
    assert len(x) == 4
    np.testing.assert_array_equal(y, [0, 0, 1, 1])
    with pytest.raises(ValueError, match=r"'test', 'train'.*split="):
      read_image_folder(src)  # two splits and no split chosen
    with pytest.raises(ValueError, match=r"split 'valid' not found.*\['test', 'train'\]"):
      read_image_folder(src, split="valid")


def test_class_names_keep_train_ids(tmp_path):
  root = _make_tree(tmp_path / "imgs", classes=("dog",), n=2)
  _, y, names = read_image_folder(root, class_names=["cat", "dog"])
  assert names == ["cat", "dog"] and y.tolist() == [1, 1]
  with pytest.raises(ValueError, match="class folder 'dog' is not among"):
    read_image_folder(root, class_names=["cat"])


def test_empty_class_folder_is_named_in_a_warning(tmp_path):
  root = _make_tree(tmp_path / "imgs" / "train", n=2)
  (root / "bird").mkdir()
  (root / "bird" / "readme.txt").write_text("no images yet")
  (root / ".cache").mkdir()  # hidden: not a class folder
  with pytest.warns(UserWarning, match=r"class folder\(s\) \['bird'\] hold no") as record:
    _, _, names = read_image_folder(tmp_path / "imgs", split="train")
  assert names == ["cat", "dog"] and len(record) == 1
  assert str(root) in str(record[0].message)
  with warnings.catch_warnings():  # a split read with the train classes does not warn
    warnings.simplefilter("error")
    read_image_folder(root, class_names=["cat", "dog", "bird"])


def test_grayscale_and_mixed_channels(tmp_path):
  root = _make_tree(tmp_path / "gray", n=3, mode="L")
  x, _, _ = read_image_folder(root)
  assert x.shape == (6, 6, 8, 1)
  _make_tree(tmp_path / "gray", classes=("rgb",), n=1, mode="RGB")
  x, y, _ = read_image_folder(root)
  assert x.shape == (7, 6, 8, 3)
  gray = x[y == 0]
  np.testing.assert_array_equal(gray[..., 0], gray[..., 2])  # gray replicated to RGB


def test_size_mismatch_names_file_and_resize(tmp_path):
  root = _make_tree(tmp_path / "imgs", n=2)
  _image(np.random.default_rng(0), size=(9, 9)).save(root / "dog" / "big.png")
  with pytest.raises(ValueError, match=r"big\.png is 9x9.*image_size"):
    read_image_folder(root)
  x, _, _ = read_image_folder(root, image_size=(4, 5))
  assert x.shape == (5, 4, 5, 3)
  with pytest.raises(ValueError, match=r"image_size=\(4, 0\)"):
    read_image_folder(root, image_size=(4, 0))


def test_image_folder_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="nowhere"):
    read_image_folder(tmp_path / "nowhere")
  (tmp_path / "empty").mkdir()
  with pytest.raises(ValueError, match=r"no images found in .*empty.*\.jpg/\.jpeg/\.png"):
    read_image_folder(tmp_path / "empty")
  (tmp_path / "flat").mkdir()
  _image(np.random.default_rng(0)).save(tmp_path / "flat" / "a.png")
  with pytest.raises(ValueError, match=r"1 image\(s\) lie directly in it"):
    read_image_folder(tmp_path / "flat")
  (tmp_path / "plain.txt").write_text("x")
  with pytest.raises(ValueError, match="is a file but not a tar archive"):
    read_image_folder(tmp_path / "plain.txt")


def test_corrupt_image_named_in_folder_and_tar(tmp_path):
  root = _make_tree(tmp_path / "imgs", n=2)
  (root / "dog" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
  with pytest.raises(ValueError, match=r"cannot decode image .*dog/broken\.jpg"):
    read_image_folder(root, num_workers=2)
  archive = _tar(root, tmp_path / "imgs.tar")
  with pytest.raises(ValueError, match=r"cannot decode image 'dog/broken\.jpg' in .*imgs\.tar"):
    read_image_folder(archive, num_workers=1)
  (tmp_path / "bad.tar.gz").write_bytes(b"\x1f\x8b garbage")
  with pytest.raises(ValueError, match=r"cannot read archive .*bad\.tar\.gz"):
    read_image_folder(tmp_path / "bad.tar.gz")


# ----------------------------------------------------------------------------- text tables


def test_read_tsv_keeps_quotes_and_reads_gzip(tmp_path):
  body = 'label\tsentence\n1\tit \'s a "great" film\n0\t" unbalanced quote\n\n  \n1\tok\n'
  (tmp_path / "t.tsv").write_text(body, "utf-8")
  with gzip.open(tmp_path / "t.tsv.gz", "wt", encoding="utf-8") as f:
    f.write(body)
  for name in ("t.tsv", "t.tsv.gz"):
    texts, labels = read_text_table(tmp_path / name)
    assert texts == ['it \'s a "great" film', '" unbalanced quote', "ok"]
    assert labels == ["1", "0", "1"]


def test_read_csv_quoting_and_indices(tmp_path):
  (tmp_path / "t.csv").write_text('text,y\n"hello, world",pos\nplain,neg\n', "utf-8")
  assert read_text_table(tmp_path / "t.csv", "text", "y") == (["hello, world", "plain"],
                                                              ["pos", "neg"])
  (tmp_path / "nohead.txt").write_text("a\tx\nb\ty\n", "utf-8")
  assert read_text_table(tmp_path / "nohead.txt", 1, 0, delimiter="\t",
                         header=False) == (["x", "y"], ["a", "b"])


def test_text_table_errors(tmp_path):
  (tmp_path / "t.tsv").write_text("label\ttext\n1\tfine\n0\ttoo\tmany\n", "utf-8")
  with pytest.raises(ValueError, match=r"no column 'sentence'.*\['label', 'text'\]"):
    read_text_table(tmp_path / "t.tsv")
  with pytest.raises(ValueError, match=r"no column 'stars'.*\['label', 'text'\]"):
    read_text_table(tmp_path / "t.tsv", "text", "stars")
  with pytest.raises(ValueError, match=r"t\.tsv: line 3 has 3 fields, expected 2"):
    read_text_table(tmp_path / "t.tsv", "text")
  (tmp_path / "head.tsv").write_text("label\tsentence\n", "utf-8")
  with pytest.raises(ValueError, match=r"head\.tsv has a header but no data rows"):
    read_text_table(tmp_path / "head.tsv")
  (tmp_path / "empty.tsv").write_text("", "utf-8")
  with pytest.raises(ValueError, match=r"empty\.tsv is empty"):
    read_text_table(tmp_path / "empty.tsv")
  (tmp_path / "t.json").write_text("a\n", "utf-8")
  with pytest.raises(ValueError, match="cannot tell the delimiter"):
    read_text_table(tmp_path / "t.json")
  with pytest.raises(FileNotFoundError, match="missing.tsv"):
    read_text_table(tmp_path / "missing.tsv")


def test_encode_labels():
  ids, names = encode_labels(["10", "2", "0", "2"])
  assert names == ["0", "2", "10"] and ids.tolist() == [2, 1, 0, 1] and ids.dtype == np.int32
  ids, names = encode_labels(["pos", "neg", "pos"])
  assert names == ["neg", "pos"] and ids.tolist() == [1, 0, 1]
  ids, _ = encode_labels(["b"], label_names=["b", "a"])
  assert ids.tolist() == [0]
  with pytest.raises(ValueError, match=r"unknown label '7' at index 1: expected one of "
                                       r"\['0', '1'\]"):
    encode_labels(["1", "7"], label_names=["0", "1"])
  with pytest.raises(ValueError, match="label at index 0 is empty"):
    encode_labels([""])


# ----------------------------------------------------------------------------- vocabulary


def test_vocabulary_build_encode_decode_roundtrip(tmp_path):
  train = ["the cat sat", "The dog sat", "a cat"]
  vocab = Vocabulary.build(train)
  assert vocab.tokens[:2] == ["<pad>", "<unk>"]
  assert vocab.tokens[2:] == ["cat", "sat", "the", "a", "dog"]  # freq desc, then token
  ids, lengths = vocab.encode(["the cat sat on a mat", "", "dog"], max_len=4)
  assert ids.dtype == np.int32 and ids.shape == (3, 4)
  assert ids[0].tolist() == [4, 2, 3, 1]  # truncated to 4; 'on' is unknown -> 1
  assert lengths.tolist() == [4, 1, 1]    # the empty text becomes one <unk>
  assert ids[1].tolist() == [1, 0, 0, 0]
  assert vocab.decode(ids[0]) == "the cat sat <unk>"
  vocab.save(tmp_path / "vocab.json")
  loaded = Vocabulary.load(tmp_path / "vocab.json")
  assert loaded == vocab and len(loaded) == 7
  assert json.loads((tmp_path / "vocab.json").read_text("utf-8"))["level"] == "word"


def test_vocabulary_min_freq_max_size_char_and_punct():
  train = ["a a a b b c", "a b d"]
  assert Vocabulary.build(train, min_freq=2).tokens[2:] == ["a", "b"]
  assert Vocabulary.build(train, max_size=3).tokens == ["<pad>", "<unk>", "a"]
  chars = Vocabulary.build(["Hi hi"], level="char", lowercase=False)
  assert chars.tokens[2:] == ["i", " ", "H", "h"]
  ids, _ = chars.encode(["hiH"], max_len=5)
  assert chars.decode(ids[0]) == "hiH"
  assert chars.token_ids("iH").tolist() == [2, 4]
  raw = Vocabulary.build([], split_punctuation=True)
  assert raw.tokenize("Great film.<br /><br />Don't miss it... 10/10!") == [
      "great", "film", ".", "don't", "miss", "it", "...", "10", "/", "10", "!"]
  assert Vocabulary.build([]).tokenize("it 's -lrb- u.s. -rrb- <br />ok") == [
      "it", "'s", "-lrb-", "u.s.", "-rrb-", "ok"]


def test_punctuation_splitting_keeps_words_whole_and_quotes_apart():
  raw = Vocabulary.build([], split_punctuation=True)
  # Combining marks are part of a word (\w does not match them; each had become a token).
  assert raw.tokenize("हिन्दी भाषा") == ["हिन्दी", "भाषा"]
  assert raw.tokenize("مُحَمَّد cafe\u0301") == ["مُحَمَّد", "cafe\u0301"]
  # An opening quote is punctuation, not the start of a clitic ("'good" had been a word);
  # clitics split off before a word stay one token, as does a typographic apostrophe.
  assert raw.tokenize("The film 'Casablanca' is 'good'.") == [
      "the", "film", "'", "casablanca", "'", "is", "'", "good", "'", "."]
  assert raw.tokenize("it 's I 'M don\u2019t re\u2010make") == [
      "it", "'s", "i", "'m", "don\u2019t", "re\u2010make"]


def test_vocabularies_saved_before_the_punctuation_rules_changed_keep_theirs():
  """A checkpoint's model trained on its vocabulary's tokens: predict() must split text as
  training did, and resume/evaluate must say why fresh tokens differ."""
  from flaxnets.training.checkpoint import data_differences
  new = Vocabulary.build(["i liked 'good' films"], split_punctuation=True)
  assert new.to_dict()["punct_rules"] == 2 and "'good" not in new.tokens
  old_dict = {k: v for k, v in new.to_dict().items() if k != "punct_rules"}  # as saved then
  old_dict["tokens"] = ["<pad>", "<unk>", "'", "'good", "films", "i", "liked"]
  old = Vocabulary.from_dict(old_dict)
  assert old.tokenize("i liked 'good' films") == ["i", "liked", "'good", "'", "films"]
  assert old.token_ids("'good'").tolist() == [3, 2]
  assert Vocabulary.from_dict(old.to_dict()).punct_rules == 1  # and stays so when saved
  assert "punct_rules" not in Vocabulary.build(["a b"]).to_dict()  # whitespace: unchanged
  diffs = data_differences({"vocab": old_dict}, {"vocab": new.to_dict()}, ())
  assert diffs == [d for d in diffs if d.startswith("vocabulary: punctuation split by rules 1 "
                                                    "(checkpoint) vs 2")] and diffs


def test_a_vocabulary_from_an_older_flaxnets_is_not_blamed_on_the_user():
  """A text checkpoint written before 2026-11-28 (no train_examples in its meta), resumed
  with the same config and data, was refused as 'built from different training data or
  settings': the vocabulary had changed because flaxnets built it differently."""
  from flaxnets.training.checkpoint import data_differences
  old = {"vocab": Vocabulary.build(["a good film", "a bad film"]).to_dict()}
  new = {"vocab": Vocabulary.build(["a good film"]).to_dict(), "train_examples": 1}
  [diff] = data_differences(old, new, ())
  assert diff.startswith("vocabulary: built from different training data or settings, or by "
                         "an older flaxnets (since 2026-11-28"), diff
  [diff] = data_differences(dict(old, train_examples=2), new, ())  # both of this flaxnets
  assert diff == "vocabulary: built from different training data or settings"


def test_text_never_maps_to_the_padding_id():
  # A literal "<pad>" in a text had become id 0 inside the sequence.
  vocab = Vocabulary.build(["good film", "bad film"])
  ids, lengths = vocab.encode(["<PAD> good film", "film <pad>"], 4)
  assert ids.tolist() == [[1, 4, 2, 0], [2, 1, 0, 0]] and lengths.tolist() == [3, 2]
  assert vocab.token_ids("<pad> film").tolist() == [1, 2]
  assert padded_lengths(ids).tolist() == lengths.tolist()


def test_text_table_reads_fields_longer_than_csvs_default_limit(tmp_path):
  long_text = " ".join(["word"] * 30000)  # 149,999 characters; csv's limit is 131,072
  for name, sep in (("train.tsv", "\t"), ("train.csv", ",")):
    (tmp_path / name).write_text(f"label{sep}sentence\n1{sep}{long_text}\n0{sep}short\n",
                                 encoding="utf-8")
    texts, labels = read_text_table(tmp_path / name)
    assert [len(t) for t in texts] == [len(long_text), 5] and labels == ["1", "0"]


def test_vocabulary_load_errors(tmp_path):
  bad = tmp_path / "bad.json"
  bad.write_text("{not json", "utf-8")
  with pytest.raises(ValueError, match=r"bad\.json is not a vocabulary file"):
    Vocabulary.load(bad)
  bad.write_text(json.dumps({"format": "flaxnets.vocabulary", "level": "word",
                             "lowercase": True, "tokens": ["<unk>", "x"]}), "utf-8")
  with pytest.raises(ValueError, match=r"bad\.json: vocabulary tokens must start with"):
    Vocabulary.load(bad)
  bad.write_text(json.dumps({"format": "flaxnets.vocabulary", "level": "word",
                             "lowercase": "yes", "tokens": []}), "utf-8")
  with pytest.raises(ValueError, match="field 'lowercase' is 'yes', expected a bool"):
    Vocabulary.load(bad)
  with pytest.raises(FileNotFoundError, match="nope.json"):
    Vocabulary.load(tmp_path / "nope.json")
  with pytest.raises(ValueError, match="id 9 is outside this vocabulary"):
    Vocabulary.build(["a"]).decode([2, 9])


def test_buckets():
  assert default_buckets(100) == (16, 32, 64, 100)
  assert default_buckets(64) == (16, 32, 64)
  assert default_buckets(10) == (10,)
  assert [bucket_length(n, (16, 32, 64)) for n in (1, 16, 17, 64, 300)] == [16, 16, 32, 64, 64]


def test_lm_windows():
  x, y = lm_windows(np.arange(11), seq_len=4)
  assert x.dtype == np.int32 and x.shape == (2, 4)
  np.testing.assert_array_equal(x, [[0, 1, 2, 3], [4, 5, 6, 7]])
  np.testing.assert_array_equal(y, x + 1)
  x, _ = lm_windows(np.arange(11), seq_len=4, stride=3)
  assert x[:, 0].tolist() == [0, 3, 6]
  with pytest.raises(ValueError, match="length 4 is too short for seq_len=4"):
    lm_windows(np.arange(4), seq_len=4)


@pytest.mark.parametrize("n", [2, 9, 12, 13])
def test_lm_eval_windows_score_every_target_once(n):
  x, y, lengths = lm_eval_windows(np.arange(1, n + 1), seq_len=4)
  real = np.arange(4)[None] < (np.full((len(x), 1), 4) if lengths is None else lengths[:, None])
  assert real.sum() == n - 1 and (lengths is None) == ((n - 1) % 4 == 0)
  np.testing.assert_array_equal(x[real], np.arange(1, n))   # each input once, in order
  np.testing.assert_array_equal(y[real], np.arange(2, n + 1))
  assert not x[~real].any() and not y[~real].any()           # padding is 0
  if n >= 5:  # the full windows are lm_windows' own
    full = (n - 1) // 4
    np.testing.assert_array_equal(x[:full], lm_windows(np.arange(1, n + 1), 4)[0][:full])
  with pytest.raises(ValueError, match="length 1 has no next-token target"):
    lm_eval_windows(np.arange(1), seq_len=4)


# ----------------------------------------------------------------------------- TFDS

_TEST_BUILDERS: dict = {}


@pytest.fixture(scope="module")
def tfds():
  mod = pytest.importorskip("tensorflow_datasets")
  if not _TEST_BUILDERS:  # registered once per process, under names no real set uses

    class FlaxnetsTestPngSet(mod.core.GeneratorBasedBuilder):
      """Images given as PNG bytes: prepares without TensorFlow."""
      VERSION = mod.core.Version("1.0.0")

      def _info(self):
        return mod.core.DatasetInfo(builder=self, features=mod.features.FeaturesDict({
            "image": mod.features.Image(shape=(6, 6, 3)), "text": mod.features.Text(),
            "label": mod.features.ClassLabel(names=["cat", "dog", "eel"]),
            "parity": mod.features.ClassLabel(names=["even", "odd"])}))

      def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(12)}

      def _generate_examples(self, n):
        for i in range(n):
          buf = io.BytesIO()
          Image.fromarray(np.full((6, 6, 3), i, np.uint8)).save(buf, format="PNG")
          buf.seek(0)
          yield i, {"image": buf, "text": f"review {i}", "label": i % 3, "parity": i % 2}

    class FlaxnetsTestNumpySet(FlaxnetsTestPngSet):
      """Images given as numpy arrays: TFDS needs TensorFlow to encode them."""

      def _generate_examples(self, n):
        for i in range(n):
          yield i, {"image": np.zeros((6, 6, 3), np.uint8), "text": "x", "label": 0,
                    "parity": 0}

    _TEST_BUILDERS.update(png="flaxnets_test_png_set", numpy="flaxnets_test_numpy_set")
  return mod


@pytest.mark.parametrize("name,kwargs,shape", [
    ("mnist", {}, (28, 28, 1)), ("cifar10", {}, (32, 32, 3)),
    ("imdb_reviews", {"text_key": "text"}, None)])
def test_load_tfds_under_mock_data(tfds, name, kwargs, shape):
  from flaxnets.data.tfds_source import load_tfds
  # AUTO falls back to USE_CODE (no metadata files ship with tfds); no TensorFlow needed.
  with tfds.testing.mock_data(num_examples=5, policy=tfds.testing.MockPolicy.USE_CODE):
    out = load_tfds(name, "train", **kwargs)
  assert out["labels"].shape == (5,) and out["labels"].dtype == np.int32
  if shape is None:
    assert len(out["texts"]) == 5 and all(isinstance(t, str) for t in out["texts"])
    assert out["label_names"] == ["neg", "pos"]
  else:
    assert out["images"].shape == (5, *shape) and out["images"].dtype == np.uint8
    assert len(out["label_names"]) == 10


def test_load_tfds_prepared_array_record(tfds, tmp_path):
  from flaxnets.data.tfds_source import load_tfds, prepare_tfds
  prepare_tfds(_TEST_BUILDERS["png"], data_dir=tmp_path)
  out = load_tfds(_TEST_BUILDERS["png"], "train", data_dir=tmp_path)
  assert out["images"].shape == (12, 6, 6, 3) and out["label_names"] == ["cat", "dog", "eel"]
  order = out["images"][:, 0, 0, 0]  # pixel value = example number (files are shuffled)
  np.testing.assert_array_equal(out["labels"], order % 3)
  out = load_tfds(_TEST_BUILDERS["png"], "train[:50%]", data_dir=tmp_path, text_key="text")
  assert len(out["texts"]) == 6 and out["texts"][0].startswith("review ")
  with pytest.raises(ValueError, match=r"split='validation'.*Unknown split"):
    load_tfds(_TEST_BUILDERS["png"], "validation", data_dir=tmp_path)
  with pytest.raises(ValueError, match=r"no feature 'img' \(image_key\)"):
    load_tfds(_TEST_BUILDERS["png"], "train", data_dir=tmp_path, image_key="img")
  with pytest.raises(FileNotFoundError, match=r"'mnist' is not prepared.*prepare_tfds"):
    load_tfds("mnist", "train", data_dir=tmp_path / "elsewhere")


def test_tfds_dataset_config_reads_the_label_column_and_an_absent_default_test(tfds,
                                                                              tmp_path):
  """label_column had been ignored ('label' read whatever it said); a missing label was
  named as the text feature; a dataset without 'test' failed with the default test_split."""
  from flaxnets.data import sources
  from flaxnets.data.tfds_source import prepare_tfds
  prepare_tfds(_TEST_BUILDERS["png"], data_dir=tmp_path)  # it has a train split only
  config = flaxnets.get_config()
  config.dataset.update(name=f"tfds:{_TEST_BUILDERS['png']}", data_dir=str(tmp_path))
  ds = sources.load_dataset(config.dataset)
  assert ds.label_names == ["cat", "dog", "eel"] and ds.test is None
  config.dataset.label_column = "parity"
  ds = sources.load_dataset(config.dataset)
  assert ds.label_names == ["even", "odd"] and ds.num_classes == 2
  order = np.concatenate([ds.train["inputs"], ds.val["inputs"]])[:, 0, 0, 0]
  labels = np.concatenate([ds.train["labels"], ds.val["labels"]])
  np.testing.assert_array_equal(labels, order % 2)  # pixel value = example number
  config.dataset.label_column = "label_category"
  with pytest.raises(ValueError, match=r"config\.dataset\.label_column='label_category': TFDS "
                                       r"dataset '.*' has no such feature; its features are"):
    sources.load_dataset(config.dataset)
  config.dataset.label_column, config.dataset.test_split = "label", "validation"
  with pytest.raises(ValueError, match=r"split='validation'.*Unknown split"):  # one named
    sources.load_dataset(config.dataset)


@pytest.mark.parametrize("name", ["mnist", "glue/sst2"])
def test_tfds_not_prepared_in_the_default_data_dir_is_one_line(tmp_path, name):
  """No ~/tensorflow_datasets at all: TFDS raised a KeyError ('splits is empty'). glue,
  whose module TFDS imports lazily, had been called an unknown dataset."""
  import subprocess
  import sys
  env = dict(os.environ, HOME=str(tmp_path), JAX_PLATFORMS="cpu")
  env.pop("TFDS_DATA_DIR", None)
  out = subprocess.run([sys.executable, "-m", "flaxnets.cli", "train",
                        f"--config.dataset.name=tfds:{name}"], capture_output=True, text=True,
                       timeout=300, env=env)
  assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
  assert f"TFDS dataset {name!r} is not prepared under" in out.stderr and "prepare_tfds" in \
      out.stderr, out.stderr
  assert f"run `flaxnets prepare tfds:{name}` once" in out.stderr  # the command README shows


def test_tfds_unknown_name(tfds):
  from flaxnets.data.tfds_source import load_tfds, prepare_tfds
  with pytest.raises(ValueError, match=r"unknown TFDS dataset 'mnsit'.*did you mean.*'mnist'"):
    load_tfds("mnsit", "train")
  with pytest.raises(ValueError, match="unknown TFDS dataset 'no_such_set'"):
    prepare_tfds("no_such_set")


@pytest.mark.skipif(importlib.util.find_spec("tensorflow") is not None,
                    reason="TensorFlow is installed")
def test_prepare_tfds_without_tensorflow_says_how_to_add_it(tfds, tmp_path):
  from flaxnets.data.tfds_source import prepare_tfds
  expected = r"(?s)needs TensorFlow.*pip install 'flaxnets\[tfds-prepare\]'"
  with pytest.raises(ImportError, match=expected):
    prepare_tfds(_TEST_BUILDERS["numpy"], data_dir=tmp_path)


# ----------------------------------------------------------------------------- real data


def test_real_sst2_and_trec6(shared_data):
  texts, raw = read_text_table(shared_data / "sst2" / "train.tsv")
  labels, names = encode_labels(raw)
  assert len(texts) == 6920 and names == ["0", "1"]
  vocab = Vocabulary.build(texts)
  ids, lengths = vocab.encode(texts, max_len=64)
  assert ids.shape == (6920, 64) and lengths.min() >= 1
  dev_texts, dev_raw = read_text_table(shared_data / "sst2" / "dev.tsv")
  assert len(dev_texts) == 872 and set(encode_labels(dev_raw, names)[0]) == {0, 1}
  texts, raw = read_text_table(shared_data / "trec6" / "train.tsv")
  labels, names = encode_labels(raw)
  assert len(texts) == 5452 and names == ["0", "1", "2", "3", "4", "5"]
  assert labels.max() == 5


def test_real_imdb_sms_and_shakespeare(shared_data):
  texts, raw = read_text_table(shared_data / "imdb" / "train.tsv.gz", text_column="text")
  assert len(texts) == 25000 and sorted(set(raw)) == ["0", "1"]
  with pytest.raises(ValueError, match=r"\['label', 'rating', 'text'\]"):
    read_text_table(shared_data / "imdb" / "train.tsv.gz")
  texts, raw = read_text_table(shared_data / "sms_spam" / "sms_spam.tsv", "text")
  assert len(texts) == 5574 and raw.count("1") == 747
  corpus = (shared_data / "tinyshakespeare" / "input.txt").read_text("utf-8")
  vocab = Vocabulary.build([corpus], level="char", lowercase=False)
  assert len(vocab) == 2 + 65
  x, y = lm_windows(vocab.token_ids(corpus), seq_len=128)
  assert x.shape == ((len(corpus) - 129) // 128 + 1, 128)
  np.testing.assert_array_equal(x[0, 1:], y[0, :-1])


@pytest.mark.slow
def test_real_cifar10_test_archive(shared_data):
  x, y, names = read_image_folder(shared_data / "cifar10_jpg" / "test.tar.gz", split="test")
  assert x.shape == (10000, 32, 32, 3) and x.dtype == np.uint8
  assert names == ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                   "ship", "truck"]
  assert np.bincount(y).tolist() == [1000] * 10


def test_image_folder_named_test_split_must_exist(tmp_path):
  from flaxnets.data import local
  _make_tree(tmp_path / "train")
  dcfg = flaxnets.get_config().dataset
  dcfg.name, dcfg.path, dcfg.val_fraction = "image_folder", str(tmp_path), 0.0
  assert local.image_folder_dataset(dcfg).test is None  # the default 'test' may be absent
  dcfg.test_split = "tset"
  with pytest.raises(ValueError, match=r"config\.dataset\.test_split='tset': not found in"):
    local.image_folder_dataset(dcfg)


def test_one_archive_with_or_without_split_folders(tmp_path):
  from flaxnets.data import local
  dcfg = flaxnets.get_config().dataset
  dcfg.name, dcfg.val_fraction = "image_folder", 0.0
  # class folders at the archive's top, as a directory may have them
  flat = _tar(_make_tree(tmp_path / "flat", n=2), tmp_path / "flat.tar.gz")
  dcfg.path = str(flat)
  ds = local.image_folder_dataset(dcfg)
  assert ds.label_names == ["cat", "dog"] and len(ds.train["labels"]) == 4 and ds.test is None
  # only a train/ folder: the default test split may be absent, as in a directory
  _make_tree(tmp_path / "split" / "train", n=2)
  dcfg.path = str(_tar(tmp_path / "split", tmp_path / "train_only.tar.gz"))
  ds = local.image_folder_dataset(dcfg)
  assert len(ds.train["labels"]) == 4 and ds.test is None
  dcfg.train_split = "training"
  with pytest.raises(ValueError, match=r"train_split='training': not found in .*'train'\]"):
    local.image_folder_dataset(dcfg)
  # a split nested in a folder, as a directory dataset takes it (was refused: "its split
  # folders are ['x']")
  _make_tree(tmp_path / "nested" / "x" / "train", n=2)
  dcfg.path = str(_tar(tmp_path / "nested", tmp_path / "nested.tar.gz"))
  dcfg.train_split = "x/train"
  ds = local.image_folder_dataset(dcfg)
  assert len(ds.train["labels"]) == 4 and ds.label_names == ["cat", "dog"]
