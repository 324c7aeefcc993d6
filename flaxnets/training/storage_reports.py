"""A failed checkpoint write or read as flaxnets' one error, not a thousand lines around it.

flaxnets raises a failed save (a full disk, a file size limit) as one CheckpointError
naming the workdir, and a damaged step as one naming the step. Around that error, Orbax
and TensorStore report the same failure again and again:
  * Orbax logs it with its traceback from each of its threads (absl ERROR records);
  * TensorStore's threads, whose callbacks find Orbax's event loop closed, print
    "Exception ignored ... RuntimeError: Event loop is closed" tracebacks through
    sys.unraisablehook, for a while after the error;
  * asyncio logs "Future exception was never retrieved" for each of a failed save's other
    writes, when they are collected (often at exit).
In a notebook that was about a thousand lines of tracebacks for one full disk.
`install()`, called on flaxnets' first use of Orbax, keeps Orbax's records of a failed save
(those naming a save's temporary folder) as their one-line messages and drops the other two
kinds, for the rest of the process (they come after the error). Other reports, a user's own
included, are left as they are; FLAXNETS_TRACEBACK=1, read at each report, keeps everything.
"""
from __future__ import annotations

import logging
import os
import sys
import threading
from typing import Any

_lock = threading.Lock()
_installed = False
_SAVE_FOLDER = ".orbax-checkpoint-tmp"  # Orbax writes a step there until it commits it


def _keep_all() -> bool:
  return bool(os.environ.get("FLAXNETS_TRACEBACK"))


class FailedSaveOneLine(logging.Filter):
  """Orbax's records of a failed save as their one-line message (its traceback dropped)."""

  def filter(self, record: logging.LogRecord) -> bool:
    if (record.exc_info and f"{os.sep}orbax{os.sep}" in record.pathname
        and _SAVE_FOLDER in str(record.exc_info[1]) and not _keep_all()):
      record.exc_info, record.exc_text, record.stack_info = None, None, None
    return True


class UnretrievedSaveErrors(logging.Filter):
  """Drops asyncio's "... exception was never retrieved" for the writes of a failed save:
  once one write fails Orbax stops awaiting the others, and each of their futures logs the
  same error when it is collected. They name the save's temporary folder; other futures'
  errors are kept."""

  def filter(self, record: logging.LogRecord) -> bool:
    exc = record.exc_info[1] if record.exc_info else None
    return not (exc is not None and "exception was never retrieved" in str(record.msg)
                and _SAVE_FOLDER in str(exc) and not _keep_all())


def closed_loop_report(unraisable: Any) -> bool:
  """TensorStore's report of a callback into Orbax's closed event loop: raised in
  `call_soon_threadsafe`, called from TensorStore's native thread, with no object named
  (a user's own closed-loop error names its __del__ or callback, and is kept)."""
  value, tb = unraisable.exc_value, unraisable.exc_traceback
  return (isinstance(value, RuntimeError) and str(value) == "Event loop is closed"
          and unraisable.object is None and tb is not None
          and tb.tb_frame.f_code.co_name == "call_soon_threadsafe")


def install() -> None:
  """Install the filters once, for the rest of the process (see the module docstring)."""
  global _installed
  with _lock:
    if _installed:
      return
    _installed = True
    hook = sys.unraisablehook

    def unraisablehook(unraisable: Any) -> None:  # TensorStore uses PyErr_WriteUnraisable
      if _keep_all() or not closed_loop_report(unraisable):
        hook(unraisable)

    sys.unraisablehook = unraisablehook
    logging.getLogger("absl").addFilter(FailedSaveOneLine())
    logging.getLogger("asyncio").addFilter(UnretrievedSaveErrors())
