"""End-to-end training through flaxnets.train on the built-in real data."""
import json

import numpy as np
import pytest

import flaxnets
from flaxnets.data import sources
from helpers import counting_compiles


def _quiet(config):
  config.progress = False
  return config


def test_default_job_learns_digits_and_writes_logs(tmp_path):
  config = _quiet(flaxnets.get_config())
  config.num_epochs = 3
  result = flaxnets.train(config, workdir=str(tmp_path))
  assert result.test_metrics["accuracy"] > 0.93
  assert result.test_metrics["count"] == 360  # every test example counted exactly once
  assert result.val_metrics["count"] == 179
  train_losses = [h["loss"] for h in result.history if h["split"] == "train"]
  assert train_losses[-1] < train_losses[0]

  rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  epochs = [r for r in rows if r["split"] in ("train", "val")]
  assert [(r["split"], r["epoch"]) for r in epochs] == [
      ("train", 1), ("val", 1), ("train", 2), ("val", 2), ("train", 3), ("val", 3)]
  for r in epochs:
    assert {"split", "epoch", "step", "loss", "accuracy", "wall_time"} <= set(r)
  assert all("examples_per_sec" in r for r in epochs if r["split"] == "train")

  results = json.loads((tmp_path / "results.json").read_text())
  assert results["test"]["accuracy"] == pytest.approx(result.test_metrics["accuracy"])
  assert results["config"]["model"]["name"] == "simple_cnn"
  assert {"train_time_s", "devices", "flaxnets_version", "val"} <= set(results)
  assert len(results["test"]["confusion_matrix"]) == 10


def test_the_final_validation_reuses_the_last_epochs_pass(monkeypatch):
  """It had evaluated the same weights twice; with restore_best it must evaluate again."""
  from flaxnets.training import loop
  calls = []
  run_eval = loop.run_eval

  def counting(eval_fn, state, split, *args, **kwargs):
    calls.append(len(split["labels"]))
    return run_eval(eval_fn, state, split, *args, **kwargs)

  monkeypatch.setattr(loop, "run_eval", counting)
  config = _quiet(flaxnets.get_config())
  config.num_epochs = 2
  result = flaxnets.train(config)
  assert calls == [179, 179, 360]  # val per epoch, then test only
  want = flaxnets.evaluate(result, "val")
  assert result.val_metrics == {k: v for k, v in want.items() if k in result.val_metrics}
  val_history = [h for h in result.history if h["split"] == "val"]
  assert val_history[-1]["loss"] == result.val_metrics["loss"]


def test_same_config_same_numbers():
  config = _quiet(flaxnets.get_config())
  config.num_epochs = 1
  config.parallel.strategy = "single"
  a = flaxnets.train(config)
  b = flaxnets.train(config)
  for x, y in zip(np_leaves(a.state.params), np_leaves(b.state.params)):
    np.testing.assert_array_equal(x, y)


def test_micro_batches_train_like_whole_batches():
  """config.grad_accum_steps: the same updates from micro-batches of a quarter of the batch.
  SimpleCNN has no batch norm or dropout, so the run ends where the unsplit one does."""
  config = _quiet(flaxnets.get_config())
  config.num_epochs = 3
  config.parallel.strategy = "single"
  whole = flaxnets.train(config)
  config.grad_accum_steps = 4
  split = flaxnets.train(config)
  assert split.test_metrics["accuracy"] > 0.93
  assert split.test_metrics["accuracy"] == pytest.approx(whole.test_metrics["accuracy"],
                                                         abs=0.01)
  assert int(split.state.step) == int(whole.state.step)  # one update per batch of 32
  for x, y in zip(np_leaves(split.state.params), np_leaves(whole.state.params)):
    np.testing.assert_allclose(x, y, atol=1e-4)


def np_leaves(tree):
  import jax
  return [np.asarray(x) for x in jax.tree.leaves(tree)]


def test_rnn_reads_digits_row_by_row():
  config = _quiet(flaxnets.get_config())
  config.model = flaxnets.get_config().model
  config.model.name = "rnn"
  config.model.cell = "gru"
  config.model.hidden_size = 32
  config.num_epochs = 4
  config.optimizer.learning_rate = 1e-2
  result = flaxnets.train(config)
  assert result.dataset.input_kind == "series"
  assert result.dataset.input_shape == (8, 8)
  assert result.test_metrics["accuracy"] > 0.8


def test_train_on_numpy_arrays_and_evaluate(capsys):
  rng = np.random.RandomState(0)
  x = rng.randn(200, 6).astype(np.float32)
  y = (x[:, 0] + x[:, 1] > 0).astype(np.int32)
  config = _quiet(flaxnets.get_config())
  config.dataset.name = "arrays"
  config.model.name = "rnn"
  config.model.hidden_size = 8
  config.num_epochs = 5
  config.batch_size = 16
  result = flaxnets.train(config, data={"train": (x[:160], y[:160]), "test": (x[160:], y[160:]),
                                        "label_names": ["neg", "pos"]})
  assert result.val_metrics["count"] == 16  # carved 10% of train
  # the start line says what the arrays were read as
  assert "(144 train / 16 val / 40 test; series (6, 1) per example)" in capsys.readouterr().out
  metrics = flaxnets.evaluate(result, "test")
  assert metrics["count"] == 40
  assert metrics["accuracy"] == pytest.approx(result.test_metrics["accuracy"])
  # Another split (padded to the same eval batch) reuses the compiled eval step.
  with counting_compiles() as compiles:
    val = flaxnets.evaluate(result, "val")
  assert val["loss"] == pytest.approx(result.val_metrics["loss"], rel=1e-6)
  assert compiles == [], "evaluate compiled its eval step again for another split"
  result.stats["mean"] += 3.0  # changed in place: the cached step must not serve the old ones
  assert flaxnets.evaluate(result, "val")["loss"] != pytest.approx(val["loss"], rel=1e-3)
  result.stats["mean"] -= 3.0
  assert flaxnets.evaluate(result, "val")["loss"] == pytest.approx(val["loss"], rel=1e-6)
  with pytest.raises(ValueError, match=r"split='holdout': expected one of"):
    flaxnets.evaluate(result, "holdout")


def test_mismatched_arrays_raise():
  config = _quiet(flaxnets.get_config())
  config.dataset.name = "arrays"
  with pytest.raises(ValueError, match=r"data\['train'\]: 10 inputs but 9 labels"):
    flaxnets.train(config, data={"train": (np.zeros((10, 8, 8, 1)), np.zeros(9, np.int32))})


def test_digits_split_is_fixed_and_stratified():
  a, b = sources.digits(), sources.digits()
  np.testing.assert_array_equal(a.test["labels"], b.test["labels"])
  assert len(a.train["labels"]) + len(a.val["labels"]) + len(a.test["labels"]) == 1797
  counts = np.bincount(a.test["labels"], minlength=10)
  assert counts.min() >= 35 and counts.max() <= 37


def test_mnist1d_is_generated_locally():
  d = sources.mnist1d()
  assert d.train["inputs"].shape[1:] == (40, 1)
  assert len(d.train["labels"]) + len(d.val["labels"]) == 4000
  assert len(d.test["labels"]) == 1000


def _token_task(n=480, t=12, seed=0):
  """Label 1 when token 7 occurs: learnable from token identity, not from id magnitude."""
  rng = np.random.RandomState(seed)
  x = rng.randint(1, 30, (n, t)).astype(np.int32)
  x[rng.rand(n) < 0.5, rng.randint(0, t)] = 7
  x[:, -2:] = 0  # end padding
  y = (x == 7).any(1).astype(np.int32)
  return x, y


def test_int_token_arrays_get_an_embedding_and_restore(tmp_path, capsys):
  x, y = _token_task()
  config = _quiet(flaxnets.get_config())
  config.dataset.name = "arrays"
  config.model.name = "rnn"
  config.model.hidden_size = 32
  config.model.embed_dim = 16
  config.num_epochs = 8
  config.optimizer.learning_rate = 3e-3
  result = flaxnets.train(config, workdir=str(tmp_path),
                          data={"train": (x[:400], y[:400]), "test": (x[400:], y[400:])})
  assert result.dataset.input_kind == "tokens"
  assert "test; int token ids (12,) per example)" in capsys.readouterr().out
  assert result.dataset.vocab_size == 30
  assert result.state.params["front"]["embed"]["embedding"].shape == (30, 16)
  np.testing.assert_array_equal(result.dataset.test["seq_lengths"], 10)
  assert result.test_metrics["accuracy"] > 0.9
  predictor = flaxnets.load(tmp_path, step="latest")
  hits = (predictor.predict(x[400:]) == y[400:]).sum()
  assert hits == round(result.test_metrics["accuracy"] * 80)
  with pytest.raises(ValueError, match="trained on int token arrays without a vocabulary"):
    predictor.predict(["a text"])
  # ids as nested lists, and as a .npy file on the command line, read as ids
  np.testing.assert_array_equal(predictor.predict_proba(x[400:403].tolist()),
                                predictor.predict_proba(x[400:403]))
  np.save(tmp_path / "ids.npy", x[400:403])
  lines = predictor.describe([str(tmp_path / "ids.npy")])
  assert [line.split("\t")[0] for line in lines] == [f"{tmp_path / 'ids.npy'}#{i}"
                                                      for i in range(3)]
  assert [line.split("\t")[1] for line in lines] == predictor.predict_labels(x[400:403])
  path = predictor.export(tmp_path / "model.jax")
  info = json.loads(path.with_suffix(".jax.json").read_text())
  assert [i["shape"] for i in info["inputs"]] == [["batch", 12], ["batch"]]


@pytest.mark.parametrize("field,value,message", [
    ("vocab_size", 20, r"config\.model\.vocab_size=20: expected >= 30, 1 \+ the largest token id"),
    ("num_classes", 1, r"config\.model\.num_classes=1: expected 2, the number of classes"),
    # A wider head used to fail inside the loss with a broadcasting TypeError.
    ("num_classes", 12, r"config\.model\.num_classes=12: expected 2, the number of classes"),
])
def test_model_that_does_not_fit_the_data_raises(field, value, message):
  x, y = _token_task(n=64)
  config = _quiet(flaxnets.get_config())
  config.dataset.name = "arrays"
  config.model.name = "rnn"
  config.model[field] = value
  with pytest.raises(flaxnets.ConfigError, match=message):
    flaxnets.train(config, data={"train": (x, y)})


def test_vocab_size_on_float_inputs_names_the_setting():
  """An embedding reads token ids; the model had raised a ValueError about its input
  instead of naming the setting that asked for one."""
  x = np.random.RandomState(0).rand(32, 6, 1).astype(np.float32)
  config = _quiet(flaxnets.get_config())
  config.dataset.name = "arrays"
  config.model.name = "rnn"
  config.model.vocab_size = 50
  message = (r"config\.model\.vocab_size=50: dataset 'arrays' gives series, not token ids; "
             r"expected vocab_size unset \(None\)")
  with pytest.raises(flaxnets.ConfigError, match=message):
    flaxnets.train(config, data={"train": (x, np.arange(32) % 2)})


def test_a_home_relative_workdir_is_expanded(tmp_path, monkeypatch):
  """'~/runs/x' had made a folder named '~' in the current directory (dataset.path was
  expanded, the workdir and the export path were not)."""
  monkeypatch.setenv("HOME", str(tmp_path / "home"))
  monkeypatch.chdir(tmp_path)
  config = _quiet(flaxnets.get_config())
  config.num_epochs = 1
  result = flaxnets.train(config, workdir="~/runs/digits")
  assert (tmp_path / "home" / "runs" / "digits" / "results.json").is_file()
  assert not (tmp_path / "~").exists()
  assert result.workdir == str(tmp_path / "home" / "runs" / "digits")
  predictor = flaxnets.load("~/runs/digits")
  assert predictor.export("~/digits.jax") == tmp_path / "home" / "digits.jax"
  assert (tmp_path / "home" / "digits.jax").is_file() and not (tmp_path / "~").exists()
  with pytest.raises(TypeError, match=r"workdir=3: expected a folder path"):
    flaxnets.train(config, workdir=3)


def test_the_final_table_has_no_header_over_no_splits(capsys):
  """Train only (no val, no test): the table's header had been printed over no rows."""
  rng = np.random.RandomState(0)
  x = rng.randn(64, 6).astype(np.float32)
  config = _quiet(flaxnets.get_config())
  config.dataset.name, config.dataset.val_fraction = "arrays", 0.0
  config.model.name, config.model.hidden_size = "rnn", 8
  config.num_epochs, config.batch_size = 1, 16
  result = flaxnets.train(config, data={"train": (x, (x[:, 0] > 0).astype(np.int32))})
  assert result.val_metrics is None and result.test_metrics is None
  out = capsys.readouterr().out
  assert "accuracy" not in out.split("epoch   1:")[-1].split("\n", 1)[-1], out
  assert "params " in out
