r"""Command line: `flaxnets train | lr_find | eval | predict | generate | plot | prepare`.

    flaxnets train                                    # SimpleCNN on digits
    flaxnets train --config experiments/configs/mnist1d_conv.py --config.seed=1 \
        --workdir runs/mnist1d
    flaxnets lr_find --config experiments/configs/mnist1d_conv.py [--plot lr.png]
    flaxnets eval runs/mnist1d [--split test] [--step best]
    flaxnets predict runs/mnist1d INPUT...            # a classifier: images, .npy/.npz or text
    flaxnets generate runs/shakespeare "ROMEO:" [--length 200] [--temperature 0.8]
    flaxnets plot runs/mnist1d                        # PNG curves and confusion matrix
    flaxnets prepare tfds:mnist [--data_dir DIR]

`flaxnets COMMAND --help` lists a command's flags. A bad value, a missing file or a
damaged checkpoint ends a command with one line on stderr and exit status 2; set
FLAXNETS_TRACEBACK=1 for the full traceback.
"""
from __future__ import annotations

import json
import os
import pathlib
import sys
from typing import Any

from absl import flags

USAGE = __doc__


class UsageError(Exception):
  """A command line that does not parse: reported as one line, exit status 2."""


def _parse(argv: list[str], fv: flags.FlagValues, name: str, usage: str) -> list[str] | None:
  """Parse `argv` into fv and return the positional arguments; None after printing --help."""
  flag_part = argv[:argv.index("--")] if "--" in argv else argv  # after --: inputs only
  if any(a in ("-h", "--help", "-help", "--helpfull") for a in flag_part):
    lines = fv.get_help(include_special_flags=False).splitlines()
    flag_help = "\n".join(line for line in lines if line.startswith(" ")).rstrip()
    print(f"usage: {usage}\n" + (f"\nflags:\n{flag_help}" if flag_help else ""))
    return None
  try:
    return fv([f"flaxnets {name}"] + argv)[1:]
  except flags.Error as e:
    raise UsageError(f"{e}; usage: {usage}") from None


_BOOL_WORDS = ("true", "false", "1", "0", "yes", "no")


def _load_config_error(argv: list[str], e: Exception) -> str:
  """One line for a config file that fails to load (syntax error, no get_config, ...)."""
  path = next((a.split("=", 1)[1] if "=" in a else argv[i + 1]
               for i, a in enumerate(argv)
               if (a == "--config" and i + 1 < len(argv)) or a.startswith("--config=")),
              "the default config")
  message = " ".join(str(e).split())  # one line
  return f"config file {path} did not load: {type(e).__name__}: {message}"


def _with_config(argv: list[str], name: str, usage: str, define: Any) -> tuple | None:
  """Parse a command that takes a task config (`--config FILE --config.KEY=VALUE`) and
  the flags `define(fv)` adds: (flag values, the config flag), or None after --help."""
  from ml_collections import config_flags
  fv = flags.FlagValues()
  default = str(pathlib.Path(__file__).with_name("config.py"))
  # It reads the --config.A.B=V overrides of sys.argv and walks their parents now: those of
  # `argv` (main(argv) called from Python had taken none of them, "Unknown command line flag").
  saved_argv, sys.argv = sys.argv, [sys.argv[0] if sys.argv else "flaxnets", name, *argv]
  try:
    config_flag = config_flags.DEFINE_config_file(
        "config", default, "task config file (a .py with get_config())", flag_values=fv,
        lock_config=False, accept_new_attributes=True)
  except (KeyError, TypeError) as e:  # TypeError: a path through a leaf (a str's "key")
    overrides = [a for a in argv if a.startswith("--config.")]
    text = str(e.args[0] if e.args else e)
    key = text.strip("'\"").split("'")[0].split()[0]
    arg = next((a for a in overrides
                if isinstance(e, KeyError) and f".{key}" in a.split("=")[0]), None)
    if arg is None:  # name the override whose path does not lead through config sections
      from flaxnets import config as config_lib
      ref = config_lib.get_config()
      for a in overrides:
        node = ref
        for part in a.split("=")[0][len("--config."):].split(".")[:-1]:
          node = node.get(part) if hasattr(node, "get") else None
          if not hasattr(node, "keys"):
            break
        if not hasattr(node, "keys"):
          arg = a
          break
      arg = arg or "--config.*"
      raise UsageError(f"{arg}: its path goes through a value that is not a config section "
                       f"({text}); usage: {usage}") from None
    raise UsageError(f"{arg}: the config has no key {key!r} on that path (only the last "
                     f"key of an override may be new); usage: {usage}") from None
  finally:
    sys.argv = saved_argv
  define(fv)
  # config_flags executes a config file into sys.modules["config_config"], reusing the
  # module there (the default config's, loaded at definition): a file without
  # get_config() would silently run the default's get_config().
  sys.modules.pop("config_config", None)
  try:
    rest = _parse(argv, fv, name, usage)
  except UsageError:
    raise
  except Exception as e:  # the config file is executed while the flags parse
    if os.environ.get("FLAXNETS_TRACEBACK"):
      raise
    raise UsageError(_load_config_error(argv, e)) from None
  if rest is None:
    return None
  try:  # a config file that cannot be read parses into a placeholder that raises on use
    config_flag.value.keys()
  except OSError as e:
    cause = e.__cause__ or e
    raise UsageError(_load_config_error(argv, cause)) from None
  except Exception as e:  # get_config() returned None (absl: "Unexpected None value")
    raise UsageError(_load_config_error(argv, e)) from None
  if rest:
    at = argv.index(rest[0]) if rest[0] in argv else 0
    before = argv[at - 1].lstrip("-") if at > 0 else ""
    if (not before.startswith("config.") and before in fv and
        getattr(fv[before], "boolean", False) and rest[0].lower() in _BOOL_WORDS):
      hint = f" (a boolean flag takes --{before}={rest[0]}, or --{before} / --no{before})"
    elif before.startswith("config.") and "=" not in before and rest[0].lower() in _BOOL_WORDS:
      hint = f" (a boolean config value takes --{before}={rest[0]}; --{before} alone sets True)"
    elif "workdir" in fv and fv.workdir is None:
      hint = f" (did you mean --workdir {rest[0]}?)"
    else:
      hint = ""
    raise UsageError(f"unexpected argument(s) {rest}: {name} takes only flags{hint}; "
                     f"usage: {usage}")
  return fv, config_flag


def _train_flags(fv: flags.FlagValues) -> None:
  flags.DEFINE_string("workdir", None, "directory for checkpoints, metrics and results",
                      flag_values=fv)
  flags.DEFINE_boolean("restart", False, "delete the checkpoint steps in workdir and start over",
                       flag_values=fv)
  flags.DEFINE_boolean("distributed", False, "call jax.distributed.initialize() first "
                       "(multi-host; coordinator from JAX's environment variables or "
                       "--coordinator)", flag_values=fv)
  flags.DEFINE_string("coordinator", None, "host:port of process 0 for --distributed",
                      flag_values=fv)
  flags.DEFINE_integer("num_processes", None, "process count for --distributed", flag_values=fv)
  flags.DEFINE_integer("process_id", None, "this process's index for --distributed",
                       flag_values=fv)
  flags.DEFINE_float("init_timeout", 60.0, "seconds to wait for the coordinator",
                     flag_values=fv)


def _train(argv: list[str]) -> int:
  usage = "flaxnets train [--config FILE] [--config.KEY=VALUE ...] [--workdir DIR]"
  parsed = _with_config(argv, "train", usage, _train_flags)
  if parsed is None:
    return 0
  fv, config_flag = parsed
  if fv.distributed:
    from flaxnets.training.distributed import DistributedInitError, initialize
    try:
      initialize(fv.coordinator, fv.num_processes, fv.process_id, fv.init_timeout)
    except DistributedInitError as e:
      print(f"flaxnets train: {e}", file=sys.stderr)
      return 2
  from flaxnets.training import loop
  loop.train(config_flag.value, fv.workdir, restart=fv.restart)
  return 0


def _lr_find_flags(fv: flags.FlagValues) -> None:
  flags.DEFINE_float("start_lr", 1e-7, "the sweep's first learning rate", flag_values=fv)
  flags.DEFINE_float("end_lr", 10.0, "the sweep's last learning rate", flag_values=fv)
  flags.DEFINE_integer("num_steps", 100, "batches at most", flag_values=fv)
  flags.DEFINE_string("plot", None, "write the loss against the rate to this PNG file",
                      flag_values=fv)


def _lr_find(argv: list[str]) -> int:
  usage = ("flaxnets lr_find [--config FILE] [--config.KEY=VALUE ...] [--start_lr 1e-7] "
           "[--end_lr 10] [--num_steps 100] [--plot PNG]")
  parsed = _with_config(argv, "lr_find", usage, _lr_find_flags)
  if parsed is None:
    return 0
  fv, config_flag = parsed
  if fv.plot and not fv.plot.lower().endswith(".png"):  # known before the sweep, not after
    raise UsageError(f"--plot={fv.plot!r}: expected a .png file name; usage: {usage}")
  from flaxnets.training.lr_find import lr_find
  result = lr_find(config_flag.value, start_lr=fv.start_lr, end_lr=fv.end_lr,
                   num_steps=fv.num_steps)
  n = len(result.losses)
  print(f"{'step':>5}  {'learning rate':>13}  {'loss':>8}  {'smoothed':>8}")
  for i in sorted(set(range(0, n, max(1, n // 20))) | {n - 1}):
    print(f"{i + 1:5d}  {result.learning_rates[i]:13.3g}  {result.losses[i]:8.4f}  "
          f"{result.smoothed_losses[i]:8.4f}")
  if result.stopped_early:
    print(f"stopped after {n} steps: the loss diverged")
  if result.suggestion is None and result.min_loss_lr is None:
    print(f"no suggestion: {n} steps ran, too few to read past the first 10 (a lower "
          "--start_lr, or more --num_steps)")
  elif result.suggestion is None:
    print("no suggestion: the loss did not fall by 5% over the sweep (try other --start_lr "
          "/ --end_lr, or more --num_steps)")
  else:
    print(f"suggested learning rate: {result.suggestion:.3g} (--config.optimizer."
          f"learning_rate={result.suggestion:.3g}); lowest loss at {result.min_loss_lr:.3g}")
  if fv.plot:
    print(result.plot(fv.plot))
  return 0


def _eval(argv: list[str]) -> int:
  fv = flags.FlagValues()
  flags.DEFINE_string("split", "test", "train | val | test", flag_values=fv)
  flags.DEFINE_string("step", "best", "best | latest | a step number", flag_values=fv)
  usage = "flaxnets eval WORKDIR [--split test] [--step best]"
  rest = _parse(argv, fv, "eval", usage)
  if rest is None:
    return 0
  if len(rest) != 1:
    raise UsageError(f"expected one WORKDIR, got {rest}; usage: {usage}")
  from flaxnets import inference
  predictor = inference.load(rest[0], step=fv.step)
  metrics = predictor.evaluate(fv.split)
  print(json.dumps({k: v for k, v in metrics.items() if k != "confusion_matrix"}, indent=2))
  return 0


def _predict(argv: list[str]) -> int:
  fv = flags.FlagValues()
  flags.DEFINE_string("step", "best", "best | latest | a step number", flag_values=fv)
  flags.DEFINE_integer("top", 3, "probabilities to print per input", flag_values=fv)
  usage = ("flaxnets predict WORKDIR INPUT... (image files, .npy arrays, .npz files of "
           "'inputs' and 'seq_lengths', or text)")
  rest = _parse(argv, fv, "predict", usage)
  if rest is None:
    return 0
  if len(rest) < 2:
    raise UsageError(f"expected WORKDIR and at least one INPUT, got {rest}; usage: {usage}")
  from flaxnets import inference
  predictor = inference.load(rest[0], step=fv.step)
  for line in predictor.describe(rest[1:], top=fv.top):
    print(line)
  return 0


def _generate(argv: list[str]) -> int:
  fv = flags.FlagValues()
  flags.DEFINE_string("step", "best", "best | latest | a step number", flag_values=fv)
  flags.DEFINE_integer("length", 200, "tokens to generate after the prompt", flag_values=fv)
  flags.DEFINE_float("temperature", 1.0, "< 1 sharper, > 1 more varied", flag_values=fv)
  flags.DEFINE_integer("seed", 0, "random seed of the draws", flag_values=fv)
  usage = "flaxnets generate WORKDIR PROMPT [--length 200] [--temperature 1.0] [--seed 0]"
  rest = _parse(argv, fv, "generate", usage)
  if rest is None:
    return 0
  if len(rest) != 2:
    raise UsageError(f"expected WORKDIR and one PROMPT (quote it), got {rest}; usage: {usage}")
  from flaxnets import inference
  predictor = inference.load(rest[0], step=fv.step)
  print(predictor.generate(rest[1], fv.length, temperature=fv.temperature, seed=fv.seed))
  return 0


def _plot(argv: list[str]) -> int:
  fv = flags.FlagValues()
  usage = "flaxnets plot WORKDIR"
  rest = _parse(argv, fv, "plot", usage)
  if rest is None:
    return 0
  if len(rest) != 1:
    raise UsageError(f"expected one WORKDIR, got {rest}; usage: {usage}")
  from flaxnets import plots
  for path in plots.plot_workdir(rest[0]):
    print(path)
  return 0


def _prepare(argv: list[str]) -> int:
  fv = flags.FlagValues()
  flags.DEFINE_string("data_dir", None, "TFDS data_dir", flag_values=fv)
  usage = "flaxnets prepare tfds:NAME[:VERSION] [--data_dir DIR]"
  rest = _parse(argv, fv, "prepare", usage)
  if rest is None:
    return 0
  if len(rest) != 1 or not rest[0].startswith("tfds:") or rest[0] == "tfds:":
    raise UsageError(f"expected one tfds:NAME, got {rest}; usage: {usage}")
  from flaxnets.data import tfds_source
  tfds_source.prepare_tfds(rest[0][len("tfds:"):], data_dir=fv.data_dir)
  return 0


COMMANDS = {"train": _train, "lr_find": _lr_find, "eval": _eval, "predict": _predict,
            "generate": _generate, "plot": _plot, "prepare": _prepare}


def main(argv: list[str] | None = None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  if not argv or argv[0] in ("-h", "--help", "help"):
    try:
      print(USAGE)
      sys.stdout.flush()
    except BrokenPipeError:  # `flaxnets --help | head -1`
      os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
      return 141
    return 0 if argv else 2
  command = COMMANDS.get(argv[0])
  if command is None:
    print(f"flaxnets: unknown command {argv[0]!r}; expected one of {sorted(COMMANDS)}\n{USAGE}",
          file=sys.stderr)
    return 2
  from flaxnets.training.checkpoint import CheckpointError
  try:
    return command(argv[1:])
  except UsageError as e:
    print(f"flaxnets {argv[0]}: {e}", file=sys.stderr)
    return 2
  except BrokenPipeError:  # the reader went away (`flaxnets eval RUN | head -3`): not an error
    # Python would report it again flushing stdout at exit; point stdout at nothing first
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 141  # 128 + SIGPIPE, as a shell tool killed by the signal reports
  except (ValueError, OSError, ImportError, CheckpointError, FloatingPointError) as e:
    # Bad input (ConfigError is a ValueError), missing files, damaged checkpoints, a
    # diverged run: one line naming the problem. FLAXNETS_TRACEBACK=1 shows where.
    if os.environ.get("FLAXNETS_TRACEBACK"):
      raise
    print(f"flaxnets {argv[0]}: {e}", file=sys.stderr)
    return 2


if __name__ == "__main__":
  sys.exit(main())
