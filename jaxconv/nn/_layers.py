"""Flax Linen layers: each creates its parameters (if any) and calls one op of :mod:`jaxconv.ops`.

Inputs are channels-last (``[N, *spatial, C]``); kernels are ``[*k, C_in // groups, C_out]``.
Argument checking is the op's job; the layers add what only they know: which layer (its path in
the model) received an input too small for its window, or a channel count that differs from the
one its parameters were created for.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Callable, Optional, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.linen.dtypes import promote_dtype

from jaxconv import ops
from jaxconv.nn import _init
from jaxconv.ops import _args
from jaxconv.ops._args import PaddingLike

Array = jax.Array
Dtype = Any
IntOrSeq = Union[int, Sequence[int]]


def _where(module: nn.Module) -> str:
  """``Conv 'stage1_block0/conv1'``: the layer's type and path, for error messages."""
  path = "/".join(str(p) for p in module.scope.path) if module.scope is not None else ""
  return f"{type(module).__name__} '{path or module.name or '<top>'}'"


def _spatial_ndim(module: nn.Module, x: Array, kernel_size: IntOrSeq) -> tuple[int, bool]:
  """Number of spatial dims (from ``kernel_size`` if it is a sequence) and whether ``x`` is batched."""
  if isinstance(kernel_size, Sequence) and not isinstance(kernel_size, str):
    nd = len(kernel_size)
    if x.ndim == nd + 2:
      return nd, True
    if x.ndim == nd + 1:
      return nd, False
    raise ValueError(
        f"{_where(module)}: x must have rank {nd + 2} ([N, *spatial, C]) or {nd + 1} "
        f"(unbatched) for kernel_size {tuple(kernel_size)}; got shape {x.shape}."
    )
  if x.ndim < 3 or x.ndim > 5:
    raise ValueError(
        f"{_where(module)}: x must be batched and channels-last, [N, *spatial, C] with 1 to 3 "
        f"spatial dimensions, when kernel_size is an int; got shape {x.shape}. Give kernel_size "
        "as a sequence to use an unbatched input."
    )
  return x.ndim - 2, True


def _check_fits(module: nn.Module, in_shape, window, stride, pads, ceil_mode=False, what="window") -> None:
  """Raises a ValueError naming the layer when the sliding window yields no output."""
  for d, (n, w, s, (lo, hi)) in enumerate(zip(in_shape, window, stride, pads)):
    if _args.out_size(n, w, s, lo, hi, ceil_mode) < 1:
      raise ValueError(
          f"input too small at {_where(module)}: its feature map has spatial shape "
          f"{tuple(in_shape)} but the {what} spans {w} in spatial dimension {d} (padding "
          f"({lo}, {hi}), stride {s}), so it has no output position. Use a larger input image "
          "(or, for a model, a small-image option such as cifar_stem=True)."
      )


def _checked_param(module: nn.Module, name: str, init: Callable, shape: tuple[int, ...], dtype: Dtype) -> Array:
  """``module.param`` that explains a channel-count mismatch with the existing parameter."""
  if module.has_variable("params", name):
    existing = module.get_variable("params", name).shape
    if tuple(existing) != tuple(shape):
      raise ValueError(
          f"channel mismatch at {_where(module)}: its {name} {tuple(existing)} was created for "
          f"another input channel count; this input implies {tuple(shape)}; check the channels of the input (the "
          "previous layer's features) against the ones the parameters were initialised with."
      )
  return module.param(name, init, shape, dtype)


class Conv(nn.Module):
  """N-dimensional convolution layer around :func:`jaxconv.ops.conv` (every option of it).

  Shapes: ``x [N, *spatial, C_in]`` (or unbatched with a sequence ``kernel_size``) ->
  ``[N, *out, features]``; ``kernel [*kernel_size, C_in // groups, features]``, ``bias [features]``.
  ``y = conv(x, kernel, stride, padding, ...) + bias``; see :func:`jaxconv.ops.conv`.

  Attributes:
    features: output channels.
    kernel_size: int (every spatial dimension of a batched ``x``) or one int per dimension.
    stride, padding, padding_mode, dilation, groups, flip, anchor: as :func:`jaxconv.ops.conv`
      (``padding=None`` is ``"VALID"``; ``anchor`` replaces ``padding``).
    use_bias: add a learned bias.
    dtype: computation dtype (``None``: promote input and parameters).
    param_dtype: dtype of the parameters.
    precision: passed to the op.
    kernel_init: PyTorch's default ``U(+-1/sqrt(fan_in))`` unless given.
    bias_init: zeros.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> layer = Conv(8, 3, stride=2, padding=1, use_bias=False)
    >>> variables = jax.eval_shape(layer.init, jax.random.key(0), jnp.ones((1, 32, 32, 3)))
    >>> variables["params"]["kernel"].shape
    (3, 3, 3, 8)
    >>> jax.eval_shape(layer.apply, variables, jnp.ones((2, 32, 32, 3))).shape
    (2, 16, 16, 8)
  """

  features: int
  kernel_size: IntOrSeq
  stride: IntOrSeq = 1
  padding: Optional[PaddingLike] = None
  padding_mode: str = "zeros"
  dilation: IntOrSeq = 1
  groups: int = 1
  flip: bool = False
  anchor: Any = None
  use_bias: bool = True
  dtype: Optional[Dtype] = None
  param_dtype: Dtype = jnp.float32
  precision: Any = None
  kernel_init: Callable = _init.torch_default
  bias_init: Callable = _init.zeros

  @nn.compact
  def __call__(self, x: jax.typing.ArrayLike) -> Array:
    x = jnp.asarray(x)
    nd, batched = _spatial_ndim(self, x, self.kernel_size)
    ksize = _args.canonicalize_tuple(self.kernel_size, nd, "kernel_size")
    if not _args._is_int(self.features) or self.features < 1:
      raise ValueError(f"{_where(self)}: features must be a positive int; got {self.features!r}.")
    c_in = x.shape[-1]
    if not _args._is_int(self.groups) or self.groups < 1 or c_in % self.groups or self.features % self.groups:
      raise ValueError(
          f"{_where(self)}: groups ({self.groups!r}) must be a positive int dividing both the input "
          f"channels ({c_in}) and features ({self.features})."
      )
    kshape = (*ksize, c_in // self.groups, self.features)
    kernel = _checked_param(self, "kernel", self.kernel_init, kshape, self.param_dtype)
    bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype) if self.use_bias else None
    if self.anchor is None:
      xb = x if batched else x[None]
      stride = _args.canonicalize_tuple(self.stride, nd, "stride")
      dilation = _args.canonicalize_tuple(self.dilation, nd, "dilation")
      window = _args.effective_kernel_size(ksize, dilation)
      pad = "VALID" if self.padding is None else self.padding
      pads = _args.canonicalize_padding(pad, xb.shape[1:-1], window, stride)
      _check_fits(self, xb.shape[1:-1], window, stride, pads, what="kernel")
    x, kernel, bias = promote_dtype(x, kernel, bias, dtype=self.dtype)
    return ops.conv(
        x, kernel, bias, stride=self.stride, padding=self.padding, padding_mode=self.padding_mode,
        dilation=self.dilation, groups=self.groups, flip=self.flip, anchor=self.anchor,
        precision=self.precision,
    )


class ConvTranspose(nn.Module):
  """Transposed convolution layer around :func:`jaxconv.ops.conv_transpose`.

  Shapes: ``x [N, *spatial, C]`` -> ``[N, *out, features]`` with
  ``out = (in - 1) * stride - lo - hi + (k - 1) * dilation + 1 + output_padding``;
  ``kernel [*kernel_size, features // groups, C]`` (the kernel of the forward convolution it
  transposes), ``bias [features]``.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> layer = ConvTranspose(4, (4, 4), stride=2, padding=1)
    >>> variables = jax.eval_shape(layer.init, jax.random.key(0), jnp.ones((1, 8, 8, 6)))
    >>> jax.eval_shape(layer.apply, variables, jnp.ones((1, 8, 8, 6))).shape
    (1, 16, 16, 4)
  """

  features: int
  kernel_size: IntOrSeq
  stride: IntOrSeq = 1
  padding: PaddingLike = 0
  output_padding: IntOrSeq = 0
  dilation: IntOrSeq = 1
  groups: int = 1
  use_bias: bool = True
  dtype: Optional[Dtype] = None
  param_dtype: Dtype = jnp.float32
  precision: Any = None
  kernel_init: Callable = _init.torch_default
  bias_init: Callable = _init.zeros

  @nn.compact
  def __call__(self, x: jax.typing.ArrayLike) -> Array:
    x = jnp.asarray(x)
    nd, _ = _spatial_ndim(self, x, self.kernel_size)
    ksize = _args.canonicalize_tuple(self.kernel_size, nd, "kernel_size")
    c = x.shape[-1]
    if not _args._is_int(self.groups) or self.groups < 1 or c % self.groups or self.features % self.groups:
      raise ValueError(
          f"{_where(self)}: groups ({self.groups!r}) must be a positive int dividing both the input "
          f"channels ({c}) and features ({self.features})."
      )
    kernel = _checked_param(self, "kernel", self.kernel_init, (*ksize, self.features // self.groups, c),
                            self.param_dtype)
    bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype) if self.use_bias else None
    x, kernel, bias = promote_dtype(x, kernel, bias, dtype=self.dtype)
    return ops.conv_transpose(
        x, kernel, bias, stride=self.stride, padding=self.padding, output_padding=self.output_padding,
        dilation=self.dilation, groups=self.groups, precision=self.precision,
    )


def _checked_multiplier(module: nn.Module) -> int:
  """The depth multiplier of a depthwise step, a positive int (else a ValueError naming the layer)."""
  m = module.multiplier
  if not _args._is_int(m) or m < 1:
    raise ValueError(f"{_where(module)}: multiplier must be a positive int; got {m!r}.")
  return int(m)


class DepthwiseConv(nn.Module):
  """Depthwise convolution layer around :func:`jaxconv.ops.depthwise_conv`.

  Shapes: ``x [N, *spatial, C]`` -> ``[N, *out, C * multiplier]``; ``kernel [*k, 1, C * multiplier]``.
  Keywords as :class:`Conv` (no ``groups``: it is ``C``).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> layer = DepthwiseConv(3, multiplier=2, padding="SAME")
    >>> variables = jax.eval_shape(layer.init, jax.random.key(0), jnp.ones((1, 8, 8, 4)))
    >>> variables["params"]["kernel"].shape
    (3, 3, 1, 8)
  """

  kernel_size: IntOrSeq
  multiplier: int = 1
  stride: IntOrSeq = 1
  padding: Optional[PaddingLike] = None
  padding_mode: str = "zeros"
  dilation: IntOrSeq = 1
  use_bias: bool = True
  dtype: Optional[Dtype] = None
  param_dtype: Dtype = jnp.float32
  precision: Any = None
  kernel_init: Callable = _init.torch_default
  bias_init: Callable = _init.zeros

  @nn.compact
  def __call__(self, x: jax.typing.ArrayLike) -> Array:
    x = jnp.asarray(x)
    _, out, kernel = _depthwise_kernel(self, x, "kernel")
    bias = self.param("bias", self.bias_init, (out,), self.param_dtype) if self.use_bias else None
    x, kernel, bias = promote_dtype(x, kernel, bias, dtype=self.dtype)
    return ops.depthwise_conv(
        x, kernel, bias, stride=self.stride, padding=self.padding, padding_mode=self.padding_mode,
        dilation=self.dilation, precision=self.precision,
    )


def _depthwise_kernel(module: nn.Module, x: Array, name: str) -> tuple[int, int, Array]:
  """``(spatial dims, C * multiplier, kernel [*k, 1, C * multiplier])`` of a depthwise layer."""
  nd, _ = _spatial_ndim(module, x, module.kernel_size)
  ksize = _args.canonicalize_tuple(module.kernel_size, nd, "kernel_size")
  width = x.shape[-1] * _checked_multiplier(module)
  return nd, width, _checked_param(module, name, module.kernel_init, (*ksize, 1, width), module.param_dtype)


class SeparableConv(nn.Module):
  """Depthwise-separable convolution layer around :func:`jaxconv.ops.separable_conv`.

  Shapes: ``x [N, *spatial, C]`` -> ``[N, *out, features]``; ``depthwise_kernel [*k, 1, C * M]``,
  ``pointwise_kernel [1, .., 1, C * M, features]``, ``bias [features]``.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> layer = SeparableConv(16, 3, stride=2, padding=1)
    >>> variables = jax.eval_shape(layer.init, jax.random.key(0), jnp.ones((1, 8, 8, 4)))
    >>> jax.eval_shape(layer.apply, variables, jnp.ones((1, 8, 8, 4))).shape
    (1, 4, 4, 16)
  """

  features: int
  kernel_size: IntOrSeq
  multiplier: int = 1
  stride: IntOrSeq = 1
  padding: Optional[PaddingLike] = None
  padding_mode: str = "zeros"
  dilation: IntOrSeq = 1
  use_bias: bool = True
  dtype: Optional[Dtype] = None
  param_dtype: Dtype = jnp.float32
  precision: Any = None
  kernel_init: Callable = _init.torch_default
  bias_init: Callable = _init.zeros

  @nn.compact
  def __call__(self, x: jax.typing.ArrayLike) -> Array:
    x = jnp.asarray(x)
    nd, mid, dw = _depthwise_kernel(self, x, "depthwise_kernel")
    pw = self.param("pointwise_kernel", self.kernel_init, (*(1,) * nd, mid, self.features), self.param_dtype)
    bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype) if self.use_bias else None
    x, dw, pw, bias = promote_dtype(x, dw, pw, bias, dtype=self.dtype)
    return ops.separable_conv(
        x, dw, pw, bias, stride=self.stride, padding=self.padding, padding_mode=self.padding_mode,
        dilation=self.dilation, precision=self.precision,
    )


# --------------------------------------------------------------------------------------------
# Pooling: no parameters; the layers exist so that models read as a list of layers and so that
# summaries see the window arithmetic as attributes.


class _Pool(nn.Module):
  """Shared window check of the pooling layers."""

  def _fits(self, x: Array, window, stride, padding, dilation=1, ceil_mode=False) -> None:
    nd = x.ndim - 2 if x.ndim >= 3 else x.ndim - 1
    if nd < 1:
      raise ValueError(f"{_where(self)}: x must be [N, *spatial, C]; got shape {x.shape}.")
    in_shape = x.shape[1:-1]
    w = _args.canonicalize_tuple(window, nd, "window")
    s = _args.canonicalize_tuple(w if stride is None else stride, nd, "stride")
    d = _args.canonicalize_tuple(dilation, nd, "dilation")
    ew = _args.effective_kernel_size(w, d)
    pads = _args.canonicalize_padding(padding, in_shape, ew, s)
    _check_fits(self, in_shape, ew, s, pads, ceil_mode=ceil_mode)


class MaxPool(_Pool):
  """Max pooling around :func:`jaxconv.ops.max_pool`.

  Shapes: ``[N, *spatial, C] -> [N, *out, C]``, ``out = floor_or_ceil((in + lo + hi - w') / s) + 1``.

  Example:
    >>> import jax.numpy as jnp
    >>> MaxPool(3, stride=2, padding=1).apply({}, jnp.ones((1, 8, 8, 2))).shape
    (1, 4, 4, 2)
  """

  window: IntOrSeq
  stride: Optional[IntOrSeq] = None
  padding: PaddingLike = "VALID"
  dilation: IntOrSeq = 1
  ceil_mode: bool = False

  @nn.compact
  def __call__(self, x: jax.typing.ArrayLike) -> Array:
    x = jnp.asarray(x)
    self._fits(x, self.window, self.stride, self.padding, self.dilation, self.ceil_mode)
    return ops.max_pool(x, self.window, stride=self.stride, padding=self.padding, dilation=self.dilation,
                        ceil_mode=self.ceil_mode)


class AvgPool(_Pool):
  """Average pooling around :func:`jaxconv.ops.avg_pool` (``count_include_pad`` as PyTorch).

  Example:
    >>> import jax.numpy as jnp
    >>> AvgPool(2).apply({}, jnp.ones((1, 8, 8, 2))).shape
    (1, 4, 4, 2)
  """

  window: IntOrSeq
  stride: Optional[IntOrSeq] = None
  padding: PaddingLike = "VALID"
  ceil_mode: bool = False
  count_include_pad: bool = True

  @nn.compact
  def __call__(self, x: jax.typing.ArrayLike) -> Array:
    x = jnp.asarray(x)
    self._fits(x, self.window, self.stride, self.padding, 1, self.ceil_mode)
    return ops.avg_pool(x, self.window, stride=self.stride, padding=self.padding, ceil_mode=self.ceil_mode,
                        count_include_pad=self.count_include_pad)


class GlobalAvgPool(nn.Module):
  """Mean over all spatial positions, :func:`jaxconv.ops.global_avg_pool`: ``[N, *s, C] -> [N, C]``.

  Example:
    >>> import jax.numpy as jnp
    >>> GlobalAvgPool().apply({}, jnp.ones((2, 5, 5, 3))).shape
    (2, 3)
  """

  keepdims: bool = False

  @nn.compact
  def __call__(self, x: jax.typing.ArrayLike) -> Array:
    return ops.global_avg_pool(jnp.asarray(x), keepdims=self.keepdims)


class GlobalMaxPool(nn.Module):
  """Max over all spatial positions, :func:`jaxconv.ops.global_max_pool`: ``[N, *s, C] -> [N, C]``.

  Example:
    >>> import jax.numpy as jnp
    >>> GlobalMaxPool().apply({}, jnp.ones((2, 5, 5, 3))).shape
    (2, 3)
  """

  keepdims: bool = False

  @nn.compact
  def __call__(self, x: jax.typing.ArrayLike) -> Array:
    return ops.global_max_pool(jnp.asarray(x), keepdims=self.keepdims)


class AdaptiveAvgPool(nn.Module):
  """PyTorch's adaptive average pooling, :func:`jaxconv.ops.adaptive_avg_pool`.

  Output bin ``i`` of a dimension of size ``n`` averages ``[floor(i n / o), ceil((i + 1) n / o))``.

  Example:
    >>> import jax.numpy as jnp
    >>> AdaptiveAvgPool(7).apply({}, jnp.ones((1, 14, 14, 3))).shape
    (1, 7, 7, 3)
  """

  output_size: IntOrSeq

  @nn.compact
  def __call__(self, x: jax.typing.ArrayLike) -> Array:
    x = jnp.asarray(x)
    return ops.adaptive_avg_pool(x, self.output_size)


class AdaptiveMaxPool(nn.Module):
  """PyTorch's adaptive max pooling, :func:`jaxconv.ops.adaptive_max_pool`.

  Example:
    >>> import jax.numpy as jnp
    >>> AdaptiveMaxPool((2, 3)).apply({}, jnp.ones((1, 6, 6, 3))).shape
    (1, 2, 3, 3)
  """

  output_size: IntOrSeq

  @nn.compact
  def __call__(self, x: jax.typing.ArrayLike) -> Array:
    x = jnp.asarray(x)
    return ops.adaptive_max_pool(x, self.output_size)


# --------------------------------------------------------------------------------------------
# Normalisation


class BatchNorm(nn.Module):
  """Batch normalisation around :func:`jaxconv.ops.batch_norm`, statistics over all axes but the last.

  ``y = scale * (x - mean) / sqrt(var + epsilon) + bias`` with the batch's statistics in training
  (``train=True``) and the running ones in evaluation. Training updates
  ``running = momentum * running + (1 - momentum) * batch`` (Flax's convention: PyTorch's
  ``momentum=0.1`` is ``0.9`` here); the running statistics live in the ``batch_stats``
  collection as ``mean`` and ``var``, so training must be applied with
  ``mutable=["batch_stats"]``. With ``axis_name`` the batch statistics are averaged across the
  devices of that mapped axis (``pmap``/``shard_map``); ``mask`` (``[N]``, bool) leaves padded
  examples out of the statistics.

  Attributes:
    train: default of the call's ``train`` argument (one of the two must be given).
    momentum, epsilon: as above.
    axis_name: mapped axis for cross-device statistics, or ``None``.
    use_scale, use_bias: learn ``scale`` / ``bias`` (shape ``[C]``).
    scale_init: ones (zeros for the last norm of a residual branch when asked).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> bn = BatchNorm()
    >>> x = jnp.arange(12.0).reshape(6, 2)
    >>> v = bn.init(jax.random.key(0), x, train=False)
    >>> y, upd = bn.apply(v, x, train=True, mutable=["batch_stats"])
    >>> y.mean(0).round(5), upd["batch_stats"]["mean"]
    (Array([0., 0.], dtype=float32), Array([0.5, 0.6], dtype=float32))
  """

  train: Optional[bool] = None
  momentum: float = 0.9
  epsilon: float = 1e-5
  axis_name: Optional[str] = None
  use_scale: bool = True
  use_bias: bool = True
  dtype: Optional[Dtype] = None
  param_dtype: Dtype = jnp.float32
  scale_init: Callable = _init.ones
  bias_init: Callable = _init.zeros

  @nn.compact
  def __call__(self, x: jax.typing.ArrayLike, train: Optional[bool] = None, mask: Optional[Array] = None) -> Array:
    train = nn.merge_param("train", self.train, train)
    x = jnp.asarray(x)
    c = x.shape[-1]
    initializing = self.is_initializing()
    if not initializing and not self.has_variable("batch_stats", "mean"):
      raise ValueError(
          f"{_where(self)} has no running statistics: apply the model with all the variables that "
          "init returned, including the 'batch_stats' collection, e.g. "
          "model.apply({'params': params, 'batch_stats': batch_stats}, x, ...)."
      )
    if train and not initializing and not self.is_mutable_collection("batch_stats"):
      raise ValueError(
          f"{_where(self)} updates its running statistics in training: call "
          "model.apply(variables, x, train=True, mutable=['batch_stats']) and keep the returned "
          "updates (logits, updates = ...; batch_stats = updates['batch_stats']), or pass "
          "train=False to use the running statistics."
      )
    stat_dtype = jnp.promote_types(self.param_dtype, jnp.float32)
    ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((c,), stat_dtype))
    ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((c,), stat_dtype))
    if ra_mean.value.shape != (c,):
      raise ValueError(
          f"channel mismatch at {_where(self)}: its statistics have {ra_mean.value.shape[0]} channels "
          f"but x has {c} (shape {x.shape})."
      )
    scale = self.param("scale", self.scale_init, (c,), self.param_dtype) if self.use_scale else jnp.ones((c,), self.param_dtype)
    bias = self.param("bias", self.bias_init, (c,), self.param_dtype) if self.use_bias else jnp.zeros((c,), self.param_dtype)
    dtype = self.dtype or jnp.result_type(x.dtype, self.param_dtype)
    # The op computes statistics in float32 (or wider) whatever x's dtype, and returns x's dtype.
    y, new_mean, new_var = ops.batch_norm(
        x.astype(dtype), scale, bias, ra_mean.value, ra_var.value, train=train,
        momentum=self.momentum, eps=self.epsilon,
        axis_name=self.axis_name if train else None, mask=mask,
    )
    if train and not initializing:
      ra_mean.value = new_mean.astype(stat_dtype)
      ra_var.value = new_var.astype(stat_dtype)
    return y


class LocalResponseNorm(nn.Module):
  """AlexNet's local response normalisation, :func:`jaxconv.ops.local_response_norm`.

  ``y_c = x_c / (k + alpha / size * sum_{c' near c} x_{c'}^2) ** beta`` (PyTorch's definition).

  Example:
    >>> import jax.numpy as jnp
    >>> LocalResponseNorm(size=5).apply({}, jnp.ones((1, 4, 4, 8))).shape
    (1, 4, 4, 8)
  """

  size: int = 5
  alpha: float = 1e-4
  beta: float = 0.75
  k: float = 1.0

  @nn.compact
  def __call__(self, x: jax.typing.ArrayLike) -> Array:
    return ops.local_response_norm(jnp.asarray(x), size=self.size, alpha=self.alpha, beta=self.beta, k=self.k)
