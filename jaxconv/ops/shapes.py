"""Shape, parameter, multiply-accumulate and receptive-field arithmetic of convolutions.

Pure Python ints: usable without tracing, at configuration time, in summaries and tests.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Union

from jaxconv.ops import _args
from jaxconv.ops._args import PaddingLike

IntOrSeq = Union[int, Sequence[int]]


def _spatial_ndim(*values) -> int:
  for v in values:
    if isinstance(v, Sequence) and not isinstance(v, str):
      return len(v)
  return 1


def _as_tuple(value, nd, name, minimum=1):
  return _args.canonicalize_tuple(value, nd, name, minimum=minimum)


def conv_output_shape(
    in_shape: IntOrSeq,
    kernel_size: IntOrSeq,
    stride: IntOrSeq = 1,
    padding: PaddingLike = 0,
    dilation: IntOrSeq = 1,
    ceil_mode: bool = False,
) -> Union[int, tuple[int, ...]]:
  """Spatial output size of a convolution or pooling window.

  The textbook ``O = (W - F + 2P) / S + 1``, generalised: with dilated extent
  ``F' = (F - 1) * D + 1`` and padding ``(lo, hi)``,
  ``O = floor((W + lo + hi - F') / S) + 1`` (``ceil`` with ``ceil_mode``; as in PyTorch's pools,
  a last window that would start in the trailing padding is dropped).

  Args:
    in_shape: input size, an int or one per spatial dimension.
    kernel_size: window size, int or per dimension.
    stride: int or per dimension.
    padding: any padding form :func:`jaxconv.ops.conv` accepts (``"SAME"``, ``(lo, hi)`` pairs, ...).
    dilation: int or per dimension.
    ceil_mode: round up instead of down.

  Returns:
    An int if ``in_shape`` is an int, else a tuple.

  Example:
    >>> from jaxconv.ops.shapes import conv_output_shape
    >>> conv_output_shape(224, 7, stride=2, padding=3)
    112
    >>> conv_output_shape((32, 31), 3, stride=2, padding="SAME")
    (16, 16)
  """
  scalar = not isinstance(in_shape, Sequence)
  nd = _spatial_ndim(in_shape, kernel_size, stride, dilation)
  ins = _as_tuple(in_shape, nd, "in_shape")
  k = _as_tuple(kernel_size, nd, "kernel_size")
  s = _as_tuple(stride, nd, "stride")
  d = _as_tuple(dilation, nd, "dilation")
  window = _args.effective_kernel_size(k, d)
  pads = _args.canonicalize_padding(padding, ins, window, s)
  out = []
  for n, w, st, (lo, hi) in zip(ins, window, s, pads):
    o = _args.out_size(n, w, st, lo, hi, ceil_mode)
    if ceil_mode and (o - 1) * st >= n + lo:
      o -= 1
    if o < 1:
      raise ValueError(
          f"window of extent {w} does not fit input {n} with padding ({lo}, {hi}): output size {o}."
      )
    out.append(o)
  return out[0] if scalar else tuple(out)


def conv_transpose_output_shape(
    in_shape: IntOrSeq,
    kernel_size: IntOrSeq,
    stride: IntOrSeq = 1,
    padding: IntOrSeq = 0,
    output_padding: IntOrSeq = 0,
    dilation: IntOrSeq = 1,
) -> Union[int, tuple[int, ...]]:
  """Output size of a transposed convolution (PyTorch's formula).

  ``O = (W - 1) * S - 2P + D * (F - 1) + output_padding + 1``.

  Example:
    >>> from jaxconv.ops.shapes import conv_transpose_output_shape
    >>> conv_transpose_output_shape(16, 4, stride=2, padding=1)
    32
  """
  scalar = not isinstance(in_shape, Sequence)
  nd = _spatial_ndim(in_shape, kernel_size, stride, padding, output_padding, dilation)
  ins = _as_tuple(in_shape, nd, "in_shape")
  k = _as_tuple(kernel_size, nd, "kernel_size")
  s = _as_tuple(stride, nd, "stride")
  p = _as_tuple(padding, nd, "padding", minimum=0)
  op = _as_tuple(output_padding, nd, "output_padding", minimum=0)
  d = _as_tuple(dilation, nd, "dilation")
  out = tuple((n - 1) * st - 2 * pp + dd * (kk - 1) + o + 1 for n, kk, st, pp, o, dd in zip(ins, k, s, p, op, d))
  return out[0] if scalar else out


def conv_params(kernel_size: IntOrSeq, in_channels: int, out_channels: int, groups: int = 1, bias: bool = True) -> int:
  """Number of parameters of a convolution: ``prod(k) * C_in * C_out / groups (+ C_out)``.

  Example:
    >>> from jaxconv.ops.shapes import conv_params
    >>> conv_params((3, 3), 64, 128)
    73856
    >>> conv_params(3, 32, 32, groups=32, bias=False)   # depthwise 3-tap, 1-D
    96
  """
  k = kernel_size if isinstance(kernel_size, Sequence) else (kernel_size,)
  if in_channels % groups or out_channels % groups:
    raise ValueError(
        f"in_channels ({in_channels}) and out_channels ({out_channels}) must be divisible by "
        f"groups ({groups})."
    )
  return math.prod(k) * in_channels * out_channels // groups + (out_channels if bias else 0)


def conv_macs(
    out_shape: IntOrSeq, kernel_size: IntOrSeq, in_channels: int, out_channels: int, groups: int = 1
) -> int:
  """Multiply-accumulates of a convolution: ``prod(out) * C_out * prod(k) * C_in / groups``.

  Per example; multiply by the batch size for a batch. Bias additions are not counted, as in
  torchvision's published GFLOPS.

  Example:
    >>> from jaxconv.ops.shapes import conv_macs
    >>> conv_macs((112, 112), (7, 7), 3, 64)   # ResNet stem
    118013952
  """
  o = out_shape if isinstance(out_shape, Sequence) else (out_shape,)
  k = kernel_size if isinstance(kernel_size, Sequence) else (kernel_size,)
  return math.prod(o) * out_channels * math.prod(k) * in_channels // groups


@dataclasses.dataclass(frozen=True)
class ReceptiveField:
  """Receptive field of one unit of a feature map, per spatial dimension, in input pixels.

  Attributes:
    size: number of input pixels one output unit sees.
    jump: distance in input pixels between neighbouring output units (product of strides).
    start: input coordinate of the first (leftmost) pixel seen by output unit 0; negative values
      lie in the padding.
  """

  size: tuple[int, ...]
  jump: tuple[int, ...]
  start: tuple[int, ...]

  @property
  def center(self) -> tuple[float, ...]:
    """Input coordinate of the centre of output unit 0's receptive field."""
    return tuple(s + (z - 1) / 2 for s, z in zip(self.start, self.size))

  @classmethod
  def identity(cls, ndim: int) -> "ReceptiveField":
    """The receptive field of the input itself: one pixel, jump 1, start 0."""
    return cls((1,) * ndim, (1,) * ndim, (0,) * ndim)

  def then(self, kernel_size: IntOrSeq, stride: IntOrSeq = 1, padding: IntOrSeq = 0, dilation: IntOrSeq = 1) -> "ReceptiveField":
    """Composes with a further sliding-window layer (padding is its ``lo`` side per dimension).

    ``size' = size + ((k - 1) * d) * jump``, ``jump' = jump * s``, ``start' = start - p_lo * jump``.
    """
    nd = len(self.size)
    k = _as_tuple(kernel_size, nd, "kernel_size")
    s = _as_tuple(stride, nd, "stride")
    d = _as_tuple(dilation, nd, "dilation")
    if isinstance(padding, Sequence) and padding and isinstance(padding[0], Sequence):
      p = tuple(lo for lo, _ in padding)
    else:
      p = _as_tuple(padding, nd, "padding", minimum=-(10**9))
    return ReceptiveField(
        size=tuple(z + (kk - 1) * dd * j for z, kk, dd, j in zip(self.size, k, d, self.jump)),
        jump=tuple(j * st for j, st in zip(self.jump, s)),
        start=tuple(st0 - pp * j for st0, pp, j in zip(self.start, p, self.jump)),
    )

  def union(self, other: "ReceptiveField") -> "ReceptiveField":
    """Receptive field of a unit that sees both branches (residual add, concatenation).

    Both branches must have the same jump (they produce aligned feature maps); the result covers
    the union of the two intervals.
    """
    if self.jump != other.jump:
      raise ValueError(f"cannot merge receptive fields with different jumps {self.jump} and {other.jump}.")
    start = tuple(min(a, b) for a, b in zip(self.start, other.start))
    end = tuple(max(a + za, b + zb) for a, za, b, zb in zip(self.start, self.size, other.start, other.size))
    return ReceptiveField(tuple(e - s for s, e in zip(start, end)), self.jump, start)


def receptive_field(layers: Sequence[dict], ndim: int = 2) -> list[ReceptiveField]:
  """Receptive field after each layer of a chain of sliding-window layers.

  Each layer is a dict with ``kernel_size`` and optional ``stride``, ``padding`` (the ``lo`` side,
  int or per dimension) and ``dilation``.

  Returns:
    One :class:`ReceptiveField` per layer (of that layer's output, with respect to the input).

  Example:
    >>> from jaxconv.ops.shapes import receptive_field
    >>> rf = receptive_field([dict(kernel_size=3, padding=1)] * 2 + [dict(kernel_size=2, stride=2)])
    >>> rf[-1].size, rf[-1].jump, rf[-1].start
    ((6, 6), (2, 2), (-2, -2))
  """
  rf = ReceptiveField.identity(ndim)
  out = []
  for i, layer in enumerate(layers):
    if "kernel_size" not in layer:
      raise ValueError(f"layer {i} must give kernel_size; got {layer!r}.")
    rf = rf.then(
        layer["kernel_size"],
        layer.get("stride", 1),
        layer.get("padding", 0),
        layer.get("dilation", 1),
    )
    out.append(rf)
  return out
