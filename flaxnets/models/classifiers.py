"""Sequence classifiers, the CRNN hybrid and the character-level language model.

All share the call signature of the convnets: `model(x, seq_lengths=None, *, train)`.
Token inputs (int [B, T], 0 = padding) go through an embedding; real-valued series
[B, T, F] through an optional dense front. Padding never reaches the pooled features:
'last' takes each sequence's own last valid state, 'mean' and 'max' skip padded steps.
"""
from __future__ import annotations

from typing import Any, ClassVar, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import flax.linen as nn

from flaxnets.models.convnets import _step_mask, _zero_padding
from flaxnets.models.recurrent import StackedRNN
from flaxnets.models.registry import register

Array = jax.Array


def valid_mask(seq_lengths: Array | None, batch: int, time: int) -> Array:
  """[B, T, 1] float mask of valid steps (all ones without seq_lengths)."""
  if seq_lengths is None:
    return jnp.ones((batch, time, 1), jnp.float32)
  return (jnp.arange(time)[None, :] < seq_lengths[:, None])[..., None].astype(jnp.float32)


def pool(outputs: Array, last_h: Array, seq_lengths: Array | None, how: str) -> Array:
  """outputs [B, T, D] -> [B, D] by 'last' (final valid state), 'mean' or 'max'."""
  if how == "last":
    return last_h
  mask = valid_mask(seq_lengths, *outputs.shape[:2])
  if how == "mean":
    return (outputs * mask).sum(1) / jnp.maximum(mask.sum(1), 1.0)
  if how == "max":  # an empty sequence pools to 0, as conv1d's does (not finfo.min: inf logits)
    pooled = jnp.where(mask > 0, outputs, jnp.finfo(outputs.dtype).min).max(1)
    return jnp.where(mask.sum(1) > 0, pooled, jnp.zeros((), outputs.dtype))
  raise ValueError(f"pooling={how!r}: expected 'last', 'mean' or 'max'")


class _Front(nn.Module):
  """Embedding for tokens, or an optional dense projection for real-valued series."""
  vocab_size: int | None
  embed_dim: int
  input_dense: int | None
  dtype: Any
  param_dtype: Any

  @nn.compact
  def __call__(self, x: Array) -> Array:
    if self.vocab_size is not None:
      if x.ndim != 2 or not jnp.issubdtype(x.dtype, jnp.integer):
        raise ValueError(f"token inputs must be int [batch, time], got {x.dtype}{x.shape}")
      return nn.Embed(self.vocab_size, self.embed_dim, dtype=self.dtype,
                      param_dtype=self.param_dtype, name="embed")(x)
    if x.ndim == 2:
      x = x[..., None]
    if x.ndim != 3:
      raise ValueError(f"series inputs must be [batch, time, features], got shape {x.shape}")
    x = x.astype(self.dtype)
    if self.input_dense:
      x = nn.relu(nn.Dense(self.input_dense, dtype=self.dtype, param_dtype=self.param_dtype,
                           name="input_dense")(x))
    return x


@register("rnn")
class SequenceClassifier(nn.Module):
  """Embedding / dense front -> stacked (bi)RNN -> pooling -> dropout -> dense."""
  input_kinds: ClassVar[tuple[str, ...]] = ("series", "tokens")
  num_classes: int = 2
  cell: str = "lstm"
  hidden_size: int = 128
  num_layers: int = 1
  bidirectional: bool = False
  dropout: float = 0.0
  embed_dropout: float = 0.0
  pooling: str = "last"
  vocab_size: int | None = None     # set from the dataset's vocabulary for text
  embed_dim: int = 128
  input_dense: int | None = None
  hoist_input_projection: bool | None = None
  unroll: int | None = None        # None: recurrent.default_unroll()
  segments: int | None = None      # None: recurrent.default_segments(T)
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, seq_lengths: Array | None = None, *, train: bool = False) -> Array:
    """x int [B, T] or float [B, T, F]; seq_lengths [B] -> logits float32 [B, classes]."""
    h = _Front(self.vocab_size, self.embed_dim, self.input_dense, self.dtype,
               self.param_dtype, name="front")(x)
    if self.embed_dropout:
      h = nn.Dropout(self.embed_dropout, broadcast_dims=(1,), deterministic=not train)(h)
    outputs, last_h = StackedRNN(cell=self.cell, hidden_size=self.hidden_size,
                                 num_layers=self.num_layers, bidirectional=self.bidirectional,
                                 dropout=self.dropout,
                                 hoist_input_projection=self.hoist_input_projection,
                                 unroll=self.unroll, segments=self.segments,
                                 dtype=self.dtype, param_dtype=self.param_dtype,
                                 name="rnn")(h, seq_lengths, train=train)
    z = pool(outputs, last_h, seq_lengths, self.pooling)
    z = nn.Dropout(self.dropout, deterministic=not train)(z)
    logits = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype,
                      name="head")(z)
    return logits.astype(jnp.float32)


@register("crnn")
class CRNN(nn.Module):
  """Conv feature extractor, then an RNN over one axis, then dense softmax.

  Images [B, H, W, C]: 2-D conv blocks, then the RNN reads the rows of the feature map
  (time = H', features = W' x C'). Series [B, T, F]: 1-D conv blocks, RNN over time.
  """
  input_kinds: ClassVar[tuple[str, ...]] = ("image", "series")
  num_classes: int = 10
  conv_features: tuple[int, ...] = (32, 64)
  kernel_size: int = 3
  pool: bool = True
  cell: str = "gru"
  hidden_size: int = 64
  bidirectional: bool = True
  pooling: str = "mean"
  dropout: float = 0.0
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, seq_lengths: Array | None = None, *, train: bool = False) -> Array:
    x = x.astype(self.dtype)
    if x.ndim == 2:
      x = x[..., None]
    spatial = x.ndim - 2
    if spatial not in (1, 2):
      raise ValueError(f"CRNN input must be [B, H, W, C] or [B, T, F], got shape {x.shape}")
    # Series lengths (images have none): padded steps are zeroed before and after each
    # conv, as conv1d does, so no real step's features depend on the padding; each
    # pooling halves the lengths (window j is real iff step 2j is).
    lengths = seq_lengths if spatial == 1 else None
    mask = _step_mask(lengths, x.shape[1])
    x = _zero_padding(x, mask)
    for i, f in enumerate(self.conv_features):
      x = nn.Conv(f, (self.kernel_size,) * spatial, padding="SAME", dtype=self.dtype,
                  param_dtype=self.param_dtype, name=f"conv_{i}")(x)
      x = _zero_padding(nn.relu(x), mask)  # post-relu zeros never win a max below
      if self.pool and x.shape[1] >= 2:
        window = (2,) * spatial
        x = nn.max_pool(x, window, strides=window, padding="SAME")
        if lengths is not None:
          lengths, mask = (lengths + 1) // 2, mask[:, ::2]
    if spatial == 2:
      x = x.reshape(x.shape[0], x.shape[1], -1)  # rows are time: [B, H', W' * C']
    outputs, last_h = StackedRNN(cell=self.cell, hidden_size=self.hidden_size,
                                 bidirectional=self.bidirectional, dtype=self.dtype,
                                 param_dtype=self.param_dtype, name="rnn")(x, lengths, train=train)
    z = pool(outputs, last_h, lengths, self.pooling)
    z = nn.Dropout(self.dropout, deterministic=not train)(z)
    return nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype,
                    name="head")(z).astype(jnp.float32)


@register("char_lm")
class CharLM(nn.Module):
  """Character-level language model: embedding -> stacked RNN -> next-token logits."""
  input_kinds: ClassVar[tuple[str, ...]] = ("tokens",)
  tasks: ClassVar[tuple[str, ...]] = ("lm",)
  vocab_size: int = 128
  embed_dim: int = 64
  cell: str = "lstm"
  hidden_size: int = 256
  num_layers: int = 2
  dropout: float = 0.0
  hoist_input_projection: bool | None = None
  unroll: int | None = None        # None: recurrent.default_unroll()
  segments: int | None = None      # None: recurrent.default_segments(T)
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, seq_lengths: Array | None = None, *, train: bool = False) -> Array:
    """x int [B, T] -> logits float32 [B, T, vocab]."""
    h = nn.Embed(self.vocab_size, self.embed_dim, dtype=self.dtype,
                 param_dtype=self.param_dtype, name="embed")(x)
    outputs, _ = StackedRNN(cell=self.cell, hidden_size=self.hidden_size,
                            num_layers=self.num_layers, dropout=self.dropout,
                            hoist_input_projection=self.hoist_input_projection,
                            unroll=self.unroll, segments=self.segments, dtype=self.dtype,
                            param_dtype=self.param_dtype, name="rnn")(h, seq_lengths, train=train)
    outputs = nn.Dropout(self.dropout, deterministic=not train)(outputs)
    return nn.Dense(self.vocab_size, dtype=self.dtype, param_dtype=self.param_dtype,
                    name="head")(outputs).astype(jnp.float32)


def sample(model: CharLM, variables: dict, prompt: Array, length: int, rng: Array,
           temperature: float = 1.0, window: int = 128, banned: Sequence[int] = (0,)) -> Array:
  """Generate `length` tokens after prompt (int [T0], T0 >= 1) -> int [T0 + length].

  Each new token re-reads the last `window` tokens; a fixed window keeps one compiled
  shape for the whole loop. Ids in `banned` are never drawn (0, padding, always).
  """
  prompt = jnp.asarray(prompt, jnp.int32)
  if prompt.ndim != 1 or prompt.shape[0] < 1:
    raise ValueError(f"prompt must be a non-empty 1-D array of token ids, got shape {prompt.shape}")
  t = np.asarray(temperature)
  if (t.ndim or isinstance(temperature, bool) or t.dtype.kind not in "iuf"
      or not 0 < float(t) < float("inf")):  # NaN had sampled padding only
    raise ValueError(f"temperature={temperature!r}: expected a finite number > 0")
  ids = np.asarray(prompt)
  bad = ids[(ids < 0) | (ids >= model.vocab_size)]
  if bad.size:  # an id past the embedding read NaN (all padding after it); -3 wrapped around
    raise ValueError(f"prompt token id {int(bad[0])}: expected ids in [0, {model.vocab_size})")
  if not isinstance(length, (int, np.integer)) or isinstance(length, bool) or length < 0:
    raise ValueError(f"length={length!r}: expected an integer >= 0 (tokens to generate)")
  if not isinstance(window, (int, np.integer)) or isinstance(window, bool) or window < 1:
    raise ValueError(f"window={window!r}: expected an integer >= 1 (tokens of context)")
  banned = sorted({0, *(int(b) for b in banned)})  # id 0 pads; it is never a next token
  if banned[0] < 0 or banned[-1] >= model.vocab_size or len(banned) >= model.vocab_size:
    raise ValueError(f"banned={banned}: expected ids in [0, {model.vocab_size}) that leave "
                     "some token to draw")
  total = prompt.shape[0] + length
  tokens = jnp.zeros((total,), jnp.int32).at[:prompt.shape[0]].set(prompt)

  @jax.jit
  def next_token(variables, tokens, pos, key):  # (the weights an argument, not constants)
    start = jnp.clip(pos - window, 0, max(total - window, 0))
    ctx = jax.lax.dynamic_slice(tokens, (start,), (min(window, total),))
    n_valid = jnp.minimum(pos - start, ctx.shape[0])
    logits = model.apply(variables, ctx[None], n_valid[None], train=False)[0]
    logits = logits[n_valid - 1] / temperature
    logits = logits.at[jnp.asarray(banned)].set(-jnp.inf)
    return jax.random.categorical(key, logits).astype(jnp.int32)

  for pos in range(prompt.shape[0], total):
    rng, key = jax.random.split(rng)
    tokens = tokens.at[pos].set(next_token(variables, tokens, pos, key))
  return tokens
