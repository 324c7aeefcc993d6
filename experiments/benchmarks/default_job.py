"""Wall clock of the default job, `flaxnets train`, from the command's start to its exit.

    python experiments/benchmarks/default_job.py --runs 3

Each run is a fresh process (imports, data, compilation and training included) with a
fresh workdir; test accuracy is read from that run's results.json. Prints a table and
writes experiments/results/default_job.json. Target (issue 2): >= 98% test accuracy in
<= 15 s on a 2-core CPU.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

RESULTS = pathlib.Path(__file__).resolve().parents[1] / "results"


def main() -> int:
  from common import positive_int  # this folder is on sys.path when run as a file
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--runs", type=positive_int, default=3)
  args = parser.parse_args()
  exe = shutil.which("flaxnets") or f"{sys.executable} -m flaxnets.cli"
  rows = []
  for i in range(args.runs):
    workdir = tempfile.mkdtemp(prefix="flaxnets_default_job_")
    start = time.perf_counter()
    out = subprocess.run(exe.split() + ["train", f"--workdir={workdir}"], capture_output=True,
                         text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    wall = time.perf_counter() - start
    if out.returncode != 0:
      print(out.stderr[-3000:], file=sys.stderr)
      return out.returncode
    results = json.loads((pathlib.Path(workdir) / "results.json").read_text())
    rows.append({"run": i, "wall_s": wall, "test_accuracy": results["test"]["accuracy"],
                 "train_time_s": results["train_time_s"],
                 "in_process_s": results["wall_time_s"], "device": results["device_kind"],
                 "devices": len(results["devices"])})
    shutil.rmtree(workdir, ignore_errors=True)
  load = os.getloadavg()[0]
  print(f"{'run':>3} {'wall s':>7} {'in train() s':>13} {'training s':>11} {'test acc':>9}")
  for r in rows:
    print(f"{r['run']:>3} {r['wall_s']:>7.2f} {r['in_process_s']:>13.2f} "
          f"{r['train_time_s']:>11.2f} {r['test_accuracy']:>9.4f}")
  summary = {
      "benchmark": "default_job", "command": "python experiments/benchmarks/default_job.py "
      f"--runs {args.runs}", "what": "`flaxnets train` (SimpleCNN on digits), whole process",
      "median_wall_s": statistics.median(r["wall_s"] for r in rows),
      "min_test_accuracy": min(r["test_accuracy"] for r in rows),
      "target": {"wall_s": 15.0, "test_accuracy": 0.98},
      "cpu_count": os.cpu_count(), "load_average_1min_after": load, "rows": rows,
      "date": time.strftime("%Y-%m-%d")}
  print(f"median wall {summary['median_wall_s']:.2f} s; min test accuracy "
        f"{summary['min_test_accuracy']:.4f}; {os.cpu_count()} CPUs, load average {load:.1f}")
  RESULTS.mkdir(parents=True, exist_ok=True)
  (RESULTS / "default_job.json").write_text(json.dumps(summary, indent=2))
  return 0


if __name__ == "__main__":
  sys.exit(main())
