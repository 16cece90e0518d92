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


def affine_warp(x: ArrayLike, angle: ArrayLike, scale: ArrayLike) -> jax.Array:
  """Rotates each image by ``angle[n]`` radians and zooms it by ``scale[n]`` about its centre.

  Output pixel ``p`` (row, column, relative to the centre ``c = ((H-1)/2, (W-1)/2)``) takes
  the input at ``c + R(angle)^-1 (p - c) / scale``, sampled bilinearly; positions outside the
  image read 0. Positive angles turn the content counter-clockwise as displayed (rows down).

  Args:
    x: ``[N, H, W, C]`` (any real dtype; the result is float32).
    angle: ``[N]`` radians.
    scale: ``[N]`` zoom factors (> 1 enlarges the content).

  Returns:
    ``[N, H, W, C]`` float32.

  Example:
    >>> x = jnp.arange(9.).reshape(1, 3, 3, 1)
    >>> affine_warp(x, jnp.array([jnp.pi / 2]), jnp.ones(1))[0, :, :, 0]   # = np.rot90
    Array([[2., 5., 8.],
           [1., 4., 7.],
           [0., 3., 6.]], dtype=float32)
  """
  x = jnp.asarray(x, jnp.float32)
  _, h, w, _ = x.shape
  ci, cj = (h - 1) / 2.0, (w - 1) / 2.0
  ii, jj = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32) - ci, jnp.arange(w, dtype=jnp.float32) - cj,
                        indexing="ij")

  def warp(img, a, s):
    # Counter-clockwise as displayed with rows pointing down: the inverse map turns (i, j) by +a
    # in the (up, right) = (-i, j) frame.
    cos, sin = jnp.cos(a), jnp.sin(a)
    src_i = (cos * ii + sin * jj) / s + ci
    src_j = (-sin * ii + cos * jj) / s + cj
    sample = lambda ch: jax.scipy.ndimage.map_coordinates(ch, (src_i, src_j), order=1, mode="constant", cval=0.0)
    return jax.vmap(sample, in_axes=-1, out_axes=-1)(img)

  return jax.vmap(warp)(x, jnp.asarray(angle, jnp.float32), jnp.asarray(scale, jnp.float32))


def random_affine(key: jax.Array, x: jax.Array, rotate: float = 0.0, scale: float = 0.0) -> jax.Array:
  """Random rotation by up to ``rotate`` degrees and zoom by a factor in ``[1 - scale, 1 + scale]``.

  One uniform draw of each per example (:func:`affine_warp`, bilinear, zero fill); with both
  zero ``x`` is returned unchanged. The small distortions that MNIST's best classic results used.

  Example:
    >>> random_affine(jax.random.key(0), jnp.ones((2, 8, 8, 1)), rotate=10, scale=0.1).shape
    (2, 8, 8, 1)
  """
  if rotate < 0 or not 0 <= scale < 1:
    raise ValueError(f"rotate must be >= 0 degrees and scale in [0, 1); got rotate={rotate!r}, scale={scale!r}.")
  if rotate == 0 and scale == 0:
    return x
  k1, k2 = jax.random.split(key)
  n = x.shape[0]
  angle = jax.random.uniform(k1, (n,), minval=-rotate, maxval=rotate) * (jnp.pi / 180.0)
  zoom = jax.random.uniform(k2, (n,), minval=1.0 - scale, maxval=1.0 + scale)
  return affine_warp(x, angle, zoom)


def augment(key: jax.Array, x: jax.Array, *, crop_padding: int = 0, crop_mode: str = "constant",
            flip: bool = False, rotate: float = 0.0, scale: float = 0.0) -> jax.Array:
  """Random rotation/zoom (:func:`random_affine`), random crop with padding (a shift for
  ``crop_mode="constant"``), then optional flip.

  Example:
    >>> augment(jax.random.key(0), jnp.zeros((2, 8, 8, 3)), crop_padding=2, flip=True).shape
    (2, 8, 8, 3)
  """
  k1, k2 = jax.random.split(key)
  x = random_affine(jax.random.fold_in(key, 2), x, rotate, scale)
  x = random_crop(k1, x, crop_padding, crop_mode)
  return random_flip(k2, x) if flip else x
