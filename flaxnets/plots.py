"""`flaxnets plot WORKDIR`: learning curves and the test confusion matrix as PNG files.

Reads WORKDIR/metrics.jsonl (per-epoch train and val rows) and WORKDIR/results.json
(test confusion matrix, label names from the config's dataset) and writes
WORKDIR/plots/curves.png and WORKDIR/plots/confusion_matrix.png.
"""
from __future__ import annotations

import json
import pathlib

from flaxnets.warn import warn


def _rows(workdir: pathlib.Path) -> list[dict]:
  path = workdir / "metrics.jsonl"
  if not path.is_file():
    raise FileNotFoundError(f"{str(path)!r} does not exist: train with this workdir first")
  rows, bad = [], []
  for number, line in enumerate(path.read_text().splitlines(), 1):
    if not line.strip():
      continue
    try:
      row = json.loads(line)
    except ValueError:  # a line cut short by a kill, or not a metrics row
      row = None
    if isinstance(row, dict):
      rows.append(row)
    else:
      bad.append(number)
  if bad:
    warn(f"{str(path)!r}: skipped line(s) {bad} that are not JSON records "
         f"(a run killed while writing cuts its last line short)")
  if not any(r.get("split") == "train" for r in rows):
    raise ValueError(f"{str(path)!r} has no per-epoch train rows to plot")
  return rows


def plot_curves(rows: list[dict], out: pathlib.Path) -> pathlib.Path:
  """Loss and accuracy per epoch, train vs validation."""
  curves_figure(rows).savefig(out)
  return out


def curves_figure(rows: list[dict]):
  """The matplotlib figure `plot_curves` saves.

  Made without pyplot, so the session's backend stays the user's: `matplotlib.use('Agg')`
  had turned a notebook's inline figures off for the rest of the session.
  """
  from matplotlib.figure import Figure
  fig = Figure(figsize=(10, 4), dpi=100)
  axes = fig.subplots(1, 2)
  all_epochs = set()
  for split, style in (("train", "-o"), ("val", "-s")):
    # One record per epoch (a resume drops the rows it replays); logs written before
    # 2026-11-28 can repeat an epoch after a resume: the last record of each wins.
    by_epoch = {r["epoch"]: r for r in rows if r.get("split") == split}
    if not by_epoch:
      continue
    epochs = sorted(by_epoch)
    all_epochs.update(epochs)
    for ax, key in zip(axes, ("loss", "accuracy")):
      ax.plot(epochs, [by_epoch[e][key] for e in epochs], style, label=split, markersize=3)
  from matplotlib.ticker import MaxNLocator
  for ax, key in zip(axes, ("loss", "accuracy")):
    if len(all_epochs) <= 10:  # MaxNLocator goes fractional over a span under one epoch
      ax.set_xticks(sorted(all_epochs))
    else:
      ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel(key)
    ax.set_title(key)
    ax.grid(alpha=0.3)
    ax.legend()
  fig.tight_layout()
  return fig


def plot_confusion(cm: list[list[int]], names: list[str], out: pathlib.Path) -> pathlib.Path:
  """Rows are true labels, columns predictions; counts written in each cell."""
  import numpy as np
  from matplotlib.figure import Figure
  cm = np.asarray(cm)
  n = len(cm)
  size = max(4.0, 0.5 * n + 2)
  fig = Figure(figsize=(size, size), dpi=100)
  ax = fig.subplots()
  ax.imshow(cm, cmap="Blues")
  ticks = range(n)
  labels = names if len(names) == n else [str(i) for i in ticks]
  ax.set_xticks(ticks, labels, rotation=45 if max(len(s) for s in labels) > 3 else 0, ha="right")
  ax.set_yticks(ticks, labels)
  ax.set_xlabel("predicted")
  ax.set_ylabel("true")
  ax.set_title(f"test confusion matrix ({int(cm.sum())} examples)")
  if n <= 30:
    threshold = cm.max() / 2
    for i in range(n):
      for j in range(n):
        ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=8,
                color="white" if cm[i, j] > threshold else "black")
  fig.tight_layout()
  fig.savefig(out)
  return out


def plot_workdir(workdir: str | pathlib.Path) -> list[pathlib.Path]:
  """Write the PNGs for one run; returns their paths."""
  workdir = pathlib.Path(workdir).expanduser()
  rows = _rows(workdir)  # before creating anything: a mistyped workdir stays absent
  out_dir = workdir / "plots"
  out_dir.mkdir(parents=True, exist_ok=True)
  written = [plot_curves(rows, out_dir / "curves.png")]
  results_file = workdir / "results.json"
  if results_file.is_file():
    try:
      results = json.loads(results_file.read_text())
    except ValueError as e:
      raise ValueError(f"{results_file} is not valid JSON ({e}); expected the results.json "
                       "a training run writes") from None
    test = results.get("test") or {}
    if "confusion_matrix" in test:
      written.append(plot_confusion(test["confusion_matrix"], results.get("label_names", []),
                                    out_dir / "confusion_matrix.png"))
  return written
