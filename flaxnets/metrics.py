"""Metrics from the summed step outputs and predictions: loss, accuracy, top-5, F1.

Steps return sums over real (unmasked) rows, already reduced across devices; these
functions turn accumulated sums and host-side predictions into the reported numbers.
"""
from __future__ import annotations

from typing import Any

import numpy as np


def summarize(sums: dict[str, Any]) -> dict[str, float]:
  """{'loss_sum', 'correct', 'count'[, 'top5_correct']} -> {'loss', 'accuracy'[, 'top5']}."""
  count = float(sums["count"])
  if count <= 0:
    raise ValueError("no examples were evaluated (count 0)")
  out = {"loss": float(sums["loss_sum"]) / count, "accuracy": float(sums["correct"]) / count,
         "count": int(round(count))}
  if "top5_correct" in sums:
    out["top5_accuracy"] = float(sums["top5_correct"]) / count
  return out


def confusion_matrix(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> np.ndarray:
  """[num_classes, num_classes] counts; rows are true labels, columns predictions."""
  cm = np.zeros((num_classes, num_classes), np.int64)
  np.add.at(cm, (np.asarray(labels, np.int64), np.asarray(preds, np.int64)), 1)
  return cm


def f1_scores(cm: np.ndarray) -> dict[str, float]:
  """Macro F1 over the classes that occur as labels or predictions (as scikit-learn's
  average='macro'), and per-class F1, from a confusion matrix."""
  tp = np.diag(cm).astype(np.float64)
  precision = tp / np.maximum(cm.sum(0), 1)
  recall = tp / np.maximum(cm.sum(1), 1)
  f1 = np.where(precision + recall > 0,
                2 * precision * recall / np.maximum(precision + recall, 1e-12), 0.0)
  # A class only predicted scores 0 and counts: leaving it out had inflated the mean.
  present = (cm.sum(0) + cm.sum(1)) > 0
  return {"macro_f1": float(f1[present].mean()) if present.any() else 0.0,
          "per_class_f1": [float(v) for v in f1]}
