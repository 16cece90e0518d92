"""How the native primitives lower: the FFI call on CPU, XLA's own convolution elsewhere.

A function traced once may be lowered for several platforms (``jax.export`` with
``platforms=("cpu", "cuda")``), so the choice of the native kernels made at trace time must not
bind the lowering: on CPU the primitives become calls of the chosen variant's FFI handlers, and
on every other platform :func:`jax.lax.conv_general_dilated` (and its transpose in the kernel),
which computes the same numbers.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.interpreters import mlir

from jaxconv.ops._native import _build

_DN = ("NHWC", "HWIO", "NHWC")


def _attrs(stride, pads, dilation) -> dict:
  """FFI attributes: strides, dilations and the padding before the first row/column (the
  kernels pad on the fly; the output shape implies the padding after)."""
  return dict(sh=np.int64(stride[0]), sw=np.int64(stride[1]), dh=np.int64(dilation[0]), dw=np.int64(dilation[1]),
              ph=np.int64(pads[0][0]), pw=np.int64(pads[1][0]))


def ffi_conv(x, w, *, stride, pads, dilation, algorithm, isa):
  """The forward as a call of variant ``isa``'s FFI handler (registered on first use)."""
  from jaxconv.ops._native import _conv_shape

  _build.load(isa)
  out = jax.ShapeDtypeStruct(_conv_shape(x.shape, w.shape, stride, pads, dilation), jnp.float32)
  if algorithm == "winograd":
    return jax.ffi.ffi_call(_build.target("jaxconv_conv_winograd", isa), out)(
        x, w, ph=np.int64(pads[0][0]), pw=np.int64(pads[1][0]))
  name = "jaxconv_depthwise_forward" if algorithm == "depthwise" else "jaxconv_conv_forward"
  return jax.ffi.ffi_call(_build.target(name, isa), out)(x, w, **_attrs(stride, pads, dilation))


def ffi_kernel_grad(x, g, *, kernel_size, stride, pads, dilation, algorithm, isa):
  """The kernel gradient as a call of variant ``isa``'s FFI handler."""
  from jaxconv.ops._native import _kernel_grad_shape

  _build.load(isa)
  out = jax.ShapeDtypeStruct(_kernel_grad_shape(x.shape, g.shape, kernel_size, algorithm), jnp.float32)
  if algorithm == "winograd":
    return jax.ffi.ffi_call(_build.target("jaxconv_conv_kernel_grad_winograd", isa), out)(
        x, g, ph=np.int64(pads[0][0]), pw=np.int64(pads[1][0]))
  name = "jaxconv_depthwise_kernel_grad" if algorithm == "depthwise" else "jaxconv_conv_kernel_grad"
  return jax.ffi.ffi_call(_build.target(name, isa), out)(x, g, **_attrs(stride, pads, dilation))


def xla_conv(x, w, *, stride, pads, dilation, algorithm, isa):
  """The same forward by :func:`jax.lax.conv_general_dilated`."""
  del isa
  groups = x.shape[-1] if algorithm == "depthwise" else 1
  return lax.conv_general_dilated(x, w, tuple(stride), tuple(map(tuple, pads)), rhs_dilation=tuple(dilation),
                                  dimension_numbers=_DN, feature_group_count=groups,
                                  precision=lax.Precision.HIGHEST)


def xla_kernel_grad(x, g, *, kernel_size, stride, pads, dilation, algorithm, isa):
  """The same kernel gradient: XLA's transpose of its convolution in the kernel."""
  from jaxconv.ops._native import _kernel_grad_shape

  w = jax.ShapeDtypeStruct(_kernel_grad_shape(x.shape, g.shape, kernel_size, algorithm), jnp.float32)
  fwd = lambda w_: xla_conv(x, w_, stride=stride, pads=pads, dilation=dilation, algorithm=algorithm, isa=isa)
  return jax.linear_transpose(fwd, w)(g)[0]


def register(conv_p, kernel_grad_p) -> None:
  """Registers the CPU (FFI) and default (XLA) lowerings of both primitives."""
  mlir.register_lowering(conv_p, mlir.lower_fun(ffi_conv, multiple_results=False), platform="cpu")
  mlir.register_lowering(kernel_grad_p, mlir.lower_fun(ffi_kernel_grad, multiple_results=False), platform="cpu")
  mlir.register_lowering(conv_p, mlir.lower_fun(xla_conv, multiple_results=False))
  mlir.register_lowering(kernel_grad_p, mlir.lower_fun(xla_kernel_grad, multiple_results=False))
