"""Fine-tuning: a run's first weights from another run's checkpoint (`config.init`), and
weights left untrained (`config.optimizer.freeze`).

The source is read as `flaxnets.load` reads it (params and batch-norm statistics, host
arrays, any device count). Each of the new model's arrays takes the source's array of the
same path and shape, cast to the new dtype; `config.init.skip` (a regular expression
searched in the path, 'head/kernel') leaves arrays at their fresh initialisation. Two
axes are matched by name rather than position, since their rows mean something:
an embedding's rows by token when the vocabularies differ (rows of tokens the source never
saw stay fresh), and the head's outputs by class name when the label names differ (a
language model's classes are its tokens). Anything else that does not fit (a path
missing on either side, another shape) is one ConfigError listing it. The optimizer
state, step and input statistics are the new run's own.

Frozen weights (paths matching config.optimizer.freeze) get no gradient (stop_gradient, so
XLA drops their weight-gradient work) and keep their values through the optimizer update
(weight decay and momentum do not move them either), as torch's requires_grad=False; a
batch-norm layer whose scale and bias are frozen runs in inference mode while training,
leaving its statistics as they are, as Keras's trainable=False and timm's freeze do.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import pathlib
import re
from typing import Any, Callable, Iterator, Sequence

import jax
import numpy as np
from flax import traverse_util

from flaxnets.config import ConfigError

_MAX_LISTED = 6  # problems named in one error


@dataclasses.dataclass
class Source:
  """A checkpoint's weights (host arrays, flat by 'path/to/leaf') and what names its axes."""
  path: pathlib.Path
  step: int
  arrays: dict[str, dict[str, np.ndarray]]  # collection -> path -> array
  label_names: list[str]
  tokens: list[str] | None
  model_config: dict[str, Any] = dataclasses.field(default_factory=dict)  # config.model


def _step(step: str) -> str | int:
  return int(step) if step.isdigit() else step


@contextlib.contextmanager
def _named(where: str) -> Iterator[None]:
  """flaxnets.load's errors for a missing folder or step as one ConfigError naming `where`
  (config.init.workdir and step)."""
  try:
    yield
  except (FileNotFoundError, NotADirectoryError, ValueError) as e:
    raise ConfigError(f"{where}: {e}") from None


def agreed(fn: Callable[[], Any], what: str) -> Any:
  """fn() on every process of a run; when it raises on any, it raises on all (its own
  error where it failed, a ConfigError naming the process elsewhere): a process that had
  gone on alone would wait for the others in a collective forever. Outside a
  jax.distributed job it starts nothing: a refused train() leaves initialize() possible."""
  if not jax.distributed.is_initialized() or jax.process_count() == 1:
    return fn()
  from jax.experimental import multihost_utils
  result, error = None, None
  try:
    result = fn()
  except Exception as e:  # noqa: BLE001 -- every process must hear of it (below)
    error = e
  failed = np.asarray(multihost_utils.process_allgather(np.int32(error is not None)))
  if error is not None:
    raise error
  if failed.any():
    raise ConfigError(f"{what}: process {int(np.flatnonzero(failed)[0])} of this run could "
                      "not read it (its own error says why)")
  return result


def check(init: Any, own_workdir: str | None, restart: bool) -> None:
  """Before train() touches anything: config.init names another run's folder, and (unless
  this run will resume from its own checkpoints, which it then does) a step it holds."""
  agreed(lambda: _check(init, own_workdir, restart), f"config.init.workdir={init.workdir!r}")


def _check(init: Any, own_workdir: str | None, restart: bool) -> None:
  from flaxnets.inference import _step_dir
  from flaxnets.training.checkpoint import CHECKPOINT_DIRS, existing_steps
  path = pathlib.Path(init.workdir)
  if path.name.isdigit() and path.parent.name in CHECKPOINT_DIRS:
    raise ConfigError(f"config.init.workdir={init.workdir!r}: a step folder; expected the "
                      f"run's workdir, {str(path.parent.parent)!r}, with "
                      f"config.init.step={path.name!r}")
  if own_workdir is not None and path.resolve() == pathlib.Path(own_workdir).resolve():
    raise ConfigError(f"config.init.workdir={init.workdir!r}: that is this run's own "
                      "workdir; expected another run's (a run resumes from its own "
                      "checkpoints without init)")
  if own_workdir is not None and not restart and pathlib.Path(own_workdir).is_dir() and \
      existing_steps(own_workdir, ("checkpoints",)):
    return  # it resumes (a best/ step alone is set aside), and does not read init
  with _named(f"config.init.workdir={init.workdir!r} (step {init.step!r})"):
    _step_dir(path, _step(init.step))


def read(workdir: str, step: str) -> Source:
  """config.init's checkpoint, or a ConfigError naming config.init.workdir / step.

  In a multi-process run process 0 picks the step ('best' and 'latest' could differ
  between processes while the source run is still saving) and every process reads it."""
  from flaxnets.inference import _step_dir, load
  where = f"config.init.workdir={workdir!r} (step {step!r})"
  if jax.process_count() > 1 and not step.isdigit():
    from jax.experimental import multihost_utils

    picked = None
    if jax.process_index() == 0:
      try:
        with _named(where):
          picked = int(_step_dir(pathlib.Path(workdir), _step(step)).name)
      except Exception as e:  # noqa: BLE001 -- the others must hear of it (below)
        picked = e
    number = int(multihost_utils.broadcast_one_to_all(
        np.int64(picked if isinstance(picked, int) else -1)))
    if isinstance(picked, Exception):
      raise picked
    if number < 0:
      raise ConfigError(f"{where}: process 0 of this run could not read it (its own error "
                        "says why)")
    step = str(number)
  with _named(f"config.init.workdir={workdir!r} (step {step!r})"):
    predictor = load(workdir, _step(step))
  vocab = predictor.meta.get("vocab")
  arrays = {"params": traverse_util.flatten_dict(predictor.params, sep="/")}
  if predictor.batch_stats:
    arrays["batch_stats"] = traverse_util.flatten_dict(predictor.batch_stats, sep="/")
  return Source(path=predictor.path, step=int(predictor.path.name), arrays=arrays,
                label_names=list(predictor.meta["label_names"]),
                tokens=None if vocab is None else list(vocab["tokens"]),
                model_config=dict(predictor.meta["config"]["model"]))


def _named_axis(path: str, tokens: bool) -> int | None:
  """The axis of a leaf whose positions are named (tokens or classes), or None.

  Token embeddings are nn.Embed's 'embedding' [vocab, features] ('front/embed/embedding',
  text_cnn's 'Embed_0/embedding'; no model has a positional one); every model's output
  layer is the Dense 'head' at the top, kernel [features, classes] and bias [classes]."""
  if tokens and (path == "embedding" or path.endswith("/embedding")):
    return 0
  if not tokens and path in ("head/kernel", "head/bias"):
    return -1
  return None


def _remap(fresh: np.ndarray, src: np.ndarray, axis: int, new_names: Sequence[str],
           old_names: Sequence[str]) -> tuple[np.ndarray, int]:
  """fresh with each named position that the source has, by name, taken from src."""
  fresh_axis = np.moveaxis(np.array(fresh), axis, 0)  # a copy: fresh is not changed
  src_axis = np.moveaxis(np.asarray(src), axis, 0)
  where = {name: i for i, name in enumerate(old_names) if i < src_axis.shape[0]}
  pairs = [(j, where[name]) for j, name in enumerate(new_names[:fresh_axis.shape[0]])
           if name in where]
  if pairs:
    to, frm = map(list, zip(*pairs))
    fresh_axis[to] = src_axis[frm].astype(fresh_axis.dtype)
  return np.moveaxis(fresh_axis, 0, axis), len(pairs)


def merge(variables: dict[str, Any], source: Source, skip: str, label_names: Sequence[str],
          tokens: Sequence[str] | None, workdir: str, model_config: dict[str, Any] | None = None
          ) -> tuple[dict[str, Any], list[str]]:
  """`variables` ({'params', 'batch_stats'} of the fresh model) with the source's arrays.

  Returns the new variables (host arrays) and lines describing what was not a plain copy.
  Raises ConfigError naming the paths that neither fit nor are skipped, after the model
  settings (`model_config`, this run's config.model) that differ from the source's.
  """
  pattern = re.compile(skip) if skip else None
  out: dict[str, Any] = {}
  notes: list[str] = []
  problems: list[str] = []
  skipped: list[str] = []
  remapped: dict[str, str] = {}
  copied = total = 0
  for collection in ("params", "batch_stats"):
    fresh = traverse_util.flatten_dict(variables.get(collection) or {}, sep="/")
    old = source.arrays.get(collection, {})
    new: dict[str, np.ndarray] = {}
    for path, leaf in fresh.items():
      total += 1
      leaf = np.asarray(leaf)
      if pattern is not None and pattern.search(path):
        new[path] = leaf
        skipped.append(path)
        continue
      if path not in old:
        problems.append(f"{collection} {path} {leaf.shape}: not in the checkpoint")
        new[path] = leaf
        continue
      src = old[path]
      # Which names the leaf's axis carries: tokens (both runs have a vocabulary) or classes.
      named = None
      if collection == "params":
        if tokens is not None and source.tokens is not None and _named_axis(path, True) == 0:
          named = ("tokens", 0, list(tokens), source.tokens)
        elif _named_axis(path, False) is not None:
          named = ("classes", -1, list(label_names), source.label_names)
      same_names = named is not None and named[2] == named[3]
      if src.shape == leaf.shape and (named is None or same_names):
        new[path] = src.astype(leaf.dtype)
        copied += 1
      elif named is not None and src.ndim == leaf.ndim and all(
          a == b for k, (a, b) in enumerate(zip(src.shape, leaf.shape))
          if k != named[1] % leaf.ndim):
        kind, axis, new_names, old_names = named
        new[path], matched = _remap(leaf, src, axis, new_names, old_names)
        remapped[path] = (f"{matched} of {leaf.shape[axis]} {kind} taken from the "
                          f"checkpoint's by name")
        copied += matched > 0
      else:
        problems.append(f"{collection} {path}: shape {src.shape} in the checkpoint, "
                        f"{leaf.shape} in this model")
        new[path] = leaf
    for path in old:
      if path not in fresh and not (pattern is not None and pattern.search(path)):
        problems.append(f"{collection} {path} {old[path].shape}: in the checkpoint, not in "
                        "this model")
    if fresh:
      out[collection] = traverse_util.unflatten_dict(new, sep="/")
  if pattern is not None and not skipped and not any(
      pattern.search(p) for arrays in source.arrays.values() for p in arrays):
    every = paths(variables.get("params"))
    raise ConfigError(f"config.init.skip={skip!r}: matches no weight of this model or the "
                      f"checkpoint ({', '.join(every[:4])}{', ...' if len(every) > 4 else ''});"
                      " expected a pattern of some of their paths, such as 'head'")
  if problems:
    shown = problems[:_MAX_LISTED] + ([f"... {len(problems) - _MAX_LISTED} more"]
                                      if len(problems) > _MAX_LISTED else [])
    settings = ""
    if model_config is not None and source.model_config:
      from flaxnets.training.checkpoint import config_differences
      names = source.model_config.get("name"), model_config.get("name")
      differ = config_differences({"model": source.model_config}, {"model": model_config})
      if names[0] != names[1]:
        settings = f" (a {names[0]!r} model's, and this one is {names[1]!r})"
      elif differ:
        settings = f" (its settings: {'; '.join(differ)})"
    raise ConfigError(
        f"config.init.workdir={workdir!r}: its checkpoint ({source.path}) does not fit this "
        f"model{settings}; {len(problems)} arrays differ: " + "; ".join(shown) +
        "; expected the same model settings, and config.init.skip (a regular expression of "
        "these paths, e.g. 'head') leaves arrays at their fresh initialisation")
  if skipped:
    notes.append(f"fresh (config.init.skip={skip!r}): {', '.join(skipped)}")
  notes += [f"{path}: {how}" for path, how in remapped.items()]
  notes.insert(0, f"{copied} of {total} arrays from the checkpoint")
  return out, notes


def paths(tree: Any) -> list[str]:
  """'stage1/block0/conv/kernel' for each leaf of a variables collection."""
  return list(traverse_util.flatten_dict(tree or {}, sep="/"))


def frozen_mask(params: Any, pattern: str) -> Any:
  """A tree of params' structure (dict or FrozenDict), True where the leaf's path matches
  `pattern` (re.search)."""
  from flaxnets.training.state import _path_name
  rx = re.compile(pattern)
  return jax.tree_util.tree_map_with_path(
      lambda path, _: bool(pattern) and bool(rx.search(_path_name(path))), params)


def _norm_frozen(rx: re.Pattern, module_path: str) -> bool:
  """A batch-norm layer is frozen when the pattern holds both its scale and its bias (the
  paths they have, whether or not the layer has them)."""
  return bool(rx.search(f"{module_path}/scale")) and bool(rx.search(f"{module_path}/bias"))


def frozen_norms(pattern: str) -> Callable:
  """A flax method interceptor (nn.intercept_methods) that runs each frozen batch-norm
  layer called in training mode in inference mode instead: normalised by its running
  statistics, which it leaves as they are (Keras's trainable=False, timm's freeze).

  Any layer with a `use_running_average` field counts (nn.BatchNorm, and the models' own
  masked one); it is cloned with the field set and applied to its own variables."""
  rx = re.compile(pattern)

  def interceptor(next_fun, args, kwargs, context):
    module = context.module
    if (context.method_name == "__call__" and
        getattr(module, "use_running_average", None) is False and
        _norm_frozen(rx, "/".join(module.path))):
      variables = {c: module.variables[c] for c in ("params", "batch_stats")
                   if c in module.variables}
      return module.clone(parent=None, use_running_average=True).apply(
          variables, *args, **kwargs)
    return next_fun(*args, **kwargs)

  return interceptor


def check_freeze(params: Any, pattern: str, batch_stats: Any = None) -> str:
  """A log line of what config.optimizer.freeze holds still; ConfigError if it matches no
  weight (a mistyped path) or every one (nothing would train)."""
  rx = re.compile(pattern)
  flat = traverse_util.flatten_dict(params, sep="/")
  frozen = [k for k in flat if rx.search(k)]
  if not frozen or len(frozen) == len(flat):
    shown = ", ".join(list(flat)[:4]) + (", ..." if len(flat) > 4 else "")
    raise ConfigError(f"config.optimizer.freeze={pattern!r}: matches "
                      f"{'no' if not frozen else 'every'} weight of this model ({shown}); "
                      f"expected a pattern of some of their paths, so that the rest train")
  size = sum(int(np.size(flat[k])) for k in frozen)
  total = sum(int(np.size(v)) for v in flat.values())
  norms = {p.rsplit("/", 1)[0] for p in paths(batch_stats)}
  held = sum(_norm_frozen(rx, m) for m in norms)
  return (f"frozen (config.optimizer.freeze={pattern!r}): {len(frozen)} of {len(flat)} "
          f"arrays, {size:,} of {total:,} parameters" +
          (f"; {held} of {len(norms)} batch-norm layers run on their running statistics"
           if held else ""))


def lr_multiplier_tree(params: Any, pairs: Sequence[tuple[str, float]]) -> Any:
  """A tree of params' structure holding each weight's learning-rate factor: that of the
  first (pattern, factor) pair whose pattern its path matches (re.search), else 1.0."""
  from flaxnets.training.state import _path_name
  compiled = [(re.compile(p), f) for p, f in pairs]

  def factor(path, _):
    name = _path_name(path)
    return next((f for rx, f in compiled if rx.search(name)), 1.0)

  return jax.tree_util.tree_map_with_path(factor, params)


def check_lr_multipliers(params: Any, pairs: Sequence[tuple[str, float]]) -> str:
  """A log line of the weights each config.optimizer.lr_multipliers pattern takes;
  ConfigError for a pattern that takes none (a mistyped path, or one an earlier pattern
  already took every match of)."""
  flat = traverse_util.flatten_dict(params, sep="/")
  taken: dict[str, int] = {}
  for k in flat:
    for i, (pattern, _) in enumerate(pairs):
      if re.search(pattern, k):
        taken[k] = i
        break
  parts = []
  for i, (pattern, factor) in enumerate(pairs):
    mine = [k for k, j in taken.items() if j == i]
    if not mine:
      shadow = any(re.search(pattern, k) for k in flat)
      shown = ", ".join(list(flat)[:4]) + (", ..." if len(flat) > 4 else "")
      why = ("every weight it matches is taken by an earlier pattern" if shadow else
             f"it matches no weight of this model ({shown})")
      raise ConfigError(f"config.optimizer.lr_multipliers: pattern {pattern!r} (x{factor:g}): "
                        f"{why}; expected a pattern of weight paths that some weight takes")
    size = sum(int(np.size(flat[k])) for k in mine)
    parts.append(f"x{factor:g} for {len(mine)} arrays ({size:,} parameters) matching "
                 f"{pattern!r}")
  rest = len(flat) - len(taken)
  return ("learning-rate multipliers (config.optimizer.lr_multipliers): " + "; ".join(parts) +
          f"; x1 for the other {rest} arrays")


def adam_peak_ratio(step: int, b1: float, b2: float, horizon: int = 5000) -> float:
  """The largest |update| / learning rate of Adam's first `horizon` steps under a steady
  gradient, for a weight whose moments are zero while the shared step count is `step`
  (a fresh Adam's is 1). Bias correction divides by 1 - b^t of the shared count, not of
  the weight's own steps, so the second moment is under-corrected for a while."""
  peak = 0.0
  for k in range(1, horizon):
    t = step + k
    peak = max(peak, ((1 - b1**k) / (1 - b1**t)) / math.sqrt((1 - b2**k) / (1 - b2**t)))
  return peak


def unfreeze_note(params: Any, was: str, optimizer: Any, step: int, workdir: str) -> str | None:
  """A warning for weights a resume unfreezes under an Adam-type optimizer, or None.

  Their moments stayed near zero while frozen, but optax keeps one step count for all
  weights (torch keeps one per parameter; Keras builds a new optimizer at compile), so
  their updates grow past the learning rate (adam_peak_ratio) for hundreds of steps."""
  # lamb rescales each array's update by its trust ratio, which cancels the growth; adam's
  # L2 weight decay (added to the gradient) fills the frozen arrays' moments meanwhile
  if not was or not (optimizer.name == "adamw" or
                     (optimizer.name == "adam" and optimizer.weight_decay == 0)):
    return None
  before = traverse_util.flatten_dict(frozen_mask(params, was), sep="/")
  now = traverse_util.flatten_dict(frozen_mask(params, optimizer.freeze), sep="/")
  unfrozen = [k for k in before if before[k] and not now[k]]
  peak = adam_peak_ratio(step, optimizer.b1, optimizer.b2)
  if not unfrozen or peak < 1.5:
    return None
  return (f"warning: {len(unfrozen)} arrays frozen until this resume (step {step}) start "
          f"with {optimizer.name}'s moments near zero but its step count at {step}: under a "
          f"steady gradient their updates would grow to {peak:.1f}x the learning rate (a fresh "
          f"{optimizer.name}'s stay at 1x); for fresh optimizer state start a new run from "
          f"this one instead, with config.init.workdir={workdir!r}")
