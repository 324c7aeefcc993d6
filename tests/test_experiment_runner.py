"""experiments/run.py: bad arguments stop before any training, in one line, and a results
file that the README's table reads is not replaced by a run of other settings."""
import importlib.util
import os
import pathlib
import subprocess
import sys

import pytest

import flaxnets

ROOT = pathlib.Path(__file__).resolve().parents[1]
RUN = ROOT / "experiments" / "run.py"
CONFIG = "experiments/configs/mnist1d_crnn.py"


def _run(*args):
  return subprocess.run([sys.executable, str(RUN), *args], capture_output=True, text=True,
                        timeout=300, cwd=ROOT, env=dict(os.environ, JAX_PLATFORMS="cpu"))


def _module():
  spec = importlib.util.spec_from_file_location("run", RUN)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.mark.parametrize("args,message", [
    ((CONFIG, "--set", "num_epochs=1"),  # replaced the 3-seed result the README shows
     "mnist1d_crnn.json holds a run with other settings (overrides [], seeds [0, 1, 2]); "
     "pass --name NEW to keep both, or --force to replace it"),
    ((CONFIG, "--name", "ablation/lr"),  # trained every seed, then failed to write
     "--name 'ablation/lr': expected a file name"),
    ((CONFIG, "--name", "t", "--set", "num_epochs"), "--set 'num_epochs': expected key=value"),
    ((CONFIG, "--name", "t", "--set", "model.foo.bar=1"),
     "--set 'model.foo.bar=1': the config has no key 'model.foo'"),
    ((CONFIG, "--name", "t", "--set", "seed=3"),  # was silently replaced by --seeds
     "--set 'seed=3': seed is set by run.py itself; use --seeds"),
    ((CONFIG, "--name", "t", "--set", "num_epoch=1"), "config.num_epoch: unknown key"),
    ((CONFIG, "--name", "t", "--seeds", "-1"), "config.seed=-1: expected an integer"),
    (("experiments/configs/nope.py",), "config file 'experiments/configs/nope.py' does not"),
])
def test_bad_arguments_stop_before_training_in_one_line(args, message):
  before = sorted(p.name for p in (ROOT / "experiments" / "results").iterdir())
  out = _run(*args)
  assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
  assert message in out.stderr, out.stderr
  assert sorted(p.name for p in (ROOT / "experiments" / "results").iterdir()) == before


def test_set_values_parse_as_the_command_line_does():
  run = _module()
  config = flaxnets.get_config()
  run.apply_overrides(config, ["augment.flip=true", "optimizer.learning_rate=0.01",
                               "model.name=rnn", "dataset.name=mnist1d"])
  assert config.augment.flip is True and config.optimizer.learning_rate == 0.01
  assert config.model.name == "rnn" and config.dataset.name == "mnist1d"
  # a text setting keeps digits as text, as the command line's --config.init.step=1200
  run.apply_overrides(config, ["init.step=1200", "dataset.test_split=''"])
  assert config.init.step == "1200" and config.dataset.test_split == ""
  with pytest.raises(ValueError, match=r"--set 'augment\.flip=maybe': .*bool"):
    run.apply_overrides(config, ["augment.flip=maybe"])


def test_recorded_command_is_shell_quoted(tmp_path, monkeypatch):
  """The results tables print it as the command that reproduces the row: unquoted, bash
  had split `--set "model.features=(8, 16)"` at its space, and bash refuses a bare (."""
  import json
  import shlex
  run = _module()
  monkeypatch.setattr(run, "RESULTS", tmp_path)
  monkeypatch.chdir(ROOT)
  argv = ["experiments/configs/digits_cnn.py", "--seeds", "0", "--set", "num_epochs=1",
          "model.features=(8, 16)", "--name", "quoted"]
  assert run.main(argv) == 0
  command = json.loads((tmp_path / "quoted.json").read_text())["command"]
  assert shlex.split(command) == ["python", "experiments/run.py", *argv]


def test_every_set_counts_when_set_is_repeated(tmp_path, monkeypatch):
  """argparse's default keeps only the last of repeated options: a second --set had
  silently dropped the first, and the run trained the config's own settings."""
  import json
  run = _module()
  monkeypatch.setattr(run, "RESULTS", tmp_path)
  monkeypatch.chdir(ROOT)
  assert run.main(["experiments/configs/digits_cnn.py", "--seeds", "0", "--set", "num_epochs=1",
                   "--set", "model.features=(8, 16)", "model.hidden=16", "--name", "rep"]) == 0
  summary = json.loads((tmp_path / "rep.json").read_text())
  assert summary["overrides"] == ["num_epochs=1", "model.features=(8, 16)", "model.hidden=16"]
  assert summary["runs"][0]["epochs"] == 1
