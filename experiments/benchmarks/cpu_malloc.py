"""Benchmark: glibc malloc settings vs a recurrent train step's speed on this CPU.

XLA:CPU allocates a step's temporary buffers with malloc on every call. With glibc's
default settings, large buffers are mmap'ed fresh (or the heap is trimmed and grown
again) each step, and every page of them then faults on first touch. Whether that
happens depends on the step's buffer sizes, so it comes and goes with the model.
GLIBC_TUNABLES is read at process start, so each setting runs in its own child
process; the settings alternate over `--repeats` rounds.

Models (fwd + bwd + Adam, one jitted step, params and optimizer state donated):
  charlm  flaxnets CharLM as experiments/configs/shakespeare_charlm.py: vocab 65,
          embed 64, 2 x LSTM 256, batch 64 x 128 characters;
  lstm    one RNNLayer LSTM at rnn_speed.py's CPU shape: B=32, T=64, F=128, H=256.

  python experiments/benchmarks/cpu_malloc.py            # -> experiments/results/cpu_malloc.json
  python experiments/benchmarks/cpu_malloc.py --tiny     # seconds: smoke test
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import resource
import statistics
import subprocess
import sys
import time

from common import write_result

REPO = pathlib.Path(__file__).resolve().parents[2]
SETTINGS = {
    "glibc defaults": "",
    "hugetlb=1": "glibc.malloc.hugetlb=1",
    "mmap_max=0, trim_threshold=4G": "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=4294967296",
    "arena_max=1, mmap_max=0, trim_threshold=4G":
        "glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=4294967296",
}


def child(model: str, tiny: bool, steps: int) -> dict:
  """Build and time one model's train step in this process: median ms, faults per step."""
  sys.path.insert(0, str(REPO))
  import functools

  import jax
  import jax.numpy as jnp
  import optax

  from flaxnets.models.classifiers import CharLM
  from flaxnets.models.recurrent import RNNLayer
  key = jax.random.key(0)
  if model == "charlm":
    b, t = (4, 16) if tiny else (64, 128)
    net = CharLM(vocab_size=65, embed_dim=64, cell="lstm", hidden_size=16 if tiny else 256,
                 num_layers=2)
    x = jax.random.randint(key, (b, t), 0, 65)
    y = jnp.roll(x, -1, axis=1)
    params = net.init(jax.random.key(1), x)
    loss = lambda p: optax.softmax_cross_entropy_with_integer_labels(net.apply(p, x), y).mean()
  else:
    b, t, f, h = (4, 16, 8, 16) if tiny else (32, 64, 128, 256)
    net = RNNLayer("lstm", h)
    x = jax.random.normal(key, (b, t, f))
    y = jax.random.normal(jax.random.key(2), (b, t, h))
    params = net.init(jax.random.key(1), x)
    loss = lambda p: jnp.mean((net.apply(p, x)[0] - y) ** 2)
  opt = optax.adam(1e-3)

  @functools.partial(jax.jit, donate_argnums=(0, 1))
  def step(p, o):
    value, grads = jax.value_and_grad(loss)(p)
    updates, o = opt.update(grads, o, p)
    return optax.apply_updates(p, updates), o, value

  state = (params, opt.init(params))
  for _ in range(3):  # compile, then let the allocator settle
    *state, value = step(*state)
    value.block_until_ready()
  faults0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  times = []
  for _ in range(steps):
    t0 = time.perf_counter()
    *state, value = step(*state)
    value.block_until_ready()
    times.append(1e3 * (time.perf_counter() - t0))
  faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults0
  return {"median_ms": statistics.median(times), "minor_faults_per_step": faults / steps}


def main(argv=None) -> int:
  from common import positive_int  # this folder is on sys.path when run as a file
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--tiny", action="store_true", help="smoke test: tiny models, few steps")
  p.add_argument("--models", nargs="*", default=["charlm", "lstm"], choices=("charlm", "lstm"))
  p.add_argument("--repeats", type=positive_int, default=None, help="rounds over all settings (default 2)")
  p.add_argument("--steps", type=positive_int, default=None, help="timed steps per child (default 10)")
  p.add_argument("--child", default=None, help=argparse.SUPPRESS)
  p.add_argument("--out", default=None)
  args = p.parse_args(argv)
  steps = args.steps or (3 if args.tiny else 10)
  if args.child:
    print(json.dumps(child(args.child, args.tiny, steps)))
    return 0
  repeats = args.repeats or (1 if args.tiny else 2)
  try:
    glibc = os.confstr("CS_GNU_LIBC_VERSION")
  except (ValueError, OSError):
    glibc = None
  if not glibc:
    print("not a glibc system: GLIBC_TUNABLES does nothing here", file=sys.stderr)
  runs = {m: {name: [] for name in SETTINGS} for m in args.models}
  for _ in range(repeats):
    for model in args.models:
      for name, tunables in SETTINGS.items():
        env = dict(os.environ)
        env.pop("GLIBC_TUNABLES", None)
        if tunables:
          env["GLIBC_TUNABLES"] = tunables
        cmd = [sys.executable, __file__, "--child", model, "--steps", str(steps)] + \
            (["--tiny"] if args.tiny else [])
        out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
        runs[model][name].append(json.loads(out.strip().splitlines()[-1]))
        print(f"  {model:6s} {name:44s} {runs[model][name][-1]['median_ms']:8.1f} ms", flush=True)
  rows = []
  for model, by_setting in runs.items():
    base = statistics.median(r["median_ms"] for r in by_setting["glibc defaults"])
    for name, rs in by_setting.items():
      ms = statistics.median(r["median_ms"] for r in rs)
      rows.append({"model": model, "setting": name, "GLIBC_TUNABLES": SETTINGS[name],
                   "median_ms": ms, "time_vs_defaults": ms / base,
                   "minor_faults_per_step": statistics.median(r["minor_faults_per_step"]
                                                              for r in rs)})
  import jax
  result = {"benchmark": "cpu_malloc", "backend": jax.default_backend(),
            "device_kind": jax.devices()[0].device_kind, "jax": jax.__version__,
            "glibc": glibc, "cpu_count": os.cpu_count(),
            "repeats": repeats, "steps": steps, "tiny": args.tiny,
            "loadavg": [round(v, 1) for v in os.getloadavg()],
            "date": time.strftime("%Y-%m-%d %H:%M"),
            "command": "python experiments/benchmarks/cpu_malloc.py" + (" --tiny" if args.tiny else ""),
            "rows": rows}
  print(f"\n{'model':7s} {'setting':44s} {'ms/step':>9s} {'vs default':>10s} {'faults/step':>12s}")
  for r in rows:
    print(f"{r['model']:7s} {r['setting']:44s} {r['median_ms']:9.1f} {r['time_vs_defaults']:9.2f}x "
          f"{r['minor_faults_per_step']:12.0f}")
  write_result(result, args.out, f"cpu_malloc{'_tiny' if args.tiny else ''}.json")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
