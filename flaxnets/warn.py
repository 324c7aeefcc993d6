"""Warnings attributed to the user's line, not to flaxnets' own.

Python shows a warning once per place it is attributed to (its default filter), so one
attributed to a line inside flaxnets was shown for the first call of a session only: a
notebook that trained again on the same data heard nothing.
"""
from __future__ import annotations

import os
import sys
import warnings

_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep


def warn(message: str, category: type[Warning] = UserWarning) -> None:
  """warnings.warn at the first frame outside the flaxnets package: the user's call."""
  level, frame = 2, sys._getframe(1)
  while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE):
    frame, level = frame.f_back, level + 1
  warnings.warn(message, category, stacklevel=level)
