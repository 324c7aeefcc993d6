"""Benchmark: one recurrent layer's train step, flaxnets vs stock Flax vs PyTorch.

A train step is forward + backward + SGD update of one LSTM or GRU layer on random
data, loss = mean((outputs - targets)^2) over every output step:

  flaxnets  RNNLayer(cell, H) (fused backward, the default; also the unroll sweep,
            the other hoisting choice and fused_backward=False, the autodiff path),
            optax.sgd, one jax.jit with params and optimizer state donated;
  flax      stock nn.RNN(nn.OptimizedLSTMCell | nn.GRUCell), same step;
  torch     torch.nn.LSTM | GRU (cuDNN on GPU), loss.backward(), torch.optim.SGD.
            Runs in a separate process (no JAX thread pools beside it), driven in
            lock-step with this one, so each round times every variant back to back.

Timing: `--rounds` rounds; in each, every variant runs `--reps` steps, each timed
on its own (wall clock after block_until_ready / cuda.synchronize, or process CPU
time with --clock cpu). Reported per variant: median and min over all timed steps,
and `torch/this`, the median over rounds of torch's round median divided by the
variant's (a ratio of neighbours in time, which survives a loaded machine far
better than absolute times; > 1 means faster than torch).

CPU (--threads both, the CPU default) runs everything twice in subprocesses: at each
framework's default threads, and on one core each: the JAX process and the torch
process it starts are pinned to one CPU (os.sched_setaffinity) and torch also gets
torch.set_num_threads(1). XLA has no working switch for this: with
XLA_FLAGS=--xla_cpu_multi_thread_eigen=false (what this script used before
2026-11-27 evening) XLA:CPU still used both cores (a 2048^3 matmul: 1.9 s of CPU
time in 1.0 s of wall time), so those "one thread" rows compared flaxnets on two
cores with torch on one.

  python experiments/benchmarks/rnn_speed.py                 # CPU: B32 T64 F128 H256, fp32
  python experiments/benchmarks/rnn_speed.py --preset gpu    # the issue's two GPU shapes, fp32+bf16
  python experiments/benchmarks/rnn_speed.py --tiny          # seconds: smoke test of the script
  python experiments/benchmarks/rnn_speed.py --shape 64 400 128 128 --cells lstm  # one shape

Writes experiments/results/rnn_speed_<backend>[_tiny][_B.._T.._F.._H..].json (or --out).
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[2]
RESULTS = REPO / "experiments" / "results"

# (cell, batch, time, features, hidden, dtypes)
PRESETS = {
    "cpu": [("lstm", 32, 64, 128, 256, ("float32",)), ("gru", 32, 64, 128, 256, ("float32",))],
    "gpu": [("lstm", 128, 256, 128, 512, ("float32", "bfloat16")),
            ("gru", 128, 256, 128, 512, ("float32", "bfloat16")),
            ("lstm", 64, 64, 300, 256, ("float32", "bfloat16")),
            ("gru", 64, 64, 300, 256, ("float32", "bfloat16"))],
    "tiny": [("lstm", 4, 8, 8, 16, ("float32",)), ("gru", 4, 8, 8, 16, ("float32",))],
}
# Issue 7's reference figures (ms per train step), for the table only.
REFERENCE_MS = {
    ("cpu", "lstm", 32, 64, 128, 256, "float32"): {"torch (issue)": 15.3, "stock flax (issue)": 23.4},
    ("cpu", "gru", 32, 64, 128, 256, "float32"): {"torch (issue)": 36.0, "stock flax (issue)": 23.9},
    ("gpu", "lstm", 128, 256, 128, 512, "float32"): {"cuDNN H200 (issue)": 11.2, "flax u8 (issue)": 11.8},
    ("gpu", "lstm", 128, 256, 128, 512, "bfloat16"): {"cuDNN H200 (issue)": 7.9, "flax u8 (issue)": 9.4},
    ("gpu", "gru", 128, 256, 128, 512, "float32"): {"cuDNN H200 (issue)": 12.9},
    ("gpu", "gru", 128, 256, 128, 512, "bfloat16"): {"cuDNN H200 (issue)": 10.0},
    ("gpu", "lstm", 64, 64, 300, 256, "float32"): {"cuDNN H200 (issue)": 4.2},
}


def parse_args(argv=None) -> argparse.Namespace:
  from common import positive_int  # this folder is on sys.path when run as a file
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--preset", choices=sorted(PRESETS), default=None,
                 help="shapes: cpu (default on CPU), gpu (default on GPU), tiny")
  p.add_argument("--tiny", action="store_true", help="smoke test: tiny shapes, 2 rounds")
  p.add_argument("--cells", nargs="*", default=None, help="only these cells (lstm gru)")
  p.add_argument("--shape", type=positive_int, nargs=4, default=None, metavar=("B", "T", "F", "H"),
                 help="one shape instead of the preset's (batch, time, features, hidden)")
  p.add_argument("--dtypes", nargs="*", default=None, choices=("float32", "bfloat16"),
                 help="instead of the preset's dtypes (with --shape: default float32)")
  p.add_argument("--unrolls", type=positive_int, nargs="*", default=None,
                 help="unroll sweep for flaxnets' fused path (default CPU 1 2 4 8 16, GPU 1 2 4 8 16)")
  p.add_argument("--segments", type=positive_int, nargs="*", default=None,
                 help="also run the default unroll at these segment counts "
                      "(default CPU 1, GPU 4; the default count is always run)")
  p.add_argument("--rounds", type=positive_int, default=None, help="default 15 (tiny 2)")
  p.add_argument("--reps", type=positive_int, default=3, help="timed steps per variant per round")
  p.add_argument("--threads", choices=("default", "1", "both"), default=None,
                 help="CPU threads of XLA and torch (default on CPU: both)")
  p.add_argument("--clock", choices=("wall", "cpu"), default="wall")
  p.add_argument("--no-torch", action="store_true")
  p.add_argument("--no-stock-flax", action="store_true")
  p.add_argument("--no-autodiff", action="store_true", help="skip the fused_backward=False variant")
  p.add_argument("--no-hoist-alt", action="store_true",
                 help="skip the variant with the other input-projection choice")
  p.add_argument("--lr", type=float, default=0.01)
  p.add_argument("--out", default=None)
  return p.parse_args(argv)


# ----------------------------------------------------------------------------- torch side


def torch_worker(conn, threads: int | None, device: str, clock: str) -> None:
  """Child process: builds torch models on request and times their train steps."""
  import torch
  if threads:
    torch.set_num_threads(threads)
  clk = time.process_time if clock == "cpu" else time.perf_counter
  runners = {}
  while True:
    msg = conn.recv()
    if msg[0] == "stop":
      break
    if msg[0] == "info":
      conn.send({"torch": torch.__version__, "threads": torch.get_num_threads(),
                 "cpu_affinity": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
                 "cudnn": torch.backends.cudnn.version() if device == "cuda" else None})
      continue
    if msg[0] == "build":
      _, key, cell, b, t, f, h, dtype, lr = msg
      torch.manual_seed(0)
      # bf16: module and inputs in bfloat16, so cuDNN runs its bf16 kernels (autocast
      # does not cover the fused nn.LSTM / nn.GRU modules).
      tdtype = torch.bfloat16 if dtype == "bfloat16" else torch.float32
      mod = (torch.nn.LSTM if cell == "lstm" else torch.nn.GRU)(f, h, batch_first=True)
      mod = mod.to(device=device, dtype=tdtype)
      # .to() leaves cuDNN's weights in separate buffers; without this, torch warns that
      # it compacts them at every call (the GPU run of 2026-11-27 had that in bf16).
      mod.flatten_parameters()
      opt = torch.optim.SGD(mod.parameters(), lr=lr)
      x = torch.randn(b, t, f, device=device, dtype=tdtype)
      y = torch.randn(b, t, h, device=device)
      sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

      def step(mod=mod, opt=opt, x=x, y=y):
        opt.zero_grad(set_to_none=True)
        out, _ = mod(x)
        loss = ((out.float() - y) ** 2).mean()
        loss.backward()
        opt.step()

      t0 = time.perf_counter()
      for _ in range(3):
        step()
      sync()
      runners[key] = (step, sync)
      conn.send(time.perf_counter() - t0)
      continue
    if msg[0] == "run":
      _, key, n = msg
      step, sync = runners[key]
      times = []
      for _ in range(n):
        t0 = clk()
        step()
        sync()
        times.append(clk() - t0)
      conn.send(times)


class TorchRunner:
  def __init__(self, threads: int | None, device: str, clock: str):
    ctx = multiprocessing.get_context("spawn")
    self.conn, child = ctx.Pipe()
    self.proc = ctx.Process(target=torch_worker, args=(child, threads, device, clock), daemon=True)
    self.proc.start()
    self.conn.send(("info",))
    self.info = self.conn.recv()

  def build(self, key, *args) -> float:
    self.conn.send(("build", key, *args))
    return self.conn.recv()

  def run(self, key, n: int) -> list[float]:
    self.conn.send(("run", key, n))
    return self.conn.recv()

  def close(self):
    self.conn.send(("stop",))
    self.proc.join(timeout=30)


def torch_available() -> bool:
  try:
    import importlib.util
    return importlib.util.find_spec("torch") is not None
  except Exception:
    return False


# ----------------------------------------------------------------------------- JAX side


def jax_runner(model, x, y, lr: float, clock: str):
  """A compiled, donated train step of `model` on (x, y); -> (run(n) -> times, compile_s)."""
  import functools
  import jax
  import jax.numpy as jnp
  import optax

  params = jax.jit(model.init)(jax.random.key(0), x)
  tx = optax.sgd(lr)
  opt_state = tx.init(params)

  def loss_fn(p):
    out = model.apply(p, x)  # RNNLayer: (outputs, last_h); nn.RNN: outputs
    out = out[0] if isinstance(out, tuple) else out
    return jnp.mean((out.astype(jnp.float32) - y) ** 2)

  @functools.partial(jax.jit, donate_argnums=(0, 1))
  def step(p, o):
    loss, g = jax.value_and_grad(loss_fn)(p)
    updates, o = tx.update(g, o, p)
    return optax.apply_updates(p, updates), o, loss

  state = {"p": params, "o": opt_state}
  t0 = time.perf_counter()
  state["p"], state["o"], loss = step(state["p"], state["o"])
  loss.block_until_ready()
  compile_s = time.perf_counter() - t0
  clk = time.process_time if clock == "cpu" else time.perf_counter

  def run(n: int) -> list[float]:
    times = []
    for _ in range(n):
      t = clk()
      state["p"], state["o"], loss = step(state["p"], state["o"])
      loss.block_until_ready()
      times.append(clk() - t)
    return times

  return run, compile_s


def variants_for(cell: str, dtype, unrolls, on_cpu: bool, stock: bool, autodiff: bool,
                 hoist_alt: bool = True, segments=(), time: int = 1) -> dict:
  """name -> flax module, all with the same maths (stock flax: its own cells).

  The unroll sweep runs at the default segment count; `segments` adds the default
  unroll at other segment counts (for sequences of `time` steps).
  """
  import flax.linen as nn
  from flaxnets.models import recurrent
  out = {}
  default_hoist = recurrent.default_hoist()
  default_unroll = recurrent.default_unroll()
  for u in unrolls:
    out[f"flaxnets u{u}" + (" (default)" if u == default_unroll else "")] = \
        lambda hs, u=u: recurrent.RNNLayer(cell, hs, unroll=u, dtype=dtype)
  for n in segments:
    if n != recurrent.default_segments(time):
      out[f"flaxnets u{default_unroll} segments={n}"] = \
          lambda hs, n=n: recurrent.RNNLayer(cell, hs, segments=n, dtype=dtype)
  if hoist_alt:
    out[f"flaxnets hoist={not default_hoist} u1"] = \
        lambda hs: recurrent.RNNLayer(cell, hs, hoist_input_projection=not default_hoist, dtype=dtype)
  if autodiff:
    out["flaxnets autodiff u1 (previous)"] = \
        lambda hs: recurrent.RNNLayer(cell, hs, fused_backward=False, dtype=dtype)
  if stock:
    stock_unroll = 1 if on_cpu else 8
    cell_cls = nn.OptimizedLSTMCell if cell == "lstm" else nn.GRUCell
    out[f"stock flax nn.RNN u{stock_unroll}"] = \
        lambda hs: nn.RNN(cell_cls(hs, dtype=dtype), unroll=stock_unroll)
  return out


def run_config(args, backend: str, cell: str, b: int, t: int, f: int, hsz: int, dtype_name: str,
               torch_runner) -> dict:
  import jax
  import jax.numpy as jnp
  import numpy as np
  dtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[dtype_name]
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((b, t, f), np.float32))
  y = jnp.asarray(rng.standard_normal((b, t, hsz), np.float32))
  on_cpu = backend == "cpu"
  runners, compile_s = {}, {}
  segments = args.segments if args.segments is not None else [1] if on_cpu else [4]
  for name, make in variants_for(cell, dtype, args.unrolls, on_cpu, not args.no_stock_flax,
                                  not args.no_autodiff, not args.no_hoist_alt, segments,
                                  t).items():
    runners[name], compile_s[name] = jax_runner(make(hsz), x, y, args.lr, args.clock)
    print(f"  compiled {name}: {compile_s[name]:.1f} s", flush=True)
  key = f"{cell}-{b}-{t}-{f}-{hsz}-{dtype_name}"
  if torch_runner is not None and not (on_cpu and dtype_name != "float32"):
    compile_s["torch"] = torch_runner.build(key, cell, b, t, f, hsz, dtype_name, args.lr)
    runners["torch"] = lambda n: torch_runner.run(key, n)
  rounds = {k: [] for k in runners}
  steps = {k: [] for k in runners}
  for fn in runners.values():  # one untimed step each: caches, allocator, threads
    fn(1)
  for _ in range(args.rounds):
    for name, fn in runners.items():
      times = fn(args.reps)
      steps[name] += times
      rounds[name].append(statistics.median(times))
  rows = {}
  for name in runners:
    row = {"median_ms": 1e3 * statistics.median(steps[name]), "min_ms": 1e3 * min(steps[name]),
           "round_medians_ms": [1e3 * v for v in rounds[name]],
           "compile_or_warmup_s": compile_s[name]}
    if "torch" in rounds:
      paired = [a / c for a, c in zip(rounds["torch"], rounds[name])]
      row["torch_over_this_paired_median"] = statistics.median(paired)
      row["torch_over_this_min"] = min(steps["torch"]) / min(steps[name])
    rows[name] = row
  from flaxnets.models import recurrent
  return {"cell": cell, "batch": b, "time": t, "features": f, "hidden": hsz, "dtype": dtype_name,
          "default_segments": recurrent.default_segments(t), "variants": rows}


def print_table(result: dict) -> None:
  print(f"\nthreads={result['threads']}, clock={result['clock']}, backend={result['backend']} "
        f"({result['device_kind']}), {result['rounds']} rounds x {result['reps']} steps; "
        f"load average at start {result['loadavg_start']}")
  hdr = f"{'shape':<28} {'variant':<34} {'median ms':>10} {'min ms':>9} {'torch/this':>11} {'min ratio':>10}"
  print(hdr)
  print("-" * len(hdr))
  for cfg in result["configs"]:
    short = {"float32": "fp32", "bfloat16": "bf16"}[cfg["dtype"]]
    shape = f"{cfg['cell']} B{cfg['batch']} T{cfg['time']} F{cfg['features']} H{cfg['hidden']} {short}"
    for name, r in cfg["variants"].items():
      ratio = r.get("torch_over_this_paired_median")
      mr = r.get("torch_over_this_min")
      print(f"{shape:<28} {name:<34} {r['median_ms']:>10.2f} {r['min_ms']:>9.2f} "
            f"{'-' if ratio is None else f'{ratio:.2f}x':>11} {'-' if mr is None else f'{mr:.2f}x':>10}")
      shape = ""
    for name, ms in cfg.get("reference_ms", {}).items():
      print(f"{'':<28} {name:<34} {ms:>10.2f}")


def run_one(args, partial_out: pathlib.Path | None = None) -> dict:
  """All configs in this process, at args.threads (not 'both').

  After each config its rows are printed and, with partial_out, everything so far is
  written there: a run stopped by a time limit keeps what it measured.
  """
  if args.threads == "1":
    # One core for this process and, inherited, for the torch process it spawns.
    # Before jax is imported, so XLA's thread pool lives on that core too.
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
  sys.path.insert(0, str(REPO))
  import jax
  backend = jax.default_backend()
  preset = args.preset or ("tiny" if args.tiny else ("cpu" if backend == "cpu" else "gpu"))
  if args.shape:
    b, t, f, h = args.shape
    configs = [(cell, b, t, f, h, tuple(args.dtypes or ("float32",)))
               for cell in args.cells or ("lstm", "gru")]
    preset = "custom"
  else:
    configs = [c for c in PRESETS[preset] if args.cells is None or c[0] in args.cells]
    if args.dtypes:
      configs = [(*c[:5], tuple(args.dtypes)) for c in configs]
  torch_runner = None
  if not args.no_torch and not torch_available():
    print("torch is not installed: the PyTorch columns are skipped (pip install '.[bench]')")
  if not args.no_torch and torch_available():
    device = "cpu" if backend == "cpu" else "cuda"
    threads = 1 if args.threads == "1" else None
    torch_runner = TorchRunner(threads, device, args.clock)
  result = {"benchmark": "rnn_speed", "preset": preset, "backend": backend,
            "device_kind": jax.devices()[0].device_kind, "jax": jax.__version__,
            "threads": args.threads, "clock": args.clock, "rounds": args.rounds, "reps": args.reps,
            "xla_flags": os.environ.get("XLA_FLAGS", ""),
            "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""),  # torch's process too
            "cpu_affinity": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
            "host": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "loadavg_start": [round(v, 1) for v in os.getloadavg()],
            "torch": None if torch_runner is None else torch_runner.info,
            "date": time.strftime("%Y-%m-%d %H:%M"), "configs": []}
  try:
    for cell, b, t, f, h, dtypes in configs:
      for dtype_name in dtypes:
        print(f"{cell} B{b} T{t} F{f} H{h} {dtype_name} (threads {args.threads})", flush=True)
        cfg = run_config(args, backend, cell, b, t, f, h, dtype_name, torch_runner)
        ref = REFERENCE_MS.get((preset, cell, b, t, f, h, dtype_name))
        if ref:
          cfg["reference_ms"] = ref
        result["configs"].append(cfg)
        print_table({**result, "configs": [cfg]})
        if partial_out is not None:
          partial_out.parent.mkdir(parents=True, exist_ok=True)
          partial_out.write_text(json.dumps({**result, "partial": True}, indent=2))
  finally:
    if torch_runner is not None:
      torch_runner.close()
  result["loadavg_end"] = [round(v, 1) for v in os.getloadavg()]
  return result


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  args = parse_args(argv)
  if args.tiny:
    args.rounds = args.rounds or 2
    args.reps = min(args.reps, 2)
    args.unrolls = args.unrolls or [1, 2]
  args.rounds = args.rounds or 15
  args.unrolls = args.unrolls or [1, 2, 4, 8, 16]
  if args.threads is None:  # both on CPU; accelerators have no thread setting to compare
    import jax  # this process then only drives subprocesses (CPU) or runs as is (GPU)
    args.threads = "both" if jax.default_backend() == "cpu" else "default"
  if args.threads == "both":
    results = []
    for mode in ("default", "1"):
      with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as tmp:
        path = tmp.name
      child = [a for a in argv if a not in ("--threads", "both")]
      cmd = [sys.executable, __file__, *child, "--threads", mode, "--out", path]
      print("$ " + " ".join(cmd[1:]), flush=True)
      subprocess.run(cmd, check=True)
      results.append(json.loads(pathlib.Path(path).read_text()))
      os.unlink(path)
    merged = {"benchmark": "rnn_speed", "runs": results}
    backend = results[0]["backend"]
  else:
    result = run_one(args, pathlib.Path(args.out) if args.out else None)
    print_table(result)
    merged, backend = result, result["backend"]
  merged["command"] = "python experiments/benchmarks/rnn_speed.py " + " ".join(argv)
  merged["notes"] = (
      "Shared machine: a loaded 2-core CPU (other developers' jobs; load average recorded "
      "per run). Absolute times there are inflated and noisy; compare variants by the "
      "paired torch/this ratios (medians over rounds of back-to-back runs). torch runs in "
      "its own process."
      if backend == "cpu" else
      "Accelerator run; torch uses cuDNN. bf16: torch module and inputs in bfloat16 "
      "(cuDNN bf16 kernels); flaxnets RNNLayer(dtype=bfloat16) keeps float32 params "
      "and carries.")
  suffix = "_tiny" if args.tiny else ""
  if args.shape:  # never overwrite the preset's record with a one-shape run
    suffix += "_B{}_T{}_F{}_H{}".format(*args.shape)
  out = pathlib.Path(args.out) if args.out else RESULTS / f"rnn_speed_{backend}{suffix}.json"
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(merged, indent=2))
  if args.threads == "both":
    for r in merged["runs"]:
      print_table(r)
  print(f"\nwrote {out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
