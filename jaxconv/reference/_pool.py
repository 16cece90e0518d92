"""Pooling oracles: explicit loops over output positions and window taps (NumPy only).

They take padding only as explicit ``(lo, hi)`` pairs and compute the ``ceil_mode`` output size
from the textbook formula themselves; nothing is shared with ``jaxconv.ops``.
"""

from __future__ import annotations

import itertools
import math

import numpy as np


def _out_size(n, lo, hi, k, d, s, ceil_mode):
  ext = (k - 1) * d + 1
  span = n + lo + hi - ext
  o = (math.ceil(span / s) if ceil_mode else span // s) + 1
  if ceil_mode and (o - 1) * s >= n + lo:  # PyTorch: the last window must start inside
    o -= 1
  return o


def pool_loop(x, kind, window, stride, pads, dilation=None, ceil_mode=False, count_include_pad=True, p=None):
  """Pooling of ``x [N, *spatial, C]`` by looping over every output position and tap.

  Args:
    x: NumPy array ``[N, *spatial, C]``.
    kind: ``"max"``, ``"min"``, ``"avg"``, ``"sum"`` or ``"lp"``.
    window, stride, dilation: tuples, one int per spatial dimension.
    pads: tuple of ``(lo, hi)`` pairs.
    ceil_mode: PyTorch's ceil mode.
    count_include_pad: for ``avg``: divide by the taps inside ``[-lo, n + hi)`` (True) or inside
      ``[0, n)`` (False).
    p: the power for ``lp``: ``(sum x**p) ** (1/p)``.

  Example:
    >>> import numpy as np
    >>> from jaxconv.reference import pool_loop
    >>> pool_loop(np.arange(4.0).reshape(1, 4, 1), "max", (2,), (2,), ((0, 0),))[0, :, 0]
    array([1., 3.])
  """
  x = np.asarray(x, np.float64)
  nd = x.ndim - 2
  dilation = dilation or (1,) * nd
  spatial = x.shape[1:-1]
  outs = [_out_size(n, lo, hi, k, d, s, ceil_mode) for n, (lo, hi), k, d, s in zip(spatial, pads, window, dilation, stride)]
  y = np.zeros((x.shape[0], *outs, x.shape[-1]))
  for b in range(x.shape[0]):
    for c in range(x.shape[-1]):
      for o in itertools.product(*[range(v) for v in outs]):
        vals, count = [], 0
        for t in itertools.product(*[range(k) for k in window]):
          pos = [oi * s + ti * d - lo for oi, ti, s, d, (lo, _) in zip(o, t, stride, dilation, pads)]
          if all(0 <= q < n for q, n in zip(pos, spatial)):
            vals.append(x[(b, *pos, c)])
            count += 1
          elif all(-lo <= q < n + hi for q, n, (lo, hi) in zip(pos, spatial, pads)):
            count += count_include_pad
        if kind == "max":
          r = max(vals)
        elif kind == "min":
          r = min(vals)
        elif kind == "sum":
          r = sum(vals)
        elif kind == "avg":
          r = sum(vals) / count
        elif kind == "lp":
          r = sum(v**p for v in vals) ** (1.0 / p)
        else:
          raise ValueError(kind)
        y[(b, *o, c)] = r
  return y


def max_pool_indices_loop(x, window, stride, pads, dilation=None, ceil_mode=False):
  """Max pooling with PyTorch-style flat spatial argmax indices (first maximum wins).

  Returns ``(values, indices)``, both ``[N, *out, C]``.

  Example:
    >>> import numpy as np
    >>> from jaxconv.reference import max_pool_indices_loop
    >>> v, i = max_pool_indices_loop(np.array([0., 3., 1., 2.]).reshape(1, 4, 1), (2,), (2,), ((0, 0),))
    >>> i[0, :, 0]
    array([1, 3])
  """
  x = np.asarray(x, np.float64)
  nd = x.ndim - 2
  dilation = dilation or (1,) * nd
  spatial = x.shape[1:-1]
  outs = [_out_size(n, lo, hi, k, d, s, ceil_mode) for n, (lo, hi), k, d, s in zip(spatial, pads, window, dilation, stride)]
  vals = np.zeros((x.shape[0], *outs, x.shape[-1]))
  idx = np.zeros(vals.shape, np.int64)
  for b in range(x.shape[0]):
    for c in range(x.shape[-1]):
      for o in itertools.product(*[range(v) for v in outs]):
        best, arg = -np.inf, -1
        for t in itertools.product(*[range(k) for k in window]):
          pos = [oi * s + ti * d - lo for oi, ti, s, d, (lo, _) in zip(o, t, stride, dilation, pads)]
          if all(0 <= q < n for q, n in zip(pos, spatial)) and x[(b, *pos, c)] > best:
            best, arg = x[(b, *pos, c)], int(np.ravel_multi_index(pos, spatial))
        vals[(b, *o, c)], idx[(b, *o, c)] = best, arg
  return vals, idx


def adaptive_pool_loop(x, output_size, kind):
  """Adaptive pooling over PyTorch's bins ``[floor(i*n/o), ceil((i+1)*n/o))``, one loop per bin.

  Example:
    >>> import numpy as np
    >>> from jaxconv.reference import adaptive_pool_loop
    >>> adaptive_pool_loop(np.arange(5.0).reshape(1, 5, 1), (3,), "avg")[0, :, 0]
    array([0.5, 2. , 3.5])
  """
  x = np.asarray(x, np.float64)
  spatial = x.shape[1:-1]
  y = np.zeros((x.shape[0], *output_size, x.shape[-1]))
  for o in itertools.product(*[range(v) for v in output_size]):
    sl = tuple(
        slice(math.floor(i * n / m), math.ceil((i + 1) * n / m)) for i, n, m in zip(o, spatial, output_size)
    )
    box = x[(slice(None), *sl, slice(None))]
    axes = tuple(range(1, x.ndim - 1))
    y[(slice(None), *o, slice(None))] = box.max(axis=axes) if kind == "max" else box.mean(axis=axes)
  return y
