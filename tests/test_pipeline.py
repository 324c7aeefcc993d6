"""Host pipeline: resumable seeded shuffling, per-process slices, buckets, exact evaluation."""
from __future__ import annotations

import numpy as np
import pytest

import flaxnets
from flaxnets.data import pipeline
from flaxnets.data.text import bucket_length, default_buckets

N_TRAIN = 103  # not a multiple of the batch: the remainder is dropped each epoch
BATCH = 10


def _split(n: int = N_TRAIN) -> dict[str, np.ndarray]:
  """inputs[i] = i, so a batch's inputs are the example indices it holds."""
  return {"inputs": np.arange(n, dtype=np.int64)[:, None],
          "labels": (np.arange(n) % 3).astype(np.int32)}


def _token_split(n: int = 96, max_len: int = 64, seed: int = 0) -> dict[str, np.ndarray]:
  """Token rows of very different lengths, row i's tokens all equal to i + 1."""
  rng = np.random.default_rng(seed)
  # Mostly short rows, a few long ones: batches land in different buckets.
  lengths = rng.choice([3, 9, 20, 40, 64], size=n, p=[0.5, 0.3, 0.12, 0.05, 0.03])
  lengths = lengths.astype(np.int32)
  ids = np.zeros((n, max_len), np.int32)
  for i, length in enumerate(lengths):
    ids[i, :length] = i + 1
  return {"inputs": ids, "labels": (np.arange(n) % 2).astype(np.int32), "seq_lengths": lengths}


def _ids(batch: dict[str, np.ndarray]) -> list[int]:
  return batch["inputs"][:, 0].tolist()


def _run(it: pipeline.TrainIterator, epochs: int) -> list[list[int]]:
  """Batches (as example ids) from the iterator's position to the end of `epochs`."""
  out = []
  while it.epoch < epochs:
    out.extend(_ids(b) for b in it.epoch_batches())
  return out


# ---- resumption -------------------------------------------------------------------------
@pytest.mark.parametrize("stop_after", [0, 4, 9, 10, 13, 20])
def test_restored_state_continues_the_same_batches(stop_after):
  """Stop after k batches (mid-epoch, last batch of an epoch, epoch start), restore, go on."""
  reference = _run(pipeline.TrainIterator(_split(), BATCH, seed=7), epochs=3)
  assert len(reference) == 3 * (N_TRAIN // BATCH)

  it = pipeline.TrainIterator(_split(), BATCH, seed=7)
  seen: list[list[int]] = []
  gen = it.epoch_batches()
  while len(seen) < stop_after:
    try:
      seen.append(_ids(next(gen)))
    except StopIteration:  # epoch done: the iterator has moved on to the next one
      gen = it.epoch_batches()
  state = dict(it.get_state())

  resumed = pipeline.TrainIterator(_split(), BATCH, seed=7)
  resumed.set_state(state)
  assert seen + _run(resumed, epochs=3) == reference


def test_state_at_epoch_boundary_both_forms():
  """{'epoch': e, 'next_index': steps} (last batch taken) equals {'epoch': e + 1, 0}."""
  reference = pipeline.TrainIterator(_split(), BATCH, seed=1)
  _run(reference, epochs=1)
  assert reference.get_state() == {"epoch": 1, "next_index": 0}
  expected = _run(reference, epochs=3)
  for state in ({"epoch": 0, "next_index": N_TRAIN // BATCH}, {"epoch": 1, "next_index": 0}):
    it = pipeline.TrainIterator(_split(), BATCH, seed=1)
    it.set_state(state)
    assert _run(it, epochs=3) == expected, state


def test_restore_with_token_buckets():
  split = _token_split()
  buckets = default_buckets(64)
  full = pipeline.TrainIterator(split, 8, seed=3, buckets=buckets)
  ref = [b["inputs"] for _ in range(2) for b in full.epoch_batches()]
  it = pipeline.TrainIterator(split, 8, seed=3, buckets=buckets)
  gen = it.epoch_batches()
  head = [next(gen)["inputs"] for _ in range(5)]
  resumed = pipeline.TrainIterator(split, 8, seed=3, buckets=buckets)
  resumed.set_state(it.get_state())
  tail = [b["inputs"] for b in resumed.epoch_batches()]
  tail += [b["inputs"] for b in resumed.epoch_batches()]
  got = head + tail
  assert len(got) == len(ref)
  for a, b in zip(got, ref):
    np.testing.assert_array_equal(a, b)


# ---- shuffling --------------------------------------------------------------------------
def test_shuffles_are_seeded_and_differ_per_epoch():
  a = pipeline.TrainIterator(_split(), BATCH, seed=0)
  epochs = [sum(_run(a, epochs=e + 1), []) for e in range(3)]
  for order in epochs:
    assert len(order) == len(set(order)) == (N_TRAIN // BATCH) * BATCH  # no repeats
    assert order != sorted(order)                                        # shuffled
  assert epochs[0] != epochs[1] and epochs[1] != epochs[2]
  assert len({tuple(sorted(o)) for o in epochs}) > 1  # the dropped remainder moves too

  same = pipeline.TrainIterator(_split(), BATCH, seed=0)
  assert [sum(_run(same, epochs=e + 1), []) for e in range(3)] == epochs
  other = pipeline.TrainIterator(_split(), BATCH, seed=1)
  assert sum(_run(other, epochs=1), []) != epochs[0]


# ---- several processes ------------------------------------------------------------------
@pytest.mark.parametrize("process_count", [2, 4])
def test_process_slices_concatenate_to_the_global_batch(process_count):
  split = _split(120)
  single = pipeline.TrainIterator(split, 40, seed=5)
  per_process = [pipeline.TrainIterator(split, 40, seed=5, process_index=p,
                                        process_count=process_count)
                 for p in range(process_count)]
  for _ in range(2):  # two epochs
    streams = [list(it.epoch_batches()) for it in per_process]
    for i, whole in enumerate(single.epoch_batches()):
      parts = [s[i] for s in streams]
      assert all(len(p["labels"]) == 40 // process_count for p in parts)
      for key in whole:
        np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), whole[key])

  # Evaluation too: 120 rows in batches of 48, the last one padded.
  whole = list(pipeline.eval_batches(split, 48))
  parts = [list(pipeline.eval_batches(split, 48, process_index=p, process_count=process_count))
           for p in range(process_count)]
  for i, w in enumerate(whole):
    for key in w:
      np.testing.assert_array_equal(np.concatenate([p[i][key] for p in parts]), w[key])


def test_batch_must_divide_over_processes():
  with pytest.raises(ValueError, match="does not divide over 3 processes"):
    pipeline.TrainIterator(_split(), 10, seed=0, process_index=0, process_count=3)


# ---- token buckets ----------------------------------------------------------------------
def test_token_batches_are_cut_to_the_bucket_of_the_global_batch():
  split = _token_split()
  buckets = default_buckets(64)
  assert buckets == (16, 32, 64)
  single = pipeline.TrainIterator(split, 16, seed=2, buckets=buckets)
  procs = [pipeline.TrainIterator(split, 16, seed=2, buckets=buckets, process_index=p,
                                  process_count=4) for p in range(4)]
  streams = [list(it.epoch_batches()) for it in procs]
  widths, narrower_locally = set(), 0
  for i, whole in enumerate(single.epoch_batches()):
    want = bucket_length(int(whole["seq_lengths"].max()), buckets)
    assert whole["inputs"].shape[1] == want
    widths.add(want)
    # No real token is cut, and everything cut away is padding.
    row_ids = whole["inputs"][:, 0]
    full = split["inputs"][row_ids - 1]
    assert not full[:, want:].any()
    np.testing.assert_array_equal(full[:, :want], whole["inputs"])
    for s in streams:  # every process uses the global batch's width, not its own rows'
      assert s[i]["inputs"].shape == (4, want)
      own = bucket_length(int(s[i]["seq_lengths"].max()), buckets)
      narrower_locally += own < want
  assert len(widths) >= 2      # the data really exercises several buckets
  assert narrower_locally > 0  # and some process alone would have picked a smaller one


def test_eval_batches_bucket_like_training():
  split = _token_split(n=37)
  buckets = default_buckets(64)
  for batch in pipeline.eval_batches(split, 8, buckets=buckets):
    real = batch["mask"]
    want = bucket_length(int(batch["seq_lengths"][real].max()), buckets)
    assert batch["inputs"].shape == (8, want)
    assert (batch["seq_lengths"] >= 1).all()  # padded rows keep a valid length


# ---- exact evaluation -------------------------------------------------------------------
@pytest.mark.parametrize("batch", [1, 8, 64, 100, 1009, 4096])
def test_eval_batches_count_every_example_once(batch):
  n = 1009  # prime: no batch size above 1 divides it
  split = _split(n)
  seen, count, shapes = [], 0, set()
  for b in pipeline.eval_batches(split, batch):
    shapes.add(b["inputs"].shape)
    seen.extend(b["inputs"][b["mask"], 0].tolist())
    count += int(b["mask"].sum())
    assert not b["inputs"][~b["mask"]].any() and not b["labels"][~b["mask"]].any()
  assert count == n and seen == list(range(n))
  assert shapes == {(batch, 1)}  # one shape: the last batch is padded, not shorter


@pytest.mark.parametrize("strategy", ["mesh", "pmap"])
def test_train_evaluates_every_example_on_8_devices(strategy):
  import jax
  assert jax.device_count() == 8  # tests/conftest.py
  n = 1009
  rng = np.random.default_rng(0)
  x = rng.normal(size=(n, 6)).astype(np.float32)
  y = (x[:, 0] > 0).astype(np.int32)
  config = flaxnets.get_config()
  config.dataset.name = "arrays"
  config.model.name = "rnn"
  config.model.hidden_size = 4
  config.num_epochs = 1
  config.batch_size = 64
  config.eval_batch_size = 100   # rounded up to 104 for 8 devices: 1009 = 9 * 104 + 73
  config.parallel.strategy = strategy
  config.progress = False
  result = flaxnets.train(config, data={"train": (x[:256], y[:256]), "val": (x[:101], y[:101]),
                                        "test": (x, y)})
  assert result.test_metrics["count"] == n
  assert result.val_metrics["count"] == 101
  cm = np.asarray(result.test_metrics["confusion_matrix"])
  assert cm.sum() == n
  assert result.test_metrics["accuracy"] == pytest.approx(np.trace(cm) / n)


def test_validation_carve_of_a_tiny_set_is_never_empty():
  from flaxnets.data import sources
  # 12 examples over 4 classes: 10% of each class rounds to 0, so stratifying holds out
  # nothing; the carve must still hold out round(0.1 * 12) = 1 example.
  split = {"inputs": np.arange(12, dtype=np.float32)[:, None],
           "labels": np.repeat(np.arange(4), 3).astype(np.int32)}
  train, val = sources.carve_validation(split, 0.1)
  assert len(val["labels"]) == 1 and len(train["labels"]) == 11
  assert sorted(np.concatenate([train["inputs"], val["inputs"]])[:, 0]) == list(range(12))
  again_train, again_val = sources.carve_validation(split, 0.1)  # seeded
  np.testing.assert_array_equal(again_val["inputs"], val["inputs"])
  with pytest.raises(ValueError, match=r"val_fraction=0.5: the training split has 1 example"):
    sources.carve_validation({k: v[:1] for k, v in split.items()}, 0.5)


@pytest.mark.parametrize("counts,fraction,per_class", [
    ([5] * 9 + [6], 0.1, [1, 1, 1, 1, 0, 0, 0, 0, 0, 1]),  # 51 examples: 5 (was 1)
    ([4] * 29 + [6], 0.1, [1] * 11 + [0] * 18 + [1]),      # 122 examples: 12 (was 1)
    ([2] * 10, 0.3, [1] * 6 + [0] * 4),                    # 20 examples: 6 (was 10)
    ([1000, 10], 0.1, [100, 1]),
    ([1, 1, 1, 1, 4], 0.25, [0, 0, 0, 0, 2]),   # a class's only example stays in train
    ([1] * 12, 0.1, [1] + [0] * 11),            # unless validation would be empty
])
def test_validation_carve_holds_out_the_fraction_over_unbalanced_classes(counts, fraction,
                                                                          per_class):
  from flaxnets.data import sources
  labels = np.repeat(np.arange(len(counts)), counts).astype(np.int32)
  split = {"inputs": np.arange(len(labels), dtype=np.float32)[:, None], "labels": labels}
  train, val = sources.carve_validation(split, fraction)
  assert len(val["labels"]) == round(fraction * len(labels))
  assert np.bincount(val["labels"], minlength=len(counts)).tolist() == per_class
  assert sorted(np.concatenate([train["inputs"], val["inputs"]])[:, 0]) == list(range(len(labels)))


@pytest.mark.parametrize("features", [1, 3])
def test_input_stats_of_padded_series_count_real_steps_only(features):
  """The zero padding had pulled a mean of 5 down to 1.2 (and the std up to 2.2)."""
  rng = np.random.default_rng(0)
  x = rng.normal(5.0, 1.0, size=(1000, 40, features)).astype(np.float32)
  lengths = rng.integers(5, 15, size=1000).astype(np.int32)
  real = np.arange(40)[None] < lengths[:, None]
  x[~real] = 0.0
  stats = pipeline.input_stats({"inputs": x, "labels": np.zeros(1000, np.int32),
                                "seq_lengths": lengths}, "series")
  np.testing.assert_allclose(stats["mean"], x[real].mean(0), rtol=1e-5)
  np.testing.assert_allclose(stats["std"], x[real].std(0), rtol=1e-4)
  # without lengths every step counts, as before
  plain = pipeline.input_stats({"inputs": x, "labels": np.zeros(1000, np.int32)}, "series")
  np.testing.assert_allclose(plain["mean"], x.reshape(-1, features).mean(0), rtol=1e-5)
