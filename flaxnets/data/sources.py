"""Dataset sources: built-in sets, numpy arrays, image folders, text tables, TFDS.

`load_dataset(config.dataset)` returns a flaxnets.data.types.Dataset of numpy splits.
Built-in sets need no network: `digits` (scikit-learn's 1,797 real 8x8 digits, read
from the csv file scikit-learn ships, without importing scikit-learn) and `mnist1d`
(generated locally by the mnist1d package). Splits that a source lacks are carved
from train with a fixed seed, so the split never depends on the training seed.
"""
from __future__ import annotations

import importlib.util
import pathlib
from typing import Any

import jax.numpy as jnp
import numpy as np

from flaxnets.data.text import padded_lengths
from flaxnets.data.types import Dataset, Split, check_float32_range, non_finite_examples
from flaxnets.warn import warn

SPLIT_SEED = 0  # fixed: the train/val/test partition is part of the task, not the run


def _stratified_split(labels: np.ndarray, fractions: tuple[float, ...],
                      seed: int = SPLIT_SEED) -> list[np.ndarray]:
  """Index arrays, one per fraction (the last takes the rest), stratified by label."""
  rng = np.random.default_rng(seed)
  parts: list[list[np.ndarray]] = [[] for _ in fractions]
  for c in np.unique(labels):
    idx = rng.permutation(np.flatnonzero(labels == c))
    start = 0
    for i, f in enumerate(fractions):
      stop = len(idx) if i == len(fractions) - 1 else start + int(round(f * len(idx)))
      parts[i].append(idx[start:stop])
      start = stop
  return [np.sort(np.concatenate(p)) for p in parts]


def _take(split: Split, idx: np.ndarray) -> Split:
  return {k: v[idx] for k, v in split.items()}


def carve_validation(train: Split, fraction: float, seed: int = SPLIT_SEED
                     ) -> tuple[Split, Split | None]:
  """Hold out a seeded, stratified `fraction` of train as validation."""
  if fraction <= 0:
    return train, None
  labels = train["labels"]
  if labels.ndim > 1:  # language model windows: hold out a random subset
    idx = np.random.default_rng(seed).permutation(len(labels))
    n_val = max(1, int(round(fraction * len(labels))))
    return _take(train, np.sort(idx[n_val:])), _take(train, np.sort(idx[:n_val]))
  n = len(labels)
  if n < 2:
    raise ValueError(f"dataset.val_fraction={fraction}: the training split has {n} example(s), "
                     "too few to hold any out for validation; set val_fraction=0")
  # round(fraction * N) examples (at least one, never all), shared out over the classes
  # by largest remainder: rounding each class's share alone gave 1 of 122 examples, or
  # half of a set of pairs, as validation.
  rng = np.random.default_rng(seed)
  classes = np.unique(labels)
  perms = [rng.permutation(np.flatnonzero(labels == c)) for c in classes]
  sizes = np.array([len(p) for p in perms])
  quota = fraction * sizes
  take = np.floor(quota).astype(np.int64)
  n_val = min(n - 1, max(1, int(round(fraction * n))))
  order = np.argsort(-(quota - take), kind="stable")  # ties: the lower class id
  # the extra examples go to classes that keep one for training; only when that leaves
  # validation empty (every class a single example) may a class give its only one
  keeps = [c for c in order if sizes[c] - take[c] >= 2]
  take[keeps[:n_val - int(take.sum())]] += 1
  if not take.sum():
    take[order[:n_val]] += 1
  val_idx = np.sort(np.concatenate([p[:k] for p, k in zip(perms, take)]))
  train_idx = np.sort(np.concatenate([p[k:] for p, k in zip(perms, take)]))
  return _take(train, train_idx), _take(train, val_idx)


def digits() -> Dataset:
  """scikit-learn's digits: 1,797 8x8 images; fixed 70/10/20 split.

  The 0..16 intensities are scaled by 15 to 0..240 (still integers, exact in uint8), so
  the images read like ordinary 8-bit pictures: a PNG someone draws or saves predicts
  correctly. Training standardises per channel, so the scale changes nothing else.
  """
  spec = importlib.util.find_spec("sklearn")
  if spec is None or not spec.submodule_search_locations:
    raise ImportError("the 'digits' dataset needs scikit-learn: pip install scikit-learn")
  path = pathlib.Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz"
  raw = np.loadtxt(path, delimiter=",", dtype=np.float32)       # [1797, 65]
  images = raw[:, :64].reshape(-1, 8, 8, 1) * 15.0               # [N, 8, 8, 1], 0..240
  labels = raw[:, 64].astype(np.int32)
  train_idx, val_idx, test_idx = _stratified_split(labels, (0.7, 0.1, 0.2))
  full = {"inputs": images, "labels": labels}
  return Dataset(train=_take(full, train_idx), val=_take(full, val_idx),
                 test=_take(full, test_idx), num_classes=10,
                 label_names=[str(i) for i in range(10)], input_kind="image", name="digits")


def mnist1d(val_fraction: float = 0.1) -> Dataset:
  """MNIST-1D (Greydanus 2020), generated locally: 4,000 train / 1,000 test, length 40."""
  from mnist1d.data import get_dataset_args, make_dataset
  data = make_dataset(get_dataset_args())
  train = {"inputs": np.asarray(data["x"], np.float32)[..., None],   # [4000, 40, 1]
           "labels": np.asarray(data["y"], np.int32)}
  test = {"inputs": np.asarray(data["x_test"], np.float32)[..., None],
          "labels": np.asarray(data["y_test"], np.int32)}
  train, val = carve_validation(train, val_fraction)
  return Dataset(train=train, val=val, test=test, num_classes=10,
                 label_names=[str(i) for i in range(10)], input_kind="series", name="mnist1d")


def _object_hint(x: np.ndarray) -> str:
  """What an object array of inputs holds instead of numbers (pandas' NA, strings, ...)."""
  numbers = True
  for v in x.ravel():
    if v is None or type(v).__name__ in ("NAType", "NaTType") or (
        isinstance(v, float) and v != v):
      return "; it holds missing values (None, NaN or pandas.NA): fill or drop them"
    if isinstance(v, (str, bytes)):
      return (f"; it holds text such as {v!r}: encode such columns as numbers (or use "
              "config.dataset.name='text_table' for raw text)")
    numbers = numbers and isinstance(v, (int, float, bool, np.number, np.bool_))
  if numbers:  # pandas' .values of mixed int, float and bool columns
    return "; it holds numbers of mixed types: pass x.astype(np.float32)"
  return " of rows of one length (pad token lists with 0)"


def from_arrays(train: tuple, val: tuple | None = None, test: tuple | None = None,
                label_names: list[str] | None = None, val_fraction: float = 0.0) -> Dataset:
  """Numpy arrays passed from Python: each split is (inputs, labels[, seq_lengths])."""
  def to_split(name: str, xy: tuple | None) -> Split | None:
    if xy is None:
      return None
    if not isinstance(xy, (tuple, list)) or len(xy) not in (2, 3):
      got = (f"a {type(xy).__name__} of {len(xy)}" if isinstance(xy, (tuple, list))
             else type(xy).__name__)
      raise ValueError(f"data[{name!r}]: expected a tuple (inputs, labels[, seq_lengths]), "
                       f"got {got}")
    try:
      x = np.asarray(xy[0])
    except ValueError:  # numpy refuses ragged nested lists
      raise ValueError(f"data[{name!r}] inputs: rows of different lengths; expected one "
                       "array [N, ...] (pad token lists with 0)") from None
    y = np.asarray(xy[1])
    if len(x) != len(y):
      raise ValueError(f"data[{name!r}]: {len(x)} inputs but {len(y)} labels")
    if len(x) == 0:
      raise ValueError(f"data[{name!r}]: no examples (inputs of shape {x.shape}); leave the "
                       "split out instead")
    if np.iscomplexobj(x):
      raise ValueError(f"data[{name!r}] inputs of dtype {x.dtype}: expected real numbers "
                       "(pass np.real(x), np.abs(x), or both as channels)")
    if not (jnp.issubdtype(x.dtype, jnp.number) or x.dtype == bool):  # bfloat16 is a number
      hint = ("; for raw text write a CSV and use config.dataset.name='text_table'"
              if x.dtype.kind in "US" else _object_hint(x) if x.dtype == object else "")
      raise ValueError(f"data[{name!r}] inputs of dtype {x.dtype} and shape {x.shape}: "
                       f"expected a numeric array{hint}")
    if not np.issubdtype(y.dtype, np.integer):
      if y.ndim == 2 and y.shape[1] > 1:
        hint = " (for one-hot labels pass labels.argmax(-1))"
      elif (y.dtype.kind in "fb" and y.size and np.isfinite(y).all()
            and (y == np.round(y)).all()):
        hint = " (whole numbers: pass labels.astype(int))"
      elif y.dtype.kind == "f" and np.isnan(y).any():  # pandas' missing labels
        hint = f" ({int(np.isnan(y).sum())} NaN label(s): missing labels? drop those rows)"
      else:
        hint = ""
      raise ValueError(f"data[{name!r}] labels of dtype {y.dtype} and shape {y.shape}: "
                       f"expected integer class ids [N]{hint}")
    if y.ndim == 2 and y.shape[1] == 1:  # [N, 1], as Keras' sparse labels often come
      y = y[:, 0]
    if y.ndim != 1:
      raise ValueError(f"data[{name!r}] labels of shape {y.shape}: expected class ids [N] "
                       "(for one-hot labels pass labels.argmax(-1))")
    bad = non_finite_examples(x)
    if bad:
      raise ValueError(f"data[{name!r}] inputs: {bad} example(s) hold NaN or infinity; "
                       "expected finite values")
    check_float32_range(x, f"data[{name!r}] inputs")
    if y.size and (y.min() < np.iinfo(np.int32).min or y.max() > np.iinfo(np.int32).max):
      raise ValueError(f"data[{name!r}] labels span [{y.min()}, {y.max()}]: expected class ids "
                       "from 0 (int32 would wrap these)")
    split = {"inputs": x, "labels": y.astype(np.int32)}
    if len(xy) == 3:
      lengths = np.asarray(xy[2])
      if lengths.shape != (len(x),) or not np.issubdtype(lengths.dtype, np.integer):
        raise ValueError(f"data[{name!r}] seq_lengths of shape {lengths.shape} and dtype "
                         f"{lengths.dtype}: expected ints [{len(x)}], one per example")
      if x.ndim < 2 or lengths.min() < 1 or lengths.max() > x.shape[1]:
        raise ValueError(f"data[{name!r}] seq_lengths span [{lengths.min()}, {lengths.max()}]:"
                         f" expected lengths in [1, {x.shape[1] if x.ndim >= 2 else '?'}] "
                         "(the time axis of the inputs)")
      split["seq_lengths"] = lengths.astype(np.int32)
    return split

  tr = to_split("train", train)
  va = to_split("val", val)
  if va is None:
    tr, va = carve_validation(tr, val_fraction)
  te = to_split("test", test)
  splits = {n: s for n, s in (("train", tr), ("val", va), ("test", te)) if s is not None}
  lengths_in = [n for n, s in splits.items() if "seq_lengths" in s]
  tokens = np.issubdtype(tr["inputs"].dtype, np.integer) and tr["inputs"].ndim == 2
  if lengths_in and len(lengths_in) < len(splits) and not tokens:  # ids: 0 pads (below)
    # A split without them is read whole, padding included: its metrics (which pick the
    # best checkpoint and stop early) would score other inputs than the model trains on.
    missing = [n for n in splits if n not in lengths_in][0]
    raise ValueError(f"data[{missing!r}] has no seq_lengths but data[{lengths_in[0]!r}] has: "
                     "expected (x, y, seq_lengths) for every split, or for none")
  x = tr["inputs"]
  if np.issubdtype(x.dtype, np.integer) and x.ndim == 2:
    kind = "tokens"
    for split_name, s in (("val", va), ("test", te)):
      if s is not None and not np.issubdtype(s["inputs"].dtype, np.integer):
        raise ValueError(f"data[{split_name!r}] inputs of dtype {s['inputs'].dtype}: expected "
                         f"int token ids like data['train'] ({x.dtype})")
    for split_name, s in (("train", tr), ("val", va), ("test", te)):
      if s is not None and s["inputs"].min() < 0:
        raise ValueError(f"data[{split_name!r}] token ids go down to {s['inputs'].min()}: "
                         "expected ids >= 0 (0 pads)")
      if s is not None and s["inputs"].max() >= np.iinfo(np.int32).max:  # embedding's int32
        raise ValueError(f"data[{split_name!r}] token ids go up to {s['inputs'].max()}: "
                         "expected ids below 2**31 - 1 (ids index an embedding of as many "
                         "rows; map them to 1..vocabulary size)")
    for s in (tr, va, te):  # 0 pads the end, as text sources do; lengths end before it
      if s is not None and "seq_lengths" not in s:
        s["seq_lengths"] = padded_lengths(s["inputs"])
  elif x.ndim == 4:
    kind = "image"
  elif x.ndim in (2, 3):
    kind = "series"
    for s in (tr, va, te):
      if s is not None and s["inputs"].ndim == 2:
        s["inputs"] = s["inputs"][..., None].astype(np.float32)
  else:
    raise ValueError(f"data['train'] inputs of shape {x.shape}: expected images [N, H, W, C], "
                     "series [N, T] or [N, T, F], or int tokens [N, T]")
  if label_names is not None and (
      not isinstance(label_names, (list, tuple, np.ndarray))
      or not all(isinstance(n, (str, int, np.integer, np.str_)) for n in label_names)):
    raise ValueError(f"label_names={label_names!r}: expected a list of names, the name of "
                     "class id i at position i (for a dict {id: name} pass "
                     "[d[i] for i in range(len(d))])")
  labels = np.concatenate([s["labels"] for s in (tr, va, te) if s is not None])
  num_classes = int(labels.max()) + 1 if label_names is None else len(label_names)
  if labels.min() < 0 or labels.max() >= num_classes:
    given = "" if label_names is None else f", one per name of label_names ({num_classes})"
    raise ValueError(f"labels span [{labels.min()}, {labels.max()}]: expected ids in "
                     f"[0, {num_classes}){given}")
  names = [str(n) for n in (range(num_classes) if label_names is None else label_names)]
  empty = np.flatnonzero(np.bincount(labels, minlength=num_classes) == 0)
  if len(empty):
    what = ("class id(s)" if label_names is None else
            f"label_names has {num_classes} names, but class(es)")
    shown = empty[:10].tolist() if label_names is None else [names[i] for i in empty[:10]]
    hint = (" (ids that start at 1: pass labels - 1)"
            if label_names is None and list(empty[:1]) == [0] else "")
    warn(f"labels span [{labels.min()}, {labels.max()}], so there are "
         f"{num_classes} classes, but {what} {shown} have no examples{hint}")
  untrained = sorted(set(labels.tolist()) - set(tr["labels"].tolist()))
  if untrained:  # image folders and text tables refuse it; arrays had scored it silently
    warn(f"class(es) {[names[i] for i in untrained[:10]]} have examples in val or "
         "test but none in train: the model never learns them, and every one of "
         "those examples counts as wrong")
  if len(set(names)) != len(names):
    raise ValueError(f"label_names={names!r}: expected distinct names")
  return Dataset(train=tr, val=va, test=te, num_classes=num_classes, label_names=list(names),
                 input_kind=kind, name="arrays")


def load_dataset(dcfg: Any, data: Any = None, vocab: Any = None) -> Dataset:
  """Build the Dataset that config.dataset describes (`data` feeds the 'arrays' source;
  `vocab`, a Vocabulary, encodes a text dataset in place of config.dataset.vocabulary's)."""
  name = dcfg.name
  if isinstance(data, Dataset):
    return data
  if data is not None and name != "arrays":
    from flaxnets.config import ConfigError
    raise ConfigError(f"config.dataset.name={name!r}: expected 'arrays' when train() is given "
                      "data= (otherwise evaluate and load would read a different dataset)")
  if name == "arrays":
    if not isinstance(data, dict) or "train" not in data:
      raise ValueError("dataset 'arrays' needs train(config, data={'train': (x, y), "
                       "'val': ..., 'test': ...})")
    unknown = sorted(set(data) - {"train", "val", "test", "label_names"})
    if unknown:
      raise ValueError(f"data[{unknown[0]!r}]: unknown key; expected 'train', 'val', 'test' "
                       "or 'label_names'")
    return from_arrays(data["train"], data.get("val"), data.get("test"),
                       data.get("label_names"), dcfg.val_fraction)
  if name == "digits":
    return digits()
  if name == "mnist1d":
    return mnist1d(dcfg.val_fraction)
  from flaxnets.data import local
  if name == "image_folder":
    return local.image_folder_dataset(dcfg)
  if name == "text_table":
    return local.text_table_dataset(dcfg, vocab)
  if name == "text_file":
    return local.text_file_dataset(dcfg, vocab)
  if name.startswith("tfds:"):
    return local.tfds_dataset(dcfg, vocab)
  raise ValueError(f"config.dataset.name={name!r}: unknown dataset")


def adapt(dataset: Dataset, input_kinds: tuple[str, ...]) -> Dataset:
  """Present the data the way the model reads it: images feed RNNs row by row."""
  if dataset.input_kind in input_kinds:
    return dataset
  if dataset.input_kind == "image" and "series" in input_kinds:
    def rows(split):
      if split is None:
        return None
      x = split["inputs"]
      return {**split, "inputs": x.reshape(x.shape[0], x.shape[1], -1).astype(np.float32)}
    return Dataset(train=rows(dataset.train), val=rows(dataset.val), test=rows(dataset.test),
                   num_classes=dataset.num_classes, label_names=dataset.label_names,
                   input_kind="series", vocab=dataset.vocab, task=dataset.task,
                   name=dataset.name, image_shape=dataset.input_shape)
  hint = ""
  shape = dataset.input_shape
  if dataset.name != "arrays":  # the hints below say how to pass numpy arrays
    pass
  elif dataset.input_kind == "series" and "image" in input_kinds and shape[-1] > 1:
    hint = f"; for grayscale images pass them with a channel axis, x[..., None] ({shape + (1,)})"
  elif dataset.input_kind == "tokens" and "tokens" not in input_kinds:
    hint = ("; int [N, T] arrays are read as token ids: pass numbers as floats, "
            "x.astype(np.float32)" + (" and images as [N, H, W, C]" if "image" in input_kinds
                                      else ""))
  raise ValueError(f"dataset {dataset.name!r} gives {dataset.input_kind} inputs of shape "
                   f"{shape} per example; the model reads {'/'.join(input_kinds)}{hint}")
