"""`flaxnets.lr_find(config)`: the learning-rate range test (Smith 2017), as fastai's
`lr_find` and PyTorch Lightning's `Tuner.lr_find` run it.

The config's model, data and optimizer train from their fresh initialisation (or
config.init's weights) for up to `num_steps` batches while the learning rate grows
exponentially from `start_lr` to `end_lr`; the loss of each step is recorded. The run
stops once the smoothed loss exceeds `stop_factor` times its best (the rate is past
divergence) or is not finite; the smoothed loss is fastai's and Lightning's exponential
moving average (bias-corrected), which decides when to stop.

The suggestion is Lightning's idea, the rate where the loss falls fastest, read on a
centred moving average of the losses before their minimum rather than on that causal
average: with smoothing 0.98 it lags about 50 of the 100 steps, four decades of rate,
and its steepest fall came after the good rates. SimpleCNN on digits, 3 seeds
(`python experiments/lr_find_study.py`): the exponential average's steepest fall was at
0.055-0.096 (adam) and 0.079-0.2 (sgd), where 3 epochs at 0.1 reach 10% (adam) and at 0.2
77% (sgd) validation accuracy; the centred average's at 0.015-0.026 (adam: 94-96% at
0.01-0.03) and 0.022-0.055 (sgd: 94% at 0.03-0.1). Nothing is written
and the config is not changed: set `config.optimizer.learning_rate` to the suggestion
and train.
"""
from __future__ import annotations

import dataclasses
import math
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from flaxnets import config as config_lib


@dataclasses.dataclass
class LRFindResult:
  """The sweep: each step's learning rate, loss and smoothed loss (float64 [n])."""
  learning_rates: np.ndarray
  losses: np.ndarray
  smoothed_losses: np.ndarray
  suggestion: float | None  # None when too few steps ran, or the loss never fell
  min_loss_lr: float | None  # the rate at the (centred-average) loss's minimum
  stopped_early: bool       # the loss diverged before num_steps

  def plot(self, path: str | pathlib.Path) -> pathlib.Path:
    """The loss and its centred average against the learning rate (log scale) as a PNG,
    the suggestion marked."""
    from matplotlib.figure import Figure  # not pyplot: a notebook's backend stays its own
    path = pathlib.Path(path).expanduser()
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    # a diverged last point is left out: it would squash the curve into the bottom
    n = len(self.losses) - (1 if self.stopped_early else 0)
    ax.plot(self.learning_rates[:n], self.losses[:n], alpha=0.3, label="loss")
    if n > 0:  # the curve the suggestion reads (the exponential average lags behind it)
      ax.plot(self.learning_rates[:n], centred_average(self.losses[:n], 2 * (n // 14) + 1),
              label="centred average")
    if self.suggestion is not None:
      ax.axvline(self.suggestion, color="red", linestyle="--",
                 label=f"suggestion {self.suggestion:.2g}")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path


def _check(name: str, value: Any, ok: bool, expected: str) -> None:
  if not ok:
    raise ValueError(f"{name}={value!r}: expected {expected}")


def _number(v: Any) -> bool:
  return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) \
      and math.isfinite(float(v))


def _count(v: Any) -> bool:
  return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def centred_average(losses: np.ndarray, window: int) -> np.ndarray:
  """Each loss averaged with its `window` (odd) neighbours, the ends padded with the end
  values: a smoothing without the exponential average's lag."""
  pad = window // 2
  x = np.pad(np.asarray(losses, np.float64), pad, mode="edge")
  return np.convolve(x, np.ones(window) / window, mode="valid")


def suggest(learning_rates: np.ndarray, losses: np.ndarray, skip_begin: int = 10,
            skip_end: int = 1) -> tuple[float | None, float | None]:
  """(suggestion, rate at the minimum): the rate where the loss falls fastest before its
  minimum, both read on the losses' centred average over about a seventh of the points
  (15 of 100), the first `skip_begin` and last `skip_end` points left out. (None, None)
  when too few points remain, and no suggestion when the loss does not fall by 5%."""
  n = len(losses)
  end = n - skip_end
  if end - skip_begin < 3:
    return None, None
  smooth = centred_average(losses, 2 * (n // 14) + 1)
  low = skip_begin + int(np.argmin(smooth[skip_begin:end]))
  # no suggestion unless the loss fell by 5% or more (noise on a flat curve dips too)
  if low - skip_begin < 2 or smooth[low] > 0.95 * smooth[skip_begin]:
    return None, float(learning_rates[low])
  slope = np.gradient(smooth)[skip_begin:low + 1]
  return float(learning_rates[skip_begin + int(np.argmin(slope))]), float(learning_rates[low])


def lr_find(config: ml_collections.ConfigDict, data: Any = None, *, start_lr: float = 1e-7,
            end_lr: float = 10.0, num_steps: int = 100, stop_factor: float = 4.0,
            smoothing: float = 0.98, skip_begin: int = 10, skip_end: int = 1
            ) -> LRFindResult:
  """The learning-rate range test on `config` (and `data`, as `train` takes it).

  Args:
    start_lr, end_lr: the first and last learning rate (0 < start_lr < end_lr).
    num_steps: batches at most (at least 2); the training split is read in epochs, as
      train reads it, for as many as that takes.
    stop_factor: stop once the smoothed loss exceeds this times its best (> 1; inf: never).
    smoothing: the exponential moving average's weight of the past, bias-corrected, as
      fastai's (0 <= smoothing < 1; 0: the raw losses).
    skip_begin, skip_end: points the suggestion leaves out at each end.
  Returns:
    LRFindResult; `.plot(path)` draws it.
  """
  from flaxnets.training import distributed, finetune, loop, optim, steps
  from flaxnets.training.state import create_state

  def checked():
    if not isinstance(config, ml_collections.ConfigDict):
      raise config_lib.ConfigError(
          f"config: expected an ml_collections.ConfigDict (flaxnets.get_config(), or a task "
          f"config file's get_config()), got {type(config).__name__}")
    _check("start_lr", start_lr, _number(start_lr) and start_lr > 0, "a finite number > 0")
    _check("end_lr", end_lr, _number(end_lr) and end_lr > start_lr,
           f"a finite number > start_lr ({start_lr!r})")
    _check("num_steps", num_steps, _count(num_steps) and num_steps >= 2, "an integer >= 2")
    _check("stop_factor", stop_factor,
           isinstance(stop_factor, (int, float, np.integer, np.floating))
           and not isinstance(stop_factor, bool) and stop_factor > 1,
           "a number > 1 (math.inf: never stop)")
    _check("smoothing", smoothing, _number(smoothing) and 0 <= smoothing < 1,
           "a number in [0, 1)")
    for name, v in (("skip_begin", skip_begin), ("skip_end", skip_end)):
      _check(name, v, _count(v) and v >= 0, "an integer >= 0")
    _check("num_steps", num_steps, num_steps >= skip_begin + skip_end + 3,
           f"at least skip_begin + skip_end + 3 = {skip_begin + skip_end + 3} (the points the "
           "suggestion leaves out, and 3 to read)")
    return config_lib.validate(config_lib.resolved_copy(config))

  # on every process at once: one that raised alone had left the others waiting
  config = finetune.agreed(checked, "the config and arguments of lr_find()")
  config.debug = False  # its chex checks would stop the sweep at the divergence it seeks
  distributed.check_same_config(config, {
      "start_lr": start_lr, "end_lr": end_lr, "num_steps": num_steps,
      "stop_factor": stop_factor, "smoothing": smoothing, "skip_begin": skip_begin,
      "skip_end": skip_end})
  if config.init.workdir:
    config.init.workdir = str(pathlib.Path(config.init.workdir).expanduser().absolute())
    finetune.check(config.init, None, False)

  dataset, class_weights, stats, _, strategy, model, train_it = loop.setup(config, data)
  log_start, log_ratio = math.log(start_lr), math.log(end_lr) - math.log(start_lr)

  def schedule(step):  # start_lr at step 0, end_lr at step num_steps - 1 (in log space:
    # a ratio past float32's range had overflowed)
    return jnp.exp(log_start + log_ratio * (step / (num_steps - 1)))

  tx, _ = optim.make_optimizer(config.optimizer, train_it.steps_per_epoch, 1,
                               schedule=schedule)
  state = create_state(model, tx, jax.random.PRNGKey(config.seed), dataset.input_shape,
                       dataset.input_kind)
  if config.init.workdir:
    state, _ = loop.init_from(state, config, dataset)
  if config.optimizer.freeze:  # a pattern that fits no weight (or all) is refused, as train
    finetune.check_freeze(state.params, config.optimizer.freeze, state.batch_stats)
  if config.optimizer.lr_multipliers:
    finetune.check_lr_multipliers(state.params, config.optimizer.lr_multipliers)
  train_step = loop.compile_train_step(config, dataset, stats, schedule, strategy,
                                       class_weights)
  state = strategy.put_state(state)
  sums = strategy.put_state(jax.tree.map(np.asarray, steps.zero_sums()))
  rates, losses, smoothed = [], [], []
  average, best, stopped = 0.0, math.inf, False
  while len(losses) < num_steps and not stopped:
    for batch in loop.prefetch(train_it.epoch_batches(), strategy):
      state, m, sums = train_step(state, batch, sums)
      host = jax.device_get(strategy.unreplicate(m))
      loss = float(host["loss_sum"]) / max(float(host["count"]), 1.0)
      rates.append(float(host["learning_rate"]))
      losses.append(loss)
      average = smoothing * average + (1 - smoothing) * loss
      smoothed.append(average / (1 - smoothing ** len(losses)))
      if not math.isfinite(smoothed[-1]) or (len(losses) > 1 and
                                             smoothed[-1] > stop_factor * best):
        stopped = True
        break
      best = min(best, smoothed[-1])
      if len(losses) == num_steps:
        break
  rates_a, losses_a = np.asarray(rates), np.asarray(losses)
  # the diverged last point is kept in the record, not in what the suggestion reads
  kept = len(losses) - 1 if stopped else len(losses)
  suggestion, min_loss_lr = suggest(rates_a[:kept], losses_a[:kept], skip_begin, skip_end)
  return LRFindResult(learning_rates=rates_a, losses=losses_a,
                      smoothed_losses=np.asarray(smoothed), suggestion=suggestion,
                      min_loss_lr=min_loss_lr, stopped_early=stopped)
