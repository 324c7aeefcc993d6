"""Data and config edges a user meets: settings no dataset reads, linked images in
archives, per-split archives, unread validation splits, table and corpus encodings.
Each is read, warned about, or refused with one error naming it; none is dropped."""
import gzip
import os
import subprocess
import sys
import tarfile
import warnings

import numpy as np
import pytest
from PIL import Image

import flaxnets
from flaxnets.config import ConfigError, validate
from flaxnets.data import files, sources


def _dataset_config(**changes):
  config = flaxnets.get_config()
  for key, value in changes.items():
    config.dataset[key] = value
  return config


def _images(folder, classes=("a", "b"), n=4, seed=0):
  rng = np.random.default_rng(seed)
  for c in classes:
    (folder / c).mkdir(parents=True)
    for i in range(n):
      Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(folder / c / f"{i}.png")


# ---- config ------------------------------------------------------------------------------
@pytest.mark.parametrize("changes,message", [
    ({"dataset.path": "/data/pets"},  # dataset.name left at 'digits': it trained on digits
     r"config\.dataset\.path='/data/pets': only \('image_folder', 'text_table', 'text_file'\) "
     r"read a path, and config\.dataset\.name='digits'"),
    ({"dataset.data_dir": "/data/tfds"},
     r"config\.dataset\.data_dir='/data/tfds': only tfds:<name> datasets read a data_dir"),
    ({"seed": -1}, r"config\.seed=-1: expected an integer in \[0, 2\*\*32\)"),
    ({"seed": 2**63}, r"config\.seed=9223372036854775808: expected an integer in"),
    ({"optimizer.warmup_epochs": float("inf")},
     r"config\.optimizer\.warmup_epochs=inf: expected a finite number >= 0"),
    ({"optimizer.learning_rate": float("inf")},
     r"config\.optimizer\.learning_rate=inf: expected a finite number > 0"),
    ({"optimizer.clip_norm": float("nan")}, r"config\.optimizer\.clip_norm=nan: expected a finite"),
    # Text settings on data that has no text: had been ignored without a word.
    ({"dataset.name": "arrays", "dataset.max_len": 10},
     r"config\.dataset\.max_len=10: only text_table, tfds:<name> datasets read it, and "
     r"config\.dataset\.name='arrays'; truncate or pad the arrays yourself \(or max_len=0\)"),
    ({"dataset.name": "text_file", "dataset.path": "c.txt", "dataset.max_len": 64},
     r"config\.dataset\.max_len=64: only .*name='text_file'; a text_file's windows are "
     r"dataset\.seq_len tokens \(or max_len=0\)"),
    ({"dataset.min_freq": 5}, r"config\.dataset\.min_freq=5: only text_table, text_file, "
                              r"tfds:<name> datasets read it, and config\.dataset\.name="
                              r"'digits'"),
    ({"dataset.name": "mnist1d", "dataset.seq_len": 40},
     r"config\.dataset\.seq_len=40: only text_file datasets read it"),
    ({"dataset.name": "text_table", "dataset.path": "t", "dataset.seq_len": 40},
     r"seq_len=40: .*; a text table's texts are cut at dataset\.max_len \(or seq_len=128\)"),
    # Split settings a dataset does not read: digits kept its 179 val and 360 test examples.
    ({"dataset.val_fraction": 0.0},
     r"config\.dataset\.val_fraction=0\.0: only arrays, mnist1d, image_folder, text_table, "
     r"text_file, tfds:<name> datasets read it, and config\.dataset\.name='digits'; digits' "
     r"split is fixed \(1258 train / 179 val / 360 test\) \(or val_fraction=0\.1\)"),
    ({"dataset.test_split": ""}, r"config\.dataset\.test_split='': only image_folder, "
                                 r"text_table, tfds:<name> datasets read it.*digits' split"),
    ({"dataset.name": "mnist1d", "dataset.val_split": "test"},
     r"config\.dataset\.val_split='test': .*; mnist1d's test split is fixed"),
    ({"dataset.name": "arrays", "dataset.test_split": "holdout"},
     r"test_split='holdout': .*name='arrays'; pass the splits as data="),
    ({"dataset.name": "image_folder", "dataset.path": "p", "dataset.text_column": "text"},
     r"config\.dataset\.text_column='text': only text_table, tfds:<name> datasets read it, "
     r"and config\.dataset\.name='image_folder'; set dataset\.name"),
    ({"optimizer.name": "adam", "optimizer.nesterov": True},
     r"config\.optimizer\.nesterov=True: only sgd takes Nesterov momentum, and "
     r"config\.optimizer\.name='adam'"),
    ({"optimizer.name": "sgd", "optimizer.nesterov": True, "optimizer.momentum": 0.0},
     r"config\.optimizer\.nesterov=True: Nesterov momentum needs momentum > 0"),  # was plain SGD
])
def test_config_values_nothing_can_use_are_refused(changes, message):
  config = flaxnets.get_config()
  for dotted, value in changes.items():
    *parents, leaf = dotted.split(".")
    node = config
    for p in parents:
      node = node[p]
    node[leaf] = value
  with pytest.raises(ConfigError, match=message):
    validate(config)


def test_text_settings_pass_for_the_datasets_that_read_them():
  for name, key, value in (("tfds:imdb_reviews", "max_len", 200), ("tfds:glue/sst2", "min_freq", 2),
                           ("text_file", "seq_len", 64), ("text_table", "max_len", 50)):
    config = flaxnets.get_config()
    config.dataset.name, config.dataset[key] = name, value
    validate(config)


def test_cli_names_a_bad_seed_in_one_line():
  out = subprocess.run([sys.executable, "-m", "flaxnets.cli", "train", "--config.seed=-5"],
                       capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
  assert "config.seed=-5: expected an integer in [0, 2**32)" in out.stderr, out.stderr


# ---- arrays ------------------------------------------------------------------------------
@pytest.mark.parametrize("label_names", [{0: "cat", 1: "dog", 2: "bird"}, "abc",
                                         [["cat"], ["dog"], ["bird"]]])
def test_label_names_must_be_a_list_in_id_order(label_names):
  x, y = np.zeros((6, 4), np.float32), np.arange(6) % 3
  with pytest.raises(ValueError, match=r"label_names=.*: expected a list of names, the name "
                                       r"of class id i at position i"):
    sources.from_arrays((x, y), label_names=label_names)
  assert sources.from_arrays((x, y), label_names=("cat", "dog", "bird")).label_names == [
      "cat", "dog", "bird"]


def test_arrays_refuse_what_they_would_mangle():
  ids = np.arange(1, 41).reshape(10, 4) % 7 + 1
  y = np.arange(10) % 2
  with pytest.raises(ValueError, match=r"data\['val'\] inputs of dtype float32: expected int "
                                       r"token ids like data\['train'\]"):
    sources.from_arrays((ids, y), (ids.astype(np.float32), y))  # failed after an epoch
  with pytest.raises(ValueError, match=r"data\['train'\] inputs of dtype complex64: expected "
                                       r"real numbers"):
    sources.from_arrays((np.ones((10, 4), np.complex64), y))  # lost its imaginary part
  big = np.where(np.arange(10) == 3, 2**32 + 1, y).astype(np.int64)
  with pytest.raises(ValueError, match=r"labels span \[0, 4294967297\]"):
    sources.from_arrays((np.ones((10, 4), np.float32), big))  # trained as label 1


# ---- image folders and archives -------------------------------------------------------------
def test_linked_images_in_an_archive_are_images(tmp_path):
  root = tmp_path / "links"
  _images(root, classes=("a", "b"), n=3)
  for i in range(3):  # class b is a's hard links: tar stores them as link members
    (root / "b" / f"{i}.png").unlink()
    os.link(root / "a" / f"{i}.png", root / "b" / f"{i}.png")
  os.symlink("../a/0.png", root / "b" / "sym.png")
  archive = tmp_path / "links.tar"
  with tarfile.open(archive, "w") as tf:
    tf.add(root / "a", "a")
    tf.add(root / "b", "b")
  assert any(m.islnk() for m in tarfile.open(archive).getmembers())
  want = files.read_image_folder(root)
  got = files.read_image_folder(archive)  # class b was dropped: one class left
  assert got[2] == want[2] == ["a", "b"]
  np.testing.assert_array_equal(got[1], want[1])
  np.testing.assert_array_equal(got[0], want[0])
  with tarfile.open(tmp_path / "dangling.tar", "w") as tf:
    tf.add(root / "a", "a")
    link = tarfile.TarInfo("b/gone.png")
    link.type, link.linkname = tarfile.SYMTYPE, "../nowhere/x.png"
    tf.addfile(link)
  with pytest.raises(ValueError, match=r"1 link member\(s\) name no file in it, e\.g\. "
                                       r"'b/gone\.png' -> 'nowhere/x\.png'"):
    files.read_image_folder(tmp_path / "dangling.tar")


def test_an_image_below_its_class_folder_is_named(tmp_path):
  """The message had named no file and offered the class 'cat' as a split=."""
  _images(tmp_path / "pets", classes=("cat", "dog"), n=1)
  _images(tmp_path / "pets" / "cat", classes=("closeups",), n=1)
  (tmp_path / "pets" / "__MACOSX").mkdir()  # resource forks: not an empty class
  with pytest.raises(ValueError, match=r"class folders sit under different parent folders, "
                                       r"e\.g\. 'cat/0\.png', 'cat/closeups/0\.png': "
                                       r"expected <class>/<image>, each image directly in "
                                       r"its class folder$"):
    files.read_image_folder(tmp_path / "pets")
  (tmp_path / "pets" / "cat" / "closeups" / "0.png").unlink()
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # __MACOSX had been warned about as an empty class
    assert files.read_image_folder(tmp_path / "pets")[2] == ["cat", "dog"]


def test_a_linked_class_folder_in_an_archive_is_read_as_the_folder_reads_it(tmp_path):
  """train/c -> ../extra/sub: the directory reader follows it; the archive had dropped
  class c without a word. Also a link to that link, a target under a hidden folder, an
  image link inside the linked folder; link loops are walked once; a link to a text file
  is skipped; a folder link out of the archive is warned about."""
  root = tmp_path / "tree"
  _images(root / "train", classes=("a", "b"), n=2)
  _images(root / "extra", classes=("sub",), n=3, seed=1)
  _images(root / ".cache", classes=("hid",), n=1, seed=2)
  os.link(root / "extra" / "sub" / "0.png", root / "extra" / "sub" / "9.png")
  os.symlink("../extra/sub", root / "train" / "c")
  os.symlink("c", root / "train" / "d")
  os.symlink("../.cache/hid", root / "train" / "e")
  os.symlink("../../notes.txt", root / "train" / "b" / "readme")
  (root / "notes.txt").write_text("not an image")
  os.symlink("..", root / "train" / "a" / "loop")  # os.walk had followed it round and round
  for one, other in (("x", "y"), ("y", "x")):  # x/to_y/to_x/to_y/...: a longer loop
    (root / "train" / one).mkdir(exist_ok=True)
    os.symlink(f"../{other}", root / "train" / one / f"to_{other}")
  with pytest.warns(UserWarning, match=r"class folder\(s\) \['x', 'y'\] hold no"):
    got_dir = files.read_image_folder(root / "train")
  assert got_dir[2] == ["a", "b", "c", "d", "e"]
  assert np.bincount(got_dir[1]).tolist() == [2, 2, 4, 4, 1]
  archive = tmp_path / "tree.tar"
  with tarfile.open(archive, "w") as tf:
    tf.add(root, ".")  # tarfile stores links as link members; it does not follow them
  assert sum(m.issym() for m in tarfile.open(archive).getmembers()) == 7
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    got = files.read_image_folder(archive, split="train")
  assert got[2] == got_dir[2]
  np.testing.assert_array_equal(got[1], got_dir[1])
  np.testing.assert_array_equal(got[0], got_dir[0])
  with tarfile.open(tmp_path / "out.tar", "w") as tf:
    tf.add(root / "train" / "a", "train/a", recursive=False)
    tf.add(root / "train" / "a" / "0.png", "train/a/0.png")
    tf.add(root / "train" / "c", "train/c")  # its target, extra/sub, is not in this archive
  with pytest.warns(UserWarning, match=r"1 link member\(s\) name nothing inside it, e\.g\. "
                                       r"'train/c' -> 'extra/sub'"):
    assert files.read_image_folder(tmp_path / "out.tar", split="train")[2] == ["a"]


@pytest.mark.parametrize("mode,inner", [("w:gz", "."), ("w:bz2", "train")])
def test_a_split_archive_reads_with_or_without_its_top_folder(tmp_path, mode, inner):
  _images(tmp_path / "src" / "train")
  data = tmp_path / "data"
  data.mkdir()
  suffix = ".tar.gz" if mode == "w:gz" else ".tar.bz2"
  with tarfile.open(data / f"train{suffix}", mode) as tf:  # `tar -C train .` or `-C src train`
    tf.add(tmp_path / "src" / "train", inner)
  ds = sources.load_dataset(_dataset_config(name="image_folder", path=str(data),
                                            val_fraction=0.25).dataset)
  assert ds.label_names == ["a", "b"] and len(ds.train["labels"]) + len(ds.val["labels"]) == 8


def test_an_unread_val_folder_is_named_and_a_missing_named_split_refused(tmp_path):
  for split in ("train", "val", "test"):
    _images(tmp_path / "tvt" / split)
  config = _dataset_config(name="image_folder", path=str(tmp_path / "tvt"))
  with pytest.warns(UserWarning, match=r"has a 'val' split, but config\.dataset\.val_split='' "
                                       r"holds out 0\.1 of train .*set "
                                       r"config\.dataset\.val_split='val'"):
    sources.load_dataset(config.dataset)
  config.dataset.val_split = "val"
  assert len(sources.load_dataset(config.dataset).val["labels"]) == 8
  _images(tmp_path / "flat")  # class folders at the top: no split can be named
  config = _dataset_config(name="image_folder", path=str(tmp_path / "flat"),
                           test_split="holdout")
  with pytest.raises(ValueError, match=r"config\.dataset\.test_split='holdout': .* holds class "
                                       r"folders, not split folders"):
    sources.load_dataset(config.dataset)


def test_bmp_gif_and_webp_images_are_read(tmp_path):
  rng = np.random.default_rng(0)
  pixels = rng.integers(0, 256, (4, 8, 8, 3), dtype=np.uint8)
  (tmp_path / "a").mkdir()
  for i, ext in enumerate(("png", "bmp", "webp")):  # lossless: the same pixels back
    kwargs = {"lossless": True} if ext == "webp" else {}
    Image.fromarray(pixels[i]).save(tmp_path / "a" / f"{i}.{ext}", **kwargs)
  Image.fromarray(pixels[3]).convert("P").save(tmp_path / "a" / "3.gif")
  x, y, names = files.read_image_folder(tmp_path)
  assert x.shape == (4, 8, 8, 3) and names == ["a"]  # the three were skipped without a word
  np.testing.assert_array_equal(x[:3], pixels[:3])


# ---- text tables and corpora ----------------------------------------------------------------
def test_table_label_errors_name_the_file_and_line(tmp_path):
  (tmp_path / "train.csv").write_text("label,sentence\n0,good\n1,bad\n")
  (tmp_path / "test.csv").write_text("label,sentence\n0,fine\n\n1,meh\n2,odd\n")
  config = _dataset_config(name="text_table", path=str(tmp_path))
  with pytest.raises(ValueError, match=rf"unknown label '2' at {tmp_path / 'test.csv'}: line 5:"
                                       r" expected one of \['0', '1'\]"):
    sources.load_dataset(config.dataset)
  (tmp_path / "test.csv").write_text("label,sentence\n0,fine\n,meh\n")
  with pytest.raises(ValueError, match=rf"label at {tmp_path / 'test.csv'}: line 3 is empty"):
    sources.load_dataset(config.dataset)


def test_table_with_an_empty_text_column_names_the_columns(tmp_path):
  rows = "".join(f"{i % 2},,some review {i}\n" for i in range(10))
  (tmp_path / "train.csv").write_text("label,sentence,review\n" + rows)
  config = _dataset_config(name="text_table", path=str(tmp_path))
  with pytest.raises(ValueError, match=r"the text column 'sentence' is empty in all 10 rows; "
                                       r"columns found: \['label', 'sentence', 'review'\]"):
    sources.load_dataset(config.dataset)
  config.dataset.text_column = "review"
  assert sources.load_dataset(config.dataset).num_classes == 2


def test_an_unread_dev_table_is_named(tmp_path):
  rows = "".join(f"{i % 2}\tword{i % 3} good\n" for i in range(20))
  for name in ("train", "dev"):
    (tmp_path / f"{name}.tsv").write_text("label\tsentence\n" + rows)
  with pytest.warns(UserWarning, match=r"has a 'dev' split, but config\.dataset\.val_split=''"):
    sources.load_dataset(_dataset_config(name="text_table", path=str(tmp_path)).dataset)


def test_text_corpus_encodings(tmp_path):
  text = "to be or not to be\n" * 30
  config = _dataset_config(name="text_file", vocab_level="char", seq_len=8)
  (tmp_path / "plain.txt").write_text(text, encoding="utf-8")
  config.dataset.path = str(tmp_path / "plain.txt")
  plain = sources.load_dataset(config.dataset)
  (tmp_path / "bom.txt").write_bytes(("\ufeff" + text).encode("utf-8"))
  (tmp_path / "corpus.txt.gz").write_bytes(gzip.compress(text.encode("utf-8")))
  for name in ("bom.txt", "corpus.txt.gz"):  # a BOM was a token; .gz failed to decode
    config.dataset.path = str(tmp_path / name)
    got = sources.load_dataset(config.dataset)
    assert got.vocab.tokens == plain.vocab.tokens, name
    np.testing.assert_array_equal(got.train["inputs"], plain.train["inputs"])
  (tmp_path / "latin1.txt").write_bytes(("caf\u00e9 " * 50).encode("latin-1"))
  config.dataset.path = str(tmp_path / "latin1.txt")
  with pytest.raises(ValueError, match=r"latin1\.txt' is not UTF-8 text .*: expected a UTF-8"):
    sources.load_dataset(config.dataset)


def test_labels_with_an_unused_class_id_or_a_score_column_warn(tmp_path):
  x = np.zeros((12, 4), np.float32)
  with pytest.warns(UserWarning, match=r"labels span \[1, 3\], so there are 4 classes, but "
                                       r"class id\(s\) \[0\] have no examples \(ids that start "
                                       r"at 1: pass labels - 1\)"):
    sources.from_arrays((x, np.arange(12) % 3 + 1))
  rows = "".join(f"{0.5 + i / 7:.3f},review {i}\n" for i in range(40))
  (tmp_path / "train.csv").write_text("label,sentence\n" + rows)
  config = _dataset_config(name="text_table", path=str(tmp_path))
  with pytest.warns(UserWarning, match=r"the label column 'label' holds 40 distinct values in "
                                       r"40 rows .* Is it a score or an id\?"):
    sources.load_dataset(config.dataset)


@pytest.mark.parametrize("model,field,value,message", [
    ("simple_cnn", "num_classes", None, r"config\.model\.num_classes=None: expected 3"),
    ("vgg", "bn_axis_name", "batch", r"config\.model\.bn_axis_name='batch': the trainer sets it"),
    ("text_cnn", "kernel_sizes", (), r"config\.model\.kernel_sizes=\(\): expected a non-empty"),
])
def test_model_fields_the_trainer_owns_or_needs_are_named(model, field, value, message):
  """They had failed inside the loss (a shape error), in JAX (an unbound axis name) or in
  a concatenate of nothing."""
  x = (np.arange(96).reshape(12, 8) % 5 + 1 if model == "text_cnn"
       else np.zeros((12, 8, 8, 1), np.float32))
  config = flaxnets.get_config()
  config.progress, config.num_epochs, config.dataset.name = False, 1, "arrays"
  config.model.name = model
  config.model[field] = value
  with pytest.raises(ConfigError, match=message):
    flaxnets.train(config, data={"train": (x, np.arange(12) % 3)})


# ---- degenerate arrays ------------------------------------------------------------------------
def test_float64_inputs_past_float32s_range_are_refused():
  """1e200 passed the finite check in float64 and became inf in float32: a NaN loss blamed
  on the learning rate, or a test split scored on infinities."""
  x = np.random.default_rng(0).normal(size=(20, 8))
  y = np.arange(20) % 2
  x[3, 2] = 1e200
  with pytest.raises(ValueError, match=r"data\['train'\] inputs hold values up to 1e\+200, "
                                       r"beyond float32's range"):
    sources.from_arrays((x, y))
  with pytest.raises(ValueError, match=r"data\['test'\] inputs hold values up to 1e\+39"):
    sources.from_arrays((x[:10] * 0, y[:10]), test=(np.full((4, 8), 1e39), y[:4]))


def test_a_constant_channel_is_centred_not_scaled():
  """Its std had been clamped to 1e-6: any other value met later was multiplied by 1e6."""
  from flaxnets.data import pipeline
  x = np.random.default_rng(0).normal(size=(50, 6, 2)).astype(np.float32)
  x[..., 1] = 1.0
  stats = pipeline.input_stats({"inputs": x}, "series")
  assert stats["std"][1] == 1.0 and stats["mean"][1] == 1.0
  assert 0.5 < stats["std"][0] < 2.0
  x[..., 1] = 0.0  # a blank channel
  assert pipeline.input_stats({"inputs": x}, "series")["std"][1] == 1.0
  x[..., 1] = 3e-8 * x[..., 0]  # a real signal in small units is scaled, not taken as constant
  assert pipeline.input_stats({"inputs": x}, "series")["std"][1] <= 1e-6  # its floor


def test_classes_without_training_examples_are_named():
  x = np.random.default_rng(0).normal(size=(30, 8)).astype(np.float32)
  y = np.arange(30) % 2
  with pytest.warns(UserWarning, match=r"class\(es\) \['2'\] have examples in val or test but "
                                       r"none in train"):
    sources.from_arrays((x, y), test=(x[:4], np.full(4, 2)))
  # label_names past the labels: a head for a class with no examples had trained unsaid
  with pytest.warns(UserWarning, match=r"label_names has 3 names, but class\(es\) \['bird'\] "
                                       r"have no examples"):
    sources.from_arrays((x, y), label_names=["cat", "dog", "bird"])
  with pytest.raises(ValueError, match=r"labels span \[0, 1\]: expected ids in \[0, 1\), one "
                                       r"per name of label_names \(1\)"):
    sources.from_arrays((x, y), label_names=["cat"])


def test_one_class_is_refused():
  x = np.random.default_rng(0).normal(size=(40, 8)).astype(np.float32)
  config = flaxnets.get_config()
  config.progress, config.dataset.name, config.model.name = False, "arrays", "rnn"
  with pytest.raises(ValueError, match=r"dataset 'arrays' has 1 class \('0'\): expected at "
                                       r"least 2 classes"):
    flaxnets.train(config, data={"train": (x, np.zeros(40, np.int32))})


def test_inputs_and_labels_that_are_not_numbers_say_what_they_hold():
  y = np.arange(6) % 2
  rows = np.array([[1.0, None], [2.0, 3.0]] * 3, dtype=object)
  with pytest.raises(ValueError, match=r"it holds missing values \(None, NaN or pandas\.NA\)"):
    sources.from_arrays((rows, y))
  rows[0, 1] = "n/a"
  with pytest.raises(ValueError, match=r"it holds text such as 'n/a'"):
    sources.from_arrays((rows, y))
  rows[0, 1] = float("nan")
  with pytest.raises(ValueError, match=r"it holds missing values \(None, NaN or pandas\.NA\)"):
    sources.from_arrays((rows, y))
  mixed = np.array([[1, 2.5, True]] * 6, dtype=object)  # pandas' .values of mixed columns
  with pytest.raises(ValueError, match=r"numbers of mixed types: pass x\.astype\(np\.float32\)"):
    sources.from_arrays((mixed, y))
  labels = np.array([0.0, 1.0, np.nan, 1.0, 0.0, 1.0])
  with pytest.raises(ValueError, match=r"1 NaN label\(s\): missing labels\?"):
    sources.from_arrays((np.zeros((6, 4), np.float32), labels))
  ids = np.ones((6, 5), np.int64)
  ids[2, 1] = 3_000_000_001  # had failed inside a jitted call, naming neither data nor id
  with pytest.raises(ValueError, match=r"data\['train'\] token ids go up to 3000000001"):
    sources.from_arrays((ids, y))


def test_warnings_are_attributed_to_the_users_call():
  """They had pointed inside flaxnets, and Python shows a warning once per place: in a
  notebook, training again on the same data said nothing the second time."""
  x = np.random.default_rng(0).normal(size=(30, 8)).astype(np.float32)
  y = np.arange(30) % 3 * 2  # ids 0, 2, 4: 1 and 3 have no examples
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("default")
    sources.from_arrays((x, y))
    sources.from_arrays((x, y))
  assert [w.filename for w in caught] == [__file__, __file__], [str(w) for w in caught]
  assert "class id(s) [1, 3] have no examples" in str(caught[0].message)
  # Nor once per line of the user's: a loop over folds (or models) warned for the first only.
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("default")
    for _ in range(2):
      sources.from_arrays((x, y))
  assert [w.filename for w in caught] == [__file__, __file__], [str(w) for w in caught]
  with warnings.catch_warnings(record=True) as caught:  # the user's own filters still apply
    warnings.simplefilter("once")
    for _ in range(2):
      sources.from_arrays((x, y))
  assert len(caught) == 1, [str(w) for w in caught]


def test_text_labels_that_look_alike_are_warned():
  """'1' and '1.0' (two spreadsheets' exports), or a 'NaN' label, had each become a class."""
  with pytest.warns(UserWarning, match=r"labels \['1', '1\.0'\] read as the same number but "
                                       r"are 2 different classes"):
    _, names = files.encode_labels(["0", "1", "1.0", "0"])
  assert names == ["0", "1", "1.0"]  # still as written: the warning says how to fix it
  with pytest.warns(UserWarning, match=r"label 'NaN' looks like a missing value"):
    files.encode_labels(["pos", "neg", "NaN"])
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    files.encode_labels(["0", "1", "2", "10"])
    files.encode_labels(["FAVOR", "AGAINST", "NONE"])  # SemEval stance: a real class
