"""Optax optimizer factory: SGD / Adam / AdamW / LAMB, warmup + decay, clipping.

Weight decay applies to kernels and embeddings only: biases and norm scales (the
1-D parameters) are masked off, as in most published recipes.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import optax


def decay_mask(params: Any) -> Any:
  """True for parameters that weight decay should touch (ndim > 1)."""
  return jax.tree.map(lambda p: p.ndim > 1, params)


def make_schedule(ocfg: Any, steps_per_epoch: int, num_epochs: int) -> Callable[[Any], Any]:
  """Learning rate per step: linear warmup from 0, then constant, cosine or linear decay."""
  lr = ocfg.learning_rate
  total = max(1, steps_per_epoch * num_epochs)
  warmup = min(int(round(ocfg.warmup_epochs * steps_per_epoch)), total - 1)
  end = lr * ocfg.end_lr_factor
  if ocfg.schedule == "cosine":
    if warmup == 0:
      return optax.cosine_decay_schedule(lr, total, alpha=ocfg.end_lr_factor)
    return optax.warmup_cosine_decay_schedule(0.0, lr, warmup, total, end_value=end)
  if ocfg.schedule == "linear":
    decay = optax.linear_schedule(lr, end, total - warmup)
  else:
    decay = optax.constant_schedule(lr)
  if warmup == 0:
    return decay
  return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), decay], [warmup])


def make_optimizer(ocfg: Any, steps_per_epoch: int,
                   num_epochs: int) -> tuple[optax.GradientTransformation, Callable]:
  """(tx, schedule) from config.optimizer."""
  schedule = make_schedule(ocfg, steps_per_epoch, num_epochs)
  wd = ocfg.weight_decay
  parts = []
  if ocfg.clip_norm > 0:
    parts.append(optax.clip_by_global_norm(ocfg.clip_norm))
  if ocfg.name == "sgd":
    if wd > 0:  # coupled L2, as the classic SGD recipes (ResNet) use it
      parts.append(optax.add_decayed_weights(wd, mask=decay_mask))
    parts.append(optax.sgd(schedule, momentum=ocfg.momentum or None, nesterov=ocfg.nesterov))
  elif ocfg.name == "adam":
    if wd > 0:  # coupled L2, as torch.optim.Adam's weight_decay; adamw decouples it
      parts.append(optax.add_decayed_weights(wd, mask=decay_mask))
    parts.append(optax.adam(schedule, b1=ocfg.b1, b2=ocfg.b2))
  elif ocfg.name == "adamw":
    parts.append(optax.adamw(schedule, b1=ocfg.b1, b2=ocfg.b2, weight_decay=wd, mask=decay_mask))
  elif ocfg.name == "lamb":
    parts.append(optax.lamb(schedule, b1=ocfg.b1, b2=ocfg.b2, weight_decay=wd, mask=decay_mask))
  else:
    raise ValueError(f"config.optimizer.name={ocfg.name!r}: expected sgd, adam, adamw or lamb")
  return optax.chain(*parts), schedule
