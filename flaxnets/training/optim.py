"""Optax optimizer factory: SGD / Adam / AdamW / LAMB, warmup + decay, clipping, and a
learning rate reduced on a validation plateau.

Weight decay applies to kernels and embeddings only: biases and norm scales (the
1-D parameters) are masked off, as in most published recipes.

Reducing on a plateau (config.reduce_lr_on_plateau) is optax.contrib.reduce_on_plateau
split in two: its state rides last in the optimizer's chain, where every step multiplies
the updates by its scale and leaves it as it is, and the loop steps it once an epoch
with the validation metric (`Plateau.update`), the way Keras's callback watches
val_loss. The state is part of opt_state, so checkpoints carry it.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from optax import contrib

from flaxnets import config as config_lib


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


def _reduce_on_plateau(rcfg: Any) -> optax.GradientTransformationExtraArgs:
  # rtol 0: a relative tolerance misjudges the negated metrics that mode 'max' feeds it
  # (it compares against (1 - rtol) * best). One value per call: an epoch's metric.
  return contrib.reduce_on_plateau(
      factor=rcfg.factor, patience=rcfg.patience, rtol=0.0, atol=rcfg.min_delta,
      cooldown=rcfg.cooldown, accumulation_size=1, min_scale=rcfg.min_scale)


# optax's best value starts at +inf, which the checkpoint's and config.debug's checks
# refuse as a diverged state: the largest float32 is improved on by any finite metric alike.
_NO_BEST = np.finfo(np.float32).max


def plateau_scale(rcfg: Any) -> optax.GradientTransformation:
  """The end of the chain: updates times the plateau state's scale; the state is stepped
  by `Plateau.update`, not here."""
  rop = _reduce_on_plateau(rcfg)

  def init(params):
    del params  # optax would take its dtypes from them: bfloat16 compares metrics coarsely
    state = rop.init({"x": jnp.zeros((), jnp.float32)})
    return state._replace(best_value=jnp.asarray(_NO_BEST, jnp.float32))

  def update(updates, state, params=None):
    del params
    return jax.tree.map(lambda g: g * state.scale.astype(g.dtype), updates), state

  return optax.GradientTransformation(init, update)


def _is_plateau(x: Any) -> bool:
  return isinstance(x, contrib.ReduceLROnPlateauState)


def plateau_state(opt_state: Any) -> contrib.ReduceLROnPlateauState | None:
  """The plateau state inside an optimizer state, or None when it has none."""
  found = [x for x in jax.tree.leaves(opt_state, is_leaf=_is_plateau) if _is_plateau(x)]
  return found[0] if found else None


def with_plateau_state(opt_state: Any, new: contrib.ReduceLROnPlateauState) -> Any:
  return jax.tree.map(lambda x: new if _is_plateau(x) else x, opt_state, is_leaf=_is_plateau)


def lr_scale(opt_state: Any) -> Any:
  """The factor the plateau logic has put on the schedule's learning rate (1.0 without)."""
  found = plateau_state(opt_state)
  return 1.0 if found is None else found.scale


class Plateau:
  """Steps the plateau state once an epoch with a validation metric (see module doc)."""

  def __init__(self, rcfg: Any):
    self.cfg = rcfg
    self.metric = rcfg.metric
    self.mode = config_lib.metric_mode(rcfg.metric, rcfg.mode)
    rop = _reduce_on_plateau(rcfg)
    # Compiled once: run op by op, its lax.conds cost ~100 ms an epoch (CPU).
    self._step = jax.jit(lambda state, value: rop.update({}, state, value=value)[1])

  def update(self, state: Any, value: float, strategy: Any) -> tuple[Any, float, float]:
    """(state with its plateau state stepped, scale before, scale after). `value` is the
    epoch's validation metric; `state` is placed by `strategy`."""
    old = jax.tree.map(np.asarray, strategy.unreplicate(plateau_state(state.opt_state)))
    signed = -value if self.mode == "max" else value  # optax minimises
    # optax cuts when the count equals patience; Keras when it reaches it: a patience
    # lowered at a resume, under a count already past it, had never cut again. A cooldown
    # lowered at a resume takes effect at once too.
    counted = old._replace(
        plateau_count=np.minimum(old.plateau_count, self.cfg.patience - 1).astype(np.int32),
        cooldown_count=np.minimum(old.cooldown_count, self.cfg.cooldown).astype(np.int32))
    new = self._step(counted, np.asarray(signed, old.avg_value.dtype))
    new = jax.tree.map(np.asarray, jax.device_get(new))
    placed = strategy.put_state(new)
    state = state.replace(opt_state=with_plateau_state(state.opt_state, placed))
    return state, float(old.scale), float(new.scale)

  def at_least_min_scale(self, state: Any) -> tuple[Any, float, float]:
    """(host `state` with its scale raised to min_scale where below, scale before, after):
    a min_scale raised at a resume applies from there on, as the resume says."""
    old = plateau_state(state.opt_state)
    before = float(np.asarray(old.scale))
    after = max(before, float(np.float32(self.cfg.min_scale)))
    new = old._replace(scale=np.asarray(after, np.asarray(old.scale).dtype))
    return state.replace(opt_state=with_plateau_state(state.opt_state, new)), before, after

  def forget_best(self, state: Any) -> Any:
    """The host `state` with the plateau's best value and count cleared (its metric or
    direction changed at a resume: the best is of the other one). The scale stays."""
    old = plateau_state(state.opt_state)
    new = old._replace(best_value=np.full_like(np.asarray(old.best_value), _NO_BEST),
                       plateau_count=np.zeros_like(np.asarray(old.plateau_count)))
    return state.replace(opt_state=with_plateau_state(state.opt_state, new))


def other_plateau_layout(state: Any, rcfg: Any, dropped: list | None = None
                         ) -> tuple[Any, Callable[[Any], Any]]:
  """(target, convert) that restore a host `state` saved with the plateau part the other
  way (reduce_lr_on_plateau switched on or off at a resume; `Checkpointer.restore_step`'s
  alternatives). Switched on, the restored state takes `state`'s plateau part (a fresh
  one at a resume); switched off, its scale is dropped (appended to `dropped`) and the
  rate is the schedule's again."""
  fresh = plateau_state(state.opt_state)
  if fresh is not None:  # on now: the checkpoint's chain lacks the last part
    return (state.replace(opt_state=state.opt_state[:-1]),
            lambda s: s.replace(opt_state=(*s.opt_state, fresh)))

  def drop(s):
    if dropped is not None:
      dropped.append(float(np.asarray(s.opt_state[-1].scale)))
    return s.replace(opt_state=s.opt_state[:-1])

  return state.replace(opt_state=(*state.opt_state, plateau_scale(rcfg).init(state.params))), drop


def make_optimizer(ocfg: Any, steps_per_epoch: int, num_epochs: int,
                   plateau: Any = None, schedule: Callable | None = None
                   ) -> tuple[optax.GradientTransformation, Callable]:
  """(tx, schedule) from config.optimizer; with `plateau` (config.reduce_lr_on_plateau,
  patience > 0) the chain ends in `plateau_scale`. `schedule` (step -> learning rate)
  replaces config.optimizer's (learning_rate, schedule, warmup), as lr_find's sweep does."""
  if schedule is None:
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
  if plateau is not None and plateau.patience:
    parts.append(plateau_scale(plateau))
  return optax.chain(*parts), schedule
