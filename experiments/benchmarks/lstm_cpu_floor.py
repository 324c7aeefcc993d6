"""Benchmark: the matmul floor of an LSTM train step on this CPU, and where torch's time goes.

The shape of rnn_speed.py's CPU preset (B=32, T=64, F=128, H=256, fp32). Four parts:

  xla    each matmul of flaxnets' fused LSTM step, timed on its own in one jitted
         program: the forward loop's per-step x @ W_i and h @ W_h (a scan of T
         steps holding nothing else), the backward loop's per-step dz @ W_h^T, and
         the two weight-gradient matmuls over all T*B rows (the loops add one small
         elementwise op per step so that no column is dead code). Their sum is what the
         step's matmuls cost XLA:CPU with no gate maths, residuals or loop
         bookkeeping around them: a floor for flaxnets' step.
  loops  whole loops beside those parts: a forward scan holding both per-step dots
         and writing its [T, B, H] outputs but no gate maths (the floor of a forward
         loop), and flaxnets' RNNLayer itself: its forward alone (no residuals kept)
         and its gradient (forward with residuals + backward), loss mean((out - y)^2).
  slices what an elementwise loop fusion pays to read time step t of stacked arrays
         (a dynamic slice, fused into the fusion as XLA:CPU does for scan inputs):
         per step of a T-step scan whose body is one such fusion with 5 operands,
         reading 0, 1 or 5 of them as step t of a [T, B, H] array each (5: the
         LSTM backward's split residuals), or all 5 as column slices of step t
         of one [T, B, 5H] array (the packed layout flaxnets uses off CPU).
  torch  torch.profiler over torch's own CPU train step (nn.LSTM, SGD): the ops
         that take its time (on CPU nn.LSTM runs oneDNN's fused LSTM kernels).

Both at each framework's default threads, in this one process (torch is imported
after the XLA timings). Timing: 10 rounds, each running every part `--reps`/10 times;
reported: the median over all calls and the fastest round's median. Prints a table;
writes experiments/results/lstm_cpu_floor.json.

  python experiments/benchmarks/lstm_cpu_floor.py
  python experiments/benchmarks/lstm_cpu_floor.py --tiny   # seconds: smoke test
"""
from __future__ import annotations

import argparse
import os
import time

from common import interleaved, write_result


def xla_parts(b: int, t: int, f: int, h: int, reps: int) -> dict[str, dict]:
  """name -> timings (common.interleaved) of that matmul (or loop of matmuls) alone."""
  import jax
  import jax.numpy as jnp
  keys = iter(jax.random.split(jax.random.key(0), 8))
  normal = lambda *shape: jax.random.normal(next(keys), shape, jnp.float32)
  xs, wi, wh = normal(t, b, f), normal(f, 4 * h), normal(h, 4 * h)
  dz, wh_t = normal(t, b, 4 * h), normal(4 * h, h)
  h_all = normal(t * b, h)

  def loop(step, xs, carry0):
    return jax.lax.scan(lambda c, x: (step(c, x), None), carry0, xs)[0]

  def mix(z):  # [B, 4H] -> [B, H], every column live (a sum or slice could shrink the dot)
    return jnp.tanh(z[:, :h] * z[:, h:2 * h] + z[:, 2 * h:3 * h] - z[:, 3 * h:])

  # Each loop carries all of its product, so no step or column is dead code.
  parts = {
      f"forward x_t @ W_i, {t} steps [{b},{f}]x[{f},{4 * h}]":
          (lambda xs, w: loop(lambda c, x: 0.5 * c + x @ w, xs, jnp.zeros((b, 4 * h))), xs, wi),
      f"forward h @ W_h, {t} steps [{b},{h}]x[{h},{4 * h}]":
          (lambda xs, w: loop(lambda c, x: mix(c @ w), xs, jnp.ones((b, h))), xs, wh),
      f"backward dz @ W_h^T, {t} steps [{b},{4 * h}]x[{4 * h},{h}]":
          (lambda dz, w: loop(lambda c, d: c + d @ w, dz, jnp.zeros((b, h))), dz, wh_t),
      f"dW_h = h^T dz [{h},{t * b}]x[{t * b},{4 * h}]":
          (lambda a, d: a.T @ d.reshape(t * b, 4 * h), h_all, dz),
      f"dW_i = x^T dz [{f},{t * b}]x[{t * b},{4 * h}]":
          (lambda x, d: x.reshape(t * b, f).T @ d.reshape(t * b, 4 * h), xs, dz),
  }
  calls = {}
  for name, (fn, *args) in parts.items():
    jitted = jax.jit(fn)
    calls[name] = lambda jitted=jitted, args=args: jax.block_until_ready(jitted(*args))
  return interleaved(calls, reps)


def xla_loops(b: int, t: int, f: int, h: int, reps: int) -> dict[str, dict]:
  """name -> timings (common.interleaved) of a whole loop: the two-dot forward floor and
  flaxnets' own layer."""
  import jax
  import jax.numpy as jnp
  from flaxnets.models.recurrent import RNNLayer
  keys = iter(jax.random.split(jax.random.key(1), 8))
  normal = lambda *shape: 0.1 * jax.random.normal(next(keys), shape, jnp.float32)
  xs, wi, wh = normal(t, b, f), normal(f, 4 * h), normal(h, 4 * h)

  def two_dots(xs, wi, wh):
    def body(hc, x):
      z = x @ wi + hc @ wh
      hn = jnp.tanh(z[:, :h] + z[:, 3 * h:])  # every column of z live, no gate maths
      return hn, hn
    return jax.lax.scan(body, jnp.zeros((b, h)), xs)

  model = RNNLayer(cell="lstm", hidden_size=h)
  x, y = jnp.swapaxes(xs, 0, 1), normal(b, t, h)
  params = jax.jit(model.init)(jax.random.key(0), x)
  forward = jax.jit(lambda p, x: model.apply(p, x)[0])
  grad = jax.jit(jax.grad(lambda p, x: jnp.mean((model.apply(p, x)[0] - y) ** 2)))
  loops = {
      f"forward floor: {t} steps of both dots, outputs, no gate maths":
          (jax.jit(two_dots), xs, wi, wh),
      "flaxnets RNNLayer(lstm) forward, outputs only": (forward, params, x),
      "flaxnets RNNLayer(lstm) gradient (forward + backward)": (grad, params, x),
  }
  calls = {name: lambda fn=fn, args=args: jax.block_until_ready(fn(*args))
           for name, (fn, *args) in loops.items()}
  return interleaved(calls, reps)


def xla_slices(b: int, t: int, h: int, reps: int) -> dict[str, dict]:
  """name -> microseconds per step of a scan whose body is one elementwise fusion
  reading 0, 1 or 5 dynamically indexed [B, H] slices (the rest: maths on the carry),
  or 5 column slices of one dynamically indexed [B, 5H] step."""
  import jax
  import jax.numpy as jnp
  arrays = list(jax.random.normal(jax.random.key(2), (5, t, b, h), jnp.float32))
  packed = jnp.concatenate(arrays, axis=-1)  # [T, B, 5H]

  def loop(reads: int, packed_layout: bool = False):
    def body(c, r):
      rs = [r[:, i * h:(i + 1) * h] for i in range(5)] if packed_layout else r[:reads]
      a = list(rs) + [c * (1.0 + 0.01 * i) for i in range(5 - len(rs))]
      return c * 0.9 + a[0] * a[1] * (1.0 - a[2]) + a[3] * jnp.tanh(a[4]), None
    return jax.jit(lambda rs: jax.lax.scan(body, jnp.zeros((b, h)), rs)[0])

  calls = {}
  for reads in (0, 1, 5):
    fn = loop(reads)
    calls[f"reads {reads} of 5 operands, each step t of a [{t},{b},{h}] array"] = \
        lambda fn=fn: jax.block_until_ready(fn(arrays))
  fn = loop(5, packed_layout=True)
  calls[f"reads 5 of 5 as column slices of step t of one [{t},{b},{5 * h}]"] = \
      lambda fn=fn: jax.block_until_ready(fn(packed))
  return {name: {"median_us": 1e3 * ms["median_ms"] / t,
                 "min_round_median_us": 1e3 * ms["min_round_median_ms"] / t}
          for name, ms in interleaved(calls, reps).items()}


def torch_profile(b: int, t: int, f: int, h: int, steps: int) -> dict:
  import torch
  from torch.profiler import ProfilerActivity, profile
  torch.manual_seed(0)
  lstm = torch.nn.LSTM(f, h)
  opt = torch.optim.SGD(lstm.parameters(), lr=0.01)
  x, y = torch.randn(t, b, f), torch.randn(t, b, h)

  def step():
    opt.zero_grad()
    out, _ = lstm(x)
    ((out - y) ** 2).mean().backward()
    opt.step()

  step_ms = interleaved({"step": step}, max(1, steps // 10))["step"]
  with profile(activities=[ProfilerActivity.CPU]) as prof:
    for _ in range(steps):
      step()
  ops = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
  top = [{"op": e.key, "self_ms_per_step": e.self_cpu_time_total / 1e3 / steps}
         for e in ops[:6]]
  return {"torch": torch.__version__, "threads": torch.get_num_threads(),
          "step_ms": step_ms, "top_ops": top}


def main(argv=None) -> int:
  from common import positive_int  # this folder is on sys.path when run as a file
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--tiny", action="store_true", help="smoke test: tiny shapes, few reps")
  p.add_argument("--reps", type=positive_int, default=None, help="timed calls per part (default 100)")
  p.add_argument("--out", default=None)
  args = p.parse_args(argv)
  b, t, f, h = (4, 8, 8, 16) if args.tiny else (32, 64, 128, 256)
  reps = args.reps or (10 if args.tiny else 100)
  import jax
  result = {"benchmark": "lstm_cpu_floor", "shape": {"batch": b, "time": t, "features": f,
                                                     "hidden": h, "dtype": "float32"},
            "backend": jax.default_backend(), "device_kind": jax.devices()[0].device_kind,
            "jax": jax.__version__, "cpu_count": os.cpu_count(),
            "loadavg_start": [round(v, 1) for v in os.getloadavg()],
            "date": time.strftime("%Y-%m-%d %H:%M"),
            "command": "python experiments/benchmarks/lstm_cpu_floor.py"
                       + (" --tiny" if args.tiny else "")}
  parts = xla_parts(b, t, f, h, max(1, reps // 10))
  result["xla_matmuls"] = [{"matmul": name, **ms} for name, ms in parts.items()]
  for key in ("median_ms", "min_round_median_ms"):
    result[f"xla_matmuls_sum_{key}"] = sum(ms[key] for ms in parts.values())
  loops = xla_loops(b, t, f, h, max(1, reps // 10))
  result["xla_loops"] = [{"loop": name, **ms} for name, ms in loops.items()]
  slices = xla_slices(b, t, h, max(1, reps // 10))
  result["xla_fused_slice_reads"] = [
      {"fusion": name, "median_us_per_step": us["median_us"],
       "min_round_median_us_per_step": us["min_round_median_us"]}
      for name, us in slices.items()]
  try:
    tl = torch_profile(b, t, f, h, max(3, reps // 2))
    result["torch_top_ops"] = tl.pop("top_ops")
    result["torch_step_median_ms"] = tl["step_ms"]["median_ms"]
    result["torch_step_min_round_median_ms"] = tl["step_ms"]["min_round_median_ms"]
    result["torch_lstm"] = tl
  except ImportError:
    print("torch is not installed: its LSTM is not measured (torch_lstm: null)")
    result["torch_lstm"] = result["torch_top_ops"] = None
  result["loadavg_end"] = [round(v, 1) for v in os.getloadavg()]

  print(f"\nLSTM B{b} T{t} F{f} H{h} fp32, {result['device_kind']}, default threads")
  print(f"{'XLA:CPU, each matmul on its own':62s} {'median ms':>10s} {'best round':>10s}")
  for name, ms in parts.items():
    print(f"  {name:60s} {ms['median_ms']:10.2f} {ms['min_round_median_ms']:10.2f}")
  print(f"  {'sum: the step matmuls floor':60s} {result['xla_matmuls_sum_median_ms']:10.2f} "
        f"{result['xla_matmuls_sum_min_round_median_ms']:10.2f}")
  print(f"{'XLA:CPU, whole loops':62s} {'median ms':>10s} {'best round':>10s}")
  for name, ms in loops.items():
    print(f"  {name:60s} {ms['median_ms']:10.2f} {ms['min_round_median_ms']:10.2f}")
  print(f"{'XLA:CPU, one elementwise fusion per step':62s} {'us/step':>10s} {'best round':>10s}")
  for name, us in slices.items():
    print(f"  {name:60s} {us['median_us']:10.1f} {us['min_round_median_us']:10.1f}")
  if result["torch_lstm"]:
    tl = result["torch_lstm"]
    print(f"torch {tl['torch']} ({tl['threads']} threads) nn.LSTM train step: median "
          f"{tl['step_ms']['median_ms']:.2f} ms, best round "
          f"{tl['step_ms']['min_round_median_ms']:.2f} ms; top ops, self ms per step:")
    for row in result["torch_top_ops"]:
      print(f"  {row['op']:60s} {row['self_ms_per_step']:8.2f}")
  write_result(result, args.out, f"lstm_cpu_floor{'_tiny' if args.tiny else ''}.json")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
