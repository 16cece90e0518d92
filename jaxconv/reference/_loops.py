"""Convolution and transposed convolution as plain NumPy loops, straight from the formulas.

Slow and obviously right: every output element is a sum over kernel taps, and every tap reads
the input at an explicitly computed index. Border modes are index maps (zeros: out of range
reads 0; reflect: mirror without repeating the edge; replicate: clamp; circular: modulo).
Only for tiny shapes in tests. Shares no code with :mod:`jaxconv.ops` on purpose: even the
padding strings are resolved here again.
"""

from __future__ import annotations

import itertools
import math
from typing import Any, Optional, Sequence

import numpy as np


def _per_dim(value: Any, nd: int, name: str) -> tuple[int, ...]:
  """An int or a sequence of ``nd`` ints as a tuple of ``nd`` ints."""
  if isinstance(value, (int, np.integer)):
    return (int(value),) * nd
  value = tuple(int(v) for v in value)
  if len(value) != nd:
    raise ValueError(f"{name}: expected {nd} values, got {value}")
  return value


def resolve_padding(
    padding: Any, in_shape: Sequence[int], ksize: Sequence[int], stride: Sequence[int],
    dilation: Sequence[int]
) -> tuple[tuple[int, int], ...]:
  """``(lo, hi)`` per spatial dimension for every padding form ``conv`` accepts.

  ``w = (k - 1) * d + 1`` is the dilated extent. VALID: none. SAME (TensorFlow): the output has
  ``ceil(n / s)`` elements and the total padding ``max((out - 1) * s + w - n, 0)`` is split with
  the extra element at the end. FULL: ``w - 1`` on both sides. CAUSAL: ``w - 1`` before only.
  """
  nd = len(in_shape)
  ext = [(k - 1) * d + 1 for k, d in zip(ksize, dilation)]
  if padding is None:
    padding = "VALID"
  if isinstance(padding, str):
    p = padding.upper()
    if p == "VALID":
      return ((0, 0),) * nd
    if p == "FULL":
      return tuple((w - 1, w - 1) for w in ext)
    if p == "CAUSAL":
      return tuple((w - 1, 0) for w in ext)
    if p == "SAME":
      pads = []
      for n, w, s in zip(in_shape, ext, stride):
        total = max((math.ceil(n / s) - 1) * s + w - n, 0)
        pads.append((total // 2, total - total // 2))
      return tuple(pads)
    raise ValueError(f"unknown padding {padding!r}")
  if isinstance(padding, (int, np.integer)):
    return ((int(padding), int(padding)),) * nd
  padding = list(padding)
  if len(padding) != nd:
    raise ValueError(f"padding: expected {nd} entries, got {padding}")
  if all(isinstance(p, (int, np.integer)) for p in padding):
    return tuple((int(p), int(p)) for p in padding)
  return tuple((int(lo), int(hi)) for lo, hi in padding)


def read_index(p: int, n: int, mode: str) -> Optional[int]:
  """The input index that position ``p`` of an (infinitely) padded axis of size ``n`` reads.

  Returns ``None`` for a zero (``mode="zeros"`` outside ``[0, n)``).
  """
  if 0 <= p < n:
    return p
  if mode == "zeros":
    return None
  if mode == "replicate":
    return min(max(p, 0), n - 1)
  if mode == "circular":
    return p % n
  if mode == "reflect":  # ... x2 x1 | x0 x1 x2 ... x_{n-1} | x_{n-2} ...  period 2(n - 1)
    if n == 1:
      return 0
    p %= 2 * (n - 1)
    return p if p < n else 2 * (n - 1) - p
  raise ValueError(f"unknown padding_mode {mode!r}")


def conv_loops(
    x: Any,
    kernel: Any,
    bias: Any = None,
    *,
    stride: Any = 1,
    padding: Any = None,
    padding_mode: str = "zeros",
    dilation: Any = 1,
    groups: int = 1,
    flip: bool = False,
    anchor: Any = None,
) -> np.ndarray:
  r"""N-D convolution (1-D, 2-D, 3-D), channels-last, in NumPy loops (float64 arithmetic).

  Shapes: ``x`` ``[N, *spatial, C_in]`` or ``[*spatial, C_in]``; ``kernel``
  ``[*k, C_in // groups, C_out]``; ``bias`` ``[C_out]``; result ``[N, *out, C_out]`` (unbatched if
  ``x`` was), in ``x``'s dtype.

  With ``C_g = C_in / groups``, ``O_g = C_out / groups`` and ``g = o // O_g``, every output is

  .. math::
     y[n, i, o] = b[o] + \sum_{j} \sum_{c < C_g} w[j, c, o] \; x_{ext}[n, p(i, j), g C_g + c]

  where, per spatial dimension (``s`` stride, ``d`` dilation, ``k`` kernel size):

  * padding ``(lo, hi)``, cross-correlation: ``p = i s + j d - lo``;
  * padding ``(lo, hi)``, true convolution (``flip``): ``p = i s + (k - 1 - j) d - lo``
    (the flipped kernel slides as above); ``floor((n + lo + hi - ((k - 1) d + 1)) / s) + 1``
    outputs;
  * anchor ``a``, cross-correlation: ``p = i s + (j - a) d``;
  * anchor ``a``, true convolution: ``p = i s - (j - a) d``; ``ceil(n / s)`` outputs;

  and ``x_ext`` reads index ``p`` through the border mode (see :func:`read_index`).

  Example:
    >>> import numpy as np
    >>> from jaxconv.reference import conv_loops
    >>> x = np.array([1.0, 2.0, 3.0, 4.0]).reshape(4, 1)
    >>> w = np.array([1.0, 10.0, 100.0]).reshape(3, 1, 1)
    >>> conv_loops(x, w)[:, 0]
    array([321., 432.])
    >>> conv_loops(x, w, flip=True)[:, 0]
    array([123., 234.])
    >>> conv_loops(x, w, anchor=1, padding_mode="replicate")[:, 0]
    array([211., 321., 432., 443.])
  """
  x = np.asarray(x)
  kernel = np.asarray(kernel)
  out_dtype = x.dtype
  nd = kernel.ndim - 2
  batched = x.ndim == nd + 2
  xb = (x if batched else x[None]).astype(np.float64)
  w = kernel.astype(np.float64)
  in_shape = xb.shape[1:-1]
  ksize = w.shape[:nd]
  c_in, c_out = xb.shape[-1], w.shape[-1]
  cg, og = c_in // groups, c_out // groups
  if c_in % groups or c_out % groups or cg != w.shape[-2]:
    raise ValueError(f"channels do not fit groups={groups}: x {x.shape}, kernel {kernel.shape}")
  s = _per_dim(stride, nd, "stride")
  d = _per_dim(dilation, nd, "dilation")

  if anchor is None:
    pads = resolve_padding(padding, in_shape, ksize, s, d)
    out_shape = tuple(
        (n + lo + hi - ((k - 1) * dd + 1)) // ss + 1
        for n, (lo, hi), k, dd, ss in zip(in_shape, pads, ksize, d, s)
    )

    def position(dim, i, j):
      lo = pads[dim][0]
      jj = ksize[dim] - 1 - j if flip else j
      return i * s[dim] + jj * d[dim] - lo
  else:
    if padding is not None:
      raise ValueError("give padding or anchor, not both")
    if isinstance(anchor, str):
      if anchor != "center":
        raise ValueError(f"unknown anchor {anchor!r}")
      a = tuple((k - 1) // 2 for k in ksize)
    else:
      a = _per_dim(anchor, nd, "anchor")
    out_shape = tuple(-(-n // ss) for n, ss in zip(in_shape, s))

    def position(dim, i, j):
      sign = -1 if flip else 1
      return i * s[dim] + sign * (j - a[dim]) * d[dim]

  if any(o < 1 for o in out_shape):
    raise ValueError(f"empty output shape {out_shape}")
  y = np.zeros((xb.shape[0], *out_shape, c_out))
  for i in itertools.product(*(range(o) for o in out_shape)):
    for j in itertools.product(*(range(k) for k in ksize)):
      src = tuple(read_index(position(dim, i[dim], j[dim]), in_shape[dim], padding_mode) for dim in range(nd))
      if any(p is None for p in src):
        continue  # a zero from the padding
      for o in range(c_out):
        g = o // og
        for c in range(cg):
          y[(slice(None), *i, o)] += w[(*j, c, o)] * xb[(slice(None), *src, g * cg + c)]
  if bias is not None:
    y += np.asarray(bias, np.float64).reshape((1,) * (nd + 1) + (c_out,))
  y = y.astype(out_dtype)
  return y if batched else y[0]


def conv_transpose_loops(
    x: Any,
    kernel: Any,
    bias: Any = None,
    *,
    stride: Any = 1,
    padding: Any = 0,
    output_padding: Any = 0,
    dilation: Any = 1,
    groups: int = 1,
) -> np.ndarray:
  r"""Transposed convolution in scatter form: each input element adds ``value * kernel``.

  Shapes: ``x`` ``[N, *spatial, C_out]`` (the forward convolution's output space) or unbatched;
  ``kernel`` ``[*k, C_in // groups, C_out]`` (the forward convolution's kernel); ``bias``
  ``[C_in]``; result ``[N, *out, C_in]`` with
  ``out = (n - 1) s - lo - hi + (k - 1) d + 1 + output_padding`` per dimension (``"SAME"``:
  ``out = n s`` and the forward SAME padding of that size).

  For every input position ``i``, channel ``o`` (group ``g = o // O_g``), tap ``j`` and ``c``:

  .. math::
     y[n, i s + j d - lo, g C_g + c] \mathrel{+}= w[j, c, o] \; x[n, i, o]

  dropping positions outside ``[0, out)``: the adjoint of the forward
  ``y[i] = sum_j w[j] x[i s + j d - lo]``.

  Example:
    >>> import numpy as np
    >>> from jaxconv.reference import conv_transpose_loops
    >>> v = np.array([1.0, 2.0]).reshape(2, 1)
    >>> w = np.array([1.0, 10.0, 100.0]).reshape(3, 1, 1)
    >>> conv_transpose_loops(v, w, stride=2)[:, 0]
    array([  1.,  10., 102.,  20., 200.])
  """
  x = np.asarray(x)
  kernel = np.asarray(kernel)
  out_dtype = x.dtype
  nd = kernel.ndim - 2
  batched = x.ndim == nd + 2
  xb = (x if batched else x[None]).astype(np.float64)
  w = kernel.astype(np.float64)
  in_shape = xb.shape[1:-1]
  ksize = w.shape[:nd]
  cg, c_out = w.shape[-2], w.shape[-1]
  og = c_out // groups
  if xb.shape[-1] != c_out or c_out % groups:
    raise ValueError(f"channels do not fit: x {x.shape}, kernel {kernel.shape}, groups={groups}")
  s = _per_dim(stride, nd, "stride")
  d = _per_dim(dilation, nd, "dilation")
  op = _per_dim(output_padding, nd, "output_padding")
  ext = [(k - 1) * dd + 1 for k, dd in zip(ksize, d)]
  if isinstance(padding, str) and padding.upper() == "SAME":
    out_shape = tuple(n * ss for n, ss in zip(in_shape, s))
    pads = tuple((max(e - ss, 0) // 2, None) for e, ss in zip(ext, s))
  else:
    pads = resolve_padding(padding, in_shape, ksize, s, d)
    out_shape = tuple(
        (n - 1) * ss - lo - hi + e + o for n, ss, (lo, hi), e, o in zip(in_shape, s, pads, ext, op)
    )
  y = np.zeros((xb.shape[0], *out_shape, cg * groups))
  for i in itertools.product(*(range(n) for n in in_shape)):
    for j in itertools.product(*(range(k) for k in ksize)):
      dst = tuple(i[t] * s[t] + j[t] * d[t] - pads[t][0] for t in range(nd))
      if not all(0 <= p < o for p, o in zip(dst, out_shape)):
        continue
      for o in range(c_out):
        g = o // og
        for c in range(cg):
          y[(slice(None), *dst, g * cg + c)] += w[(*j, c, o)] * xb[(slice(None), *i, o)]
  if bias is not None:
    y += np.asarray(bias, np.float64).reshape((1,) * (nd + 1) + (cg * groups,))
  y = y.astype(out_dtype)
  return y if batched else y[0]
