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

import contextlib
from typing import Any, Callable

import chex
import flax.linen
import jax
import jax.numpy as jnp
import numpy as np
import optax

from flaxnets import config as config_lib
from flaxnets.training import finetune, optim
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


def example_weights(batch: dict[str, jax.Array]) -> jax.Array:
  """Each target's weight in the loss and metrics: 0 for padding rows ('mask') and, in a
  language model's [B, T] targets, for steps past 'seq_lengths'; else 1."""
  labels = batch["labels"]
  weight = batch["mask"].astype(jnp.float32) if "mask" in batch else jnp.ones(labels.shape[:1])
  if labels.ndim == 2:  # language model: [B, T]
    weight = weight[:, None] * token_mask(batch)
  return weight


def losses_and_correct(logits: jax.Array, labels: jax.Array, num_classes: int,
                       label_smoothing: float) -> tuple[jax.Array, jax.Array]:
  """Per-target cross-entropy (with label smoothing) and correctness (1.0 or 0.0)."""
  onehot = jax.nn.one_hot(labels, num_classes)
  if label_smoothing:
    onehot = optax.smooth_labels(onehot, label_smoothing)
  loss = optax.softmax_cross_entropy(logits.astype(jnp.float32), onehot)
  correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
  return loss, correct


def losses_and_weights(logits: jax.Array, batch: dict[str, jax.Array], num_classes: int,
                       label_smoothing: float) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Per-position cross-entropy, correctness and weight (0 for padding and masked rows)."""
  loss, correct = losses_and_correct(logits, batch["labels"], num_classes, label_smoothing)
  return loss, correct, example_weights(batch)


def class_weight_vector(setting: Any, labels: np.ndarray, label_names: list[str],
                        task: str = "classification") -> np.ndarray | None:
  """config.optimizer.class_weights (as `config.validate` leaves it) -> float32 [classes],
  or None when off. 'balanced' weighs class c by n / (k * n_c) over the training labels,
  k the number of classes that occur (scikit-learn's compute_class_weight): every class
  then carries the same total weight, and the mean weight of an example is 1."""
  if isinstance(setting, str) and not setting:
    return None
  key = "config.optimizer.class_weights"
  if task != "classification":
    raise config_lib.ConfigError(f"{key}={_shown(setting)}: class weights weigh the classes "
                                 f"of a classification task, and this dataset is a {task} "
                                 "task; expected '' (off)")
  num = len(label_names)
  counts = np.bincount(np.asarray(labels, np.int64), minlength=num)[:num]
  if isinstance(setting, str):  # 'balanced'
    present = counts > 0
    w = np.ones(num, np.float64)
    w[present] = counts.sum() / (present.sum() * counts[present])
    return w.astype(np.float32)
  if isinstance(setting[0], (list, tuple)):  # (class name or index, weight) pairs
    w = np.ones(num, np.float64)
    for k, v in setting:
      if isinstance(k, str):
        if k not in label_names:
          raise config_lib.ConfigError(
              f"{key}={_shown(setting)}: {k!r} is not a class of this dataset; expected "
              f"names among {list(label_names)} (or class indices 0..{num - 1})")
        w[label_names.index(k)] = v
      else:
        if not 0 <= k < num:
          raise config_lib.ConfigError(
              f"{key}={_shown(setting)}: class index {k} out of range; this dataset has "
              f"{num} classes, indices 0..{num - 1} ({', '.join(map(repr, label_names))})")
        w[k] = v
  else:
    if len(setting) != num:
      raise config_lib.ConfigError(
          f"{key}={_shown(setting)}: {len(setting)} weights; expected one for each of the "
          f"dataset's {num} classes ({', '.join(map(repr, label_names))}), in that order")
    w = np.asarray(setting, np.float64)
  if not (w * counts).any():
    raise config_lib.ConfigError(
        f"{key}={_shown(setting)}: every training example would weigh 0 (classes with "
        f"examples: {[n for n, c in zip(label_names, counts) if c]}), so nothing would be "
        "learned; expected a weight > 0 for some class that occurs")
  return w.astype(np.float32)


def _shown(setting: Any) -> str:
  """A setting as the user wrote it: a dict for (class, weight) pairs."""
  if not isinstance(setting, str) and isinstance(setting[0], (list, tuple)):
    return repr(dict(setting))
  return repr(setting)


def _reduce(tree: Any, axis_name: str | None) -> Any:
  return jax.lax.psum(tree, axis_name) if axis_name else tree


def _has_convolutions(fn: Callable, *args: Any) -> bool:
  """Whether `fn(*args)` convolves (searched in its jaxpr, nested calls and loops too)."""
  return "conv_general_dilated" in str(jax.make_jaxpr(fn)(*args))


def micro_batches(x: jax.Array, k: int) -> jax.Array:
  """[B, ...] -> [k, B / k, ...]; micro-batch i holds rows i, i + k, i + 2k, ...

  Strided, not contiguous, so that a batch sharded over devices on its first axis
  splits into micro-batches that are each sharded the same way: every device computes
  its own rows of every micro-batch, with no data moved between devices."""
  return jnp.swapaxes(x.reshape((x.shape[0] // k, k) + x.shape[1:]), 0, 1)


# What config.debug's checks name when they fail (chex's own message dumps every leaf).
DEBUG_PARTS = ("the gradients", "the updated parameters", "the optimizer state",
               "the batch statistics")


def make_train_step(*, num_classes: int, stats: dict[str, Any], schedule: Callable,
                    label_smoothing: float = 0.0, crop_padding: int = 0, flip: bool = False,
                    axis_name: str | None = None, debug: bool = False,
                    grad_accum_steps: int = 1, order_micro_batches: bool = True,
                    freeze: str = "", class_weights: np.ndarray | None = None,
                    lr_multipliers: tuple[tuple[str, float], ...] = ()) -> Callable:
  """Build `train_step(state, batch) -> (state, metrics)` for the given task settings.

  With `grad_accum_steps` k > 1 the batch is split into k micro-batches (`micro_batches`)
  that run forward and backward one after another in a `lax.scan`, their gradients
  summed: one optimizer update of the whole batch, with the activations of a k-th of it
  alive at a time. Each micro-batch gets its own dropout key; batch norm normalises each
  micro-batch by its own statistics and updates its running averages after each, as
  PyTorch and Lightning do when they accumulate gradients.

  XLA:CPU runs a convolution fast (Eigen) only outside loops: it canonicalises the
  dimension order of top-level convolutions only, so in a loop the backward ones are naive
  loops. On CPU a model with convolutions therefore has its micro-batches unrolled, and
  `order_micro_batches` makes each one's inputs depend on the gradients summed before it:
  otherwise XLA schedules their forward passes side by side and saves no memory. ResNet-20,
  batch 256 in 2 micro-batches, 2-core CPU: 41.2 s a step in a loop, 1.09 s unrolled,
  1.36 s unsplit; 297 MiB of temporaries ordered, 588 unordered or unsplit
  (experiments/benchmarks/grad_accum.py). Under jit over a multi-device mesh the wait
  costs a gradient all-reduce per micro-batch (the partial gradients are reduced to be
  read), so the mesh strategy turns it off.

  Weights whose path matches `freeze` (a regular expression) are not trained: no gradient
  flows to them, and they keep their values through the update; batch-norm layers whose
  scale and bias it matches run in inference mode (running statistics, left unchanged).

  `class_weights` (float [num_classes], `class_weight_vector`) multiplies each example's
  loss by its class's weight; the loss stays divided by the number of examples, as Keras
  divides it, and the reported training loss is this weighted one (the one minimised).

  `lr_multipliers` ((pattern, factor) pairs, config.optimizer.lr_multipliers) scale the
  optimizer's update of each matching weight: for sgd, adam, adamw and lamb the update is
  the learning rate times a term that does not depend on it, so this is exactly a torch
  parameter group at factor x the rate (its weight decay scaled alike). The optimizer
  state is the same as without them: a run can switch them at a resume.
  """
  accum = grad_accum_steps
  if not isinstance(accum, int) or isinstance(accum, bool) or accum < 1:
    raise ValueError(f"grad_accum_steps={accum!r}: expected an integer >= 1")

  def train_step(state: TrainState, batch: dict[str, jax.Array]):
    # config.optimizer.freeze: those weights get no gradient and keep their values
    frozen = finetune.frozen_mask(state.params, freeze) if freeze else None
    norms = finetune.frozen_norms(freeze) if freeze and state.batch_stats else None
    rng = jax.random.fold_in(state.rng, state.step)
    if axis_name:  # a different, reproducible stream per device
      rng = jax.random.fold_in(rng, jax.lax.axis_index(axis_name))
    aug_rng, dropout_rng = jax.random.split(rng)
    x = preprocess(batch["inputs"], stats)
    if crop_padding or flip:
      x = augment_images(x, aug_rng, crop_padding, flip)
    has_bn = bool(state.batch_stats)
    weight = example_weights(batch)
    # Normalise by the *global* count so that summing gradients over devices (and
    # micro-batches) gives exactly the single-device mean over the global batch.
    count = _reduce(weight.sum(), axis_name)
    loss_weight = weight  # each example's share of the loss (and of the reported loss)
    if class_weights is not None:
      loss_weight = weight * jnp.asarray(class_weights, jnp.float32)[batch["labels"]]

    def grads_of(batch_stats, x, labels, seq_lengths, weight, loss_weight, dropout_rng):
      """Gradients of one (micro-)batch's share of the loss, its sums and batch stats."""

      def loss_fn(params):
        if frozen is not None:
          params = jax.tree.map(lambda f, p: jax.lax.stop_gradient(p) if f else p, frozen,
                                params)
        variables = {"params": params}
        if has_bn:
          variables["batch_stats"] = batch_stats
        with flax.linen.intercept_methods(norms) if norms else contextlib.nullcontext():
          logits, updates = state.apply_fn(variables, x, seq_lengths, train=True,
                                           rngs={"dropout": dropout_rng},
                                           mutable=["batch_stats"])
        losses, correct = losses_and_correct(logits, labels, num_classes, label_smoothing)
        return (losses * loss_weight).sum() / count, (updates, losses, correct)

      (_, (updates, losses, correct)), grads = jax.value_and_grad(
          loss_fn, has_aux=True)(state.params)
      sums = {"loss_sum": (losses * loss_weight).sum(), "correct": (correct * weight).sum()}
      return grads, sums, updates.get("batch_stats", batch_stats)

    seq_lengths = batch.get("seq_lengths")
    if accum == 1:
      grads, sums, batch_stats = grads_of(state.batch_stats, x, batch["labels"], seq_lengths,
                                          weight, loss_weight, dropout_rng)
    else:
      split = [None if a is None else micro_batches(a, accum)
               for a in (x, batch["labels"], seq_lengths, weight, loss_weight)]
      unroll = jax.default_backend() == "cpu" and _has_convolutions(
          grads_of, state.batch_stats, *[None if a is None else a[0] for a in split],
          dropout_rng)

      def accumulate(carry, micro):
        grads, sums, batch_stats = carry
        i, x, *rest = micro
        if unroll and order_micro_batches:  # never true, and XLA cannot fold it
          total = sum(jnp.sum(g) for g in jax.tree.leaves(grads))
          x = jnp.where(jnp.isnan(total) & jnp.isinf(total), jnp.zeros_like(x), x)
        g, s, batch_stats = grads_of(batch_stats, x, *rest, jax.random.fold_in(dropout_rng, i))
        return (jax.tree.map(lambda a, b: a + b.astype(a.dtype), grads, g),
                jax.tree.map(jnp.add, sums, s), batch_stats), None

      # Summed in at least float32: bfloat16 parameters' gradients would round at each add.
      zeros = (jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.promote_types(p.dtype,
                                                                           jnp.float32)),
                            state.params),
               {"loss_sum": jnp.zeros((), jnp.float32), "correct": jnp.zeros((), jnp.float32)},
               state.batch_stats)
      (grads, sums, batch_stats), _ = jax.lax.scan(
          accumulate, zeros, (jnp.arange(accum), *split), unroll=unroll)
      grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads, state.params)
    if debug:  # chex value assertions: the loop runs the step under chex.chexify
      chex.assert_tree_all_finite(grads, custom_message=DEBUG_PARTS[0])
    grads = _reduce(grads, axis_name)
    if lr_multipliers:
      factors = finetune.lr_multiplier_tree(state.params, lr_multipliers)
      updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
      # in float32: a bfloat16 factor had been 0.30078 for 0.3, and 1.0 for 1.002
      updates = jax.tree.map(lambda f, u: u if f == 1.0 else (
          u.astype(jnp.promote_types(u.dtype, jnp.float32)) * f).astype(u.dtype),
          factors, updates)
      new_state = state.replace(step=state.step + 1, opt_state=opt_state,
                                params=optax.apply_updates(state.params, updates))
    else:
      new_state = state.apply_gradients(grads=grads)
    if frozen is not None:  # weight decay and momentum would still move them
      new_state = new_state.replace(params=jax.tree.map(
          lambda f, old, new: old if f else new, frozen, state.params, new_state.params))
    if has_bn:
      new_state = new_state.replace(batch_stats=batch_stats)
    if debug:  # finite gradients can still overflow a state (adam's nu = g^2 at lr 1e6)
      for part, tree in zip(DEBUG_PARTS[1:], (new_state.params, new_state.opt_state,
                                              new_state.batch_stats)):
        if jax.tree.leaves(tree):
          chex.assert_tree_all_finite(tree, custom_message=part)
    metrics = _reduce({**sums, "count": weight.sum()}, axis_name)
    metrics["grad_norm"] = optax.tree.norm(grads)
    # the schedule's rate times any reduction on a plateau (optim.plateau_scale)
    metrics["learning_rate"] = schedule(state.step) * optim.lr_scale(state.opt_state)
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
