"""Orbax checkpoints: resume bit for bit, keep the best, restore anywhere.

Layout of a workdir:
    checkpoints/<step>/{state, extra, meta}   the latest `max_to_keep` steps
    best/<step>/{state, extra, meta}          the step with the best validation metric
`state` holds params, batch_stats, opt_state, step and rng (Orbax StandardSave);
`extra` (JSON) the data-iterator position, history and early-stopping state; `meta`
(JSON) everything inference needs: config, model name, label names, vocabulary,
input statistics. Nothing is pickled. Orbax writes each step to a temporary folder
and renames it when complete, so a half-written step is never picked up; a step
that is damaged afterwards is skipped on resume, with a message naming it.
"""
from __future__ import annotations

import pathlib
import shutil
from typing import Any

import jax
import numpy as np

from flaxnets.data.types import Dataset
from flaxnets.training.hooks import is_chief

# Changing any of these between a run and its resume would make the resume wrong.
RESUME_KEYS = ("model", "dataset", "batch_size", "seed", "optimizer.name")


class CheckpointError(RuntimeError):
  """A checkpoint that cannot be used; the message names its path."""


def _ocp():
  import orbax.checkpoint as ocp  # imported on first use: it is slow to import
  return ocp


def state_tree(state: Any) -> dict[str, Any]:
  return {"params": state.params, "batch_stats": state.batch_stats,
          "opt_state": state.opt_state, "step": state.step, "rng": state.rng}


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flatten(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def config_differences(saved: dict, current: dict) -> list[str]:
  """Dotted keys under RESUME_KEYS whose values differ between two config dicts."""
  a, b = _flatten(saved), _flatten(current)
  diffs = []
  for key in sorted(set(a) | set(b)):
    if any(key == r or key.startswith(r + ".") for r in RESUME_KEYS) and a.get(key) != b.get(key):
      diffs.append(f"{key}: checkpoint {a.get(key)!r} vs now {b.get(key)!r}")
  return diffs


def metadata(config: Any, dataset: Dataset, stats: dict[str, np.ndarray]) -> dict[str, Any]:
  import flaxnets
  return {"config": config.to_dict(), "model": config.model.name,
          "label_names": list(dataset.label_names), "num_classes": dataset.num_classes,
          "input_kind": dataset.input_kind, "input_shape": list(dataset.input_shape),
          "task": dataset.task, "dataset": dataset.name,
          "vocab": None if dataset.vocab is None else dataset.vocab.to_dict(),
          "stats": {k: np.asarray(v).tolist() for k, v in stats.items()},
          "flaxnets_version": flaxnets.__version__}


class Checkpointer:
  """Saves and restores the training state of one workdir."""

  def __init__(self, workdir: str | pathlib.Path, config: Any, dataset: Dataset,
               stats: dict[str, np.ndarray], restart: bool = False):
    ocp = _ocp()
    self.workdir = pathlib.Path(workdir).absolute()
    if restart and is_chief():  # --restart: start over explicitly
      for sub in ("checkpoints", "best"):
        shutil.rmtree(self.workdir / sub, ignore_errors=True)
    self.ccfg = config.checkpoint
    self.meta = metadata(config, dataset, stats)
    opts = dict(enable_async_checkpointing=self.ccfg.async_save, create=True)
    self.items = ("state", "extra", "meta")
    self.latest = ocp.CheckpointManager(
        self.workdir / "checkpoints", item_names=self.items,
        options=ocp.CheckpointManagerOptions(max_to_keep=self.ccfg.max_to_keep, **opts))
    self.best = ocp.CheckpointManager(
        self.workdir / "best", item_names=self.items,
        options=ocp.CheckpointManagerOptions(max_to_keep=1, **opts))
    self.best_value = None
    self._check_compatible()

  def _check_compatible(self) -> None:
    step = self.latest.latest_step()
    if step is None:
      return
    try:
      saved = self._read_meta(self.latest, step)
    except CheckpointError:
      return  # a damaged newest step is handled (and reported) by restore_latest
    diffs = config_differences(saved["config"], self.meta["config"])
    if saved.get("vocab") != self.meta["vocab"]:
      diffs.append("vocabulary: built from different training data")
    if diffs:
      raise CheckpointError(
          f"{self.workdir}: the checkpoints there were trained with a different config, so "
          "resuming would be wrong. Differing keys:\n  " + "\n  ".join(diffs) +
          "\nUse another workdir, or --restart (train(..., restart=True)) to start over.")
    self.best_value = saved.get("best_value")

  def _read_meta(self, manager, step: int) -> dict:
    ocp = _ocp()
    try:
      return manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    except Exception as e:  # orbax raises several types for missing / damaged files
      raise CheckpointError(f"checkpoint {manager.directory / str(step)} is damaged or "
                            f"incomplete: {type(e).__name__}: {e}") from e

  # -- save -------------------------------------------------------------------------------
  def save(self, step: int, state: Any, extra: dict[str, Any],
           val_metrics: dict[str, float] | None = None, force: bool = False) -> None:
    """Save `state` (host arrays) at `step`; also to best/ when val_metrics improve."""
    ocp = _ocp()
    if step in self.latest.all_steps():
      return
    meta = dict(self.meta, metrics=val_metrics or {}, best_value=self.best_value)
    args = ocp.args.Composite(state=ocp.args.StandardSave(state_tree(state)),
                              extra=ocp.args.JsonSave(_jsonable(extra)),
                              meta=ocp.args.JsonSave(meta))
    if val_metrics and f"val_{self.ccfg.best_metric}" in val_metrics:
      value = val_metrics[f"val_{self.ccfg.best_metric}"]
      better = (self.best_value is None or
                (value > self.best_value if self.ccfg.best_mode == "max" else value < self.best_value))
      if better:
        self.best_value = value
        meta["best_value"] = value
        self.best.save(step, args=args, force=True)
    self.latest.save(step, args=args, force=True)

  def wait(self) -> None:
    self.latest.wait_until_finished()
    self.best.wait_until_finished()

  def close(self) -> None:
    self.wait()
    self.latest.close()
    self.best.close()

  # -- restore -----------------------------------------------------------------------------
  def best_step(self) -> int | None:
    return self.best.latest_step()

  def restore_step(self, step: int | None, target: Any, manager=None) -> tuple[Any, dict] | None:
    """(state, extra) of `step`, restored into the structure of `target`."""
    if step is None:
      return None
    ocp = _ocp()
    manager = manager or (self.best if step == self.best_step() and
                          step not in self.latest.all_steps() else self.latest)
    abstract = jax.tree.map(np.asarray, state_tree(jax.device_get(target)))
    try:
      out = manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract), extra=ocp.args.JsonRestore()))
    except Exception as e:
      raise CheckpointError(f"checkpoint {manager.directory / str(step)} is damaged or "
                            f"incomplete: {type(e).__name__}: {e}") from e
    tree = out["state"]
    state = target.replace(params=tree["params"], batch_stats=tree["batch_stats"],
                           opt_state=tree["opt_state"], step=tree["step"], rng=tree["rng"])
    return state, out["extra"]

  def restore_latest(self, target: Any) -> tuple[Any, dict] | None:
    """The newest complete step; damaged newer steps are skipped with a message."""
    for step in sorted(self.latest.all_steps(), reverse=True):
      try:
        return self.restore_step(step, target, self.latest)
      except CheckpointError as e:
        if is_chief():
          print(f"flaxnets: skipping checkpoint step {step}: {e}", flush=True)
    return None


def _jsonable(obj: Any) -> Any:
  if isinstance(obj, dict):
    return {str(k): _jsonable(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [_jsonable(v) for v in obj]
  if isinstance(obj, (np.integer,)):
    return int(obj)
  if isinstance(obj, (np.floating, float)):
    v = float(obj)
    return v if np.isfinite(v) else str(v)
  return obj
