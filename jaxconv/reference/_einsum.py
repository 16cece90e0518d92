"""Convolution as im2col + einsum, in JAX: a second, independent formulation.

The input is padded with :func:`jax.numpy.pad` (the border mode), each kernel tap becomes one
strided slice of the padded input (taken one spatial dimension at a time), the slices are
stacked into ``prod(k)``-tap patches, and a single grouped :func:`jax.numpy.einsum` contracts
taps and channels. No ``lax`` convolution and no code from :mod:`jaxconv.ops` is involved (the padding strings are resolved by this package's
own :func:`jaxconv.reference._loops.resolve_padding`).

Cost, with ``T = prod(k)`` taps, ``P = N * prod(out)`` output positions and ``C_g = C_in / G``:

* FLOPs: ``2 * P * T * C_g * C_out`` (the same multiply-accumulates as a direct convolution);
* memory: the patch tensor holds ``P * T * C_in`` elements, ``T / prod(stride)`` times the
  input (9x for a 3x3 stride-1 kernel), plus the padded input. Fine for benchmarks of
  moderate size; this is the price of turning a convolution into one matrix product.
"""

from __future__ import annotations

from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from jaxconv.reference._loops import resolve_padding

_JNP_MODES = {"zeros": "constant", "reflect": "reflect", "replicate": "edge", "circular": "wrap"}


def _per_dim(value: Any, nd: int) -> tuple[int, ...]:
  if isinstance(value, (int, np.integer)):
    return (int(value),) * nd
  return tuple(int(v) for v in value)


def conv_einsum(
    x: jax.typing.ArrayLike,
    kernel: jax.typing.ArrayLike,
    bias: Optional[jax.typing.ArrayLike] = None,
    *,
    stride: Any = 1,
    padding: Any = None,
    padding_mode: str = "zeros",
    dilation: Any = 1,
    groups: int = 1,
    flip: bool = False,
    anchor: Any = None,
    precision: Any = None,
) -> jax.Array:
  r"""N-D convolution by im2col patches and one grouped einsum (same options as ``conv_loops``).

  Shapes: ``x`` ``[N, *spatial, C_in]`` or ``[*spatial, C_in]``; ``kernel``
  ``[*k, C_in // groups, C_out]``; ``bias`` ``[C_out]``; result ``[N, *out, C_out]`` in ``x``'s
  dtype (low-precision inputs accumulate in float32).

  Formula: with ``xp`` the input padded by ``lo`` before (border mode ``padding_mode``) and
  ``w'`` the kernel (reversed along every spatial axis when ``flip``),

  .. math::
     \text{patches}[n, i, t, c] = xp[n, i s + j(t) d, c], \qquad
     y[n, i, g, o] = \sum_{t, c} \text{patches}[n, i, t, g, c] \; w'[t, c, g, o]

  With ``anchor=a``, ``lo = a d`` (``(k - 1 - a) d`` when ``flip``) and ``ceil(n / s)`` outputs.
  Static options, traced arrays: jit with the options bound (``functools.partial``);
  differentiable in ``x``, ``kernel`` and ``bias``.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxconv.reference import conv_einsum
    >>> x = jnp.array([1.0, 2.0, 3.0, 4.0]).reshape(4, 1)
    >>> w = jnp.array([1.0, 10.0, 100.0]).reshape(3, 1, 1)
    >>> conv_einsum(x, w)[:, 0]
    Array([321., 432.], dtype=float32)
    >>> conv_einsum(x, w, padding=1, padding_mode="circular")[:, 0]
    Array([214., 321., 432., 143.], dtype=float32)
  """
  x = jnp.asarray(x)
  kernel = jnp.asarray(kernel)
  nd = kernel.ndim - 2
  batched = x.ndim == nd + 2
  if not batched:
    x = x[None]
  in_shape = x.shape[1:-1]
  ksize = kernel.shape[:nd]
  c_in, c_out = x.shape[-1], kernel.shape[-1]
  if c_in % groups or c_out % groups or kernel.shape[-2] * groups != c_in:
    raise ValueError(f"channels do not fit groups={groups}: x {x.shape}, kernel {kernel.shape}")
  s = _per_dim(stride, nd)
  d = _per_dim(dilation, nd)
  if flip:
    kernel = kernel[(slice(None, None, -1),) * nd]
  if anchor is None:
    pads = resolve_padding(padding, in_shape, ksize, s, d)
    lo = [p[0] for p in pads]
    out = [
        (n + a + b - ((k - 1) * dd + 1)) // ss + 1 for n, (a, b), k, dd, ss in zip(in_shape, pads, ksize, d, s)
    ]
  else:
    if padding is not None:
      raise ValueError("give padding or anchor, not both")
    if isinstance(anchor, str):
      a = tuple((k - 1) // 2 for k in ksize)
    else:
      a = _per_dim(anchor, nd)
    if flip:  # x[i s - (j - a) d] == flipped kernel read at x[i s + (j' - (k - 1 - a)) d]
      a = tuple(k - 1 - ai for k, ai in zip(ksize, a))
    lo = [ai * dd for ai, dd in zip(a, d)]
    out = [-(-n // ss) for n, ss in zip(in_shape, s)]
  if any(o < 1 for o in out):
    raise ValueError(f"empty output shape {tuple(out)}")

  # Pad exactly what the last tap of the last output reads (a negative 'hi' means unread input).
  cg, og = c_in // groups, c_out // groups
  x = x.reshape(*x.shape[:-1], groups, cg)  # [N, *spatial, G, C_g]
  hi = [(o - 1) * ss + (k - 1) * dd - l - (n - 1) for o, ss, k, dd, l, n in zip(out, s, ksize, d, lo, in_shape)]
  widths = [(0, 0)] + [(max(l, 0), max(h, 0)) for l, h in zip(lo, hi)] + [(0, 0), (0, 0)]
  if padding_mode == "zeros":
    xp = jnp.pad(x, widths)
  else:
    xp = jnp.pad(x, widths, mode=_JNP_MODES[padding_mode])
  offset = [max(l, 0) - l for l in lo]

  # im2col one dimension at a time: sum(k) strided slices instead of prod(k) (the same patches,
  # several times cheaper to compile). Tap axes pile up between the group and channel axes:
  # [N, *out, G, k_1, ..., k_nd, C_g], so that taps and channels of a group are contiguous.
  patches = xp
  for dim, (off, k, dd, o, ss) in enumerate(zip(offset, ksize, d, out, s)):
    taps = []
    for j in range(k):
      idx = [slice(None)] * patches.ndim
      idx[1 + dim] = slice(off + j * dd, off + j * dd + (o - 1) * ss + 1, ss)
      taps.append(patches[tuple(idx)])
    patches = jnp.stack(taps, axis=-2)
  t = int(np.prod(ksize))
  patches = patches.reshape(*patches.shape[: nd + 1], groups, t * cg)  # [N, *out, G, T * C_g]
  w = kernel.reshape(t, cg, groups, og).transpose(2, 0, 1, 3).reshape(groups, t * cg, og)
  low = x.dtype in (jnp.bfloat16, jnp.float16)
  kw = dict(precision=precision, preferred_element_type=jnp.float32 if low else None)
  if groups == 1:  # one plain matrix product (XLA runs it about 2x faster than a batched dot)
    y = jnp.einsum("...k,ko->...o", patches[..., 0, :], w[0], **kw)[..., None, :]
  else:
    y = jnp.einsum("...gk,gko->...go", patches, w, **kw)
  y = y.reshape(*y.shape[:-2], c_out)
  if bias is not None:
    y = y + jnp.asarray(bias).astype(y.dtype).reshape((1,) * (nd + 1) + (c_out,))
  y = y.astype(x.dtype)
  return y if batched else y[0]
