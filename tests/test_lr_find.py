"""flaxnets.lr_find: the learning-rate range test and its suggestion."""
from __future__ import annotations

import math

import numpy as np
import pytest

import flaxnets
from flaxnets.training.lr_find import centred_average, suggest
from helpers import quiet_config

SMALL = {"model.features": (8, 16), "model.hidden": 32}


def test_the_sweep_suggests_a_rate_that_trains(capsys):
  """SimpleCNN on digits over the 8 test devices: the rates grow geometrically from
  start_lr to end_lr; at the suggestion 2 epochs train well, at the sweep's first rate
  nothing is learned."""
  config = quiet_config(**SMALL)
  before = config.to_dict()
  result = flaxnets.lr_find(config)
  assert config.to_dict() == before  # nothing of the caller's is changed
  rates = result.learning_rates
  assert len(rates) == len(result.losses) == len(result.smoothed_losses) == 100
  np.testing.assert_allclose(rates[[0, -1]], [1e-7, 10.0], rtol=1e-5)
  np.testing.assert_allclose(rates[1:] / rates[:-1], (1e8) ** (1 / 99), rtol=1e-4)
  assert not result.stopped_early
  assert 3e-3 <= result.suggestion <= 0.06, result.suggestion
  assert result.suggestion < result.min_loss_lr
  accuracy = {}
  for lr in (result.suggestion, 1e-7):
    config.optimizer.learning_rate = lr
    config.num_epochs = 2
    accuracy[lr] = flaxnets.train(config).val_metrics["accuracy"]
  assert accuracy[result.suggestion] > 0.85 and accuracy[1e-7] < 0.3, accuracy


def test_a_diverging_loss_stops_the_sweep(tmp_path):
  result = flaxnets.lr_find(quiet_config(**SMALL, **{"optimizer.name": "sgd"}),
                            start_lr=1e-3, end_lr=1e6, num_steps=60)
  assert result.stopped_early and len(result.losses) < 60
  last = result.smoothed_losses[-1]
  assert not math.isfinite(last) or last > 4 * result.smoothed_losses[:-1].min()
  png = result.plot(tmp_path / "plots" / "lr.png")
  assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_suggestion_is_the_steepest_fall_before_the_minimum():
  lrs = np.geomspace(1e-6, 1.0, 100)
  x = np.arange(100)
  # falls fastest at step 50, lowest at 75, then rises; the steeper fall after a spike
  # past the minimum (a diverging network settling) is not taken
  losses = 2.0 - np.tanh((x - 50) / 8.0) + 0.002 * np.maximum(0, x - 75) ** 2
  losses[85:90] += 3.0
  assert np.gradient(centred_average(losses, 15))[88:95].min() < \
      np.gradient(centred_average(losses, 15))[40:60].min()
  rate, low = suggest(lrs, losses)
  assert rate == pytest.approx(lrs[50])
  assert lrs[70] <= low <= lrs[80]
  # centred: no lag, unlike an exponential average
  assert int(np.argmax(-np.gradient(centred_average(losses[:80], 15)))) == 50
  assert suggest(lrs, np.linspace(1, 2, 100)) == (None, pytest.approx(lrs[10]))  # never falls
  rng = np.random.default_rng(0)  # noise on a flat curve dips, but not by 5%
  assert all(suggest(lrs, 2.3 + 0.05 * rng.standard_normal(100))[0] is None
             for _ in range(50))
  assert suggest(lrs[:12], losses[:12]) == (None, None)  # too few points


@pytest.mark.parametrize("kwargs,message", [
    ({"start_lr": 0.0}, r"start_lr=0.0: expected a finite number > 0"),
    ({"start_lr": 1.0, "end_lr": 0.1}, r"end_lr=0.1: expected a finite number > start_lr"),
    ({"end_lr": math.inf}, r"end_lr=inf: expected a finite number"),
    ({"num_steps": 1}, r"num_steps=1: expected an integer >= 2"),
    ({"num_steps": 10.0}, r"num_steps=10.0: expected an integer >= 2"),
    ({"stop_factor": 1.0}, r"stop_factor=1.0: expected a number > 1"),
    ({"smoothing": 1.0}, r"smoothing=1.0: expected a number in \[0, 1\)"),
    ({"skip_begin": -1}, r"skip_begin=-1: expected an integer >= 0"),
    ({"num_steps": 12}, r"num_steps=12: expected at least skip_begin \+ skip_end \+ 3 = 14"),
])
def test_bad_arguments_are_refused(kwargs, message):
  with pytest.raises(ValueError, match=message):
    flaxnets.lr_find(quiet_config(), **kwargs)


def test_a_bad_config_is_refused():
  with pytest.raises(flaxnets.ConfigError, match=r"config.batch_size=0"):
    flaxnets.lr_find(quiet_config(batch_size=0))
  with pytest.raises(flaxnets.ConfigError, match=r"expected an ml_collections.ConfigDict"):
    flaxnets.lr_find({"model": {}})


def test_the_sweep_starts_from_config_init_and_refuses_what_train_refuses(tmp_path):
  """A fine-tuning sweep starts from config.init's weights (a trained model's first loss
  is far below a fresh one's); config.debug does not stop it; a freeze pattern that fits
  no weight is refused as train refuses it; rates past float32's range stay finite."""
  source = tmp_path / "source"
  flaxnets.train(quiet_config(num_epochs=3, **SMALL), str(source))
  fresh = flaxnets.lr_find(quiet_config(**SMALL), num_steps=20, skip_begin=2)
  tuned = flaxnets.lr_find(quiet_config(**SMALL, **{"init.workdir": str(source),
                                                   "debug": True}), num_steps=20, skip_begin=2)
  assert tuned.losses[0] < 0.5 * fresh.losses[0], (tuned.losses[0], fresh.losses[0])
  with pytest.raises(flaxnets.ConfigError, match=r"config.optimizer.freeze='nothing_here'"):
    flaxnets.lr_find(quiet_config(**SMALL, **{"optimizer.freeze": "nothing_here"}))
  wide = flaxnets.lr_find(quiet_config(**SMALL), start_lr=1e-30, end_lr=1e10, num_steps=20,
                          skip_begin=2)
  assert np.isfinite(wide.learning_rates[:-1]).all() and wide.learning_rates[1] < 1e-20


def test_the_command_line_sweeps_and_suggests(tmp_path, capsys):
  from flaxnets.cli import main
  small = ["--config.model.features=(8,16)", "--config.model.hidden=32",
           "--config.progress=false"]
  png = tmp_path / "lr.png"
  assert main(["lr_find", *small, "--plot", str(png)]) == 0
  out = capsys.readouterr().out
  assert "step  learning rate      loss  smoothed" in out
  rate = float(out.split("suggested learning rate: ")[1].split()[0])
  assert 3e-3 <= rate <= 0.06, out
  assert png.read_bytes()[:4] == b"\x89PNG"
  assert main(["lr_find", *small, "--num_steps=1"]) == 2
  assert "flaxnets lr_find: num_steps=1: expected an integer >= 2" in capsys.readouterr().err
  assert main(["lr_find", *small, "--plot=lr.txt"]) == 2
  assert "--plot='lr.txt': expected a .png file name" in capsys.readouterr().err
  assert main(["lr_find", *small, "extra"]) == 2
  assert ("unexpected argument(s) ['extra']: lr_find takes only flags; usage: flaxnets "
          "lr_find") in capsys.readouterr().err
