"""Tests for flaxnets/models/convnets.py: shapes, parameter counts, training,
bfloat16 compute and padding invariance of the sequence nets.

Inputs and nets are tiny (16x16 images, batch 4, narrow widths) because XLA's
compile time dominates on CPU; shapes, counts and dtypes come from
jax.eval_shape, which compiles nothing. resnet20/resnet18 are also counted at
their published sizes.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from flaxnets.models import convnets, registry

B = 4
IMG = (B, 16, 16, 3)

# name -> (constructor kwargs, input maker, feature shape for num_classes=None,
#          exact parameter count for these kwargs and input).
SPECS = {
    "simple_cnn": (dict(), lambda k: jax.random.normal(k, (B, 8, 8, 1)),
                   (B, 2, 2, 64), 53_002),
    "vgg": (dict(stage_features=(8, 16), dropout=0.1),
            lambda k: jax.random.normal(k, IMG), (B, 4, 4, 16), 4_514),
    "resnet20": (dict(), lambda k: jax.random.normal(k, IMG), (B, 4, 4, 64), 272_474),
    # resnet18 at full size is counted by test_published_resnet_param_counts.
    "resnet18": (dict(stage_sizes=(1, 1, 1, 1), num_filters=8),
                 lambda k: jax.random.normal(k, IMG), (B, 2, 2, 64), 78_002),
    "fast_cnn": (dict(widths=(16, 32, 32)), lambda k: jax.random.normal(k, IMG),
                 (B, 1, 1, 32), 38_808),
    "conv1d": (dict(dropout=0.1), lambda k: jax.random.normal(k, (B, 40)),
               (B, 10, 128), 53_098),
    "text_cnn": (dict(vocab_size=50, embed_dim=16, features=8),
                 lambda k: jax.random.randint(k, (B, 12), 1, 50), (B, 12, 24), 2_610),
}

# Published counts (10 classes, BN, 1x1-conv projection shortcuts).
PUBLISHED = {"resnet20": 272_474, "resnet18": 11_173_962}


def num_params(params) -> int:
  return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))


def key(seed: int) -> jax.Array:
  # rbg keys: threefry's random-bits kernels dominate CPU compile time of init.
  return jax.random.key(seed, impl="rbg")


def make_model(name: str, **overrides):
  """(model, example input) for a SPECS entry."""
  kwargs, make_x, _, _ = SPECS[name]
  return registry.build_model(name, **{**kwargs, **overrides}), make_x(jax.random.key(1))


@functools.lru_cache(maxsize=None)
def built(name: str):
  """(model, variables, x) for a SPECS entry, initialised once per session."""
  model, x = make_model(name)
  variables = jax.jit(functools.partial(model.init, train=False))(key(0), x)
  return model, variables, x


def labels(n: int = B) -> jnp.ndarray:
  return jnp.arange(n) % 10


def test_every_convnet_has_a_spec():
  names = {n for n, c in registry.MODELS.items() if c.__module__ == convnets.__name__}
  assert names == set(SPECS)


# Shapes, counts and dtypes come from jax.eval_shape: traced, never compiled.


@pytest.mark.parametrize("name", sorted(SPECS))
def test_logits_shape_and_param_count(name):
  model, x = make_model(name)
  variables = jax.eval_shape(model.init, key(0), x)
  logits = jax.eval_shape(model.apply, variables, x)
  assert logits.shape == (B, 10) and logits.dtype == jnp.float32
  assert num_params(variables["params"]) == SPECS[name][3]


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_resnet_param_counts(name):
  model = registry.build_model(name)
  x = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
  variables = jax.eval_shape(model.init, key(0), x)
  count = num_params(variables["params"])
  assert abs(count - PUBLISHED[name]) <= 0.01 * PUBLISHED[name]
  assert count == PUBLISHED[name]  # exact: same layers as the reference nets


@pytest.mark.parametrize("counts,convs,published", [
    ((1, 1, 2, 2, 2), 8, 9_220_480),     # torchvision vgg11: 132,863,336 less its classifier
    ((2, 2, 3, 3, 3), 13, 14_714_688)])  # vgg16: 138,357,544 less the same classifier
def test_vgg_11_and_16_by_per_stage_counts(counts, convs, published):
  """One conv count for every stage could not build VGG-11 or VGG-16. Their conv stacks
  equal torchvision's, less each conv's bias and plus batch norm's scale and bias (as
  vgg11_bn, vgg16_bn), with a dense head on global average pooling."""
  model = registry.build_model("vgg", stage_features=(64, 128, 256, 512, 512),
                               convs_per_stage=counts)
  variables = jax.eval_shape(model.init, key(0), jax.ShapeDtypeStruct((1, 32, 32, 3),
                                                                      jnp.float32))
  params = variables["params"]
  assert sum(k.startswith("Conv_") for k in params) == convs
  channels = sum(p["kernel"].shape[-1] for k, p in params.items() if k.startswith("Conv_"))
  assert num_params(params) == published - channels + 2 * channels + 512 * 10 + 10
  with pytest.raises(ValueError, match=r"convs_per_stage=\(1, 2\): 2 counts for the 5 stages"):
    registry.build_model("vgg", stage_features=(64, 128, 256, 512, 512), convs_per_stage=(1, 2))


@pytest.mark.parametrize("name", sorted(SPECS))
def test_num_classes_none_returns_features(name):
  model, x = make_model(name, num_classes=None)
  variables = jax.eval_shape(model.init, key(0), x)
  assert "head" not in variables["params"]
  features = jax.eval_shape(model.apply, variables, x)
  assert features.shape == SPECS[name][2] and features.dtype == jnp.float32


@pytest.mark.parametrize("name", sorted(SPECS))
def test_bfloat16_params_stay_float32(name):
  model, x = make_model(name, dtype="bfloat16")
  variables = jax.eval_shape(model.init, key(0), x)
  assert {leaf.dtype for leaf in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
  logits = jax.eval_shape(model.apply, variables, x)
  assert logits.dtype == jnp.float32
  features = jax.eval_shape(model.clone(num_classes=None).apply, variables, x)
  assert features.dtype == jnp.bfloat16


# Real compute, one compiled program per check.


@pytest.mark.parametrize("name", sorted(SPECS))
def test_one_adam_step_lowers_loss(name):
  model, variables, x = built(name)
  params, state = variables["params"], {k: v for k, v in variables.items() if k != "params"}
  y = labels()
  rngs = {"dropout": key(2)}  # same dropout mask before and after

  def loss_fn(params):
    logits, new_state = model.apply({"params": params, **state}, x, train=True,
                                    rngs=rngs, mutable=list(state))
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    return loss, new_state

  tx = optax.adam(1e-3)

  @jax.jit
  def step(params):
    (loss, new_state), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, _ = tx.update(grads, tx.init(params), params)
    return loss, optax.apply_updates(params, updates), new_state

  loss0, new_params, new_state = step(params)
  loss1, _, _ = step(new_params)
  assert np.isfinite(float(loss0)) and float(loss1) < float(loss0)
  if "batch_stats" in state:  # train=True updated the running statistics
    before, after = jax.tree.leaves(state["batch_stats"]), jax.tree.leaves(new_state["batch_stats"])
    assert any(not np.allclose(a, b) for a, b in zip(before, after))


@pytest.mark.parametrize("name", sorted(SPECS))
def test_bfloat16_training_forward_is_finite(name):
  model, variables, x = built(name)  # float32 params: the same under bf16 compute
  model = model.clone(dtype=jnp.bfloat16)
  logits, _ = jax.jit(functools.partial(model.apply, train=True, mutable=["batch_stats"]))(
      variables, x, rngs={"dropout": key(0)})
  assert logits.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(logits)))


def test_build_by_name_with_config_strings():
  model = registry.build_model("resnet20", num_classes=100, dtype="bfloat16")
  assert isinstance(model, convnets.ResNet) and model.stage_sizes == (3, 3, 3)
  assert model.dtype == jnp.bfloat16
  with pytest.raises(ValueError, match="not a field"):
    registry.build_model("simple_cnn", hiden=64)


@pytest.mark.parametrize("name,shape", [("vgg", (16, 16, 3)), ("conv1d", (2, 4, 5, 1))])
def test_wrong_input_rank_is_a_clear_error(name, shape):
  model = registry.build_model(name)
  with pytest.raises(ValueError, match=r"input of shape"):
    jax.eval_shape(model.init, key(0), jnp.zeros(shape))


def _padded_pair(name: str, extra: int = 7):
  """The same batch twice: cut to its lengths, and with `extra` padded steps."""
  model, variables, x = built(name)
  lengths = jnp.array([x.shape[1], 5, 1, 9][:B])
  steps = jnp.arange(x.shape[1])[None, :] < lengths[:, None]
  x = x * (steps if x.ndim == 2 else steps[..., None]).astype(x.dtype)
  junk = jnp.full((B, extra) + x.shape[2:], 3, x.dtype)  # junk, not zeros: masked anyway
  return model, variables, x, jnp.concatenate([x, junk], axis=1), lengths


@pytest.mark.parametrize("name", ["conv1d", "text_cnn"])
def test_padding_does_not_change_logits(name):
  model, variables, x, x_padded, lengths = _padded_pair(name)
  # Dropout masks depend on the array shape, so compare without dropout.
  model = model.clone(dropout=0.0)

  @jax.jit
  def run(x):  # eval logits, and train logits + BN statistics
    train_out = model.apply(variables, x, lengths, train=True, mutable=["batch_stats"])
    return model.apply(variables, x, lengths), train_out

  for short, long in zip(jax.tree.leaves(run(x)), jax.tree.leaves(run(x_padded))):
    np.testing.assert_allclose(short, long, rtol=1e-5, atol=1e-5)


def test_conv1d_features_and_output_lengths():
  model, variables, x = built("conv1d")
  model = model.clone(num_classes=None)
  lengths = jnp.array([40, 5, 1, 9])
  features = jax.jit(model.apply)(variables, x, lengths)
  out_lengths = model.output_lengths(lengths)
  np.testing.assert_array_equal(out_lengths, [10, 2, 1, 3])
  real = jnp.arange(features.shape[1])[None, :] < out_lengths[:, None]
  assert not bool(jnp.any(jnp.where(real[..., None], 0.0, features)))  # padding zeroed


def test_text_cnn_padding_token_mask_without_lengths():
  model, variables, _ = built("text_cnn")
  model = model.clone(dropout=0.0)
  tokens = jnp.array([[5, 6, 7, 0, 0], [9, 0, 0, 0, 0]])
  lengths = jnp.array([3, 1])
  apply = jax.jit(model.apply)
  np.testing.assert_allclose(apply(variables, tokens), apply(variables, tokens[:, :3], lengths),
                             rtol=1e-5, atol=1e-6)
