"""Model registry: every model is found by name, built from config.model's fields.

A registered model is a flax.linen Module class. Its dataclass fields are the only
keys config.model may carry (besides `name`), so a typo is an error before compute.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax.numpy as jnp

MODELS: dict[str, type] = {}

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def register(name: str) -> Callable[[type], type]:
  """Class decorator: `@register("resnet20") class ResNet20(nn.Module): ...`."""

  def wrap(cls: type) -> type:
    if name in MODELS:
      raise ValueError(f"model name {name!r} is registered twice")
    MODELS[name] = cls
    return cls

  return wrap


def model_fields(name: str) -> dict[str, dataclasses.Field]:
  """The constructor fields a model accepts (flax internals excluded)."""
  cls = MODELS[name]
  return {f.name: f for f in dataclasses.fields(cls)
          if f.init and f.name not in ("parent", "name")}


def to_dtype(value: Any, key: str = "dtype") -> Any:
  """'float32' | 'bfloat16' | 'float16' (or a jnp dtype) -> jnp dtype."""
  if isinstance(value, str):
    if value not in _DTYPES:
      raise ValueError(f"config.model.{key}={value!r}: expected one of {sorted(_DTYPES)}")
    return _DTYPES[value]
  return value


def build_model(name: str, **kwargs: Any):
  """Instantiate a registered model; dtype strings become jnp dtypes."""
  if name not in MODELS:
    raise ValueError(f"config.model.name={name!r}: expected one of {sorted(MODELS)}")
  fields = model_fields(name)
  unknown = sorted(set(kwargs) - set(fields))
  if unknown:
    raise ValueError(f"config.model.{unknown[0]}={kwargs[unknown[0]]!r}: not a field of "
                     f"model {name!r}; allowed: {sorted(fields)}")
  for key in ("dtype", "param_dtype"):
    if key in kwargs:
      kwargs[key] = to_dtype(kwargs[key], key)
  for k, v in list(kwargs.items()):
    if isinstance(v, list):
      kwargs[k] = tuple(v)
  return MODELS[name](**kwargs)
