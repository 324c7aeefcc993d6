"""Recurrent layers: LSTM / GRU / simple cells scanned over time, with a fused backward.

The cells compute the same maths as flax's `nn.LSTMCell`, `nn.GRUCell` and
`nn.SimpleCell` (tanh), but split each step in two:

* `cell.input_proj(x)`: one Dense from the input to all gate pre-activations
  (with bias). It has no time dependence, so `RNNLayer` can run it once over the
  whole sequence as one big matmul ("hoisting") instead of once per step.
* `cell.step(carry, xproj_t)`: the recurrent part (one Dense from h to all gates).

`RNNLayer` scans a cell over time, forward or reverse, with optional per-example
`seq_lengths`: steps past an example's length never update its carry and their
outputs are exactly zero, so padding cannot leak into pooling, losses or metrics,
and adding more padding changes nothing. `Bidirectional` and `StackedRNN` build on it.

Gradients (`fused_backward=True`, the default) come from a hand-written backward
pass over the time loop, as cuDNN computes them: the loop carries only the hidden
state's gradient (one [B, G*H] x [G*H, H] matmul per step) and stacks the
gate-gradients; the weight gradients of all steps are then one [T*B, .] x [T*B, G*H]
matmul each, after the loop. JAX autodiff through `nn.scan` (`fused_backward=False`)
instead adds every step's weight gradient into an accumulator inside the loop,
and stores more per-step residuals. Both give the same numbers (tests/test_recurrent.py
checks the fused path against a plain Python loop differentiated by JAX);
experiments/benchmarks/rnn_speed.py measures them. The fused path can also split
the time axis into `segments` consecutive loops, so that on a multi-core CPU each
segment's weight-gradient matmul runs beside the next segment's backward loop.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array
Dtype = Any
Initializer = Callable[..., Array]
Carry = Any


def _per_gate(init: Initializer, num_gates: int) -> Initializer:
  """Initialise a fused [in, gates * H] kernel as `num_gates` independent [in, H] blocks.

  Keeps the per-gate statistics of flax's cells (e.g. each recurrent block is
  orthogonal on its own, which an orthogonal [H, 4H] matrix would not give).
  """

  def init_fn(key: Array, shape: tuple[int, ...], dtype: Dtype = jnp.float32) -> Array:
    *lead, total = shape
    keys = jax.random.split(key, num_gates)
    # float32 first: the orthogonal init's QR has no bfloat16 kernel on CPU
    blocks = [init(k, (*lead, total // num_gates), jnp.float32) for k in keys]
    return jnp.concatenate(blocks, axis=-1).astype(dtype)

  return init_fn


class _SplitCell(nn.Module):
  """Base for cells whose input projection is separate from the recurrent step.

  Gate pre-activations are computed in `dtype`; the carry and the gate maths run
  in at least float32 so bf16 compute does not accumulate rounding over time.

  The gate maths are static functions of arrays, shared by `step` (one step, used
  by the scan and by callers of the cell) and by the fused recurrence:
  `gates(small, carry, xproj, hproj) -> (new_carry, h, residuals)` and its
  hand-written gradient `gates_grad(small, residuals, d_new_carry, d_h) ->
  (d_carry, d_xproj, d_hproj, d_small)`, where d_carry leaves out the path through
  hproj (the caller adds d_hproj @ W_h^T) and d_small is summed over the batch.
  `small` holds the cell's extra parameters (GRU: bhn), or None.
  """
  hidden_size: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  kernel_init: Initializer = nn.initializers.lecun_normal()
  recurrent_kernel_init: Initializer = nn.initializers.orthogonal()
  bias_init: Initializer = nn.initializers.zeros_init()

  num_gates = 1  # class constants, not fields
  additive = True  # pre-activations are xproj + hproj, so d_xproj == d_hproj

  def setup(self):
    features = self.num_gates * self.hidden_size
    self.wi = nn.Dense(features, use_bias=True, dtype=self.dtype, param_dtype=self.param_dtype,
                       kernel_init=_per_gate(self.kernel_init, self.num_gates),
                       bias_init=self.bias_init)
    self.wh = nn.Dense(features, use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype,
                       kernel_init=_per_gate(self.recurrent_kernel_init, self.num_gates))

  @property
  def carry_dtype(self) -> Dtype:
    return jnp.promote_types(self.dtype, jnp.float32)

  def input_proj(self, x: Array) -> Array:
    """[..., F] -> [..., num_gates * H] gate pre-activations from the input."""
    return self.wi(x)

  def weights(self, features: int) -> Any:
    """The cell's params {'wi': {'kernel', 'bias'}, 'wh': {'kernel'}, ...} as arrays.

    On init they are created first (for inputs of `features` features).
    """
    if self.is_initializing():
      self.wi(jnp.zeros((1, features), self.dtype))
      self.wh(jnp.zeros((1, self.hidden_size), self.dtype))
    return self.variables["params"]

  def small_params(self) -> Array | None:
    """The extra parameters `gates` reads (in carry precision), or None."""
    return None

  def step(self, carry: Carry, xproj: Array) -> tuple[Carry, Array]:
    """(carry, [..., num_gates * H]) -> (new_carry, h [..., H] in `dtype`)."""
    cd = self.carry_dtype
    hproj = self.wh(self.carry_to_h(carry))
    new_carry, h, _ = self.gates(self.small_params(), carry, xproj.astype(cd), hproj.astype(cd))
    return new_carry, h.astype(self.dtype)

  def __call__(self, carry: Carry, x: Array) -> tuple[Carry, Array]:
    """One whole step, like a flax cell: (carry, x [..., F]) -> (new_carry, h [..., H])."""
    return self.step(carry, self.input_proj(x))

  @nn.nowrap
  def initialize_carry(self, batch_shape: tuple[int, ...]) -> Carry:
    return jnp.zeros((*batch_shape, self.hidden_size), self.carry_dtype)

  @staticmethod
  def carry_to_h(carry: Carry) -> Array:
    """The hidden state h [..., H] held in a carry."""
    return carry

  @staticmethod
  def add_to_h(carry: Carry, dh: Array) -> Carry:
    """A carry-shaped gradient with dh added to its h part."""
    return carry + dh

  @staticmethod
  def gates(small, carry, xproj, hproj):
    raise NotImplementedError

  @staticmethod
  def gates_grad(small, residuals, d_carry, d_h):
    raise NotImplementedError


def _sum_batch(x: Array) -> Array:
  return jnp.sum(x, axis=tuple(range(x.ndim - 1)))


def split_lstm_residuals() -> bool:
  """Whether the LSTM keeps its per-step residuals as five [B, H] arrays: on CPU only.

  The fused backward reads step t's residuals from arrays stacked over time. On
  XLA:CPU (jax 0.10.2) an elementwise fusion that reads several slices of one
  dynamically indexed array ([T, B, 4H] -> step t -> the four gates) runs about five
  times slower than one that reads whole arrays: the LSTM's gate maths over 64 steps
  took 6.92 ms from [32, 1024] slices and 1.31 ms from four [32, 256] arrays. So on
  CPU the forward keeps i, f, g, o and c as separate arrays and the backward
  recomputes tanh(c') instead of reading a sixth one. Train step (fwd + bwd + SGD),
  both cores, split over packed in the same run: B=32 T=64 F=128 H=256 0.93x the time
  (1 segment: 0.93x), B=64 T=400 F=128 H=128 0.94x, B=64 T=40 F=32 H=128 0.85x; at a
  toy B=16 T=16 F=16 H=32 (0.3 ms a step) 1.06x (1 segment: 0.99x)
  (experiments/benchmarks/lstm_residual_layout.py; experiments/results/
  lstm_residual_layout_cpu*.json). GPU/TPU keep the layout the H100 figures were
  measured with: the four activations packed into one [B, 4H] array, c and tanh(c')
  beside it.
  """
  return jax.default_backend() == "cpu"


class LSTMCell(_SplitCell):
  """LSTM, gates (i, f, g, o) as in `flax.linen.LSTMCell`. Carry: (c, h), each [..., H]."""
  num_gates = 4

  @nn.nowrap
  def initialize_carry(self, batch_shape: tuple[int, ...]) -> Carry:
    zeros = jnp.zeros((*batch_shape, self.hidden_size), self.carry_dtype)
    return (zeros, zeros)

  @staticmethod
  def carry_to_h(carry: Carry) -> Array:
    return carry[1]

  @staticmethod
  def add_to_h(carry: Carry, dh: Array) -> Carry:
    return (carry[0], carry[1] + dh)

  @staticmethod
  def gates(small, carry, xproj, hproj):
    c, _ = carry
    n = c.shape[-1]
    z = xproj + hproj
    i, f = nn.sigmoid(z[..., :n]), nn.sigmoid(z[..., n:2 * n])
    g, o = jnp.tanh(z[..., 2 * n:3 * n]), nn.sigmoid(z[..., 3 * n:])
    new_c = f * c + i * g
    tanh_c = jnp.tanh(new_c)
    new_h = o * tanh_c
    if split_lstm_residuals():  # five [..., H] arrays; tanh(c') is recomputed
      return (new_c, new_h), new_h, (i, f, g, o, c)
    return (new_c, new_h), new_h, (jnp.concatenate([i, f, g, o], axis=-1), c, tanh_c)

  @staticmethod
  def gates_grad(small, residuals, d_carry, d_h):
    if len(residuals) == 5:  # the split layout (split_lstm_residuals)
      i, f, g, o, c = residuals
      tanh_c = jnp.tanh(f * c + i * g)
    else:
      acts, c, tanh_c = residuals
      n = c.shape[-1]
      i, f, g, o = acts[..., :n], acts[..., n:2 * n], acts[..., 2 * n:3 * n], acts[..., 3 * n:]
    dc_next, dh_next = d_carry
    dh = dh_next + d_h
    dc = dc_next + dh * o * (1.0 - tanh_c * tanh_c)
    dz = jnp.concatenate([dc * g * i * (1.0 - i), dc * c * f * (1.0 - f),
                          dc * i * (1.0 - g * g), dh * tanh_c * o * (1.0 - o)], axis=-1)
    return (dc * f, jnp.zeros_like(dh)), dz, dz, None


class GRUCell(_SplitCell):
  """GRU, gates (r, z, n) as in `flax.linen.GRUCell` / PyTorch. Carry: h [..., H].

  n = tanh(W_in x + b_in + r * (W_hn h + b_hn)): the hidden term of the candidate
  is gated by r, so it needs its own bias `bhn` (it cannot fold into b_in).
  """
  num_gates = 3
  additive = False

  def setup(self):
    super().setup()
    self.bhn = self.param("bhn", self.bias_init, (self.hidden_size,), self.param_dtype)

  def small_params(self) -> Array:
    return self.bhn.astype(self.carry_dtype)

  @staticmethod
  def gates(small, carry, xproj, hproj):
    h = carry
    n_ = h.shape[-1]
    r = nn.sigmoid(xproj[..., :n_] + hproj[..., :n_])
    z = nn.sigmoid(xproj[..., n_:2 * n_] + hproj[..., n_:2 * n_])
    hn = hproj[..., 2 * n_:] + small
    n = jnp.tanh(xproj[..., 2 * n_:] + r * hn)
    new_h = (1.0 - z) * n + z * h
    return new_h, new_h, (r, z, n, hn, h)

  @staticmethod
  def gates_grad(small, residuals, d_carry, d_h):
    r, z, n, hn, h = residuals
    dh = d_carry + d_h
    dn = dh * (1.0 - z) * (1.0 - n * n)  # w.r.t. n's pre-activation
    dz = dh * (h - n) * z * (1.0 - z)
    dr = dn * hn * r * (1.0 - r)
    dhn = dn * r
    return (dh * z, jnp.concatenate([dr, dz, dn], axis=-1),
            jnp.concatenate([dr, dz, dhn], axis=-1), _sum_batch(dhn))


class SimpleCell(_SplitCell):
  """Elman RNN, h' = tanh(W_i x + b + W_h h), as `flax.linen.SimpleCell`. Carry: h [..., H]."""
  num_gates = 1

  @staticmethod
  def gates(small, carry, xproj, hproj):
    new_h = jnp.tanh(xproj + hproj)
    return new_h, new_h, new_h

  @staticmethod
  def gates_grad(small, residuals, d_carry, d_h):
    dz = (d_carry + d_h) * (1.0 - residuals * residuals)
    return jnp.zeros_like(dz), dz, dz, None


CELLS: dict[str, type[_SplitCell]] = {"lstm": LSTMCell, "gru": GRUCell, "simple": SimpleCell}


def default_hoist() -> bool:
  """Whether `RNNLayer` hoists the input projection when not told: on GPU/TPU only.

  On accelerators one [T*B, F] x [F, G*H] matmul keeps the device busy where T small
  per-step matmuls do not. On CPU, measured fwd+bwd+SGD with the fused backward
  (B=32, T=64, F=128, H=256; experiments/results/rnn_speed_cpu.json, 2026-11-28),
  hoisting took 1.76x (LSTM) and 1.73x (GRU) the time of projecting inside the step
  on one core, 1.66x and 1.58x on both cores. Part of that is memory: the hoisted
  projections are one more [T, B, G*H] array, which there took the step's scratch
  memory past glibc's 32 MiB mmap threshold, so every step paid ~10,000 page faults.
  CPU keeps the projection in the loop.
  """
  return jax.default_backend() != "cpu"


def default_unroll() -> int:
  """Scan steps per loop iteration when `unroll` is not given: 1 on CPU, 8 on GPU/TPU.

  Measured fwd + bwd + SGD (experiments/benchmarks/rnn_speed.py). CPU, B=32, T=64,
  F=128, H=256 (4 time segments), one core: unroll 2 / 4 / 8 / 16 took 1.09 / 1.36 /
  1.17 / 7.8x the time of unroll 1 for LSTM and 1.01 / 1.09 / 1.09 / 1.9x for GRU; on
  both cores 1.14 / 1.26 / 1.11 / 6.2x for LSTM and 0.90 / 1.00 / 0.97 / 1.6x for GRU
  (experiments/results/rnn_speed_cpu.json, 2026-11-28). GRU's unroll 2 on both cores
  was within 6% of unroll 1 in the run before; the default stays 1, the LSTM's best.
  H100, the issue's shapes (B=128, T=256, F=128, H=512 and B=64, T=64, F=300, H=256),
  fp32 and bf16: unroll 8 took 0.65-0.83x the time of unroll 1 and was the fastest of
  1 / 8 / 16 in 7 of the 8 shapes, 2.4% behind unroll 16 in the other
  (experiments/results/rnn_speed_gpu.json). Each loop iteration costs the GPU a few
  kernel launches and a loop test; the CPU gains little from fewer of them and pays
  for the larger loop body.
  """
  return 1 if jax.default_backend() == "cpu" else 8


def default_segments(time: int) -> int:
  """Time segments of the fused recurrence when `segments` is not given.

  CPU: 4 for sequences of 32 steps or more, else 1; GPU/TPU: 1.
  With several segments the forward runs one loop per segment, the carry passed on,
  and the backward computes each segment's weight gradients as soon as that
  segment's loop is done, while XLA:CPU runs the next segment's loop beside it.
  Measured fwd + bwd + SGD of one layer on the 2-core CPU, both cores, as the time
  of 4 segments over that of 1 in the same run (experiments/benchmarks/rnn_speed.py;
  experiments/results/rnn_speed_cpu*.json, 2026-11-28): B=32, T=64, F=128, H=256:
  LSTM 0.97x, GRU 0.92x; B=64, T=400, F=128, H=128 LSTM 0.92x; B=64, T=40, F=32,
  H=128 LSTM 0.94x, GRU 1.03x. Pinned to one core: 1.01x (LSTM and GRU). Tiny shapes
  (T=8, H=16) were slower (each loop has a fixed cost; `rnn_speed.py --tiny
  --segments 4`). Whole training runs, seed 0, back to back (experiments/results/
  NOTES.md): MNIST-1D LSTM and GRU, SST-2 BiLSTM, TREC LSTM took 0.95-1.03x the
  time, at the same accuracy. An earlier rule (one segment per 16 steps) gave
  MNIST-1D GRU (T=40) exactly 2 segments, and that run took 1.35x: every step
  page-faulted ~3,600 times in glibc's allocator (3 and 4 segments did not), hence
  a flat 4. Accelerators keep 1: not measured there yet, and each segment is one
  more loop to compile.
  """
  if jax.default_backend() != "cpu":
    return 1
  return 4 if time >= 32 else 1


def _check_inputs(inputs: Array, seq_lengths: Any, where: str) -> Array | None:
  """Shape/dtype checks done at trace time, one clear error each; -> seq_lengths as an array."""
  if inputs.ndim != 3:
    raise ValueError(f"{where}: inputs must be [batch, time, features], got shape {inputs.shape}")
  if seq_lengths is None:
    return None
  seq_lengths = jnp.asarray(seq_lengths)
  if seq_lengths.shape != inputs.shape[:1]:
    raise ValueError(f"{where}: seq_lengths must have shape [batch]={inputs.shape[:1]}, "
                     f"got {seq_lengths.shape}")
  if not jnp.issubdtype(seq_lengths.dtype, jnp.integer):
    raise ValueError(f"{where}: seq_lengths must be integers, got dtype {seq_lengths.dtype}")
  return seq_lengths


class _Spec(NamedTuple):
  """The static settings of a fused recurrence."""
  cell: type  # a _SplitCell subclass: its static gate maths and carry layout
  dtype: Any  # matmul dtype (the layer's dtype)
  carry_dtype: Any  # gate maths and carry
  reverse: bool
  unroll: int
  project: bool  # xs are raw inputs projected inside the loop (True) or projections (False)
  segments: int = 1  # the time axis runs as this many consecutive loops (see _segment_bounds)


def _dot_t(a: Array, b: Array, out_dtype: Dtype) -> Array:
  """a^T b over the flattened leading axes: a [..., M], b [..., N] -> [M, N]."""
  a2, b2 = a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1])
  return jax.lax.dot_general(a2, b2, (((0,), (0,)), ((), ())), preferred_element_type=out_dtype)


def _forward(spec: _Spec, xs, mask, wi, bi, wh, small, carry0, save: bool):
  """Scan the cell over xs [T, B, .] -> (final carry, (outputs [T, B, H], residuals | None))."""
  cell, dt, cd = spec.cell, spec.dtype, spec.carry_dtype
  wh = wh.astype(dt)
  if spec.project:
    wi, bi = wi.astype(dt), bi.astype(dt)

  def body(carry, inp):
    x, m = inp
    # Same ops as nn.Dense(dtype=dt): operands cast to dt, product and bias in dt.
    xproj = jnp.dot(x.astype(dt), wi) + bi if spec.project else x
    hproj = jnp.dot(cell.carry_to_h(carry).astype(dt), wh)
    new_carry, h, res = cell.gates(small, carry, xproj.astype(cd), hproj.astype(cd))
    out = h.astype(dt)
    if m is not None:  # padded step: carry unchanged, output exactly zero
      new_carry = jax.tree.map(lambda new, old: jnp.where(m, new, old), new_carry, carry)
      out = jnp.where(m, out, jnp.zeros_like(out))
    return new_carry, (out, res if save else None)

  return jax.lax.scan(body, carry0, (xs, mask), reverse=spec.reverse, unroll=spec.unroll)


def _segment_bounds(time: int, segments: int) -> list[tuple[int, int]]:
  """[start, stop) of `segments` consecutive, near-equal pieces of range(time), none empty."""
  n = max(1, min(segments, time))
  cuts = [round(i * time / n) for i in range(n + 1)]
  return list(zip(cuts[:-1], cuts[1:]))


def _run_order(spec: _Spec, bounds: list[tuple[int, int]]) -> list[tuple[int, int]]:
  """Segments in the order the forward loop visits them."""
  return bounds[::-1] if spec.reverse else bounds


def _seg(x, start: int, stop: int):
  return None if x is None else x[start:stop]


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _recurrence(spec: _Spec, xs, mask, wi, bi, wh, small, carry0):
  """(outputs [T, B, H] in dtype, final carry) of the cell scanned over xs [T, B, .].

  xs are the inputs (spec.project, projected with wi, bi in the loop) or their
  projections [T, B, G*H]; mask [T, B, 1] bool or None; small: the cell's extra
  params (in carry precision) or None; carry0: the initial carry (zeros).
  """
  (outputs, carry), _ = _recurrence_fwd(spec, xs, mask, wi, bi, wh, small, carry0, save=False)
  return outputs, carry


def _recurrence_fwd(spec, xs, mask, wi, bi, wh, small, carry0, save: bool = True):
  """The loop over each time segment in turn, carry passed on; residuals kept per segment."""
  bounds = _segment_bounds(xs.shape[0], spec.segments)
  carry, outs, res = carry0, {}, {}
  for start, stop in _run_order(spec, bounds):
    carry, (outs[start], res[start]) = _forward(
        spec, xs[start:stop], _seg(mask, start, stop), wi, bi, wh, small, carry, save=save)
  outputs = jnp.concatenate([outs[start] for start, _ in bounds], axis=0)
  if not save:
    return (outputs, carry), None
  # Projections given from outside are not needed again: their gradient is d_xproj.
  kept_xs = xs if spec.project else None
  res = [res[start] for start, _ in bounds]
  return (outputs, carry), (kept_xs, mask, wi, bi, wh, small, carry0, outputs, res)


def _recurrence_bwd(spec, saved, cotangents):
  """The backward loop over each segment in reverse visiting order.

  Each segment's weight gradients are one matmul over that segment's steps, added
  up; it needs only that segment's backward loop, so XLA can run it while the next
  segment's loop runs.
  """
  xs, mask, wi, bi, wh, small, carry0, outputs, res = saved
  d_outputs, d_carry = cotangents
  cell, dt, cd = spec.cell, spec.dtype, spec.carry_dtype
  wh_t = wh.astype(dt).T

  def body(d_carry, inp):
    r, d_out, m = inp
    d_out = d_out.astype(cd)
    if m is not None:  # a padded step passed its carry through and output zero
      through = jax.tree.map(lambda d: jnp.where(m, jnp.zeros_like(d), d), d_carry)
      d_carry = jax.tree.map(lambda d: jnp.where(m, d, jnp.zeros_like(d)), d_carry)
      d_out = jnp.where(m, d_out, jnp.zeros_like(d_out))
    d_prev, d_xproj, d_hproj, d_small = cell.gates_grad(small, r, d_carry, d_out)
    d_prev = cell.add_to_h(d_prev, jnp.dot(d_hproj.astype(dt), wh_t, preferred_element_type=cd))
    if m is not None:
      d_prev = jax.tree.map(jnp.add, d_prev, through)
    return d_prev, (d_xproj.astype(dt), None if cell.additive else d_hproj.astype(dt), d_small)

  # The h each step read, in dtype: the previous step's output, or the initial carry.
  h0 = cell.carry_to_h(carry0).astype(dt)[None]
  if spec.reverse:
    h_prev = jnp.concatenate([outputs[1:], h0], axis=0)
    if mask is not None:  # the last valid step read the initial carry, not padding
      later = jnp.concatenate([mask[1:], jnp.zeros_like(mask[:1])], axis=0)
      h_prev = jnp.where(later, h_prev, h0)
  else:  # valid steps are a prefix: step t > 0 read output t - 1
    h_prev = jnp.concatenate([h0, outputs[:-1]], axis=0)

  bounds = _segment_bounds(outputs.shape[0], spec.segments)
  d_wh = d_wi = d_bi = d_small = None
  d_xs = {}
  add = lambda total, part: part if total is None else total + part
  for (start, stop), r in reversed(_run_order(spec, list(zip(bounds, res)))):
    d_carry, (d_xprojs, d_hprojs, d_smalls) = jax.lax.scan(
        body, d_carry, (r, d_outputs[start:stop], _seg(mask, start, stop)),
        reverse=not spec.reverse, unroll=spec.unroll)
    if cell.additive:
      d_hprojs = d_xprojs
    d_wh = add(d_wh, _dot_t(h_prev[start:stop], d_hprojs, cd))
    if small is not None:
      d_small = add(d_small, jnp.sum(d_smalls, axis=0))
    if spec.project:
      d_wi = add(d_wi, _dot_t(xs[start:stop].astype(dt), d_xprojs, cd))
      d_bi = add(d_bi, jnp.sum(d_xprojs.astype(cd), axis=(0, 1)))
      d_xs[start] = jnp.dot(d_xprojs, wi.astype(dt).T).astype(xs.dtype)
    else:
      d_xs[start] = d_xprojs  # already in dtype, the projections' dtype
  d_xs = jnp.concatenate([d_xs[start] for start, _ in bounds], axis=0)
  d_wh = d_wh.astype(wh.dtype)
  d_small = None if small is None else d_small.astype(small.dtype)
  if spec.project:
    d_wi, d_bi = d_wi.astype(wi.dtype), d_bi.astype(bi.dtype)
  return d_xs, None, d_wi, d_bi, d_wh, d_small, d_carry


_recurrence.defvjp(_recurrence_fwd, _recurrence_bwd)


class RNNLayer(nn.Module):
  """One recurrent layer scanned over time.

  Attributes:
    cell: "lstm" | "gru" | "simple".
    hidden_size: H.
    reverse: process each sequence right-to-left, starting at its own last valid
      step (not at the padded end).
    hoist_input_projection: project all time steps before the scan (True), or
      inside each step (False); None picks `default_hoist()`. Same params, same maths.
    unroll: scan steps unrolled per loop iteration; None picks `default_unroll()`
      (1 on CPU, 8 on GPU/TPU, from measurements). Same maths for any value.
    fused_backward: gradients from the hand-written backward pass over the time loop
      (see the module docstring), or from JAX autodiff through `nn.scan` (False).
      Same numbers; the fused one is faster (rnn_speed.py), the autodiff one also
      supports forward-mode differentiation (jax.jvp), which custom VJPs do not.
    segments: the fused path runs the time axis as this many consecutive loops
      (at most T), so that each segment's weight gradients overlap the next
      segment's backward loop; None picks `default_segments(T)` (CPU: 4 from 32
      steps up, else 1; GPU/TPU: 1). Same maths for any value, up to float summation
      order. The autodiff path (fused_backward=False) ignores it.
  """
  cell: str
  hidden_size: int
  reverse: bool = False
  hoist_input_projection: bool | None = None
  unroll: int | None = None
  fused_backward: bool = True
  segments: int | None = None
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, inputs: Array, seq_lengths: Array | None = None) -> tuple[Array, Array]:
    """inputs [B, T, F], seq_lengths [B] int or None -> (outputs [B, T, H], last_h [B, H]).

    Lengths outside [0, T] act as clipped to it (they are data, never checked on host).
    Padding values never reach outputs, but must be finite: the backward pass
    multiplies them by zero, and 0 * nan is nan.
    """
    if self.cell not in CELLS:
      raise ValueError(f"RNNLayer.cell={self.cell!r}: expected one of {sorted(CELLS)}")
    if self.hidden_size < 1:
      raise ValueError(f"RNNLayer.hidden_size={self.hidden_size!r}: expected a positive int")
    unroll = default_unroll() if self.unroll is None else self.unroll
    if not isinstance(unroll, int) or isinstance(unroll, bool) or unroll < 1:
      raise ValueError(f"RNNLayer.unroll={self.unroll!r}: expected an int >= 1 or None")
    seq_lengths = _check_inputs(inputs, seq_lengths, "RNNLayer")
    segments = default_segments(inputs.shape[1]) if self.segments is None else self.segments
    if not isinstance(segments, int) or isinstance(segments, bool) or segments < 1:
      raise ValueError(f"RNNLayer.segments={self.segments!r}: expected an int >= 1 or None")
    cell = CELLS[self.cell](hidden_size=self.hidden_size, dtype=self.dtype,
                            param_dtype=self.param_dtype, name="cell")
    hoist = default_hoist() if self.hoist_input_projection is None else self.hoist_input_projection
    batch, time = inputs.shape[:2]

    xs = jnp.swapaxes(inputs, 0, 1)  # [T, B, F]: scan over the leading axis
    if hoist:
      xs = cell.input_proj(xs)  # [T, B, G*H], one matmul for all steps
    # [T, B, 1]. In reverse the scan visits t = T-1 .. 0; padded steps come first
    # and leave the zero carry untouched, so each sequence starts at length-1.
    mask = None if seq_lengths is None else \
        (jnp.arange(time)[:, None] < seq_lengths[None, :])[..., None]

    if self.fused_backward:
      params = cell.weights(inputs.shape[-1])
      small = cell.small_params()
      spec = _Spec(type(cell), cell.dtype, cell.carry_dtype, self.reverse, unroll,
                   project=not hoist, segments=segments)
      wi, bi = (None, None) if hoist else (params["wi"]["kernel"], params["wi"]["bias"])
      outputs, carry = _recurrence(spec, xs, mask, wi, bi, params["wh"]["kernel"], small,
                                   cell.initialize_carry((batch,)))
    else:
      def body(cell: _SplitCell, carry: Carry, x: Any) -> tuple[Carry, Array]:
        if mask is not None:
          x, m = x
        xproj = x if hoist else cell.input_proj(x)
        new_carry, h = cell.step(carry, xproj)
        if mask is not None:
          new_carry = jax.tree.map(lambda new, old: jnp.where(m, new, old), new_carry, carry)
          h = jnp.where(m, h, jnp.zeros_like(h))  # exactly zero at padded steps
        return new_carry, h

      scan = nn.scan(body, variable_broadcast="params", split_rngs={"params": False},
                     in_axes=0, out_axes=0, unroll=unroll, reverse=self.reverse)
      carry, outputs = scan(cell, cell.initialize_carry((batch,)),
                            xs if mask is None else (xs, mask))  # outputs [T, B, H]
    last_h = cell.carry_to_h(carry).astype(self.dtype)
    return jnp.swapaxes(outputs, 0, 1), last_h


class Bidirectional(nn.Module):
  """A forward and a reverse `RNNLayer`, features concatenated (forward first)."""
  cell: str
  hidden_size: int
  hoist_input_projection: bool | None = None
  unroll: int | None = None
  fused_backward: bool = True
  segments: int | None = None
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, inputs: Array, seq_lengths: Array | None = None) -> tuple[Array, Array]:
    """inputs [B, T, F], seq_lengths [B] | None -> (outputs [B, T, 2H], last_h [B, 2H])."""
    kwargs = dict(cell=self.cell, hidden_size=self.hidden_size,
                  hoist_input_projection=self.hoist_input_projection, unroll=self.unroll,
                  fused_backward=self.fused_backward, segments=self.segments, dtype=self.dtype,
                  param_dtype=self.param_dtype)
    out_f, h_f = RNNLayer(reverse=False, name="forward", **kwargs)(inputs, seq_lengths)
    out_b, h_b = RNNLayer(reverse=True, name="backward", **kwargs)(inputs, seq_lengths)
    return jnp.concatenate([out_f, out_b], axis=-1), jnp.concatenate([h_f, h_b], axis=-1)


class StackedRNN(nn.Module):
  """`num_layers` recurrent layers (optionally bidirectional), dropout between layers.

  last_h is the top layer's (both directions concatenated when bidirectional).
  """
  cell: str
  hidden_size: int
  num_layers: int = 1
  bidirectional: bool = False
  dropout: float = 0.0
  hoist_input_projection: bool | None = None
  unroll: int | None = None
  fused_backward: bool = True
  segments: int | None = None
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def _dropout_per_step(self, x: Array) -> Array:
    """Dropout between layers whose mask at step t depends on t only, not on how far the
    batch is padded: one [B, T, D] draw had given the real steps of a batch bucketed to 60
    other masks than at 43 (padding changed training). Zeros stay zeros."""
    key = self.make_rng("dropout")
    b, t, d = x.shape
    keep = jax.vmap(lambda s: jax.random.bernoulli(jax.random.fold_in(key, s), 1.0 - self.dropout,
                                                   (b, d)), out_axes=1)(jnp.arange(t))
    return jnp.where(keep, x / (1.0 - self.dropout), 0).astype(x.dtype)

  @nn.compact
  def __call__(self, inputs: Array, seq_lengths: Array | None = None, *,
               train: bool = False) -> tuple[Array, Array]:
    """inputs [B, T, F], seq_lengths [B] | None -> (outputs [B, T, D], last_h [B, D]).

    D = 2H when bidirectional else H. Dropout needs a "dropout" rng when train=True.
    """
    if self.num_layers < 1:
      raise ValueError(f"StackedRNN.num_layers={self.num_layers!r}: expected >= 1")
    if not 0.0 <= self.dropout < 1.0:
      raise ValueError(f"StackedRNN.dropout={self.dropout!r}: expected 0 <= dropout < 1")
    seq_lengths = _check_inputs(inputs, seq_lengths, "StackedRNN")
    kwargs = dict(cell=self.cell, hidden_size=self.hidden_size,
                  hoist_input_projection=self.hoist_input_projection, unroll=self.unroll,
                  fused_backward=self.fused_backward, segments=self.segments, dtype=self.dtype,
                  param_dtype=self.param_dtype)
    x, last_h = inputs, None
    for i in range(self.num_layers):
      if i > 0 and self.dropout > 0.0 and train:
        x = self._dropout_per_step(x)
      layer_cls = Bidirectional if self.bidirectional else RNNLayer
      layer = layer_cls(name=f"layer_{i}", **kwargs)
      x, last_h = layer(x, seq_lengths)
    return x, last_h
