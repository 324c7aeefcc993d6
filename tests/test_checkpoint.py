"""Checkpoints: exact resume after SIGKILL and SIGTERM, damaged steps, best step,
config-change refusal, divergence, preemption signals.

The resume tests run training in subprocesses (killing the test process itself is
not an option); every child gets the same XLA_FLAGS, so all of them run on the
same 8 host CPU devices and "same devices = same numbers" applies. The small job
(digits, SimpleCNN 8/16/32, 39 steps per epoch, a checkpoint every 5 steps) keeps
each child to a few seconds of compute.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import pathlib
import re
import shutil
import warnings
import signal
import subprocess
import sys
import textwrap
import time
from typing import Any

import jax
import numpy as np
import pytest

import flaxnets
from flaxnets.training import checkpoint as checkpoint_lib
from flaxnets.training import hooks
from flaxnets.training.checkpoint import CheckpointError

DEVICES = 8
STEPS_PER_EPOCH = 39  # 1258 digits training examples // 32
SMALL = {"num_epochs": 2, "batch_size": 32, "progress": False, "log_every_steps": 1,
         "model.features": (8, 16), "model.hidden": 32, "model.dropout": 0.1,
         "augment.crop_padding": 1, "checkpoint.every_steps": 5}  # dropout, crops: RNG used
TIMING_KEYS = ("examples_per_sec", "tokens_per_sec", "wall_time")

# Runs train(config, workdir) with SMALL plus overrides; argv: workdir, overrides JSON.
CHILD = r"""
import json, sys
import jax
import flaxnets
assert jax.device_count() == int(sys.argv[3]), jax.devices()
config = flaxnets.get_config()
for key, value in json.loads(sys.argv[2]).items():
  node = config
  *parents, last = key.split(".")
  for p in parents:
    node = node[p]
  node[last] = tuple(value) if isinstance(value, list) else value
flaxnets.train(config, sys.argv[1])
"""


def child_env(devices: int = DEVICES, cache: pathlib.Path | None = None) -> dict[str, str]:
  """The environment of a training child: a fixed device count, CPU only, quiet.

  `cache` shares XLA's compilation cache between children: the same program on the
  same devices compiles to the same executable, so this only saves compile time.
  """
  env = dict(os.environ)
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  env["JAX_PLATFORMS"] = "cpu"
  env["TF_CPP_MIN_LOG_LEVEL"] = "3"
  env.pop("FLAXNETS_TRACEBACK", None)  # the tests check what a user sees by default
  if cache is not None:
    env["JAX_COMPILATION_CACHE_DIR"] = str(cache)
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    env["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
  return env


@pytest.fixture(scope="module")
def xla_cache(tmp_path_factory) -> pathlib.Path:
  return tmp_path_factory.mktemp("xla_cache")


def start_child(workdir: pathlib.Path, cache: pathlib.Path, **overrides: Any) -> subprocess.Popen:
  args = json.dumps({**SMALL, **overrides})
  return subprocess.Popen([sys.executable, "-c", CHILD, str(workdir), args, str(DEVICES)],
                          env=child_env(cache=cache), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)


def run_child(workdir: pathlib.Path, cache: pathlib.Path, **overrides: Any) -> str:
  """Train to the end in a child process; its stdout (fails the test on an error)."""
  proc = start_child(workdir, cache, **overrides)
  out, err = proc.communicate(timeout=300)
  assert proc.returncode == 0, f"child failed ({proc.returncode}):\n{out[-3000:]}\n{err[-3000:]}"
  return out


def last_step(workdir: pathlib.Path) -> int:
  """The newest step the child has logged to metrics.jsonl (0 before the first)."""
  path = workdir / "metrics.jsonl"
  if not path.exists():
    return 0
  steps = [0]
  for line in path.read_text().splitlines():
    try:
      steps.append(int(json.loads(line).get("step", 0)))
    except ValueError:  # the child is halfway through writing this line
      pass
  return max(steps)


def wait_for_step(proc: subprocess.Popen, workdir: pathlib.Path, step: int,
                  timeout: float = 240.0) -> int:
  """Poll until the child has logged `step`; the newest logged step."""
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    if proc.poll() is not None:
      out, err = proc.communicate()
      pytest.fail(f"child exited ({proc.returncode}) before step {step}:\n{out[-2000:]}\n"
                  f"{err[-2000:]}")
    seen = last_step(workdir)
    if seen >= step:
      return seen
    time.sleep(0.02)
  proc.kill()
  pytest.fail(f"child did not reach step {step} within {timeout} s")


def final_run(workdir: pathlib.Path) -> dict[str, Any]:
  """Params, batch stats, step and history of the newest checkpoint, plus results.json."""
  predictor = flaxnets.load(workdir, step="latest")
  extra = json.loads((predictor.path / "extra" / "metadata").read_text())
  history = [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in extra["history"]]
  results = json.loads((workdir / "results.json").read_text())
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  return {"step": int(predictor.path.name), "params": predictor.params,
          "batch_stats": predictor.batch_stats, "history": history,
          "iterator": extra["iterator"], "test": results["test"],
          "metrics": [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in rows],
          "wall_times": [r["wall_time"] for r in extra["history"]]}


def assert_same_run(got: dict[str, Any], want: dict[str, Any]) -> None:
  """Bit-identical parameters and identical history and test metrics."""
  assert got["step"] == want["step"] == 2 * STEPS_PER_EPOCH
  flat_got = jax.tree_util.tree_leaves_with_path(got["params"])
  flat_want = jax.tree_util.tree_leaves_with_path(want["params"])
  assert [p for p, _ in flat_got] == [p for p, _ in flat_want]
  for (path, a), (_, b) in zip(flat_got, flat_want):
    assert np.array_equal(a, b), f"params{jax.tree_util.keystr(path)} differ"
  assert jax.tree.all(jax.tree.map(np.array_equal, got["batch_stats"], want["batch_stats"]))
  assert got["history"] == want["history"]
  assert got["iterator"] == want["iterator"]
  assert got["test"] == want["test"]
  # metrics.jsonl reads as one run: the rows a resume replays are not logged twice
  assert got["metrics"] == want["metrics"]
  # wall time counts on across processes
  assert got["wall_times"] == sorted(got["wall_times"]) and got["wall_times"][0] > 0


def resumed_from(stdout: str) -> int:
  found = re.search(r"resumed from step (\d+)", stdout)
  assert found, f"the second run did not resume:\n{stdout[-2000:]}"
  return int(found.group(1))


@pytest.fixture(scope="module")
def reference(tmp_path_factory, xla_cache) -> dict[str, Any]:
  """An uninterrupted run of the small job, in a child like the interrupted ones."""
  workdir = tmp_path_factory.mktemp("reference")
  run_child(workdir, xla_cache)
  return final_run(workdir)


# ---- acceptance 1: SIGKILL at three points, resume, bit-identical ---------------------------
@pytest.mark.parametrize("kill_at", [12, 41, 67])
def test_sigkill_then_resume_is_bit_identical(tmp_path, reference, xla_cache, kill_at):
  # 12 and 67 lie between checkpoints (every 5 steps), 41 just after epoch 1 ended:
  # the kill lands wherever the child is when the poll sees the step, often mid-save.
  proc = start_child(tmp_path, xla_cache)
  seen = wait_for_step(proc, tmp_path, kill_at)
  proc.send_signal(signal.SIGKILL)
  proc.communicate(timeout=60)
  assert proc.returncode == -signal.SIGKILL
  assert not (tmp_path / "results.json").exists(), "the child finished before the kill"
  killed_at = last_step(tmp_path)
  assert killed_at >= seen
  out = run_child(tmp_path, xla_cache)
  start = resumed_from(out)
  assert 0 < start <= killed_at < 2 * STEPS_PER_EPOCH
  assert_same_run(final_run(tmp_path), reference)


# ---- acceptance 5: SIGTERM (and SIGINT) mid-epoch: finish the step, save, exit, resume ------
@pytest.mark.parametrize("signum", [signal.SIGTERM,
                                    pytest.param(signal.SIGINT, marks=pytest.mark.slow)],
                         ids=["SIGTERM", "SIGINT"])
def test_signal_saves_current_step_and_resumes_exactly(tmp_path, reference, xla_cache, signum):
  proc = start_child(tmp_path, xla_cache)
  seen = wait_for_step(proc, tmp_path, 23)  # mid-epoch 1, between checkpoints
  proc.send_signal(signum)
  out, err = proc.communicate(timeout=120)
  name = signal.Signals(signum).name
  assert proc.returncode == 1, f"{proc.returncode}\n{out[-2000:]}\n{err[-2000:]}"
  found = re.search(rf"received {name} at step (\d+); saved a checkpoint in (.+)\. Run the "
                    r"same command again to resume", err)
  assert found, err[-2000:]
  stopped = int(found.group(1))
  # It finished the step in flight (the host runs at most a step ahead of the log it
  # polled) and no other: nothing was logged after the step it saved.
  assert seen <= stopped <= seen + 3
  assert last_step(tmp_path) == stopped
  assert (tmp_path / "checkpoints" / str(stopped)).is_dir()
  assert not (tmp_path / "results.json").exists()
  out = run_child(tmp_path, xla_cache)
  assert resumed_from(out) == stopped
  assert_same_run(final_run(tmp_path), reference)


def test_preemption_guard_signals():
  """SIGTERM / SIGINT set the flag; a second SIGINT interrupts; handlers come back."""
  before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
  with hooks.PreemptionGuard() as guard:
    assert not guard.stop_requested
    os.kill(os.getpid(), signal.SIGTERM)
    assert guard.stop_requested and guard.signal_name == "SIGTERM"
  with hooks.PreemptionGuard() as guard:
    os.kill(os.getpid(), signal.SIGINT)
    assert guard.signal_name == "SIGINT"
    with pytest.raises(KeyboardInterrupt):
      os.kill(os.getpid(), signal.SIGINT)
  assert {s: signal.getsignal(s) for s in before} == before


# ---- in-process runs on the test process's 8 devices ------------------------------------------
def small_config(**overrides: Any):
  config = flaxnets.get_config()
  for key, value in {**SMALL, **overrides}.items():
    node = config
    *parents, last = key.split(".")
    for p in parents:
      node = node[p]
    node[last] = value
  return config


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[pathlib.Path, Any]:
  """A finished small run (checkpoints 75 and 78) and its TrainResult; copy before changing."""
  workdir = tmp_path_factory.mktemp("trained")
  result = flaxnets.train(small_config(), str(workdir))
  return workdir, result


def copy_run(trained, tmp_path: pathlib.Path) -> pathlib.Path:
  workdir = tmp_path / "run"
  shutil.copytree(trained[0], workdir)
  return workdir


def tree_digest(path: pathlib.Path) -> str:
  """A hash of every file name and content under path."""
  h = hashlib.sha256()
  for f in sorted(p for p in path.rglob("*") if p.is_file()):
    h.update(str(f.relative_to(path)).encode())
    h.update(f.read_bytes())
  return h.hexdigest()


def _truncate_state_files(step_dir: pathlib.Path) -> None:
  """Cut every array-data file of the step in half (a copy or write that stopped midway).

  Every one, not just the largest: which file holds the params (all that `load` reads)
  and which the optimizer state depends on sizes that change with the trained values.
  """
  data = [p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d"]
  assert data, f"no array data files under {step_dir / 'state'}"
  for f in data:
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


def _remove_manifest(step_dir: pathlib.Path) -> None:
  (step_dir / "state" / "manifest.ocdbt").unlink()


def _remove_meta(step_dir: pathlib.Path) -> None:
  (step_dir / "meta" / "metadata").unlink()


# ---- acceptance 2: a damaged newest step ----------------------------------------------------
def checkpointer_for(workdir: pathlib.Path, result: Any) -> checkpoint_lib.Checkpointer:
  return checkpoint_lib.Checkpointer(workdir, result.config, result.dataset, result.stats)


@pytest.mark.parametrize("damage", [_truncate_state_files, _remove_manifest,
                                    _remove_meta], ids=["truncated", "no-manifest", "no-meta"])
def test_damaged_newest_step_falls_back_and_load_names_it(tmp_path, trained, damage, capsys):
  workdir = copy_run(trained, tmp_path)
  result = trained[1]
  newest = workdir / "checkpoints" / str(2 * STEPS_PER_EPOCH)
  assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir()) == [75, 78]
  damage(newest)

  # load() falls back to best/'s copy of the step, naming the damaged one ...
  with pytest.warns(UserWarning, match=re.escape(str(newest))):
    assert flaxnets.load(workdir, step=78).path == workdir / "best" / "78"
  # ... and without an intact copy refuses, naming it
  hidden = workdir.with_name("best-aside")
  (workdir / "best").rename(hidden)
  with pytest.raises(CheckpointError, match=re.escape(str(newest))):
    flaxnets.load(workdir, step=78)
  hidden.rename(workdir / "best")

  capsys.readouterr()
  ckpt = checkpointer_for(workdir, result)
  state, extra = ckpt.restore_latest(result.state)
  ckpt.close()
  out = capsys.readouterr().out
  assert int(state.step) == 75 and extra["iterator"] == {"epoch": 1, "next_index": 36}
  assert "checkpoint step 78 is unusable, resuming from step 75" in out
  assert str(newest) in out  # the message names the damaged folder
  moved = list((workdir / "damaged").iterdir())
  assert len(moved) == 1 and moved[0].name.startswith("checkpoints-78-")
  assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir()) == [75]


def test_resume_after_damaged_step_saves_it_again_identically(tmp_path, trained, capsys):
  workdir = copy_run(trained, tmp_path)
  _truncate_state_files(workdir / "checkpoints" / "78")
  capsys.readouterr()
  result = flaxnets.train(small_config(), str(workdir))
  out = capsys.readouterr().out
  assert "resuming from step 75" in out and "resumed from step 75" in out
  # The replayed steps saved step 78 again, bit-identical to the undamaged run.
  want = trained[1].state.params
  assert jax.tree.all(jax.tree.map(np.array_equal, result.state.params, want))
  assert jax.tree.all(jax.tree.map(np.array_equal, flaxnets.load(workdir, step=78).params, want))
  # The resumed epoch's train record adds up all its steps (sums kept in the checkpoint).
  strip = lambda history: [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in history]
  assert strip(result.history) == strip(trained[1].history)
  # best/78, newer than step 75, was moved aside and saved again by the replay
  assert "best/78 is newer than the step resumed from (75)" in out
  assert [p.name[:8] for p in (workdir / "superseded").iterdir()] == ["best-78-"]
  assert flaxnets.load(workdir).path == workdir / "best" / "78"
  assert jax.tree.all(jax.tree.map(np.array_equal, flaxnets.load(workdir).params, want))


def test_resume_with_other_settings_does_not_keep_the_replaced_runs_best(tmp_path, trained):
  """best/78 of the run before a rollback had stayed what load() served, though the resumed
  run (another learning rate) trained its own step 78."""
  workdir = copy_run(trained, tmp_path)
  old_best = flaxnets.load(workdir).params
  shutil.rmtree(workdir / "checkpoints" / "78")
  result = flaxnets.train(small_config(**{"optimizer.learning_rate": 1e-4}), str(workdir))
  assert not jax.tree.all(jax.tree.map(np.array_equal, result.state.params, old_best))
  served = flaxnets.load(workdir)
  # no best step up to 75 is kept (max_to_keep 2), so best/ started over and holds 78
  assert served.path == workdir / "best" / "78"
  assert jax.tree.all(jax.tree.map(np.array_equal, served.params, result.state.params))
  aside = next((workdir / "superseded").iterdir())
  assert jax.tree.all(jax.tree.map(np.array_equal, flaxnets.load(workdir, 78).params,
                                   result.state.params))
  assert (aside / "state").is_dir()  # the replaced run's best is kept, not deleted


def test_all_steps_damaged_starts_from_scratch(tmp_path, trained, capsys):
  workdir = copy_run(trained, tmp_path)
  for step_dir in (workdir / "checkpoints").iterdir():
    _remove_manifest(step_dir)
  ckpt = checkpointer_for(workdir, trained[1])
  assert ckpt.restore_latest(trained[1].state) is None
  ckpt.close()
  assert "no older step is complete; starting from scratch" in capsys.readouterr().out
  assert list((workdir / "checkpoints").iterdir()) == []


# ---- acceptance 3: best ---------------------------------------------------------------------
def test_best_is_the_step_with_the_best_validation_metric(trained):
  workdir, result = trained
  vals = [r for r in result.history if r["split"] == "val"]
  want = max(vals, key=lambda r: r["accuracy"])["step"]  # first of ties: strictly better wins
  predictor = flaxnets.load(workdir, step="best")
  assert predictor.path == workdir / "best" / str(want)
  assert predictor.meta["metrics"]["val_accuracy"] == max(r["accuracy"] for r in vals)


@pytest.mark.parametrize("mode, values, best", [("max", [0.5, 0.9, 0.7, 0.9], 2),
                                                 ("min", [0.5, 0.2, 0.7, 0.3], 2),
                                                 ("min", [0.1, 0.2, 0.7, 0.3], 1)])
def test_checkpointer_keeps_best_by_mode(tmp_path, trained, mode, values, best):
  result = trained[1]
  config = small_config(**{"checkpoint.best_metric": "loss", "checkpoint.best_mode": mode,
                           "checkpoint.max_to_keep": 10})
  ckpt = checkpoint_lib.Checkpointer(tmp_path, config, result.dataset, result.stats)
  for step, value in enumerate(values, start=1):
    ckpt.save(step, result.state, {"iterator": {}}, {"val_loss": value})
  ckpt.save(len(values), result.state, {}, {"val_loss": -1.0})  # exists: skipped
  ckpt.close()
  assert flaxnets.load(tmp_path, step="best").path == tmp_path / "best" / str(best)
  assert flaxnets.load(tmp_path, step="best").meta["metrics"]["val_loss"] == values[best - 1]
  assert flaxnets.load(tmp_path, step="latest").path.name == str(len(values))


def test_a_best_step_moved_aside_on_resume_is_replaced_by_the_best_kept_one(tmp_path,
                                                                            trained, capsys):
  """best/ keeps one step: moving a newer one aside had left it empty for the rest of the
  run (load() then served the latest step silently) whenever the replay did not beat the
  best value restored with the resumed step."""
  result = trained[1]
  config = small_config(**{"checkpoint.max_to_keep": 10})
  ckpt = checkpoint_lib.Checkpointer(tmp_path, config, result.dataset, result.stats)
  ckpt.save(2, result.state, {"iterator": {}}, {"val_accuracy": 0.5})  # best/2
  ckpt.save(3, result.state, {"iterator": {}})
  ckpt.save(4, result.state, {"iterator": {}}, {"val_accuracy": 0.6})  # best/4 replaces it
  ckpt.close()
  shutil.rmtree(tmp_path / "checkpoints" / "4")  # lost: the resume starts from step 3
  ckpt = checkpoint_lib.Checkpointer(tmp_path, config, result.dataset, result.stats)
  ckpt.restore_latest(result.state)
  ckpt.save(4, result.state, {"iterator": {}}, {"val_accuracy": 0.45})  # worse than 0.5
  ckpt.close()
  out = capsys.readouterr().out
  assert "best/ holds step 2 again (copied from checkpoints/)" in out
  assert flaxnets.load(tmp_path).path == tmp_path / "best" / "2"
  assert flaxnets.load(tmp_path).meta["metrics"]["val_accuracy"] == 0.5


def test_lost_best_save_is_redone_on_resume(tmp_path, trained):
  # A kill between the best/ and checkpoints/ commits of one step leaves best/ without it.
  result = trained[1]
  ckpt = checkpointer_for(tmp_path, result)
  ckpt.save(1, result.state, {"iterator": {}}, {"val_accuracy": 0.5})
  ckpt.save(2, result.state, {"iterator": {}}, {"val_accuracy": 0.9})
  ckpt.close()
  shutil.rmtree(tmp_path / "best" / "2")
  ckpt = checkpointer_for(tmp_path, result)
  ckpt.restore_latest(result.state)
  assert ckpt.best_value == 0.9
  ckpt.save(3, result.state, {"iterator": {}}, {"val_accuracy": 0.8})  # not better than 0.9
  ckpt.close()
  assert flaxnets.load(tmp_path, step="best").path == tmp_path / "best" / "2"


# ---- config changes --------------------------------------------------------------------------
def test_config_change_is_refused_listing_keys_and_restart_starts_over(tmp_path, trained,
                                                                       capsys):
  workdir = copy_run(trained, tmp_path)
  before = tree_digest(workdir / "checkpoints")
  config = small_config(**{"model.features": (4, 8), "seed": 3, "num_epochs": 1})
  with pytest.raises(CheckpointError) as info:
    flaxnets.train(config, str(workdir))
  msg = str(info.value)
  assert str(workdir) in msg
  assert "model.features: checkpoint [8, 16] vs now [4, 8]" in msg
  assert "seed: checkpoint 0 vs now 3" in msg
  assert "batch_size" not in msg and "num_epochs" not in msg and "--restart" in msg
  assert "\n" not in msg  # one line, as the CLI promises (it had listed one key a line)
  assert tree_digest(workdir / "checkpoints") == before
  # Settings that do not change what is being trained resume fine (here: more epochs).
  assert not checkpoint_lib.config_differences(
      trained[1].config.to_dict(), small_config(num_epochs=5, log_every_steps=7).to_dict())

  capsys.readouterr()
  flaxnets.train(config, str(workdir), restart=True)
  assert "resumed" not in capsys.readouterr().out
  assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir()) == [35, 39]
  assert flaxnets.load(workdir, "latest").params["Conv_0"]["kernel"].shape == (3, 3, 1, 4)


def test_a_fresh_start_moves_an_earlier_runs_best_aside(tmp_path, trained, capsys):
  """checkpoints/ gone (deleted, or every step damaged) but best/ kept: the new run started
  from scratch, skipped saving best/ at the step number it already held, and load() served
  the earlier model beside the new run's results."""
  workdir = copy_run(trained, tmp_path)
  shutil.rmtree(workdir / "checkpoints")
  old_best = sorted(p.name for p in (workdir / "best").iterdir())
  config = small_config(**{"model.features": (4, 8), "num_epochs": 1})
  capsys.readouterr()
  flaxnets.train(config, str(workdir))
  out = capsys.readouterr().out
  assert f"best/{old_best[0]} is of an earlier run, and this one starts from scratch" in out
  assert [p.name.split("-")[:2] for p in (workdir / "superseded").iterdir()] == [
      ["best", old_best[0]]]
  assert flaxnets.load(workdir).params["Conv_0"]["kernel"].shape == (3, 3, 1, 4)  # this run's


def test_restart_deletes_only_step_folders_and_follows_a_linked_folder(tmp_path, trained):
  """--restart had deleted everything under checkpoints/ and best/, and with checkpoints/ a
  link (to a larger disk) it failed silently (rmtree refuses links), resumed the old steps
  and left best/ empty."""
  workdir = copy_run(trained, tmp_path)
  store = tmp_path / "disk" / "checkpoints"
  store.parent.mkdir()
  shutil.move(str(workdir / "checkpoints"), str(store))
  (workdir / "checkpoints").symlink_to(store)
  (store / "README.txt").write_text("mine")
  (workdir / "best" / "notes").mkdir()
  config = small_config(num_epochs=1)
  result = flaxnets.train(config, str(workdir), restart=True)
  assert int(result.state.step) == 39  # started over: one epoch, not resumed at 78
  assert (workdir / "checkpoints").is_symlink()
  assert sorted(p.name for p in store.iterdir()) == ["35", "39", "README.txt"]
  assert (store / "README.txt").read_text() == "mine" and (workdir / "best" / "notes").is_dir()


def test_remove_checkpoints_takes_steps_and_save_leftovers_only(tmp_path):
  for rel in ("checkpoints/5/state", "checkpoints/6.orbax-checkpoint-tmp-12/state",
              "best/5/meta", "best/notes", "checkpoints/7x"):
    (tmp_path / rel).mkdir(parents=True)
  (tmp_path / "checkpoints" / "README.txt").write_text("mine")
  checkpoint_lib.remove_checkpoints(tmp_path)
  left = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
  assert left == ["best", "best/notes", "checkpoints", "checkpoints/7x",
                  "checkpoints/README.txt"]


def fail_rmtree(monkeypatch, where, error: OSError) -> None:
  """shutil.rmtree raises `error` for the paths `where` accepts, and deletes the others."""
  real_rmtree = shutil.rmtree

  def failing(path, *args, **kwargs):
    if where(pathlib.Path(path)):
      raise type(error)(*error.args, str(path))
    return real_rmtree(path, *args, **kwargs)

  monkeypatch.setattr(shutil, "rmtree", failing)


def test_a_deletion_that_fails_midway_says_what_was_deleted(tmp_path, monkeypatch):
  for rel in ("checkpoints/5/state", "best/5/meta"):
    (tmp_path / rel).mkdir(parents=True)
  fail_rmtree(monkeypatch, lambda p: p.parent.name == "best",  # e.g. chattr +i
              PermissionError(1, "Operation not permitted"))
  with pytest.raises(CheckpointError, match=r"could not delete '.*best/5' \(.*Operation not "
                                            r"permitted.*\); checkpoints/5 had been deleted "
                                            r"before it"):
    checkpoint_lib.remove_checkpoints(tmp_path)


def test_a_restart_that_cannot_delete_stops_before_anything_changes(tmp_path, trained,
                                                                    monkeypatch):
  """A checkpoints/ it could not write: the errors were ignored, the step folders' files
  deleted, best/ emptied, and the run then failed on a 'damaged' step it had half deleted."""
  workdir = copy_run(trained, tmp_path)
  before = tree_digest(workdir)
  locked = workdir / "checkpoints"
  real_access = os.access
  monkeypatch.setattr(os, "access", lambda p, mode, **kw: (  # chmod a-w, as root is not held
      False if pathlib.Path(p) == locked else real_access(p, mode, **kw)))
  with pytest.raises(CheckpointError, match=r"restart \(--restart\): cannot delete .*checkpoints/"
                                            r"\d+': .*checkpoints' is not readable and writable; "
                                            r"nothing was deleted"):
    flaxnets.train(small_config(num_epochs=1), str(workdir), restart=True)
  assert tree_digest(workdir) == before  # logs not moved aside either
  monkeypatch.setattr(os, "access", real_access)
  fail_rmtree(monkeypatch, lambda p: p.parent == locked, PermissionError(13, "Permission denied"))
  with pytest.raises(CheckpointError, match=r"restart \(--restart\): could not delete "
                                            r".*Permission denied.*; nothing had been deleted "
                                            r"before it; fix that and run again"):
    flaxnets.train(small_config(num_epochs=1), str(workdir), restart=True)
  assert (workdir / "metrics.jsonl").is_file()  # the logs stay where they are


def test_resume_with_changed_settings_says_so_and_records_them(tmp_path, trained, capsys):
  workdir = copy_run(trained, tmp_path)
  config = small_config(**{"num_epochs": 3, "optimizer.learning_rate": 0.01,
                            "grad_accum_steps": 2})
  capsys.readouterr()
  flaxnets.train(config, str(workdir))
  out = capsys.readouterr().out
  assert "resumed from step 78" in out
  assert "changed settings, which apply from step 78 on" in out
  assert "num_epochs: 2 -> 3" in out and "optimizer.learning_rate: 0.003 -> 0.01" in out
  want = [{"step": 78, "changes": ["grad_accum_steps: 1 -> 2", "num_epochs: 2 -> 3",
                                   "optimizer.learning_rate: 0.003 -> 0.01"]}]
  results = json.loads((workdir / "results.json").read_text())
  assert results["config_changes"] == want
  # the printed total counts the earlier process too, as results.json and train time do
  # (it printed this process's wall time: a total below the training time)
  train_s, total_s = map(float, re.search(r"training ([\d.]+) s; total ([\d.]+) s", out).groups())
  assert total_s >= train_s and total_s == pytest.approx(results["wall_time_s"], abs=0.2)
  extra = json.loads((flaxnets.load(workdir, "latest").path / "extra" / "metadata").read_text())
  assert extra["config_changes"] == want  # carried to later resumes
  # the first process's wall time is carried: the resumed epoch's record comes after it
  walls = [r["wall_time"] for r in extra["history"]]
  assert walls == sorted(walls)


def test_resume_with_fewer_epochs_than_done_says_nothing_is_trained(tmp_path, trained, capsys):
  workdir = copy_run(trained, tmp_path)
  capsys.readouterr()
  result = flaxnets.train(small_config(num_epochs=1), str(workdir))
  out = capsys.readouterr().out
  assert ("the checkpoint has trained 2 epoch(s), and config.num_epochs=1: nothing to train, "
          "the saved model is evaluated") in out
  assert int(result.state.step) == 78
  assert result.test_metrics["accuracy"] == pytest.approx(trained[1].test_metrics["accuracy"])


def test_disabled_checkpoints_over_earlier_ones_are_refused_or_restarted(tmp_path, trained):
  workdir = copy_run(trained, tmp_path)
  before = tree_digest(workdir)
  config = small_config(**{"checkpoint.enabled": False, "num_epochs": 1})
  with pytest.raises(CheckpointError) as info:
    flaxnets.train(config, str(workdir))
  msg = str(info.value)
  assert str(workdir) in msg and "checkpoints/75" in msg and "checkpoint.enabled=False" in msg
  assert "restart" in msg
  assert tree_digest(workdir) == before  # nothing touched, the log included
  # restart deletes them, so load() cannot serve the earlier model beside new results
  flaxnets.train(config, str(workdir), restart=True)
  assert checkpoint_lib.existing_steps(workdir) == []
  with pytest.raises(FileNotFoundError):
    flaxnets.load(workdir)
  results = json.loads((workdir / "results.json").read_text())
  assert results["steps"] == STEPS_PER_EPOCH
  assert results["evaluated_weights"] == f"final (step {STEPS_PER_EPOCH})"
  assert list(workdir.glob("metrics.before-restart-*.jsonl"))
  assert list(workdir.glob("results.before-restart-*.json"))  # the earlier run's, kept aside


def test_a_fresh_start_moves_an_earlier_log_aside(tmp_path):
  config = small_config(**{"checkpoint.enabled": False, "num_epochs": 1})
  flaxnets.train(config, str(tmp_path))
  first = (tmp_path / "metrics.jsonl").read_text()
  flaxnets.train(config, str(tmp_path))  # nothing to resume: a new run, a new log
  rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows if r["split"] == "train"] == [STEPS_PER_EPOCH]
  (kept,) = tmp_path.glob("metrics.before-*.jsonl")
  assert kept.read_text() == first


def test_keys_missing_from_an_older_checkpoint_count_as_defaults(trained):
  now = trained[1].config.to_dict()
  older = json.loads(json.dumps(now))
  del older["dataset"]["val_fraction"]   # a key that flaxnets added later
  older["model"]["kernel_size"] = 3       # SimpleCNN's default, now written out
  assert checkpoint_lib.config_differences(older, now) == []
  older["model"]["kernel_size"] = 5
  assert checkpoint_lib.config_differences(older, now) == [
      "model.kernel_size: checkpoint 5 vs now 3"]


def test_changed_data_is_refused(tmp_path, trained):
  # An 'arrays' dataset has no config key that changes with the data; its shape does.
  result = trained[1]
  meta = checkpoint_lib.metadata(result.config, result.dataset, result.stats)
  other = dict(meta, input_shape=[16, 16, 1], label_names=list("abcdefghij"))
  diffs = checkpoint_lib.meta_differences(meta, other)
  assert [d.split(" ")[0] for d in diffs] == ["input_shape", "label_names"]
  assert checkpoint_lib.meta_differences(meta, checkpoint_lib._as_json(meta)) == []
  # other arrays of the same shape: the example count or the input statistics show it
  fewer = dict(meta, train_examples=meta["train_examples"] - 1)
  assert [d.split(" ")[0] for d in checkpoint_lib.meta_differences(meta, fewer)] == [
      "train_examples"]
  # as many examples, other contents (other labels had resumed silently): the digest
  relabelled = dict(result.dataset.train, labels=(result.dataset.train["labels"] + 1) % 10)
  other = dict(meta, train_digest=checkpoint_lib.split_digest(relabelled))
  assert [d.split(" (")[0] for d in checkpoint_lib.meta_differences(meta, other)] == [
      "training examples"]
  # the same examples, other statistics: this flaxnets computes them differently
  restated = dict(meta, stats={k: (np.asarray(v) + 0.01).tolist()
                               for k, v in meta["stats"].items()})
  assert [d.split(":")[0] for d in checkpoint_lib.meta_differences(meta, restated)] == [
      "input statistics"]
  assert "normalises the inputs differently" in checkpoint_lib.meta_differences(
      meta, restated)[0]
  # checkpoints written before the digest: the input statistics
  undigested = {k: v for k, v in meta.items() if k != "train_digest"}
  shifted = dict(meta, stats={k: (np.asarray(v) + 0.01).tolist()
                              for k, v in meta["stats"].items()})
  assert [d.split(" (")[0] for d in checkpoint_lib.meta_differences(undigested, shifted)] == [
      "input statistics"]
  older = {k: v for k, v in undigested.items() if k != "train_examples"}  # before that key
  assert checkpoint_lib.meta_differences(older, meta) == []
  # statistics of another shape (more features): a refusal, not a numpy error
  wider = dict(meta, input_shape=[8, 8, 3], stats={k: [0.0, 0.0, 0.0] for k in meta["stats"]})
  assert [d.split(" ")[0] for d in checkpoint_lib.meta_differences(undigested, wider)] == [
      "input_shape", "input"]


def test_resuming_on_relabelled_arrays_is_refused(tmp_path):
  """Corrected labels (or other inputs of the same shape) had resumed the old model."""
  rng = np.random.default_rng(0)
  x = rng.normal(size=(96, 8, 8, 1)).astype(np.float32)
  y = rng.integers(0, 3, size=96)
  config = small_config(num_epochs=1, **{"dataset.name": "arrays", "dataset.val_fraction": 0.0,
                                         "checkpoint.every_steps": 0})
  flaxnets.train(config, str(tmp_path), data={"train": (x, y)})
  before = tree_digest(tmp_path / "checkpoints")
  for data in ({"train": (x, (y + 1) % 3)}, {"train": (x[::-1].copy(), y)}):
    with pytest.raises(checkpoint_lib.CheckpointError,
                       match=r"training examples \(from the data\): as many, other inputs"):
      flaxnets.train(config, str(tmp_path), data=data)
  assert tree_digest(tmp_path / "checkpoints") == before
  assert int(flaxnets.train(config, str(tmp_path), data={"train": (x, y)}).state.step) == 3
  with warnings.catch_warnings():  # no validation, so no best/: the latest, without a word
    warnings.simplefilter("error")
    assert flaxnets.load(tmp_path).path.name == "3"


def test_load_warns_when_the_best_checkpoint_is_gone(tmp_path, trained):
  """best/ deleted by hand: load() had served the latest step as if the run had none."""
  workdir = copy_run(trained, tmp_path)
  shutil.rmtree(workdir / "best")
  with pytest.warns(UserWarning, match=r"best' holds no checkpoint, though this run saved a "
                                       r"best one \(validation accuracy [\d.]+\); loaded the "
                                       r"latest step, 78, instead"):
    assert flaxnets.load(workdir).path.name == "78"


def test_optimizer_state_of_another_layout_is_refused_not_moved_aside(tmp_path, trained):
  workdir = copy_run(trained, tmp_path)
  before = tree_digest(workdir)
  config = small_config(**{"optimizer.clip_norm": 1.0, "num_epochs": 3})
  with pytest.raises(checkpoint_lib.IncompatibleCheckpointError) as info:
    flaxnets.train(config, str(workdir))
  msg = str(info.value)
  assert "is intact but holds a training state" in msg
  assert "optimizer.clip_norm: 0.0 -> 1.0" in msg and "--restart" in msg
  assert tree_digest(workdir) == before and not (workdir / "damaged").exists()


def test_a_changed_best_mode_or_early_stopping_metric_starts_them_over(tmp_path, trained,
                                                                       capsys):
  workdir = copy_run(trained, tmp_path)
  # accuracy kept by 'min' now: the saved best (the highest accuracy so far) would bar
  # every later epoch; reset, the next epoch takes best/
  config = small_config(**{"checkpoint.best_mode": "min", "num_epochs": 3,
                           "early_stopping.metric": "accuracy"})
  capsys.readouterr()
  result = flaxnets.train(config, str(workdir))
  out = capsys.readouterr().out
  assert "best_metric/best_mode changed from accuracy (max) to accuracy (min)" in out
  assert [p.name for p in (workdir / "best").iterdir()] == [str(3 * STEPS_PER_EPOCH)]
  assert "early_stopping.metric/mode changed from loss (min) to accuracy (max)" in out
  assert result.history[-1]["split"] == "val"


def test_an_older_checkpoint_of_another_layout_is_refused_too(tmp_path, trained):
  # Checkpoints written before meta held state_layout: Orbax's own structure error.
  workdir = copy_run(trained, tmp_path)
  for meta_file in workdir.glob("checkpoints/*/meta/metadata"):
    meta = json.loads(meta_file.read_text())
    del meta["state_layout"]
    meta_file.write_text(json.dumps(meta))
  with pytest.raises(checkpoint_lib.IncompatibleCheckpointError,
                     match=r"optimizer\.clip_norm: 0\.0 -> 1\.0"):
    flaxnets.train(small_config(**{"optimizer.clip_norm": 1.0}), str(workdir))
  assert not (workdir / "damaged").exists()
  assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["75", "78"]


# ---- divergence ------------------------------------------------------------------------------
@pytest.mark.parametrize("log_every_steps", [50, pytest.param(1, marks=pytest.mark.slow)])
def test_divergence_stops_naming_step_and_keeps_last_good_checkpoint(tmp_path, trained,
                                                                       log_every_steps):
  # Resume the finished run for a third epoch with an absurd learning rate: the first
  # update of the third epoch overflows. With log_every_steps=50 the loss is not looked
  # at before the first checkpoint (step 80), which must refuse the diverged state.
  workdir = copy_run(trained, tmp_path)
  before = {sub: tree_digest(workdir / sub) for sub in ("checkpoints", "best")}
  config = small_config(num_epochs=3, log_every_steps=log_every_steps,
                        **{"optimizer.learning_rate": 1e30})
  with pytest.raises(FloatingPointError, match=r"step (79|80)\b") as info:
    flaxnets.train(config, str(workdir))
  assert "last good checkpoint" in str(info.value)
  assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir()) == [75, 78]
  assert {sub: tree_digest(workdir / sub) for sub in ("checkpoints", "best")} == before


def test_jsonable_round_trip_of_non_finite_values():
  extra = {"early_stopping": {"best": float("inf"), "best_epoch": None, "bad_epochs": 0},
           "sums": {"loss": np.float32(1.5)}, "flags": (np.bool_(True), np.int64(3))}
  back = checkpoint_lib._from_json(json.loads(json.dumps(checkpoint_lib._jsonable(extra))))
  assert back == {"early_stopping": {"best": float("inf"), "best_epoch": None, "bad_epochs": 0},
                  "sums": {"loss": 1.5}, "flags": [True, 3]}


# ---- stops at awkward moments (slow: two in-process trainings each) ---------------------------
@pytest.mark.slow
def test_stop_on_an_epochs_last_step_finishes_the_epoch_first(tmp_path, trained, monkeypatch):
  # Make the "signal" arrive while the last step of epoch 1 (step 39) runs: the loop
  # must validate, save step 39 (with best/) and only then exit, or the resumed run
  # would skip epoch 1's validation record and best checkpoint.
  guards = []
  enter, write = hooks.PreemptionGuard.__enter__, hooks.MetricWriter.write

  def capture(self):
    guards.append(self)
    return enter(self)

  def signal_at_39(self, record):
    write(self, record)
    if record.get("split") == "train_step" and record["step"] == STEPS_PER_EPOCH:
      guards[-1].signal_name = "SIGTERM"

  monkeypatch.setattr(hooks.PreemptionGuard, "__enter__", capture)
  monkeypatch.setattr(hooks.MetricWriter, "write", signal_at_39)
  workdir = tmp_path / "run"
  with pytest.raises(SystemExit, match=f"received SIGTERM at step {STEPS_PER_EPOCH}"):
    flaxnets.train(small_config(), str(workdir))
  monkeypatch.undo()
  assert (workdir / "best" / str(STEPS_PER_EPOCH)).is_dir()
  extra = json.loads((workdir / "checkpoints" / "39" / "extra" / "metadata").read_text())
  assert extra["iterator"] == {"epoch": 1, "next_index": 0}
  assert [r["split"] for r in extra["history"]] == ["train", "val"]
  result = flaxnets.train(small_config(), str(workdir))
  assert jax.tree.all(jax.tree.map(np.array_equal, result.state.params, trained[1].state.params))
  strip = lambda history: [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in history]
  assert strip(result.history) == strip(trained[1].history)


@pytest.mark.slow
def test_early_stopped_run_stays_stopped_when_resumed(tmp_path, capsys):
  # Accuracy in 'min' mode: epoch 2 is "worse" than epoch 1, so patience 1 stops there.
  config = small_config(num_epochs=4, **{"early_stopping.patience": 1,
                                         "early_stopping.metric": "accuracy",
                                         "early_stopping.mode": "min",
                                         "early_stopping.restore_best": True,
                                         "checkpoint.max_to_keep": 50})  # epoch 1's stays
  first = flaxnets.train(config, str(tmp_path))
  assert first.stopped_early
  steps = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir())
  best = sorted(p.name for p in (tmp_path / "best").iterdir())
  assert best == [str(2 * STEPS_PER_EPOCH)]  # by checkpoint.best_metric: accuracy, max
  capsys.readouterr()
  again = flaxnets.train(config, str(tmp_path))
  out = capsys.readouterr().out
  assert "resumed from step" in out
  assert f"restored the weights of epoch 1, the best by validation accuracy (step " \
         f"{STEPS_PER_EPOCH})" in out
  assert again.stopped_early
  assert sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir()) == steps
  assert again.history == first.history
  results = json.loads((tmp_path / "results.json").read_text())
  assert results["evaluated_weights"] == "epoch 1 (early_stopping.restore_best)"
  # restoring epoch 1's weights from its checkpoint leaves best/ as it was
  assert sorted(p.name for p in (tmp_path / "best").iterdir()) == best


def test_stop_without_workdir_says_nothing_was_saved(monkeypatch):
  # With no workdir there is no checkpoint: the exit message must not claim one.
  enter = hooks.PreemptionGuard.__enter__

  def signalled_at_once(self):
    out = enter(self)
    self.signal_name = "SIGTERM"
    return out

  monkeypatch.setattr(hooks.PreemptionGuard, "__enter__", signalled_at_once)
  with pytest.raises(SystemExit, match=r"received SIGTERM at step 1; stopped without a "
                                       r"checkpoint \(no workdir was given") as e:
    flaxnets.train(small_config())
  # Nor is what trained lost (Ctrl-C in a notebook had dropped the model): the exception
  # carries the state reached, one step from the initial one.
  assert isinstance(e.value, flaxnets.Interrupted)
  result = e.value.result
  assert result.interrupted and int(result.state.step) == 1
  assert result.val_metrics is None and result.test_metrics is None
  assert flaxnets.evaluate(result, "val")["count"] == len(result.dataset.val["labels"])
  import pickle  # as a process pool returns it: the message (the optimizer does not pickle)
  again = pickle.loads(pickle.dumps(e.value))
  assert isinstance(again, flaxnets.Interrupted) and str(again) == str(e.value)


@pytest.mark.parametrize("workdir,overrides,message", [
    (False, {}, r"nothing was saved \(no workdir\)"),
    # These had claimed "the last good checkpoint" (or "step None"), and "no workdir".
    (True, {"checkpoint.enabled": False}, r"nothing was saved \(checkpoint\.enabled is False\)"),
    (True, {"log_every_steps": 50}, r"by step 5: .* no checkpoint had been saved yet in "),
    (True, {}, r"no checkpoint had been saved yet; a lower learning_rate"),
])
def test_divergence_message_says_what_was_saved(tmp_path, workdir, overrides, message):
  config = small_config(num_epochs=1, **{"optimizer.learning_rate": 1e30, **overrides})
  with pytest.raises(FloatingPointError, match=message):
    flaxnets.train(config, str(tmp_path / "run") if workdir else None)


def test_debug_checks_gradients_in_every_step(tmp_path):
  """config.debug had failed every run: chex's value assertion ran in a jitted step
  without chex.chexify."""
  from chex._src import asserts_internal
  waiting = list(asserts_internal.CHEXIFY_STORAGE.wait_fns)
  config = small_config(num_epochs=1, debug=True, log_every_steps=50)
  assert np.isfinite(flaxnets.train(config).history[0]["loss"])
  # Nothing left for chex's exit hook, which had warned of uninspected asynchronous checks
  # after every debug run (the step's checks are synchronous).
  assert asserts_internal.CHEXIFY_STORAGE.wait_fns == waiting
  config.optimizer.learning_rate = 1e30  # the first update overflows: step 2's gradients
  with pytest.raises(FloatingPointError, match=r"config\.debug: step 2 \(epoch 1\): the "
                                               r"gradients hold NaN or Inf; .*no workdir"):
    flaxnets.train(config)
  # Finite gradients, but adam's nu = g^2 overflows and freezes the parameters: the run
  # had finished as if nothing were wrong.
  config.optimizer.update(learning_rate=1e6, schedule="constant", name="adam")
  with pytest.raises(FloatingPointError, match=r"config\.debug: step \d+ \(epoch 1\): the "
                                               r"optimizer state holds NaN or Inf"):
    flaxnets.train(config)


def test_a_full_disk_is_one_error_line_and_keeps_what_was_saved(tmp_path):
  """A file size limit (as a full disk) failed Orbax's asynchronous save: over a thousand
  lines of tracebacks from its threads and TensorStore's before the error, which did not
  say that it was a checkpoint save."""
  workdir = tmp_path / "run"
  # the limit is set by a shell, not preexec_fn: forking this multithreaded (JAX) process
  # to run Python code before exec can deadlock
  out = subprocess.run(["bash", "-c", 'ulimit -f 100 && exec "$@"', "bash", sys.executable,
                        "-m", "flaxnets.cli", "train", f"--workdir={workdir}",
                        "--config.num_epochs=2", "--config.progress=false"],
                       capture_output=True, text=True, timeout=300, env=child_env(1))
  assert out.returncode == 2, out.stderr[-2000:]
  lines = out.stderr.strip().splitlines()
  assert lines[-1].startswith(f"flaxnets train: saving a checkpoint in {workdir} failed: "), \
      lines[-1]
  assert "Traceback" not in out.stderr and len(lines) < 15, out.stderr[-3000:]
  assert not [p for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()]
  # With room again, the same command runs (nothing half-written is taken for a step).
  again = subprocess.run([sys.executable, "-m", "flaxnets.cli", "train",
                          f"--workdir={workdir}", "--config.num_epochs=2",
                          "--config.progress=false"],
                         capture_output=True, text=True, timeout=300, env=child_env(1))
  assert again.returncode == 0, again.stderr[-2000:]
  assert flaxnets.load(workdir, "latest").path.name == "78"


def test_a_full_disk_from_python_is_the_error_without_a_thousand_lines(tmp_path):
  """From Python (a notebook), the same full disk raised the CheckpointError after about a
  thousand lines of tracebacks: Orbax's threads', TensorStore's "Event loop is closed"
  reports and asyncio's unretrieved futures. The CLI alone had filtered them."""
  workdir = tmp_path / "run"
  script = tmp_path / "train.py"
  script.write_text(textwrap.dedent(f"""
      import gc, flaxnets
      config = flaxnets.get_config()
      config.num_epochs, config.progress = 2, False
      try:
        flaxnets.train(config, workdir={str(workdir)!r})
      except flaxnets.CheckpointError as e:
        print("raised:", e)
      gc.collect()
      """))
  out = subprocess.run(["bash", "-c", 'ulimit -f 100 && exec "$@"', "bash", sys.executable,
                        str(script)], capture_output=True, text=True, timeout=300,
                       env=child_env(1))
  assert out.returncode == 0, out.stderr[-2000:]
  assert f"raised: saving a checkpoint in {workdir} failed: " in out.stdout, out.stdout[-2000:]
  lines = out.stderr.strip().splitlines()
  assert "Traceback" not in out.stderr and len(lines) < 15, (len(lines), out.stderr[-3000:])


def test_a_failed_saves_unretrieved_writes_are_not_reported_again(caplog):
  """After a failed save, the other writes' futures logged the same error each as they were
  collected ("Future exception was never retrieved"), after flaxnets' one line: the full-disk
  test above failed in CI on such lines. Other futures' errors are still reported."""
  import asyncio
  import gc
  from flaxnets.training import storage_reports

  def unretrieved(message):
    loop = asyncio.new_event_loop()
    future = loop.create_future()
    future.set_exception(ValueError(message))
    del future
    gc.collect()
    loop.close()

  save = ('OUT_OF_RANGE: Error writing "params.head.bias/0" in OCDBT database at local file '
          '"/w/checkpoints/39.orbax-checkpoint-tmp/state.orbax-checkpoint-tmp/ocdbt.process_0/"')
  asyncio_logger, only_saves = logging.getLogger("asyncio"), storage_reports.UnretrievedSaveErrors()
  asyncio_logger.addFilter(only_saves)
  try:
    with caplog.at_level(logging.ERROR, logger="asyncio"):
      unretrieved(save)
      unretrieved("some other failure")
  finally:
    asyncio_logger.removeFilter(only_saves)
  reported = [r.exc_info[1] for r in caplog.records if r.name == "asyncio"]
  assert [str(e) for e in reported] == ["some other failure"], reported


def test_only_tensorstores_closed_loop_reports_are_dropped():
  """TensorStore's callbacks into Orbax's closed event loop printed "Exception ignored ...
  Event loop is closed" tracebacks after a failed save; a user's own report of the same
  error (from a __del__ or a callback) must still be shown."""
  import asyncio
  import types
  from flaxnets.training import storage_reports
  loop = asyncio.new_event_loop()
  loop.close()
  try:
    loop.call_soon_threadsafe(print)
  except RuntimeError as e:
    error = e
  # as TensorStore's native thread reports it: the first frame is call_soon_threadsafe
  tensorstore = types.SimpleNamespace(exc_value=error, exc_traceback=error.__traceback__.tb_next,
                                      object=None, err_msg=None)
  assert tensorstore.exc_traceback.tb_frame.f_code.co_name == "call_soon_threadsafe"
  assert storage_reports.closed_loop_report(tensorstore)
  users = [types.SimpleNamespace(exc_value=error, exc_traceback=error.__traceback__,
                                 object=None, err_msg=None),  # raised in the user's code
           types.SimpleNamespace(exc_value=error, exc_traceback=tensorstore.exc_traceback,
                                 object=print, err_msg="Exception ignored in")]
  assert not any(storage_reports.closed_loop_report(u) for u in users)
  other = types.SimpleNamespace(exc_value=RuntimeError("other"),
                                exc_traceback=tensorstore.exc_traceback, object=None)
  assert not storage_reports.closed_loop_report(other)


def test_metric_modes_saved_resolved_are_not_reported_as_changed():
  """Checkpoints written before 2026-11-28 hold the resolved modes ('max' for accuracy, 'min'
  for loss): a resume with the same config reported 'checkpoint.best_mode: max -> auto' and
  'early_stopping.mode: min -> auto' in results.json's config_changes."""
  saved, now = flaxnets.get_config(), flaxnets.get_config()
  saved.checkpoint.best_mode, saved.early_stopping.mode = "max", "min"
  now.num_epochs += 5
  assert checkpoint_lib.config_changes(saved.to_dict(), now.to_dict()) == [
      "num_epochs: 10 -> 15"]
  now.checkpoint.best_mode = "min"  # a real change: the lowest accuracy is now the best
  assert checkpoint_lib.config_changes(saved.to_dict(), now.to_dict()) == [
      "checkpoint.best_mode: 'max' -> 'min'", "num_epochs: 10 -> 15"]
  # with the metric changed, a mode is reported as it reads: 'max' -> 'max' is no change
  saved.checkpoint.best_mode, now.checkpoint.best_mode = "auto", "max"
  now.checkpoint.best_metric = "loss"
  assert checkpoint_lib.config_changes(saved.to_dict(), now.to_dict()) == [
      "checkpoint.best_metric: 'accuracy' -> 'loss'", "checkpoint.best_mode: 'auto' -> 'max'",
      "num_epochs: 10 -> 15"]
  now.checkpoint.best_mode = "auto"
  assert checkpoint_lib.config_changes(saved.to_dict(), now.to_dict()) == [
      "checkpoint.best_metric: 'accuracy' -> 'loss'", "num_epochs: 10 -> 15"]


def test_a_dataset_setting_the_dataset_never_read_does_not_block_a_resume():
  """Runs from before validate refused them (digits with val_fraction=0) had saved such a
  setting: keeping it is now a ConfigError and dropping it had been a 'different config'."""
  saved = flaxnets.get_config()
  saved.dataset.val_fraction = 0.0
  now = flaxnets.get_config()
  assert checkpoint_lib.config_differences(saved.to_dict(), now.to_dict()) == []
  saved.dataset.name = now.dataset.name = "mnist1d"  # which reads it: a real difference
  assert checkpoint_lib.config_differences(saved.to_dict(), now.to_dict()) == [
      "dataset.val_fraction: checkpoint 0.0 vs now 0.1"]
