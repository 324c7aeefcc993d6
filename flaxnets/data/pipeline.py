"""Host input pipeline: seeded shuffling on Grain, per-process sharding, padded evaluation.

Each epoch draws one seeded numpy permutation of the example indices; a Grain
`MapDataset` over the epoch's batch numbers slices it (Grain holds the iterator and
its resumable state), and each batch then gathers its rows from the in-memory arrays
in one numpy fancy-index per array: no per-example Python work anywhere. (Grain's own
`MapDataset.shuffle().batch()` visits every index in Python: ~400 ms at each start of
a CIFAR-sized epoch and ~2 ms per batch of 512. Here the host iterator, gathers
included, yields ~1,000,000 CIFAR images/s: experiments/benchmarks/pipeline_throughput.py.)
Every process computes the same global batch of indices and keeps its own slice, so
the global batch is identical for any number of processes. Token batches are cut to
the smallest bucket length that holds their longest sequence: jit then compiles once
per bucket, not once per batch.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np

from flaxnets.data.text import bucket_length, default_buckets  # noqa: F401
from flaxnets.data.types import Split


def input_stats(split: Split, input_kind: str) -> dict[str, np.ndarray]:
  """Per-channel mean and std of the training inputs (images and series); of a series'
  real steps only when it has seq_lengths (the padding had counted as zeros). A channel
  that is constant in training gets std 1."""
  if input_kind == "tokens":
    return {}
  x = split["inputs"]
  lengths = split.get("seq_lengths") if x.ndim >= 3 else None
  axes = tuple(range(x.ndim - 1))
  mean = np.zeros(x.shape[-1], np.float64)
  sq = np.zeros(x.shape[-1], np.float64)
  n = 0
  for start in range(0, len(x), 4096):  # chunked: CIFAR in float64 at once is 1.2 GB
    chunk = x[start:start + 4096].astype(np.float64)
    if lengths is not None:
      real = np.arange(x.shape[1])[None, :] < lengths[start:start + 4096, None]
      chunk = chunk * real.reshape(real.shape + (1,) * (x.ndim - 2))
      n += int(real.sum()) * int(np.prod(x.shape[2:-1], dtype=np.int64))
    else:
      n += chunk.size // x.shape[-1]
    mean += chunk.sum(axis=axes)
    sq += (chunk ** 2).sum(axis=axes)
  mean /= max(n, 1)
  std = np.sqrt(np.maximum(sq / max(n, 1) - mean ** 2, 0.0))
  # A channel constant in training (all-zero padding channels, a blank image set) is
  # centred, not scaled, as scikit-learn's StandardScaler does: its std had been clamped
  # to 1e-6, which multiplied any other value met later by a million.
  # (float64 rounding leaves a constant c a std near 1.5e-8 |c|; 0 exactly when c is 0).
  constant = std <= 1e-7 * np.abs(mean)
  std = np.where(constant, 1.0, np.maximum(std, 1e-6))
  return {"mean": mean.astype(np.float32), "std": std.astype(np.float32)}


def _gather(split: Split, idx: np.ndarray, buckets: tuple[int, ...] | None
            ) -> dict[str, np.ndarray]:
  batch = {k: v[idx] for k, v in split.items()}
  if buckets and "seq_lengths" in batch:
    length = bucket_length(int(batch["seq_lengths"].max(initial=1)), buckets)
    batch["inputs"] = batch["inputs"][:, :length]
    if batch["labels"].ndim == 2:
      batch["labels"] = batch["labels"][:, :length]
  return batch


def _local_slice(global_batch: int, process_index: int, process_count: int) -> slice:
  local = global_batch // process_count
  return slice(process_index * local, (process_index + 1) * local)


class TrainIterator:
  """Epochs of shuffled, full (drop-remainder) global batches; this process's slice.

  State is {'epoch', 'next_index'}: restoring it continues the same batch sequence.
  """

  def __init__(self, split: Split, global_batch: int, seed: int, *,
               buckets: tuple[int, ...] | None = None, process_index: int = 0,
               process_count: int = 1):
    n = len(split["labels"])
    if global_batch > n:
      raise ValueError(f"batch_size={global_batch} is larger than the {n} training examples")
    if global_batch % process_count:
      raise ValueError(f"batch_size={global_batch} does not divide over {process_count} processes")
    self.split, self.global_batch, self.seed = split, global_batch, seed
    self.buckets = buckets
    self.steps_per_epoch = n // global_batch
    self._slice = _local_slice(global_batch, process_index, process_count)
    self.epoch, self._it = 0, None
    self._start_epoch(0, 0)

  def _start_epoch(self, epoch: int, next_index: int) -> None:
    import grain
    n = len(self.split["labels"])
    perm = np.random.default_rng([self.seed, epoch]).permutation(n)
    b = self.global_batch
    ds = grain.MapDataset.range(self.steps_per_epoch).map(lambda i: perm[i * b:(i + 1) * b])
    self.epoch = epoch
    # No reader threads: a map that slices an index array costs less than the thread pool
    # Grain starts each epoch by default (57-89 us against 17 us a batch, one core).
    self._it = iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)))
    if next_index:
      self._it.set_state({"next_index": next_index})
    self._next_index = next_index

  def epoch_batches(self) -> Iterator[dict[str, np.ndarray]]:
    """The rest of the current epoch's batches; afterwards the iterator is at the next epoch."""
    for idx in self._it:
      self._next_index += 1
      # Buckets follow the global batch so that every process agrees on the shape.
      batch = _gather(self.split, np.asarray(idx), self.buckets)
      yield {k: v[self._slice] for k, v in batch.items()}
    self._start_epoch(self.epoch + 1, 0)

  def get_state(self) -> dict[str, int]:
    return {"epoch": self.epoch, "next_index": self._next_index}

  def set_state(self, state: dict[str, int]) -> None:
    self._start_epoch(int(state["epoch"]), int(state["next_index"]))


def eval_batches(split: Split, global_batch: int, *, buckets: tuple[int, ...] | None = None,
                 process_index: int = 0, process_count: int = 1) -> Iterator[dict[str, np.ndarray]]:
  """Every example exactly once: the last batch is zero-padded and `mask` marks real rows."""
  n = len(split["labels"])
  sl = _local_slice(global_batch, process_index, process_count)
  for start in range(0, n, global_batch):
    idx = np.arange(start, min(start + global_batch, n))
    batch = _gather(split, idx, buckets)
    pad = global_batch - len(idx)
    batch["mask"] = np.ones(len(idx), np.bool_)
    if pad:
      batch = {k: np.concatenate([v, np.zeros((pad,) + v.shape[1:], v.dtype)])
               for k, v in batch.items()}
      if "seq_lengths" in batch:  # padded rows still need a valid length for the RNN
        batch["seq_lengths"][len(idx):] = 1
    yield {k: v[sl] for k, v in batch.items()}
