"""Training hooks: metric writers, early stopping, preemption signals.

Only process 0 writes files or prints; every process takes the same decisions
(early stopping reads globally reduced metrics, so all processes agree).
"""
from __future__ import annotations

import json
import math
import pathlib
import signal
import threading
import time
from typing import Any

import jax


def is_chief() -> bool:
  return jax.process_index() == 0


class MetricWriter:
  """Appends one JSON object per line to WORKDIR/metrics.jsonl (and TensorBoard if asked)."""

  def __init__(self, workdir: str | pathlib.Path | None, tensorboard: bool = False,
               restart: bool = False, resume_step: int | None = None):
    """Opens WORKDIR/metrics.jsonl for this run.

    restart, or a fresh start (resume_step None) over an earlier run's log: that log
    (and tensorboard/, results.json) is moved aside to
    `metrics.before-[restart-]TIME.jsonl` (`results.before-...json`), kept and not
    mixed with this run's. A resume from step `resume_step` keeps the rows up to it
    and drops the later ones, which the resumed run replays and writes again.
    """
    self.path = None
    self.tb = None
    if workdir is not None and is_chief():
      workdir = pathlib.Path(workdir)
      workdir.mkdir(parents=True, exist_ok=True)
      self.path = workdir / "metrics.jsonl"
      if restart or resume_step is None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        tag = "before-restart" if restart else "before"
        for old in (self.path, workdir / "tensorboard", workdir / "results.json"):
          if old.exists():
            old.rename(_free_name(old, f"{tag}-{stamp}"))
      elif self.path.exists():
        _truncate_log(self.path, resume_step)
      if tensorboard:
        from flaxnets.tensorboard import EventWriter
        self.tb = EventWriter(workdir / "tensorboard")
        if resume_step is not None:  # the rows after it are replayed: TensorBoard drops
          self.tb.session_start(resume_step + 1)  # the earlier files' copies of them
          self.tb.flush()

  def write(self, record: dict[str, Any]) -> None:
    if self.path is not None:
      with open(self.path, "a") as f:
        f.write(json.dumps(record) + "\n")
    if self.tb is not None:
      prefix = record.get("split", "train")
      for k, v in record.items():
        if isinstance(v, (int, float)) and k not in ("epoch", "step"):
          self.tb.scalar(f"{prefix}/{k}", float(v), int(record.get("step", 0)))
      self.tb.flush()

  def close(self) -> None:
    if self.tb is not None:
      self.tb.close()


def _free_name(path: pathlib.Path, tag: str) -> pathlib.Path:
  """`<stem>.<tag><suffix>`, or with -2, -3, ... when that exists (two starts in a second)."""
  for i in range(1, 1000):
    name = path.with_name(f"{path.stem}.{tag}{'' if i == 1 else f'-{i}'}{path.suffix}")
    if not name.exists():
      return name
  raise FileExistsError(f"{path}: no free name to move it aside to")


def _truncate_log(path: pathlib.Path, step: int) -> None:
  """Drop the rows of metrics.jsonl after `step` (atomically; other lines are kept)."""
  text = path.read_text()
  kept = []
  for line in text.splitlines(keepends=True):
    try:
      row_step = json.loads(line).get("step")
    except (ValueError, AttributeError):  # a line cut short by a kill: not a row
      continue
    if not isinstance(row_step, int) or row_step <= step:
      kept.append(line if line.endswith("\n") else line + "\n")
  if "".join(kept) != text:  # rows dropped, or a last line without its newline
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(kept))
    tmp.replace(path)


class EarlyStopping:
  """Stop after `patience` epochs without an improvement of more than `min_delta`."""

  def __init__(self, patience: int, min_delta: float = 0.0, mode: str = "min"):
    if mode not in ("min", "max"):
      raise ValueError(f"early_stopping.mode={mode!r}: expected 'min' or 'max'")
    self.patience, self.min_delta, self.mode = patience, min_delta, mode
    self.best = math.inf if mode == "min" else -math.inf
    self.best_epoch = None
    self.bad_epochs = 0

  def improved(self, value: float) -> bool:
    if self.mode == "min":
      return value < self.best - self.min_delta
    return value > self.best + self.min_delta

  def update(self, value: float, epoch: int) -> bool:
    """Record this epoch's metric; True when training should stop."""
    if self.improved(value):
      self.best, self.best_epoch, self.bad_epochs = value, epoch, 0
    else:
      self.bad_epochs += 1
    return self.patience > 0 and self.bad_epochs >= self.patience

  def state_dict(self) -> dict[str, Any]:
    return {"best": self.best, "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs}

  def load_state_dict(self, d: dict[str, Any]) -> None:
    self.best, self.best_epoch, self.bad_epochs = d["best"], d["best_epoch"], d["bad_epochs"]


class PreemptionGuard:
  """SIGTERM / SIGINT set a flag; the loop finishes its step, saves and exits cleanly."""

  def __init__(self):
    self.signal_name: str | None = None
    self._previous: dict[int, Any] = {}

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for sig in (signal.SIGTERM, signal.SIGINT):
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, frame):
    if self.signal_name is not None and signum == signal.SIGINT:
      raise KeyboardInterrupt  # a second Ctrl-C stops at once
    self.signal_name = signal.Signals(signum).name

  @property
  def stop_requested(self) -> bool:
    return self.signal_name is not None

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    return False
