"""On-device augmentation and normalisation of ``uint8`` image batches (jit-able, keyed).

Each function maps ``x: [N, H, W, C]`` to a batch of the same shape, drawing one independent
transformation per example from ``key``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike


def normalize(x: ArrayLike, mean: ArrayLike, std: ArrayLike, dtype=jnp.float32) -> jax.Array:
  """``(x / 255 - mean) / std`` per channel.

  Args:
    x: ``[N, H, W, C]`` ``uint8`` (or floats in [0, 255]).
    mean, std: ``[C]`` in [0, 1] units.

  Example:
    >>> import numpy as np
    >>> normalize(np.full((1, 1, 1, 1), 255, np.uint8), np.array([0.5]), np.array([0.5]))[0, 0, 0, 0]
    Array(1., dtype=float32)
  """
  x = jnp.asarray(x, jnp.float32) / 255.0
  c = x.shape[-1]
  mean = jnp.asarray(mean, jnp.float32).reshape(1, 1, 1, c)
  std = jnp.asarray(std, jnp.float32).reshape(1, 1, 1, c)
  return ((x - mean) / std).astype(dtype)


def random_crop(key: jax.Array, x: jax.Array, padding: int, mode: str = "constant") -> jax.Array:
  """Pads by ``padding`` on each side and crops back to ``H x W`` at a random offset per example.

  With ``mode="constant"`` (zeros) this is a random shift by up to ``padding`` pixels; CIFAR
  training uses ``padding=4`` with ``mode="reflect"`` or zeros.

  Example:
    >>> x = jnp.arange(16.).reshape(1, 4, 4, 1)
    >>> random_crop(jax.random.key(0), x, 0).shape
    (1, 4, 4, 1)
  """
  if padding < 0:
    raise ValueError(f"padding must be >= 0; got {padding}.")
  if padding == 0:
    return x
  n, h, w, _ = x.shape
  xp = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)), mode=mode)
  offsets = jax.random.randint(key, (n, 2), 0, 2 * padding + 1)
  crop = lambda img, o: jax.lax.dynamic_slice(img, (o[0], o[1], 0), (h, w, img.shape[-1]))
  return jax.vmap(crop)(xp, offsets)


def random_flip(key: jax.Array, x: jax.Array) -> jax.Array:
  """Flips each example left-right with probability 1/2.

  Example:
    >>> x = jnp.arange(4.).reshape(1, 1, 4, 1)
    >>> sorted(random_flip(jax.random.key(1), x)[0, 0, :, 0].tolist()) == [0., 1., 2., 3.]
    True
  """
  flip = jax.random.bernoulli(key, 0.5, (x.shape[0], 1, 1, 1))
  return jnp.where(flip, x[:, :, ::-1, :], x)


def augment(key: jax.Array, x: jax.Array, *, crop_padding: int = 0, crop_mode: str = "constant",
            flip: bool = False) -> jax.Array:
  """Random crop with padding (a shift for ``crop_mode="constant"``), then optional flip.

  Example:
    >>> augment(jax.random.key(0), jnp.zeros((2, 8, 8, 3)), crop_padding=2, flip=True).shape
    (2, 8, 8, 3)
  """
  k1, k2 = jax.random.split(key)
  x = random_crop(k1, x, crop_padding, crop_mode)
  return random_flip(k2, x) if flip else x
