"""The speed-relevant paths compute the same numbers as the plain ones (no timing here).

flaxnets.models.recurrent has a hand-written backward pass (`fused_backward=True`,
the default) next to JAX autodiff through `nn.scan` (`fused_backward=False`), and
each runs with any `unroll`, any number of time `segments` and either
input-projection placement. tests/test_recurrent.py checks the default path against
a Python loop; here every speed knob is checked against the autodiff path, and each
cell's hand-written gate gradient against jax.vjp of its gate maths.
"""
from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flaxnets.models import recurrent

B, T, F, H = 3, 7, 5, 4
LENGTHS = np.array([7, 1, 4], np.int32)
TOL = dict(atol=1e-5, rtol=1e-5)
# (reverse, use lengths, hoist, unroll, segments): unroll 3 and 4 do not divide T = 7,
# nor do 2 and 3 segments; 9 segments are more than T (one step each).
CASES = [(False, False, False, 3, 1), (True, True, True, 2, 3), (False, True, False, 4, 2),
         (True, False, False, 8, 9), (True, True, False, 1, 2)]


def _perturb(tree, seed: int = 1):
  leaves, treedef = jax.tree.flatten(tree)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  return jax.tree.unflatten(
      treedef, [p + 0.3 * jax.random.normal(k, p.shape, p.dtype) for p, k in zip(leaves, keys)])


def _loss(out, h):
  w = jnp.linspace(-1.0, 1.5, out.size).reshape(out.shape)
  return jnp.sum(jnp.sin(out.astype(jnp.float32)) * w) + jnp.sum(h.astype(jnp.float32) ** 2)


# Each cell once, and the LSTM also with the residual layout of the other backends
# (split_lstm_residuals: five [B, H] arrays on CPU, packed on GPU/TPU).
CELL_LAYOUTS = [(cell, True) for cell in recurrent.CELLS] + [("lstm", False)]
CELL_LAYOUT_IDS = [cell if cell != "lstm" else f"lstm-{'split' if split else 'packed'}"
                   for cell, split in CELL_LAYOUTS]


@pytest.mark.parametrize("cell, split", CELL_LAYOUTS, ids=CELL_LAYOUT_IDS)
def test_gate_grad_matches_autodiff(monkeypatch, cell, split):
  """gates_grad == jax.vjp of gates, for every input and cotangent (no scan involved)."""
  monkeypatch.setattr(recurrent, "split_lstm_residuals", lambda: split)
  cls = recurrent.CELLS[cell]
  keys = iter(jax.random.split(jax.random.key(0), 8))
  normal = lambda shape: jax.random.normal(next(keys), shape)
  g = cls.num_gates * H
  small = normal((H,)) if cell == "gru" else None
  carry = (normal((B, H)), normal((B, H))) if cell == "lstm" else normal((B, H))
  xproj, hproj = normal((B, g)), normal((B, g))
  (new, h, res), vjp = jax.vjp(cls.gates, small, carry, xproj, hproj)
  d_new = jax.tree.map(lambda a: jax.random.normal(next(keys), a.shape), new)
  d_h = normal((B, H))
  zero_res = jax.tree.map(jnp.zeros_like, res)
  d_small, d_carry, d_xproj, d_hproj = vjp((d_new, d_h, zero_res))
  got_carry, got_x, got_h, got_small = cls.gates_grad(small, res, d_new, d_h)
  # gates_grad leaves out the path through hproj (its caller adds d_hproj @ W_h^T).
  chex.assert_trees_all_close(got_carry, d_carry, **TOL)
  chex.assert_trees_all_close((got_x, got_h), (d_xproj, d_hproj), **TOL)
  if cell == "gru":
    chex.assert_trees_all_close(got_small, d_small, **TOL)
  assert cls.additive == (cell != "gru")


@pytest.mark.parametrize("cell, split", CELL_LAYOUTS, ids=CELL_LAYOUT_IDS)
def test_fused_equals_autodiff_for_every_speed_knob(monkeypatch, cell, split):
  monkeypatch.setattr(recurrent, "split_lstm_residuals", lambda: split)
  x = jax.random.normal(jax.random.key(0), (B, T, F))
  models = []
  for reverse, use_lengths, hoist, unroll, segments in CASES:
    kw = dict(reverse=reverse, hoist_input_projection=hoist, unroll=unroll, segments=segments)
    models.append((recurrent.RNNLayer(cell, H, fused_backward=True, **kw),
                   recurrent.RNNLayer(cell, H, fused_backward=False, **kw),
                   jnp.asarray(LENGTHS) if use_lengths else None))
  shapes = jax.eval_shape(models[0][0].init, jax.random.key(0), x)
  params = _perturb(jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes))

  def grads(model, lengths):
    def loss(p, x):
      out, h = model.apply(p, x, lengths)
      return _loss(out, h), (out, h)
    return jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(params, x)

  # One program for all cases, without LLVM optimisation (compile time dominates).
  run = jax.jit(lambda: [(grads(f, n), grads(a, n)) for f, a, n in models],
                compiler_options={"xla_backend_optimization_level": 0})
  for ((_, fused_out), fused_g), ((_, auto_out), auto_g) in run():
    chex.assert_trees_all_close(fused_out, auto_out, **TOL)
    chex.assert_trees_all_close(fused_g, auto_g, **TOL)


def test_fused_bf16_and_stacked_bidirectional_match_autodiff():
  x = jax.random.normal(jax.random.key(0), (B, T, F))
  lengths = jnp.asarray(LENGTHS)
  kw = dict(cell="gru", hidden_size=H, num_layers=2, bidirectional=True, dtype=jnp.bfloat16)
  fused, auto = recurrent.StackedRNN(**kw), recurrent.StackedRNN(fused_backward=False, **kw)
  params = jax.eval_shape(fused.init, jax.random.key(0), x, lengths)
  params = _perturb(jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), params))

  def grads(model):
    return jax.grad(lambda p: _loss(*model.apply(p, x, lengths)))(params), \
        model.apply(params, x, lengths)

  (g_f, out_f), (g_a, out_a) = jax.jit(lambda: (grads(fused), grads(auto)),
                                       compiler_options={"xla_backend_optimization_level": 0})()
  assert out_f[0].dtype == jnp.bfloat16
  assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(g_f))
  chex.assert_trees_all_close(out_f, out_a, atol=2e-2)
  # bf16 matmuls: the two paths round in different places; compare relative to scale.
  for a, b in zip(jax.tree.leaves(g_f), jax.tree.leaves(g_a)):
    scale = float(jnp.max(jnp.abs(b))) + 1e-3
    assert float(jnp.max(jnp.abs(a - b))) <= 0.05 * scale


def test_autodiff_path_supports_forward_mode():
  """The documented reason to keep fused_backward=False: jax.jvp works through it."""
  x = jax.random.normal(jax.random.key(0), (B, T, F))
  model = recurrent.RNNLayer("lstm", H, fused_backward=False)
  params = model.init(jax.random.key(0), x)
  out, tangent = jax.jvp(lambda x: model.apply(params, x)[0], (x,), (jnp.ones_like(x),))
  assert tangent.shape == out.shape and bool(jnp.all(jnp.isfinite(tangent)))


def test_unroll_must_be_a_positive_int():
  x = jnp.zeros((B, T, F))
  with pytest.raises(ValueError, match="unroll=0"):
    recurrent.RNNLayer("gru", H, unroll=0).init(jax.random.key(0), x)


@pytest.mark.parametrize("backend, expected", [("cpu", 1), ("gpu", 8), ("tpu", 8)])
def test_unset_unroll_follows_the_backend(monkeypatch, backend, expected):
  # The measured defaults (default_unroll's docstring): the traced scans, forward and
  # the fused backward's, unroll by 1 on CPU and by 8 on accelerators.
  monkeypatch.setattr(recurrent.jax, "default_backend", lambda: backend)
  x = jax.random.normal(jax.random.key(0), (B, 16, F))
  model = recurrent.RNNLayer("lstm", H, hoist_input_projection=False)
  params = model.init(jax.random.key(0), x)
  jaxpr = jax.make_jaxpr(jax.grad(lambda p: jnp.sum(model.apply(p, x)[0])))(params)
  unrolls = [eqn.params["unroll"] for eqn in _all_eqns(jaxpr.jaxpr) if eqn.primitive.name == "scan"]
  assert len(unrolls) >= 2 and set(unrolls) == {expected}, unrolls  # forward and backward


@pytest.mark.parametrize("backend, expected", [("cpu", 5), ("gpu", 3), ("tpu", 3)])
def test_lstm_residual_layout_follows_the_backend(monkeypatch, backend, expected):
  # split_lstm_residuals' measured rule: i, f, g, o, c as five arrays on CPU; on
  # accelerators the four activations packed into one [B, 4H] array, c and tanh(c').
  monkeypatch.setattr(recurrent.jax, "default_backend", lambda: backend)
  carry = (jnp.zeros((B, H)), jnp.zeros((B, H)))
  proj = jnp.zeros((B, 4 * H))
  _, _, res = recurrent.LSTMCell.gates(None, carry, proj, proj)
  assert len(res) == expected
  assert {r.shape for r in res} == ({(B, H)} if expected == 5 else {(B, 4 * H), (B, H)})


def test_segments_must_be_a_positive_int():
  x = jnp.zeros((B, T, F))
  with pytest.raises(ValueError, match="segments=0"):
    recurrent.RNNLayer("lstm", H, segments=0).init(jax.random.key(0), x)


@pytest.mark.parametrize("time, segments", [(1, 1), (7, 3), (7, 7), (7, 9), (64, 4), (400, 4)])
def test_segment_bounds_cover_time_in_order(time, segments):
  bounds = recurrent._segment_bounds(time, segments)
  assert len(bounds) == min(segments, time)
  assert bounds[0][0] == 0 and bounds[-1][1] == time
  assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))  # contiguous, in order
  sizes = [stop - start for start, stop in bounds]
  assert min(sizes) >= 1 and max(sizes) - min(sizes) <= 1


@pytest.mark.parametrize("backend, time, expected", [
    ("cpu", 8, 1), ("cpu", 31, 1), ("cpu", 32, 4), ("cpu", 400, 4), ("gpu", 64, 1),
    ("tpu", 400, 1)])
def test_unset_segments_follow_the_backend_and_length(monkeypatch, backend, time, expected):
  # default_segments' measured rule: on CPU 4 segments from 32 steps up, else 1; one
  # elsewhere. Each segment is one forward and one backward scan in the traced step.
  monkeypatch.setattr(recurrent.jax, "default_backend", lambda: backend)
  x = jax.random.normal(jax.random.key(0), (B, time, F))
  model = recurrent.RNNLayer("gru", H)
  params = jax.eval_shape(model.init, jax.random.key(0), x)
  jaxpr = jax.make_jaxpr(jax.grad(lambda p: jnp.sum(model.apply(p, x)[0])))(params)
  scans = [eqn for eqn in _all_eqns(jaxpr.jaxpr) if eqn.primitive.name == "scan"]
  assert len(scans) == 2 * expected, len(scans)
  assert sum(eqn.params["length"] for eqn in scans) == 2 * time


def _all_eqns(jaxpr):
  """Every equation of a jaxpr and of the jaxprs nested in its equations' params."""
  for eqn in jaxpr.eqns:
    yield eqn
    for v in eqn.params.values():
      inner = getattr(v, "jaxpr", v)  # a ClosedJaxpr holds its Jaxpr in .jaxpr
      if hasattr(inner, "eqns"):
        yield from _all_eqns(inner)
