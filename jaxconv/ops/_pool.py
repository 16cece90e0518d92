"""Pooling: max, min, average and power-average windows, global and adaptive pools, max unpooling.

Everything is channels-last: ``x`` is ``[N, *spatial, C]`` with 1, 2 or 3 spatial dimensions, or
unbatched ``[*spatial, C]``. The sliding-window pools are one :func:`jax.lax.reduce_window` each
(as Flax's ``pooling.py`` does), except max and min pools whose windows tile the input (stride
equal to the window): those are a reshape and a maximum, with a derivative rule that avoids
XLA's ``select_and_scatter`` and gives the same gradient (see ``_max_tiles``). Padding goes
through the same canonicalizer as :func:`jaxconv.ops.conv`, so every padding form ``conv``
accepts works here too.

How many spatial dimensions: when ``window`` is a sequence, ``len(window)``; when it is an int,
``x`` is taken as batched (``x.ndim - 2`` spatial dimensions). An unbatched input therefore needs
``window`` written per dimension, e.g. ``max_pool(img_hwc, (2, 2))``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jaxconv.ops import _args, _conv_grad
from jaxconv.ops._args import PaddingLike

Array = jax.Array
IntOrSeq = Union[int, Sequence[int]]

POOL_KINDS = ("max", "min", "avg", "sum", "lp")


def _split_batch(x: Array, window: Any, fn: str) -> tuple[Array, int, bool]:
  """Returns batched ``x``, the number of spatial dimensions, and whether ``x`` was batched."""
  if isinstance(window, Sequence) and not isinstance(window, str):
    nd = len(window)
    if x.ndim == nd + 2:
      batched = True
    elif x.ndim == nd + 1:
      batched = False
    else:
      raise ValueError(
          f"{fn}: x must have rank {nd + 2} ([N, *spatial, C]) or {nd + 1} ([*spatial, C]) for a "
          f"window with {nd} spatial dimensions ({window!r}); got shape {x.shape}."
      )
  else:
    nd = x.ndim - 2
    batched = True
  if nd not in (1, 2, 3):
    raise ValueError(
        f"{fn}: x must have 1, 2 or 3 spatial dimensions ([N, *spatial, C]); got shape {x.shape} "
        f"with window {window!r}. For an unbatched input, give window per spatial dimension."
    )
  return (x if batched else x[None]), nd, batched


def _resolve_windows(
    in_shape: Sequence[int],
    window: IntOrSeq,
    stride: Optional[IntOrSeq],
    padding: PaddingLike,
    dilation: IntOrSeq,
    ceil_mode: bool,
    fn: str,
):
  """Window, stride, dilation, the user's padding pairs and the extra end padding of ceil_mode.

  PyTorch's rule: with ``ceil_mode`` the output size rounds up, but a last window that would
  start in the trailing padding (at or after ``in + lo``) is dropped.
  """
  nd = len(in_shape)
  win = _args.canonicalize_tuple(window, nd, "window")
  strides = win if stride is None else _args.canonicalize_tuple(stride, nd, "stride")
  dil = _args.canonicalize_tuple(dilation, nd, "dilation")
  if not isinstance(ceil_mode, (bool, np.bool_)):
    raise TypeError(f"{fn}: ceil_mode must be a bool; got {ceil_mode!r}.")
  extent = _args.effective_kernel_size(win, dil)
  pads = _args.canonicalize_padding(padding, in_shape, extent, strides)
  extra = []
  for d, (n, w, s, (lo, hi)) in enumerate(zip(in_shape, extent, strides, pads)):
    if n + lo + hi < w:
      raise ValueError(
          f"{fn}: the window (extent {w} = (window {win[d]} - 1) * dilation {dil[d]} + 1) is larger "
          f"than the padded input in spatial dimension {d}: input {n} + padding ({lo}, {hi}) = "
          f"{n + lo + hi}. Use a smaller window, more padding or a larger input."
      )
    o = _args.out_size(n, w, s, lo, hi, bool(ceil_mode))
    if ceil_mode and (o - 1) * s >= n + lo:
      o -= 1
    extra.append(max((o - 1) * s + w - (n + lo + hi), 0))
    # A window with no tap inside the input would give -inf (max) or 0/0 (avg): refuse it.
    k, dd = win[d], dil[d]
    for i in range(o):
      if not any(0 <= i * s + j * dd - lo < n for j in range(k)):
        raise ValueError(
            f"{fn}: padding {padding!r} leaves output window {i} of spatial dimension {d} entirely "
            f"in the padding (window {k}, stride {s}, dilation {dd}, padding ({lo}, {hi}), input "
            f"{n}); use padding of at most about half the window, as PyTorch requires."
        )
  return win, strides, dil, pads, tuple(extra)


def _reduce(x: Array, init: Any, op: Any, win, strides, dil, pads) -> Array:
  return lax.reduce_window(
      x,
      np.asarray(init, x.dtype),  # concrete: differentiable under jit
      op,
      window_dimensions=(1,) + tuple(win) + (1,),
      window_strides=(1,) + tuple(strides) + (1,),
      padding=((0, 0),) + tuple(pads) + ((0, 0),),
      window_dilation=(1,) + tuple(dil) + (1,),
  )


def _max_window(x: Array, win, strides, pads) -> Array:
  """The maximum over each (undilated) window, padding never chosen.

  Windows that tile the input (stride equal to the window: LeNet's, VGG's and most 2x2 pools)
  run as :func:`_max_tiles`, whose derivative avoids XLA's ``select_and_scatter``; overlapping
  windows, and inputs sharded along a spatial or channel axis, are one ``reduce_window`` with
  JAX's own derivative.
  """
  spec = tuple(jax.typeof(x).sharding.spec)
  if tuple(strides) != tuple(win) or any(e is not None for e in spec[1:]):
    return _reduce(x, -jnp.inf, lax.max, win, strides, (1,) * len(win), pads)
  xp = jnp.pad(x, ((0, 0),) + tuple(pads) + ((0, 0),), constant_values=-jnp.inf)
  # VALID-style rounding down: rows and columns past the last whole window are never read.
  keep = tuple((n // k) * k for n, k in zip(xp.shape[1:-1], win))
  return _max_tiles(xp[(slice(None),) + tuple(slice(0, n) for n in keep)], tuple(win))


def _reshape(x: Array, shape) -> Array:
  """``x.reshape(shape)`` for a ``shape`` that keeps the batch axis, which keeps its sharding
  (under explicit mesh axes JAX asks for the result's sharding)."""
  batch = _conv_grad._explicit_batch(x)
  if batch is None:
    return x.reshape(shape)
  mesh, lead = batch
  return lax.reshape(x, tuple(shape), out_sharding=NamedSharding(mesh, P(lead, *([None] * (len(shape) - 1)))))


def _tiles(x: Array, win) -> Array:
  """``[N, o1 k1, o2 k2, ..., C] -> [N, o1, k1, o2, k2, ..., C]`` (a free reshape)."""
  shape = [x.shape[0]]
  for n, k in zip(x.shape[1:-1], win):
    shape += [n // k, k]
  return _reshape(x, shape + [x.shape[-1]])


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def _max_tiles(x: Array, win) -> Array:
  """The maximum of each tile of a tiling of ``x`` by ``win``.

  XLA:CPU runs JAX's derivative of a ``reduce_window`` maximum (a ``select_and_scatter``) as a
  ``reduce_window`` that tracks the argmax with index arrays, plus a scatter: LeNet-5's two
  pools took 6.5 ms of a 12.6 ms train step. Here the tangent of a tile's maximum is the tangent
  of the tile's first maximum in row-major order (the element ``select_and_scatter`` and PyTorch
  pick on ties; the first NaN if there is one, as in PyTorch), picked by a mask: the gradient is
  one elementwise select over ``x``.
  """
  return jnp.max(_tiles(x, win), axis=tuple(range(2, 2 * len(win) + 1, 2)))


def _first_max_mask(x: Array, win) -> Array:
  """Boolean ``_tiles(x)``: True at the first maximum of each tile (row-major)."""
  nd = len(win)
  xt = _tiles(x, win)
  # Tile axes last, flattened; argmax takes the first maximum (NaN counts as the maximum).
  order = (0,) + tuple(range(1, 2 * nd, 2)) + (2 * nd + 1,) + tuple(range(2, 2 * nd + 1, 2))
  xo = xt.transpose(order)
  flat = _reshape(xo, xo.shape[:nd + 2] + (math.prod(win),))
  taps = lax.broadcasted_iota(jnp.int32, flat.shape, flat.ndim - 1)
  hit = jnp.argmax(flat, axis=-1)[..., None].astype(jnp.int32) == taps
  hit = _reshape(hit, flat.shape[:-1] + tuple(win))
  return hit.transpose(tuple(np.argsort(order)))


@_max_tiles.defjvp
def _max_tiles_jvp(win, primals, tangents):
  (x,), (dx,) = primals, tangents
  mask = _first_max_mask(x, win)
  axes = tuple(range(2, 2 * len(win) + 1, 2))
  return _max_tiles(x, win), jnp.sum(jnp.where(mask, _tiles(dx, win), 0), axis=axes)


def pool(
    x: jax.typing.ArrayLike,
    kind: str,
    window: IntOrSeq,
    stride: Optional[IntOrSeq] = None,
    padding: PaddingLike = "VALID",
    dilation: IntOrSeq = 1,
    ceil_mode: bool = False,
    count_include_pad: Optional[bool] = None,
    p: Optional[float] = None,
) -> Array:
  r"""Sliding-window pooling of any kind; :func:`max_pool` and friends call this.

  Shapes:
    * ``x``: ``[N, *spatial, C]`` or unbatched ``[*spatial, C]`` (1, 2 or 3 spatial dimensions).
    * result: ``[N, *out, C]`` with ``out = floor((in + lo + hi - ((window - 1) * dilation + 1))
      / stride) + 1`` (``ceil`` with ``ceil_mode``, dropping a last window that would start in
      the trailing padding, as PyTorch does).

  Formula, with ``W(i)`` the window of output ``i`` (``i * stride + j * dilation - lo`` for
  window taps ``j``) and ``V(i)`` its taps inside the input:

  * ``max``/``min``: ``y[i] = max/min_{t in V(i)} x[t]`` (padding never wins: it is ``-inf``/``+inf``).
  * ``sum``: ``y[i] = sum_{t in V(i)} x[t]``.
  * ``avg``: ``y[i] = sum_{t in V(i)} x[t] / D(i)``; ``D(i)`` counts the taps inside the input
    and the explicit padding (``count_include_pad=True``, PyTorch's default) or inside the input
    only (``False``). Taps in the extra end padding that ``ceil_mode`` adds are never counted.
  * ``lp``: ``y[i] = (sum_{t in V(i)} x[t]^p)^(1/p)`` (PyTorch's ``lp_pool``).

  Args:
    x: input array (floating point).
    kind: one of ``"max"``, ``"min"``, ``"avg"``, ``"sum"``, ``"lp"``.
    window: window size, int or one per spatial dimension.
    stride: int or per dimension; defaults to ``window``.
    padding: every form :func:`jaxconv.ops.conv` accepts: ``"VALID"``, ``"SAME"``, ``"FULL"``,
      ``"CAUSAL"``, an int, ints per dimension, or ``(lo, hi)`` pairs.
    dilation: window dilation, int or per dimension.
    ceil_mode: round the output size up (PyTorch's ``ceil_mode``).
    count_include_pad: only for ``kind="avg"`` (default ``True`` there).
    p: the power, only for ``kind="lp"``.

  Returns:
    The pooled array, unbatched if ``x`` was.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxconv.ops import pool
    >>> x = jnp.arange(6.0).reshape(1, 6, 1)
    >>> pool(x, "sum", 2)[0, :, 0]
    Array([1., 5., 9.], dtype=float32)
  """
  if not isinstance(kind, str) or kind not in POOL_KINDS:
    raise ValueError(f"kind must be one of {POOL_KINDS}; got {kind!r}.")
  fn = f"{kind}_pool"
  if count_include_pad is not None and kind != "avg":
    raise ValueError(
        f"count_include_pad applies to average pooling only (kind='avg'); got "
        f"count_include_pad={count_include_pad!r} with kind={kind!r}."
    )
  if p is not None and kind != "lp":
    raise ValueError(f"p applies to kind='lp' only; got p={p!r} with kind={kind!r}.")
  x = _args.check_array(x, "x")
  x, _, batched = _split_batch(x, window, fn)
  win, strides, dil, pads, extra = _resolve_windows(
      x.shape[1:-1], window, stride, padding, dilation, ceil_mode, fn
  )
  full = tuple((lo, hi + e) for (lo, hi), e in zip(pads, extra))
  if kind in ("max", "min") and any(d > 1 for d in dil):
    # JAX has no VJP for dilated reduce_window max/min: gather the taps and reduce them instead.
    sign = 1.0 if kind == "max" else -1.0
    g, _, out_shape = _gather_windows(sign * x, win, strides, dil, full)
    y = sign * jnp.max(g, axis=2).reshape((x.shape[0],) + out_shape + (x.shape[-1],))
  elif kind == "max":
    y = _max_window(x, win, strides, full)
  elif kind == "min":
    y = -_max_window(-x, win, strides, full)
  elif kind == "sum":
    y = _reduce(x, 0, lax.add, win, strides, dil, full)
  elif kind == "lp":
    if isinstance(p, bool) or not isinstance(p, (int, float, np.integer, np.floating)) or not p > 0:
      raise ValueError(f"lp_pool: p must be a positive number; got {p!r}.")
    # An integral p uses integer_pow: exact, and defined for negative x as in PyTorch.
    xp = lax.integer_pow(x, int(p)) if float(p).is_integer() else x ** float(p)
    y = _reduce(xp, 0, lax.add, win, strides, dil, full) ** (1.0 / float(p))
  else:  # avg
    include = True if count_include_pad is None else count_include_pad
    if not isinstance(include, (bool, np.bool_)):
      raise TypeError(f"count_include_pad must be a bool; got {count_include_pad!r}.")
    s = _reduce(x, 0, lax.add, win, strides, dil, full)
    # The divisor depends only on shapes, and the counted region and the window are boxes, so
    # it is a product of per-dimension tap counts: a NumPy constant built at trace time. Counted
    # taps lie in [-lo, n + hi) (explicit padding included) or in [0, n); never in the extra end
    # padding of ceil_mode.
    per_dim = []
    for n, (lo, hi), k, d, st, o in zip(x.shape[1:-1], pads, win, dil, strides, s.shape[1:-1]):
      pos = np.arange(o)[:, None] * st + np.arange(k)[None, :] * d - lo
      first, end = (-lo, n + hi) if include else (0, n)
      per_dim.append(((pos >= first) & (pos < end)).sum(axis=1))
    count = per_dim[0]
    for c in per_dim[1:]:
      count = np.multiply.outer(count, c)
    count = jnp.asarray(count.reshape((1,) + s.shape[1:-1] + (1,)), x.dtype)
    y = s / count
  return y if batched else y[0]


def max_pool(
    x: jax.typing.ArrayLike,
    window: IntOrSeq,
    stride: Optional[IntOrSeq] = None,
    padding: PaddingLike = "VALID",
    dilation: IntOrSeq = 1,
    ceil_mode: bool = False,
) -> Array:
  """Max pooling: ``y[i] = max`` of ``x`` over window ``i`` (padding is ``-inf``, never chosen).

  Shapes: ``x`` ``[N, *spatial, C]`` (or unbatched) -> ``[N, *out, C]``; see :func:`pool` for the
  output size, the padding forms and ``ceil_mode``.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxconv.ops import max_pool
    >>> x = jnp.array([[1., 2., 5., 6.], [3., 4., 7., 8.]]).reshape(1, 2, 4, 1)
    >>> max_pool(x, 2)[0, :, :, 0]
    Array([[4., 8.]], dtype=float32)
    >>> max_pool(x, 3, stride=2, padding=1).shape
    (1, 1, 2, 1)
  """
  return pool(x, "max", window, stride, padding, dilation, ceil_mode)


def min_pool(
    x: jax.typing.ArrayLike,
    window: IntOrSeq,
    stride: Optional[IntOrSeq] = None,
    padding: PaddingLike = "VALID",
    dilation: IntOrSeq = 1,
    ceil_mode: bool = False,
) -> Array:
  """Min pooling: ``y[i] = min`` of ``x`` over window ``i`` (padding is ``+inf``).

  Shapes and options as :func:`max_pool`.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxconv.ops import min_pool
    >>> min_pool(jnp.array([3., 1., 4., 1., 5., 9.]).reshape(1, 6, 1), 3)[0, :, 0]
    Array([1., 1.], dtype=float32)
  """
  return pool(x, "min", window, stride, padding, dilation, ceil_mode)


def avg_pool(
    x: jax.typing.ArrayLike,
    window: IntOrSeq,
    stride: Optional[IntOrSeq] = None,
    padding: PaddingLike = "VALID",
    dilation: IntOrSeq = 1,
    ceil_mode: bool = False,
    count_include_pad: bool = True,
) -> Array:
  """Average pooling with PyTorch's ``count_include_pad`` semantics.

  ``y[i] = sum`` of ``x`` over window ``i`` divided by the number of taps in the input plus the
  explicit padding (``count_include_pad=True``) or in the input only (``False``); taps in the
  end padding ``ceil_mode`` adds are never counted. Shapes as :func:`max_pool`.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxconv.ops import avg_pool
    >>> x = jnp.ones((1, 3, 1))
    >>> avg_pool(x, 3, stride=1, padding=1)[0, :, 0]             # zeros counted at the borders
    Array([0.6666667, 1.       , 0.6666667], dtype=float32)
    >>> avg_pool(x, 3, stride=1, padding=1, count_include_pad=False)[0, :, 0]
    Array([1., 1., 1.], dtype=float32)
  """
  return pool(x, "avg", window, stride, padding, dilation, ceil_mode, count_include_pad=count_include_pad)


def lp_pool(
    x: jax.typing.ArrayLike,
    p: float,
    window: IntOrSeq,
    stride: Optional[IntOrSeq] = None,
    padding: PaddingLike = "VALID",
    dilation: IntOrSeq = 1,
    ceil_mode: bool = False,
) -> Array:
  """Power-average pooling, PyTorch's ``lp_pool``: ``y[i] = (sum_{t in window i} x[t]^p)^(1/p)``.

  ``p = 1`` is sum pooling; large ``p`` approaches max pooling (for non-negative ``x``). As in
  PyTorch, ``x`` is raised to ``p`` without an absolute value, so a non-integer ``p`` needs
  non-negative inputs. Padding contributes zeros. Where a whole window is 0 the gradient of
  ``s^(1/p)`` is undefined (NaN for ``p > 1``), as in PyTorch. (In PyTorch, a ``ceil_mode`` window that hangs
  over the end is scaled by ``window / overlap``; here it is the plain sum over its taps.)
  Shapes as :func:`max_pool`.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxconv.ops import lp_pool
    >>> lp_pool(jnp.array([3., 4., 6., 8.]).reshape(1, 4, 1), 2, 2)[0, :, 0]
    Array([ 5., 10.], dtype=float32)
  """
  return pool(x, "lp", window, stride, padding, dilation, ceil_mode, p=p)


def _global_axes(x: Array, fn: str) -> tuple[int, ...]:
  if x.ndim < 3:
    raise ValueError(f"{fn}: x must have shape [N, *spatial, C] (rank >= 3); got shape {x.shape}.")
  return tuple(range(1, x.ndim - 1))


def global_avg_pool(x: jax.typing.ArrayLike, keepdims: bool = False) -> Array:
  """Mean over all spatial axes: ``[N, *spatial, C] -> [N, C]`` (``[N, 1, ..., 1, C]`` with keepdims).

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxconv.ops import global_avg_pool
    >>> global_avg_pool(jnp.arange(8.0).reshape(1, 2, 2, 2))
    Array([[3., 4.]], dtype=float32)
  """
  x = _args.check_array(x, "x")
  return jnp.mean(x, axis=_global_axes(x, "global_avg_pool"), keepdims=keepdims)


def global_max_pool(x: jax.typing.ArrayLike, keepdims: bool = False) -> Array:
  """Max over all spatial axes: ``[N, *spatial, C] -> [N, C]`` (``[N, 1, ..., 1, C]`` with keepdims).

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxconv.ops import global_max_pool
    >>> global_max_pool(jnp.arange(8.0).reshape(1, 2, 2, 2), keepdims=True).shape
    (1, 1, 1, 2)
  """
  x = _args.check_array(x, "x")
  return jnp.max(x, axis=_global_axes(x, "global_max_pool"), keepdims=keepdims)


def adaptive_bins(in_size: int, out_size: int) -> list[tuple[int, int]]:
  """PyTorch's adaptive-pool bins: ``[floor(i * in / out), ceil((i + 1) * in / out))`` for each ``i``.

  Example:
    >>> from jaxconv.ops._pool import adaptive_bins
    >>> adaptive_bins(5, 3)
    [(0, 2), (1, 4), (3, 5)]
  """
  return [((i * in_size) // out_size, -(-((i + 1) * in_size) // out_size)) for i in range(out_size)]


def _adaptive(x: Any, output_size: Any, kind: str) -> Array:
  fn = f"adaptive_{kind}_pool"
  x = _args.check_array(x, "x")
  if _args._is_int(output_size):
    nd = x.ndim - 2
    sizes: tuple = (int(output_size),) * max(nd, 0)
    batched = True
  elif isinstance(output_size, Sequence) and not isinstance(output_size, str):
    nd = len(output_size)
    sizes = tuple(output_size)
    if x.ndim == nd + 2:
      batched = True
    elif x.ndim == nd + 1:
      batched = False
    else:
      raise ValueError(
          f"{fn}: x must have rank {nd + 2} ([N, *spatial, C]) or {nd + 1} ([*spatial, C]) for "
          f"output_size {output_size!r}; got shape {x.shape}."
      )
  else:
    raise TypeError(f"{fn}: output_size must be an int or a sequence of ints/None; got {output_size!r}.")
  if nd not in (1, 2, 3):
    raise ValueError(f"{fn}: x must have 1, 2 or 3 spatial dimensions; got shape {x.shape}.")
  if not batched:
    x = x[None]
  in_shape = x.shape[1:-1]
  out = []
  for d, (o, n) in enumerate(zip(sizes, in_shape)):
    if o is None:
      o = n
    if not _args._is_int(o) or o < 1:
      raise ValueError(f"{fn}: output_size must hold positive ints (or None); got {output_size!r}.")
    out.append(int(o))
  # Separable: a max (or a mean, since all bins of one dimension are rectangles) over a box is
  # the max (mean) along each axis in turn. Per axis, bins of equal size that do not overlap are
  # one reshape. Otherwise the mean is a product with the [out, in] matrix of bin weights
  # (1 / bin size inside a bin), and the max gathers each bin's elements into an [out, K] table
  # (K = largest bin), short bins repeating their last element. (A gather-and-sum mean instead
  # made VGG's forward on small images, whose maps are pooled up to 7x7, about 10x slower on
  # XLA:CPU, which fused it into the classifier's matrix products.)
  y = x
  for d, (o, n) in enumerate(zip(out, in_shape)):
    if o == n:
      continue
    axis = d + 1
    bins = adaptive_bins(n, o)
    if n % o == 0:  # equal, non-overlapping bins: one reshape
      shape = y.shape[:axis] + (o, n // o) + y.shape[axis + 1 :]
      r = y.reshape(shape)
      y = jnp.max(r, axis=axis + 1) if kind == "max" else jnp.mean(r, axis=axis + 1)
      continue
    if kind == "avg":
      w = np.zeros((o, n))
      for i, (s, e) in enumerate(bins):
        w[i, s:e] = 1.0 / (e - s)
      letters = "abcdefghij"[:y.ndim]
      spec = f"{letters},z{letters[axis]}->{letters[:axis]}z{letters[axis + 1:]}"
      y = jnp.einsum(spec, y, jnp.asarray(w, y.dtype), precision=lax.Precision.HIGHEST)
      continue
    k = max(e - s for s, e in bins)
    idx = np.array([[min(s + j, e - 1) for j in range(k)] for s, e in bins], np.int32)
    g = jnp.take(y, jnp.asarray(idx.reshape(-1)), axis=axis)
    y = jnp.max(g.reshape(y.shape[:axis] + (o, k) + y.shape[axis + 1 :]), axis=axis + 1)
  return y if batched else y[0]


def adaptive_avg_pool(x: jax.typing.ArrayLike, output_size: Union[int, Sequence[Optional[int]]]) -> Array:
  """Average pooling to a fixed output size with PyTorch's bins (non-divisible sizes included).

  Output ``i`` of a dimension of size ``n`` pooled to ``o`` averages inputs
  ``floor(i * n / o) <= t < ceil((i + 1) * n / o)`` (bins may overlap when ``o`` does not divide
  ``n``). The mean over a box is taken one axis at a time.

  Shapes: ``x`` ``[N, *spatial, C]`` (or unbatched, when ``output_size`` is a sequence) ->
  ``[N, *output_size, C]``. ``output_size`` is an int (every spatial dimension) or one int or
  ``None`` (keep that size) per dimension. An output larger than the input repeats input
  elements (each bin still holds at least one), as PyTorch's does.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxconv.ops import adaptive_avg_pool
    >>> adaptive_avg_pool(jnp.arange(5.0).reshape(1, 5, 1), 3)[0, :, 0]   # bins [0,2) [1,4) [3,5)
    Array([0.5, 2. , 3.5], dtype=float32)
  """
  return _adaptive(x, output_size, "avg")


def adaptive_max_pool(x: jax.typing.ArrayLike, output_size: Union[int, Sequence[Optional[int]]]) -> Array:
  """Max pooling to a fixed output size with PyTorch's bins; see :func:`adaptive_avg_pool`.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxconv.ops import adaptive_max_pool
    >>> adaptive_max_pool(jnp.array([1., 5., 2., 0., 3.]).reshape(1, 5, 1), 3)[0, :, 0]
    Array([5., 5., 3.], dtype=float32)
  """
  return _adaptive(x, output_size, "max")


def _gather_windows(x: Array, win, strides, dil, full):
  """Every window's taps: ``[N, O, K, C]`` (``-inf`` outside the input), flat input positions ``[O*K]``.

  ``O = prod(out)``, ``K = prod(window)``. Used where ``reduce_window`` cannot serve: argmax
  indices, and the gradient of dilated max pooling (JAX has no VJP for that).
  """
  nd = len(win)
  in_shape = x.shape[1:-1]
  out_shape = tuple(
      (n + lo + hi - ((k - 1) * d + 1)) // s + 1 for n, (lo, hi), k, d, s in zip(in_shape, full, win, dil, strides)
  )
  # Static tables: for each output position and window tap, the input coordinate per dimension.
  coords = []
  for (lo, _), k, d, s, o in zip(full, win, dil, strides, out_shape):
    coords.append(np.arange(o)[:, None] * s + np.arange(k)[None, :] * d - lo)  # [o, k]
  grids = []  # each broadcast to [*out, *win]
  for a, c in enumerate(coords):
    shape = [1] * (2 * nd)
    shape[a], shape[nd + a] = c.shape
    grids.append(np.broadcast_to(c.reshape(shape), out_shape + tuple(win)))
  inside = np.ones(out_shape + tuple(win), bool)
  flat = np.zeros(out_shape + tuple(win), np.int64)
  for g, n in zip(grids, in_shape):
    inside &= (g >= 0) & (g < n)
    flat = flat * n + np.clip(g, 0, n - 1)
  n_out, n_win = math.prod(out_shape), math.prod(win)
  flat = flat.reshape(n_out * n_win).astype(np.int32)
  inside = inside.reshape(1, n_out, n_win, 1)
  xf = x.reshape(x.shape[0], -1, x.shape[-1])  # [N, P, C]
  g = jnp.take(xf, jnp.asarray(flat), axis=1).reshape(x.shape[0], n_out, n_win, x.shape[-1])
  g = jnp.where(jnp.asarray(inside), g, jnp.asarray(-jnp.inf, x.dtype))
  return g, flat, out_shape


def max_pool_with_indices(
    x: jax.typing.ArrayLike,
    window: IntOrSeq,
    stride: Optional[IntOrSeq] = None,
    padding: PaddingLike = "VALID",
    dilation: IntOrSeq = 1,
    ceil_mode: bool = False,
) -> tuple[Array, Array]:
  """Max pooling that also returns where each maximum came from (PyTorch's ``return_indices``).

  ``indices[n, *i, c]`` is the flat (row-major) position of the maximum within the spatial
  grid of ``x[n, ..., c]``, e.g. ``h * W + w`` in 2-D; on ties the first tap in window order wins.
  :func:`max_unpool` puts the values back at those positions (SegNet's decoder).

  Shapes: ``x`` ``[N, *spatial, C]`` (or unbatched) -> values and int32 indices ``[N, *out, C]``.
  The gradient of the values reaches ``x`` at the chosen positions only. Built on a gather of
  every window (memory ``prod(window)`` times the output), since ``reduce_window`` cannot carry
  an argmax with a gradient.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxconv.ops import max_pool_with_indices
    >>> x = jnp.array([[1., 2., 5., 6.], [3., 4., 8., 7.]]).reshape(1, 2, 4, 1)
    >>> v, i = max_pool_with_indices(x, 2)
    >>> v[0, :, :, 0], i[0, :, :, 0]
    (Array([[4., 8.]], dtype=float32), Array([[5, 6]], dtype=int32))
  """
  fn = "max_pool_with_indices"
  x = _args.check_array(x, "x")
  x, nd, batched = _split_batch(x, window, fn)
  in_shape = x.shape[1:-1]
  win, strides, dil, pads, extra = _resolve_windows(in_shape, window, stride, padding, dilation, ceil_mode, fn)
  full = tuple((lo, hi + e) for (lo, hi), e in zip(pads, extra))
  g, flat, out_shape = _gather_windows(x, win, strides, dil, full)
  n_out, n_win = g.shape[1], g.shape[2]
  arg = jnp.argmax(g, axis=2, keepdims=True)  # [N, O, 1, C]
  values = jnp.take_along_axis(g, arg, axis=2)[:, :, 0]
  table = jnp.asarray(flat.reshape(1, n_out, n_win, 1))
  table = jnp.broadcast_to(table, (x.shape[0], n_out, n_win, x.shape[-1]))
  indices = jnp.take_along_axis(table, arg, axis=2)[:, :, 0]
  values = values.reshape((x.shape[0],) + out_shape + (x.shape[-1],))
  indices = indices.reshape((x.shape[0],) + out_shape + (x.shape[-1],))
  if not batched:
    values, indices = values[0], indices[0]
  return values, indices


def max_unpool(
    x: jax.typing.ArrayLike,
    indices: jax.typing.ArrayLike,
    window: Optional[IntOrSeq] = None,
    stride: Optional[IntOrSeq] = None,
    padding: IntOrSeq = 0,
    output_size: Optional[Sequence[int]] = None,
) -> Array:
  """Inverse of :func:`max_pool_with_indices`: each value goes back to its recorded position.

  ``y`` is zero except ``y[n, unflatten(indices[n, *i, c]), c] = x[n, *i, c]`` (PyTorch's
  ``max_unpool``). The spatial output size is ``output_size`` if given, else PyTorch's default
  ``(in - 1) * stride - 2 * padding + window`` (``stride`` defaults to ``window``). Indices
  outside ``[0, prod(output_size))`` are dropped (they cannot be checked under ``jit``).

  Shapes: ``x`` and ``indices`` ``[N, *in, C]`` (or unbatched) -> ``[N, *output_size, C]``.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxconv.ops import max_pool_with_indices, max_unpool
    >>> x = jnp.array([[1., 2., 5., 6.], [3., 4., 8., 7.]]).reshape(1, 2, 4, 1)
    >>> v, i = max_pool_with_indices(x, 2)
    >>> max_unpool(v, i, 2)[0, :, :, 0]
    Array([[0., 0., 0., 0.],
           [0., 4., 8., 0.]], dtype=float32)
  """
  fn = "max_unpool"
  x = _args.check_array(x, "x")
  indices = jnp.asarray(indices)
  if not jnp.issubdtype(indices.dtype, jnp.integer):
    raise TypeError(f"{fn}: indices must be integers (from max_pool_with_indices); got dtype {indices.dtype}.")
  if indices.shape != x.shape:
    raise ValueError(f"{fn}: indices must have the shape of x {x.shape}; got {indices.shape}.")
  if output_size is not None:
    if isinstance(output_size, Sequence) and not isinstance(output_size, str):
      nd = len(output_size)
    else:
      raise TypeError(f"{fn}: output_size must be a sequence of spatial sizes; got {output_size!r}.")
  elif window is not None:
    nd = len(window) if isinstance(window, Sequence) and not isinstance(window, str) else x.ndim - 2
  else:
    raise ValueError(f"{fn}: give window (to compute the output size) or output_size; got neither.")
  if x.ndim == nd + 2:
    batched = True
  elif x.ndim == nd + 1:
    batched = False
    x, indices = x[None], indices[None]
  else:
    raise ValueError(f"{fn}: x must have rank {nd + 2} or {nd + 1} for {nd} spatial dimensions; got shape {x.shape}.")
  if nd not in (1, 2, 3):
    raise ValueError(f"{fn}: x must have 1, 2 or 3 spatial dimensions; got shape {x.shape}.")
  in_shape = x.shape[1:-1]
  if output_size is not None:
    out = _args.canonicalize_tuple(tuple(output_size), nd, "output_size")
  else:
    win = _args.canonicalize_tuple(window, nd, "window")
    st = win if stride is None else _args.canonicalize_tuple(stride, nd, "stride")
    pad = _args.canonicalize_tuple(padding, nd, "padding", minimum=0)
    out = tuple((n - 1) * s - 2 * p + k for n, s, p, k in zip(in_shape, st, pad, win))
    if any(o < 1 for o in out):
      raise ValueError(f"{fn}: window/stride/padding give a non-positive output size {out}.")
  n_b, c = x.shape[0], x.shape[-1]
  total = math.prod(out)
  xf = x.reshape(n_b, -1, c)
  idx = indices.reshape(n_b, -1, c).astype(jnp.int32)
  b = jnp.arange(n_b, dtype=jnp.int32).reshape(n_b, 1, 1)
  ch = jnp.arange(c, dtype=jnp.int32).reshape(1, 1, c)
  y = jnp.zeros((n_b, total, c), x.dtype).at[b, idx, ch].set(xf, mode="drop")
  y = y.reshape((n_b,) + out + (c,))
  return y if batched else y[0]
