"""Classic image filters: box, Gaussian, Sobel, Scharr, Laplacian and Gabor kernels, and ``filter2d``.

Kernels come in the layout :func:`jaxconv.ops.conv` takes for a depthwise convolution,
``[kh, kw, 1, channels]`` (HWIO with one input channel per group); with ``channels=1`` that is also
an ordinary single-channel ``[kh, kw, 1, 1]`` kernel. Axis 0 is ``y`` (rows, downwards), axis 1 is
``x`` (columns, rightwards). :func:`filter2d` applies a kernel to every channel separately, as
image-processing libraries (SciPy's ``ndimage``, OpenCV's ``filter2D``) do.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Optional, Union

import jax
import jax.numpy as jnp
import numpy as np

from jaxconv.ops import _args
from jaxconv.ops._conv import conv

Array = jax.Array
FloatOrPair = Union[float, Sequence[float]]

BORDERS = ("zeros", "reflect", "replicate", "circular")


def _channels(channels: int) -> int:
  if not _args._is_int(channels) or channels < 1:
    raise ValueError(f"channels must be a positive int; got {channels!r}.")
  return int(channels)


def _to_layout(k2d: np.ndarray, channels: int, dtype) -> Array:
  """``[kh, kw]`` -> ``[kh, kw, 1, channels]`` (the same filter for every channel)."""
  k = np.repeat(k2d[:, :, None, None], _channels(channels), axis=3)
  return jnp.asarray(k, dtype)


def _pair(v, name: str, *, positive_int: bool = False) -> tuple:
  if isinstance(v, Sequence) and not isinstance(v, str):
    if len(v) != 2:
      raise ValueError(f"{name} must be a number or a (y, x) pair; got {v!r}.")
    out = tuple(v)
  else:
    out = (v, v)
  for o in out:
    if positive_int:
      if not _args._is_int(o) or o < 1:
        raise ValueError(f"{name} must be a positive int or a (height, width) pair of them; got {v!r}.")
    elif isinstance(o, bool) or not isinstance(o, (int, float, np.integer, np.floating)) or not o > 0:
      raise ValueError(f"{name} must be a positive number or a (y, x) pair of them; got {v!r}.")
  return out


def _check_axis(axis: str) -> str:
  if axis not in ("x", "y"):
    raise ValueError(f"axis must be 'x' (horizontal derivative, along columns) or 'y' (along rows); got {axis!r}.")
  return axis


def box_kernel(size: Union[int, Sequence[int]], channels: int = 1, dtype=jnp.float32) -> Array:
  """Box (mean) filter: ``size`` (int or ``(h, w)``) of ones divided by ``h * w``.

  Returns ``[h, w, 1, channels]``.

  Example:
    >>> from jaxconv.ops import box_kernel
    >>> box_kernel(2)[:, :, 0, 0]
    Array([[0.25, 0.25],
           [0.25, 0.25]], dtype=float32)
  """
  h, w = _pair(size, "size", positive_int=True)
  return _to_layout(np.full((h, w), 1.0 / (h * w)), channels, dtype)


def gaussian_size(sigma: float, truncate: float = 3.0) -> int:
  """The size rule of :func:`gaussian_kernel`: ``2 * ceil(truncate * sigma) + 1`` (odd, covers ±3σ).

  Example:
    >>> from jaxconv.ops import gaussian_size
    >>> gaussian_size(1.0), gaussian_size(1.5)
    (7, 11)
  """
  return 2 * math.ceil(truncate * sigma) + 1


def gaussian_kernel(
    sigma: FloatOrPair,
    size: Optional[Union[int, Sequence[int]]] = None,
    channels: int = 1,
    dtype=jnp.float32,
) -> Array:
  r"""Normalised Gaussian blur kernel.

  ``k[i, j] ∝ exp(-(y^2 / (2 σ_y^2) + x^2 / (2 σ_x^2)))`` with ``y = i - (h - 1)/2`` and
  ``x = j - (w - 1)/2``, scaled to sum to 1. Size rule when ``size`` is None:
  ``2 * ceil(3 * sigma) + 1`` per axis (:func:`gaussian_size`), i.e. the kernel reaches three
  standard deviations each side (SciPy's ``gaussian_filter(truncate=t)`` uses radius
  ``int(t * sigma + 0.5)`` instead).

  Args:
    sigma: standard deviation in pixels, one number or ``(σ_y, σ_x)``.
    size: kernel size, int or ``(h, w)``; defaults to the rule above.
    channels: number of channels (last axis of the result).
    dtype: result dtype.

  Returns:
    ``[h, w, 1, channels]``.

  Example:
    >>> from jaxconv.ops import gaussian_kernel
    >>> k = gaussian_kernel(1.0)
    >>> k.shape, float(k.sum())
    ((7, 7, 1, 1), 1.0)
  """
  sy, sx = _pair(sigma, "sigma")
  if size is None:
    h, w = gaussian_size(sy), gaussian_size(sx)
  else:
    h, w = _pair(size, "size", positive_int=True)
  y = np.arange(h) - (h - 1) / 2
  x = np.arange(w) - (w - 1) / 2
  g = np.exp(-(y[:, None] ** 2) / (2 * sy**2) - (x[None, :] ** 2) / (2 * sx**2))
  return _to_layout(g / g.sum(), channels, dtype)


def sobel_kernel(axis: str = "x", channels: int = 1, dtype=jnp.float32) -> Array:
  """Sobel derivative kernel (unnormalised), for cross-correlation (:func:`filter2d`'s default).

  ``axis="x"``: ``[[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]]`` (positive where intensity increases to
  the right); ``axis="y"`` is its transpose (positive where it increases downwards). On a ramp
  ``f = a * x`` the response is ``8 a``; divide by 8 for a derivative estimate. Returns
  ``[3, 3, 1, channels]``.

  Example:
    >>> from jaxconv.ops import sobel_kernel
    >>> sobel_kernel("y")[:, :, 0, 0]
    Array([[-1., -2., -1.],
           [ 0.,  0.,  0.],
           [ 1.,  2.,  1.]], dtype=float32)
  """
  k = np.outer([1.0, 2.0, 1.0], [-1.0, 0.0, 1.0])
  return _to_layout(k if _check_axis(axis) == "x" else k.T, channels, dtype)


def scharr_kernel(axis: str = "x", channels: int = 1, dtype=jnp.float32) -> Array:
  """Scharr derivative kernel: ``[[-3, 0, 3], [-10, 0, 10], [-3, 0, 3]]`` for ``x``, transposed for ``y``.

  More rotation-invariant than Sobel (OpenCV's weights). Ramp ``f = a * x`` gives ``32 a``.
  Returns ``[3, 3, 1, channels]``.

  Example:
    >>> from jaxconv.ops import scharr_kernel
    >>> scharr_kernel("x")[:, :, 0, 0]
    Array([[ -3.,   0.,   3.],
           [-10.,   0.,  10.],
           [ -3.,   0.,   3.]], dtype=float32)
  """
  k = np.outer([3.0, 10.0, 3.0], [-1.0, 0.0, 1.0])
  return _to_layout(k if _check_axis(axis) == "x" else k.T, channels, dtype)


def laplacian_kernel(diagonals: bool = False, channels: int = 1, dtype=jnp.float32) -> Array:
  """Discrete Laplacian: ``[[0, 1, 0], [1, -4, 1], [0, 1, 0]]``, or with ``diagonals`` the 8-neighbour ``[[1, 1, 1], [1, -8, 1], [1, 1, 1]]``.

  Returns ``[3, 3, 1, channels]``. The 4-neighbour kernel is SciPy's ``ndimage.laplace``.

  Example:
    >>> from jaxconv.ops import laplacian_kernel
    >>> laplacian_kernel()[:, :, 0, 0]
    Array([[ 0.,  1.,  0.],
           [ 1., -4.,  1.],
           [ 0.,  1.,  0.]], dtype=float32)
    >>> float(laplacian_kernel(diagonals=True)[1, 1, 0, 0])
    -8.0
  """
  k = np.ones((3, 3)) if diagonals else np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
  k[1, 1] = 0.0
  k[1, 1] = -k.sum()  # rows sum to zero: flat and linear images give 0
  return _to_layout(k, channels, dtype)


def gabor_kernel(
    size: Union[int, Sequence[int]],
    sigma: float,
    theta: float,
    lambd: float,
    gamma: float = 1.0,
    psi: float = 0.0,
    channels: int = 1,
    dtype=jnp.float32,
) -> Array:
  r"""Gabor kernel: a Gaussian envelope times a cosine grating.

  .. math::
     k[i, j] = \exp\!\Big(-\frac{x'^2 + \gamma^2 y'^2}{2\sigma^2}\Big) \cos\!\Big(2\pi\frac{x'}{\lambda} + \psi\Big),
     \quad x' = x\cos\theta + y\sin\theta,\; y' = -x\sin\theta + y\cos\theta

  with ``x = j - (w - 1) / 2`` (columns, rightwards) and ``y = i - (h - 1) / 2`` (rows,
  downwards). ``theta`` is the direction of the grating's normal (0: vertical stripes), ``lambd``
  the wavelength in pixels, ``gamma`` the aspect ratio of the envelope, ``psi`` the phase. It is
  OpenCV's ``getGaborKernel`` formula; OpenCV stores the kernel with both axes reversed
  (``k[::-1, ::-1]``), which matters only when ``psi`` makes the kernel odd. Not normalised.

  Returns ``[h, w, 1, channels]``.

  Example:
    >>> import numpy as np
    >>> from jaxconv.ops import gabor_kernel
    >>> k = gabor_kernel(5, sigma=2.0, theta=0.0, lambd=4.0)[:, :, 0, 0]
    >>> float(k[2, 2]), bool(np.allclose(k, k[::-1, ::-1]))
    (1.0, True)
  """
  h, w = _pair(size, "size", positive_int=True)
  for name, v in (("sigma", sigma), ("lambd", lambd), ("gamma", gamma)):
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) or not v > 0:
      raise ValueError(f"{name} must be a positive number; got {v!r}.")
  y = (np.arange(h) - (h - 1) / 2)[:, None]
  x = (np.arange(w) - (w - 1) / 2)[None, :]
  xr = x * np.cos(theta) + y * np.sin(theta)
  yr = -x * np.sin(theta) + y * np.cos(theta)
  g = np.exp(-(xr**2 + gamma**2 * yr**2) / (2 * sigma**2)) * np.cos(2 * np.pi * xr / lambd + psi)
  return _to_layout(g, channels, dtype)


def filter2d(
    image: jax.typing.ArrayLike,
    kernel: jax.typing.ArrayLike,
    border: str = "reflect",
    *,
    flip: bool = False,
) -> Array:
  """Filters every channel of an image with a 2-D kernel, same size out, classic border handling.

  ``y[i, j, c] = sum_{u, v} k[u, v, c] * x[i + u - ah, j + v - aw, c]`` (cross-correlation, as
  SciPy's ``correlate`` and OpenCV's ``filter2D``), with anchor ``(ah, aw) = (kh // 2, kw // 2)``
  (the centre; for even sizes the one after the middle, as SciPy does). ``flip=True`` is true
  convolution, ``y[i, j] = sum k[u, v] x[i - u + ah, j - v + aw]`` (SciPy's ``convolve``). Values
  outside the image come from ``border``:

  ================  ==========================  ==============  ====================
  ``border``        meaning                     SciPy ``mode``  OpenCV
  ================  ==========================  ==============  ====================
  ``"zeros"``       zeros                       ``constant``    ``BORDER_CONSTANT``
  ``"reflect"``     mirror, edge not repeated   ``mirror``      ``BORDER_REFLECT_101``
  ``"replicate"``   edge value repeated         ``nearest``     ``BORDER_REPLICATE``
  ``"circular"``    wrap around                 ``wrap``        ``BORDER_WRAP``
  ================  ==========================  ==============  ====================

  Implemented as one depthwise :func:`jaxconv.ops.conv` (``groups = C``).

  Args:
    image: ``[N, H, W, C]`` or ``[H, W, C]``.
    kernel: ``[kh, kw]`` (the same filter for every channel), ``[kh, kw, 1, 1]``, or
      ``[kh, kw, 1, C]`` (one filter per channel, the layout of the kernel builders here).
    border: one of the four modes above.
    flip: convolution instead of cross-correlation.

  Returns:
    The filtered image, the shape of ``image``.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxconv.ops import filter2d, sobel_kernel
    >>> ramp = jnp.tile(jnp.arange(5.0), (4, 1))[:, :, None]      # [H=4, W=5, C=1], f = x
    >>> filter2d(ramp, sobel_kernel("x"), border="replicate")[1, :, 0]
    Array([4., 8., 8., 8., 4.], dtype=float32)
  """
  image = _args.check_array(image, "image")
  kernel = _args.check_array(kernel, "kernel")
  if not isinstance(border, str) or border not in BORDERS:
    raise ValueError(
        f"border must be one of {BORDERS} (SciPy's constant, mirror, nearest, wrap); got {border!r}."
    )
  if image.ndim == 3:
    batched = False
    image = image[None]
  elif image.ndim == 4:
    batched = True
  else:
    raise ValueError(f"image must have shape [N, H, W, C] or [H, W, C]; got shape {image.shape}.")
  c = image.shape[-1]
  if kernel.ndim == 2:
    kernel = kernel[:, :, None, None]
  if kernel.ndim != 4 or kernel.shape[2] != 1 or kernel.shape[3] not in (1, c):
    raise ValueError(
        f"kernel must have shape [kh, kw], [kh, kw, 1, 1] or [kh, kw, 1, C] with C = {c} (the "
        f"image's channels); got shape {kernel.shape}."
    )
  if kernel.shape[3] == 1 and c > 1:
    kernel = jnp.tile(kernel, (1, 1, 1, c))
  kernel = kernel.astype(image.dtype)
  kh, kw = kernel.shape[:2]
  h, w = image.shape[1:3]
  if border == "reflect" and (kh // 2 >= h or kw // 2 >= w or (kh - 1) // 2 >= h or (kw - 1) // 2 >= w):
    raise ValueError(
        f"border='reflect' needs the kernel's half-size below the image size: kernel {kh}x{kw} on an "
        f"image of {h}x{w}. Use a smaller kernel or border='replicate'."
    )
  y = _depthwise_same(image, kernel, border, bool(flip))
  return y if batched else y[0]


@functools.partial(jax.jit, static_argnames=("border", "flip"))
def _depthwise_same(image: Array, kernel: Array, border: str, flip: bool) -> Array:
  # Jitted because eager jnp.pad in reflect mode dispatches many small ops (seconds per new
  # shape on a CPU); one compiled call is about ten times faster. Shapes are static here.
  kh, kw = kernel.shape[:2]
  return conv(image, kernel, anchor=(kh // 2, kw // 2), padding_mode=border, groups=image.shape[-1], flip=flip)


def sobel_edges(image: jax.typing.ArrayLike, border: str = "replicate") -> tuple[Array, Array]:
  """Horizontal and vertical Sobel responses ``(gx, gy)`` of every channel (see :func:`sobel_kernel`).

  Shapes: ``image`` ``[N, H, W, C]`` or ``[H, W, C]`` -> two arrays of the same shape. The edge
  magnitude is ``sqrt(gx**2 + gy**2)``.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxconv.ops import sobel_edges
    >>> gx, gy = sobel_edges(jnp.tile(jnp.arange(4.0), (4, 1))[:, :, None])
    >>> float(gx[1, 1, 0]), float(gy[1, 1, 0])
    (8.0, 0.0)
  """
  image = _args.check_array(image, "image")
  kx = sobel_kernel("x", dtype=image.dtype)
  ky = sobel_kernel("y", dtype=image.dtype)
  return filter2d(image, kx, border), filter2d(image, ky, border)
