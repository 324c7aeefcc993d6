"""Helpers shared by the CPU benchmark scripts in this folder (run them as files:
`python experiments/benchmarks/<script>.py`, which puts this folder on sys.path)."""
from __future__ import annotations

import json
import pathlib
import statistics
import time

REPO = pathlib.Path(__file__).resolve().parents[2]


def positive_int(text: str) -> int:
  """argparse type of counts and sizes: --runs 0 failed deep inside (no median of nothing)."""
  import argparse
  try:
    value = int(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f"{text!r}: expected an integer >= 1") from None
  if value < 1:
    raise argparse.ArgumentTypeError(f"{value}: expected an integer >= 1")
  return value
RESULTS = REPO / "experiments" / "results"


def interleaved(calls: dict, reps: int, rounds: int = 10) -> dict[str, dict]:
  """name -> {median_ms, min_round_median_ms, round_medians_ms}: `rounds` rounds, each
  timing every call `reps` times back to back (every call run once before, to compile
  and warm caches); median over all timed calls, and the fastest round's median (a
  load spike from other jobs on the machine lifts a round, never lowers it)."""
  for fn in calls.values():
    fn()  # compile, warm caches
  times = {name: [] for name in calls}
  round_medians = {name: [] for name in calls}
  for _ in range(rounds):
    for name, fn in calls.items():
      ts = []
      for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(1e3 * (time.perf_counter() - t0))
      times[name] += ts
      round_medians[name].append(statistics.median(ts))
  return {name: {"median_ms": statistics.median(times[name]),
                 "min_round_median_ms": min(round_medians[name]),
                 "round_medians_ms": round_medians[name]} for name in calls}


def write_result(result: dict, out: str | None, default_name: str) -> pathlib.Path:
  """Write `result` as JSON to `out`, or to experiments/results/<default_name>."""
  path = pathlib.Path(out) if out else RESULTS / default_name
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(result, indent=2))
  print(f"\nwrote {path}")
  return path
