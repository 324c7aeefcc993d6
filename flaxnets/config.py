"""Config schema, defaults and validation.

`get_config()` is the default job (a CNN on the built-in digits). Every task config
in experiments/configs/ starts from it and overrides fields. `validate(config)` runs
before any compute: unknown keys, wrong types and out-of-range values raise one
ConfigError naming the key, the value and what is allowed.
"""
from __future__ import annotations

import collections.abc
import dataclasses
import math
import numbers
import re
import types
import typing
from typing import Any

import ml_collections
import numpy as np

DATASETS = ("digits", "mnist1d", "arrays", "image_folder", "text_table", "text_file")
_PATH_DATASETS = ("image_folder", "text_table", "text_file")  # those that read dataset.path
OPTIMIZERS = ("sgd", "adam", "adamw", "lamb")
SCHEDULES = ("constant", "cosine", "linear")
STRATEGIES = ("auto", "single", "pmap", "mesh")
POOLINGS = ("last", "mean", "max")
# What validation reports each epoch (macro_f1 and top5_accuracy for classification only)
VAL_METRICS = ("loss", "accuracy", "top5_accuracy", "macro_f1")
MODES = ("auto", "min", "max")


class ConfigError(ValueError):
  """A config value that cannot be used; the message names key, value and what is allowed."""


def get_config() -> ml_collections.ConfigDict:
  """Defaults for every key; the default job trains SimpleCNN on digits."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.num_epochs = 10
  c.batch_size = 32               # global, over all devices and processes
  c.grad_accum_steps = 1          # split each batch into this many micro-batches, run one
                                  # after another, their gradients summed: batch_size's
                                  # update with about a k-th of its activation memory (less
                                  # saved on CPU for max-pool models; README)
  c.eval_batch_size = 256
  c.log_every_steps = 50
  c.progress = True               # tqdm bar per epoch (process 0 only)
  c.debug = False                 # chex checks for NaN/Inf gradients and state, every step
                                  # (slower)
  c.tensorboard = True            # TensorBoard event files in WORKDIR/tensorboard

  c.dataset = ml_collections.ConfigDict()
  d = c.dataset
  d.name = "digits"
  d.path = ""                     # image_folder / text_table / text_file: file or folder
  d.train_split = "train"         # tfds split names, or image-folder subfolders / table files
  d.val_split = ""                # "" -> carve val_fraction out of train
  d.test_split = "test"           # "" -> none; the default 'test' may be absent
  d.val_fraction = 0.1            # stratified, round(fraction * N) examples in all
  d.data_dir = ""                 # tfds data_dir
  d.text_column = "sentence"      # text tables, and the text feature of tfds text sets
  d.label_column = "label"        # text tables, and the label feature of any tfds set
  d.image_size = 0                # resize image folders and tfds images to this square
                                  # size; 0 keeps the train split's size (other splits
                                  # are resized to it)
  d.vocab_level = "word"          # "word" | "char"
  d.lowercase = True
  d.split_punctuation = False     # word level: also split punctuation off words (raw text)
  d.min_freq = 1
  d.max_vocab = 0                 # 0: no limit
  d.vocabulary = ""               # "": built from the training split; else a fixed one
                                  # (Keras TextVectorization's vocabulary=): a run's
                                  # workdir (its checkpoint's, e.g. config.init's run), a
                                  # flaxnets vocabulary .json (or an export's .json), or a
                                  # file of one token a line; tokens it lacks are <unk>
  d.max_len = 0                   # tokens per example; 0: longest training example
  d.seq_len = 128                 # language-model window
  d.normalize = True              # per-channel standardisation from training statistics

  c.model = ml_collections.ConfigDict()
  c.model.name = "simple_cnn"     # any other key here is a field of that model

  c.optimizer = ml_collections.ConfigDict()
  o = c.optimizer
  o.name = "adam"
  o.learning_rate = 3e-3
  o.momentum = 0.9
  o.nesterov = False
  o.b1 = 0.9
  o.b2 = 0.999
  o.weight_decay = 0.0            # sgd, adam: L2 added to the gradient (torch's SGD and
                                  # Adam weight_decay); adamw, lamb: decoupled (Keras's
                                  # weight_decay); masked off biases and norm scales
  o.schedule = "cosine"
  o.warmup_epochs = 0.0
  o.end_lr_factor = 0.0           # final lr = learning_rate * end_lr_factor
  o.clip_norm = 0.0               # global-norm clipping; 0: off
  o.label_smoothing = 0.0         # in the training loss; val/test loss stay plain
                                  # cross-entropy (so their curve does not floor at the
                                  # smoothed targets' entropy)
  # Keras's class_weight: each training example's loss is multiplied by its class's
  # weight (the mean over the batch, as Keras takes it; val/test loss stay plain). ""
  # (off), "balanced" (n / (classes * n_c) over the training split, scikit-learn's), a
  # dict {class name or index: weight} (classes left out weigh 1; held as sorted (class,
  # weight) pairs) or one weight per class.
  o.class_weights = ml_collections.FieldReference("", field_type=object)
  # PyTorch's parameter groups (fastai's discriminative learning rates): a sequence of
  # (pattern, factor) pairs; a weight whose path a pattern matches (re.search, the first
  # pattern that does) takes factor x the learning rate (schedule, warmup and plateau cuts
  # included; weight decay scales with it, as in a torch group), e.g. (("^head/", 10.0),)
  o.lr_multipliers = ()
  o.freeze = ""                   # regular expression (re.search) of weight paths that
                                  # are not trained, e.g. "^(?!head/)" (Keras's
                                  # trainable=False: a batch norm whose scale and bias
                                  # match runs on its running statistics, kept as they are)

  c.augment = ml_collections.ConfigDict()
  c.augment.crop_padding = 0      # random crop after padding by this many pixels of the
                                  # training mean colour (0 once standardised); 0: off
  c.augment.flip = False          # random horizontal flip

  c.parallel = ml_collections.ConfigDict()
  c.parallel.strategy = "auto"

  c.checkpoint = ml_collections.ConfigDict()
  k = c.checkpoint
  k.enabled = True                # only when train() is given a workdir
  k.every_steps = 0               # 0: at epoch ends only
  k.max_to_keep = 2
  k.best_metric = "accuracy"      # validation metric that picks the best checkpoint
  k.best_mode = "auto"            # "min" | "max" | "auto": min for loss, max for the others
  k.async_save = True

  c.early_stopping = ml_collections.ConfigDict()
  e = c.early_stopping
  e.patience = 0                  # epochs without improvement; 0: off
  e.min_delta = 0.0
  e.metric = "loss"               # validation metric
  e.mode = "auto"                 # "min" | "max" | "auto": min for loss, max for the others
  e.restore_best = False

  # Keras's ReduceLROnPlateau: when validation `metric` has not improved by min_delta for
  # `patience` epochs, the learning rate (the schedule's, warmup and decay included) is
  # multiplied by `factor`, down to min_scale times the schedule's.
  c.reduce_lr_on_plateau = ml_collections.ConfigDict()
  r = c.reduce_lr_on_plateau
  r.patience = 0                  # epochs without improvement; 0: off
  r.factor = 0.1
  r.min_delta = 1e-4              # an improvement beats the best by more than this
  r.metric = "loss"               # validation metric
  r.mode = "auto"                 # "min" | "max" | "auto": min for loss, max for the others
  r.cooldown = 0                  # epochs after a reduction before counting again
  r.min_scale = 0.0               # the learning rate stays >= min_scale * the schedule's

  # Fine-tuning: start from another run's weights instead of a fresh initialisation.
  c.init = ml_collections.ConfigDict()
  i = c.init
  i.workdir = ""                  # a flaxnets run's workdir whose weights start this run;
                                  # "": a fresh initialisation. A resume ignores it.
  # "best" | "latest" | a step number (1200 or "1200"), as in flaxnets.load
  i.step = ml_collections.FieldReference("best", field_type=object)
  i.skip = ""                     # regular expression (re.search) of weight paths to leave
                                  # at their fresh initialisation, e.g. "head"
  return c


# (key, predicate, what is allowed)
def _positive(v):
  return v > 0 and math.isfinite(v)


def _non_negative(v):
  return v >= 0 and math.isfinite(v)


_RULES: list[tuple[str, Any, str]] = [
    ("seed", lambda v: 0 <= v < 2**32, "an integer in [0, 2**32)"),
    ("num_epochs", lambda v: v >= 1, "an integer >= 1"),
    ("batch_size", lambda v: v >= 1, "an integer >= 1"),
    ("eval_batch_size", lambda v: v >= 1, "an integer >= 1"),
    ("grad_accum_steps", lambda v: v >= 1, "an integer >= 1"),
    ("log_every_steps", lambda v: v >= 1, "an integer >= 1"),
    ("dataset.name", lambda v: v in DATASETS or (v.startswith("tfds:") and len(v) > 5),
     f"one of {DATASETS} or 'tfds:<name>[:<version>]'"),
    ("dataset.val_fraction", lambda v: 0.0 <= v < 1.0, "a fraction in [0, 1)"),
    ("dataset.vocab_level", lambda v: v in ("word", "char"), "'word' or 'char'"),
    ("dataset.min_freq", lambda v: v >= 1, "an integer >= 1"),
    ("dataset.max_vocab", lambda v: v == 0 or v >= 2,
     "0 (no limit) or an integer >= 2 (room for <pad> and <unk>)"),
    ("dataset.max_len", _non_negative, "an integer >= 0 (0: longest example)"),
    ("dataset.seq_len", lambda v: v >= 2, "an integer >= 2"),
    ("dataset.image_size", _non_negative, "an integer >= 0"),
    ("optimizer.name", lambda v: v in OPTIMIZERS, f"one of {OPTIMIZERS}"),
    ("optimizer.learning_rate", _positive, "a finite number > 0"),
    ("optimizer.momentum", lambda v: 0.0 <= v < 1.0, "a number in [0, 1)"),
    ("optimizer.b1", lambda v: 0.0 <= v < 1.0, "a number in [0, 1)"),
    ("optimizer.b2", lambda v: 0.0 <= v < 1.0, "a number in [0, 1)"),
    ("optimizer.weight_decay", _non_negative, "a finite number >= 0"),
    ("optimizer.schedule", lambda v: v in SCHEDULES, f"one of {SCHEDULES}"),
    ("optimizer.warmup_epochs", _non_negative, "a finite number >= 0"),
    ("optimizer.end_lr_factor", lambda v: 0.0 <= v <= 1.0, "a number in [0, 1]"),
    ("optimizer.clip_norm", _non_negative, "a finite number >= 0 (0: off)"),
    ("optimizer.label_smoothing", lambda v: 0.0 <= v < 1.0, "a number in [0, 1)"),
    ("augment.crop_padding", _non_negative, "an integer >= 0"),
    ("parallel.strategy", lambda v: v in STRATEGIES, f"one of {STRATEGIES}"),
    ("checkpoint.every_steps", _non_negative, "an integer >= 0 (0: epoch ends only)"),
    ("checkpoint.max_to_keep", lambda v: v >= 1, "an integer >= 1"),
    ("checkpoint.best_metric", lambda v: v in VAL_METRICS, f"one of {VAL_METRICS}"),
    ("checkpoint.best_mode", lambda v: v in MODES, f"one of {MODES}"),
    ("early_stopping.patience", _non_negative, "an integer >= 0 (0: off)"),
    ("early_stopping.min_delta", _non_negative, "a finite number >= 0"),
    ("early_stopping.metric", lambda v: v in VAL_METRICS, f"one of {VAL_METRICS}"),
    ("early_stopping.mode", lambda v: v in MODES, f"one of {MODES}"),
    ("reduce_lr_on_plateau.patience", _non_negative, "an integer >= 0 (0: off)"),
    ("reduce_lr_on_plateau.factor", lambda v: 0.0 < v < 1.0, "a number in (0, 1)"),
    # optax's reduce_on_plateau needs a tolerance > 0 (Keras's default is this 1e-4)
    ("reduce_lr_on_plateau.min_delta", _positive, "a finite number > 0"),
    ("reduce_lr_on_plateau.metric", lambda v: v in VAL_METRICS, f"one of {VAL_METRICS}"),
    ("reduce_lr_on_plateau.mode", lambda v: v in MODES, f"one of {MODES}"),
    ("reduce_lr_on_plateau.cooldown", _non_negative, "an integer >= 0"),
    ("reduce_lr_on_plateau.min_scale", lambda v: 0.0 <= v <= 1.0, "a number in [0, 1]"),
]

# Model fields constrained wherever a model has them. Every other int field of a model
# (and every int in a sequence field) is a size or count and must be >= 1.
_MODEL_RULES: list[tuple[str, Any, str]] = [
    ("dropout", lambda v: 0.0 <= v < 1.0, "a number in [0, 1)"),
    ("embed_dropout", lambda v: 0.0 <= v < 1.0, "a number in [0, 1)"),
    # Flax's momentum keeps this much of the running average (1 - torch's momentum); 1.0
    # never updates it, so evaluation had normalised with the initial 0 and 1: chance.
    ("bn_momentum", lambda v: 0.0 <= v < 1.0, "a number in [0, 1) (Flax's: 1 - torch's)"),
    ("logit_scale", _positive, "a finite number > 0"),
    ("num_pools", _non_negative, "an integer >= 0"),
    ("num_layers", lambda v: v >= 1, "an integer >= 1"),
    ("hidden_size", lambda v: v >= 1, "an integer >= 1"),
    ("cell", lambda v: v in ("lstm", "gru", "simple"), "one of ('lstm', 'gru', 'simple')"),
    ("dtype", lambda v: v in ("float32", "bfloat16", "float16"),
     "'float32', 'bfloat16' or 'float16'"),
    ("param_dtype", lambda v: v in ("float32", "bfloat16"), "'float32' or 'bfloat16'"),
    ("kernel_sizes", lambda v: len(v) >= 1, "a non-empty sequence of integers >= 1"),
]
_MODEL_RULE_KEYS = {key for key, _, _ in _MODEL_RULES}
# Model fields the trainer sets itself (checked here, before any data is read).
_TRAINER_FIELDS = {"bn_axis_name": "the trainer sets it itself (under parallel.strategy="
                                   "'pmap'); expected it unset"}


# Dataset settings and the datasets that read them (a tfds dataset, when it is a text one).
_TEXT_SOURCES = ("text_table", "text_file", "tfds:<name>")
_SPLIT_SOURCES = ("image_folder", "text_table", "tfds:<name>")
_READERS = [("max_len", ("text_table", "tfds:<name>")), ("seq_len", ("text_file",)),
            *((k, _TEXT_SOURCES) for k in ("vocab_level", "lowercase", "split_punctuation",
                                            "min_freq", "max_vocab", "vocabulary")),
            *((k, _SPLIT_SOURCES) for k in ("train_split", "val_split", "test_split")),
            *((k, ("text_table", "tfds:<name>")) for k in ("text_column", "label_column")),
            ("val_fraction", ("arrays", "mnist1d", "image_folder", "text_table", "text_file",
                              "tfds:<name>"))]
_FIXED_SPLITS = {"digits": "digits' split is fixed (1258 train / 179 val / 360 test)",
                 "mnist1d": "mnist1d's test split is fixed (val_fraction carves val from train)",
                 "arrays": "pass the splits as data={'train': ..., 'val': ..., 'test': ...}",
                 "text_file": "a text_file's last val_fraction is validation, and it has no test"}


def dataset_reads(name: str, key: str) -> bool:
  """Whether dataset `name` reads config.dataset.<key> (validate refuses a changed one that
  it does not; a resume ignores one that it does not, as earlier runs may have set it)."""
  readers = dict(_READERS).get(key)
  return readers is None or name in readers or (name.startswith("tfds:") and
                                                "tfds:<name>" in readers)


def _type_ok(value: Any, default: Any) -> bool:
  if isinstance(default, bool):
    return isinstance(value, bool)
  if isinstance(default, int):
    return isinstance(value, int) and not isinstance(value, bool)
  if isinstance(default, float):
    return isinstance(value, (int, float)) and not isinstance(value, bool)
  if isinstance(default, str):
    return isinstance(value, str)
  return True


def _check_keys(cfg: Any, ref: Any, prefix: str) -> None:
  missing = [k for k in ref.keys() if k not in cfg]
  if missing:  # e.g. a task config built from an empty ConfigDict: had been a KeyError
    raise ConfigError(f"config.{prefix}{missing[0]}: missing; expected every key of "
                      "flaxnets.get_config() (build a config file's get_config() on it and "
                      "change what the task needs)")
  for key in cfg.keys():
    path = f"{prefix}{key}"
    if key not in ref:
      raise ConfigError(f"config.{path}: unknown key (value {cfg[key]!r}); allowed keys "
                        f"under config{'.' + prefix[:-1] if prefix else ''}: {sorted(ref.keys())}")
    value, default = cfg[key], ref[key]
    if isinstance(default, ml_collections.ConfigDict):
      if not isinstance(value, (ml_collections.ConfigDict, dict)):
        raise ConfigError(f"config.{path}={value!r}: expected a ConfigDict of {sorted(default)}")
      if path != "model":
        _check_keys(value, default, path + ".")
    elif not _type_ok(value, default) and path != "optimizer.class_weights":  # (its own check)
      raise ConfigError(f"config.{path}={value!r}: expected {type(default).__name__}, "
                        f"got {type(value).__name__}")


def _model_field_error(key: str, value: Any, hint: Any) -> str | None:
  """What is wrong with config.model.<key>=value for a field annotated `hint`; None if fine."""
  if hint is Any:
    return None
  args = typing.get_args(hint)
  if typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) not in args:
    problems = [_model_field_error(key, value, a) for a in args]  # `int | Sequence[int]`
    if None in problems:
      return None
    kinds = " or ".join("a sequence of int" if typing.get_origin(a) else
                        f"an {a.__name__}" if a is int else f"a {a.__name__}" for a in args)
    # the problem of the branch the value's type is meant for (0 for an int: ">= 1")
    meant = [p for a, p in zip(args, problems) if isinstance(a, type) and
             isinstance(value, a) and not isinstance(value, bool)]
    return f"expected {kinds} ({(meant or problems)[-1]})"
  if type(None) in args:  # `X | None`
    if value is None:
      return None
    rest = [a for a in args if a is not type(None)]
    hint = rest[0] if len(rest) == 1 else Any
    if hint is Any:
      return None
  origin = typing.get_origin(hint)
  if origin in (tuple, list, collections.abc.Sequence):
    if typing.get_args(hint)[:1] != (int,):  # only sequences of sizes are checked
      return None
    if not isinstance(value, (tuple, list)):
      return f"expected a sequence of int, got {type(value).__name__}"
    bad = [v for v in value if not _type_ok(v, 0) or v < 1]
    return f"expected a sequence of integers >= 1 (bad entry {bad[0]!r})" if bad else None
  default = {int: 0, float: 0.0, bool: False, str: ""}.get(hint)
  if default is None:
    return None
  if not _type_ok(value, default):
    return f"expected {hint.__name__}, got {type(value).__name__}"
  if hint is int and key not in _MODEL_RULE_KEYS and value < 1:
    return "expected an integer >= 1"
  return None


def _get(cfg: Any, dotted: str) -> Any:
  for part in dotted.split("."):
    cfg = cfg[part]
  return cfg


def resolved_copy(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """config.copy_and_resolve_references() as a mutable ConfigDict (a FrozenConfigDict's
  too), with optimizer.class_weights in the form the config holds
  (`_class_weights_setting`): a dict there would become a ConfigDict, which takes neither
  numpy keys (np.unique's) nor names with a dot. The caller's config is left as it was:
  the held form stands in the field's slot for the copy only, and the slot gets back the
  very object it held (a FieldReference stays linked; setting it would have cut it)."""
  if isinstance(config, ml_collections.FrozenConfigDict):
    config = config.as_configdict()
  section = config.get("optimizer")
  weights = section.get("class_weights") if isinstance(
      section, ml_collections.ConfigDict) else None
  if weights is None or isinstance(weights, str):
    return config.copy_and_resolve_references()
  held = _class_weights_setting(weights)
  slot = section._fields["class_weights"]  # pylint: disable=protected-access
  section._fields["class_weights"] = held
  try:
    return config.copy_and_resolve_references()
  finally:
    section._fields["class_weights"] = slot


def validate(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Raise ConfigError for the first bad key or value; return the config unchanged but
  for the forms three settings are held in: config.init.step given as a number becomes
  its text ('1200'), optimizer.class_weights floats (a dict as sorted (class, weight)
  pairs), and optimizer.lr_multipliers a tuple of (pattern, float) pairs."""
  step = config.get("init", {}).get("step") if isinstance(config.get("init"), (
      ml_collections.ConfigDict, dict)) else None
  if isinstance(step, int) and not isinstance(step, bool) and step >= 0:
    with config.ignore_type():
      config.init.step = str(step)
  elif step is not None and not isinstance(step, str):
    raise ConfigError(f"config.init.step={step!r}: expected 'best', 'latest' or a step "
                      "number such as 1200")
  if isinstance(config.get("optimizer"), (ml_collections.ConfigDict, dict)) and \
      "class_weights" in config.optimizer:
    weights = _class_weights_setting(config.optimizer.class_weights)
    with config.ignore_type():  # a reference of any type, as get_config()'s: the config
      # returned (result.config) can take a dict, a list or a name again
      config.optimizer.class_weights = ml_collections.FieldReference(weights,
                                                                     field_type=object)
  _check_keys(config, get_config(), "")
  for key, ok, allowed in _RULES:
    value = _get(config, key)
    if not ok(value):
      raise ConfigError(f"config.{key}={value!r}: expected {allowed}")
  from flaxnets.models import registry  # models register themselves on import
  import flaxnets.models  # noqa: F401
  if "name" not in config.model:  # a model section written out whole: had been AttributeError
    raise ConfigError(f"config.model.name: missing; expected one of {sorted(registry.MODELS)}")
  name = config.model.name
  if name not in registry.MODELS:
    raise ConfigError(f"config.model.name={name!r}: expected one of {sorted(registry.MODELS)}")
  fields = registry.model_fields(name)
  for key in config.model.keys():
    if key == "name":
      continue
    if key not in fields or key in _TRAINER_FIELDS:
      allowed = sorted(set(fields) - set(_TRAINER_FIELDS))
      why = _TRAINER_FIELDS[key] if key in fields else f"not a field of model {name!r}"
      raise ConfigError(f"config.model.{key}={config.model[key]!r}: {why}; allowed: {allowed}")
  hints = typing.get_type_hints(registry.MODELS[name])
  for key in config.model.keys():
    if key != "name":
      problem = _model_field_error(key, config.model[key], hints.get(key, Any))
      if problem:
        raise ConfigError(f"config.model.{key}={config.model[key]!r}: {problem} "
                          f"(field of model {name!r})")
  for key, ok, allowed in _MODEL_RULES:
    if key in config.model and not ok(config.model[key]):
      raise ConfigError(f"config.model.{key}={config.model[key]!r}: expected {allowed}")
  # Fields that must agree with each other (a model's __post_init__), before any data. The
  # trainer fills num_classes and vocab_size from the data: stand-ins here. A model with
  # another field that has no default is built as it is later, with the data.
  kwargs = model_kwargs(config)
  required = [k for k, f in fields.items() if k not in kwargs and
              f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
  if set(required) <= {"num_classes", "vocab_size"}:
    try:
      registry.build_model(name, **kwargs, **{k: 2 for k in required})
    except ValueError as e:
      raise ConfigError(f"config.model ({name!r}): {e}") from None
  poolings = getattr(registry.MODELS[name], "poolings", POOLINGS)  # a model's own, or all
  if "pooling" in config.model and config.model.pooling not in poolings:
    raise ConfigError(f"config.model.pooling={config.model.pooling!r}: expected one of "
                      f"{poolings} for model {name!r}")
  d = config.dataset
  if d.path and d.name not in _PATH_DATASETS:
    raise ConfigError(f"config.dataset.path={d.path!r}: only {_PATH_DATASETS} read a path, "
                      f"and config.dataset.name={d.name!r}; set dataset.name (or path='')")
  if d.data_dir and not d.name.startswith("tfds:"):
    raise ConfigError(f"config.dataset.data_dir={d.data_dir!r}: only tfds:<name> datasets "
                      f"read a data_dir, and config.dataset.name={d.name!r}; set "
                      "dataset.name (or data_dir='')")
  if d.image_size and not (d.name == "image_folder" or d.name.startswith("tfds:")):
    raise ConfigError(f"config.dataset.image_size={d.image_size!r}: only image_folder and "
                      f"tfds:<name> datasets resize images, and config.dataset.name="
                      f"{d.name!r}; resize the arrays yourself (or image_size=0)")
  defaults = get_config().dataset
  for key, readers in _READERS:  # a setting the dataset does not read had been ignored unsaid
    if d[key] != defaults[key] and not dataset_reads(d.name, key):
      hint = {("arrays", "max_len"): "truncate or pad the arrays yourself",
              ("text_file", "max_len"): "a text_file's windows are dataset.seq_len tokens",
              ("text_table", "seq_len"): "a text table's texts are cut at dataset.max_len",
              }.get((d.name, key))
      if hint is None:
        hint = (_FIXED_SPLITS[d.name] if key.endswith(("_split", "_fraction")) and
                d.name in _FIXED_SPLITS else "set dataset.name")
      raise ConfigError(f"config.dataset.{key}={d[key]!r}: only {', '.join(readers)} datasets "
                        f"read it, and config.dataset.name={d.name!r}; {hint} (or {key}="
                        f"{defaults[key]!r})")
  for key in ("min_freq", "max_vocab"):
    if d.vocabulary and d[key] != defaults[key]:  # they choose a built vocabulary's tokens
      raise ConfigError(f"config.dataset.{key}={d[key]!r}: it chooses the tokens of a "
                        "vocabulary built from the training split, and config.dataset."
                        f"vocabulary={d.vocabulary!r} gives one; expected {key}="
                        f"{defaults[key]!r} (or vocabulary='')")
  o = config.optimizer
  if o.nesterov and o.name != "sgd":  # had been ignored
    raise ConfigError(f"config.optimizer.nesterov=True: only sgd takes Nesterov momentum, and "
                      f"config.optimizer.name={o.name!r}; set name='sgd' (or nesterov=False)")
  if o.name == "sgd" and o.nesterov and o.momentum == 0:  # optax ran plain SGD; torch refuses
    raise ConfigError("config.optimizer.nesterov=True: Nesterov momentum needs momentum > 0, "
                      "and config.optimizer.momentum=0; set momentum (or nesterov=False)")
  k = config.grad_accum_steps
  if config.batch_size % k:
    lower = config.batch_size // k * k
    raise ConfigError(f"config.batch_size={config.batch_size}: expected a multiple of "
                      f"config.grad_accum_steps={k}, which splits each batch into that many "
                      f"equal micro-batches, e.g. {f'{lower} or ' if lower else ''}{lower + k}")
  _check_init(config.init)
  with config.ignore_type():  # as get_config()'s: result.config takes a step number again
    config.init.step = ml_collections.FieldReference(config.init.step, field_type=object)
  with config.ignore_type():
    o.lr_multipliers = _lr_multipliers_setting(o.lr_multipliers)
  try:
    re.compile(o.freeze)
  except re.error as e:
    raise ConfigError(f"config.optimizer.freeze={o.freeze!r}: not a regular expression ({e}); "
                      "expected a pattern of weight paths such as '^(stem|stage1)/'") from None
  if config.eval_batch_size < 1:
    raise ConfigError(f"config.eval_batch_size={config.eval_batch_size!r}: expected >= 1")
  return config


def _class_weights_setting(value: Any) -> str | tuple:
  """config.optimizer.class_weights checked for its form and put in the one the config
  holds: '' or 'balanced'; a tuple of (class name or index, weight) pairs, sorted, for a
  dict (names stay str and indices int through a checkpoint's JSON, where a dict's keys
  would all become text, and a name may hold a dot, which a ConfigDict key may not); or
  a tuple of weights, one a class. Which classes exist is checked with the data
  (`steps.class_weight_vector`)."""
  key = "config.optimizer.class_weights"
  what = ("expected '' (off), 'balanced', a dict {class name or index: weight} or one "
          "weight per class")
  if isinstance(value, str):
    if value not in ("", "balanced"):
      raise ConfigError(f"{key}={value!r}: {what}")
    return value
  if isinstance(value, ml_collections.ConfigDict):  # a dict set on a config it copied
    value = dict(value._fields)  # (its items() sorts the keys: a str and an int do not)
  shown = value
  if isinstance(value, collections.abc.Mapping) or callable(getattr(value, "items", None)):
    # (a pandas Series by its index); numpy keys too, from np.unique
    pairs = [(k, w) for k, w in value.items()]
  elif isinstance(value, (list, tuple)) and value and all(
      isinstance(p, (list, tuple)) and len(p) == 2 and isinstance(p[0], (str, numbers.Integral))
      for p in value):  # the pairs this function returns (a checkpoint's JSON: lists)
    pairs = [tuple(p) for p in value]
  elif isinstance(value, (list, tuple)) or hasattr(value, "__array__"):
    if isinstance(value, (list, tuple)):
      weights = [_check_weight(shown, w) for w in value]
    else:  # a numpy or jax array: of numbers (not bools, text or complex numbers)
      arr = np.asarray(value)
      if arr.ndim != 1 or arr.dtype.kind not in "iuf":
        raise ConfigError(f"{key}={shown!r}: {what} (an array of {arr.ndim} dimension(s) and "
                          f"dtype {arr.dtype}; expected 1-D numbers)")
      weights = [_check_weight(shown, w) for w in arr.tolist()]
    if not weights:
      raise ConfigError(f"{key}={shown!r}: {what}")
    if not any(weights):
      raise ConfigError(f"{key}={shown!r}: every weight is 0, so nothing would be learned; "
                        "expected some weight > 0")
    return tuple(weights)
  else:
    raise ConfigError(f"{key}={value!r}: {what}, got {type(value).__name__}")
  pairs = [(str(k) if isinstance(k, str) else int(k) if _integer(k) else k, w)
           for k, w in pairs]  # np.str_ and numpy integers as Python's
  kinds = {type(k) for k, _ in pairs}
  if not pairs or not (kinds <= {str} or kinds <= {int}):
    raise ConfigError(f"{key}={shown!r}: {what}; the keys are all class names (str) or all "
                      "class indices (int)")
  seen = [k for k, _ in pairs]
  twice = next((k for k in seen if seen.count(k) > 1), None)
  if twice is not None:  # (a list of pairs, or a pandas Series with a repeated index)
    raise ConfigError(f"{key}={shown!r}: class {twice!r} is given more than one weight; "
                      "expected one weight a class")
  return tuple(sorted((k, _check_weight(shown, w)) for k, w in pairs))


def _check_weight(shown: Any, w: Any) -> float:
  """One class weight as a float: a finite number >= 0 (a 0-d numpy or jax array too)."""
  if hasattr(w, "__array__") and np.ndim(w) == 0 and np.asarray(w).dtype.kind in "iuf":
    w = np.asarray(w).item()
  if isinstance(w, (bool, np.bool_)) or not isinstance(w, numbers.Real) or \
      not _non_negative(w):
    raise ConfigError(f"config.optimizer.class_weights={shown!r}: weight {w!r}: expected a "
                      "finite number >= 0")
  return float(w)


def _lr_multipliers_setting(value: Any) -> tuple[tuple[str, float], ...]:
  """config.optimizer.lr_multipliers as ((pattern, factor), ...): each pattern compiles,
  each factor is a finite number > 0 (0 is config.optimizer.freeze's work)."""
  key = "config.optimizer.lr_multipliers"
  what = ("expected a sequence of (pattern, factor) pairs, such as "
          "((\"^head/\", 10.0), (\"embed\", 0.1))")
  if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
    raise ConfigError(f"{key}={value!r}: {what}")
  pairs = []
  for pair in value:
    if not isinstance(pair, (list, tuple)) or len(pair) != 2 or not isinstance(pair[0], str):
      # ml_collections' flag parser turns a dict ({'^head/': 3.0}) into a tuple of its keys
      hint = ("; a dict given as --config.optimizer.lr_multipliers reaches flaxnets as its "
              "keys alone: give pairs, \"(('^head/', 3.0),)\"" if value and all(
                  isinstance(p, str) for p in value) else "")
      raise ConfigError(f"{key}={value!r}: {pair!r} is not a (pattern, factor) pair; "
                        f"{what}{hint}")
    pattern, factor = pair
    try:
      re.compile(pattern)
    except re.error as e:
      raise ConfigError(f"{key}={value!r}: {pattern!r} is not a regular expression ({e}); "
                        "expected a pattern of weight paths such as '^head/'") from None
    if isinstance(factor, bool) or not isinstance(factor, numbers.Real) or not _positive(factor):
      hint = (" (to hold weights still, use config.optimizer.freeze)" if factor == 0 else "")
      raise ConfigError(f"{key}={value!r}: factor {factor!r} of {pattern!r}: expected a finite "
                        f"number > 0{hint}")
    pairs.append((pattern, float(factor)))
  return tuple(pairs)


def _integer(k: Any) -> bool:
  return isinstance(k, numbers.Integral) and not isinstance(k, bool)


def _check_init(i: ml_collections.ConfigDict) -> None:
  """config.init: a step flaxnets.load takes, a skip pattern that compiles, both with a
  workdir to read."""
  if not (i.step in ("best", "latest") or (i.step.isascii() and i.step.isdigit())):
    raise ConfigError(f"config.init.step={i.step!r}: expected 'best', 'latest' or a step "
                      "number such as 1200")
  try:
    re.compile(i.skip)
  except re.error as e:
    raise ConfigError(f"config.init.skip={i.skip!r}: not a regular expression ({e}); "
                      "expected a pattern of weight paths such as 'head' or "
                      "'^(head|stage3)/'") from None
  if not i.workdir.strip():
    if i.workdir:
      raise ConfigError(f"config.init.workdir={i.workdir!r}: expected a run's folder, or '' "
                        "for a fresh initialisation")
    for key, default in (("skip", ""), ("step", "best")):
      if i[key] != default:
        raise ConfigError(f"config.init.{key}={i[key]!r}: only read with config.init.workdir, "
                          f"which is ''; set init.workdir to the run to start from (or "
                          f"{key}={default!r})")


def metric_mode(metric: str, mode: str) -> str:
  """'min' or 'max' for a validation metric; 'auto' minimises the loss, maximises the rest."""
  if mode != "auto":
    return mode
  return "min" if metric == "loss" else "max"


def model_kwargs(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """config.model without `name`, as plain Python values."""
  return {k: v for k, v in config.model.to_dict().items() if k != "name"}
