"""The airbench pieces of experiments/benchmarks/cifar10_speedrun.py, on toy inputs.

They only run at full size on a GPU; these tests pin down what they compute so that a
GPU figure measures the recipe as described: the optimizer groups, PyTorch and dirac
kernel init, airbench94's lookahead EMA (against a step-by-step model of its
LookaheadState), and the level-2 test-time augmentation.
"""
import importlib.util
import pathlib
import sys

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "experiments" / "benchmarks" / "cifar10_speedrun.py"


@pytest.fixture(scope="module")
def sr():
  spec = importlib.util.spec_from_file_location("cifar10_speedrun_under_test", SCRIPT)
  module = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = module
  spec.loader.exec_module(module)
  yield module
  del sys.modules[spec.name]


def _path(*names):
  return tuple(jax.tree_util.DictKey(n) for n in names)


def test_param_groups(sr):
  group = lambda *names, **kw: sr.param_group(_path(*names), **kw)
  assert group("stem", "kernel", whiten=True, bias_lr_mult=64.0) == "frozen"
  assert group("stem", "kernel", whiten=False, bias_lr_mult=64.0) == "train"
  assert group("stem", "bias", whiten=True, bias_lr_mult=64.0) == "train"
  assert group("BatchNorm_3", "bias", whiten=True, bias_lr_mult=64.0) == "bn_bias"
  assert group("BatchNorm_3", "bias", whiten=True, bias_lr_mult=1.0) == "train"
  assert group("Conv_2", "kernel", whiten=True, bias_lr_mult=64.0) == "train"


def _toy_params(key):
  k1, k2, k3 = jax.random.split(key, 3)
  return {"stem": {"kernel": jax.random.normal(k1, (2, 2, 3, 4)), "bias": jnp.zeros(4)},
          "Conv_0": {"kernel": jax.random.normal(k2, (3, 3, 4, 6))},
          "head": {"kernel": jax.random.normal(k3, (6, 10))}}


def test_dirac_init_passes_the_first_channels_through(sr):
  params = _toy_params(jax.random.key(0))
  new = sr.reinit_kernels(params, jax.random.key(1), torch_init=False, dirac=True)
  kernel = new["Conv_0"]["kernel"]
  x = jax.random.normal(jax.random.key(2), (2, 5, 5, 4))
  y = jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME",
                                   dimension_numbers=("NHWC", "HWIO", "NHWC"))
  np.testing.assert_allclose(y[..., :4], x, atol=1e-6)  # identity on the first `in` filters
  np.testing.assert_array_equal(kernel[..., 4:], params["Conv_0"]["kernel"][..., 4:])
  for name in ("stem", "head"):  # not 3x3 convs: untouched
    np.testing.assert_array_equal(new[name]["kernel"], params[name]["kernel"])


def test_torch_init_bounds_every_kernel_but_the_stem(sr):
  params = _toy_params(jax.random.key(0))
  new = sr.reinit_kernels(params, jax.random.key(1), torch_init=True, dirac=False)
  np.testing.assert_array_equal(new["stem"]["kernel"], params["stem"]["kernel"])
  np.testing.assert_array_equal(new["stem"]["bias"], params["stem"]["bias"])
  for name, fan_in in (("Conv_0", 3 * 3 * 4), ("head", 6)):
    kernel = np.asarray(new[name]["kernel"])
    bound = 1 / np.sqrt(fan_in)
    assert np.abs(kernel).max() <= bound
    assert np.abs(kernel).max() > 0.8 * bound  # uniform over the whole range, not a shrunk copy
    assert kernel.shape == params[name]["kernel"].shape


class _State(flax.struct.PyTreeNode):
  step: jax.Array
  params: dict
  batch_stats: dict


@pytest.mark.parametrize("spe, epochs", [(4, 6), (2, 10)])  # 2: an epoch ends before the snapshot
def test_lookahead_matches_airbench_step_by_step(sr, spe, epochs):
  """Training moves the weight by +1 per step; compare with airbench94's loop logic."""
  every = 5
  total = spe * epochs
  update = jax.jit(lambda s, e: sr.lookahead_update(s, e, steps_per_epoch=spe, total_steps=total))
  state = _State(step=jnp.int32(0), params={"w": jnp.float32(0.0)},
                 batch_stats={"mean": jnp.float32(0.0)})
  ema = {"params": {"w": jnp.float32(-99.0)}, "batch_stats": {"mean": jnp.float32(-99.0)}}
  ref_w, ref_ema = 0.0, None  # airbench: LookaheadState is None until its first update
  for k in range(1, total + 1):
    epoch = (k - 1) // spe
    state = state.replace(step=jnp.int32(k), params={"w": state.params["w"] + 1},
                          batch_stats={"mean": state.batch_stats["mean"] + 1})
    ref_w += 1
    if epoch >= 3 and k % every == 0:
      if ref_ema is None:
        ref_ema = ref_w
      else:
        rho = 0.95 ** every * (k / total) ** 3
        ref_ema = ref_ema + (ref_w - ref_ema) * (1 - rho)
        ref_w = ref_ema
    if k % spe == 0 and ref_ema is not None:  # end of the epoch: back to the EMA
      ref_w = ref_ema
    state, ema = update(state, ema)
    np.testing.assert_allclose(state.params["w"], ref_w, rtol=1e-6, err_msg=f"step {k}")
    np.testing.assert_allclose(state.batch_stats["mean"], ref_w, rtol=1e-6, err_msg=f"step {k}")
    if ref_ema is not None:
      np.testing.assert_allclose(ema["params"]["w"], ref_ema, rtol=1e-6, err_msg=f"step {k}")
  assert ref_ema is not None and ref_w < total  # the EMA did pull the weight back


def test_tta_levels(sr):
  x = jax.random.normal(jax.random.key(0), (3, 6, 7, 2))
  net = lambda v: v[:, 0, 0, :]  # "logits": the top-left pixel
  plain, mirror, level2 = sr.tta_logits(net, x)
  w = x.shape[2]
  np.testing.assert_allclose(plain, x[:, 0, 0])
  np.testing.assert_allclose(mirror, 0.5 * (x[:, 0, 0] + x[:, 0, w - 1]), rtol=1e-6)
  # Shifted by one pixel either way with reflect padding, the top-left pixel is x[1, 1]
  # and its mirror's is x[1, w - 2], in both shifts.
  shifted = 0.5 * (x[:, 1, 1] + x[:, 1, w - 2])
  np.testing.assert_allclose(level2, 0.5 * mirror + 0.5 * shifted, rtol=1e-6)



@pytest.fixture(scope="module")
def fast_cnn_params():
  from flaxnets.models import registry
  model = registry.build_model("fast_cnn", num_classes=10)
  return model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)["params"]


def test_muon_groups_cover_fast_cnn(sr, fast_cnn_params):
  labels = jax.tree_util.tree_map_with_path(lambda p, _: sr.muon_group(p), fast_cnn_params)
  flat = {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_flatten_with_path(labels)[0]}
  assert flat.pop("['stem']['kernel']") == "frozen"
  assert flat.pop("['stem']['bias']") == "whiten_bias"
  assert flat.pop("['head']['kernel']") == "head"
  filters = [k for k, v in flat.items() if v == "filters"]
  biases = [k for k, v in flat.items() if v == "bn_bias"]
  assert len(filters) == 6 and all(k.endswith("['kernel']") for k in filters)
  assert len(biases) == 6 and all(k.startswith("['BatchNorm") and k.endswith("['bias']") for k in biases)
  assert len(filters) + len(biases) == len(flat)


def test_muon_optimizer_first_step(sr, fast_cnn_params):
  import optax
  params = fast_cnn_params
  batch = 2000
  tx = sr.muon_optimizer(batch_size=batch, steps_per_epoch=25, total_steps=200)
  update = jax.jit(tx.update)  # one compile, not each op of Newton-Schulz run eagerly
  zeros = jax.tree.map(jnp.zeros_like, params)
  new = optax.apply_updates(params, update(zeros, tx.init(params), params)[0])
  # No gradient: the filters are only rescaled to norm sqrt(out), the SGD groups only
  # decay by 2e-6 * batch (schedules at 1 on the first step) times 1.85 (Nesterov
  # momentum 0.85 on its first step: g + 0.85 g, as torch's SGD), the stem kernel stays.
  for name in ("Conv_0", "Conv_5"):
    kernel = new[name]["kernel"]
    np.testing.assert_allclose(jnp.linalg.norm(kernel), np.sqrt(kernel.shape[-1]), rtol=1e-5)
  np.testing.assert_allclose(new["head"]["kernel"], params["head"]["kernel"] * (1 - 1.85 * 2e-6 * batch),
                             rtol=1e-6)
  np.testing.assert_array_equal(new["stem"]["kernel"], params["stem"]["kernel"])
  # Muon's step ignores the gradient's scale; SGD's does not.
  grads = jax.tree.map(lambda p: jax.random.normal(jax.random.key(1), p.shape, p.dtype), params)
  step = lambda g: update(g, tx.init(params), params)[0]
  small, large = step(grads), step(jax.tree.map(lambda g: 1000.0 * g, grads))
  np.testing.assert_allclose(small["Conv_3"]["kernel"], large["Conv_3"]["kernel"], rtol=1e-4, atol=1e-7)
  assert not np.allclose(small["head"]["kernel"], large["head"]["kernel"])


def test_unit_std_head(sr, fast_cnn_params):
  new = sr.reinit_kernels(fast_cnn_params, jax.random.key(3), torch_init=True, dirac=True,
                          unit_std_head=True)
  np.testing.assert_allclose(jnp.std(new["head"]["kernel"]), 1.0, rtol=1e-5)
