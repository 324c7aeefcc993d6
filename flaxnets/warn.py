"""Warnings attributed to the user's line, not to flaxnets' own, and given at every call.

Python's default filter shows a warning once per place it is attributed to, remembered in
that module's `__warningregistry__`: one attributed to a line inside flaxnets was shown for
the first call of a session only (a notebook that trained again on the same data heard
nothing), and one attributed to the user's line for the first pass of a loop only (two
folds or two models, one warning). Each flaxnets warning is about the call that gives it,
so none is remembered; the user's own filters ('once', 'ignore', 'error') still apply.
"""
from __future__ import annotations

import os
import sys
import warnings

_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep


def warn(message: str, category: type[Warning] = UserWarning) -> None:
  """Warn, attributed to the first frame outside the flaxnets package: the user's call."""
  frame = sys._getframe(1)
  while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE):
    frame = frame.f_back
  if frame is None:  # called from flaxnets' own thread: nothing of the user's to name
    warnings.warn(message, category, stacklevel=2)
    return
  warnings.warn_explicit(message, category, frame.f_code.co_filename, frame.f_lineno,
                         module=frame.f_globals.get("__name__"), registry=None,
                         module_globals=frame.f_globals)
