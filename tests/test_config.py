"""Config validation: one test per kind of bad value; each message names key, value and what is allowed."""
import subprocess
import sys

import ml_collections
import pytest

import flaxnets
from flaxnets.config import ConfigError, validate


def _set(config, dotted, value):
  *parents, leaf = dotted.split(".")
  node = config
  for p in parents:
    node = node[p]
  with node.unlocked() if hasattr(node, "unlocked") else _null():
    node[leaf] = value


class _null:
  def __enter__(self):
    return self

  def __exit__(self, *a):
    return False


@pytest.mark.parametrize("key,value,allowed", [
    ("optimizer.learning_rate", 0.0, "> 0"),
    ("optimizer.learning_rate", -1e-3, "> 0"),
    ("batch_size", 0, ">= 1"),
    ("num_epochs", 0, ">= 1"),
    ("eval_batch_size", -4, ">= 1"),
    ("grad_accum_steps", 0, ">= 1"),
    ("dataset.val_fraction", 1.0, "[0, 1)"),
    ("optimizer.label_smoothing", 1.5, "[0, 1)"),
    ("optimizer.momentum", 1.0, "[0, 1)"),
    ("optimizer.name", "adagradd", "one of"),
    ("optimizer.schedule", "cosinus", "one of"),
    ("dataset.name", "cifar11", "one of"),
    ("parallel.strategy", "pjit", "one of"),
    ("checkpoint.best_mode", "maximum", "one of ('auto', 'min', 'max')"),
])
def test_out_of_range_or_unknown_value(key, value, allowed):
  config = flaxnets.get_config()
  _set(config, key, value)
  with pytest.raises(ConfigError) as e:
    validate(config)
  msg = str(e.value)
  assert f"config.{key}={value!r}" in msg
  assert allowed in msg


@pytest.mark.parametrize("dropout", [-0.1, 1.0, 1.5])
def test_dropout_outside_unit_interval(dropout):
  config = flaxnets.get_config()
  config.model.dropout = dropout
  with pytest.raises(ConfigError, match=rf"config\.model\.dropout={dropout!r}: expected a number in \[0, 1\)"):
    validate(config)


def test_unknown_model_name_lists_models():
  config = flaxnets.get_config()
  config.model.name = "resnet19"
  with pytest.raises(ConfigError) as e:
    validate(config)
  assert "config.model.name='resnet19'" in str(e.value)
  for name in ("simple_cnn", "resnet18", "resnet20", "rnn", "crnn", "conv1d", "char_lm"):
    assert name in str(e.value)


def test_unknown_top_level_key():
  config = flaxnets.get_config()
  config.learning_rate = 0.1  # belongs under optimizer
  with pytest.raises(ConfigError, match=r"config\.learning_rate: unknown key \(value 0\.1\).*allowed keys"):
    validate(config)


def test_unknown_nested_key_names_section():
  config = flaxnets.get_config()
  config.optimizer.lerning_rate = 0.1
  with pytest.raises(ConfigError) as e:
    validate(config)
  assert "config.optimizer.lerning_rate" in str(e.value)
  assert "learning_rate" in str(e.value).split("allowed keys")[1]


def test_unknown_model_field_lists_fields():
  config = flaxnets.get_config()
  config.model.hiden = 64
  with pytest.raises(ConfigError) as e:
    validate(config)
  assert "config.model.hiden=64" in str(e.value) and "'hidden'" in str(e.value)


def test_a_model_section_without_a_name_is_named():
  """Written out whole, Flax-examples style: had been AttributeError "'name'"."""
  config = flaxnets.get_config()
  config.model = ml_collections.ConfigDict({"features": (16, 32), "hidden": 64})
  with pytest.raises(ConfigError, match=r"config\.model\.name: missing; expected one of \["):
    validate(config)


def test_a_field_the_trainer_sets_is_refused_and_not_offered():
  """bn_axis_name passed validation (after the data was read, the model refused it) and was
  listed among the allowed fields."""
  config = flaxnets.get_config()
  config.model.name = "resnet20"
  config.model.bn_axis_name = "x"
  with pytest.raises(ConfigError, match=r"config\.model\.bn_axis_name='x': the trainer sets it "
                                        r"itself .*; allowed: \[") as e:
    validate(config)
  assert "bn_axis_name" not in str(e.value).split("allowed:")[1]
  config.model.name = "rnn"  # a model without the field: named as no field of it
  with pytest.raises(ConfigError, match=r"bn_axis_name='x': not a field of model 'rnn'"):
    validate(config)
  config.model.name = "resnet20"
  del config.model["bn_axis_name"]
  config.model.hiden = 64
  with pytest.raises(ConfigError, match="not a field of model 'resnet20'") as e:
    validate(config)
  assert "bn_axis_name" not in str(e.value).split("allowed:")[1]


def _from_dict(**changes):
  """A config as loaded from JSON/YAML: plain dict values, no ConfigDict type locking."""
  d = flaxnets.get_config().to_dict()
  for dotted, value in changes.items():
    node = d
    *parents, leaf = dotted.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return ml_collections.ConfigDict(d)


@pytest.mark.parametrize("key,value,expected", [
    ("batch_size", "32", "expected int, got str"),
    ("num_epochs", True, "expected int, got bool"),
    ("optimizer.learning_rate", "1e-3", "expected float, got str"),
    ("progress", 1, "expected bool, got int"),
])
def test_wrong_type(key, value, expected):
  with pytest.raises(ConfigError) as e:
    validate(_from_dict(**{key: value}))
  assert f"config.{key}={value!r}: {expected}" in str(e.value)


def test_configdict_rejects_wrong_type_on_assignment():
  config = flaxnets.get_config()
  with pytest.raises(TypeError, match="batch_size"):
    config.batch_size = "32"


def test_wrong_model_field_value():
  config = flaxnets.get_config()
  config.model.name = "rnn"
  config.model.cell = "transformer"
  with pytest.raises(ConfigError, match=r"config\.model\.cell='transformer': expected one of \('lstm', 'gru', 'simple'\)"):
    validate(config)


def test_valid_default_config_passes():
  assert validate(flaxnets.get_config()).model.name == "simple_cnn"


def test_cli_reports_config_error_without_traceback(tmp_path):
  out = subprocess.run([sys.executable, "-m", "flaxnets.cli", "train",
                        "--config.optimizer.learning_rate=-1", f"--workdir={tmp_path}"],
                       capture_output=True, text=True, timeout=120)
  assert out.returncode == 2
  assert "config.optimizer.learning_rate=-1" in out.stderr
  assert "Traceback" not in out.stderr


def test_cli_override_under_a_missing_key_is_one_line(tmp_path):
  # ml_collections raised KeyError: "'nonexistent'" with a traceback, while defining the flag
  out = subprocess.run([sys.executable, "-m", "flaxnets.cli", "train",
                        "--config.model.nonexistent.key=3", f"--workdir={tmp_path}"],
                       capture_output=True, text=True, timeout=120)
  assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, out.stderr
  assert ("--config.model.nonexistent.key=3: the config has no key 'nonexistent' on that path"
          in out.stderr)


@pytest.mark.parametrize("model,key,value,expected", [
    ("simple_cnn", "kernel_size", 0, "expected an integer >= 1"),
    ("simple_cnn", "hidden", -1, "expected an integer >= 1"),
    ("simple_cnn", "features", (32, 0), "expected a sequence of integers >= 1 (bad entry 0)"),
    ("simple_cnn", "features", "abc", "expected a sequence of int, got str"),
    ("simple_cnn", "num_classes", 0, "expected an integer >= 1"),
    ("simple_cnn", "dropout", "0.1", "expected float, got str"),
    ("resnet20", "stage_sizes", [3, -1, 3], "expected a sequence of integers >= 1 (bad entry -1)"),
    ("resnet20", "num_filters", 0, "expected an integer >= 1"),
    ("rnn", "hidden_size", 2.5, "expected int, got float"),
    ("rnn", "unroll", 0, "expected an integer >= 1"),
    ("rnn", "bidirectional", 1, "expected bool, got int"),
    ("rnn", "embed_dropout", 1.0, "expected a number in [0, 1)"),
    ("conv1d", "num_pools", -1, "expected an integer >= 0"),
    ("fast_cnn", "bn_momentum", 1.5, "expected a number in [0, 1)"),
    ("fast_cnn", "bn_momentum", 1.0, "expected a number in [0, 1) (Flax's: 1 - torch's)"),
    ("fast_cnn", "logit_scale", 0.0, "expected a finite number > 0"),
    # 'last' is an RNN pooling; the convnets had accepted it here and failed at init.
    ("conv1d", "pooling", "last", "expected one of ('max', 'mean') for model 'conv1d'"),
    ("text_cnn", "pooling", "last", "expected one of ('max', 'mean') for model 'text_cnn'"),
    ("rnn", "pooling", "sum", "expected one of ('last', 'mean', 'max')"),
])
def test_bad_model_field_type_or_range(model, key, value, expected):
  """Checked against the model's own field annotations before any data is read."""
  config = _from_dict(**{"model.name": model})
  with config.model.unlocked():
    config.model[key] = value
  with pytest.raises(ConfigError) as e:
    validate(config)
  assert f"config.model.{key}={value!r}: {expected}" in str(e.value)


@pytest.mark.parametrize("model,fields", [
    ("conv1d", {"num_pools": 0}),
    ("rnn", {"unroll": None, "segments": 4, "input_dense": None, "dropout": 0}),
    ("vgg", {"hidden": None, "stage_features": [16, 32]}),
])
def test_model_fields_at_their_limits_pass(model, fields):
  config = _from_dict(**{"model.name": model})
  with config.model.unlocked():
    for key, value in fields.items():
      config.model[key] = value
  assert validate(config).model.name == model


def test_cli_command_line_mistakes_are_one_line_with_exit_status_2(tmp_path, capsys):
  from flaxnets import cli
  (tmp_path / "syntax.py").write_text("def get_config(:\n")
  (tmp_path / "no_get_config.py").write_text("x = 1\n")
  (tmp_path / "returns_dict.py").write_text("def get_config():\n  return {'seed': 1}\n")
  # not built on flaxnets.get_config(), or no return: had been tracebacks with exit status 1
  (tmp_path / "partial.py").write_text("import ml_collections\ndef get_config():\n  return "
                                       "ml_collections.ConfigDict(dict(num_epochs=1))\n")
  (tmp_path / "returns_none.py").write_text("def get_config():\n  pass\n")
  cases = [
      # main(argv) from Python: config_flags had read only sys.argv's overrides
      (["train", "--workdir", str(tmp_path / "w"), "--config.num_epochs=0"],
       "config.num_epochs=0: expected an integer >= 1"),
      (["train", "--workdir", str(tmp_path / "w"), "--config.num_epochs", "0"],
       "config.num_epochs=0: expected an integer >= 1"),
      (["train", "--workdir", str(tmp_path / "w"), "--config.debug", "True"],
       "unexpected argument(s) ['True']: train takes only flags (a boolean config value takes "
       "--config.debug=True; --config.debug alone sets True)"),
      (["train", "runs/x"], "unexpected argument(s) ['runs/x']: train takes only flags "
       "(did you mean --workdir runs/x?)"),
      # a value after a boolean flag, and a stray argument when --workdir was given
      (["train", "--workdir", str(tmp_path / "w"), "--restart", "false"],
       "unexpected argument(s) ['false']: train takes only flags (a boolean flag takes "
       "--restart=false, or --restart / --norestart)"),
      (["train", "--workdir", str(tmp_path / "w"), "extra"],
       "unexpected argument(s) ['extra']: train takes only flags; usage"),
      (["train", f"--config={tmp_path / 'syntax.py'}"], "did not load: SyntaxError"),
      (["train", "--config", str(tmp_path / "no_get_config.py")],
       "did not load: AttributeError"),
      (["train", "--config", str(tmp_path / "missing.py")], "did not load: OSError"),
      (["train", "--config", str(tmp_path / "returns_dict.py")],
       "config: expected an ml_collections.ConfigDict"),
      (["train", "--config", str(tmp_path / "partial.py")],
       ": missing; expected every key of flaxnets.get_config()"),
      (["train", "--config", str(tmp_path / "returns_none.py")],
       "did not load: IllegalFlagValueError: Unexpected None value"),
      (["eval", "--bogus=1", str(tmp_path)], "Unknown command line flag 'bogus'"),
      (["eval"], "expected one WORKDIR, got []"),
      (["predict", str(tmp_path)], "expected WORKDIR and at least one INPUT"),
      (["plot", "a", "b"], "expected one WORKDIR, got ['a', 'b']"),
      (["prepare", "mnist"], "expected one tfds:NAME, got ['mnist']"),
  ]
  for argv, message in cases:
    assert cli.main(argv) == 2, argv
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, (argv, err)
  assert sorted(p.name for p in tmp_path.iterdir()) == [
      "no_get_config.py", "partial.py", "returns_dict.py", "returns_none.py",
      "syntax.py"]  # nothing else written


@pytest.mark.parametrize("override,message", [
    # a TypeError traceback, and a message naming a key 'Attribute' without the flag
    ("--config.dataset.name.x=1", "--config.dataset.name.x=1: its path goes through a value"),
    ("--config.num_epochs.x=1", "--config.num_epochs.x=1: its path goes through a value"),
    ("--config.model.name.x=1", "--config.model.name.x=1: its path goes through a value"),
])
def test_cli_override_through_a_value_is_one_line(tmp_path, override, message):
  out = subprocess.run([sys.executable, "-m", "flaxnets.cli", "train", override,
                        f"--workdir={tmp_path}"], capture_output=True, text=True, timeout=120)
  assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, out.stderr
  assert message in out.stderr


def test_validate_names_a_missing_key():
  import ml_collections
  config = flaxnets.get_config()
  del config.optimizer["clip_norm"]
  with pytest.raises(ConfigError, match=r"config\.optimizer\.clip_norm: missing"):
    validate(config)
  with pytest.raises(ConfigError, match=r"config\.\w+: missing"):  # had been KeyError 'seed'
    validate(ml_collections.ConfigDict({"num_epochs": 1}))


def test_cli_help_into_a_closed_pipe_exits_quietly():
  # `true` reads nothing and exits at once: the help meets a closed pipe every time
  out = subprocess.run(f"{sys.executable} -m flaxnets.cli --help | true; "
                       "echo rc=${PIPESTATUS[0]}", shell=True, executable="/bin/bash",
                       capture_output=True, text=True, timeout=120)
  assert out.stdout.splitlines()[-1] == "rc=141" and "Traceback" not in out.stderr, out
  assert "--config.seed=1 \\\n" in __import__("flaxnets.cli").cli.USAGE  # kept its line break


@pytest.mark.parametrize("command,flag", [("train", "--workdir"), ("eval", "--split"),
                                          ("predict", "--top"), ("prepare", "--data_dir")])
def test_cli_command_help_lists_its_flags(command, flag, capsys):
  from flaxnets import cli
  assert cli.main([command, "--help"]) == 0
  out = capsys.readouterr().out
  assert out.startswith(f"usage: flaxnets {command}") and flag in out


@pytest.mark.parametrize("value,message", [
    ((1, 1, 2, 2), r"config\.model \('vgg'\): convs_per_stage=\(1, 1, 2, 2\): 4 counts for the "
                   r"5 stages of stage_features"),
    ("2", r"config\.model\.convs_per_stage='2': expected an int or a sequence of int"),
    (0, r"convs_per_stage=0: expected an int or a sequence of int \(expected an integer >= 1\)"),
    ((1, 0, 2, 2, 2), r"convs_per_stage=\(1, 0, 2, 2, 2\): expected an int or a sequence of int "
                      r"\(expected a sequence of integers >= 1 \(bad entry 0\)\)"),
])
def test_vgg_per_stage_counts_are_checked_before_any_data(value, message):
  config = flaxnets.get_config()
  config.model.name = "vgg"
  config.model.stage_features = (64, 128, 256, 512, 512)
  config.model.convs_per_stage = value
  with pytest.raises(ConfigError, match=message):
    validate(config)
  config = flaxnets.get_config()
  config.model.name, config.model.convs_per_stage = "vgg", (1, 1, 2)  # one per default stage
  assert validate(config).model.convs_per_stage == (1, 1, 2)


def test_a_users_model_with_required_fields_validates(monkeypatch):
  """validate builds the model to check fields that must agree (VGG's stages); a registered
  model whose num_classes has no default (as Flax tutorials write them) had failed there
  with a TypeError, since the trainer fills num_classes from the data only later."""
  import flax.linen as nn
  from flaxnets.models import registry
  monkeypatch.setitem(registry.MODELS, "tutorial_mlp", None)

  class TutorialMLP(nn.Module):
    num_classes: int
    width: int = 16

    @nn.compact
    def __call__(self, x, seq_lengths=None, *, train=False):
      return nn.Dense(self.num_classes)(nn.relu(nn.Dense(self.width)(x.reshape(len(x), -1))))

  registry.MODELS["tutorial_mlp"] = TutorialMLP
  config = flaxnets.get_config()
  config.model.name = "tutorial_mlp"
  assert validate(config).model.name == "tutorial_mlp"
  config.num_epochs, config.progress = 1, False
  assert flaxnets.train(config).test_metrics["count"] == 360
