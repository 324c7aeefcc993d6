"""Sequence classifier, CRNN and char LM: shapes, parameter counts, padding, one step, bf16."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from flaxnets.models import build_model
from flaxnets.models.classifiers import sample


def _init(model, x, lengths=None):
  return model.init({"params": jax.random.PRNGKey(0), "dropout": jax.random.PRNGKey(1)},
                    x, lengths, train=False)


def _count(params):
  return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))


def test_rnn_on_series_shape_and_param_count():
  model = build_model("rnn", num_classes=10, cell="lstm", hidden_size=16)
  x = jnp.ones((3, 8, 8))
  variables = _init(model, x)
  assert model.apply(variables, x).shape == (3, 10)
  # LSTM: input kernel 8x64 + bias 64, recurrent 16x64; head 16x10 + 10.
  assert _count(variables["params"]) == 8 * 64 + 64 + 16 * 64 + 16 * 10 + 10


def test_rnn_on_tokens_bidirectional_two_layers():
  model = build_model("rnn", num_classes=2, cell="gru", hidden_size=8, num_layers=2,
                      bidirectional=True, vocab_size=50, embed_dim=6, pooling="max")
  x = jnp.array([[3, 4, 5, 0], [7, 0, 0, 0]], jnp.int32)
  lengths = jnp.array([3, 1])
  variables = _init(model, x, lengths)
  assert model.apply(variables, x, lengths).shape == (2, 2)
  gru = lambda f, h: f * 3 * h + 3 * h + h * 3 * h + h  # input kernel+bias, hidden kernel + b_hn
  expected = 50 * 6 + 2 * gru(6, 8) + 2 * gru(16, 8) + 16 * 2 + 2
  assert _count(variables["params"]) == expected


@pytest.mark.parametrize("pooling", ["last", "mean", "max"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_padding_never_changes_logits(pooling, bidirectional):
  model = build_model("rnn", num_classes=3, cell="lstm", hidden_size=5, pooling=pooling,
                      bidirectional=bidirectional, vocab_size=20, embed_dim=4)
  x = jnp.array([[3, 4, 5, 6], [7, 8, 0, 0]], jnp.int32)
  lengths = jnp.array([4, 2])
  variables = _init(model, x, lengths)
  logits = model.apply(variables, x, lengths)
  x_padded = jnp.concatenate([x, jnp.zeros((2, 5), jnp.int32)], axis=1)
  # Garbage (non-zero) tokens in the padded region must not leak either.
  x_garbage = x_padded.at[1, 2:].set(9)
  chex.assert_trees_all_close(model.apply(variables, x_padded, lengths), logits, atol=1e-6)
  chex.assert_trees_all_close(model.apply(variables, x_garbage, lengths), logits, atol=1e-6)


@pytest.mark.parametrize("pooling", ["mean", "max"])
def test_an_empty_sequence_pools_to_zero(pooling):
  """Max pooling had filled it with finfo.min: logits of +-inf and an infinite loss."""
  from flaxnets.models.classifiers import pool
  outputs = jax.random.normal(jax.random.PRNGKey(0), (2, 4, 3))
  pooled = pool(outputs, outputs[:, -1], jnp.array([3, 0]), pooling)
  np.testing.assert_array_equal(pooled[1], np.zeros(3))
  want = outputs[0, :3].max(0) if pooling == "max" else outputs[0, :3].mean(0)
  np.testing.assert_allclose(pooled[0], want, rtol=1e-6)


def test_crnn_images_and_series():
  model = build_model("crnn", num_classes=10, conv_features=(8, 16), hidden_size=12)
  x = jnp.ones((2, 8, 8, 1))
  variables = _init(model, x)
  assert model.apply(variables, x).shape == (2, 10)
  series = jnp.ones((2, 40, 1))
  assert model.apply(_init(model, series), series).shape == (2, 10)


@pytest.mark.parametrize("pool", [True, False])
@pytest.mark.parametrize("pooling", ["last", "mean", "max"])
def test_crnn_series_padding_never_changes_logits(pool, pooling):
  """Lengths had been dropped with conv pooling (the default) and leaked through the
  SAME-padded convs without it."""
  model = build_model("crnn", num_classes=3, conv_features=(4, 6), hidden_size=5, pool=pool,
                      pooling=pooling)
  rng = np.random.RandomState(0)
  x = jnp.asarray(rng.randn(3, 11, 2), jnp.float32)
  lengths = jnp.array([11, 5, 2])
  steps = jnp.arange(11)[None, :, None]
  variables = _init(model, x, lengths)
  logits = model.apply(variables, x, lengths)
  garbage = jnp.where(steps < lengths[:, None, None], x, 7.0)
  longer = jnp.concatenate([garbage, jnp.full((3, 6, 2), -3.0)], axis=1)
  chex.assert_trees_all_close(model.apply(variables, garbage, lengths), logits, atol=1e-6)
  chex.assert_trees_all_close(model.apply(variables, longer, lengths), logits, atol=1e-6)


def test_char_lm_shape_and_sampling():
  model = build_model("char_lm", vocab_size=30, embed_dim=8, hidden_size=16, num_layers=2)
  x = jnp.ones((2, 12), jnp.int32)
  variables = _init(model, x)
  assert model.apply(variables, x).shape == (2, 12, 30)
  out = sample(model, variables, np.array([1, 2, 3]), 10, jax.random.PRNGKey(0), window=8)
  assert out.shape == (13,) and (np.asarray(out[:3]) == [1, 2, 3]).all()
  assert ((out >= 0) & (out < 30)).all()
  for kwargs, message in [({"length": -2}, "length=-2: expected an integer >= 0"),
                          ({"window": 0}, "window=0: expected an integer >= 1"),
                          # NaN had sampled padding only; so had an id past the embedding
                          ({"temperature": float("nan")}, "temperature=nan: expected a finite"),
                          ({"prompt": np.array([5, 30])}, r"prompt token id 30: expected ids "
                                                          r"in \[0, 30\)"),
                          ({"prompt": np.array([5, -3])}, "prompt token id -3")]:
    with pytest.raises(ValueError, match=message):  # were broadcasting / index errors
      sample(model, variables, **{"prompt": np.array([1, 2]), "length": 3,
                                  "rng": jax.random.PRNGKey(0), **kwargs})
  for t in (np.float32(0.7), jnp.asarray(0.7), 2):  # scalars of any kind, 0-d arrays too
    assert sample(model, variables, np.array([1, 2]), 2, jax.random.PRNGKey(0),
                  temperature=t).shape == (4,)
  for t in (True, np.array([0.7]), "0.7"):
    with pytest.raises(ValueError, match="expected a finite number > 0"):
      sample(model, variables, np.array([1, 2]), 2, jax.random.PRNGKey(0), temperature=t)
  # The padding id is never generated, even where the model gives it the most weight.
  head = variables["params"]["head"]
  biased = {"params": {**variables["params"],
                       "head": {**head, "bias": head["bias"].at[0].set(50.0)}}}
  out = sample(model, biased, np.array([1, 2]), 40, jax.random.PRNGKey(1), temperature=3.0)
  assert (np.asarray(out) != 0).all()
  # Banned ids neither: 1 ('<unk>') where it has the most weight after padding.
  biased["params"]["head"]["bias"] = biased["params"]["head"]["bias"].at[1].set(49.0)
  out = sample(model, biased, np.array([1, 2]), 40, jax.random.PRNGKey(1), banned=(1,))
  assert (np.asarray(out[2:]) > 1).all()
  assert (np.asarray(sample(model, biased, np.array([1, 2]), 40, jax.random.PRNGKey(1)))[2:]
          == 1).mean() > 0.9  # (without the ban it is drawn)
  for banned in ((30,), (-1,), tuple(range(30))):
    with pytest.raises(ValueError, match=r"banned=.*expected ids in \[0, 30\) that leave"):
      sample(model, variables, np.array([1, 2]), 2, jax.random.PRNGKey(0), banned=banned)


@pytest.mark.parametrize("name,kwargs,x,labels", [
    ("rnn", dict(num_classes=4, cell="gru", hidden_size=16), np.random.RandomState(0).randn(8, 6, 3), np.arange(8) % 4),
    ("crnn", dict(num_classes=4, conv_features=(8,), hidden_size=8), np.random.RandomState(0).randn(8, 8, 8, 1), np.arange(8) % 4),
])
def test_one_step_lowers_loss(name, kwargs, x, labels):
  model = build_model(name, **kwargs)
  x = jnp.asarray(x, jnp.float32)
  variables = _init(model, x)

  def loss_fn(params):
    logits = model.apply({**variables, "params": params}, x, train=False)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

  tx = optax.adam(1e-2)
  params = variables["params"]
  opt_state = tx.init(params)
  before = loss_fn(params)
  grads = jax.grad(loss_fn)(params)
  updates, _ = tx.update(grads, opt_state, params)
  after = loss_fn(optax.apply_updates(params, updates))
  assert after < before


@pytest.mark.parametrize("name,kwargs,x", [
    ("rnn", dict(num_classes=3, hidden_size=8, vocab_size=10, embed_dim=4), jnp.ones((2, 5), jnp.int32)),
    ("crnn", dict(num_classes=3, conv_features=(4,), hidden_size=4), jnp.ones((2, 8, 8, 1))),
    ("char_lm", dict(vocab_size=10, embed_dim=4, hidden_size=8), jnp.ones((2, 5), jnp.int32)),
])
def test_bf16_runs_and_keeps_f32_params(name, kwargs, x):
  model = build_model(name, dtype="bfloat16", **kwargs)
  variables = _init(model, x)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables["params"]))
  logits = model.apply(variables, x)
  assert logits.dtype == jnp.float32 and bool(jnp.isfinite(logits).all())
  # bfloat16 params too: the recurrent kernels' orthogonal init failed (no bf16 QR on CPU)
  model = build_model(name, dtype="bfloat16", param_dtype="bfloat16", **kwargs)
  variables = _init(model, x)
  assert all(p.dtype == jnp.bfloat16 for p in jax.tree.leaves(variables["params"]))
  assert bool(jnp.isfinite(model.apply(variables, x)).all())
