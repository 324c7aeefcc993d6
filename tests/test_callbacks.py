"""train(..., callbacks=[...]): called after every epoch with a flaxnets.EpochEnd (Keras's
on_epoch_end logs, the model and its weights); True stops training."""
import json
import re

import jax
import numpy as np
import pytest

import flaxnets
from flaxnets.training import checkpoint as checkpoint_lib

from helpers import quiet_config

SMALL = {"num_epochs": 3, "model.features": (8, 16), "model.hidden": 32}


class Recorder:
  def __init__(self, stop_at=None):
    self.ends, self.weights, self.stop_at = [], [], stop_at

  def __call__(self, end):
    self.ends.append(end)
    self.weights.append(end.variables())
    return end.epoch == self.stop_at


def test_every_epoch_reaches_the_callbacks_with_its_logs_and_weights():
  first, second = Recorder(), Recorder()
  result = flaxnets.train(quiet_config(**SMALL), callbacks=[first, second])
  assert [e.epoch for e in first.ends] == [e.epoch for e in second.ends] == [1, 2, 3]
  train = [h for h in result.history if h["split"] == "train"]
  val = [h for h in result.history if h["split"] == "val"]
  for end, t, v in zip(first.ends, train, val):
    assert end.step == t["step"] == 39 * end.epoch
    assert end.logs == {"loss": t["loss"], "accuracy": t["accuracy"],
                        "learning_rate": t["learning_rate"],
                        "examples_per_sec": t["examples_per_sec"],
                        "val_loss": v["loss"], "val_accuracy": v["accuracy"],
                        "val_macro_f1": v["macro_f1"]}
  # the last epoch's weights are the result's; each epoch's differ from the one before
  jax.tree.map(np.testing.assert_array_equal, first.weights[-1]["params"], result.state.params)
  assert not np.array_equal(first.weights[0]["params"]["head"]["kernel"],
                            first.weights[1]["params"]["head"]["kernel"])
  # the model applies to them as Keras's callbacks use self.model
  x = result.dataset.test["inputs"][:4]
  logits = first.ends[-1].model.apply(first.weights[-1], x, None, train=False)
  assert logits.shape == (4, 10)
  assert not result.stopped_by_callback


def test_a_callback_returning_true_stops_training_after_that_epoch(tmp_path, capsys):
  stopper, other = Recorder(stop_at=2), Recorder()
  result = flaxnets.train(quiet_config(**SMALL), str(tmp_path), callbacks=[stopper, other])
  assert [e.epoch for e in other.ends] == [1, 2]  # the others still see the epoch it stops
  assert result.stopped_by_callback and not result.stopped_early
  assert [h["epoch"] for h in result.history if h["split"] == "train"] == [1, 2]
  assert "stopped by a callback after epoch 2" in capsys.readouterr().out
  results = json.loads((tmp_path / "results.json").read_text())
  assert results["stopped_by_callback"] is True and results["steps"] == 78
  # nothing stops a resume: it trains on to num_epochs
  resumed = flaxnets.train(quiet_config(**SMALL), str(tmp_path))
  assert [h["epoch"] for h in resumed.history if h["split"] == "train"] == [1, 2, 3]


def test_an_exception_in_a_callback_ends_train_with_the_epoch_saved(tmp_path):
  def fails(end):
    if end.epoch == 2:
      raise KeyError("the user's bug")

  with pytest.raises(KeyError, match="the user's bug"):
    flaxnets.train(quiet_config(**SMALL), str(tmp_path), callbacks=[fails])
  assert checkpoint_lib.existing_steps(tmp_path) == ["checkpoints/39", "checkpoints/78",
                                                    "best/78"]
  resumed = flaxnets.train(quiet_config(**SMALL), str(tmp_path))  # the workdir is free again
  assert resumed.history[-2]["epoch"] == 3


def test_weights_asked_for_after_the_callback_are_refused():
  kept = []
  flaxnets.train(quiet_config(**{**SMALL, "num_epochs": 1}), callbacks=[kept.append])
  assert kept[0].epoch == 1 and "val_loss" in kept[0].logs
  with pytest.raises(RuntimeError, match=r"EpochEnd.variables\(\) of epoch 1 was called after "
                                         r"the callbacks returned"):
    kept[0].variables()


@pytest.mark.parametrize("callbacks, message", [
    (print, "callbacks=<built-in function print>: expected a list of callables, each called as "
            "callback(end: flaxnets.EpochEnd) after every epoch; pass [print]"),
    ([print, 3], "callbacks[1]=3: expected a callable"),
    ("stop", "callbacks='stop': expected a list of callables"),
])
def test_callbacks_that_are_not_callables_are_refused_before_training(callbacks, message):
  with pytest.raises(TypeError, match=re.escape(message)):
    flaxnets.train(quiet_config(**SMALL), callbacks=callbacks)


def test_a_callback_returning_something_else_is_an_error():
  with pytest.raises(TypeError, match=r"callbacks\[0\] \(<lambda>\) returned 0.5 after epoch 1: "
                                      r"expected True \(stop training\), False or None"):
    flaxnets.train(quiet_config(**SMALL), callbacks=[lambda end: 0.5])


def test_a_zero_d_bool_array_stops_and_none_means_no_callbacks():
  result = flaxnets.train(quiet_config(**SMALL), callbacks=[lambda end: np.array(end.epoch == 1)])
  assert result.stopped_by_callback and len(result.history) == 2
  assert not flaxnets.train(quiet_config(**{**SMALL, "num_epochs": 1}),
                            callbacks=None).stopped_by_callback


def test_stopping_after_the_last_epoch_stops_nothing(capsys):
  result = flaxnets.train(quiet_config(**{**SMALL, "num_epochs": 2}),
                          callbacks=[lambda end: end.epoch == 2])
  assert not result.stopped_by_callback and "stopped by a callback" not in capsys.readouterr().out


def test_the_epochs_checkpoint_is_committed_when_the_callbacks_run(tmp_path):
  """Saves are asynchronous; a callback that copies the checkpoint had found it half written
  (epoch 1) or found the epoch before (later)."""
  seen = []

  def latest(end):
    predictor = flaxnets.load(tmp_path, step="latest")
    seen.append((int(predictor.path.name), end.step))
    jax.tree.map(np.testing.assert_array_equal, predictor.params, end.variables()["params"])

  flaxnets.train(quiet_config(**SMALL), str(tmp_path), callbacks=[latest])
  assert [s for s, _ in seen] == [e for _, e in seen] == [39, 78, 117]


def test_a_kept_epoch_end_holds_no_training_state():
  """The fetch closure held the final device state: a kept EpochEnd had kept it alive."""
  import gc
  kept = []
  before = {id(a) for a in jax.live_arrays()}
  flaxnets.train(quiet_config(**{**SMALL, "num_epochs": 1}), callbacks=[kept.append])
  gc.collect()
  new = [a for a in jax.live_arrays() if id(a) not in before]
  assert not [a.shape for a in new if a.shape == (32, 10)]  # the head's kernel, Adam's mu, nu
  assert kept[0].epoch == 1


def test_a_callbacks_own_interrupted_run_stops_this_one_as_a_signal_would(tmp_path):
  """Ctrl-C during a callback's own train() ends that run with flaxnets.Interrupted: the
  outer run had passed it on as its own (no workdir, another seed's result)."""
  inner = flaxnets.Interrupted("flaxnets: received SIGINT at step 3; stopped without a "
                               "checkpoint", None)

  def nested(end):
    raise inner

  with pytest.raises(flaxnets.Interrupted) as caught:
    flaxnets.train(quiet_config(**SMALL), str(tmp_path), callbacks=[nested])
  assert caught.value.__cause__ is inner
  assert str(caught.value) == (f"flaxnets: received a stop signal (in a callback's train) at "
                               f"step 39; saved a checkpoint in {tmp_path}. Run the same "
                               "command again to resume.")
  assert caught.value.result.workdir == str(tmp_path) and caught.value.result.interrupted
  assert checkpoint_lib.existing_steps(tmp_path)[0] == "checkpoints/39"
