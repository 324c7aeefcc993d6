"""Tests for flaxnets.models.recurrent.

The scanned, masked layers are checked against a plain Python loop that runs
each example over its own valid steps only, one cell call per step: no scan, no
masks, no padding, so any leak or off-by-one in the layer shows up as a mismatch.
"""
from __future__ import annotations

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flaxnets.models import recurrent

B, T, F, H = 3, 7, 5, 4
LENGTHS = np.array([7, 1, 4], np.int32)  # full length, length 1, partial
CELL_NAMES = tuple(recurrent.CELLS)
DIRECTIONS = ("forward", "reverse", "bidirectional")
TOL = dict(atol=1e-5, rtol=1e-5)


def _inputs(time: int = T, seed: int = 0) -> jax.Array:
  return jax.random.normal(jax.random.key(seed), (B, time, F))  # [batch, time, features]


def _perturb(params, seed: int = 1):
  """Add noise to every param so zero-initialised biases (e.g. GRU's bhn) matter."""
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  return jax.tree.unflatten(
      tree, [p + 0.3 * jax.random.normal(k, p.shape, p.dtype) for p, k in zip(leaves, keys)])


def _make(cell: str, direction: str, hoist: bool | None = None,
          segments: int | None = None) -> nn.Module:
  if direction == "bidirectional":
    return recurrent.Bidirectional(cell, H, hoist_input_projection=hoist, segments=segments)
  return recurrent.RNNLayer(cell, H, reverse=direction == "reverse",
                            hoist_input_projection=hoist, segments=segments)


def _layer_params(cell: str, direction: str):
  """A layer's param tree built from bare cells (no scan to compile), perturbed."""
  module = recurrent.CELLS[cell](hidden_size=H)
  one = lambda seed: module.init(jax.random.key(seed), module.initialize_carry((B,)),
                                 jnp.zeros((B, F)))["params"]
  if direction == "bidirectional":
    return _perturb({"params": {"forward": {"cell": one(0)}, "backward": {"cell": one(1)}}})
  return _perturb({"params": {"cell": one(0)}})


def _loss(outputs: jax.Array, last_h: jax.Array) -> jax.Array:
  """A scalar touching every output and last_h with distinct weights."""
  w_out = jnp.linspace(-1.0, 1.5, outputs.size).reshape(outputs.shape)
  w_h = jnp.linspace(0.5, -2.0, last_h.size).reshape(last_h.shape)
  return jnp.sum(jnp.sin(outputs) * w_out) + jnp.sum(last_h ** 2 * w_h)


def reference_layer(cell: str, cell_params, x: jax.Array, lengths, reverse: bool):
  """Python loop, example by example over valid steps: -> ([B, T, H], [B, H])."""
  module = recurrent.CELLS[cell](hidden_size=H).bind({"params": cell_params})
  time = x.shape[1]
  outputs, last = [], []
  for b in range(x.shape[0]):
    n = time if lengths is None else int(lengths[b])
    steps = range(n - 1, -1, -1) if reverse else range(n)
    carry = module.initialize_carry(())
    out_b = [jnp.zeros((H,))] * time  # padded steps stay zero
    for t in steps:
      carry, out_b[t] = module(carry, x[b, t])  # input_proj + step, one time step
    outputs.append(jnp.stack(out_b))
    last.append(module.carry_to_h(carry))
  return jnp.stack(outputs), jnp.stack(last)


def reference(cell: str, direction: str, params, x, lengths):
  """Reference for a layer's whole param tree ({"params": {"cell"|"forward"|"backward": ...}})."""
  p = params["params"]
  if direction != "bidirectional":
    return reference_layer(cell, p["cell"], x, lengths, direction == "reverse")
  out_f, h_f = reference_layer(cell, p["forward"]["cell"], x, lengths, False)
  out_b, h_b = reference_layer(cell, p["backward"]["cell"], x, lengths, True)
  return jnp.concatenate([out_f, out_b], -1), jnp.concatenate([h_f, h_b], -1)


@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize("use_lengths", [False, True], ids=["no_lengths", "lengths"])
@pytest.mark.parametrize("cell", CELL_NAMES)
def test_matches_python_loop(cell, use_lengths, direction):
  x = _inputs()
  lengths = jnp.asarray(LENGTHS) if use_lengths else None
  params = _layer_params(cell, direction)

  def ref_loss(params, x):
    out, h = reference(cell, direction, params, x, LENGTHS if use_lengths else None)
    return _loss(out, h), (out, h)

  (_, ref_out), ref_grads = jax.value_and_grad(ref_loss, argnums=(0, 1), has_aux=True)(params, x)

  def model_loss(hoist: bool):
    # The in-loop projection runs as 3 time segments (2 + 3 + 2 steps), each its own loop.
    model = _make(cell, direction, hoist, segments=None if hoist else 3)

    def loss(params, x):
      out, h = model.apply(params, x, lengths)
      return _loss(out, h), (out, h)

    return jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)

  # Both paths in one program, built without LLVM optimisation: XLA compile time
  # dominates this file and the semantics checked here do not depend on it.
  both = jax.jit(lambda p, x: (model_loss(True)(p, x), model_loss(False)(p, x)),
                 compiler_options={"xla_backend_optimization_level": 0})
  results = both(params, x)
  for (_, (out, h)), grads in results:
    chex.assert_trees_all_close((out, h), ref_out, **TOL)
    chex.assert_trees_all_close(grads, ref_grads, **TOL)
    if use_lengths:
      pad = np.arange(T)[None, :] >= LENGTHS[:, None]  # [B, T]
      assert np.all(np.asarray(out)[pad] == 0.0), "padded outputs must be exactly zero"
  # Same params, same maths; only float summation order differs (one big matmul
  # vs per-step ones, one weight-gradient matmul vs three), so compare at the same
  # tolerance.
  chex.assert_trees_all_close(results[0], results[1], **TOL)


@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize("cell", CELL_NAMES)
def test_extra_padding_changes_nothing(cell, direction):
  x = _inputs()
  # Non-zero garbage in the padding: only seq_lengths may decide what is valid.
  x_long = jnp.concatenate([x, 5.0 * _inputs(5, seed=7)], axis=1)  # [B, T+5, F]
  lengths = jnp.asarray(LENGTHS)
  model = _make(cell, direction)
  params = _layer_params(cell, direction)
  # The hand-built tree is exactly what init makes (eval_shape: no compile).
  chex.assert_trees_all_equal_shapes_and_dtypes(
      params, jax.eval_shape(model.init, jax.random.key(0), x, lengths))

  @jax.jit
  def summary(params, x):
    out, h = model.apply(params, x, lengths)
    pooled = jnp.sum(out, axis=1) / lengths[:, None]  # mean over valid steps, [B, D]
    loss = jnp.sum(jnp.tanh(pooled) * 0.7) + jnp.sum(h ** 2)
    return loss, out, h, pooled

  loss, out, h, pooled = summary(params, x)
  loss_l, out_l, h_l, pooled_l = summary(params, x_long)
  chex.assert_trees_all_close((loss_l, h_l, pooled_l), (loss, h, pooled), atol=1e-6, rtol=1e-6)
  chex.assert_trees_all_close(out_l[:, :T], out, atol=1e-6, rtol=1e-6)
  assert np.all(np.asarray(out_l[:, T:]) == 0.0)


@pytest.mark.parametrize("cell", CELL_NAMES)
def test_cell_matches_flax_cell(cell):
  """One step of our fused cell == flax's per-gate cell, with flax's params mapped onto ours."""
  flax_cell = {"lstm": nn.LSTMCell, "gru": nn.GRUCell,
               "simple": nn.SimpleCell}[cell](features=H)
  ours = recurrent.CELLS[cell](hidden_size=H)
  x = _inputs()[:, 0]  # [batch, features]
  k_c, k_h = jax.random.split(jax.random.key(3))
  h = jax.random.normal(k_h, (B, H))
  carry = (jax.random.normal(k_c, (B, H)), h) if cell == "lstm" else h
  fp = _perturb(flax_cell.init(jax.random.key(0), carry, x))["params"]

  cat = lambda names, leaf: jnp.concatenate([fp[n][leaf] for n in names], axis=-1)
  if cell == "lstm":
    mapped = {"wi": {"kernel": cat(["ii", "if", "ig", "io"], "kernel"),
                     "bias": cat(["hi", "hf", "hg", "ho"], "bias")},
              "wh": {"kernel": cat(["hi", "hf", "hg", "ho"], "kernel")}}
  elif cell == "gru":
    mapped = {"wi": {"kernel": cat(["ir", "iz", "in"], "kernel"),
                     "bias": cat(["ir", "iz", "in"], "bias")},
              "wh": {"kernel": cat(["hr", "hz", "hn"], "kernel")},
              "bhn": fp["hn"]["bias"]}
  else:
    mapped = {"wi": {"kernel": fp["i"]["kernel"], "bias": fp["i"]["bias"]},
              "wh": {"kernel": fp["h"]["kernel"]}}
  # Our param tree has exactly this structure: nothing missing, nothing extra.
  chex.assert_trees_all_equal_shapes(mapped, ours.init(jax.random.key(0), carry, x)["params"])
  expected = flax_cell.apply({"params": fp}, carry, x)
  got = ours.apply({"params": mapped}, carry, x)
  chex.assert_trees_all_close(got, expected, **TOL)


def _stacked_params(cell: str, num_layers: int):
  """StackedRNN(bidirectional=False) params from bare cells; layer i>0 reads H features."""
  layers = {}
  for i in range(num_layers):
    module = recurrent.CELLS[cell](hidden_size=H)
    x = jnp.zeros((B, F if i == 0 else H))
    layers[f"layer_{i}"] = {"cell": module.init(jax.random.key(i), module.initialize_carry((B,)),
                                                x)["params"]}
  return _perturb({"params": layers})


def test_stacked_bf16_keeps_float32_params():
  x, lengths = _inputs(), jnp.asarray(LENGTHS)
  kwargs = dict(cell="lstm", hidden_size=H, num_layers=2)
  model16 = recurrent.StackedRNN(dtype=jnp.bfloat16, **kwargs)
  model32 = recurrent.StackedRNN(**kwargs)
  shapes = jax.eval_shape(model16.init, jax.random.key(0), x, lengths)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(shapes))
  params = _stacked_params("lstm", 2)
  chex.assert_trees_all_equal_shapes_and_dtypes(params, shapes)

  @jax.jit  # one compile for everything below
  def run(params):
    loss16 = lambda p: _loss(*model16.apply(p, x, lengths)).astype(jnp.float32)
    return model16.apply(params, x, lengths), jax.grad(loss16)(params), \
        model32.apply(params, x, lengths)

  (out, h), grads, (out32, h32) = run(params)
  assert out.shape == (B, T, H) and h.shape == (B, H)
  assert out.dtype == jnp.bfloat16 and h.dtype == jnp.bfloat16
  pad = np.arange(T)[None, :] >= LENGTHS[:, None]
  assert np.all(np.asarray(out.astype(jnp.float32))[pad] == 0.0)
  # Same params in float32 give nearly the same numbers (bf16 matmuls, f32 carries).
  chex.assert_trees_all_close((out.astype(jnp.float32), h.astype(jnp.float32)), (out32, h32),
                              atol=5e-2)
  assert all(g.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(g)))
             for g in jax.tree.leaves(grads))


def test_dropout_between_layers_train_only():
  x, lengths = _inputs(), jnp.asarray(LENGTHS)
  model = recurrent.StackedRNN("simple", H, num_layers=2, dropout=0.5)
  params = _stacked_params("simple", 2)
  no_dropout = jax.jit(recurrent.StackedRNN("simple", H, num_layers=2).apply)(params, x, lengths)
  # Eval: deterministic, needs no rng, identical to the same net without dropout.
  apply = jax.jit(model.apply, static_argnames="train")
  chex.assert_trees_all_equal(apply(params, x, lengths, train=False), no_dropout)
  train = lambda seed: apply(params, x, lengths, train=True,
                             rngs={"dropout": jax.random.key(seed)})
  out1, out2 = train(1), train(2)
  assert not np.allclose(out1[0], no_dropout[0]) and not np.allclose(out1[0], out2[0])
  chex.assert_trees_all_equal(train(1), out1)  # same rng, same mask
  pad = np.arange(T)[None, :] >= LENGTHS[:, None]
  assert np.all(np.asarray(out1[0])[pad] == 0.0)


def test_dropout_between_layers_does_not_depend_on_the_padding():
  """A batch bucketed to another length keeps its real steps' masks: one [B, T, D] draw
  had changed them, so max_len (the buckets) changed training without truncating."""
  x, lengths = _inputs(), jnp.asarray(LENGTHS)
  model = recurrent.StackedRNN("simple", H, num_layers=2, dropout=0.5, bidirectional=True)
  params = model.init(jax.random.key(0), x, lengths)
  apply = jax.jit(model.apply, static_argnames="train")
  train = lambda t: apply(params, jnp.pad(x, ((0, 0), (0, t - T), (0, 0))), lengths,
                          train=True, rngs={"dropout": jax.random.key(3)})
  (out, last), (out_long, last_long) = train(T), train(2 * T + 3)
  np.testing.assert_allclose(out_long[:, :T], out, atol=1e-6)
  np.testing.assert_allclose(last_long, last, atol=1e-6)
  assert not np.allclose(out, apply(params, x, lengths, train=False)[0])  # it drops


def test_single_layer_has_no_dropout():
  """Dropout is between layers only: one layer has nowhere to apply it."""
  x = _inputs()
  model = recurrent.StackedRNN("simple", H, num_layers=1, dropout=0.5)
  params = _stacked_params("simple", 1)
  apply = jax.jit(model.apply, static_argnames="train")
  chex.assert_trees_all_equal(
      apply(params, x, train=True, rngs={"dropout": jax.random.key(1)}), apply(params, x))


def test_bad_arguments_raise_clear_errors():
  x = _inputs()
  with pytest.raises(ValueError, match="cell='lstmm'"):
    recurrent.RNNLayer("lstmm", H).init(jax.random.key(0), x)
  with pytest.raises(ValueError, match="seq_lengths must have shape"):
    recurrent.RNNLayer("gru", H).init(jax.random.key(0), x, jnp.ones((B + 1,), jnp.int32))
  with pytest.raises(ValueError, match="seq_lengths must be integers"):
    recurrent.RNNLayer("gru", H).init(jax.random.key(0), x, jnp.ones((B,)))
  with pytest.raises(ValueError, match=r"inputs must be \[batch, time, features\]"):
    recurrent.StackedRNN("simple", H).init(jax.random.key(0), x[0])
  with pytest.raises(ValueError, match="dropout=1.5"):
    recurrent.StackedRNN("simple", H, dropout=1.5).init(jax.random.key(0), x)


def test_model_summary_names_nested_parameters_by_path():
  from flaxnets.training.state import summary
  params = {"RNN_0": {"cell": {"hi": {"kernel": jnp.zeros((3, 4)), "bias": jnp.zeros(4)}}},
            "Dense_0": {"kernel": jnp.zeros((4, 2)), "bias": jnp.zeros(2)}}
  lines = summary(params).splitlines()
  assert lines[2].split() == ["RNN_0", "16", "cell/hi/bias:(4,),", "cell/hi/kernel:(3,", "4)"]
  assert lines[3].split()[:3] == ["Dense_0", "10", "bias:(2,),"]
  assert lines[-1].split()[:2] == ["total", "26"]
