"""Pure train / eval / predict steps, shared by every parallel strategy.

A step is `step(state, batch) -> (state, metrics)`: no Python side effects and no host
sync. Under pmap the caller passes `axis_name`; gradients and metric sums are then
reduced across devices here. Under jit over a mesh (or one device) `axis_name` is
None and the sharded arrays make XLA do the reductions.

Metrics come back as sums (`loss_sum`, `correct`, `count`) so that they add up over
batches and devices and are divided once: every example counts once, and a padded
example (mask 0) counts zero times. The training loop adds an epoch's train sums
inside the compiled step (`with_running_sums`).
"""
from __future__ import annotations

from typing import Any, Callable

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

from flaxnets.training.state import TrainState


def preprocess(x: jax.Array, stats: dict[str, Any]) -> jax.Array:
  """uint8/float inputs -> float32, standardised per channel with training statistics."""
  if not stats:
    return x
  x = x.astype(jnp.float32)
  return (x - stats["mean"]) / stats["std"]


def augment_images(x: jax.Array, rng: jax.Array, crop_padding: int, flip: bool) -> jax.Array:
  """Random crop after zero padding, and random horizontal flip; x [B, H, W, C].

  x is already standardised (`preprocess`), so the padding is the training mean colour
  (torchvision's RandomCrop pads black); with dataset.normalize=False it is black.
  """
  b, h, w, _ = x.shape
  crop_rng, flip_rng = jax.random.split(rng)
  if crop_padding:
    p = crop_padding
    padded = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
    offsets = jax.random.randint(crop_rng, (b, 2), 0, 2 * p + 1)

    def crop(img, off):
      return jax.lax.dynamic_slice(img, (off[0], off[1], 0), (h, w, img.shape[-1]))

    x = jax.vmap(crop)(padded, offsets)
  if flip:
    do_flip = jax.random.bernoulli(flip_rng, 0.5, (b, 1, 1, 1))
    x = jnp.where(do_flip, x[:, :, ::-1, :], x)
  return x


def token_mask(batch: dict[str, jax.Array]) -> jax.Array:
  """[B, T] validity of language-model targets (all valid without seq_lengths)."""
  b, t = batch["labels"].shape
  if "seq_lengths" not in batch:
    return jnp.ones((b, t), jnp.float32)
  return (jnp.arange(t)[None, :] < batch["seq_lengths"][:, None]).astype(jnp.float32)


def losses_and_weights(logits: jax.Array, batch: dict[str, jax.Array], num_classes: int,
                       label_smoothing: float) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Per-position cross-entropy, correctness and weight (0 for padding and masked rows)."""
  labels = batch["labels"]
  onehot = jax.nn.one_hot(labels, num_classes)
  if label_smoothing:
    onehot = optax.smooth_labels(onehot, label_smoothing)
  loss = optax.softmax_cross_entropy(logits.astype(jnp.float32), onehot)
  correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
  weight = batch["mask"].astype(jnp.float32) if "mask" in batch else jnp.ones(labels.shape[:1])
  if labels.ndim == 2:  # language model: [B, T]
    weight = weight[:, None] * token_mask(batch)
  return loss, correct, weight


def _reduce(tree: Any, axis_name: str | None) -> Any:
  return jax.lax.psum(tree, axis_name) if axis_name else tree


# What config.debug's checks name when they fail (chex's own message dumps every leaf).
DEBUG_PARTS = ("the gradients", "the updated parameters", "the optimizer state",
               "the batch statistics")


def make_train_step(*, num_classes: int, stats: dict[str, Any], schedule: Callable,
                    label_smoothing: float = 0.0, crop_padding: int = 0, flip: bool = False,
                    axis_name: str | None = None, debug: bool = False) -> Callable:
  """Build `train_step(state, batch) -> (state, metrics)` for the given task settings."""

  def train_step(state: TrainState, batch: dict[str, jax.Array]):
    rng = jax.random.fold_in(state.rng, state.step)
    if axis_name:  # a different, reproducible stream per device
      rng = jax.random.fold_in(rng, jax.lax.axis_index(axis_name))
    aug_rng, dropout_rng = jax.random.split(rng)
    x = preprocess(batch["inputs"], stats)
    if crop_padding or flip:
      x = augment_images(x, aug_rng, crop_padding, flip)
    seq_lengths = batch.get("seq_lengths")
    has_bn = bool(state.batch_stats)

    def loss_fn(params):
      variables = {"params": params}
      if has_bn:
        variables["batch_stats"] = state.batch_stats
      logits, updates = state.apply_fn(variables, x, seq_lengths, train=True,
                                       rngs={"dropout": dropout_rng}, mutable=["batch_stats"])
      loss, correct, weight = losses_and_weights(logits, batch, num_classes, label_smoothing)
      # Normalise by the *global* count so that summing gradients over devices gives
      # exactly the single-device mean over the global batch.
      count = _reduce(weight.sum(), axis_name)
      return (loss * weight).sum() / count, (logits, updates, loss, correct, weight)

    (loss, (logits, updates, losses, correct, weight)), grads = jax.value_and_grad(
        loss_fn, has_aux=True)(state.params)
    if debug:  # chex value assertions: the loop runs the step under chex.chexify
      chex.assert_tree_all_finite(grads, custom_message=DEBUG_PARTS[0])
    grads = _reduce(grads, axis_name)
    new_state = state.apply_gradients(grads=grads)
    if has_bn:
      new_state = new_state.replace(batch_stats=updates["batch_stats"])
    if debug:  # finite gradients can still overflow a state (adam's nu = g^2 at lr 1e6)
      for part, tree in zip(DEBUG_PARTS[1:], (new_state.params, new_state.opt_state,
                                              new_state.batch_stats)):
        if jax.tree.leaves(tree):
          chex.assert_tree_all_finite(tree, custom_message=part)
    metrics = _reduce({"loss_sum": (losses * weight).sum(), "correct": (correct * weight).sum(),
                       "count": weight.sum()}, axis_name)
    metrics["grad_norm"] = optax.tree.norm(grads)
    metrics["learning_rate"] = schedule(state.step)
    return new_state, {k: jnp.asarray(metrics[k], jnp.float32) for k in TRAIN_METRICS}

  return train_step


# What a train step reports, each a float32 scalar (sums over the global batch, and the
# gradient norm and learning rate of the step).
TRAIN_METRICS = ("loss_sum", "correct", "count", "grad_norm", "learning_rate")


def zero_sums() -> dict[str, np.ndarray]:
  """Running sums of TRAIN_METRICS before an epoch's first step (host arrays)."""
  return {k: np.zeros((), np.float32) for k in TRAIN_METRICS}


def with_running_sums(train_step: Callable) -> Callable:
  """`train_step(state, batch) -> (state, metrics)` as `step(state, batch, sums) ->
  (state, metrics, sums + metrics)`: the epoch's metric sums are added inside the
  compiled step rather than by a second dispatch per step (a tenth of a small CPU step)."""

  def step(state, batch, sums):
    state, metrics = train_step(state, batch)
    return state, metrics, jax.tree.map(jnp.add, sums, metrics)

  return step


def make_eval_step(*, num_classes: int, stats: dict[str, Any],
                   axis_name: str | None = None) -> Callable:
  """Build `eval_step(state, batch) -> metrics` (sums over real rows, plus predictions)."""

  def eval_step(state: TrainState, batch: dict[str, jax.Array]):
    logits = apply_model(state, batch, stats)
    loss, correct, weight = losses_and_weights(logits, batch, num_classes, 0.0)
    metrics = _reduce({"loss_sum": (loss * weight).sum(), "correct": (correct * weight).sum(),
                       "count": weight.sum()}, axis_name)
    if logits.ndim == 2:  # classification: per-example predictions for confusion matrices
      metrics["preds"] = jnp.argmax(logits, -1).astype(jnp.int32)
      top5 = jax.lax.top_k(logits, min(5, num_classes))[1]
      hit5 = (top5 == batch["labels"][:, None]).any(-1).astype(jnp.float32)
      metrics["top5_correct"] = _reduce((hit5 * weight).sum(), axis_name)
    return metrics

  return eval_step


def apply_model(state: Any, batch: dict[str, jax.Array], stats: dict[str, Any]) -> jax.Array:
  """Logits in inference mode; `state` needs apply_fn, params and batch_stats."""
  variables = {"params": state.params}
  if state.batch_stats:
    variables["batch_stats"] = state.batch_stats
  x = preprocess(batch["inputs"], stats)
  return state.apply_fn(variables, x, batch.get("seq_lengths"), train=False)


def make_predict_step(stats: dict[str, Any]) -> Callable:
  """Build `predict_step(state, batch) -> probabilities [B, classes]`."""

  def predict_step(state, batch):
    return jax.nn.softmax(apply_model(state, batch, stats).astype(jnp.float32), axis=-1)

  return predict_step
