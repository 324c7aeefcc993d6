"""The training loop: `train(config, workdir)` and `evaluate(...)`.

Reads top to bottom: data, model, optimizer, state, restore, compile, epochs (train,
validate, checkpoint, early stop), test once, write results. The host waits on the
device only at logging points, epoch ends and checkpoints.
"""
from __future__ import annotations

import collections
import collections.abc
import dataclasses
import json
import math
import os
import pathlib
import time
from typing import Any, Callable, Iterator, Sequence

import jax
import numpy as np
import ml_collections

from flaxnets import config as config_lib
from flaxnets import metrics as metrics_lib
from flaxnets.data import pipeline, sources
from flaxnets.data.text import PAD_ID, UNK_ID
from flaxnets.data.types import Dataset
from flaxnets.models import registry
from flaxnets.training import finetune, hooks, optim, parallel, steps
from flaxnets.training.checkpoint import close_on_error, existing_steps
from flaxnets.training.state import TrainState, create_state, param_count, summary


@dataclasses.dataclass
class TrainResult:
  """What `train` returns: the final state on the host, history and metrics."""
  state: TrainState
  history: list[dict[str, Any]]
  val_metrics: dict[str, Any] | None
  test_metrics: dict[str, Any] | None
  config: Any
  model: Any
  dataset: Dataset
  stats: dict[str, np.ndarray]
  workdir: str | None
  train_time_s: float
  stopped_early: bool = False  # by config.early_stopping
  interrupted: bool = False  # stopped by a signal: state as reached, nothing evaluated
  stopped_by_callback: bool = False  # a callback returned True (see EpochEnd)


class EpochEnd:
  """What each of `train(..., callbacks=[...])` gets after every epoch, on every process
  (`jax.process_index() == 0` picks one), once the epoch is validated and its checkpoint
  committed: `callback(end)`. A callback that returns True stops training there (Keras's
  `model.stop_training = True`); every callback is still called for that epoch. An
  exception in a callback ends `train` with it (on the other processes of a multi-process
  run, with a RuntimeError naming its process), the epoch's checkpoint kept.

  Attributes:
    epoch: the epoch just finished, from 1.
    step: optimizer steps so far.
    logs: Keras's names: loss, accuracy, learning_rate, examples_per_sec (and
      tokens_per_sec for a language model), and val_loss, val_accuracy (and
      val_macro_f1 for classification) when there is validation.
    model: the Flax module (`model.apply(end.variables(), x, seq_lengths, train=False)`).
  """

  def __init__(self, epoch: int, step: int, logs: dict[str, float], model: Any,
               variables: Callable[[], Any]):
    self.epoch, self.step, self.logs, self.model = epoch, step, logs, model
    self._fetch, self._variables = variables, None

  def variables(self) -> dict[str, Any]:
    """{'params', 'batch_stats'} of the weights this epoch reached, as host numpy copies
    (fetched once). Only during the callbacks: the training state moves on after them."""
    if self._variables is None:
      if self._fetch is None:
        raise RuntimeError(f"EpochEnd.variables() of epoch {self.epoch} was called after "
                           "the callbacks returned; the weights have trained on since. Copy "
                           "them in the callback: weights = end.variables()")
      # np.array: a copy, not a view of device buffers that the next step reuses
      self._variables = jax.tree.map(np.array, self._fetch())
    return self._variables

  def _close(self) -> None:
    self._fetch = None  # it holds the training state: a kept EpochEnd had kept it alive

  def __repr__(self) -> str:
    return f"EpochEnd(epoch={self.epoch}, step={self.step}, logs={self.logs})"


def _stop_answer(answer: Any) -> bool | None:
  """True/False for a callback's answer that is one (a 0-d bool array too), else None."""
  if answer is None:
    return False
  if isinstance(answer, (bool, np.bool_)) or (
      getattr(answer, "shape", None) == () and getattr(answer, "dtype", None) == np.bool_):
    return bool(answer)
  return None


def run_callbacks(callbacks: list[Callable], end: EpochEnd) -> bool:
  """Call each callback with `end`; whether one asked to stop (on any process). Several
  processes agree on that, and on an exception: one raised on another process would
  have left this one waiting in its next collective until JAX aborted both (5 min)."""
  asked, error = False, None
  try:
    for i, cb in enumerate(callbacks):
      answer = cb(end)
      stop = _stop_answer(answer)
      if stop is None:
        raise TypeError(f"callbacks[{i}] ({getattr(cb, '__name__', type(cb).__name__)}) "
                        f"returned {answer!r} after epoch {end.epoch}: expected True (stop "
                        "training), False or None")
      asked = asked or stop
  except BaseException as e:  # noqa: BLE001 -- raised below, once the processes agree
    error = e
  finally:
    end._close()
  if jax.process_count() > 1:  # every process comes here each epoch (`any_callbacks`)
    from jax.experimental import multihost_utils
    interrupted = isinstance(error, Interrupted)  # a callback's own train() was stopped
    try:
      flags = np.asarray(multihost_utils.process_allgather(np.array(
          [asked, error is not None and not interrupted, interrupted], np.int32))).reshape(-1, 3)
    except Exception as gather_error:  # a peer gone: this process's own error comes first
      if error is not None:
        raise error from gather_error
      raise
    failed = np.flatnonzero(flags[:, 1])
    if error is None and failed.size:
      raise RuntimeError(f"a callback raised on process {int(failed[0])} after epoch "
                         f"{end.epoch} (that process's output has its error); every process "
                         "stops")
    if error is None and flags[:, 2].any():  # stop as that process does (loop: Interrupted)
      raise Interrupted(f"a callback's train() was interrupted on process "
                        f"{int(np.flatnonzero(flags[:, 2])[0])}", None)
    asked = bool(flags[:, 0].any())
  if error is not None:
    raise error
  return asked


def check_callbacks(callbacks: Any) -> list[Callable]:
  """`train`'s callbacks as a list, or TypeError naming what is not a callable."""
  if callbacks is None:  # Keras's and Lightning's default
    return []
  if callable(callbacks) or isinstance(callbacks, (str, bytes, dict)) or not isinstance(
      callbacks, collections.abc.Iterable):
    raise TypeError(f"callbacks={callbacks!r}: expected a list of callables, each called as "
                    "callback(end: flaxnets.EpochEnd) after every epoch" +
                    (f"; pass [{getattr(callbacks, '__name__', 'callback')}]"
                     if callable(callbacks) else ""))
  out = list(callbacks)
  for i, cb in enumerate(out):
    if not callable(cb):
      raise TypeError(f"callbacks[{i}]={cb!r}: expected a callable, called as "
                      "callback(end: flaxnets.EpochEnd) after every epoch")
  return out


class Interrupted(SystemExit):
  """A stop signal (SIGTERM, Ctrl-C) ended `train` after a finished step, saved to its
  workdir when it had one. `result` is the TrainResult of the state reached (no val/test
  metrics), so nothing trained is lost without a workdir either:

      try:
        result = flaxnets.train(config)
      except flaxnets.Interrupted as e:
        result = e.result

  (in IPython or Jupyter, after the fact: `sys.last_value.result`). A SystemExit, so a
  script stops with its message and exit status 1.
  """

  def __init__(self, message: str, result: TrainResult | None):
    super().__init__(message)
    self.result = result

  def __reduce__(self):
    # Pickled (a process pool's worker) it keeps its message; the result holds the optimizer,
    # whose closures do not pickle. Without this, unpickling had been a TypeError.
    return (type(self), (self.args[0], None))


class Progress:
  """A tqdm bar per epoch on process 0 (or nothing)."""

  def __init__(self, enabled: bool, total: int, epoch: int, num_epochs: int):
    self.bar = None
    if enabled and hooks.is_chief():
      from tqdm.auto import tqdm
      self.bar = tqdm(total=total, desc=f"epoch {epoch + 1}/{num_epochs}", unit="step",
                      dynamic_ncols=True, leave=True)

  def update(self, n: int = 1, **postfix):
    if self.bar is not None:
      self.bar.update(n)
      if postfix:
        self.bar.set_postfix({k: f"{v:.4g}" for k, v in postfix.items()}, refresh=False)

  def close(self):
    if self.bar is not None:
      self.bar.close()


# How the start line names each input kind: int [N, T] arrays are read as token ids, and
# a user who meant a series of integers reads it there.
INPUT_WORDS = {"image": "images", "series": "series", "tokens": "int token ids"}
STOP_CHECK_STEPS = 10  # several processes agree on a stop signal every this many steps


def log(msg: str) -> None:
  if hooks.is_chief():
    print(msg, flush=True)


def build_model(config: Any, dataset: Dataset, strategy_name: str = "single") -> Any:
  """The registered model with dataset-derived fields filled in."""
  name = config.model.name
  fields = registry.model_fields(name)
  kwargs = config_lib.model_kwargs(config)
  if "num_classes" in fields:
    given = kwargs.setdefault("num_classes", dataset.num_classes)
    if given != dataset.num_classes:
      # A narrower head trains labels past its width against an all-zero target; a wider one
      # predicts classes that have no name, no row in the confusion matrix and no label;
      # None gives feature maps, not class scores.
      raise config_lib.ConfigError(
          f"config.model.num_classes={given!r}: expected {dataset.num_classes}, the "
          f"number of classes in dataset {dataset.name!r} (leave it unset to use that)")
  if kwargs.get("vocab_size") is not None and dataset.input_kind != "tokens":
    # It builds an embedding, which reads int token ids; the model had failed on the floats.
    raise config_lib.ConfigError(
        f"config.model.vocab_size={kwargs['vocab_size']!r}: dataset {dataset.name!r} gives "
        f"{INPUT_WORDS[dataset.input_kind]}, not token ids; expected vocab_size unset (None) "
        "for them")
  needed = dataset.vocab_size
  if "vocab_size" in fields and needed is not None:
    what = (f"the size of dataset {dataset.name!r}'s vocabulary" if dataset.vocab is not None
            else f"1 + the largest token id in dataset {dataset.name!r}")
    given = kwargs.get("vocab_size")
    if given is None:
      kwargs["vocab_size"] = needed
    elif given < needed:
      # Ids past the embedding table would read NaN (jnp.take's fill mode) or clamp.
      raise config_lib.ConfigError(f"config.model.vocab_size={given!r}: expected >= {needed}, "
                                   f"{what} (leave it unset to use that)")
  if "bn_axis_name" in fields and strategy_name == "pmap":
    kwargs["bn_axis_name"] = parallel.AXIS
  return registry.build_model(name, **kwargs)


def restore_best(state: Any, best_epoch: int | None, best_in_memory: Any, history: list,
                 ckpt: Any, strategy: parallel.Strategy, metric: str,
                 alternative: Any = None) -> tuple[Any, bool]:
  """The weights of the epoch early stopping found best by its own metric, and whether
  they were restored.

  From memory when this process ran that epoch, else from its checkpoint when one is
  still kept; otherwise the last epoch's weights stay, with a warning.
  """
  if best_epoch is None:
    return state, False
  what = f"epoch {best_epoch}, the best by validation {metric}"
  if best_in_memory is not None and best_in_memory[0] == best_epoch:
    log(f"restored the weights of {what}")
    return strategy.put_state(best_in_memory[1]), True
  step = next((h["step"] for h in history
               if h["split"] == "train" and h["epoch"] == best_epoch), None)
  if ckpt is not None and step is not None and (
      step in ckpt.latest.all_steps() or step == ckpt.best_step()):
    host = strategy.get_state(state)
    # alternative(host): (target, convert) for a step saved in another layout
    restored = ckpt.restore_step(step, host,
                                 alternatives=[alternative(host)] if alternative else ())
    log(f"restored the weights of {what} (step {step})")
    return strategy.put_state(restored[0]), True
  log(f"flaxnets: warning: the weights of {what} are gone (this run resumed after that "
      "epoch and its checkpoint was pruned; a larger checkpoint.max_to_keep keeps it); "
      "the last epoch's weights stay")
  return state, False


def init_from(state: Any, config: Any, dataset: Dataset) -> tuple[Any, dict[str, Any]]:
  """state with config.init's checkpoint's weights (fine-tuning; optimizer state, step
  and RNG stay the fresh run's), and where they came from (for results.json)."""
  source = finetune.agreed(lambda: finetune.read(config.init.workdir, config.init.step),
                          f"config.init.workdir={config.init.workdir!r}")
  variables, notes = finetune.agreed(lambda: finetune.merge(
      {"params": state.params, "batch_stats": state.batch_stats}, source, config.init.skip,
      dataset.label_names, None if dataset.vocab is None else dataset.vocab.tokens,
      config.init.workdir, config.model.to_dict()),
      f"config.init.workdir={config.init.workdir!r}")
  log(f"initialised from {source.path} (step {source.step}): " + "; ".join(notes))
  return (state.replace(params=variables["params"],
                        batch_stats=variables.get("batch_stats", state.batch_stats)),
          {"path": str(source.path), "step": source.step, "notes": notes})


def saved_metric_mode(saved_config: dict | None, section: str) -> tuple[str, str]:
  """(metric, resolved mode) of config `section` (early_stopping, reduce_lr_on_plateau) as
  a checkpoint saved it; today's defaults for keys an older checkpoint lacks."""
  saved = (saved_config or {}).get(section) or {}
  defaults = config_lib.get_config()[section]
  metric = saved.get("metric", defaults.metric)
  return metric, config_lib.metric_mode(metric, saved.get("mode", defaults.mode))


def warn_ineffective_settings(config: Any, dataset: Dataset, workdir: Any) -> None:
  """Early-stopping, schedule, precision and augmentation settings that would not do what
  they say (or quietly do less), named once at the start."""
  o = config.optimizer
  if o.warmup_epochs >= config.num_epochs:  # make_schedule ends the warmup at the last step
    log(f"flaxnets: warning: config.optimizer.warmup_epochs={o.warmup_epochs!r} is not less "
        f"than num_epochs={config.num_epochs}: the learning rate rises through the whole run "
        f"and reaches optimizer.learning_rate only at its last step, with no "
        f"{o.schedule} phase")
  if config.model.get("param_dtype") == "bfloat16":  # small updates had vanished unsaid
    log("flaxnets: warning: config.model.param_dtype='bfloat16' keeps the weights and the "
        "optimizer state in bfloat16, whose 8-bit mantissa rounds away any update under about "
        "1/256 of a weight (small learning rates then barely train); dtype='bfloat16' with "
        "float32 params is the usual mixed precision")
  if config.model.get("dtype") == "float16":  # gradients under ~6e-8 had flushed to zero
    log("flaxnets: warning: config.model.dtype='float16' computes without loss scaling, so "
        "activation gradients under float16's smallest step (~6e-8) become zero and those over "
        "65504 overflow; dtype='bfloat16' has float32's range and needs no loss scaling")
  if o.end_lr_factor and o.schedule == "constant":
    log(f"flaxnets: warning: config.optimizer.end_lr_factor={o.end_lr_factor!r} has no effect "
        f"with schedule='constant'; it sets where 'cosine' and 'linear' decay to")
  aug = [f"{k}={config.augment[k]!r}" for k in ("flip", "crop_padding") if config.augment[k]]
  if aug and dataset.input_kind != "image":  # they had been dropped without a word
    log(f"flaxnets: warning: config.augment {', '.join(aug)} has no effect: it augments "
        f"images, and model {config.model.name!r} reads dataset {dataset.name!r} as "
        f"{INPUT_WORDS[dataset.input_kind]}")
  rp = config.reduce_lr_on_plateau
  if rp.patience and dataset.val is None:
    log(f"flaxnets: warning: reduce_lr_on_plateau.patience={rp.patience} has no effect: "
        f"dataset {dataset.name!r} has no validation split to watch")
  es, k = config.early_stopping, config.checkpoint
  if not es.patience:
    return
  if dataset.val is None:
    log(f"flaxnets: warning: early_stopping.patience={es.patience} has no effect: dataset "
        f"{dataset.name!r} has no validation split to watch")
    return
  es_by = (es.metric, config_lib.metric_mode(es.metric, es.mode))
  best_by = (k.best_metric, config_lib.metric_mode(k.best_metric, k.best_mode))
  if es.restore_best and workdir is not None and k.enabled and es_by != best_by:
    log(f"flaxnets: warning: early_stopping.restore_best evaluates the epoch best by "
        f"validation {es_by[0]} ({es_by[1]}), but load(workdir) restores the checkpoint best "
        f"by validation {best_by[0]} ({best_by[1]}), checkpoint.best_metric/best_mode; set "
        f"them alike for load() to return the weights the final metrics are of")


def check_task(config: Any, dataset: Dataset, model_cls: type) -> None:
  """The model and the validation metrics must suit the dataset's task."""
  tasks = getattr(model_cls, "tasks", ("classification",))
  if dataset.task not in tasks:
    fits = sorted(n for n, c in registry.MODELS.items()
                  if dataset.task in getattr(c, "tasks", ("classification",)))
    raise config_lib.ConfigError(
        f"config.model.name={config.model.name!r}: a {'/'.join(tasks)} model, but dataset "
        f"{dataset.name!r} is a {dataset.task} task; expected one of {fits}")
  if dataset.task == "classification" and dataset.num_classes < 2:
    # A one-class head scores loss 0 and accuracy 1.0 on anything: nothing is learned.
    raise ValueError(f"dataset {dataset.name!r} has {dataset.num_classes} class "
                     f"({', '.join(map(repr, dataset.label_names))}): expected at least 2 "
                     "classes to classify")
  for key, metric in (("checkpoint.best_metric", config.checkpoint.best_metric),
                      ("early_stopping.metric", config.early_stopping.metric),
                      ("reduce_lr_on_plateau.metric", config.reduce_lr_on_plateau.metric)):
    section = key.split(".")[0]
    if metric not in ("top5_accuracy", "macro_f1") or (
        section != "checkpoint" and not config[section].patience):
      continue  # a metric without patience is never read
    if dataset.task == "lm":  # next-token targets: no top-5 or F1 over classes is computed
      raise config_lib.ConfigError(f"config.{key}={metric!r}: expected 'loss' or "
                                   f"'accuracy' for language-model dataset {dataset.name!r}")
    if metric == "macro_f1":
      continue
    if dataset.num_classes <= 5:  # every class is in the top 5: always 1.0, never improves
      raise config_lib.ConfigError(
          f"config.{key}={metric!r}: dataset {dataset.name!r} has {dataset.num_classes} "
          f"classes, so top-5 accuracy is always 1.0; expected 'loss' or 'accuracy'")


def buckets_for(dataset: Dataset) -> tuple[int, ...] | None:
  if dataset.input_kind != "tokens" or "seq_lengths" not in dataset.train:
    return None
  return pipeline.default_buckets(dataset.train["inputs"].shape[1])


def prefetch(batches: Iterator[dict], strategy: parallel.Strategy, size: int = 2) -> Iterator:
  """Keep `size` batches placed by `strategy.put_batch` (on the devices; numpy for a
  single CPU device) ahead of the step."""
  queue: collections.deque = collections.deque()
  for batch in batches:
    queue.append(strategy.put_batch(batch))
    if len(queue) > size - 1:
      yield queue.popleft()
  while queue:
    yield queue.popleft()


def run_eval(eval_fn, state, split: dict[str, np.ndarray], global_batch: int,
             strategy: parallel.Strategy, buckets, num_classes: int) -> dict[str, Any]:
  """Loss, accuracy (and for classification top-5, confusion matrix, macro and per-class
  F1) over every example of a split."""
  outs = []
  for batch in prefetch(pipeline.eval_batches(split, global_batch, buckets=buckets,
                                              process_index=jax.process_index(),
                                              process_count=jax.process_count()), strategy):
    outs.append(eval_fn(state, batch))
  outs = strategy.to_host(outs)  # one sync for the whole split
  sums = {k: sum(float(np.asarray(strategy.unreplicate(o)[k])) for o in outs)
          for k in ("loss_sum", "correct", "count", "top5_correct") if k in outs[0]}
  result = metrics_lib.summarize(sums)
  if "preds" in outs[0]:  # classification
    preds = np.concatenate([strategy.gather_preds(o["preds"]) for o in outs])[:len(split["labels"])]
    cm = metrics_lib.confusion_matrix(split["labels"], preds, num_classes)
    result["confusion_matrix"] = cm.tolist()
    result.update(metrics_lib.f1_scores(cm))
  return result


def _write_json(path: pathlib.Path, obj: Any) -> None:
  tmp = path.with_suffix(path.suffix + ".tmp")
  tmp.write_text(json.dumps(obj, indent=2))
  tmp.replace(path)


def train(config: Any, workdir: str | None = None, *, data: Any = None,
          restart: bool = False, callbacks: Sequence[Callable] | None = ()) -> TrainResult:
  """Train config's model on config's dataset; resume from workdir's latest checkpoint.

  Args:
    config: an ml_collections.ConfigDict from flaxnets.get_config() (or a task config).
    workdir: where metrics.jsonl, results.json and checkpoints go; None keeps it in memory.
    data: for dataset 'arrays': {'train': (x, y), 'val': ..., 'test': ...}.
    restart: delete workdir's checkpoints and start over (the earlier metrics.jsonl is
      moved aside, as it is whenever a run starts without resuming).
    callbacks: callables, each called as `callback(end)` with an `EpochEnd` after every
      epoch; one that returns True stops training there.
  Returns:
    TrainResult with the final state (host arrays), per-epoch history, val and test metrics.
  Raises:
    ConfigError for a bad config value; CheckpointError when another run holds workdir,
    its checkpoints belong to a different model or dataset, or checkpoint.enabled is
    False while it holds checkpoints (without restart).
  """
  start_time = time.time()

  def checked():
    if not isinstance(config, ml_collections.ConfigDict):
      raise config_lib.ConfigError(
          f"config: expected an ml_collections.ConfigDict (flaxnets.get_config(), or a task "
          f"config file's get_config()), got {type(config).__name__}")
    if workdir is not None and not isinstance(workdir, (str, os.PathLike)):
      raise TypeError(f"workdir={workdir!r}: expected a folder path (str or pathlib.Path) "
                      "or None")
    return config_lib.validate(config_lib.resolved_copy(config)), check_callbacks(callbacks)

  # on every process at once: one that raised alone had left the others waiting
  config, callbacks = finetune.agreed(checked, "the config and arguments of train()")
  if workdir is not None:  # '~/runs/x' had made a folder named '~' in the current one
    workdir = str(pathlib.Path(workdir).expanduser())
  for key in ("path", "data_dir", "vocabulary"):  # checkpoints record where the data is
    if config.dataset[key]:
      config.dataset[key] = str(pathlib.Path(config.dataset[key]).expanduser().absolute())
  from flaxnets.training import distributed
  # a process with other settings had hung the rest
  distributed.check_same_config(config, {"workdir": workdir, "restart": restart})
  if config.init.workdir:
    config.init.workdir = str(pathlib.Path(config.init.workdir).expanduser().absolute())
    finetune.check(config.init, workdir, restart)
  from flaxnets.training.checkpoint import workdir_lock
  with workdir_lock(workdir):
    if workdir is not None and not config.checkpoint.enabled and not config.init.workdir:
      from flaxnets.training.checkpoint import check_disabled
      check_disabled(workdir, restart)  # before anything in workdir is touched
    return _train(config, workdir, data, restart, start_time, callbacks)


def setup(config: Any, data: Any) -> tuple:
  """What a run trains on, and with: (dataset as the model reads it, class weights,
  input statistics, length buckets, strategy, model, training iterator)."""
  # ---- data ------------------------------------------------------------------------
  from flaxnets.training import distributed
  # each process reads its own files: all stop when one cannot, or read other data
  dataset = finetune.agreed(lambda: sources.load_dataset(config.dataset, data),
                            "config.dataset")
  distributed.check_same_data(dataset)
  model_cls = registry.MODELS[config.model.name]
  check_task(config, dataset, model_cls)
  class_weights = steps.class_weight_vector(config.optimizer.class_weights,
                                            dataset.train["labels"], dataset.label_names,
                                            dataset.task)
  dataset = sources.adapt(dataset, getattr(model_cls, "input_kinds", ("image", "series", "tokens")))
  stats = (pipeline.input_stats(dataset.train, dataset.input_kind)
           if config.dataset.normalize else {})
  buckets = buckets_for(dataset)
  # ---- devices and model ------------------------------------------------------------
  strategy = parallel.Strategy(parallel.choose(config.parallel.strategy))
  strategy.check_batch(config.batch_size, micro_batches=config.grad_accum_steps)
  model = build_model(config, dataset, strategy.name)
  train_it = pipeline.TrainIterator(dataset.train, config.batch_size, config.seed,
                                    buckets=buckets, process_index=jax.process_index(),
                                    process_count=jax.process_count())
  return dataset, class_weights, stats, buckets, strategy, model, train_it


def compile_train_step(config: Any, dataset: Dataset, stats: dict, schedule: Callable,
                       strategy: parallel.Strategy, class_weights: Any) -> Callable:
  """config's train step, with the epoch's running metric sums, compiled for strategy."""
  return strategy.compile_train(steps.with_running_sums(steps.make_train_step(
      num_classes=dataset.num_classes, stats=stats, schedule=schedule,
      label_smoothing=config.optimizer.label_smoothing,
      crop_padding=config.augment.crop_padding if dataset.input_kind == "image" else 0,
      flip=config.augment.flip and dataset.input_kind == "image",
      axis_name=strategy.axis_name, debug=config.debug,
      grad_accum_steps=config.grad_accum_steps,
      order_micro_batches=strategy.name != "mesh" or strategy.num_devices == 1,
      freeze=config.optimizer.freeze, class_weights=class_weights,
      lr_multipliers=config.optimizer.lr_multipliers)),
      running_sums=True)


def _train(config: Any, workdir: str | None, data: Any, restart: bool,
           start_time: float, callbacks: list[Callable]) -> TrainResult:
  """train() once the config is validated and the workdir is held."""
  dataset, class_weights, stats, buckets, strategy, model, train_it = setup(config, data)
  eval_batch = -(-config.eval_batch_size // strategy.num_devices) * strategy.num_devices
  steps_per_epoch = train_it.steps_per_epoch
  tx, schedule = optim.make_optimizer(config.optimizer, steps_per_epoch, config.num_epochs,
                                      plateau=config.reduce_lr_on_plateau)
  plateau = optim.Plateau(config.reduce_lr_on_plateau) if (
      config.reduce_lr_on_plateau.patience) else None
  rng = jax.random.PRNGKey(config.seed)
  state = create_state(model, tx, rng, dataset.input_shape, dataset.input_kind)
  log(f"flaxnets: {config.model.name} on {dataset.name} "
      f"({len(dataset.train['labels'])} train / "
      f"{0 if dataset.val is None else len(dataset.val['labels'])} val / "
      f"{0 if dataset.test is None else len(dataset.test['labels'])} test; "
      f"{INPUT_WORDS[dataset.input_kind]} {dataset.input_shape} per example), "
      f"{strategy.num_devices} {jax.default_backend()} device(s), strategy {strategy.name}" +
      (f"; batches of {config.batch_size} in {config.grad_accum_steps} micro-batches of "
       f"{config.batch_size // config.grad_accum_steps}" if config.grad_accum_steps > 1 else ""))
  log(summary(state.params, state.batch_stats))
  if config.dataset.vocabulary and dataset.vocab is not None:
    ids = dataset.train["inputs"]
    unknown = (ids == UNK_ID).sum() / max(1, (ids != PAD_ID).sum())
    log(f"vocabulary: {len(dataset.vocab)} tokens from {config.dataset.vocabulary} "
        f"({dataset.vocab.level} level); {unknown:.2%} of the training tokens are not in it "
        "(<unk>)")
  if class_weights is not None:
    how = config.optimizer.class_weights
    log(f"class weights in the training loss ({how if isinstance(how, str) else 'given'}): " +
        ", ".join(f"{n} {w:.4g}" for n, w in zip(dataset.label_names, class_weights)))
  # Fine-tuning reads its checkpoint before the checkpointer is made (a restart deletes
  # this run's steps there: a source that does not fit must not cost them); a run with
  # steps of its own resumes from them instead, and reads it only when none restores.
  resumable = (workdir is not None and config.checkpoint.enabled and not restart and
               bool(existing_steps(workdir, ("checkpoints",))))
  initialised_from = None  # config.init's checkpoint as read: path, step, what was not copied
  if config.init.workdir and not resumable:
    state, initialised_from = init_from(state, config, dataset)
    if workdir is not None and not config.checkpoint.enabled:  # (train() left it for here)
      from flaxnets.training.checkpoint import check_disabled
      check_disabled(workdir, restart)  # refused, or deleted with restart, after the read
  if config.optimizer.freeze:
    log(finetune.check_freeze(state.params, config.optimizer.freeze, state.batch_stats))
  if config.optimizer.lr_multipliers:
    log(finetune.check_lr_multipliers(state.params, config.optimizer.lr_multipliers))
  warn_ineffective_settings(config, dataset, workdir)

  # ---- checkpoint restore ----------------------------------------------------------
  history: list[dict[str, Any]] = []
  resumed_sums = None  # metric sums of a partly done epoch, from its checkpoint
  resumed_train_time = 0.0  # training seconds before this process (results.json adds them)
  resumed_wall = 0.0  # wall seconds of the processes before this one, up to their checkpoint
  resumed_step = None
  config_changes: list[dict[str, Any]] = []  # settings changed at resumes, with their step
  early = hooks.EarlyStopping(config.early_stopping.patience, config.early_stopping.min_delta,
                              config_lib.metric_mode(config.early_stopping.metric,
                                                     config.early_stopping.mode))
  ckpt = None
  if workdir is not None and config.checkpoint.enabled:
    from flaxnets.training import checkpoint
    ckpt = checkpoint.Checkpointer(workdir, config, dataset, stats, restart=restart)
    # A checkpoint saved with reduce_lr_on_plateau the other way round resumes too.
    dropped_scales: list[float] = []
    restored = ckpt.restore_latest(state, alternatives=[optim.other_plateau_layout(
        state, config.reduce_lr_on_plateau, dropped_scales)])
    if dropped_scales and dropped_scales[0] < 1.0:
      log(f"reduce_lr_on_plateau is off from this resume: the learning rate is the "
          f"schedule's again (the checkpoint's was x{dropped_scales[0]:.4g} of it)")
    if restored is not None:
      state, extra = restored
      train_it.set_state(extra["iterator"])
      history = extra["history"]
      was = saved_metric_mode(ckpt.restored_config, "early_stopping")
      now = (config.early_stopping.metric, early.mode)
      if was == now:
        early.load_state_dict(extra["early_stopping"])
      else:  # its best value is of another metric or direction: count afresh from here
        log(f"early_stopping.metric/mode changed from {was[0]} ({was[1]}) to {now[0]} "
            f"({now[1]}): early stopping counts from this resume on")
      if plateau is not None:
        saved_rp = (ckpt.restored_config or {}).get("reduce_lr_on_plateau") or {}
        was = saved_metric_mode(ckpt.restored_config, "reduce_lr_on_plateau")
        # (switched on at this resume, it starts afresh: other_plateau_layout)
        if saved_rp.get("patience", 0) and was != (plateau.metric, plateau.mode):
          state = plateau.forget_best(state)
          log(f"reduce_lr_on_plateau.metric/mode changed from {was[0]} ({was[1]}) to "
              f"{plateau.metric} ({plateau.mode}): the plateau counts from this resume on "
              f"(the learning rate keeps its reductions)")
        state, before, after = plateau.at_least_min_scale(state)
        if after > before:
          log(f"reduce_lr_on_plateau: min_scale={config.reduce_lr_on_plateau.min_scale:g} "
              f"raises the learning rate to {after:.4g} x the schedule's (it was "
              f"{before:.4g} x)")
      resumed_sums = extra.get("epoch_sums")
      initialised_from = extra.get("initialised_from")  # absent before 2026-11-30
      resumed_train_time = float(extra.get("train_time_s", 0.0))
      resumed_wall = float(extra.get("wall_time_s", 0.0))
      resumed_step = int(state.step)
      log(f"resumed from step {int(state.step)} (epoch {train_it.epoch + 1}, "
          f"batch {extra['iterator']['next_index']}) in {workdir}")
      if train_it.epoch >= config.num_epochs:
        log(f"the checkpoint has trained {train_it.epoch} epoch(s), and config.num_epochs="
            f"{config.num_epochs}: nothing to train, the saved model is evaluated (raise "
            "num_epochs to train more)")
      config_changes = list(extra.get("config_changes", []))
      changed = checkpoint.config_changes(ckpt.restored_config or {}, config.to_dict())
      if changed:
        config_changes.append({"step": resumed_step, "changes": changed})
        log(f"resumed with changed settings, which apply from step {resumed_step} on:\n  " +
            "\n  ".join(changed))
      was_frozen = ((ckpt.restored_config or {}).get("optimizer") or {}).get("freeze") or ""
      note = finetune.unfreeze_note(state.params, was_frozen, config.optimizer, resumed_step,
                                    workdir)
      if note:
        log(note)
  if config.init.workdir and resumed_step is not None:
    log("config.init.workdir is not read: the run resumes from its own checkpoint")
  elif config.init.workdir and resumable:  # its steps were set aside, none restored
    state, initialised_from = init_from(state, config, dataset)
  writer = hooks.MetricWriter(workdir, tensorboard=config.tensorboard, restart=restart,
                              resume_step=resumed_step)

  def run_wall_time():  # seconds since the run began, over all its processes
    return resumed_wall + time.time() - start_time

  # ---- compile ---------------------------------------------------------------------
  train_step = compile_train_step(config, dataset, stats, schedule, strategy, class_weights)
  if config.debug:  # chex's value assertions inside the compiled step, checked every call
    import chex
    train_step = chex.chexify(train_step, async_check=False)
    # chexify registers a wait function for asynchronous checks even when there are none
    # (async_check=False), and at exit chex warns of "statuses not inspected" for any it
    # holds: unregister ours, which has nothing to wait for.
    try:
      from chex._src import asserts_internal
      asserts_internal.CHEXIFY_STORAGE.wait_fns.remove(train_step.wait_checks)
    except (ImportError, AttributeError, ValueError):  # another chex: at worst the warning
      pass
  eval_step = strategy.compile_eval(steps.make_eval_step(
      num_classes=dataset.num_classes, stats=stats, axis_name=strategy.axis_name))
  state = strategy.put_state(state)
  step = int(strategy.get_state(state.step))

  # Prefetching runs the iterator ahead of the steps, so the position saved is the
  # one of the last batch consumed: (epoch, batches consumed in it).
  position = dict(train_it.get_state())

  def save(final_metrics=None, force=False, improved=None):
    if ckpt is not None:
      extra = {"iterator": dict(position), "history": history,
               "early_stopping": early.state_dict(),
               "train_time_s": train_time + (time.time() - epoch_start
                                             if position["next_index"] else 0.0),
               "wall_time_s": run_wall_time(), "config_changes": config_changes,
               "initialised_from": initialised_from}
      if position["next_index"] and sums is not None:  # so the resumed epoch's record is exact
        extra["epoch_sums"] = jax.device_get(strategy.unreplicate(sums))
      ckpt.save(step, strategy.get_state(state), extra, final_metrics, force=force,
                improved=improved)

  def exit_preempted():
    save(force=True)
    writer.close()
    result = TrainResult(
        state=strategy.get_state(state), history=list(history), val_metrics=None,
        test_metrics=None, config=config, model=model, dataset=dataset, stats=stats,
        workdir=workdir, interrupted=True,
        train_time_s=train_time + (time.time() - epoch_start if position["next_index"] else 0.0))
    if ckpt is None:
      why = ("checkpoint.enabled is False" if workdir is not None else "no workdir was given")
      raise Interrupted(f"flaxnets: received {guard.signal_name} at step {step}; stopped "
                        f"without a checkpoint ({why}, so nothing can be resumed); the "
                        "weights reached are this exception's .result (flaxnets.Interrupted; "
                        "in IPython, sys.last_value.result).", result)
    ckpt.close()  # waits for the asynchronous saves to be committed
    raise Interrupted(f"flaxnets: received {guard.signal_name} at step {step}; saved a "
                      f"checkpoint in {workdir}. Run the same command again to resume.", result)

  # ---- epochs ----------------------------------------------------------------------
  val_metrics, val_step = None, None  # the last validation, and the step it is of
  # A run resumed after it had stopped early stays stopped.
  stopped_early = bool(config.early_stopping.patience) and \
      early.bad_epochs >= config.early_stopping.patience
  train_time = resumed_train_time
  sums = None
  stopped_by_callback = False
  best_in_memory = None  # (epoch, host state) of the best early-stopping epoch run here
  multi = jax.process_count() > 1
  # the progress line shows validation's macro F1 where it is chosen or classes weighed
  show_f1 = dataset.task == "classification" and (class_weights is not None or "macro_f1" in (
      config.checkpoint.best_metric, config.early_stopping.metric,
      config.reduce_lr_on_plateau.metric))
  # Each epoch end's callbacks are an agreement between the processes (run_callbacks), so
  # a process passed none (`callbacks=[...] if jax.process_index() == 0 else []`) joins
  # it too: its collectives had not matched the others'.
  any_callbacks = bool(callbacks)
  if multi:
    from jax.experimental import multihost_utils
    any_callbacks = bool(np.asarray(multihost_utils.process_allgather(
        np.int32(any_callbacks))).any())

  def kept() -> str:
    """What a diverged run leaves behind, for its error message."""
    if ckpt is not None and ckpt.latest_step() is not None:
      return f"the last good checkpoint (step {ckpt.latest_step()}) is kept untouched"
    why = ("no checkpoint had been saved yet" if ckpt is not None else
           "nothing was saved (checkpoint.enabled is False)" if workdir is not None else
           "nothing was saved (no workdir)")
    return f"{why}; a lower learning_rate or clip_norm may help"

  def stop_agreed() -> bool:
    """Whether to stop now: every process must leave the step loop at the same step (one
    that stopped alone would leave the others waiting in a collective forever)."""
    if not multi:
      return guard.stop_requested
    from jax.experimental import multihost_utils
    flags = multihost_utils.process_allgather(np.int32(guard.stop_requested))
    if np.asarray(flags).any() and guard.signal_name is None:
      guard.signal_name = "a stop signal (on another process)"
    return bool(np.asarray(flags).any())

  with hooks.PreemptionGuard() as guard, close_on_error(ckpt, writer):
    while train_it.epoch < config.num_epochs and not stopped_early:
      epoch = train_it.epoch
      epoch_start = time.time()
      bar = Progress(config.progress, steps_per_epoch - train_it.get_state()["next_index"],
                     epoch, config.num_epochs)
      # The epoch's train metric sums, added up inside the step; a resumed epoch's carry on.
      host_sums, continued = steps.zero_sums(), resumed_sums is not None
      if continued:
        host_sums = {k: np.asarray(resumed_sums.get(k, 0.0), np.float32) for k in host_sums}
      resumed_sums = None
      sums = strategy.put_state(host_sums)
      # Rates count what this process ran: a resumed epoch's earlier steps are not timed.
      counted_before = float(host_sums["count"])
      epoch_steps = 0
      window_start, window_examples = time.time(), 0
      stopping = False
      for batch in prefetch(train_it.epoch_batches(), strategy):
        try:
          state, m, sums = train_step(state, batch, sums)
        except AssertionError as e:  # config.debug's chex checks
          if not config.debug:
            raise
          # chex's message dumps the whole tree (every leaf of a large model): name the part
          what = next((w for w in steps.DEBUG_PARTS if f"Custom message: {w}." in str(e)), None)
          if what:
            what = f"{what} {'holds' if what.endswith('state') else 'hold'} NaN or Inf"
          raise FloatingPointError(f"config.debug: step {step + 1} (epoch {epoch + 1}): "
                                   f"{what or e}; {kept()}") from None
        step += 1
        position["next_index"] += 1
        epoch_steps += 1
        window_examples += config.batch_size
        if step % config.log_every_steps == 0:
          host = jax.device_get(strategy.unreplicate(m))
          loss = float(host["loss_sum"]) / max(float(host["count"]), 1.0)
          if not math.isfinite(loss):
            raise FloatingPointError(f"loss became {loss} at step {step} (epoch {epoch + 1}); "
                                     f"{kept()}")
          rate = window_examples / max(time.time() - window_start, 1e-9)
          window_start, window_examples = time.time(), 0
          writer.write({"split": "train_step", "epoch": epoch + 1, "step": step, "loss": loss,
                        "accuracy": float(host["correct"]) / max(float(host["count"]), 1.0),
                        "learning_rate": float(host["learning_rate"]),
                        "grad_norm": float(host["grad_norm"]), "examples_per_sec": rate})
          bar.update(0, loss=loss, ex_per_s=rate)
        bar.update(1)
        if (ckpt is not None and config.checkpoint.every_steps and
            step % config.checkpoint.every_steps == 0 and
            position["next_index"] < steps_per_epoch):  # epoch ends save below anyway
          save()
        # On an epoch's last step the epoch is finished first (validation, best, save).
        # Several processes agree every STOP_CHECK_STEPS steps (a host all-gather).
        if (position["next_index"] < steps_per_epoch
            and (not multi or step % STOP_CHECK_STEPS == 0) and stop_agreed()):
          stopping = True
          break
      bar.close()
      if position["next_index"] >= steps_per_epoch:
        position.update(epoch=epoch + 1, next_index=0)
      if stopping and position["next_index"]:
        exit_preempted()
      if not (epoch_steps or continued):  # no step ran in this epoch (nor before a resume)
        continue
      sums = strategy.unreplicate(jax.device_get(sums))
      epoch_time = time.time() - epoch_start
      train_time += epoch_time
      train_metrics = metrics_lib.summarize(sums)
      if not math.isfinite(train_metrics["loss"]):
        raise FloatingPointError(f"loss became {train_metrics['loss']} in epoch {epoch + 1} "
                                 f"(by step {step}); {kept()}")
      record = {"split": "train", "epoch": epoch + 1, "step": step, "loss": train_metrics["loss"],
                "accuracy": train_metrics["accuracy"],
                # examples (sequences for a language model), like the train_step records
                "examples_per_sec": epoch_steps * config.batch_size / epoch_time,
                # the rate of the epoch's last step (reduce_lr_on_plateau's factor included)
                "learning_rate": float(schedule(step - 1)) * (1.0 if plateau is None else float(
                    strategy.unreplicate(optim.lr_scale(state.opt_state)))),
                "wall_time": run_wall_time()}
      if dataset.task == "lm":  # `count` there is the number of target tokens
        record["tokens_per_sec"] = (float(sums["count"]) - counted_before) / epoch_time
      history.append(record)
      writer.write(record)
      reduced = ""
      msg = f"epoch {epoch + 1:3d}: train loss {record['loss']:.4f} acc {record['accuracy']:.4f}"
      if dataset.val is not None:
        val_metrics = run_eval(eval_step, state, dataset.val, eval_batch, strategy, buckets,
                               dataset.num_classes)
        val_step = step
        vrec = {"split": "val", "epoch": epoch + 1, "step": step, "loss": val_metrics["loss"],
                "accuracy": val_metrics["accuracy"], "wall_time": run_wall_time()}
        if "macro_f1" in val_metrics:
          vrec["macro_f1"] = val_metrics["macro_f1"]
        history.append(vrec)
        writer.write(vrec)
        msg += f" | val loss {vrec['loss']:.4f} acc {vrec['accuracy']:.4f}"
        if show_f1:
          msg += f" f1 {vrec['macro_f1']:.4f}"
        if plateau is not None:  # before the save below: the checkpoint holds its state
          state, before, after = plateau.update(state, val_metrics[plateau.metric], strategy)
          if after < before:
            rp = config.reduce_lr_on_plateau
            reduced = (f"reduce_lr_on_plateau: validation {plateau.metric} has not improved by "
                       f"more than {rp.min_delta:g} for {rp.patience} epoch(s): learning rate "
                       f"x{after / before:.4g}, now {after:.4g} x the schedule's")
        if config.early_stopping.patience:
          stop = early.update(val_metrics[config.early_stopping.metric], epoch + 1)
          stopped_early = stop
          if config.early_stopping.restore_best and early.best_epoch == epoch + 1:
            # A host copy, as Keras keeps them (np.array: no view of a donated buffer).
            best_in_memory = (epoch + 1, jax.tree.map(np.array, strategy.get_state(state)))
      rates = f" | {record['examples_per_sec']:.0f} ex/s"
      if "tokens_per_sec" in record:
        rates += f", {record['tokens_per_sec']:.0f} tok/s"
      log(msg + rates)
      if reduced:
        log(reduced)
      # best/ takes early stopping's pick when restore_best watches its metric
      follow = ckpt is not None and ckpt.follows_early_stopping and val_metrics is not None
      save({"val_" + k: v for k, v in (val_metrics or {}).items()
            if isinstance(v, float)} or None,
           improved=early.best_epoch == epoch + 1 if follow else None)
      if any_callbacks:
        logs = {k: record[k] for k in ("loss", "accuracy", "learning_rate", "examples_per_sec",
                                       "tokens_per_sec") if k in record}
        if dataset.val is not None:
          logs.update(val_loss=vrec["loss"], val_accuracy=vrec["accuracy"])
          if "macro_f1" in vrec:
            logs["val_macro_f1"] = vrec["macro_f1"]
        if ckpt is not None:  # the epoch's save committed: a callback may copy it
          ckpt.wait()
        try:
          stopped_by_callback = run_callbacks(callbacks, EpochEnd(
              epoch + 1, step, logs, model, lambda: strategy.get_state(
                  {"params": state.params, "batch_stats": state.batch_stats})))
        except Interrupted as inner:  # a callback's own train() got the signal (here or on
          # another process): stop too, every process through its checkpointed exit
          guard.signal_name = guard.signal_name or "a stop signal (in a callback's train)"
          try:
            exit_preempted()
          except Interrupted as outer:
            raise outer from inner
        # stopping after the last epoch stops nothing
        stopped_by_callback = stopped_by_callback and position["epoch"] < config.num_epochs
      if stop_agreed():
        exit_preempted()
      if stopped_early:
        log(f"early stopping: no improvement in validation {config.early_stopping.metric} "
            f"for {config.early_stopping.patience} epochs (best epoch {early.best_epoch})")
        break
      if stopped_by_callback:
        log(f"stopped by a callback after epoch {epoch + 1}")
        break

  # ---- final evaluation ----------------------------------------------------------------
  if ckpt is not None:
    with close_on_error(ckpt, writer):  # the last epoch's save may have failed
      ckpt.wait()
  evaluated = f"final (step {step})"  # the weights the val/test metrics below are of
  if stopped_early and config.early_stopping.restore_best:
    state, restored = restore_best(
        state, early.best_epoch, best_in_memory, history, ckpt, strategy,
        config.early_stopping.metric,
        lambda host: optim.other_plateau_layout(host, config.reduce_lr_on_plateau))
    if restored:
      evaluated = f"epoch {early.best_epoch} (early_stopping.restore_best)"
      val_step = None
  if dataset.val is not None and val_step != step:  # else the last epoch's pass is of these
    val_metrics = run_eval(eval_step, state, dataset.val, eval_batch, strategy, buckets,
                           dataset.num_classes)
  test_metrics = None
  if dataset.test is not None:
    test_metrics = run_eval(eval_step, state, dataset.test, eval_batch, strategy, buckets,
                            dataset.num_classes)
  host_state = strategy.get_state(state)
  wall = run_wall_time()  # over every process of the run, like train_time
  counted = "tokens" if dataset.task == "lm" else "examples"  # what `count` counts
  rows = [(name, m) for name, m in (("val", val_metrics), ("test", test_metrics)) if m]
  f1 = show_f1 and all("macro_f1" in m for _, m in rows)
  table = [""] + ([f"{'split':<6} {'loss':>8} {'accuracy':>9}" + (f" {'macro F1':>9}" if f1
                                                                  else "") + f" {counted:>9}"]
                  if rows else [])
  for name, m in rows:  # no val and no test split: no header over nothing
    table.append(f"{name:<6} {m['loss']:>8.4f} {m['accuracy']:>9.4f}" +
                 (f" {m['macro_f1']:>9.4f}" if f1 else "") + f" {m['count']:>9d}")
  table.append(f"params {param_count(host_state.params):,}; training {train_time:.1f} s; "
               f"total {wall:.1f} s")
  log("\n".join(table))
  if workdir is not None and hooks.is_chief():
    import flaxnets
    _write_json(pathlib.Path(workdir) / "results.json", {
        "config": config.to_dict(), "val": val_metrics, "test": test_metrics,
        "train_time_s": train_time, "wall_time_s": run_wall_time(), "steps": step,
        "stopped_early": stopped_early, "stopped_by_callback": stopped_by_callback,
        "config_changes": config_changes, "initialised_from": initialised_from,
        "evaluated_weights": evaluated,
        "devices": [str(d) for d in strategy.devices],
        "device_kind": jax.devices()[0].device_kind, "strategy": strategy.name,
        "process_count": jax.process_count(), "flaxnets_version": flaxnets.__version__,
        "label_names": list(dataset.label_names),
        "class_weights": None if class_weights is None else dict(
            zip(dataset.label_names, map(float, class_weights)))})
  if ckpt is not None:
    ckpt.close()
  writer.close()
  return TrainResult(state=host_state, history=history, val_metrics=val_metrics,
                     test_metrics=test_metrics, config=config, model=model, dataset=dataset,
                     stats=stats, workdir=workdir, train_time_s=train_time,
                     stopped_early=stopped_early, stopped_by_callback=stopped_by_callback)


def evaluate(result: TrainResult, split: str = "test") -> dict[str, Any]:
  """Metrics of a trained model on one split ('train', 'val' or 'test') of its dataset."""
  if not isinstance(result, TrainResult):
    hint = ("call its own .evaluate(split)" if hasattr(result, "evaluate") and
            hasattr(result, "predict") else "for a workdir use flaxnets.load(workdir)")
    raise TypeError(f"result: expected the TrainResult that flaxnets.train returns, got "
                    f"{type(result).__name__} ({hint})")
  return evaluate_with(result, split, owner=result)


def evaluate_with(result: TrainResult, split: str, owner: Any) -> dict[str, Any]:
  """`evaluate` with its compiled step kept on `owner` (the result, or the Predictor that
  made it): evaluating another split, or again, compiles nothing new for the same shapes."""
  data = getattr(result.dataset, split, None) if isinstance(split, str) else None
  if split not in ("train", "val", "test") or data is None:
    have = [s for s in ("train", "val", "test") if getattr(result.dataset, s) is not None]
    raise ValueError(f"split={split!r}: expected one of the dataset's splits {have}")
  strategy = parallel.Strategy("single")
  # The statistics are constants of the compiled step: keyed by their values, so a dict
  # changed in place compiles anew.
  key = (result.dataset.num_classes, tuple(
      (k, np.asarray(v).dtype.str, np.shape(v), np.asarray(v).tobytes())
      for k, v in sorted(result.stats.items())))
  cached = getattr(owner, "_compiled_eval", None)
  if cached is None or cached[0] != key:
    cached = (key, strategy.compile_eval(steps.make_eval_step(
        num_classes=key[0], stats={k: np.array(v) for k, v in result.stats.items()})))
    owner._compiled_eval = cached
  state = strategy.put_state(result.state)
  return run_eval(cached[1], state, data, result.config.eval_batch_size, strategy,
                  buckets_for(result.dataset), result.dataset.num_classes)
