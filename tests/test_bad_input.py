"""Bad input raises one clear error where it enters; nothing trains on it or is lost."""
import json
import subprocess
import sys

import numpy as np
import pytest

import flaxnets
from flaxnets import config as config_lib
from flaxnets.config import ConfigError, validate
from flaxnets.data import sources
from helpers import quiet_config as _quiet


def _xy(n=40, shape=(8, 8, 1), classes=3, seed=0):
  rng = np.random.RandomState(seed)
  return rng.rand(n, *shape).astype(np.float32), (np.arange(n) % classes).astype(np.int32)


# ---- numpy arrays --------------------------------------------------------------------------
def test_labels_n_by_1_are_class_ids():
  x, y = _xy()
  ds = sources.from_arrays((x, y[:, None]))
  assert ds.train["labels"].shape == (40,) and ds.num_classes == 3
  np.testing.assert_array_equal(ds.train["labels"], y)


@pytest.mark.parametrize("make,message", [
    (lambda x, y: ((x, np.eye(3, dtype=np.int32)[y]),),
     r"data\['train'\] labels of shape \(40, 3\): expected class ids \[N\]"),
    (lambda x, y: ((x, y), None, (x[:0], y[:0])), r"data\['test'\]: no examples"),
    (lambda x, y: ((np.where(np.arange(40)[:, None, None, None] == 3, np.nan, x), y),),
     r"data\['train'\] inputs: 1 example\(s\) hold NaN or infinity"),
    (lambda x, y: ((x, y), None, (x[:, :7], y)),
     r"split 'test': inputs of shape \(7, 8, 1\) per example; expected \(8, 8, 1\)"),
    (lambda x, y: ((x, np.eye(3, dtype=np.float32)[y]),),
     r"labels of dtype float32 and shape \(40, 3\): expected integer class ids \[N\] "
     r"\(for one-hot labels pass labels\.argmax\(-1\)\)"),
    (lambda x, y: ((x, y.astype(np.float64)),),
     r"labels of dtype float64 and shape \(40,\): .*\(whole numbers: pass labels\.astype"),
    (lambda x, y: ((x,),), r"data\['train'\]: expected a tuple .*, got a tuple of 1"),
    (lambda x, y: (([[1, 2], [3]], y[:2]),), r"inputs: rows of different lengths"),
    (lambda x, y: ((np.array([[1, 2], [3]], dtype=object), y[:2]),),
     r"inputs of dtype object and shape \(2,\): expected a numeric array"),
    (lambda x, y: ((np.array(["a b", "c d"]), y[:2]),),
     r"inputs of dtype <U3 .*config\.dataset\.name='text_table'"),
])
def test_bad_arrays_raise(make, message):
  x, y = _xy()
  with pytest.raises(ValueError, match=message):
    sources.from_arrays(*make(x, y))


@pytest.mark.parametrize("model,x,message", [
    ("simple_cnn", np.zeros((40, 8, 8), np.float32),
     r"gives series inputs of shape \(8, 8\) per example; the model reads image; for "
     r"grayscale images pass them with a channel axis, x\[\.\.\., None\] \(\(8, 8, 1\)\)"),
    ("simple_cnn", np.zeros((40, 64), np.uint8),
     r"gives tokens inputs .*read as token ids: pass numbers as floats, x\.astype\(np\.float32\)"
     r" and images as \[N, H, W, C\]"),
    # used to fail inside jnp.max over an empty pooled axis
    ("fast_cnn", np.zeros((40, 8, 8, 1), np.float32),
     r"fast_cnn: images of 8x8 px; expected at least 9x9"),
])
def test_inputs_the_model_cannot_read_say_what_to_pass(model, x, message):
  config = _quiet(**{"dataset.name": "arrays", "model.name": model, "num_epochs": 1})
  with pytest.raises(ValueError, match=message):
    flaxnets.train(config, data={"train": (x, np.arange(40) % 2)})


def test_hints_on_how_to_pass_arrays_are_for_arrays_only():
  import dataclasses
  y = np.arange(40) % 2
  series = sources.from_arrays((np.zeros((40, 40), np.float32), y))  # (40, 1), like mnist1d
  with pytest.raises(ValueError, match=r"per example; the model reads image$"):
    sources.adapt(series, ("image",))
  tokens = sources.from_arrays((np.ones((40, 6), np.int32), y))
  with pytest.raises(ValueError, match=r"pass numbers as floats"):
    sources.adapt(tokens, ("image",))
  with pytest.raises(ValueError, match=r"per example; the model reads image$"):
    sources.adapt(dataclasses.replace(tokens, name="reviews.csv"), ("image",))  # text


def test_bfloat16_inputs_are_numbers(tmp_path):
  import jax.numpy as jnp
  from flaxnets.training import checkpoint
  x, y = _xy()
  ds = sources.from_arrays((x.astype(jnp.bfloat16), y))  # was "expected a numeric array"
  assert ds.input_kind == "image" and ds.train["inputs"].dtype == jnp.bfloat16
  # the checkpoint's digest of them (memoryview had refused ml_dtypes' bfloat16)
  digest = checkpoint.split_digest(ds.train)
  assert digest == checkpoint.split_digest({k: v.copy() for k, v in ds.train.items()})
  changed = dict(ds.train, inputs=ds.train["inputs"].copy())
  changed["inputs"][0, 0, 0, 0] += 1
  assert checkpoint.split_digest(changed) != digest
  # Fortran-ordered and strided arrays: the same bytes in C order give the same digest
  assert checkpoint.split_digest({"a": np.asfortranarray(x)}) == checkpoint.split_digest(
      {"a": x.copy()})
  config = _quiet(num_epochs=1, batch_size=32, **{"dataset.name": "arrays"})
  flaxnets.train(config, str(tmp_path), data={"train": (x.astype(jnp.bfloat16), y)})
  # ... and the model predicts on what it trained on (had been "expected numbers")
  predictor = flaxnets.load(tmp_path)
  np.testing.assert_array_equal(predictor.predict_proba(x.astype(jnp.bfloat16)),
                                predictor.predict_proba(x.astype(jnp.bfloat16).astype(np.float32)))
  # A NaN row is refused where it enters, as in float32 (it had trained into a "divergence")
  bad = x.astype(jnp.bfloat16)
  bad[3, 0, 0, 0] = np.nan
  with pytest.raises(ValueError, match=r"data\['train'\] inputs: 1 example\(s\) hold NaN"):
    sources.from_arrays((bad, y))
  with pytest.raises(ValueError, match=r"inputs: 1 example\(s\) hold NaN or infinity"):
    predictor.predict(bad)


def test_evaluate_names_what_it_was_given():
  with pytest.raises(TypeError, match=r"result: expected the TrainResult .*got NoneType"):
    flaxnets.evaluate(None)
  from flaxnets.inference import Predictor
  predictor = Predictor.__new__(Predictor)
  with pytest.raises(TypeError, match=r"got Predictor \(call its own \.evaluate\(split\)\)"):
    flaxnets.evaluate(predictor)  # a loaded workdir


def test_bad_sequence_lengths_and_token_ids_raise():
  ids = np.random.RandomState(0).randint(1, 9, (20, 6)).astype(np.int32)
  y = np.arange(20) % 2
  with pytest.raises(ValueError, match=r"seq_lengths of shape \(19,\).*expected ints \[20\]"):
    sources.from_arrays((ids, y, np.full(19, 6)))
  with pytest.raises(ValueError, match=r"seq_lengths span \[0, 6\]: expected lengths in \[1, 6\]"):
    sources.from_arrays((ids, y, np.arange(20) % 7))
  with pytest.raises(ValueError, match=r"token ids go down to -1: expected ids >= 0"):
    sources.from_arrays((np.where(ids == 8, -1, ids), y))
  # lengths on some splits only: the others had been scored on their padding, silently
  series = np.random.RandomState(0).rand(20, 6, 1).astype(np.float32)
  lengths = np.full(20, 4)
  with pytest.raises(ValueError, match=r"data\['val'\] has no seq_lengths but data\['train'\] "
                                       r"has: expected \(x, y, seq_lengths\) for every split"):
    sources.from_arrays((series, y, lengths), (series, y))
  with pytest.raises(ValueError, match=r"data\['train'\] has no seq_lengths but data\['test'\]"):
    sources.from_arrays((series, y), test=(series, y, lengths))
  assert "seq_lengths" in sources.from_arrays((series, y, lengths), val_fraction=0.25).val
  # token ids need none: their lengths come from the 0 padding
  ids[:, 4:] = 0
  split = sources.from_arrays((ids, y, np.full(20, 4)), test=(ids, y)).test
  assert split["seq_lengths"].tolist() == [4] * 20


def test_unlabelled_split_from_any_source_is_refused():
  # TFDS test splits such as GLUE's mark missing labels -1; one-hot of -1 scores 0.
  from flaxnets.data.types import Dataset
  split = lambda labels: {"inputs": np.zeros((len(labels), 4), np.float32),
                          "labels": np.asarray(labels, np.int32)}
  with pytest.raises(ValueError, match=r"split 'test': 3 label\(s\) outside \[0, 2\) "
                     r"\(e\.g\. -1\); a split without labels .*\.test_split=''\)"):
    Dataset(train=split([0, 1]), val=None, test=split([-1, -1, -1]), num_classes=2,
            label_names=["a", "b"], input_kind="series", name="glue")
  with pytest.raises(ValueError, match=r"split 'train': 1 label\(s\) outside \[0, 2\) "
                     r"\(e\.g\. 2\)$"):
    Dataset(train=split([0, 2]), val=None, test=None, num_classes=2,
            label_names=["a", "b"], input_kind="series", name="x")


def test_unknown_data_keys_and_duplicate_label_names_raise():
  x, y = _xy()
  config = _quiet(num_epochs=1, **{"dataset.name": "arrays"})
  with pytest.raises(ValueError, match=r"data\['validation'\]: unknown key; expected 'train'"):
    flaxnets.train(config, data={"train": (x, y), "validation": (x, y)})
  with pytest.raises(ValueError, match=r"label_names=\['a', 'b', 'a'\]: expected distinct"):
    sources.from_arrays((x, y), label_names=np.array(["a", "b", "a"]))
  assert sources.from_arrays((x, y), label_names=np.array(["a", "b", "c"])).label_names == [
      "a", "b", "c"]


def test_arrays_need_dataset_name_arrays():
  """Otherwise the checkpoint would name digits and `flaxnets eval` would score digits."""
  x, y = _xy()
  with pytest.raises(ConfigError, match=r"config\.dataset\.name='digits': expected 'arrays' "
                                        r"when train\(\) is given data="):
    flaxnets.train(_quiet(num_epochs=1), data={"train": (x, y)})


# ---- metrics that pick the best checkpoint and stop early ----------------------------------
@pytest.mark.parametrize("key", ["checkpoint.best_metric", "early_stopping.metric"])
def test_unknown_validation_metric_raises_before_anything_is_deleted(tmp_path, key):
  (tmp_path / "checkpoints" / "7").mkdir(parents=True)
  with pytest.raises(ConfigError, match=rf"config\.{key}='val_loss': expected one of "
                                        r"\('loss', 'accuracy', 'top5_accuracy', 'macro_f1'\)"):
    flaxnets.train(_quiet(**{key: "val_loss"}), workdir=str(tmp_path), restart=True)
  assert (tmp_path / "checkpoints" / "7").is_dir()


@pytest.mark.parametrize("key", ["checkpoint.best_metric", "early_stopping.metric"])
def test_top5_of_five_or_fewer_classes_is_refused(tmp_path, key):
  """Always 1.0 there: it had stopped training after `patience` epochs and kept epoch 1."""
  x, y = _xy(classes=5)
  config = _quiet(num_epochs=1, **{"dataset.name": "arrays", key: "top5_accuracy",
                                   "early_stopping.patience": 1})
  with pytest.raises(ConfigError, match=rf"config\.{key}='top5_accuracy': dataset 'arrays' "
                                        r"has 5 classes, so top-5 accuracy is always 1\.0"):
    flaxnets.train(config, data={"train": (x, y)}, workdir=str(tmp_path))
  assert not (tmp_path / "checkpoints").exists()
  from flaxnets.training import loop
  from flaxnets.models import registry
  ds = sources.from_arrays(_xy(classes=6))  # six classes: top-5 can miss
  loop.check_task(config, ds, registry.MODELS["simple_cnn"])
  config.early_stopping.patience = 0  # an early-stopping metric never read is let be
  config.checkpoint.best_metric = "accuracy"
  loop.check_task(config, sources.from_arrays(_xy(classes=3)), registry.MODELS["simple_cnn"])


def test_auto_mode_minimises_loss_and_maximises_the_rest():
  assert config_lib.metric_mode("loss", "auto") == "min"
  assert config_lib.metric_mode("accuracy", "auto") == "max"
  assert config_lib.metric_mode("top5_accuracy", "auto") == "max"
  assert config_lib.metric_mode("loss", "max") == "max"  # an explicit mode is obeyed
  config = flaxnets.get_config()
  assert (config.checkpoint.best_mode, config.early_stopping.mode) == ("auto", "auto")
  with pytest.raises(ConfigError, match=r"config\.early_stopping\.mode='up': expected one of"):
    validate(_quiet(**{"early_stopping.mode": "up"}))


def test_best_checkpoint_by_loss_keeps_the_lowest_loss(tmp_path):
  """best_metric='loss' without a mode: the best step is the one with the lowest val loss."""
  config = _quiet(num_epochs=4, **{"checkpoint.best_metric": "loss",
                                   "checkpoint.max_to_keep": 4})
  result = flaxnets.train(config, workdir=str(tmp_path))
  val = [h for h in result.history if h["split"] == "val"]
  best = min(val, key=lambda h: h["loss"])
  assert flaxnets.load(tmp_path, step="best").path.name == str(best["step"])


# ---- model and task --------------------------------------------------------------------------
def _corpus(tmp_path):
  corpus = tmp_path / "corpus.txt"
  corpus.write_text("to be, or not to be, that is the question.\n" * 20, encoding="utf-8")
  return corpus


def test_classifier_on_language_model_data_raises(tmp_path):
  config = _quiet(**{"dataset.name": "text_file", "dataset.path": str(_corpus(tmp_path)),
                     "dataset.vocab_level": "char", "dataset.seq_len": 16, "model.name": "rnn"})
  with pytest.raises(ConfigError, match=r"config\.model\.name='rnn': a classification model, "
                                        r"but dataset .* is a lm task; expected one of \['char_lm'\]"):
    flaxnets.train(config)


def test_language_model_on_classification_data_raises():
  ids = np.random.RandomState(0).randint(1, 9, (32, 6)).astype(np.int32)
  config = _quiet(**{"dataset.name": "arrays", "model.name": "char_lm"})
  with pytest.raises(ConfigError, match=r"config\.model\.name='char_lm': a lm model, but "
                                        r"dataset 'arrays' is a classification task"):
    flaxnets.train(config, data={"train": (ids, np.arange(32) % 2)})


def test_language_model_predictor_refuses_labels(tmp_path):
  config = _quiet(num_epochs=1, **{"dataset.name": "text_file",
                                   "dataset.path": str(_corpus(tmp_path)),
                                   "dataset.vocab_level": "char", "dataset.seq_len": 16,
                                   "model.name": "char_lm", "model.hidden_size": 16,
                                   "model.embed_dim": 8, "model.num_layers": 1})
  flaxnets.train(config, workdir=str(tmp_path / "wd"))
  predictor = flaxnets.load(tmp_path / "wd")
  assert predictor.predict_proba(["to be"]).shape[-1] == len(predictor.vocab)
  with pytest.raises(ValueError, match="predict_labels: this is a language model"):
    predictor.predict_labels(["to be"])


# ---- a trained classifier: predictor, CLI, workdir -------------------------------------------
@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("digits")
  flaxnets.train(_quiet(num_epochs=1), workdir=str(workdir))
  return workdir


def test_describe_takes_one_path_as_one_input(digits_run, tmp_path):
  predictor = flaxnets.load(digits_run)
  path = tmp_path / "one.npy"
  np.save(path, np.zeros((8, 8, 1), np.float32))
  lines = predictor.describe(str(path))  # used to read the string's characters as inputs
  assert lines == predictor.describe([str(path)]) and len(lines) == 1
  assert lines[0].startswith(f"{path}\t")


def test_predictor_refuses_non_finite_inputs(digits_run):
  predictor = flaxnets.load(digits_run)
  x = np.zeros((3, 8, 8, 1), np.float32)
  x[1, 2, 2, 0] = np.inf
  with pytest.raises(ValueError, match=r"inputs: 1 example\(s\) hold NaN or infinity"):
    predictor.predict(x)


def _cli(*args, env=None):
  return subprocess.run([sys.executable, "-m", "flaxnets.cli", *map(str, args)],
                        capture_output=True, text=True, timeout=300, env=env)


def test_cli_predict_checks_npy_shapes(digits_run, tmp_path):
  np.save(tmp_path / "flat.npy", np.zeros(128, np.float32))  # would reshape into two images
  np.save(tmp_path / "two.npy", np.zeros((2, 8, 8, 1), np.float32))
  out = _cli("predict", digits_run, tmp_path / "flat.npy")
  assert out.returncode == 2 and "Traceback" not in out.stderr
  assert f"{tmp_path / 'flat.npy'}: inputs of shape (128,): expected [batch, 8, 8, 1]" in out.stderr
  out = _cli("predict", digits_run, tmp_path / "two.npy")
  assert out.returncode == 0 and len(out.stdout.splitlines()) == 2


def test_cli_predict_takes_image_files_and_npy_batches_together(digits_run, tmp_path):
  from PIL import Image
  predictor = flaxnets.load(digits_run)
  pixels = np.random.default_rng(0).integers(0, 17, (3, 8, 8, 1)).astype(np.float32)
  Image.fromarray(pixels[0, ..., 0].astype(np.uint8)).save(tmp_path / "one.png")
  np.save(tmp_path / "two.npy", pixels[1:])
  args = [str(tmp_path / "two.npy"), str(tmp_path / "one.png"), str(tmp_path / "two.npy")]
  lines = predictor.describe(args)
  names = [line.split("\t")[0] for line in lines]
  assert names == [f"{args[0]}#0", f"{args[0]}#1", args[1], f"{args[0]}#0", f"{args[0]}#1"]
  labels = predictor.predict_labels(pixels)
  assert [line.split("\t")[1] for line in lines] == [labels[1], labels[2], labels[0],
                                                     labels[1], labels[2]]
  out = _cli("predict", digits_run, tmp_path / "one.png", tmp_path / "two.npy")
  assert out.returncode == 0 and len(out.stdout.splitlines()) == 3, out.stderr


def test_load_names_a_file_given_as_workdir(digits_run):
  with pytest.raises(NotADirectoryError, match=r"results\.json' is a file; expected the folder"):
    flaxnets.load(digits_run / "results.json")


def test_export_to_a_directory_names_it(digits_run, tmp_path):
  with pytest.raises(IsADirectoryError, match=r"is a directory; expected a file name"):
    flaxnets.load(digits_run).export(tmp_path)
  assert list(tmp_path.iterdir()) == []


def test_cli_errors_are_one_line(digits_run, tmp_path):
  for args, message in [(("eval", tmp_path / "nowhere"), "does not exist"),
                        (("predict", digits_run, "--top=0", "x.png"), "top=0: expected"),
                        (("eval", digits_run, "--split=holdout"), "split='holdout'")]:
    out = _cli(*args)
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr and message in out.stderr, out.stderr
  out = _cli("plot", tmp_path / "typo")
  assert out.returncode == 2 and not (tmp_path / "typo").exists()


def test_restart_moves_the_earlier_logs_aside(tmp_path):
  config = _quiet(num_epochs=1)
  flaxnets.train(config, workdir=str(tmp_path))
  first = (tmp_path / "metrics.jsonl").read_text()
  flaxnets.train(config, workdir=str(tmp_path), restart=True)
  rows = [json.loads(r) for r in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [r["epoch"] for r in rows if r["split"] == "train"] == [1]
  kept = list(tmp_path.glob("metrics.before-restart-*.jsonl"))
  assert len(kept) == 1 and kept[0].read_text() == first


def test_relative_data_paths_are_recorded_absolute(tmp_path, monkeypatch):
  _corpus(tmp_path)
  monkeypatch.chdir(tmp_path)
  config = _quiet(num_epochs=1, **{"dataset.name": "text_file", "dataset.path": "corpus.txt",
                                   "dataset.vocab_level": "char", "dataset.seq_len": 16,
                                   "model.name": "char_lm", "model.hidden_size": 8,
                                   "model.embed_dim": 8, "model.num_layers": 1})
  flaxnets.train(config, workdir="wd")
  saved = json.loads((tmp_path / "wd" / "results.json").read_text())["config"]
  assert saved["dataset"]["path"] == str(tmp_path / "corpus.txt")


def test_rerunning_a_finished_run_keeps_its_train_time(tmp_path):
  config = _quiet(num_epochs=1)
  first = flaxnets.train(config, workdir=str(tmp_path))
  again = flaxnets.train(config, workdir=str(tmp_path))  # resumes at the end: nothing to do
  saved = json.loads((tmp_path / "results.json").read_text())
  assert first.train_time_s > 0
  assert again.train_time_s == pytest.approx(first.train_time_s, rel=1e-6)
  assert saved["train_time_s"] == pytest.approx(first.train_time_s, rel=1e-6)


# ---- text tables ---------------------------------------------------------------------------
def _table(path, rows):
  path.write_text("label\tsentence\n" + "".join(f"{l}\t{t}\n" for l, t in rows),
                  encoding="utf-8")


def test_table_labels_ignore_surrounding_spaces_and_named_splits_must_exist(tmp_path):
  from flaxnets.data import local
  _table(tmp_path / "train.tsv", [("1", "good film"), (" 1", "great film"), ("0", "bad film"),
                                  ("0 ", "awful film")] * 4)
  dcfg = _quiet(**{"dataset.name": "text_table", "dataset.path": str(tmp_path)}).dataset
  ds = local.text_table_dataset(dcfg)
  assert ds.label_names == ["0", "1"]
  dcfg.test_split = "tset"
  with pytest.raises(FileNotFoundError, match=r"config\.dataset\.test_split='tset': no tset"):
    local.text_table_dataset(dcfg)


def test_max_vocab_one_is_refused_at_config_time():
  with pytest.raises(ConfigError, match=r"config\.dataset\.max_vocab=1: expected 0 \(no limit\) "
                                        r"or an integer >= 2"):
    validate(_quiet(**{"dataset.max_vocab": 1}))


@pytest.mark.parametrize("where", ["", "checkpoints", "best"])
def test_a_file_where_a_run_keeps_folders_is_refused_before_training(tmp_path, where):
  """A file at checkpoints/ or best/ had been an Orbax traceback, a trained epoch, then a
  failed save (leaving best/ without its step in checkpoints/)."""
  from flaxnets.training.checkpoint import CheckpointError
  workdir = tmp_path / "run"
  if where:
    workdir.mkdir()
  (workdir / where if where else workdir).write_text("x")
  name = rf"{where}/ in the workdir '.*{where}'" if where else r"workdir '.*run'"
  with pytest.raises(CheckpointError, match=rf"{name} is a file: expected a folder"):
    flaxnets.train(_quiet(num_epochs=1), str(workdir))
  assert sorted(p.name for p in tmp_path.rglob("*")) == sorted(["run", where] if where else ["run"])


def test_a_second_run_into_a_busy_workdir_is_refused(tmp_path):
  from flaxnets.training.checkpoint import CheckpointError, workdir_lock
  with workdir_lock(tmp_path):  # as another live run holds it
    with pytest.raises(CheckpointError, match=r"is in use by another training run \(process "
                                              r"\d+ on "):
      flaxnets.train(_quiet(num_epochs=1), workdir=str(tmp_path))
    assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "metrics.jsonl").exists()
  holder = subprocess.Popen([sys.executable, "-c", (
      "import sys, time; from flaxnets.training.checkpoint import workdir_lock\n"
      f"with workdir_lock({str(tmp_path)!r}):\n  print('held', flush=True); time.sleep(600)")],
      stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == "held"
    out = _cli("train", "--config.num_epochs=1", f"--workdir={tmp_path}")
    assert out.returncode == 2 and "in use by another training run" in out.stderr
    holder.kill()  # SIGKILL: the kernel frees the lock
    holder.wait()
    assert flaxnets.train(_quiet(num_epochs=1), workdir=str(tmp_path)).test_metrics
  finally:
    holder.kill()


# ---- image files read for prediction as training read them -------------------------------
def _jpeg_tree(root, n=12, size=(80, 64)):  # large enough for JPEG draft decoding
  from PIL import Image
  rng = np.random.default_rng(0)
  for split in ("train", "test"):
    for c in ("a", "b"):
      (root / split / c).mkdir(parents=True)
      for i in range(n):
        pixels = rng.integers(0, 256, size + (3,), dtype=np.uint8)
        pixels[..., 0] = 255 * (c == "a")  # a learnable difference
        Image.fromarray(pixels).save(root / split / c / f"{i}.jpg", quality=90)
  return root


@pytest.mark.parametrize("model", ["simple_cnn", "rnn"])
def test_predicting_image_files_matches_training_decode(tmp_path, model):
  from PIL import Image
  from flaxnets.data import files
  root = _jpeg_tree(tmp_path / "imgs")
  config = _quiet(num_epochs=1, batch_size=8, **{
      "dataset.name": "image_folder", "dataset.path": str(root), "dataset.image_size": 16,
      "model.name": model})
  if model == "rnn":
    config.model.hidden_size = 8
  flaxnets.train(config, workdir=str(tmp_path / "wd"))
  predictor = flaxnets.load(tmp_path / "wd")
  paths = sorted(str(p) for p in (root / "test").rglob("*.jpg"))
  decoded = np.stack([files.image_to_array(Image.open(p), (16, 16))
                      for p in paths])
  np.testing.assert_array_equal(predictor.predict_proba(paths), predictor.predict_proba(decoded))
  out = _cli("predict", tmp_path / "wd", paths[0])
  assert out.returncode == 0 and out.stdout.startswith(paths[0]), out.stderr


def test_image_files_for_a_model_of_scaled_arrays_are_refused(tmp_path):
  """Trained on x / 255 (or on 0..16, as scikit-learn's digits): files decode to 0..255 and
  had been predicted on silently, with other classes. Arrays in 0..255 take files; a folder
  is named as one."""
  from PIL import Image
  x, y = _xy(n=24, shape=(8, 8, 3))  # in [0, 1)
  png = tmp_path / "one.png"
  Image.fromarray((x[0] * 255).astype(np.uint8)).save(png)
  for scale, name in ((1.0, "unit"), (255.0, "pixels"), (16.0, "sixteen")):
    flaxnets.train(_quiet(num_epochs=1, batch_size=8, **{"dataset.name": "arrays"}),
                   data={"train": (x * scale, y)}, workdir=str(tmp_path / name))
  with pytest.raises(ValueError, match=r"one\.png': this model trained on arrays in \[[\d.e-]+, "
                                       r"0\.99\d*\], and image files decode to pixels in "
                                       r"0\.\.255"):
    flaxnets.load(tmp_path / "unit").predict([str(png)])
  # scikit-learn's digits are 0..16: files had been predicted on at 16x their scale
  with pytest.raises(ValueError, match=r"trained on arrays in \[[\d.e-]+, 15\.\d*\]"):
    flaxnets.load(tmp_path / "sixteen").predict([str(png)])
  dark = (x * 100).astype(np.uint8)  # uint8 pixels, all under 128: still pixels
  flaxnets.train(_quiet(num_epochs=1, batch_size=8, **{"dataset.name": "arrays"}),
                 data={"train": (dark, y)}, workdir=str(tmp_path / "dark"))
  assert flaxnets.load(tmp_path / "dark").predict_proba([str(png)]).shape == (1, 3)
  proba = flaxnets.load(tmp_path / "pixels").predict_proba([str(png)])
  np.testing.assert_allclose(proba, flaxnets.load(tmp_path / "pixels").predict_proba(
      (x[:1] * 255).astype(np.uint8)), atol=1e-6)  # the pixels the PNG holds
  with pytest.raises(IsADirectoryError, match=r"image file '.*' is a folder: expected image"):
    flaxnets.load(tmp_path / "pixels").predict([str(tmp_path)])


@pytest.mark.parametrize("train_mode,test_mode", [("RGB", "L"), ("L", "RGB")])
def test_test_split_takes_the_train_splits_channels_and_size(tmp_path, train_mode, test_mode):
  from PIL import Image
  from flaxnets.data import files
  rng = np.random.default_rng(0)
  root = tmp_path / "imgs"
  for split, mode, size in (("train", train_mode, (8, 8)), ("test", test_mode, (12, 10))):
    for c in ("a", "b"):
      (root / split / c).mkdir(parents=True)
      for i in range(6):
        shape = size + ((3,) if mode == "RGB" else ())
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(
            root / split / c / f"{i}.png")
  # a 16-bit grayscale PNG too: training keeps its high byte, and so must predict
  Image.fromarray(rng.integers(0, 65536, (12, 10), dtype=np.uint16)).save(
      root / "test" / "a" / "wide.png")
  config = _quiet(num_epochs=1, batch_size=8, **{
      "dataset.name": "image_folder", "dataset.path": str(root)})
  result = flaxnets.train(config, workdir=str(tmp_path / "wd"))
  channels = 3 if train_mode == "RGB" else 1
  x = result.dataset.test["inputs"]
  assert x.shape == (13, 8, 8, channels)
  paths = sorted(str(p) for p in (root / "test").rglob("*.png"))  # the reader's order
  want = np.stack([files.match_channels(files.image_to_array(Image.open(p), (8, 8)), channels)
                   for p in paths])
  np.testing.assert_array_equal(x, want)
  predictor = flaxnets.load(tmp_path / "wd")
  np.testing.assert_array_equal(predictor.predict_proba(paths), predictor.predict_proba(x))


@pytest.mark.parametrize("lowercase,split_punctuation", [(True, False), (False, True)])
def test_text_file_honours_tokenizer_options(tmp_path, lowercase, split_punctuation):
  from flaxnets.data import local
  corpus = tmp_path / "c.txt"
  corpus.write_text("First Citizen: Before we proceed, hear me speak.\n" * 30, encoding="utf-8")
  dcfg = _quiet(**{"dataset.name": "text_file", "dataset.path": str(corpus),
                   "dataset.seq_len": 8, "dataset.lowercase": lowercase,
                   "dataset.split_punctuation": split_punctuation}).dataset
  tokens = set(local.text_file_dataset(dcfg).vocab.tokens)
  assert ("first" in tokens) == lowercase and ("First" in tokens) != lowercase
  lowered = {t.lower() for t in tokens}
  assert (":" in tokens) == split_punctuation and ("citizen:" in lowered) != split_punctuation


def test_carved_validation_does_not_shape_the_vocabulary(tmp_path):
  """Words (and lengths) seen only in the held-out rows stay out of the vocabulary."""
  from flaxnets.data import local
  rows = [(str(i % 2), f"word{i} " + "pad " * (i % 5) + ("good" if i % 2 else "bad"))
          for i in range(40)]
  _table(tmp_path / "train.tsv", rows)
  dcfg = _quiet(**{"dataset.name": "text_table", "dataset.path": str(tmp_path),
                   "dataset.val_fraction": 0.25}).dataset
  ds = local.text_table_dataset(dcfg)
  vocab = set(ds.vocab.tokens)
  first = lambda split: {ds.vocab.tokens[i] for i in split["inputs"][:, 0]}
  assert first(ds.train) <= vocab - {"<unk>"} and len(first(ds.train)) == 30
  assert first(ds.val) == {"<unk>"}  # each held-out row's own word is unknown
  assert not any(t.startswith("word") and t not in first(ds.train) for t in vocab)


def test_short_text_file_names_the_part_and_the_setting(tmp_path):
  from flaxnets.data import local
  corpus = tmp_path / "tiny.txt"
  corpus.write_text("hello world, this is a tiny corpus!", encoding="utf-8")
  dcfg = _quiet(**{"dataset.name": "text_file", "dataset.path": str(corpus),
                   "dataset.seq_len": 8, "dataset.vocab_level": "char"}).dataset
  dcfg.val_fraction = 0.02  # one character: no target (more is one padded window)
  with pytest.raises(ValueError, match=r"its validation part \(the last 2%, val_fraction\) is "
                     r"too short \(.*no next-token target.*\); use a larger val_fraction"):
    local.text_file_dataset(dcfg)
  dcfg.val_fraction = 0.1
  dcfg.seq_len = 40
  with pytest.raises(ValueError, match=r"its training part \(the first 90%\) is too short"):
    local.text_file_dataset(dcfg)


def test_word_level_text_file_splits_validation_off_at_a_word_boundary(tmp_path):
  from flaxnets.data import local
  words = ["alpha", "beta", "gamma", "delta"] * 10 + ["internationalization"] + ["alpha"] * 6
  corpus = tmp_path / "words.txt"
  corpus.write_text(" ".join(words), encoding="utf-8")  # 85% falls inside the long word
  dcfg = _quiet(**{"dataset.name": "text_file", "dataset.path": str(corpus),
                   "dataset.seq_len": 2, "dataset.val_fraction": 0.15}).dataset
  ds = local.text_file_dataset(dcfg)
  # The cut had made "internatio" a token and its rest an <unk> starting validation.
  assert ds.vocab.tokens == ["<pad>", "<unk>", "alpha", "beta", "delta", "gamma",
                             "internationalization"]
  # Six "alpha": five targets, the last in a padded window.
  assert ds.val["inputs"].tolist() == [[2, 2], [2, 2], [2, 0]]
  assert ds.val["seq_lengths"].tolist() == [2, 2, 1]


def test_one_example_without_a_batch_axis_predicts_like_a_batch_of_one(tmp_path):
  rng = np.random.default_rng(0)
  x = rng.normal(size=(64, 20)).astype(np.float32)
  y = (x[:, :10].sum(1) > 0).astype(np.int32)
  config = _quiet(num_epochs=1, batch_size=16, **{"dataset.name": "arrays",
                                                  "model.name": "conv1d"})
  flaxnets.train(config, workdir=str(tmp_path / "series"), data={"train": (x, y)})
  series = flaxnets.load(tmp_path / "series")
  np.testing.assert_array_equal(series.predict_proba(x[3]), series.predict_proba(x[3:4]))
  # an RNN reading images row by row takes one image as it is
  config = _quiet(num_epochs=1, **{"model.name": "rnn", "model.hidden_size": 8})
  result = flaxnets.train(config, workdir=str(tmp_path / "rows"))
  rows = flaxnets.load(tmp_path / "rows")
  image = result.dataset.test["inputs"][0].reshape(8, 8, 1)
  np.testing.assert_array_equal(rows.predict_proba(image), rows.predict_proba(image[None]))
  with pytest.raises(ValueError, match=r"inputs of shape \(7, 8, 1\): expected \[batch, 8, 8\]"):
    rows.predict_proba(np.zeros((7, 8, 1), np.float32))


def test_grayscale_images_without_a_channel_axis_predict_like_with_it(digits_run):
  predictor = flaxnets.load(digits_run)
  images = np.random.default_rng(0).integers(0, 17, (3, 8, 8)).astype(np.float32)
  expected = predictor.predict_proba(images[..., None])
  np.testing.assert_array_equal(predictor.predict_proba(images), expected)  # a batch
  # one image (a batch of one compiles apart: equal to float32 rounding)
  np.testing.assert_allclose(predictor.predict_proba(images[1]), expected[1:2], rtol=1e-5)
  with pytest.raises(ValueError, match=r"shape \(3, 8, 7\): expected \[batch, 8, 8, 1\]"):
    predictor.predict_proba(images[..., :7])


def test_plot_names_a_damaged_results_file_and_prepare_an_empty_name(digits_run, tmp_path):
  import shutil
  workdir = tmp_path / "run"
  shutil.copytree(digits_run, workdir)
  (workdir / "results.json").write_text('{"config": ')
  out = _cli("plot", workdir)
  assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
  assert f"{workdir / 'results.json'} is not valid JSON" in out.stderr, out.stderr
  out = _cli("prepare", "tfds:")
  assert out.returncode == 2 and "expected one tfds:NAME" in out.stderr, out.stderr
  assert len(out.stderr.strip().splitlines()) == 1, out.stderr
