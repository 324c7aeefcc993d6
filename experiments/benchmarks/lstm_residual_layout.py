"""Benchmark: the LSTM's per-step residual layout on XLA:CPU (`split_lstm_residuals`).

The fused backward (flaxnets/models/recurrent.py) reads step t's residuals from
arrays stacked over time. Two layouts:

  packed  the four gate activations in one [T, B, 4H] array, c and tanh(c') beside
          it (what GPU/TPU use: the layout the H100 figures were measured with);
  split   i, f, g, o and c as five [T, B, H] arrays, tanh(c') recomputed in the
          backward (the CPU default since 2026-11-28).

Two parts, both at each framework's default threads, variants interleaved:

  gates  the cause, without any matmul: a scan over T steps computing the LSTM's
         gate maths from step t of [T, B, 4H] (four slices of one dynamically
         indexed array) vs from step t of four [T, B, H] arrays;
  step   RNNLayer("lstm") train step (fwd + bwd + SGD, loss on every output),
         packed vs split, at the default time segments and at 1 segment.

Each round times every variant `--reps` times back to back; reported: median over
all calls and `x packed`, the median over rounds of split's round median divided by
packed's (< 1: split is faster). Prints a table; writes
experiments/results/lstm_residual_layout_<backend>[_tiny][_B.._T.._F.._H..].json.

  python experiments/benchmarks/lstm_residual_layout.py
  python experiments/benchmarks/lstm_residual_layout.py --shape 64 400 128 128  # one shape
  python experiments/benchmarks/lstm_residual_layout.py --tiny   # seconds: smoke test
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

from common import interleaved as _interleaved, write_result


def gate_loops(b: int, t: int, h: int) -> dict:
  """name -> a no-argument call of a jitted scan of LSTM gate maths over t steps."""
  import jax
  import jax.numpy as jnp
  z = jax.random.normal(jax.random.key(0), (t, b, 4 * h))
  parts = tuple(z[..., k * h:(k + 1) * h] + 0.0 for k in range(4))  # four own buffers
  c0 = jnp.zeros((b, h))

  def lstm(c, i, f, g, o):
    c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
    return c, jax.nn.sigmoid(o) * jnp.tanh(c)

  packed = jax.jit(lambda z, c0: jax.lax.scan(
      lambda c, zt: lstm(c, *(zt[:, k * h:(k + 1) * h] for k in range(4))), c0, z))
  split = jax.jit(lambda parts, c0: jax.lax.scan(lambda c, zs: lstm(c, *zs), c0, parts))
  return {"packed": lambda: jax.block_until_ready(packed(z, c0)),
          "split": lambda: jax.block_until_ready(split(parts, c0))}


def train_steps(b: int, t: int, f: int, h: int, segments: int | None) -> dict:
  """layout -> a no-argument call of one jitted LSTM train step built with that layout."""
  import jax
  import jax.numpy as jnp
  import optax
  from flaxnets.models import recurrent
  x = jax.random.normal(jax.random.key(1), (b, t, f))
  y = jax.random.normal(jax.random.key(2), (b, t, h))
  model = recurrent.RNNLayer("lstm", h, segments=segments)
  tx = optax.sgd(0.01)
  calls = {}
  original = recurrent.split_lstm_residuals
  for name, split in (("packed", False), ("split", True)):
    params = model.init(jax.random.key(0), x)
    state = {"p": params, "o": tx.init(params)}

    def loss_fn(p, x, y):
      return jnp.mean((model.apply(p, x)[0] - y) ** 2)

    @jax.jit
    def step(p, o, x, y):
      loss, g = jax.value_and_grad(loss_fn)(p, x, y)
      updates, o = tx.update(g, o, p)
      return optax.apply_updates(p, updates), o, loss

    recurrent.split_lstm_residuals = lambda split=split: split  # read when traced
    try:  # the first call traces and compiles the step under this layout
      state["p"], state["o"], _ = step(state["p"], state["o"], x, y)
    finally:
      recurrent.split_lstm_residuals = original

    def call(step=step, state=state):
      state["p"], state["o"], loss = step(state["p"], state["o"], x, y)
      loss.block_until_ready()

    calls[name] = call
  return calls


def interleaved(calls: dict, reps: int, rounds: int) -> dict:
  """common.interleaved's timing of `calls`, plus split_over_packed_paired_median: the
  median over rounds of split's round median divided by packed's."""
  out = _interleaved(calls, reps, rounds)
  out["split_over_packed_paired_median"] = statistics.median(
      s / p for s, p in zip(out["split"]["round_medians_ms"], out["packed"]["round_medians_ms"]))
  return out


def main(argv=None) -> int:
  from common import positive_int  # this folder is on sys.path when run as a file
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--tiny", action="store_true", help="smoke test: tiny shapes, 2 rounds")
  p.add_argument("--shape", type=positive_int, nargs=4, metavar=("B", "T", "F", "H"), default=None,
                 help="batch, time, features, hidden (default 32 64 128 256)")
  p.add_argument("--rounds", type=positive_int, default=None, help="default 12 (tiny 2)")
  p.add_argument("--reps", type=positive_int, default=10, help="timed calls per variant per round")
  p.add_argument("--out", default=None)
  args = p.parse_args(argv)
  b, t, f, h = args.shape or ((4, 8, 8, 16) if args.tiny else (32, 64, 128, 256))
  rounds = args.rounds or (2 if args.tiny else 12)
  import jax
  from flaxnets.models import recurrent
  result = {"benchmark": "lstm_residual_layout",
            "shape": {"batch": b, "time": t, "features": f, "hidden": h, "dtype": "float32"},
            "backend": jax.default_backend(), "device_kind": jax.devices()[0].device_kind,
            "jax": jax.__version__, "cpu_count": os.cpu_count(),
            "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""),
            "default_split": recurrent.split_lstm_residuals(),
            "default_segments": recurrent.default_segments(t),
            "rounds": rounds, "reps": args.reps,
            "loadavg_start": [round(v, 1) for v in os.getloadavg()],
            "date": time.strftime("%Y-%m-%d %H:%M"),
            "command": "python experiments/benchmarks/lstm_residual_layout.py"
                       + (" --tiny" if args.tiny else "")
                       + (" --shape " + " ".join(map(str, args.shape)) if args.shape else "")
                       + (f" --rounds {args.rounds}" if args.rounds else "")}
  rows = [(f"gate maths only, scan of {t} steps", interleaved(gate_loops(b, t, h),
                                                              args.reps, rounds))]
  for seg in (None, 1):
    label = f"train step, {recurrent.default_segments(t) if seg is None else seg} segment(s)" \
        + (" (default)" if seg is None else "")
    rows.append((label, interleaved(train_steps(b, t, f, h, seg), args.reps, rounds)))
  result["rows"] = [{"part": label, "packed_ms": r["packed"]["median_ms"],
                     "split_ms": r["split"]["median_ms"],
                     "split_over_packed": r["split_over_packed_paired_median"]}
                    for label, r in rows]
  result["parts"] = [{"part": label, **r} for label, r in rows]  # per-round data
  result["loadavg_end"] = [round(v, 1) for v in os.getloadavg()]

  print(f"\nLSTM B{b} T{t} F{f} H{h} fp32, {result['device_kind']}, default threads, "
        f"{rounds} rounds x {args.reps}")
  print(f"{'part':42s} {'packed ms':>10s} {'split ms':>10s} {'x packed':>9s}")
  for label, r in rows:
    print(f"{label:42s} {r['packed']['median_ms']:10.2f} {r['split']['median_ms']:10.2f} "
          f"{r['split_over_packed_paired_median']:8.2f}x")
  suffix = f"_B{b}_T{t}_F{f}_H{h}" if args.shape else ""
  write_result(result, args.out, f"lstm_residual_layout_{result['backend']}"
               f"{'_tiny' if args.tiny else ''}{suffix}.json")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
