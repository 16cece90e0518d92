"""N-dimensional convolution, its transpose, depthwise and separable convolution.

Everything is channels-last: inputs ``[N, *spatial, C]``, kernels ``[*k, C_in // groups, C_out]``
(HWIO for 2-D). All argument checking happens here in Python, before tracing reaches XLA.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional, Union

import jax
import jax.numpy as jnp
from jax import lax

from jaxconv.ops import _args, _conv_grad
from jaxconv.ops._args import PaddingLike

Array = jax.Array
AnchorLike = Union[int, str, Sequence[int]]

dimension_numbers = _conv_grad.dimension_numbers


def _prepare(x: Any, kernel: Any, bias: Any, name_x: str = "x"):
  """Checks ranks and dtypes; returns batched x, kernel, bias, spatial ndim, and whether batched."""
  x = _args.check_array(x, name_x)
  kernel = _args.check_array(kernel, "kernel")
  if kernel.ndim not in (3, 4, 5):
    raise ValueError(
        f"kernel must have shape [*kernel_size, C_in // groups, C_out] with 1, 2 or 3 spatial "
        f"dimensions (rank 3, 4 or 5); got shape {kernel.shape}."
    )
  nd = kernel.ndim - 2
  if x.ndim == nd + 1:
    batched = False
    x = x[None]
  elif x.ndim == nd + 2:
    batched = True
  else:
    raise ValueError(
        f"{name_x} must have rank {nd + 2} ([N, *spatial, C]) or {nd + 1} ([*spatial, C]) to match "
        f"a kernel with {nd} spatial dimensions (shape {kernel.shape}); got shape {x.shape}."
    )
  if bias is not None:
    bias = _args.check_array(bias, "bias")
    if bias.shape != (kernel.shape[-1],):
      raise ValueError(
          f"bias must have shape [C_out] = ({kernel.shape[-1]},) to match kernel {kernel.shape}; "
          f"got {bias.shape}."
      )
  _args.check_same_dtype(**{name_x: x, "kernel": kernel, "bias": bias})
  return x, kernel, bias, nd, batched


def _check_groups(groups: Any, c_in: int, kernel_shape: tuple[int, ...], name_x: str = "x") -> int:
  if not _args._is_int(groups) or groups < 1:
    raise ValueError(f"groups must be a positive int; got {groups!r}.")
  groups = int(groups)
  if c_in % groups:
    raise ValueError(
        f"the channels of {name_x} ({c_in}) must be divisible by groups ({groups}); accepted "
        f"groups are the divisors of {c_in}."
    )
  if kernel_shape[-2] * groups != c_in:
    raise ValueError(
        f"kernel's input-channel axis must be C_in // groups = {c_in} // {groups} = {c_in // groups}; "
        f"got kernel shape {kernel_shape}."
    )
  if kernel_shape[-1] % groups:
    raise ValueError(
        f"kernel's output channels ({kernel_shape[-1]}) must be divisible by groups ({groups})."
    )
  return groups


def _resolve_anchor(anchor: AnchorLike, kernel_size: tuple[int, ...]) -> tuple[int, ...]:
  nd = len(kernel_size)
  if isinstance(anchor, str):
    if anchor.lower() != "center":
      raise ValueError(f"anchor must be 'center', an int, or a sequence of {nd} ints; got {anchor!r}.")
    return tuple((k - 1) // 2 for k in kernel_size)
  a = _args.canonicalize_tuple(anchor, nd, "anchor", minimum=0)
  for d, (ai, k) in enumerate(zip(a, kernel_size)):
    if ai >= k:
      raise ValueError(
          f"anchor {anchor!r} lies outside the kernel in spatial dimension {d}: it must be in "
          f"[0, {k - 1}] for a kernel of size {k}."
      )
  return a


def anchor_padding(
    in_shape: Sequence[int],
    kernel_size: Sequence[int],
    anchor: Sequence[int],
    stride: Sequence[int],
    dilation: Sequence[int],
) -> tuple[tuple[int, int], ...]:
  """Padding that puts kernel element ``anchor`` on input position ``i * stride``.

  Output ``i`` then reads ``x[i * stride + (j - anchor) * dilation]`` for kernel tap ``j``, for all
  ``ceil(in / stride)`` positions ``i``. ``hi`` may be negative (the input is cropped).
  """
  pads = []
  for n, k, a, s, d in zip(in_shape, kernel_size, anchor, stride, dilation):
    last = (-(-n // s) - 1) * s  # anchor position of the last output
    pads.append((a * d, last + (k - 1 - a) * d - (n - 1)))
  return tuple(pads)


def _lax_conv(x, kernel, stride, pads, dilation, groups, precision, preferred_element_type):
  """The one call into XLA: routed through the per-pass formulations of ``_conv_grad``."""
  return _conv_grad.conv_general(x, kernel, stride, pads, dilation, groups, precision, preferred_element_type)


def conv(
    x: jax.typing.ArrayLike,
    kernel: jax.typing.ArrayLike,
    bias: Optional[jax.typing.ArrayLike] = None,
    *,
    stride: Union[int, Sequence[int]] = 1,
    padding: Optional[PaddingLike] = None,
    padding_mode: str = "zeros",
    dilation: Union[int, Sequence[int]] = 1,
    groups: int = 1,
    flip: bool = False,
    anchor: Optional[AnchorLike] = None,
    precision: Any = None,
    preferred_element_type: Any = None,
) -> Array:
  r"""1-D, 2-D or 3-D convolution, channels-last, with every option a CNN course teaches.

  Shapes:
    * ``x``: ``[N, *spatial, C_in]`` or unbatched ``[*spatial, C_in]``.
    * ``kernel``: ``[*k, C_in // groups, C_out]`` (``HWIO`` in 2-D).
    * ``bias``: ``[C_out]`` or ``None``.
    * result: ``[N, *out_spatial, C_out]`` (unbatched if ``x`` was), with
      ``out = floor((in + lo + hi - ((k - 1) * dilation + 1)) / stride) + 1`` per dimension.

  Formula (cross-correlation, ``flip=False``, what every framework calls convolution), with
  ``xp`` the input padded by ``lo`` before and ``hi`` after according to ``padding_mode``:

  .. math::
     y[n, i, o] = b[o] + \sum_{j, c} w[j, c, o] \; xp[n, i \cdot s + j \cdot d, g(o) \cdot C_g + c]

  where ``g(o)`` is the group of output channel ``o`` and ``C_g = C_in / groups``. With
  ``flip=True`` the kernel is reversed along every spatial axis first: true convolution,
  ``y[i] = sum_j w[j] x[i - j]`` as the mathematical definition writes it.

  With ``anchor=a`` instead of ``padding``, kernel element ``a`` (the "center element") sits on
  input position ``i * stride``: ``y[i] = sum_j w[j] x[i*s + (j - a)*d]`` (cross-correlation) or
  ``sum_j w[j] x[i*s - (j - a)*d]`` (true convolution), for the ``ceil(in / stride)`` positions
  ``i`` whose anchor lies inside the input; out-of-range ``x`` comes from ``padding_mode``. For
  stride 1 and odd kernels, ``anchor="center"`` equals ``padding="SAME"``.

  Args:
    x: input array.
    kernel: filters.
    bias: optional per-output-channel bias.
    stride: int or one int per spatial dimension (>= 1).
    padding: ``"VALID"`` (default), ``"SAME"`` (``ceil(in / stride)`` outputs, TensorFlow/Flax
      split with the extra at the end), ``"FULL"`` (``(k - 1) * d`` on both sides), ``"CAUSAL"``
      (``(k - 1) * d`` before only), an int, an int per dimension, or ``(lo, hi)`` per dimension.
    padding_mode: ``"zeros"``, ``"reflect"`` (mirror, edge not repeated), ``"replicate"``
      (edge value) or ``"circular"`` (wrap around), as PyTorch defines them.
    dilation: kernel dilation, int or per dimension (>= 1).
    groups: number of channel groups; ``groups == C_in`` is a depthwise convolution.
    flip: ``False`` for cross-correlation, ``True`` for true convolution.
    anchor: kernel origin per dimension (int, ints, or ``"center"`` for ``(k - 1) // 2``); an
      alternative to ``padding`` (give one or the other).
    precision: passed to :func:`jax.lax.conv_general_dilated`.
    preferred_element_type: accumulation/output dtype, passed through.

  Returns:
    The convolved array.

  Raises:
    ValueError, TypeError: for bad shapes, options or dtypes, naming the argument.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxconv.ops import conv
    >>> x = jnp.arange(5.0).reshape(1, 5, 1)          # [N, W, C]
    >>> w = jnp.array([1.0, 0.0, -1.0]).reshape(3, 1, 1)
    >>> conv(x, w)[0, :, 0]                            # cross-correlation: x[i] - x[i+2]
    Array([-2., -2., -2.], dtype=float32)
    >>> conv(x, w, flip=True)[0, :, 0]                 # true convolution: x[i+2] - x[i]
    Array([2., 2., 2.], dtype=float32)
    >>> conv(x, w, padding="SAME", padding_mode="replicate")[0, :, 0]
    Array([-1., -2., -2., -2., -1.], dtype=float32)
  """
  x, kernel, bias, nd, batched = _prepare(x, kernel, bias)
  stride = _args.canonicalize_tuple(stride, nd, "stride")
  dilation = _args.canonicalize_tuple(dilation, nd, "dilation")
  mode = _args.canonicalize_padding_mode(padding_mode)
  groups = _check_groups(groups, x.shape[-1], kernel.shape)
  if not isinstance(flip, (bool, jnp.bool_)):
    raise TypeError(f"flip must be a bool; got {flip!r}.")
  in_shape = x.shape[1:-1]
  ksize = kernel.shape[:-2]
  window = _args.effective_kernel_size(ksize, dilation)

  if anchor is not None:
    if padding is not None:
      raise ValueError(
          f"give either padding or anchor, not both; got padding={padding!r} and anchor={anchor!r}."
      )
    a = _resolve_anchor(anchor, ksize)
    if flip:  # true convolution with anchor a == correlation with the reversed kernel, anchor k-1-a
      a = tuple(k - 1 - ai for k, ai in zip(ksize, a))
    pads = anchor_padding(in_shape, ksize, a, stride, dilation)
  else:
    pads = _args.canonicalize_padding("VALID" if padding is None else padding, in_shape, window, stride)
  _args.check_mode_padding(mode, [(max(lo, 0), max(hi, 0)) for lo, hi in pads], in_shape)
  for d, ((lo, hi), n, w) in enumerate(zip(pads, in_shape, window)):
    if n + lo + hi < w:
      raise ValueError(
          f"the kernel (extent {w} with dilation {dilation[d]}) is larger than the padded input in "
          f"spatial dimension {d}: input {n} + padding ({lo}, {hi}) = {n + lo + hi}. Use a smaller "
          f"kernel or dilation, more padding, or a larger input."
      )

  if flip:
    kernel = jnp.flip(kernel, axis=tuple(range(nd)))
  if mode != "zeros" or any(lo < 0 or hi < 0 for lo, hi in pads):
    x = _args.pad_with_mode(x, pads, mode)
    pads = ((0, 0),) * nd
  y = _lax_conv(x, kernel, stride, pads, dilation, groups, precision, preferred_element_type)
  if bias is not None:
    y = y + bias.astype(y.dtype).reshape((1,) * (y.ndim - 1) + (-1,))
  return y if batched else y[0]


def conv_transpose(
    x: jax.typing.ArrayLike,
    kernel: jax.typing.ArrayLike,
    bias: Optional[jax.typing.ArrayLike] = None,
    *,
    stride: Union[int, Sequence[int]] = 1,
    padding: PaddingLike = 0,
    output_padding: Union[int, Sequence[int]] = 0,
    dilation: Union[int, Sequence[int]] = 1,
    groups: int = 1,
    precision: Any = None,
    preferred_element_type: Any = None,
) -> Array:
  r"""Transposed convolution: the adjoint of :func:`conv` with the same kernel.

  ``conv`` with ``kernel [*k, C_in // groups, C_out]`` maps ``C_in`` channels to ``C_out``;
  ``conv_transpose`` with the same kernel maps ``C_out`` back to ``C_in``, and for all ``u, v``
  ``<conv(u, w), v> == <u, conv_transpose(v, w)>`` (same stride, padding, dilation, groups, and
  the matching ``output_padding``). It equals PyTorch's ``conv_transpose{1,2,3}d`` with the
  kernel permuted to PyTorch's layout ``[C_out, C_in // groups, *k]``.

  Shapes:
    * ``x``: ``[N, *spatial, C_out]`` or unbatched ``[*spatial, C_out]``.
    * ``kernel``: ``[*k, C_in // groups, C_out]`` (the forward convolution's kernel).
    * result: ``[N, *out, C_in]`` with
      ``out = (in - 1) * stride - lo - hi + (k - 1) * dilation + 1 + output_padding``.

  Args:
    x: input array (the forward convolution's output space).
    kernel: the forward convolution's kernel.
    bias: optional bias of shape ``[C_in]`` (the result's channels).
    stride: the forward convolution's stride.
    padding: the forward convolution's padding: an int, ints per dimension, ``(lo, hi)`` pairs,
      ``"VALID"``, or ``"SAME"`` (result size ``in * stride``, the adjoint of a ``SAME``
      convolution of that size; ``output_padding`` must then be 0).
    output_padding: extra size added at the end of each dimension (``< stride`` or
      ``< dilation``), choosing among the input sizes a strided convolution maps to ``in``.
    dilation: the forward convolution's dilation.
    groups: the forward convolution's groups.
    precision: passed to :func:`jax.lax.conv_general_dilated`.
    preferred_element_type: passed through.

  Returns:
    The transposed convolution.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxconv.ops import conv_transpose
    >>> y = jnp.ones((1, 3, 1))
    >>> w = jnp.ones((2, 1, 1))
    >>> conv_transpose(y, w, stride=2)[0, :, 0]    # (3 - 1) * 2 + 2 = 6 outputs
    Array([1., 1., 1., 1., 1., 1.], dtype=float32)
  """
  x, kernel, _, nd, batched = _prepare(x, kernel, None)
  if bias is not None:
    bias = _args.check_array(bias, "bias")
    c_res = kernel.shape[-2] * (groups if _args._is_int(groups) else 1)
    if bias.shape != (c_res,):
      raise ValueError(f"bias must have shape [C_in] = ({c_res},) for conv_transpose; got {bias.shape}.")
    _args.check_same_dtype(x=x, bias=bias)
  stride = _args.canonicalize_tuple(stride, nd, "stride")
  dilation = _args.canonicalize_tuple(dilation, nd, "dilation")
  output_padding = _args.canonicalize_tuple(output_padding, nd, "output_padding", minimum=0)
  if not _args._is_int(groups) or groups < 1:
    raise ValueError(f"groups must be a positive int; got {groups!r}.")
  groups = int(groups)
  c_out = kernel.shape[-1]
  if x.shape[-1] != c_out:
    raise ValueError(
        f"x must have C_out = {c_out} channels (the kernel's last axis) for conv_transpose; got "
        f"shape {x.shape}."
    )
  if c_out % groups:
    raise ValueError(f"kernel's output channels ({c_out}) must be divisible by groups ({groups}).")
  in_shape = x.shape[1:-1]
  ksize = kernel.shape[:-2]
  window = _args.effective_kernel_size(ksize, dilation)
  if isinstance(padding, str) and padding.upper() == "SAME":
    if any(output_padding):
      raise ValueError(f"output_padding must be 0 with padding='SAME'; got {output_padding}.")
    target = tuple(n * s for n, s in zip(in_shape, stride))
    pads = tuple(_args.same_padding(t, w, s) for t, w, s in zip(target, window, stride))
    output_padding = tuple(
        t - ((n - 1) * s - lo - hi + w) for t, n, s, (lo, hi), w in zip(target, in_shape, stride, pads, window)
    )
  else:
    if isinstance(padding, str) and padding.upper() != "VALID":
      raise ValueError(
          f"padding for conv_transpose must be 'VALID', 'SAME', an int, ints per dimension or "
          f"(lo, hi) pairs; got {padding!r}."
      )
    pads = _args.canonicalize_padding(padding, in_shape, window, stride)
    for d, (op, s, dl) in enumerate(zip(output_padding, stride, dilation)):
      if op >= max(s, dl):
        raise ValueError(
            f"output_padding must be smaller than stride or dilation in every dimension; got "
            f"{op} in dimension {d} (stride {s}, dilation {dl})."
        )
  out_shape = tuple(
      (n - 1) * s - lo - hi + w + op for n, s, (lo, hi), w, op in zip(in_shape, stride, pads, window, output_padding)
  )
  if any(o < 1 for o in out_shape):
    raise ValueError(
        f"padding {padding!r} is too large: conv_transpose would produce spatial shape {out_shape}."
    )

  tpads = tuple((w - 1 - lo, w - 1 - hi + op) for w, (lo, hi), op in zip(window, pads, output_padding))

  def transpose_xla(x, kernel):
    # Rearrange [*k, C_in/g, C_out] -> [*k, C_out/g, C_in] and flip: the transposed kernel.
    cig = kernel.shape[-2]
    k = kernel.reshape(*ksize, cig, groups, c_out // groups)
    perm = tuple(range(nd)) + (nd + 2, nd + 1, nd)  # (c, g, o') -> (o', g, c)
    k = k.transpose(perm).reshape(*ksize, c_out // groups, groups * cig)
    k = jnp.flip(k, axis=tuple(range(nd)))
    return lax.conv_general_dilated(
        x,
        k,
        window_strides=(1,) * nd,
        padding=tpads,
        lhs_dilation=stride,
        rhs_dilation=dilation,
        dimension_numbers=dimension_numbers(nd),
        feature_group_count=groups,
        precision=precision,
        preferred_element_type=preferred_element_type,
    )

  z_shape = (x.shape[0], *out_shape, kernel.shape[-2] * groups)
  maps_back = all((o + lo + hi - w) // s + 1 == n  # conv maps z back onto x's spatial shape
                  for o, (lo, hi), w, s, n in zip(out_shape, pads, window, stride, in_shape))
  if preferred_element_type is None and maps_back:
    y = _conv_grad.conv_transpose_general(x, kernel, transpose_xla, z_shape, stride, pads, dilation, groups,
                                          precision)
  else:
    y = transpose_xla(x, kernel)
  if bias is not None:
    y = y + bias.astype(y.dtype).reshape((1,) * (y.ndim - 1) + (-1,))
  return y if batched else y[0]


def depthwise_conv(
    x: jax.typing.ArrayLike,
    kernel: jax.typing.ArrayLike,
    bias: Optional[jax.typing.ArrayLike] = None,
    **kwargs: Any,
) -> Array:
  """Depthwise convolution: each input channel convolved with its own ``multiplier`` filters.

  Shapes:
    * ``x``: ``[N, *spatial, C]`` (or unbatched).
    * ``kernel``: ``[*k, 1, C * multiplier]``; output channel ``c * multiplier + m`` uses input
      channel ``c``.
    * result: ``[N, *out, C * multiplier]``.

  It is :func:`conv` with ``groups = C``: ``y[i, c*M + m] = sum_j w[j, 0, c*M + m] x[i*s + j*d, c]``.
  Every keyword of :func:`conv` except ``groups`` is accepted.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxconv.ops import depthwise_conv
    >>> x = jnp.ones((1, 4, 4, 3))
    >>> depthwise_conv(x, jnp.ones((3, 3, 1, 6)), padding="SAME").shape
    (1, 4, 4, 6)
  """
  if "groups" in kwargs:
    raise TypeError("depthwise_conv sets groups to the number of input channels; do not pass groups.")
  x = _args.check_array(x, "x")
  kernel = _args.check_array(kernel, "kernel")
  if kernel.ndim < 3 or kernel.shape[-2] != 1:
    raise ValueError(f"depthwise kernel must have shape [*k, 1, C * multiplier]; got {kernel.shape}.")
  c = x.shape[-1]
  if kernel.shape[-1] % c:
    raise ValueError(
        f"depthwise kernel's last axis ({kernel.shape[-1]}) must be a multiple of the input "
        f"channels ({c})."
    )
  return conv(x, kernel, bias, groups=c, **kwargs)


def separable_conv(
    x: jax.typing.ArrayLike,
    depthwise_kernel: jax.typing.ArrayLike,
    pointwise_kernel: jax.typing.ArrayLike,
    bias: Optional[jax.typing.ArrayLike] = None,
    **kwargs: Any,
) -> Array:
  """Depthwise-separable convolution: :func:`depthwise_conv`, then a 1x1 (pointwise) :func:`conv`.

  Shapes:
    * ``x``: ``[N, *spatial, C]``.
    * ``depthwise_kernel``: ``[*k, 1, C * M]``; ``pointwise_kernel``: ``[*(1,)*nd, C * M, C_out]``.
    * ``bias``: ``[C_out]`` (added after the pointwise step).
    * result: ``[N, *out, C_out]``.

  Cost: ``prod(k) * C * M + C * M * C_out`` multiplies per output position instead of
  ``prod(k) * C * C_out``. Keywords (stride, padding, dilation, ...) apply to the depthwise step.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxconv.ops import separable_conv
    >>> x = jnp.ones((2, 8, 8, 4))
    >>> separable_conv(x, jnp.ones((3, 3, 1, 4)), jnp.ones((1, 1, 4, 16)), stride=2, padding=1).shape
    (2, 4, 4, 16)
  """
  pointwise_kernel = _args.check_array(pointwise_kernel, "pointwise_kernel")
  nd = pointwise_kernel.ndim - 2
  if nd < 1 or pointwise_kernel.shape[:nd] != (1,) * nd:
    raise ValueError(
        f"pointwise_kernel must have shape [{', '.join(['1'] * max(nd, 1))}, C * M, C_out]; got "
        f"{pointwise_kernel.shape}."
    )
  h = depthwise_conv(x, depthwise_kernel, **kwargs)
  if kwargs.get("preferred_element_type") is not None:
    # Back to the kernels' dtype (else the pointwise step sees mixed dtypes); the pointwise step
    # accumulates in the preferred type again, so the result has that type.
    h = h.astype(_args.check_array(depthwise_kernel, "depthwise_kernel").dtype)
  passed = {k: kwargs[k] for k in ("precision", "preferred_element_type") if k in kwargs}
  return conv(h, pointwise_kernel, bias, **passed)
