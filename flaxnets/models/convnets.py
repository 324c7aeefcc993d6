"""Convolutional networks: image classifiers and 1-D convnets over sequences.

Every model here is a registered `flax.linen` Module (see `registry.py`) with one
call signature, `model(x, seq_lengths=None, *, train=False)`:

  simple_cnn  SimpleCNN   conv-pool x2 -> dense; works on 8x8 digits.
  vgg         VGG         [conv3x3-BN-relu]*n + maxpool stages, global avg pool.
  resnet20    ResNet20    CIFAR ResNet (basic blocks): 3 stages (16, 32, 64) x 3,
                          0.27M params;
  resnet18    ResNet18    CIFAR variant: 3x3 stem, no maxpool, (64..512) x 2,
                          11.2M params. Both are thin ResNet subclasses.
  fast_cnn    FastCNN     the airbench94 CIFAR-10 speedrun net.
  conv1d      ConvNet1D   conv-BN-relu-pool stack over series [B, T, F].
  text_cnn    TextCNN     Kim (2014) parallel-kernel CNN over token embeddings.

Conventions shared by all of them:
  * x is cast to `dtype` at entry; logits come back float32 so the loss is f32.
    Params are created in `param_dtype` (float32 by default, also under bf16).
  * `num_classes=None` returns the features *before* global pooling / flatten,
    in `dtype`: [B, H', W', C] for image nets, [B, T', C] for the 1-D nets (padded
    steps zeroed), so a hybrid (CRNN) can run a recurrent layer over them.
  * BatchNorm uses batch statistics when `train` and running averages otherwise;
    `bn_axis_name` names the pmap axis over which statistics are averaged.
  * Image nets accept and ignore `seq_lengths` so every model is called alike.
"""
from __future__ import annotations

import functools
from typing import Any, ClassVar, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from flaxnets.models.registry import register

Array = Any


def _check_rank(x: Array, ranks: Sequence[int], model: str, expected: str) -> None:
  """One clear error for a wrongly shaped input, before any compute."""
  if x.ndim not in ranks:
    raise ValueError(f"{model}: input of shape {tuple(x.shape)}; expected {expected}")


def _batch_norm(module: nn.Module, momentum: float = 0.9, **kwargs: Any):
  """A BatchNorm constructor with the module's dtypes and pmap axis name."""
  return functools.partial(
      nn.BatchNorm, momentum=momentum, axis_name=module.bn_axis_name,
      dtype=module.dtype, param_dtype=module.param_dtype, **kwargs)


def _head(module: nn.Module, x: Array, train: bool) -> Array:
  """[B, D] -> dropout -> dense(num_classes) -> float32 logits [B, num_classes]."""
  x = nn.Dropout(module.dropout, deterministic=not train)(x) if module.dropout else x
  x = nn.Dense(module.num_classes, dtype=module.dtype,
               param_dtype=module.param_dtype, name="head")(x)
  return x.astype(jnp.float32)


# ----------------------------------------------------------------------------- images


@register("simple_cnn")
class SimpleCNN(nn.Module):
  """The classic tutorial CNN: [conv-relu-maxpool] per feature width -> dense.

  SAME padding in conv and pool keeps every spatial size >= 1 (8 -> 4 -> 2 on
  digits). The flatten makes the hidden layer's size depend on the image size.
  """
  input_kinds: ClassVar[tuple[str, ...]] = ("image",)
  num_classes: int | None = 10
  features: Sequence[int] = (32, 64)
  hidden: int = 128
  kernel_size: int = 3
  dropout: float = 0.0
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, seq_lengths: Array | None = None, *,
               train: bool = False) -> Array:
    """x [B, H, W, C] -> logits [B, num_classes] (or features [B, H', W', C'])."""
    _check_rank(x, (4,), "simple_cnn", "images [B, H, W, C]")
    x = x.astype(self.dtype)
    k = (self.kernel_size, self.kernel_size)
    for f in self.features:
      x = nn.Conv(f, k, padding="SAME", dtype=self.dtype, param_dtype=self.param_dtype)(x)
      x = nn.max_pool(nn.relu(x), (2, 2), strides=(2, 2), padding="SAME")
    if self.num_classes is None:
      return x
    x = x.reshape(x.shape[0], -1)
    x = nn.relu(nn.Dense(self.hidden, dtype=self.dtype, param_dtype=self.param_dtype)(x))
    return _head(self, x, train)


@register("vgg")
class VGG(nn.Module):
  """VGG-style stages of [conv3x3-BN-relu] * convs_per_stage + maxpool(2).

  `convs_per_stage` is one count for every stage, or one per stage: torchvision's
  VGG-11 is stage_features=(64, 128, 256, 512, 512), convs_per_stage=(1, 1, 2, 2, 2), and
  VGG-16 the same stages with (2, 2, 3, 3, 3) (with batch norm, as vgg11_bn/vgg16_bn).
  The head is global average pooling then dense (so any image size works), with
  an optional hidden dense layer when `hidden` is set.
  """
  input_kinds: ClassVar[tuple[str, ...]] = ("image",)
  num_classes: int | None = 10
  stage_features: Sequence[int] = (64, 128, 256)
  convs_per_stage: int | Sequence[int] = 2
  hidden: int | None = None
  dropout: float = 0.0
  bn_axis_name: str | None = None
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def __post_init__(self):
    self._stage_convs()  # a mismatch is refused when the model is built, before any data
    super().__post_init__()

  def _stage_convs(self) -> tuple[int, ...]:
    counts = self.convs_per_stage
    if not isinstance(counts, Sequence):
      return (counts,) * len(self.stage_features)
    if len(counts) != len(self.stage_features):
      raise ValueError(f"convs_per_stage={tuple(counts)!r}: {len(counts)} counts for the "
                       f"{len(self.stage_features)} stages of stage_features="
                       f"{tuple(self.stage_features)!r}; expected one count per stage, or one "
                       "int for all")
    return tuple(counts)

  @nn.compact
  def __call__(self, x: Array, seq_lengths: Array | None = None, *,
               train: bool = False) -> Array:
    """x [B, H, W, C] -> logits [B, num_classes] (or features [B, H', W', C'])."""
    _check_rank(x, (4,), "vgg", "images [B, H, W, C]")
    x = x.astype(self.dtype)
    norm = _batch_norm(self, use_running_average=not train)
    conv = functools.partial(nn.Conv, kernel_size=(3, 3), padding="SAME", use_bias=False,
                             dtype=self.dtype, param_dtype=self.param_dtype)
    for f, n in zip(self.stage_features, self._stage_convs()):
      for _ in range(n):
        x = nn.relu(norm()(conv(f)(x)))
      x = nn.max_pool(x, (2, 2), strides=(2, 2), padding="SAME")
    if self.num_classes is None:
      return x
    x = jnp.mean(x, axis=(1, 2))
    if self.hidden:
      x = nn.Dense(self.hidden, dtype=self.dtype, param_dtype=self.param_dtype)(x)
      x = nn.relu(x)
    return _head(self, x, train)


class BasicBlock(nn.Module):
  """ResNet basic block: conv3x3-BN-relu-conv3x3-BN + shortcut, relu.

  The shortcut is a 1x1 conv + BN when the shape changes (He et al.'s option B), as in
  the common CIFAR reimplementations whose counts these match: 272,474 for ResNet-20
  (the paper's CIFAR nets use option A, identity with zero padding: 269,722, its
  "0.27M") and 11,173,962 for the CIFAR ResNet-18.
  """
  features: int
  strides: int
  norm: Any
  conv: Any

  @nn.compact
  def __call__(self, x: Array) -> Array:
    y = nn.relu(self.norm()(self.conv(self.features, (3, 3), self.strides)(x)))
    # Zero-init the last BN scale: each block starts as the identity, which
    # makes deep nets train well from the first step (Goyal et al., 2017).
    y = self.norm(scale_init=nn.initializers.zeros)(self.conv(self.features, (3, 3))(y))
    if x.shape != y.shape:
      x = self.norm()(self.conv(self.features, (1, 1), self.strides, name="proj")(x))
    return nn.relu(x + y)


class ResNet(nn.Module):
  """CIFAR-style ResNet: 3x3 stem (no maxpool), basic-block stages, GAP, dense.

  Stage i has `num_filters * 2**i` channels and `stage_sizes[i]` blocks; every
  stage after the first halves the resolution. Registered through the named
  depths below; their stage_sizes / num_filters fields still give any depth.
  """
  input_kinds: ClassVar[tuple[str, ...]] = ("image",)
  num_classes: int | None = 10
  stage_sizes: Sequence[int] = (3, 3, 3)
  num_filters: int = 16
  bn_axis_name: str | None = None
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, seq_lengths: Array | None = None, *,
               train: bool = False) -> Array:
    """x [B, H, W, C] -> logits [B, num_classes] (or features [B, H/2^k, W/2^k, C'])."""
    _check_rank(x, (4,), type(self).__name__, "images [B, H, W, C]")
    x = x.astype(self.dtype)
    norm = _batch_norm(self, use_running_average=not train)
    # He init: the variance-preserving choice for relu nets (lecun is 2x too small).
    conv = functools.partial(nn.Conv, padding="SAME", use_bias=False, dtype=self.dtype,
                             param_dtype=self.param_dtype,
                             kernel_init=nn.initializers.kaiming_normal())
    x = nn.relu(norm()(conv(self.num_filters, (3, 3), name="stem")(x)))
    for i, n_blocks in enumerate(self.stage_sizes):
      for j in range(n_blocks):
        strides = 2 if i > 0 and j == 0 else 1
        x = BasicBlock(self.num_filters * 2**i, strides, norm, conv)(x)
    if self.num_classes is None:
      return x
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype,
                    name="head")(x).astype(jnp.float32)


@register("resnet20")
class ResNet20(ResNet):
  """ResNet-20 (He et al., 2016, CIFAR): 3 stages (16, 32, 64) x 3 blocks."""
  stage_sizes: Sequence[int] = (3, 3, 3)
  num_filters: int = 16


@register("resnet18")
class ResNet18(ResNet):
  """ResNet-18, CIFAR variant: 3x3 stem, no maxpool, (64..512) x 2 blocks."""
  stage_sizes: Sequence[int] = (2, 2, 2, 2)
  num_filters: int = 64


@register("fast_cnn")
class FastCNN(nn.Module):
  """The airbench94 CIFAR-10 net (Jordan, 2024): 94% in seconds on one GPU.

  2x2 VALID stem conv (24 channels; airbench initialises it as a patch-whitening
  filter, left to the trainer here) -> GELU -> 3 blocks of
  [conv-maxpool2-BN-GELU-conv-BN-GELU] -> global max pool -> dense (no bias)
  -> logits * logit_scale. Needs images of >= 2**len(widths) + stem_kernel - 1 px
  (9 px by default; CIFAR's 32 -> 31 -> 15 -> 7 -> 3).
  BN has no scale (airbench freezes it at 1) and momentum 0.6 by default.
  """
  input_kinds: ClassVar[tuple[str, ...]] = ("image",)
  num_classes: int | None = 10
  widths: Sequence[int] = (64, 256, 256)
  stem_features: int = 24
  stem_kernel: int = 2
  logit_scale: float = 1 / 9
  bn_momentum: float = 0.6
  bn_axis_name: str | None = None
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, seq_lengths: Array | None = None, *,
               train: bool = False) -> Array:
    """x [B, H, W, C] -> logits [B, num_classes] (or features [B, H', W', C'])."""
    _check_rank(x, (4,), "fast_cnn", "images [B, H, W, C]")
    least = 2 ** len(self.widths) + self.stem_kernel - 1  # each block's 2x2 pool halves
    if min(x.shape[1:3]) < least:
      raise ValueError(f"fast_cnn: images of {x.shape[1]}x{x.shape[2]} px; expected at least "
                       f"{least}x{least} (its {len(self.widths)} max-pools halve the "
                       f"{self.stem_kernel}x{self.stem_kernel}-stem's output each time)")
    x = x.astype(self.dtype)
    norm = _batch_norm(self, self.bn_momentum, use_running_average=not train,
                       use_scale=False, epsilon=1e-12)
    conv = functools.partial(nn.Conv, kernel_size=(3, 3), padding="SAME", use_bias=False,
                             dtype=self.dtype, param_dtype=self.param_dtype)
    k = (self.stem_kernel, self.stem_kernel)
    x = nn.Conv(self.stem_features, k, padding="VALID", dtype=self.dtype,
                param_dtype=self.param_dtype, name="stem")(x)
    x = nn.gelu(x, approximate=False)
    for w in self.widths:
      x = nn.max_pool(conv(w)(x), (2, 2), strides=(2, 2))
      x = nn.gelu(norm()(x), approximate=False)
      x = nn.gelu(norm()(conv(w)(x)), approximate=False)
    if self.num_classes is None:
      return x
    x = jnp.max(x, axis=(1, 2))
    x = nn.Dense(self.num_classes, use_bias=False, dtype=self.dtype,
                 param_dtype=self.param_dtype, name="head")(x)
    return (x * self.logit_scale).astype(jnp.float32)


# -------------------------------------------------------------------------- sequences


def _step_mask(seq_lengths: Array | None, steps: int) -> Array | None:
  """[B, T, 1] bool, True on real steps; None (nothing to mask) without lengths."""
  if seq_lengths is None:
    return None
  return (jnp.arange(steps)[None, :] < seq_lengths[:, None])[..., None]


def _zero_padding(x: Array, mask: Array | None) -> Array:
  """Zero the padded steps of x [B, T, C], so no later layer can see them."""
  return x if mask is None else jnp.where(mask, x, jnp.zeros((), x.dtype))


class _PmapMaskedBatchNorm(nn.Module):
  """nn.BatchNorm over the real steps of x [B, T, C] (mask [B, T, 1]) under pmap, with the
  same variables (params scale, bias; batch_stats mean, var) and maths.

  Flax's masked statistics are each device's masked mean, then their mean over the axis:
  the global mean only when every device holds as many real steps. These sum the masked
  moments and counts over the axis, so pmap trains what one device (or a mesh) does.
  """
  use_running_average: bool
  axis_name: str
  momentum: float = 0.9
  epsilon: float = 1e-5
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, mask: Array) -> Array:
    c = x.shape[-1]
    ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((c,), jnp.float32))
    ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((c,), jnp.float32))
    if self.use_running_average:
      mean, var = ra_mean.value, ra_var.value
    else:
      xf, m = x.astype(jnp.float32), mask.astype(jnp.float32)
      sums = jax.lax.psum(((xf * m).sum((0, 1)), (xf * xf * m).sum((0, 1)), m.sum()),
                          self.axis_name)
      count = jnp.maximum(sums[2], 1.0)
      mean = sums[0] / count
      var = jnp.maximum(0.0, sums[1] / count - mean * mean)
      if not self.is_initializing():
        ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
        ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
    scale = self.param("scale", nn.initializers.ones, (c,), self.param_dtype)
    bias = self.param("bias", nn.initializers.zeros, (c,), self.param_dtype)
    y = (x - mean) * (jax.lax.rsqrt(var + self.epsilon) * scale) + bias
    return y.astype(self.dtype)


def _masked_pool(x: Array, mask: Array | None, pooling: str) -> Array:
  """Global pool over real steps: x [B, T, C], mask [B, T, 1] -> [B, C] (float32)."""
  x = x.astype(jnp.float32)  # a long bf16 sum would lose precision
  if pooling == "max":
    if mask is None:
      return jnp.max(x, axis=1)
    pooled = jnp.max(jnp.where(mask, x, -jnp.inf), axis=1)
    return jnp.where(jnp.any(mask, axis=1), pooled, 0.0)  # empty sequence -> 0
  if pooling == "mean":
    if mask is None:
      return jnp.mean(x, axis=1)
    return jnp.sum(x * mask, axis=1) / jnp.maximum(jnp.sum(mask, axis=1), 1)
  raise ValueError(f"pooling={pooling!r}: expected 'max' or 'mean'")


@register("conv1d")
class ConvNet1D(nn.Module):
  """1-D convnet for real-valued series (MNIST-1D, sensor data, features).

  Per width: conv(k, stride 1, SAME)-BN-relu, then maxpool(2) (each of the
  first `num_pools` layers), then masked global pooling and dense. Convs are
  stride 1 and pools start at step 0, so step t depends only on the real input
  whatever padding follows; padded steps are zeroed after every layer and BN
  statistics skip them, so appending padding never changes the logits.
  Output lengths are `ceil(L / 2**num_pools)` (see `output_lengths`).
  """
  input_kinds: ClassVar[tuple[str, ...]] = ("series",)
  poolings: ClassVar[tuple[str, ...]] = ("max", "mean")  # what config.validate allows
  num_classes: int | None = 10
  features: Sequence[int] = (32, 64, 128)
  kernel_size: int = 5
  num_pools: int = 2
  pooling: str = "max"
  use_bn: bool = True
  dropout: float = 0.0
  bn_axis_name: str | None = None
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def output_lengths(self, seq_lengths: Array) -> Array:
    """Real steps left after the pools: [B] -> [B]."""
    for _ in range(min(self.num_pools, len(self.features))):
      seq_lengths = (seq_lengths + 1) // 2
    return seq_lengths

  @nn.compact
  def __call__(self, x: Array, seq_lengths: Array | None = None, *,
               train: bool = False) -> Array:
    """x [B, T, F] or [B, T], seq_lengths [B] -> logits [B, num_classes].

    With num_classes=None: features [B, T', C] with padded steps zeroed.
    """
    _check_rank(x, (2, 3), "conv1d", "series [B, T, F] or [B, T]")
    x = (x[..., None] if x.ndim == 2 else x).astype(self.dtype)
    mask = _step_mask(seq_lengths, x.shape[1])
    x = _zero_padding(x, mask)
    for i, f in enumerate(self.features):
      x = nn.Conv(f, (self.kernel_size,), padding="SAME", use_bias=not self.use_bn,
                  dtype=self.dtype, param_dtype=self.param_dtype)(x)
      if self.use_bn and mask is not None and self.bn_axis_name is not None:
        x = _PmapMaskedBatchNorm(not train, self.bn_axis_name, dtype=self.dtype,
                                 param_dtype=self.param_dtype, name=f"BatchNorm_{i}")(x, mask)
      elif self.use_bn:
        x = _batch_norm(self, use_running_average=not train)()(x, mask=mask)
      x = _zero_padding(nn.relu(x), mask)
      if i < self.num_pools:
        # Post-relu values are >= 0, so the zeroed padding never wins a max.
        x = nn.max_pool(x, (2,), strides=(2,), padding="SAME")
        # Window j covers steps 2j, 2j + 1: it is real iff step 2j is.
        mask = None if mask is None else mask[:, ::2]
    if self.num_classes is None:
      return x
    return _head(self, _masked_pool(x, mask, self.pooling).astype(self.dtype), train)


@register("text_cnn")
class TextCNN(nn.Module):
  """Kim (2014) sentence CNN: embed -> parallel convs -> max-over-time -> dense.

  Tokens are int [B, T] with 0 = padding (or, with vocab_size=None, x is an
  already-embedded float [B, T, E]). One SAME conv per kernel size, `features`
  filters each, relu, masked max (or mean) over real steps, concat, dropout,
  dense. SAME (not Kim's narrow) convs keep T steps, so no sequence is too
  short. Real steps are `t < seq_lengths`, or tokens != 0 without lengths.
  """
  input_kinds: ClassVar[tuple[str, ...]] = ("tokens",)
  poolings: ClassVar[tuple[str, ...]] = ("max", "mean")  # what config.validate allows
  num_classes: int | None = 10
  vocab_size: int | None = None
  embed_dim: int = 128
  kernel_sizes: Sequence[int] = (3, 4, 5)
  features: int = 100
  pooling: str = "max"
  dropout: float = 0.5
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, seq_lengths: Array | None = None, *,
               train: bool = False) -> Array:
    """x int [B, T] (or float [B, T, E]), seq_lengths [B] -> logits [B, num_classes].

    With num_classes=None: features [B, T, len(kernel_sizes) * features], padded
    steps zeroed.
    """
    if self.vocab_size is not None:
      _check_rank(x, (2,), "text_cnn", "int tokens [B, T]")
      if not jnp.issubdtype(x.dtype, jnp.integer):
        raise ValueError(f"text_cnn: tokens of dtype {x.dtype}; expected integers")
      tokens = x
      x = nn.Embed(self.vocab_size, self.embed_dim, dtype=self.dtype,
                   param_dtype=self.param_dtype)(tokens)
    else:
      _check_rank(x, (3,), "text_cnn (vocab_size=None)",
                  "embedded float [B, T, E]; set vocab_size for int tokens")
      tokens, x = None, x.astype(self.dtype)
    if seq_lengths is None and tokens is not None:
      mask = (tokens != 0)[..., None]
    else:
      mask = _step_mask(seq_lengths, x.shape[1])
    x = _zero_padding(x, mask)  # padding embeddings are zero, as padding_idx=0
    branches = [
        nn.Conv(self.features, (k,), padding="SAME", dtype=self.dtype,
                param_dtype=self.param_dtype, name=f"conv{k}")(x)
        for k in self.kernel_sizes]
    x = _zero_padding(nn.relu(jnp.concatenate(branches, axis=-1)), mask)
    if self.num_classes is None:
      return x
    return _head(self, _masked_pool(x, mask, self.pooling).astype(self.dtype), train)
