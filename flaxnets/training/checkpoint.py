"""Orbax checkpoints: resume bit for bit, keep the best, restore anywhere.

Layout of a workdir:
    checkpoints/<step>/{state, extra, meta}   the latest `max_to_keep` steps
    best/<step>/{state, extra, meta}          the step with the best validation metric
    damaged/<sub>-<step>-<time>/              steps found damaged on resume, moved aside
`state` holds params, batch_stats, opt_state, step and rng (Orbax StandardSave);
`extra` (JSON) the data-iterator position, history, the running sums of a partly
done epoch and early-stopping state; `meta` (JSON) everything inference needs:
config, model name, label names, vocabulary, input statistics, plus the validation
metrics of that step. Nothing is pickled. Orbax writes each step to a temporary
folder and renames it when complete, so a half-written step is never picked up; a
step that is damaged afterwards is skipped on resume, with a message naming it.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import pathlib
import re
import shutil
import socket
import time
from typing import Any, Callable, Iterator, Sequence

import jax
import numpy as np

from flaxnets import config as config_lib
from flaxnets.data.types import Dataset
from flaxnets.training import storage_reports
from flaxnets.training.hooks import is_chief

# Changing any of these between a run and its resume would make the resume wrong.
RESUME_KEYS = ("model", "dataset", "batch_size", "seed", "optimizer.name")
# Facts about the data that fix the model's shape and the meaning of its outputs; a
# changed 'arrays' dataset has no config key that would show it.
RESUME_META = ("dataset", "task", "input_kind", "input_shape", "num_classes", "label_names")
ITEMS = ("state", "extra", "meta")
_MAX_CAUSE = 400  # characters of an Orbax / TensorStore error quoted in ours


class CheckpointError(RuntimeError):
  """A checkpoint that cannot be saved or used, or a workdir that a run cannot take (busy,
  or holding another run's checkpoints); the message names the path."""


class IncompatibleCheckpointError(CheckpointError):
  """An intact checkpoint of a state that this config does not build: refused, never moved."""


def state_layout(tree: dict[str, Any]) -> str:
  """Leaf count and a digest of every leaf's path and shape in a state_tree.

  Not dtypes: a fresh state's step may be int64 where a trained one's is int32, and
  Orbax casts on restore (param_dtype is a model key, refused on its own)."""
  rows = [f"{jax.tree_util.keystr(path)}:{tuple(np.shape(leaf))}"
          for path, leaf in jax.tree_util.tree_leaves_with_path(tree)]
  return f"{len(rows)} arrays, {hashlib.sha256(chr(10).join(rows).encode()).hexdigest()[:16]}"


def _ocp():
  import orbax.checkpoint as ocp  # imported on first use: it is slow to import
  storage_reports.install()  # a failed save or read as one error, not a thousand lines
  return ocp


def damaged_error(path: pathlib.Path | str, error: BaseException) -> CheckpointError:
  """One CheckpointError naming `path`, with the first few hundred characters of the cause."""
  cause = f"{type(error).__name__}: {error}"
  if len(cause) > _MAX_CAUSE:  # TensorStore appends its whole JSON spec: keep the reason
    cause = cause[:_MAX_CAUSE] + " ..."
  return CheckpointError(f"checkpoint {path} is damaged or incomplete ({cause}); "
                         "load another step (step=N), or retrain")


def state_tree(state: Any) -> dict[str, Any]:
  """The parts of a TrainState that a checkpoint stores."""
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


def _as_json(obj: Any) -> Any:
  """obj as it reads back from a JSON checkpoint item (tuples become lists)."""
  return json.loads(json.dumps(_jsonable(obj)))


def _json_default(value: Any) -> Any:
  """A model field's default as config JSON holds it (dtype -> 'float32'); or _SKIP."""
  if hasattr(value, "dtype") or isinstance(value, type):
    try:
      return jax.numpy.dtype(value).name
    except TypeError:
      return _SKIP
  try:
    return _as_json(value)
  except TypeError:
    return _SKIP


_SKIP = object()


def _with_defaults(config: dict) -> dict[str, Any]:
  """A config dict, flattened, with the keys it lacks filled in from today's defaults.

  A checkpoint written before a config key (or a model field) existed lacks it; the
  key then behaved as its default, so a missing key is no reason to refuse a resume.
  """
  from flaxnets.models import registry
  flat = _flatten(_as_json(config))
  defaults = _flatten(_as_json(config_lib.get_config().to_dict()))
  name = flat.get("model.name")
  if name in registry.MODELS:
    for field_name, field in registry.model_fields(name).items():
      if field.default is not dataclasses.MISSING:
        value = _json_default(field.default)
        if value is not _SKIP:
          defaults[f"model.{field_name}"] = value
  return {**defaults, **flat}


def config_differences(saved: dict, current: dict) -> list[str]:
  """Dotted keys under RESUME_KEYS whose values differ between two config dicts.

  A dataset setting that the (same) dataset does not read is no difference: runs before
  validate refused one (digits with val_fraction=0) resume with it left at its default.
  """
  a, b = _with_defaults(saved), _with_defaults(current)
  name = a.get("dataset.name")
  diffs = []
  for key in sorted(set(a) | set(b)):
    if (key.startswith("dataset.") and name == b.get("dataset.name") and
        not config_lib.dataset_reads(name, key[len("dataset."):])):
      continue
    if any(key == r or key.startswith(r + ".") for r in RESUME_KEYS) and a.get(key) != b.get(key):
      diffs.append(f"{key}: checkpoint {a.get(key)!r} vs now {b.get(key)!r}")
  return diffs


def config_changes(saved: dict, current: dict) -> list[str]:
  """Dotted keys outside RESUME_KEYS whose values differ: allowed on resume, and reported.

  A resumed run applies them from its step on (a new learning rate, more epochs, ...).
  """
  a, b = _with_defaults(saved), _with_defaults(current)
  return [f"{key}: {a.get(key)!r} -> {b.get(key)!r}" for key in sorted(set(a) | set(b))
          if not any(key == r or key.startswith(r + ".") for r in RESUME_KEYS)
          and not key.startswith("init.")  # read only by a run's start
          and a.get(key) != b.get(key) and not _same_mode(a, b, key)]


_MODE_METRIC = {"checkpoint.best_mode": "checkpoint.best_metric",
                "early_stopping.mode": "early_stopping.metric"}


def _same_mode(a: dict[str, Any], b: dict[str, Any], key: str) -> bool:
  """Whether `key`, a metric's mode, means the same on both sides although it reads
  differently: checkpoints written before 2026-11-28 hold the then defaults 'max' and
  'min' where the config now says 'auto' (which resolves to those for their metrics)."""
  metric = _MODE_METRIC.get(key)
  if metric is None or a.get(metric) != b.get(metric):
    return False
  if not all(isinstance(d.get(k), str) for d in (a, b) for k in (metric, key)):
    return False
  return config_lib.metric_mode(a[metric], a[key]) == config_lib.metric_mode(b[metric], b[key])


def meta_differences(saved: dict, current: dict) -> list[str]:
  """Config keys, data facts and vocabulary that differ between two `meta` items."""
  diffs = config_differences(saved["config"], current["config"])
  diffs += data_differences(saved, current, RESUME_META + ("train_examples",))
  # The contents (since 2026-11-29): 'arrays' data has no config key to show a change.
  da, db = saved.get("train_digest"), current.get("train_digest")
  if None not in (da, db) and da != db and not any(d.startswith("train_examples")
                                                   for d in diffs):
    diffs.append(f"training examples (from the data): as many, other inputs or labels "
                 f"(digest {da} vs now {db})")
  a, b = _as_json(saved), _as_json(current)
  sa, sb = a.get("stats") or {}, b.get("stats") or {}

  def same(u, v):
    u, v = np.asarray(u), np.asarray(v)
    return u.shape == v.shape and np.allclose(u, v, rtol=1e-5, atol=1e-7)

  if set(sa) == set(sb) and not all(same(sa[k], sb[k]) for k in sa):
    if None not in (da, db) and da == db:
      diffs.append("input statistics: other values from the same training examples, so "
                   "this flaxnets normalises the inputs differently from the one that trained")
    elif None in (da, db):  # checkpoints without a digest: the statistics tell
      diffs.append("input statistics (from the training data): they differ, so the training "
                   "examples changed, or how flaxnets prepares them did (its validation "
                   "carve on 2026-11-28; padded series' statistics count only their real "
                   "steps since 2026-11-29)")
  return diffs


def data_differences(saved: dict, current: dict, keys: tuple[str, ...] = RESUME_META
                     ) -> list[str]:
  """Data facts (`keys` of two `meta` items) and vocabularies that differ.

  train_examples is compared only where both have it (written since 2026-11-28), as is
  the resume's train_digest (since 2026-11-29).
  """
  a, b = _as_json(saved), _as_json(current)
  diffs = []
  for key in keys:
    if key == "train_examples" and None in (a.get(key), b.get(key)):
      continue
    if a.get(key) != b.get(key):
      shown = [repr(v) if len(repr(v)) < 80 else repr(v)[:77] + "..."
               for v in (a.get(key), b.get(key))]
      diffs.append(f"{key} (from the data): checkpoint {shown[0]} vs now {shown[1]}")
  if None not in (a.get("vocab_size"), b.get("vocab_size")) and a["vocab_size"] != b["vocab_size"]:
    diffs.append(f"vocab_size (from the data): checkpoint {a['vocab_size']} vs now "
                 f"{b['vocab_size']}")
  va, vb = a.get("vocab") or {}, b.get("vocab") or {}
  given = [((m.get("config") or {}).get("dataset") or {}).get("vocabulary") or ""
           for m in (a, b)]
  if va != vb:
    rules = [v.get("punct_rules", 1) for v in (va, vb)]
    if va.get("split_punctuation") and vb.get("split_punctuation") and rules[0] != rules[1]:
      diffs.append(f"vocabulary: punctuation split by rules {rules[0]} (checkpoint) vs "
                   f"{rules[1]} (this flaxnets, since 2026-11-29: opening quotes apart from "
                   "words, combining marks inside them), so the texts become other tokens; "
                   "the checkpoint's predict() keeps its own rules")
    elif a.get("train_examples") is None:  # meta written before 2026-11-28's changes
      diffs.append("vocabulary: built from different training data or settings, or by an "
                   "older flaxnets (since 2026-11-28 it is built from the training part "
                   "only, after the validation carve, and a text_file corpus follows "
                   "dataset.lowercase and split_punctuation); the checkpoint's predict() "
                   "keeps its own vocabulary")
    elif given[1] and given[0] == given[1]:
      diffs.append(f"vocabulary: the one config.dataset.vocabulary={given[1]!r} gives "
                   "differs from the checkpoint's (it changed since)")
    elif given[0] != given[1]:
      diffs.append("vocabulary: " + " vs ".join(
          f"{'given by ' + repr(g) if g else 'built from the training data'} ({side})"
          for g, side in zip(given, ("checkpoint", "now"))))
    else:
      diffs.append("vocabulary: built from different training data or settings")
  return diffs


def split_digest(split: dict[str, np.ndarray]) -> str:
  """A digest of a split's arrays (names, dtypes, shapes and contents): equal counts and
  shapes of other examples, or other labels, change it."""
  h = hashlib.sha256()
  for key in sorted(split):
    a = np.asarray(split[key])
    h.update(f"{key}:{a.dtype.str}:{a.shape};".encode())
    if a.dtype == object:
      h.update(repr(a.tolist()).encode())
      continue
    a = a.reshape(1, *a.shape) if a.ndim == 0 else a
    row_bytes = max(a.nbytes // max(len(a), 1), 1)
    rows = max(1, (64 << 20) // row_bytes)  # ~64 MB at a time: no copy of the whole array
    for start in range(0, len(a), rows):
      # bytes, whatever the dtype (memoryview cannot export ml_dtypes' bfloat16)
      h.update(np.ascontiguousarray(a[start:start + rows]).view(np.uint8))
  return h.hexdigest()[:32]


def metadata(config: Any, dataset: Dataset, stats: dict[str, np.ndarray],
             digest: bool = True) -> dict[str, Any]:
  """What inference needs to rebuild the model and read raw inputs, as JSON values."""
  import flaxnets
  return {"config": config.to_dict(), "model": config.model.name,
          "label_names": list(dataset.label_names), "num_classes": dataset.num_classes,
          "input_kind": dataset.input_kind, "input_shape": list(dataset.input_shape),
          "task": dataset.task, "dataset": dataset.name,
          "train_examples": len(dataset.train["labels"]),
          "train_digest": split_digest(dataset.train) if digest else None,
          # series given per-example lengths (train(data=...)'s third item): predict needs them
          "seq_lengths": "seq_lengths" in dataset.train,
          "vocab": None if dataset.vocab is None else dataset.vocab.to_dict(),
          "vocab_size": dataset.vocab_size,
          "image_shape": None if dataset.image_shape is None else list(dataset.image_shape),
          "stats": {k: np.asarray(v).tolist() for k, v in stats.items()},
          "input_range": _pixel_range(dataset),
          "flaxnets_version": flaxnets.__version__}


def _pixel_range(dataset: Dataset) -> list[float] | None:
  """[min, max] of images given as arrays, which predict() compares with the 0..255 that
  image files decode to; None for other data (files and TFDS decode to 0..255 too).
  uint8 arrays are pixels by their type: [0, 255], however dark the images."""
  if dataset.name != "arrays" or (dataset.input_kind != "image" and
                                  dataset.image_shape is None):
    return None
  x = dataset.train["inputs"]
  if x.dtype == np.uint8:
    return [0.0, 255.0]
  return [float(x.min()), float(x.max())] if x.size else None


CHECKPOINT_DIRS = ("checkpoints", "best")


def existing_steps(workdir: str | pathlib.Path, subs: Sequence[str] = CHECKPOINT_DIRS
                   ) -> list[str]:
  """The step folders a workdir's checkpoints/ and best/ (or `subs`) hold, as
  'checkpoints/12'."""
  root = pathlib.Path(workdir)
  return [f"{sub}/{d.name}" for sub in subs if (root / sub).is_dir()
          for d in sorted((root / sub).iterdir()) if d.is_dir() and d.name.isdigit()]


def _sync(name: str) -> None:
  """All processes wait here (a no-op for one process)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)


# What Orbax writes into checkpoints/ and best/: step folders, and a save's temporary one.
_STEP_FOLDER = re.compile(r"\d+(\.orbax-checkpoint-tmp.*)?$")


def remove_checkpoints(workdir: str | pathlib.Path) -> None:
  """Delete the step folders of checkpoints/ and best/ (restart); every process waits until
  they are gone.

  Only Orbax's step folders go: anything else there stays, and a checkpoints/ that is a
  link (to a larger disk) keeps its link, its steps deleted where they are. Permissions are
  checked before anything is deleted, and a deletion that fails stops the run with one
  error (it had been ignored: the restart resumed the old steps, or met them half deleted).
  """
  error = None
  if is_chief():
    try:
      _remove_step_folders(pathlib.Path(workdir))
    except OSError as e:  # every process must hear of it (below)
      error = CheckpointError(f"restart (--restart): {e}; fix that and run again, or use "
                              "another workdir (the logs were left where they are)")
  if jax.process_count() > 1:  # the others wait for process 0 (and hear of its error)
    from jax.experimental import multihost_utils
    failed = int(multihost_utils.broadcast_one_to_all(np.int32(error is not None)))
    if failed and error is None:
      error = CheckpointError("restart (--restart): process 0 of this run could not delete "
                              "the checkpoints (its own error says why)")
  if error is not None:
    raise error


def _remove_step_folders(root: pathlib.Path) -> None:
  """remove_checkpoints on process 0: check, then delete."""
  doomed = [p for sub in CHECKPOINT_DIRS if (root / sub).is_dir()
            for p in sorted((root / sub).iterdir()) if _STEP_FOLDER.match(p.name)]
  def unreadable(error: OSError) -> None:
    raise PermissionError(f"cannot delete {str(p)!r}: {error}; nothing was deleted")

  for p in doomed:  # every folder whose entries go must be listable and writable
    folders = [str(p.parent)]
    if p.is_dir() and not p.is_symlink():
      folders += [top for top, _, _ in os.walk(p, onerror=unreadable)]  # links not followed
    for d in folders:
      if not os.access(d, os.R_OK | os.W_OK | os.X_OK):
        raise PermissionError(f"cannot delete {str(p)!r}: {d!r} is not readable and "
                              "writable; nothing was deleted")
  done = []
  for p in doomed:
    try:
      if p.is_symlink() or not p.is_dir():
        p.unlink()
      else:
        shutil.rmtree(p)
    except OSError as e:
      gone = (f"{', '.join(done)} had been deleted before it" if done else
              "nothing had been deleted before it")
      raise OSError(f"could not delete {str(p)!r} ({e}); {gone}") from None
    done.append(f"{p.parent.name}/{p.name}")


def check_disabled(workdir: str | pathlib.Path, restart: bool) -> None:
  """checkpoint.enabled=False: refuse a workdir whose checkpoints this run would ignore.

  Such a run neither resumes nor replaces them, so `flaxnets.load(workdir)` and
  `flaxnets eval` would go on serving the earlier model beside this run's results.json.
  With restart they are deleted, as restart does with checkpoints enabled.
  """
  steps = existing_steps(workdir)
  _sync("flaxnets_disabled_listed")  # all listed before process 0 may delete (below)
  if not steps:
    return
  if restart:
    remove_checkpoints(workdir)
    return
  shown = ", ".join(steps[:4]) + (", ..." if len(steps) > 4 else "")
  raise CheckpointError(
      f"workdir {str(pathlib.Path(workdir).absolute())!r} holds checkpoints of an earlier run "
      f"({shown}) and checkpoint.enabled=False would neither resume nor replace them, so "
      "load() and `flaxnets eval` would serve that earlier model: enable checkpoints to "
      "resume, use another workdir, or restart=True (--restart) to delete them and start over")


class Checkpointer:
  """Saves and restores the training state of one workdir (process 0 writes)."""

  def __init__(self, workdir: str | pathlib.Path, config: Any, dataset: Dataset,
               stats: dict[str, np.ndarray], restart: bool = False):
    ocp = _ocp()
    self.workdir = pathlib.Path(workdir).absolute()
    if restart:  # --restart: start over explicitly
      remove_checkpoints(self.workdir)
    self.ccfg = config.checkpoint
    es = config.early_stopping
    # With restore_best by the same metric and mode, best/ takes early stopping's epoch
    # (README: load() then returns the weights results.json reports), min_delta and all:
    # the loop passes its choice to save(). Compared apart, they had picked other epochs.
    same = (es.metric, config_lib.metric_mode(es.metric, es.mode)) == (
        self.ccfg.best_metric, config_lib.metric_mode(self.ccfg.best_metric, self.ccfg.best_mode))
    self.follows_early_stopping = bool(es.patience and es.restore_best and same)
    self.meta = metadata(config, dataset, stats)
    # A run killed mid-save leaves a temporary folder behind; it is never a step.
    opts = dict(enable_async_checkpointing=self.ccfg.async_save, create=True,
                cleanup_tmp_directories=True)
    # Each manager gets its own barrier names: otherwise the async saves of one step to
    # checkpoints/ and best/ both wait on 'async_write_complete.<step>' across processes.
    def mp(prefix):
      return ocp.options.MultiprocessingOptions(barrier_sync_key_prefix=prefix)

    self.latest = ocp.CheckpointManager(
        self.workdir / "checkpoints", item_names=ITEMS,
        options=ocp.CheckpointManagerOptions(max_to_keep=self.ccfg.max_to_keep,
                                             multiprocessing_options=mp("latest"), **opts))
    self.best = ocp.CheckpointManager(
        self.workdir / "best", item_names=ITEMS,
        options=ocp.CheckpointManagerOptions(max_to_keep=1, multiprocessing_options=mp("best"),
                                             **opts))
    self.best_value: float | None = None
    self.restored_config: dict | None = None  # the config saved with the step resumed from
    self._closed = False
    self._check_compatible()

  def _check_compatible(self) -> None:
    """Refuse to resume from checkpoints of a different model, dataset or vocabulary."""
    for step in sorted(self.latest.all_steps(), reverse=True):
      try:
        saved = self._read_meta(self.latest, step)
      except CheckpointError:
        continue  # a damaged step is reported (and moved aside) by restore_latest
      diffs = meta_differences(saved, self.meta)
      if diffs:
        raise CheckpointError(
            f"{self.workdir}: the checkpoints there were trained with a different config "
            "or data, so resuming would be wrong. Differing: " + "; ".join(diffs) +
            ". Use another workdir, or --restart (train(..., restart=True)) to start over.")
      return

  def _read_meta(self, manager: Any, step: int) -> dict:
    ocp = _ocp()
    try:
      return manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    except Exception as e:  # orbax raises several types for missing / damaged files
      raise damaged_error(manager.directory / str(step), e) from e

  # -- save -------------------------------------------------------------------------------
  def _better(self, value: float) -> bool:
    if self.best_value is None:
      return True
    mode = config_lib.metric_mode(self.ccfg.best_metric, self.ccfg.best_mode)
    return value > self.best_value if mode == "max" else value < self.best_value

  def save(self, step: int, state: Any, extra: dict[str, Any],
           val_metrics: dict[str, float] | None = None, force: bool = False,
           improved: bool | None = None) -> None:
    """Save `state` (host arrays) at `step`; also to best/ when val_metrics improve (or,
    given, when `improved`: early stopping's choice, see `follows_early_stopping`).

    A step that is already saved is left as it is: the same step of the same run
    holds the same state (a resumed run replays the steps after its checkpoint; best/
    steps after the one it resumed from were moved aside by `_resume_best`).
    `force` is accepted for the loop's preemption save; every call saves.
    """
    del force
    ocp = _ocp()
    if step in self.latest.all_steps():
      return
    self._check_finite(step, state)
    metric = f"val_{self.ccfg.best_metric}"
    improved = bool(val_metrics) and metric in val_metrics and (
        self._better(val_metrics[metric]) if improved is None else improved)
    if improved:
      self.best_value = float(val_metrics[metric])
    meta = dict(self.meta, metrics=val_metrics or {}, best_value=self.best_value,
                best_step=step if improved else None,
                state_layout=state_layout(state_tree(state)))
    args = ocp.args.Composite(state=ocp.args.StandardSave(state_tree(state)),
                              extra=ocp.args.JsonSave(_jsonable(extra)),
                              meta=ocp.args.JsonSave(_jsonable(meta)))
    # best/ first, then checkpoints/: a best step missing is repaired on resume, and one
    # newer than the step resumed from is moved aside there and saved again by the replay.
    with self._save_errors():
      if improved and step not in self.best.all_steps():
        self.best.save(step, args=args, force=True)
      self.latest.save(step, args=args, force=True)

  @contextlib.contextmanager
  def _save_errors(self) -> Iterator[None]:
    """A failed write (a full disk, a file size limit) as a CheckpointError that says it
    was a checkpoint save. Saves are asynchronous, so it surfaces at the next save or at
    close; Orbax commits a step only once all of it is written."""
    try:
      yield
    except (ValueError, OSError, RuntimeError) as e:
      raise CheckpointError(f"saving a checkpoint in {self.workdir} failed: {e} (the steps "
                            "saved before it are kept whole)") from e

  def _check_finite(self, step: int, state: Any) -> None:
    """Refuse to write a diverged state: the last good checkpoint must stay the newest.

    The loop checks the loss only at logging points and epoch ends; an update that
    overflowed since then shows up here first. Costs one pass over host arrays,
    less than writing them.
    """
    tree = state_tree(state)
    leaves = [(f"{name}{jax.tree_util.keystr(path)}", leaf)
              for name in ("params", "batch_stats", "opt_state")  # params named first
              for path, leaf in jax.tree_util.tree_leaves_with_path(tree[name])]
    for path, leaf in leaves:
      leaf = np.asarray(leaf)
      if jax.numpy.issubdtype(leaf.dtype, jax.numpy.inexact) and not np.isfinite(leaf).all():
        last = self.latest.latest_step()
        kept = (f"the last good checkpoint (step {last}) in {self.latest.directory} is kept "
                "untouched" if last is not None else
                f"no checkpoint had been saved yet in {self.latest.directory}")
        raise FloatingPointError(f"training diverged by step {step}: {path} holds NaN or Inf, "
                                 f"so it is not saved; {kept}")

  def wait(self) -> None:
    """Block until every asynchronous save has been committed."""
    with self._save_errors():
      self.latest.wait_until_finished()
      self.best.wait_until_finished()

  def close(self) -> None:
    """Wait for pending saves and release Orbax's threads (safe to call twice)."""
    if self._closed:
      return
    self._closed = True
    try:
      self.wait()
    finally:  # released even when a save failed (wait raises its error)
      for manager in (self.latest, self.best):
        try:
          manager.close()
        except Exception:  # noqa: BLE001 -- that same failed save, raised by wait() above
          pass

  # -- restore -----------------------------------------------------------------------------
  def best_step(self) -> int | None:
    return self.best.latest_step()

  def latest_step(self) -> int | None:
    return self.latest.latest_step()

  def restore_step(self, step: int | None, target: Any, manager: Any = None,
                   resume: bool = False, alternatives: Sequence[tuple[Any, Callable]] = ()
                   ) -> tuple[Any, dict] | None:
    """(state, extra) of `step`, restored into the structure of `target`.

    resume: this step is where training continues (restore_latest): take its best
    value and redo its best/ save if that was lost.
    alternatives: (target, convert) pairs for states saved in another layout that this
    config can still take (an optimizer state with or without its plateau part): the
    step is restored into the one of its layout and `convert` turns it into target's.
    """
    if step is None:
      return None
    ocp = _ocp()
    manager = manager or (self.best if step == self.best_step() and
                          step not in self.latest.all_steps() else self.latest)
    path = manager.directory / str(step)
    saved_layout = self._read_meta(manager, step).get("state_layout")
    candidates = [(jax.tree.map(np.asarray, state_tree(jax.device_get(t))), t, convert)
                  for t, convert in [(target, None), *alternatives]]
    if saved_layout is not None:  # older checkpoints have none: each is tried in turn
      now = state_layout(candidates[0][0])
      candidates = [c for c in candidates if state_layout(c[0]) == saved_layout]
      if not candidates:
        raise self._incompatible(path, manager, step, f"{saved_layout} vs now {now}")
    mismatch = None  # the first candidate's: the layout this config builds
    for abstract, target, convert in candidates:
      try:
        out = manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract), extra=ocp.args.JsonRestore(),
            meta=ocp.args.JsonRestore()))
        break
      except Exception as e:
        if "tree structures do not match" not in str(e):
          raise damaged_error(path, e) from e
        mismatch = mismatch or e
    else:  # older checkpoints (no state_layout) of no layout this config takes
      raise self._incompatible(path, manager, step, str(mismatch)[:200]) from mismatch
    if out["extra"] is None or out["meta"] is None:  # a JSON item whose file is missing
      raise damaged_error(manager.directory / str(step),
                          FileNotFoundError("its 'extra' or 'meta' item is missing"))
    tree = out["state"]
    extra = _from_json(out["extra"])
    state = target.replace(params=tree["params"], batch_stats=tree["batch_stats"],
                           opt_state=tree["opt_state"], step=tree["step"], rng=tree["rng"])
    if convert is not None:
      state = convert(state)
    if resume:
      self._resume_best(step, out)
      self.restored_config = out["meta"].get("config")
    return state, extra

  def _incompatible(self, path: pathlib.Path, manager: Any, step: int,
                    detail: str) -> IncompatibleCheckpointError:
    saved = self._read_meta(manager, step).get("config") or {}
    changed = config_changes(saved, self.meta["config"])
    return IncompatibleCheckpointError(
        f"checkpoint {path} is intact but holds a training state (params and optimizer "
        f"state) of another layout than this config builds ({detail}), so it cannot be "
        "resumed. Settings changed since it was saved: " + ("; ".join(changed) or "none") +
        ". Resume with its settings, use another workdir, or --restart "
        "(train(..., restart=True)) to start over.")

  def _resume_best(self, step: int, restored: dict) -> None:
    """Take the best value of the restored step; redo its best/ save if that was lost."""
    meta = restored["meta"]
    self.best_value = meta.get("best_value")
    saved = (meta.get("config") or {}).get("checkpoint") or {}
    was = (saved.get("best_metric", "accuracy"), config_lib.metric_mode(
        saved.get("best_metric", "accuracy"), saved.get("best_mode", "auto")))
    now = (self.ccfg.best_metric, config_lib.metric_mode(self.ccfg.best_metric,
                                                         self.ccfg.best_mode))
    if was != now:  # the saved best value is of another metric: best/ starts again
      self.best_value = None
      _say(f"flaxnets: checkpoint.best_metric/best_mode changed from {was[0]} ({was[1]}) to "
           f"{now[0]} ({now[1]}): the saved best value is of the old one, so the next epoch "
           f"this run saves replaces best/ (step {self.best_step()}), which the new metric "
           "keeps from then on")
    # A best/ step after the resumed one is of steps this run does again, perhaps with other
    # settings or after a damaged step: load() would have served it beside this run's
    # results. Moved aside (not deleted); a replay that repeats it saves it again.
    newer = self._supersede_best(step)
    if meta.get("best_step") == step and step not in self.best.all_steps():
      ocp = _ocp()
      self.best.save(step, force=True, args=ocp.args.Composite(
          state=ocp.args.StandardSave(restored["state"]),
          extra=ocp.args.JsonSave(restored["extra"]), meta=ocp.args.JsonSave(meta)))
    elif newer and not self.best.all_steps() and self.best_value is not None:
      self._refill_best(step)

  def _supersede_best(self, step: int) -> list[int]:
    """Move best/'s steps after `step` (0: all of them) to superseded/; the steps moved."""
    newer = [s for s in self.best.all_steps() if s > step]
    # Every process lists best/ before process 0 moves anything (one that listed it after
    # the move had skipped the barrier below and left the others waiting in it).
    _sync("flaxnets_best_listed")
    for s in newer:
      dst = self.workdir / "superseded" / f"best-{s}-{time.strftime('%Y%m%d-%H%M%S')}"
      if is_chief():
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(self.best.directory / str(s)), str(dst))
      why = (f"newer than the step resumed from ({step}), so it is of training this run does "
             "again" if step else "of an earlier run, and this one starts from scratch "
             "(checkpoints/ has no step to resume)")
      _say(f"flaxnets: best/{s} is {why}; moved it to {dst}")
    _sync("flaxnets_best_moved")  # every process sees the same best/ before it reloads
    if newer:
      self.best.reload()
    return newer

  def _refill_best(self, step: int) -> None:
    """best/ emptied by the move above (it keeps one step): copy back the newest kept step
    up to `step` that was the best when saved, or start best/ over when none is kept."""
    for s in sorted((x for x in self.latest.all_steps() if x < step), reverse=True):
      try:
        if self._read_meta(self.latest, s).get("best_step") != s:
          continue
      except CheckpointError:
        continue
      if is_chief():
        shutil.copytree(self.latest.directory / str(s), self.best.directory / str(s))
      _sync("flaxnets_best_refilled")
      self.best.reload()
      _say(f"flaxnets: best/ holds step {s} again (copied from checkpoints/), the best "
           f"of the steps up to {step}")
      return
    self.best_value = None
    _say(f"flaxnets: no step best up to {step} is still kept, so best/ starts over: the next "
         "epoch end fills it")

  def restore_latest(self, target: Any, alternatives: Sequence[tuple[Any, Callable]] = ()
                     ) -> tuple[Any, dict] | None:
    """The newest complete step; damaged newer steps are moved aside with a message.
    `alternatives` as in `restore_step`."""
    skipped = []
    for step in sorted(self.latest.all_steps(), reverse=True):
      try:
        restored = self.restore_step(step, target, self.latest, resume=True,
                                     alternatives=alternatives)
      except IncompatibleCheckpointError:
        raise
      except CheckpointError as e:
        skipped.append((step, self._move_aside(step), e))
        continue
      for bad, moved, e in skipped:
        _say(f"flaxnets: checkpoint step {bad} is unusable, resuming from step {step} "
             f"instead; moved it to {moved}. {e}")
      return restored
    for bad, moved, e in skipped:
      _say(f"flaxnets: checkpoint step {bad} is unusable and no older step is complete; "
           f"starting from scratch. Moved it to {moved}. {e}")
    # A best/ left without checkpoints/ (deleted, all damaged, or a kill between the two
    # saves of a first epoch) is not this run's: its step could equal one this run saves,
    # which save() leaves as it is, and load() had served the earlier model.
    self._supersede_best(0)
    return None

  def _move_aside(self, step: int) -> pathlib.Path:
    """Move a damaged step out of checkpoints/, so that the resumed run can save it again."""
    src = self.latest.directory / str(step)
    dst = self.workdir / "damaged" / f"checkpoints-{step}-{time.strftime('%Y%m%d-%H%M%S')}"
    if is_chief():
      dst.parent.mkdir(parents=True, exist_ok=True)
      shutil.move(str(src), str(dst))
    _sync("flaxnets_damaged_moved")
    self.latest.reload()
    return dst


def check_folders(workdir: str | pathlib.Path) -> None:
  """Refuse a workdir, or a checkpoints/ or best/ in it, that exists but is not a folder,
  before any compute: Orbax had logged a traceback and failed at the first save."""
  path = pathlib.Path(workdir).absolute()
  for p in (path, *(path / sub for sub in CHECKPOINT_DIRS)):
    if p.exists() and not p.is_dir():
      what = "workdir" if p == path else f"{p.name}/ in the workdir"
      raise CheckpointError(f"{what} {str(p)!r} is a file: expected a folder (or no such "
                            "path yet); move it away or use another workdir")


@contextlib.contextmanager
def workdir_lock(workdir: str | pathlib.Path | None) -> Iterator[None]:
  """Hold WORKDIR/.lock for one training run; a second run into it raises CheckpointError.

  Two runs writing one workdir would delete each other's in-flight saves and interleave
  their logs. The lock is an flock, so the kernel frees it when the holder dies, even
  by SIGKILL; the file itself stays (removing it would race with a new run).
  """
  try:
    import fcntl
  except ImportError:  # no flock (Windows): unguarded, as before
    fcntl = None
  if workdir is not None:
    check_folders(workdir)
  if workdir is None or fcntl is None:
    yield
    return
  path = pathlib.Path(workdir).absolute()
  f, error = None, None
  try:
    if is_chief():  # process 0 holds the lock for all the run's processes
      try:
        path.mkdir(parents=True, exist_ok=True)
        f = open(path / ".lock", "a+")
        try:
          fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
          f.seek(0)
          error = CheckpointError(
              f"workdir {str(path)!r} is in use by another training run (process "
              f"{f.read().strip() or 'unknown'}); wait for it to finish, or use another workdir")
      except Exception as e:  # noqa: BLE001 -- every process must hear of it (below)
        error = e
    if jax.process_count() > 1:  # the other processes had gone on, and waited for process 0
      from jax.experimental import multihost_utils  # until a timeout
      refused = int(multihost_utils.broadcast_one_to_all(np.int32(error is not None)))
      if refused and error is None:
        error = CheckpointError(f"workdir {str(path)!r}: process 0 of this run could not take "
                                "its lock (its own error says why)")
    if error is not None:
      raise error
    if f is not None:
      f.truncate(0)
      f.write(f"{os.getpid()} on {socket.gethostname()}\n")
      f.flush()
    yield
  finally:
    if f is not None:
      f.close()  # releases the lock


@contextlib.contextmanager
def close_on_error(ckpt: Checkpointer | None, *others: Any) -> Iterator[None]:
  """Close `ckpt` (and `others`, e.g. the metric writer) if the block raises: the saves
  already started are good and finish. A failed save raises again at that close; the
  block's own error is the one that propagates."""
  try:
    yield
  except BaseException:
    for closable in (ckpt, *others):
      if closable is not None:
        try:
          closable.close()
        except Exception:  # noqa: BLE001 -- e.g. the failed save the block raised for
          pass
    raise


def _say(msg: str) -> None:
  if is_chief():
    print(msg, flush=True)


def _from_json(obj: Any) -> Any:
  """Undo _jsonable's strings for non-finite floats (an early-stopping best of inf)."""
  if isinstance(obj, dict):
    return {k: _from_json(v) for k, v in obj.items()}
  if isinstance(obj, list):
    return [_from_json(v) for v in obj]
  if isinstance(obj, str) and obj in _NON_FINITE:
    return float(obj)
  return obj


_NON_FINITE = ("inf", "-inf", "nan")


def _jsonable(obj: Any) -> Any:
  """obj with numpy scalars and arrays as Python numbers and lists (non-finite as str)."""
  if isinstance(obj, dict):
    return {str(k): _jsonable(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [_jsonable(v) for v in obj]
  if isinstance(obj, np.ndarray):
    return _jsonable(obj.tolist())
  if isinstance(obj, (bool, np.bool_)):
    return bool(obj)
  if isinstance(obj, (np.integer,)):
    return int(obj)
  if isinstance(obj, (np.floating, float)):
    v = float(obj)
    return v if np.isfinite(v) else str(v)
  return obj
