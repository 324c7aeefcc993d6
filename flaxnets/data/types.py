"""The in-memory dataset every source returns and every pipeline consumes."""
from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp
import numpy as np

# Splits are dicts of numpy arrays sharing a leading example axis:
#   'inputs'      image [N, H, W, C] (uint8 or float32), series [N, T, F] float32,
#                 or tokens [N, T] int32 (0 = padding)
#   'labels'      [N] int32 class ids, or [N, T] int32 next-token targets for a language model
#   'seq_lengths' [N] int32, valid steps per example (sequence inputs only)
Split = dict[str, np.ndarray]

INPUT_KINDS = ("image", "series", "tokens")


def non_finite_examples(x: np.ndarray) -> int:
  """How many examples (rows of the leading axis) of float inputs hold NaN or infinity."""
  if not jnp.issubdtype(x.dtype, jnp.inexact):  # numpy's floating misses bfloat16 (ml_dtypes)
    return 0
  finite = np.isfinite(x)
  return 0 if finite.all() else int((~finite).reshape(len(x), -1).any(1).sum())


@dataclasses.dataclass
class Dataset:
  train: Split
  val: Split | None
  test: Split | None
  num_classes: int
  label_names: list[str]
  input_kind: str                 # one of INPUT_KINDS
  vocab: Any = None               # flaxnets.data.text.Vocabulary for text, else None
  task: str = "classification"    # or "lm" (labels are next tokens)
  name: str = ""
  image_shape: tuple[int, ...] | None = None  # [H, W, C] of images read as rows (series)

  def __post_init__(self):
    if self.input_kind not in INPUT_KINDS:
      raise ValueError(f"input_kind={self.input_kind!r}: expected one of {INPUT_KINDS}")
    for split_name in ("train", "val", "test"):
      split = getattr(self, split_name)
      if split is None:
        continue
      n = {k: len(v) for k, v in split.items()}
      if len(set(n.values())) != 1:
        raise ValueError(f"dataset {self.name!r} split {split_name!r}: arrays disagree on "
                         f"the number of examples: {n}")
      shape = split["inputs"].shape[1:]
      if shape != self.train["inputs"].shape[1:]:
        raise ValueError(f"dataset {self.name!r} split {split_name!r}: inputs of shape "
                         f"{shape} per example; expected {self.train['inputs'].shape[1:]}, "
                         "as in the train split")
      labels = np.asarray(split["labels"])
      if self.task == "classification" and labels.size and (
          labels.min() < 0 or labels.max() >= self.num_classes):
        bad = labels[(labels < 0) | (labels >= self.num_classes)]
        hint = (f"; a split without labels (marked -1) cannot be scored: leave it out "
                f"(config.dataset.{split_name}_split='')" if split_name != "train" and
                (bad < 0).all() else "")
        raise ValueError(f"dataset {self.name!r} split {split_name!r}: {bad.size} label(s) "
                         f"outside [0, {self.num_classes}) (e.g. {int(bad[0])}){hint}")

  @property
  def vocab_size(self) -> int | None:
    """Token ids an embedding must cover: the vocabulary's size, or 1 + the largest id of
    int token arrays passed without one; None for image and series inputs."""
    if self.input_kind != "tokens":
      return None
    if self.vocab is not None:
      return len(self.vocab)
    return 1 + max(int(s["inputs"].max(initial=0))
                   for s in (self.train, self.val, self.test) if s is not None)

  @property
  def input_shape(self) -> tuple[int, ...]:
    """Shape of one example's inputs, e.g. (8, 8, 1) or (40, 1) or (T,)."""
    return tuple(self.train["inputs"].shape[1:])


def check_float32_range(x: np.ndarray, what: str) -> None:
  """Finite float64 values past float32's range become inf where training computes."""
  if x.dtype.kind == "f" and x.dtype.itemsize > 4 and x.size:
    peak = float(np.abs(x).max())
    if peak > float(np.finfo(np.float32).max):
      raise ValueError(f"{what} hold values up to {peak:g}, beyond float32's range (+-3.4e38) "
                       "in which flaxnets computes; expected smaller values (rescale them, "
                       "e.g. np.log1p or a division)")
