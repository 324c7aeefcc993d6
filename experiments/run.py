"""Run a task config over several seeds; print a table and write experiments/results/<task>.json.

    python experiments/run.py experiments/configs/mnist1d_gru.py --seeds 0 1 2
    python experiments/run.py experiments/configs/sst2_bilstm.py --seeds 0 --set num_epochs=3

Each seed is a fresh `flaxnets.train(config)` in this process; its wall time counts
from the call (data loading and compilation included), so the first seed also pays
for JAX's start-up compilation caches being cold.
"""
from __future__ import annotations

import argparse
import ast
import importlib.util
import json
import pathlib
import platform
import statistics
import sys
import time

RESULTS = pathlib.Path(__file__).resolve().parent / "results"


def load_config(path: str):
  spec = importlib.util.spec_from_file_location(pathlib.Path(path).stem, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def apply_overrides(config, overrides: list[str]) -> None:
  for item in overrides:
    key, _, raw = item.partition("=")
    try:
      value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
      value = raw
    node = config
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("config")
  parser.add_argument("--seeds", type=int, nargs="+", default=[0])
  parser.add_argument("--set", nargs="*", default=[], help="key=value config overrides")
  parser.add_argument("--name", default=None, help="result file name (default: config stem)")
  parser.add_argument("--workdir", default=None, help="keep each seed's workdir under here")
  args = parser.parse_args(argv)

  import jax
  import flaxnets
  name = args.name or pathlib.Path(args.config).stem
  runs = []
  for seed in args.seeds:
    config = load_config(args.config)
    apply_overrides(config, args.set)
    config.seed = seed
    config.progress = False
    workdir = None if args.workdir is None else str(pathlib.Path(args.workdir) / f"{name}_seed{seed}")
    start = time.time()
    result = flaxnets.train(config, workdir=workdir, restart=True)
    wall = time.time() - start
    best_val = max((h["accuracy"] for h in result.history if h["split"] == "val"), default=None)
    best_val_loss = min((h["loss"] for h in result.history if h["split"] == "val"), default=None)
    runs.append({"seed": seed, "wall_time_s": wall, "train_time_s": result.train_time_s,
                 "epochs": sum(1 for h in result.history if h["split"] == "train"),
                 "final_val": result.val_metrics, "best_val_accuracy": best_val,
                 "best_val_loss": best_val_loss,
                 "test": None if result.test_metrics is None else {
                     k: v for k, v in result.test_metrics.items() if k != "confusion_matrix"}})
    print(f"seed {seed}: test {runs[-1]['test'] and runs[-1]['test']['accuracy']}, "
          f"best val acc {best_val}, wall {wall:.1f} s", flush=True)

  def mean(key_fn):
    vals = [key_fn(r) for r in runs if key_fn(r) is not None]
    return statistics.mean(vals) if vals else None

  summary = {
      "task": name, "config_file": args.config, "overrides": args.set, "seeds": args.seeds,
      "command": "python experiments/run.py " + " ".join(sys.argv[1:] if argv is None else argv),
      "device": jax.devices()[0].device_kind, "backend": jax.default_backend(),
      "device_count": jax.device_count(), "host": platform.processor() or platform.machine(),
      "cpu_count": __import__("os").cpu_count(),
      "mean_test_accuracy": mean(lambda r: r["test"] and r["test"]["accuracy"]),
      "mean_best_val_accuracy": mean(lambda r: r["best_val_accuracy"]),
      "mean_final_val_accuracy": mean(lambda r: r["final_val"] and r["final_val"]["accuracy"]),
      "mean_best_val_loss": mean(lambda r: r["best_val_loss"]),
      "max_wall_time_s": max(r["wall_time_s"] for r in runs),
      "mean_wall_time_s": mean(lambda r: r["wall_time_s"]),
      "runs": runs, "flaxnets_version": flaxnets.__version__,
      "date": time.strftime("%Y-%m-%d")}
  RESULTS.mkdir(parents=True, exist_ok=True)
  out = RESULTS / f"{name}.json"
  out.write_text(json.dumps(summary, indent=2))
  print(f"\n{'task':<22} {'seeds':>5} {'test acc':>9} {'best val':>9} {'max wall s':>10}")
  fmt = lambda v: "-" if v is None else f"{v:.4f}"
  print(f"{name:<22} {len(runs):>5} {fmt(summary['mean_test_accuracy']):>9} "
        f"{fmt(summary['mean_best_val_accuracy']):>9} {summary['max_wall_time_s']:>10.1f}")
  print(f"wrote {out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
