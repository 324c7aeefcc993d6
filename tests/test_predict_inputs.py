"""What a restored Predictor takes: sequence lengths, token ids, texts, empty batches, and
the data `evaluate` scores against; each wrong input gets one error naming it."""
import os
import shutil
import subprocess
import sys
import warnings

import numpy as np
import pytest

import flaxnets
from helpers import counting_compiles, quiet_config as _quiet


def _cli(*args):
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
  return subprocess.run([sys.executable, "-m", "flaxnets.cli", *map(str, args)],
                        capture_output=True, text=True, timeout=300, env=env)


# ---- series given per-example lengths --------------------------------------------------------
@pytest.fixture(scope="module")
def padded_series(tmp_path_factory):
  """A GRU trained on series whose steps past each length are loud noise."""
  rng = np.random.default_rng(0)
  n, t = 192, 16
  x = rng.normal(size=(n, t, 1)).astype(np.float32)
  lengths = rng.integers(3, t + 1, n).astype(np.int32)
  y = (np.array([x[i, :lengths[i]].sum() for i in range(n)]) > 0).astype(np.int32)
  for i, length in enumerate(lengths):
    x[i, length:] = 5 * rng.normal(size=(t - length, 1))
  workdir = tmp_path_factory.mktemp("lengths")
  config = _quiet(num_epochs=2, batch_size=32, **{
      "dataset.name": "arrays", "model.name": "rnn", "model.cell": "gru",
      "model.hidden_size": 8})
  flaxnets.train(config, workdir=str(workdir), data={"train": (x, y, lengths)})
  return workdir, x, lengths


def test_series_lengths_reach_the_model_after_load(padded_series, tmp_path):
  workdir, x, lengths = padded_series
  predictor = flaxnets.load(workdir)
  with_lengths = predictor.predict_proba(x[:64], seq_lengths=lengths[:64])
  # the steps past each length no longer count: other noise there changes nothing
  other = x[:64].copy()
  for i, length in enumerate(lengths[:64]):
    other[i, length:] = -other[i, length:] + 1.0
  np.testing.assert_array_equal(predictor.predict_proba(other, seq_lengths=lengths[:64]),
                                with_lengths)
  with pytest.warns(UserWarning, match=r"trained with seq_lengths, and none were given: each "
                                       r"input is read as all 16 steps"):
    without = predictor.predict_proba(x[:64])
  assert not np.allclose(without, with_lengths, atol=1e-4)  # the noise was read
  with warnings.catch_warnings():  # warned once per Predictor
    warnings.simplefilter("error")
    predictor.predict_proba(x[:2])
  # one example without its batch axis takes one length
  np.testing.assert_allclose(predictor.predict_proba(x[5], seq_lengths=lengths[5]),
                             with_lengths[5:6], rtol=1e-5)
  # the exported function takes (x, lengths) too
  from jax import export
  path = predictor.export(tmp_path / "model.jax")
  fn = export.deserialize(path.read_bytes())
  np.testing.assert_allclose(np.asarray(fn.call(x[:64], lengths[:64])), with_lengths,
                             rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match=r"seq_lengths of shape \(3,\) and dtype int32: "
                                       r"expected ints \[64\], one per input"):
    predictor.predict(x[:64], seq_lengths=lengths[:3])
  with pytest.raises(ValueError, match=r"seq_lengths span \[0, 16\]: expected lengths in "
                                       r"\[1, 16\]"):
    predictor.predict(x[:2], seq_lengths=np.array([0, 16]))


def test_describe_takes_series_and_their_lengths_from_an_npz(padded_series, tmp_path):
  """`flaxnets predict` had no way to pass lengths: it read the padding, and its warning
  advised predict(x, seq_lengths=...), which the command line cannot do."""
  workdir, x, lengths = padded_series
  predictor = flaxnets.load(workdir)
  np.savez(tmp_path / "batch.npz", inputs=x[:3], seq_lengths=lengths[:3])
  want = predictor.predict_proba(x[:3], seq_lengths=lengths[:3])
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # lengths given: no warning
    lines = predictor.describe([str(tmp_path / "batch.npz")], top=2)
  assert [line.split("\t")[0] for line in lines] == [f"{tmp_path / 'batch.npz'}#{i}"
                                                     for i in range(3)]
  for line, p in zip(lines, want):
    assert line.split("\t")[2].startswith(f"{predictor.label_names[int(np.argmax(p))]}="
                                          f"{p.max():.3f}")
  np.savez(tmp_path / "wrong.npz", x=x[:3])
  with pytest.raises(ValueError, match=r"wrong\.npz: arrays \['x'\]: expected 'inputs' and "
                                       r"optionally 'seq_lengths'"):
    predictor.describe([str(tmp_path / "wrong.npz")])
  np.save(tmp_path / "plain.npy", x[:3])
  (tmp_path / "plain.npy").rename(tmp_path / "plain.npz")  # had been a TypeError traceback
  with pytest.raises(ValueError, match=r"plain\.npz: a single array, not a \.npz file"):
    predictor.describe([str(tmp_path / "plain.npz")])


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("digits")
  flaxnets.train(_quiet(num_epochs=1), workdir=str(workdir))
  return workdir


def test_lengths_for_an_image_model_are_refused(digits_run):
  predictor = flaxnets.load(digits_run)
  with pytest.raises(ValueError, match="seq_lengths: this model reads images"):
    predictor.predict(np.zeros((2, 8, 8, 1), np.float32), seq_lengths=[8, 8])
  # no examples: the shape one would have
  assert predictor.predict_proba(np.zeros((0, 8, 8, 1))).shape == (0, 10)
  assert predictor.predict_proba([]).shape == (0, 10)
  big = np.zeros((1, 8, 8, 1))
  big[0, 0, 0, 0] = 1e200  # finite float64; float32 makes it inf (called NaN or infinity)
  with pytest.raises(ValueError, match=r"inputs hold values up to 1e\+200, beyond float32's "
                                       r"range"):
    predictor.predict(big)


# ---- token ids and texts ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def token_model(tmp_path_factory):
  rng = np.random.default_rng(0)
  ids = rng.integers(1, 9, (64, 6)).astype(np.int32)
  workdir = tmp_path_factory.mktemp("tokens")
  config = _quiet(num_epochs=1, batch_size=16, **{
      "dataset.name": "arrays", "model.name": "rnn", "model.cell": "gru",
      "model.hidden_size": 8})
  flaxnets.train(config, workdir=str(workdir), data={"train": (ids, (ids[:, 0] > 4) * 1)})
  return flaxnets.load(workdir), ids


def test_token_ids_take_one_or_two_axes(token_model, tmp_path):
  predictor, ids = token_model
  batch = predictor.predict_proba(ids[:4])
  np.testing.assert_array_equal(predictor.predict_proba(ids[:4, :, None]), batch)
  np.testing.assert_allclose(predictor.predict_proba(ids[0]), batch[:1], rtol=1e-5)
  with pytest.raises(ValueError, match=r"token ids of shape \(2, 2, 6\): expected \[batch, T\]"):
    predictor.predict(ids[:4].reshape(2, 2, 6))  # was flattened into 4 examples
  with pytest.raises(ValueError, match=r"token ids of shape \(4, 0\): expected \[batch, T\] "
                                       r"with T >= 1"):
    predictor.predict(np.zeros((4, 0), np.int32))
  assert predictor.predict_proba(np.zeros((0, 6), np.int32)).shape == (0, 2)
  assert predictor.predict_proba([]).shape == (0, 2)
  with pytest.raises(ValueError, match="text strings, but this model was trained on int token"):
    predictor.predict(["some words"])
  # given lengths override those read from the 0 padding
  short = predictor.predict_proba(ids[:4], seq_lengths=[2, 2, 2, 2])
  np.testing.assert_array_equal(short, predictor.predict_proba(
      np.concatenate([ids[:4, :2], np.zeros((4, 4), np.int32)], 1)))


def test_describe_takes_paths_and_names_what_it_cannot_read(token_model, tmp_path):
  predictor, ids = token_model
  np.save(tmp_path / "two.npy", ids[:2])
  lines = predictor.describe([tmp_path / "two.npy"])  # a Path, not only a str
  assert [line.split("\t")[0] for line in lines] == [f"{tmp_path / 'two.npy'}#{i}"
                                                     for i in range(2)]
  with pytest.raises(TypeError, match="an input of type ndarray; expected file paths or texts"):
    predictor.describe(ids[:2])
  np.save(tmp_path / "none.npy", ids[:0])
  with pytest.raises(ValueError, match=r"none\.npy: an array of shape \(0, 6\) holds no "
                                       r"examples"):
    predictor.describe([str(tmp_path / "none.npy")])
  (tmp_path / "zero.npy").write_bytes(b"")
  with pytest.raises(ValueError, match=r"zero\.npy: the file ends before its array does"):
    predictor.describe([str(tmp_path / "zero.npy")])


def test_text_model_reads_strings_only(tmp_path):
  rng = np.random.default_rng(0)
  good, bad = ["great", "fine", "lovely", "superb"], ["awful", "poor", "dull", "bad"]
  rows = [f"{i % 2}\t{' '.join(rng.choice(good if i % 2 else bad, 3))} movie"
          for i in range(96)]
  (tmp_path / "train.tsv").write_text("label\tsentence\n" + "\n".join(rows) + "\n")
  config = _quiet(num_epochs=1, **{"dataset.name": "text_table", "dataset.path": str(tmp_path),
                                   "dataset.test_split": "", "model.name": "text_cnn"})
  flaxnets.train(config, workdir=str(tmp_path / "wd"))
  predictor = flaxnets.load(tmp_path / "wd")
  texts = ["a great movie", "dull plot", "superb"]
  want = predictor.predict_proba(texts)
  # a column of strings, as read from a table, is texts (it was read as "['a great movie']")
  np.testing.assert_array_equal(predictor.predict_proba(np.array(texts)[:, None]), want)
  np.testing.assert_array_equal(predictor.predict_proba(np.array(texts)), want)
  # one text as a 0-d array, like a str (it had been a TypeError: iteration over a 0-d array)
  np.testing.assert_array_equal(predictor.predict_proba(np.array(texts[1])), want[1:2])
  with pytest.raises(ValueError, match=r"inputs\[1\] of type int: expected text strings"):
    predictor.predict(["fine", 3])
  with pytest.raises(ValueError, match=r"inputs\[0\] of type PosixPath: expected text"):
    predictor.predict([tmp_path / "train.tsv"])
  with pytest.raises(ValueError, match="seq_lengths: texts carry their own lengths"):
    predictor.predict(texts, seq_lengths=[1, 1, 1])
  assert predictor.predict_proba([]).shape == (0, 2)


def test_language_model_of_no_inputs_has_its_output_shape(tmp_path):
  corpus = tmp_path / "corpus.txt"
  corpus.write_text("to be, or not to be, that is the question.\n" * 20, encoding="utf-8")
  config = _quiet(num_epochs=1, **{"dataset.name": "text_file", "dataset.path": str(corpus),
                                   "dataset.vocab_level": "char", "dataset.seq_len": 16,
                                   "model.name": "char_lm", "model.hidden_size": 16,
                                   "model.embed_dim": 8, "model.num_layers": 1})
  flaxnets.train(config, workdir=str(tmp_path / "wd"))
  lm = flaxnets.load(tmp_path / "wd")
  one = lm.predict_proba(["to be"])
  assert one.shape == (1, 16, len(lm.vocab))
  assert lm.predict_proba([]).shape == (0,) + one.shape[1:]  # was (0, num_classes)


def test_image_rows_of_no_examples(tmp_path):
  config = _quiet(num_epochs=1, **{"model.name": "rnn", "model.hidden_size": 8})
  flaxnets.train(config, workdir=str(tmp_path / "wd"))
  rows = flaxnets.load(tmp_path / "wd")
  assert rows.predict_proba(np.zeros((0, 8, 8, 1), np.float32)).shape == (0, 10)
  assert rows.predict_proba(np.zeros((0, 8, 8), np.float32)).shape == (0, 10)
  # its export takes images too, as predict_proba does (it took rows only)
  from jax import export
  images = np.random.default_rng(0).integers(0, 17, (3, 8, 8, 1)).astype(np.float32)
  fn = export.deserialize(rows.export(tmp_path / "rows.jax").read_bytes())
  np.testing.assert_allclose(np.asarray(fn.call(images)), rows.predict_proba(images),
                             rtol=1e-5, atol=1e-6)


# ---- evaluate on data that changed since training ----------------------------------------------
def test_evaluate_refuses_data_whose_classes_changed(tmp_path):
  from PIL import Image
  rng = np.random.default_rng(0)
  root = tmp_path / "imgs"
  for split in ("train", "test"):
    for c in ("cat", "dog"):
      (root / split / c).mkdir(parents=True)
      for i in range(12):
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(
            root / split / c / f"{i}.png")
  config = _quiet(num_epochs=1, batch_size=8, **{"dataset.name": "image_folder",
                                                 "dataset.path": str(root)})
  flaxnets.train(config, workdir=str(tmp_path / "wd"))
  predictor = flaxnets.load(tmp_path / "wd")
  assert 0.0 <= predictor.evaluate("test")["accuracy"] <= 1.0
  with counting_compiles() as compiles:  # the predictor keeps its compiled eval step
    assert predictor.evaluate("train")["count"] == 22  # 24 less the 10% held out for val
  assert compiles == []
  for split in ("train", "test"):  # renamed: it scored every dog as wrong
    (root / split / "dog").rename(root / split / "hound")
  with pytest.raises(ValueError, match=r"differs from the one this checkpoint was trained on "
                                       r"\(label_names .*\['cat', 'dog'\] vs now \['cat', "
                                       r"'hound'\]\)"):
    flaxnets.load(tmp_path / "wd").evaluate("test")
  for split in ("train", "test"):  # a class more: it failed inside JAX
    (root / split / "hound").rename(root / split / "dog")
    shutil.copytree(root / split / "dog", root / split / "emu")
  out = _cli("eval", tmp_path / "wd")
  assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
  assert "num_classes (from the data): checkpoint 2 vs now 3" in out.stderr


# ---- load() and the command line ---------------------------------------------------------------
def test_step_must_be_a_whole_number(digits_run):
  for step in (2.9, True, -1, "1.5"):
    with pytest.raises(ValueError, match=rf"step={step!r}: expected 'best', 'latest' or a "
                                         "step number"):
      flaxnets.load(digits_run, step=step)


def test_cli_inputs_after_double_dash_and_a_closed_pipe(digits_run):
  out = _cli("predict", digits_run, "--", "-h")  # an input named -h, not a request for help
  assert out.returncode == 2 and "usage" not in out.stdout, out.stdout
  assert "image file '-h' does not exist" in out.stderr, out.stderr
  # the reader of stdout went away: no error, the status a shell gives SIGPIPE
  proc = subprocess.Popen([sys.executable, "-m", "flaxnets.cli", "eval", str(digits_run)],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          env=dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3"))
  proc.stdout.close()
  stderr = proc.stderr.read().decode()
  assert proc.wait(timeout=300) == 141 and "Broken pipe" not in stderr, stderr
