"""Pieces every model shares: input checks, the norm/conv builders, dropout, the head, the output."""

from __future__ import annotations

import functools
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxconv.nn import initializers
from jaxconv.nn import BatchNorm, Conv
from jaxconv.models._registry import check_num_classes

Array = jax.Array
Dtype = Any


class ZooModel(nn.Module):
  """The options every zoo model has (the model contract).

  Attributes:
    num_classes: classifier outputs (>= 1).
    dtype: computation dtype (``None``: the parameters' and inputs').
    param_dtype: parameter dtype.
    axis_name: mapped axis for cross-device batch statistics (``None``: local).
  """

  num_classes: int = 1000
  dtype: Optional[Any] = None
  param_dtype: Any = jnp.float32
  axis_name: Optional[str] = None


class NormedZooModel(ZooModel):
  """A zoo model with batch norm: also its momentum (Flax convention) and epsilon."""

  bn_momentum: float = 0.9
  bn_eps: float = 1e-5


def check_input(model: nn.Module, x: Any, channels: Optional[int] = None) -> Array:
  """``x`` must be a batched, channels-last image batch ``[N, H, W, C]`` of floats."""
  x = jnp.asarray(x)
  name = type(model).__name__
  if x.ndim != 4:
    raise ValueError(
        f"{name} expects a batch of channels-last images, x of shape [N, H, W, C]; got shape "
        f"{x.shape}. Add a batch axis with x[None] for one image."
    )
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise TypeError(f"{name} expects floating-point input; got dtype {x.dtype}. Cast it, e.g. x.astype(jnp.float32) / 255.")
  if channels is not None and x.shape[-1] != channels:
    raise ValueError(f"{name} expects {channels} input channel(s); got x of shape {x.shape}.")
  check_num_classes(model.num_classes)
  return x


def conv_builder(model: nn.Module, kernel_init: Callable = initializers.torch_default, **kw: Any) -> Callable[..., nn.Module]:
  """``partial(Conv, dtype=..., param_dtype=..., kernel_init=...)`` for a model's blocks."""
  return functools.partial(Conv, dtype=model.dtype, param_dtype=model.param_dtype, kernel_init=kernel_init, **kw)


def norm_builder(model: nn.Module, train: bool, **kw: Any) -> Callable[..., nn.Module]:
  """``partial(BatchNorm, train=train, ...)`` with the model's momentum, epsilon, axis_name and dtypes."""
  kw.setdefault("momentum", getattr(model, "bn_momentum", 0.9))
  kw.setdefault("epsilon", getattr(model, "bn_eps", 1e-5))
  return functools.partial(BatchNorm, train=train, axis_name=model.axis_name, dtype=model.dtype,
                           param_dtype=model.param_dtype, **kw)


def dense(model: nn.Module, features: int, name: str, kernel_init: Callable = initializers.torch_default) -> nn.Module:
  """A fully connected layer (Flax's ``nn.Dense``: ``y = x W + b``, ``W [C_in, features]``, zero bias)."""
  return nn.Dense(features, dtype=model.dtype, param_dtype=model.param_dtype, kernel_init=kernel_init,
                  bias_init=initializers.zeros, name=name)


def dropout(model: nn.Module, x: Array, rate: float, train: bool, name: str) -> Array:
  """Dropout drawing from the ``"dropout"`` rng in training; a clear error when that rng is missing."""
  if train and rate > 0 and not model.has_rng("dropout"):
    raise ValueError(
        f"{type(model).__name__} uses dropout in training: pass a key, e.g. "
        "model.apply(variables, x, train=True, mutable=['batch_stats'], rngs={'dropout': key})."
    )
  return Dropout(rate, deterministic=not train, name=name)(x)


class Dropout(nn.Module):
  """Flax's ``nn.Dropout`` (same rng stream and mask), with the mask drawn sharded like ``x``.

  Under a mesh with explicit axes (``jax.make_mesh``'s default), Flax's mask is drawn
  replicated and then cannot select from a batch-sharded ``x``; here it takes ``x``'s sharding.
  ``y = where(keep, x / (1 - rate), 0)`` with ``keep ~ Bernoulli(1 - rate)`` in training.
  """
  rate: float
  deterministic: bool = False
  rng_collection: str = "dropout"

  @nn.compact
  def __call__(self, x: Array) -> Array:
    if self.deterministic or self.rate == 0.0:
      return x
    if self.rate == 1.0:
      return jnp.zeros_like(x)
    keep_prob = 1.0 - self.rate
    sharding = jax.typeof(x).sharding
    kw = {} if sharding.mesh.empty else {"out_sharding": sharding}
    keep = jax.random.bernoulli(self.make_rng(self.rng_collection), keep_prob, x.shape, **kw)
    return jax.lax.select(keep, x / keep_prob, jnp.zeros_like(x))


def output(logits: Array, feats: dict, return_features: bool):
  """``logits`` or ``(logits, feats)``."""
  return (logits, feats) if return_features else logits
