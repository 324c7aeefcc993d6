"""Early stopping, TensorBoard event files, and `flaxnets plot` PNGs."""
import json
import subprocess
import sys

import jax
import numpy as np
import pytest

import flaxnets
from flaxnets.tensorboard import EventWriter, crc32c
from flaxnets.training import hooks
from flaxnets.training.hooks import EarlyStopping


def test_early_stopping_on_scripted_plateau():
  stopper = EarlyStopping(patience=3, min_delta=0.01, mode="min")
  losses = [1.0, 0.8, 0.7, 0.695, 0.699, 0.71]  # improves until epoch 3, then plateaus
  stopped_at = next(e for e, v in enumerate(losses, 1) if stopper.update(v, e))
  assert stopped_at == 6 and stopper.best_epoch == 3 and stopper.best == 0.7


def test_early_stopping_max_mode_and_patience_zero_never_stops():
  stopper = EarlyStopping(patience=0, mode="max")
  assert not any(stopper.update(v, e) for e, v in enumerate([0.5, 0.4, 0.3], 1))
  with pytest.raises(ValueError, match="early_stopping.mode='maximum'"):
    EarlyStopping(patience=1, mode="maximum")


@pytest.fixture(scope="module")
def plateau_run(tmp_path_factory):
  """Digits with a learning rate so small that validation loss cannot improve by min_delta."""
  workdir = tmp_path_factory.mktemp("plateau")
  config = flaxnets.get_config()
  config.progress = False
  config.num_epochs = 10
  config.optimizer.learning_rate = 1e-9
  config.optimizer.schedule = "constant"
  config.early_stopping.patience = 2
  config.early_stopping.min_delta = 0.01
  config.early_stopping.restore_best = True
  result = flaxnets.train(config, workdir=str(workdir))
  return workdir, result


def test_training_stops_at_expected_epoch(plateau_run):
  workdir, result = plateau_run
  assert result.stopped_early
  # Epoch 1 sets the best; epochs 2 and 3 do not improve by 0.01 -> stop after epoch 3.
  assert [h["epoch"] for h in result.history if h["split"] == "train"] == [1, 2, 3]
  assert json.loads((workdir / "results.json").read_text())["stopped_early"] is True


def test_tensorboard_events_read_back(plateau_run):
  workdir, result = plateau_run
  from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
  acc = EventAccumulator(str(workdir / "tensorboard"))
  acc.Reload()
  tags = acc.Tags()["scalars"]
  assert {"train/loss", "train/accuracy", "val/loss", "val/accuracy"} <= set(tags)
  val_loss = [e.value for e in acc.Scalars("val/loss")]
  expected = [h["loss"] for h in result.history if h["split"] == "val"]
  np.testing.assert_allclose(val_loss, expected, rtol=1e-6)


def test_event_writer_framing_crc():
  assert crc32c(b"123456789") == 0xE3069283  # the standard CRC-32C check value


def test_plot_writes_nonblank_pngs(plateau_run):
  from PIL import Image
  workdir, _ = plateau_run
  out = subprocess.run([sys.executable, "-m", "flaxnets.cli", "plot", str(workdir)],
                       capture_output=True, text=True, timeout=120)
  assert out.returncode == 0, out.stderr
  paths = out.stdout.split()
  assert [p.rsplit("/", 1)[1] for p in paths] == ["curves.png", "confusion_matrix.png"]
  for p in paths:
    img = np.asarray(Image.open(p).convert("L"), np.float32)
    assert img.shape[0] >= 300 and img.shape[1] >= 300
    assert img.std() > 10  # not blank: lines, text and cells differ from the background
    assert (img < 128).mean() > 0.005


def test_plot_without_metrics_is_a_clear_error(tmp_path):
  from flaxnets import plots
  with pytest.raises(FileNotFoundError, match="metrics.jsonl"):
    plots.plot_workdir(tmp_path)


def test_early_stopping_settings_that_cannot_work_are_named(capsys):
  from types import SimpleNamespace
  from flaxnets.training import loop
  config = flaxnets.get_config()
  config.early_stopping.patience = 2
  loop.warn_ineffective_settings(config, SimpleNamespace(name="arrays", val=None, input_kind="image"), None)
  assert ("early_stopping.patience=2 has no effect: dataset 'arrays' has no validation split"
          in capsys.readouterr().out)
  with_val = SimpleNamespace(name="digits", val={}, input_kind="image")
  config.early_stopping.restore_best = True  # by val loss; best/ (load's default): accuracy
  loop.warn_ineffective_settings(config, with_val, "/tmp/run")
  out = capsys.readouterr().out
  assert "restore_best evaluates the epoch best by validation loss (min)" in out
  assert "load(workdir) restores the checkpoint best by validation accuracy (max)" in out
  loop.warn_ineffective_settings(config, with_val, None)  # no checkpoints: nothing to mismatch
  config.checkpoint.best_metric = "loss"
  loop.warn_ineffective_settings(config, with_val, "/tmp/run")
  assert capsys.readouterr().out == ""


def test_schedule_settings_that_cannot_work_are_named(capsys):
  from types import SimpleNamespace
  from flaxnets.training import loop
  config = flaxnets.get_config()
  data = SimpleNamespace(name="digits", val={}, input_kind="image")
  loop.warn_ineffective_settings(config, data, None)
  assert capsys.readouterr().out == ""  # the defaults
  config.num_epochs, config.optimizer.warmup_epochs = 2, 5.0  # the decay had never started
  config.optimizer.schedule, config.optimizer.end_lr_factor = "constant", 0.1  # had been ignored
  loop.warn_ineffective_settings(config, data, None)
  out = capsys.readouterr().out
  assert ("config.optimizer.warmup_epochs=5.0 is not less than num_epochs=2: the learning rate "
          "rises through the whole run") in out
  assert "config.optimizer.end_lr_factor=0.1 has no effect with schedule='constant'" in out
  config.model.param_dtype = "bfloat16"  # adam at 1e-4 had left 71% of the weights unchanged
  loop.warn_ineffective_settings(config, data, None)
  assert "config.model.param_dtype='bfloat16' keeps the weights and the optimizer state in " \
      "bfloat16" in capsys.readouterr().out
  config.model.dtype = "float16"  # no loss scaling: small gradients had flushed unsaid
  loop.warn_ineffective_settings(config, data, None)
  assert "config.model.dtype='float16' computes without loss scaling" in \
      capsys.readouterr().out


def test_macro_f1_counts_a_class_that_is_only_predicted():
  """As scikit-learn's average='macro': a class absent from the labels but predicted
  scores 0; leaving it out had given 0.889 here instead of 0.667."""
  from flaxnets import metrics
  labels, preds = np.array([0, 0, 1, 1, 2, 2]), np.array([0, 0, 1, 1, 2, 3])
  scores = metrics.f1_scores(metrics.confusion_matrix(labels, preds, 5))
  assert scores["per_class_f1"] == pytest.approx([1, 1, 2 / 3, 0, 0])
  assert scores["macro_f1"] == pytest.approx((1 + 1 + 2 / 3 + 0) / 4)  # class 4: neither


def test_augmenting_what_is_not_an_image_is_named(capsys):
  """An RNN reading digits row by row had dropped flip and crops without a word."""
  config = flaxnets.get_config()
  config.progress = False
  config.num_epochs = 1
  config.model.name = "rnn"
  config.model.hidden_size = 8
  config.augment.flip, config.augment.crop_padding = True, 2
  flaxnets.train(config)
  assert ("config.augment flip=True, crop_padding=2 has no effect: it augments images, and "
          "model 'rnn' reads dataset 'digits' as series") in capsys.readouterr().out


@pytest.mark.parametrize("workdir", [False, True])
def test_restore_best_takes_the_early_stopping_metrics_best_epoch(tmp_path, workdir):
  """By early_stopping.metric (loss), not checkpoint.best_metric (accuracy); with or
  without a workdir. The same run cut at that epoch has bit-identical weights."""
  config = flaxnets.get_config()
  config.progress = False
  config.tensorboard = False
  config.num_epochs = 12
  config.optimizer.learning_rate = 0.02
  config.optimizer.schedule = "constant"
  config.early_stopping.patience = 2
  config.early_stopping.restore_best = True
  config.checkpoint.best_metric, config.checkpoint.best_mode = "loss", "max"  # best/: the worst
  result = flaxnets.train(config, workdir=str(tmp_path) if workdir else None)
  assert result.stopped_early
  val = [h for h in result.history if h["split"] == "val"]
  best_epoch = min(val, key=lambda h: h["loss"])["epoch"]
  assert best_epoch < val[-1]["epoch"]
  config.num_epochs = best_epoch
  config.early_stopping.patience = 0
  cut = flaxnets.train(config)
  for a, b in zip(jax.tree.leaves(result.state.params), jax.tree.leaves(cut.state.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_best_checkpoint_takes_early_stoppings_min_delta_with_restore_best(tmp_path):
  """README: with restore_best and the same metric, load() returns the weights results.json
  reports. best/ had compared strictly: an epoch better by less than min_delta became best/
  while restore_best reported the epoch before it."""
  config = flaxnets.get_config()
  config.progress, config.tensorboard, config.num_epochs = False, False, 8
  config.early_stopping.update(patience=1, min_delta=0.02, restore_best=True)
  config.checkpoint.best_metric = "loss"
  result = flaxnets.train(config, workdir=str(tmp_path))
  losses = [h["loss"] for h in result.history if h["split"] == "val"]
  assert result.stopped_early and 0 < losses[-2] - losses[-1] < 0.02, losses  # the case
  for a, b in zip(jax.tree.leaves(flaxnets.load(tmp_path).params),
                  jax.tree.leaves(result.state.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  results = json.loads((tmp_path / "results.json").read_text())
  assert results["evaluated_weights"] == f"epoch {len(losses) - 1} (early_stopping.restore_best)"


def test_metric_writer_resume_and_fresh_starts_keep_every_row(tmp_path):
  log = tmp_path / "metrics.jsonl"
  # a kill left the last row without its newline; the resume keeps rows up to step 10
  log.write_text('{"split": "train", "step": 5}\n{"split": "train", "step": 10}')
  writer = hooks.MetricWriter(tmp_path, resume_step=10)
  writer.write({"split": "train", "step": 11})
  assert [json.loads(line)["step"] for line in log.read_text().splitlines()] == [5, 10, 11]
  writer = hooks.MetricWriter(tmp_path, resume_step=5)  # replayed rows are dropped
  assert [json.loads(line)["step"] for line in log.read_text().splitlines()] == [5]
  # two fresh starts within one second: both earlier logs are kept, under two names
  hooks.MetricWriter(tmp_path).write({"split": "train", "step": 1})
  hooks.MetricWriter(tmp_path).write({"split": "train", "step": 2})
  kept = sorted(tmp_path.glob("metrics.before-*.jsonl"))
  assert len(kept) == 2
  assert sorted(p.read_text() for p in kept) == sorted(
      ['{"split": "train", "step": 5}\n', '{"split": "train", "step": 1}\n'])


def test_plot_skips_a_line_cut_short_by_a_kill(plateau_run, tmp_path):
  import shutil
  from flaxnets import plots
  workdir, _ = plateau_run
  copy = tmp_path / "run"
  shutil.copytree(workdir, copy, ignore=shutil.ignore_patterns("plots", "checkpoints"))
  with open(copy / "metrics.jsonl", "a") as f:
    f.write('{"split": "train", "epoch": 9, "lo')  # the kill came mid-line
  with pytest.warns(UserWarning, match=r"metrics\.jsonl'.*skipped line\(s\) \[\d+\]"):
    rows = plots._rows(copy)
  assert len(rows) == len((workdir / "metrics.jsonl").read_text().splitlines())
  with pytest.warns(UserWarning, match="skipped line"):
    paths = plots.plot_workdir(copy)
  assert [p.name for p in paths] == ["curves.png", "confusion_matrix.png"]


def test_tensorboard_drops_the_rows_a_resume_replays(tmp_path):
  from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
  writer = hooks.MetricWriter(tmp_path, tensorboard=True)
  for step in (5, 10, 15):  # the run is killed after logging step 15, saved at step 10
    writer.write({"split": "train", "step": step, "loss": float(step)})
  writer.close()
  writer = hooks.MetricWriter(tmp_path, tensorboard=True, resume_step=10)
  writer.write({"split": "train", "step": 15, "loss": 15.5})  # replayed: a new value
  writer.write({"split": "train", "step": 20, "loss": 20.0})
  writer.close()
  acc = EventAccumulator(str(tmp_path / "tensorboard"))
  acc.Reload()
  assert [(e.step, e.value) for e in acc.Scalars("train/loss")] == [
      (5, 5.0), (10, 10.0), (15, 15.5), (20, 20.0)]


@pytest.mark.parametrize("epochs", [1, 3, 25])
def test_curves_have_whole_epoch_ticks(epochs):
  """A one-epoch run's axis had read 0.945 ... 1.065 (MaxNLocator over a span under 1)."""
  import matplotlib
  from flaxnets import plots
  before = matplotlib.get_backend()
  matplotlib.use("svg")  # the session's backend, which plotting must leave as it is
  rows = [{"split": split, "epoch": e, "loss": 1.0 / e, "accuracy": 0.5}
          for e in range(1, epochs + 1) for split in ("train", "val")]
  try:
    fig = plots.curves_figure(rows)
    backend = matplotlib.get_backend()
  finally:
    matplotlib.use(before)
  assert backend == "svg"  # matplotlib.use('Agg') had turned notebooks' inline figures off
  for ax in fig.axes:
    ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
    assert ticks and all(float(t).is_integer() for t in ticks), ticks
    assert 1 in ticks or epochs > 10
