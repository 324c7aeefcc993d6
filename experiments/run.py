"""Run a task config over several seeds; print a table and write experiments/results/<task>.json.

    python experiments/run.py experiments/configs/mnist1d_gru.py --seeds 0 1 2
    python experiments/run.py experiments/configs/sst2_bilstm.py --seeds 0 --set num_epochs=3 \
        --name sst2_bilstm_3epochs

A results file of other settings (overrides, seeds or config) is not replaced without
--force: the README's results table is built from these files.

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
import re
import shlex
import statistics
import sys
import time

RESULTS = pathlib.Path(__file__).resolve().parent / "results"


def load_config(path: str):
  spec = importlib.util.spec_from_file_location(pathlib.Path(path).stem, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


_OWN_FLAGS = {"seed": "--seeds", "progress": "(always off here)"}


def parse_value(raw: str):
  """A --set value: a Python literal, true/false as the CLI takes them, else a string."""
  if raw.lower() in ("true", "false"):
    return raw.lower() == "true"
  try:
    return ast.literal_eval(raw)
  except (ValueError, SyntaxError):
    return raw


def apply_overrides(config, overrides: list[str]) -> None:
  """key=value overrides; ValueError naming the item for a malformed or unknown key."""
  for item in overrides:
    key, eq, raw = item.partition("=")
    if not eq or not key:
      raise ValueError(f"--set {item!r}: expected key=value, e.g. num_epochs=3")
    if key in _OWN_FLAGS:
      raise ValueError(f"--set {item!r}: {key} is set by run.py itself; use {_OWN_FLAGS[key]}")
    node = config
    *parents, leaf = key.split(".")
    for i, p in enumerate(parents):
      if p not in node:
        raise ValueError(f"--set {item!r}: the config has no key "
                         f"{'.'.join(parents[:i + 1])!r}")
      node = node[p]
    value = parse_value(raw)
    if (leaf in node and isinstance(node[leaf], str) and isinstance(value, (int, float))
        and not isinstance(value, bool)):
      value = raw  # a text setting given digits: init.step=1200
    try:
      node[leaf] = value
    except (TypeError, ValueError) as e:
      raise ValueError(f"--set {item!r}: {e}") from None


def _same_file(recorded: str | None, given: str) -> bool:
  """A recorded config path (relative to the repository root, where runs start) is the
  given one (relative to the working directory)?"""
  if recorded is None:
    return False
  root = RESULTS.parents[1]
  where = pathlib.Path(recorded) if pathlib.Path(recorded).is_absolute() else root / recorded
  return where.resolve() == pathlib.Path(given).resolve()


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("config")
  parser.add_argument("--seeds", type=int, nargs="+", default=[0])
  parser.add_argument("--set", nargs="*", action="extend", default=[],
                      help="key=value config overrides (several after one --set, or repeated)")
  parser.add_argument("--name", default=None, help="result file name (default: config stem)")
  parser.add_argument("--force", action="store_true",
                      help="replace a results file recorded with other settings")
  parser.add_argument("--workdir", default=None, help="keep each seed's workdir under here")
  args = parser.parse_args(argv)
  if not pathlib.Path(args.config).is_file():
    parser.error(f"config file {args.config!r} does not exist")
  name = args.name or pathlib.Path(args.config).stem
  if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", name):
    parser.error(f"--name {name!r}: expected a file name of letters, digits, '_', '-' and "
                 "'.' (it becomes experiments/results/<name>.json)")
  out = RESULTS / f"{name}.json"
  if out.is_file() and not args.force:
    old = json.loads(out.read_text())
    mine = {"config_file": args.config, "overrides": args.set, "seeds": args.seeds}
    same_file = _same_file(old.get("config_file"), args.config)
    differ = [k for k in mine if old.get(k) != mine[k] and not (k == "config_file" and same_file)]
    if differ:
      recorded = ", ".join(f"{k} {old.get(k)!r}" for k in differ)
      parser.error(f"{out} holds a run with other settings ({recorded}); pass --name NEW "
                   "to keep both, or --force to replace it")

  import flaxnets
  from flaxnets.config import ConfigError
  try:  # every seed's config, before any trains
    for seed in args.seeds:
      config = load_config(args.config)
      apply_overrides(config, args.set)
      config.seed = seed
      flaxnets.validate(config)
  except (ValueError, ConfigError) as e:
    parser.error(str(e))

  import jax
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
      # shell-quoted: the results tables print it as the command that reproduces the row
      "command": "python experiments/run.py " + shlex.join(sys.argv[1:] if argv is None
                                                           else argv),
      "device": jax.devices()[0].device_kind, "backend": jax.default_backend(),
      "device_count": jax.device_count(), "host": platform.processor() or platform.machine(),
      "cpu_count": __import__("os").cpu_count(),
      "mean_test_accuracy": mean(lambda r: r["test"] and r["test"]["accuracy"]),
      "mean_best_val_accuracy": mean(lambda r: r["best_val_accuracy"]),
      "mean_final_val_accuracy": mean(lambda r: r["final_val"] and r["final_val"]["accuracy"]),
      "mean_final_val_macro_f1": mean(lambda r: (r["final_val"] or {}).get("macro_f1")),
      "mean_best_val_loss": mean(lambda r: r["best_val_loss"]),
      "max_wall_time_s": max(r["wall_time_s"] for r in runs),
      "mean_wall_time_s": mean(lambda r: r["wall_time_s"]),
      "runs": runs, "flaxnets_version": flaxnets.__version__,
      "date": time.strftime("%Y-%m-%d")}
  RESULTS.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(summary, indent=2))
  print(f"\n{'task':<22} {'seeds':>5} {'test acc':>9} {'best val':>9} {'max wall s':>10}")
  fmt = lambda v: "-" if v is None else f"{v:.4f}"
  print(f"{name:<22} {len(runs):>5} {fmt(summary['mean_test_accuracy']):>9} "
        f"{fmt(summary['mean_best_val_accuracy']):>9} {summary['max_wall_time_s']:>10.1f}")
  print(f"wrote {out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
