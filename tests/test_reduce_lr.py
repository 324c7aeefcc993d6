"""config.reduce_lr_on_plateau: the learning rate cut on a validation plateau (Keras's
ReduceLROnPlateau), stepped once an epoch, carried in the optimizer state."""
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import flaxnets
from flaxnets import config as config_lib
from flaxnets.training import optim, parallel
from flaxnets.training.state import TrainState

from helpers import quiet_config


def reference_scales(values, *, patience, factor, min_delta, cooldown=0, min_scale=0.0,
                     mode="min"):
  """The scale after each epoch, by the rules written out (optax's reduce_on_plateau with
  an absolute tolerance): an epoch improves when it beats the best by more than min_delta;
  `patience` epochs in a row without improvement multiply the scale by `factor` (not below
  min_scale) and start `cooldown` epochs in which nothing is counted."""
  best, bad, cool, scale, out = math.inf, 0, 0, 1.0, []
  for v in values:
    v = -v if mode == "max" else v
    improved = v < best - min_delta
    if improved:
      best = v
    bad = 0 if improved else bad + 1
    if cool > 0:
      bad, cool = 0, cool - 1
    elif bad == patience:
      scale, bad, cool = max(scale * factor, min_scale), 0, cooldown
    out.append(scale)
  return out


def host_state(rcfg, learning_rate=0.1):
  params = {"w": jnp.ones((3,), jnp.float32)}
  ocfg = flaxnets.get_config().optimizer
  ocfg.update(name="sgd", momentum=0.0, schedule="constant", learning_rate=learning_rate)
  tx, _ = optim.make_optimizer(ocfg, 10, 1, plateau=rcfg)
  return TrainState.create(apply_fn=None, params=params, tx=tx)


def plateau_cfg(**kw):
  rcfg = flaxnets.get_config().reduce_lr_on_plateau
  rcfg.update(**kw)
  return rcfg


@pytest.mark.parametrize("settings, values", [
    # improves, then 0.995 and 0.975 miss their best by 0.01: two bad epochs -> x0.5
    (dict(patience=2, factor=0.5, min_delta=0.01), [1.0, 0.995, 0.98, 0.975, 0.975, 0.9, 0.95]),
    # accuracy: higher is better; ties are no improvement
    (dict(patience=2, factor=0.1, min_delta=1e-4, metric="accuracy"),
     [0.5, 0.6, 0.6, 0.6, 0.7, 0.7, 0.65, 0.7]),
    # a cooldown epoch after each cut is not counted; the floor holds at min_scale
    (dict(patience=1, factor=0.1, min_delta=1e-4, cooldown=1, min_scale=0.005),
     [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]),
])
def test_the_scale_follows_the_rules_epoch_by_epoch(settings, values):
  rcfg = plateau_cfg(**settings)
  plateau = optim.Plateau(rcfg)
  state, strategy = host_state(rcfg), parallel.Strategy("single")
  state = strategy.put_state(state)
  got = []
  for v in values:
    state, before, after = plateau.update(state, v, strategy)
    got.append(after)
  mode = config_lib.metric_mode(rcfg.metric, rcfg.mode)
  want = reference_scales(values, mode=mode, **{k: v for k, v in settings.items()
                                                if k != "metric"})
  np.testing.assert_allclose(got, want, rtol=1e-6)
  assert min(want) < 1.0  # every case cuts at least once
  assert float(optim.lr_scale(strategy.get_state(state).opt_state)) == pytest.approx(want[-1])


def test_the_update_is_the_schedules_times_the_scale():
  rcfg = plateau_cfg(patience=1)
  state = host_state(rcfg)
  grads = {"w": jnp.array([1.0, -2.0, 4.0])}
  full = state.apply_gradients(grads=grads).params["w"] - state.params["w"]
  np.testing.assert_allclose(full, [-0.1, 0.2, -0.4], rtol=1e-6)
  halved = state.replace(opt_state=optim.with_plateau_state(
      state.opt_state, optim.plateau_state(state.opt_state)._replace(scale=jnp.float32(0.5))))
  step = halved.apply_gradients(grads=grads).params["w"] - halved.params["w"]
  np.testing.assert_allclose(step, 0.5 * np.asarray(full), rtol=1e-6)
  assert optim.plateau_state(host_state(plateau_cfg(patience=0)).opt_state) is None


def cut_every_epoch(**changes):
  """Digits; validation loss never beats its best by 10, so from epoch 2 on every epoch
  (patience 1) halves the learning rate: cuts that do not depend on the numbers."""
  return quiet_config(**{"num_epochs": 4, "optimizer.schedule": "constant",
                         "optimizer.learning_rate": 2e-3, "model.features": (8, 16),
                         "model.hidden": 32, "reduce_lr_on_plateau.patience": 1,
                         "reduce_lr_on_plateau.factor": 0.5,
                         "reduce_lr_on_plateau.min_delta": 10.0, **changes})


def epoch_rates(result):
  return [h["learning_rate"] for h in result.history if h["split"] == "train"]


@pytest.mark.parametrize("strategy", ["single", "mesh", "pmap"])
def test_training_cuts_the_rate_on_a_plateau_on_every_strategy(strategy, capsys):
  result = flaxnets.train(cut_every_epoch(**{"parallel.strategy": strategy}))
  # epoch 1 sets the best; each later epoch misses it and halves the rate for the next
  np.testing.assert_allclose(epoch_rates(result), [2e-3, 2e-3, 1e-3, 5e-4], rtol=1e-6)
  assert float(optim.lr_scale(result.state.opt_state)) == 0.125  # after epoch 4's cut
  out = capsys.readouterr().out
  assert out.count("reduce_lr_on_plateau: validation loss has not improved by more than 10 "
                   "for 1 epoch(s): learning rate x0.5") == 3
  assert "now 0.125 x the schedule's" in out


def test_a_resumed_run_keeps_the_plateau_and_equals_an_uninterrupted_one(tmp_path):
  whole = flaxnets.train(cut_every_epoch(), str(tmp_path / "whole"))
  flaxnets.train(cut_every_epoch(num_epochs=2), str(tmp_path / "split"))
  resumed = flaxnets.train(cut_every_epoch(), str(tmp_path / "split"))
  assert epoch_rates(resumed) == epoch_rates(whole)
  jax.tree.map(np.testing.assert_array_equal, resumed.state.params, whole.state.params)
  jax.tree.map(np.testing.assert_array_equal, resumed.state.opt_state, whole.state.opt_state)


def test_a_changed_metric_at_a_resume_forgets_the_old_best(tmp_path, capsys):
  # epoch 1 sets the best loss; epoch 2 misses it by 10 (patience 2: no cut yet)
  flaxnets.train(cut_every_epoch(num_epochs=2, **{"reduce_lr_on_plateau.patience": 2}),
                 str(tmp_path))
  resumed = flaxnets.train(cut_every_epoch(**{"reduce_lr_on_plateau.patience": 2,
                                              "reduce_lr_on_plateau.metric": "accuracy"}),
                           str(tmp_path))
  assert ("reduce_lr_on_plateau.metric/mode changed from loss (min) to accuracy (max): the "
          "plateau counts from this resume on") in capsys.readouterr().out
  # Epoch 3 sets the first best accuracy and epoch 4 counts one bad epoch: no cut. Kept, the
  # best loss (~0.3) against -accuracy had counted epoch 3 as the second bad one and cut.
  assert epoch_rates(resumed) == [2e-3] * 4
  assert float(optim.lr_scale(resumed.state.opt_state)) == 1.0


@pytest.mark.parametrize("key, value, allowed", [
    ("factor", 1.0, "a number in (0, 1)"),
    ("factor", 0.0, "a number in (0, 1)"),
    ("min_delta", 0.0, "a finite number > 0"),
    ("patience", -1, "an integer >= 0 (0: off)"),
    ("metric", "val_loss", "one of ('loss', 'accuracy', 'top5_accuracy', 'macro_f1')"),
    ("min_scale", 1.5, "a number in [0, 1]"),
])
def test_bad_settings_are_refused_by_name(key, value, allowed):
  with pytest.raises(flaxnets.ConfigError, match=re.escape(
      f"config.reduce_lr_on_plateau.{key}={value!r}") + ".*" + re.escape(allowed)):
    flaxnets.train(quiet_config(**{f"reduce_lr_on_plateau.{key}": value}))


def test_settings_that_cannot_work_are_named(capsys):
  x = np.random.default_rng(0).normal(size=(64, 8, 8, 1)).astype(np.float32)
  y = np.arange(64) % 2
  flaxnets.train(quiet_config(**{"dataset.name": "arrays", "dataset.val_fraction": 0.0,
                                 "num_epochs": 1, "reduce_lr_on_plateau.patience": 3}),
                 data={"train": (x, y)})
  assert ("reduce_lr_on_plateau.patience=3 has no effect: dataset 'arrays' has no validation "
          "split to watch") in capsys.readouterr().out
  with pytest.raises(flaxnets.ConfigError, match="reduce_lr_on_plateau.metric='top5_accuracy'"):
    flaxnets.train(quiet_config(**{"dataset.name": "arrays", "reduce_lr_on_plateau.patience": 1,
                                   "reduce_lr_on_plateau.metric": "top5_accuracy"}),
                   data={"train": (x, y)})


def test_switching_it_on_at_a_resume_starts_the_plateau_afresh(tmp_path, capsys):
  flaxnets.train(cut_every_epoch(num_epochs=2, **{"reduce_lr_on_plateau.patience": 0}),
                 str(tmp_path))
  resumed = flaxnets.train(cut_every_epoch(), str(tmp_path))
  out = capsys.readouterr().out
  assert "resumed from step 78" in out and "reduce_lr_on_plateau.patience: 0 -> 1" in out
  # epoch 3 sets the plateau's first best, epoch 4 misses it: one cut, after epoch 4
  assert epoch_rates(resumed) == [2e-3] * 4
  assert float(optim.lr_scale(resumed.state.opt_state)) == 0.5


def test_switching_it_off_at_a_resume_gives_back_the_schedules_rate(tmp_path, capsys):
  flaxnets.train(cut_every_epoch(num_epochs=3), str(tmp_path))  # cut after epochs 2 and 3
  resumed = flaxnets.train(cut_every_epoch(**{"reduce_lr_on_plateau.patience": 0}),
                           str(tmp_path))
  assert ("reduce_lr_on_plateau is off from this resume: the learning rate is the schedule's "
          "again (the checkpoint's was x0.25 of it)") in capsys.readouterr().out
  np.testing.assert_allclose(epoch_rates(resumed), [2e-3, 2e-3, 1e-3, 2e-3], rtol=1e-6)
  assert optim.plateau_state(resumed.state.opt_state) is None


def test_early_stopping_restores_weights_saved_before_it_was_switched_on(tmp_path, capsys):
  """The best epoch's checkpoint has the other optimizer layout: it is restored all the same."""
  stalled = {"optimizer.learning_rate": 1e-9, "early_stopping.patience": 2,
             "early_stopping.min_delta": 0.01, "early_stopping.restore_best": True,
             "checkpoint.max_to_keep": 3}
  first = flaxnets.train(cut_every_epoch(num_epochs=2, **stalled,
                                         **{"reduce_lr_on_plateau.patience": 0}), str(tmp_path))
  resumed = flaxnets.train(cut_every_epoch(num_epochs=5, **stalled), str(tmp_path))
  assert resumed.stopped_early and "restored the weights of epoch 1" in capsys.readouterr().out
  epoch1 = [h for h in first.history if h["split"] == "val"][0]
  assert resumed.val_metrics["loss"] == pytest.approx(epoch1["loss"], rel=1e-6)
  assert optim.plateau_state(resumed.state.opt_state) is not None


def test_a_state_saved_before_the_first_validation_is_finite(tmp_path):
  """optax starts the best value at +inf; the checkpoint's finiteness check and
  config.debug's had refused that state as diverged at the first mid-epoch save or step."""
  result = flaxnets.train(cut_every_epoch(num_epochs=1, **{"checkpoint.every_steps": 10,
                                                           "debug": True}), str(tmp_path))
  assert sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir()) == [30, 39]
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(result.state.opt_state))


def test_the_plateau_keeps_float32_with_bfloat16_parameters():
  """optax takes the state's dtypes from the parameters: in bfloat16 a 5e-4 improvement of a
  0.3 loss had rounded away (a spurious cut) and the scale had read 0.1001."""
  rcfg = plateau_cfg(patience=2, factor=0.1, min_delta=1e-4)
  ocfg = flaxnets.get_config().optimizer
  ocfg.update(name="sgd", momentum=0.0, schedule="constant", learning_rate=0.1)
  tx, _ = optim.make_optimizer(ocfg, 10, 1, plateau=rcfg)
  params = {"w": jnp.ones((3,), jnp.bfloat16)}
  state = TrainState.create(apply_fn=None, params=params, tx=tx)
  plateau, strategy = optim.Plateau(rcfg), parallel.Strategy("single")
  state = strategy.put_state(state)
  for v in [0.300, 0.2995, 0.2990, 0.2985, 0.2980]:
    state, _, after = plateau.update(state, v, strategy)
  assert after == 1.0
  for v in [0.2980, 0.2980]:
    state, _, after = plateau.update(state, v, strategy)
  assert after == pytest.approx(0.1, rel=1e-7)
  new = state.apply_gradients(grads={"w": jnp.ones((3,), jnp.bfloat16)})
  assert new.params["w"].dtype == jnp.bfloat16


def test_a_patience_lowered_at_a_resume_cuts_at_once(tmp_path):
  """Four bad epochs counted under patience 5, then patience 2: the next bad epoch cuts
  (Keras counts `wait >= patience`; optax alone cuts only at `count == patience`)."""
  flaxnets.train(cut_every_epoch(num_epochs=5, **{"reduce_lr_on_plateau.patience": 5}),
                 str(tmp_path))
  resumed = flaxnets.train(cut_every_epoch(num_epochs=7, **{"reduce_lr_on_plateau.patience": 2}),
                           str(tmp_path))
  # epoch 6 cuts (5 bad epochs >= 2); epoch 7 is the first of a new count
  np.testing.assert_allclose(epoch_rates(resumed), [2e-3] * 6 + [1e-3], rtol=1e-6)


def test_switching_it_on_with_another_metric_does_not_claim_a_change(tmp_path, capsys):
  flaxnets.train(cut_every_epoch(num_epochs=1, **{"reduce_lr_on_plateau.patience": 0}),
                 str(tmp_path))
  flaxnets.train(cut_every_epoch(num_epochs=2, **{"reduce_lr_on_plateau.metric": "accuracy"}),
                 str(tmp_path))
  assert "reduce_lr_on_plateau.metric/mode changed" not in capsys.readouterr().out


def test_a_min_scale_raised_at_a_resume_is_said(tmp_path, capsys):
  flaxnets.train(cut_every_epoch(num_epochs=3), str(tmp_path))  # scale 0.25
  capsys.readouterr()
  resumed = flaxnets.train(cut_every_epoch(**{"reduce_lr_on_plateau.min_scale": 0.5}),
                           str(tmp_path))
  assert ("reduce_lr_on_plateau: min_scale=0.5 raises the learning rate to 0.5 x the "
          "schedule's (it was 0.25 x)") in capsys.readouterr().out
  # from the resume on: epoch 4 runs at 0.5 x (epoch 4's own cut stops at the floor)
  np.testing.assert_allclose(epoch_rates(resumed), [2e-3, 2e-3, 1e-3, 1e-3], rtol=1e-6)
  assert float(optim.lr_scale(resumed.state.opt_state)) == 0.5


def test_a_cooldown_lowered_at_a_resume_applies_at_once(tmp_path):
  flaxnets.train(cut_every_epoch(num_epochs=2, **{"reduce_lr_on_plateau.cooldown": 3}),
                 str(tmp_path))  # cut after epoch 2, then 3 epochs not counted
  resumed = flaxnets.train(cut_every_epoch(num_epochs=5), str(tmp_path))  # cooldown 0
  whole = flaxnets.train(cut_every_epoch(num_epochs=5))
  assert epoch_rates(resumed) == epoch_rates(whole)
  np.testing.assert_allclose(epoch_rates(whole), [2e-3, 2e-3, 1e-3, 5e-4, 2.5e-4], rtol=1e-6)
