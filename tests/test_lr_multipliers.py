"""config.optimizer.lr_multipliers: per-weight learning-rate factors (torch's param groups)."""
import re

import jax
import numpy as np
import optax
import pytest

import flaxnets
from flaxnets.config import ConfigError
from flaxnets.models import registry
from flaxnets.training import optim, parallel, steps
from flaxnets.training.state import create_state
from helpers import quiet_config

BATCH = 32  # 4 rows per device on 8 devices
PAIRS = (("^head/", 10.0), ("Conv_0", 0.25), ("Conv|head", 2.0))  # first match wins


def _batches(n=3):
  rng = np.random.default_rng(0)
  return [{"inputs": rng.normal(size=(BATCH, 8, 8, 1)).astype(np.float32),
           "labels": rng.integers(0, 10, BATCH).astype(np.int32)} for _ in range(n)]


def _ocfg(name, **changes):
  o = flaxnets.get_config().optimizer
  o.name = name
  o.learning_rate = 0.05 if name == "sgd" else 3e-3
  for k, v in changes.items():
    o[k] = v
  return o


def _train(tx, strategy_name="single", lr_multipliers=()):
  model = registry.build_model("simple_cnn", num_classes=10, features=(8, 16), hidden=32)
  strategy = parallel.Strategy(strategy_name)
  state = create_state(model, tx, jax.random.PRNGKey(0), (8, 8, 1), "image")
  step = strategy.compile_train(steps.make_train_step(
      num_classes=10, stats={}, schedule=optax.constant_schedule(1.0),
      axis_name=strategy.axis_name, lr_multipliers=lr_multipliers))
  state = strategy.put_state(state)
  for batch in _batches():
    state, _ = step(state, strategy.put_batch(batch))
  return strategy.get_state(state)


def _groups(params):
  """Each weight's group by PAIRS (the first pattern that matches), for optax.multi_transform."""
  return jax.tree_util.tree_map_with_path(
      lambda path, _: next((p for p, _ in PAIRS if re.search(p, jax.tree_util.keystr(path)
                                                              .replace("']['", "/")
                                                              .strip("[]'"))), "rest"),
      params)


@pytest.mark.parametrize("name, changes", [
    ("sgd", {"momentum": 0.9, "weight_decay": 1e-3}),
    ("adam", {}),
    ("adamw", {"weight_decay": 0.05}),
    ("lamb", {"weight_decay": 0.01}),
])
def test_a_factor_is_the_optimizer_at_that_rate_for_those_weights(name, changes):
  """Each group trained by its own optimizer at factor x the rate (optax.multi_transform,
  torch's param groups) makes the same weights after 3 steps, decay and momentum included."""
  ocfg = _ocfg(name, **changes)
  got = _train(optim.make_optimizer(ocfg, 10, 1)[0], lr_multipliers=PAIRS).params

  def scaled(factor):
    o = _ocfg(name, **changes)
    o.learning_rate = ocfg.learning_rate * factor
    return optim.make_optimizer(o, 10, 1)[0]

  reference = optax.multi_transform(
      {"rest": scaled(1.0), **{p: scaled(f) for p, f in PAIRS}}, _groups)
  want = _train(reference).params
  plain = _train(optim.make_optimizer(ocfg, 10, 1)[0]).params
  for layer in ("head", "Conv_0", "Conv_1", "Dense_0"):
    for leaf in ("kernel", "bias"):
      np.testing.assert_allclose(got[layer][leaf], want[layer][leaf], rtol=2e-5, atol=2e-7,
                                 err_msg=f"{name} {layer}/{leaf}")
  assert not np.allclose(got["head"]["kernel"], plain["head"]["kernel"], atol=1e-5)


def test_the_factors_are_the_same_on_pmap_and_a_mesh():
  tx = optim.make_optimizer(_ocfg("adam"), 10, 1)[0]
  want = _train(tx, "single", PAIRS).params
  for strategy in ("pmap", "mesh"):
    got = _train(tx, strategy, PAIRS).params
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6,
                                                         err_msg=strategy), got, want)


def test_the_run_logs_its_groups_and_a_resume_may_change_them(tmp_path, capsys):
  config = quiet_config(num_epochs=1, **{"optimizer.lr_multipliers": (("^head/", 10),)})
  flaxnets.train(config, str(tmp_path))
  assert ("learning-rate multipliers (config.optimizer.lr_multipliers): x10 for 2 arrays "
          "(1,290 parameters) matching '^head/'; x1 for the other 6 arrays") in \
      capsys.readouterr().out
  config = quiet_config(num_epochs=2)  # switched off at the resume: same optimizer state
  result = flaxnets.train(config, str(tmp_path))
  assert "optimizer.lr_multipliers: [['^head/', 10.0]] -> []" in capsys.readouterr().out
  assert result.history[-1]["epoch"] == 2


def test_frozen_weights_stay_frozen_whatever_their_factor():
  config = quiet_config(num_epochs=1, **{"optimizer.lr_multipliers": (("Conv", 5.0),),
                                         "optimizer.freeze": "^Conv_0/"})
  before = flaxnets.train(quiet_config(num_epochs=1, **{"optimizer.learning_rate": 1e-12}))
  after = flaxnets.train(config)
  np.testing.assert_array_equal(after.state.params["Conv_0"]["kernel"],
                                before.state.params["Conv_0"]["kernel"])
  assert not np.allclose(after.state.params["Conv_1"]["kernel"],
                         before.state.params["Conv_1"]["kernel"])


@pytest.mark.parametrize("pairs, message", [
    ((("^encoder/", 0.1),), "pattern '^encoder/' (x0.1): it matches no weight of this model "
                            "(Conv_0/bias, Conv_0/kernel"),
    ((("Conv", 0.1), ("Conv_1", 2.0)), "pattern 'Conv_1' (x2): every weight it matches is "
                                       "taken by an earlier pattern"),
])
def test_a_pattern_that_takes_no_weight_is_refused_before_training(tmp_path, pairs, message):
  step = tmp_path / "checkpoints" / "7"
  step.mkdir(parents=True)
  with pytest.raises(ConfigError, match=re.escape(message)):
    flaxnets.train(quiet_config(**{"optimizer.lr_multipliers": pairs}), str(tmp_path),
                   restart=True)
  assert step.is_dir()


@pytest.mark.parametrize("value, message", [
    ((("head", 0.0),), "factor 0.0 of 'head': expected a finite number > 0 (to hold weights "
                       "still, use config.optimizer.freeze)"),
    ((("head", float("nan")),), "factor nan of 'head': expected a finite number > 0"),
    ((("[", 2.0),), "'[' is not a regular expression"),
    ((("head",),), "('head',) is not a (pattern, factor) pair"),
    ((("head", "2"),), "factor '2' of 'head'"),
])
def test_a_malformed_setting_is_refused_by_name(value, message):
  with pytest.raises(ConfigError, match=r"config\.optimizer\.lr_multipliers=.*" +
                     re.escape(message)):
    flaxnets.train(quiet_config(**{"optimizer.lr_multipliers": value}))


def test_a_dict_on_the_command_line_is_explained(capsys):
  """ml_collections' flag parser turns a dict into a tuple of its keys before flaxnets
  sees it: the error says so and shows the pairs to write."""
  from flaxnets.cli import main
  assert main(["train", "--config.optimizer.lr_multipliers={'^head/': 3.0}"]) == 2
  err = capsys.readouterr().err
  assert "'^head/' is not a (pattern, factor) pair" in err, err
  assert ("a dict given as --config.optimizer.lr_multipliers reaches flaxnets as its keys "
          "alone: give pairs, \"(('^head/', 3.0),)\"") in err, err
