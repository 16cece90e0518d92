"""How the native primitives lower: the FFI call on CPU, XLA's own convolution elsewhere.

A function traced once may be lowered for several platforms (``jax.export`` with
``platforms=("cpu", "cuda")``), so the choice of the native kernels made at trace time must not
bind the lowering. Each primitive has two lowerings:

* on every platform but CPU, :func:`jax.lax.conv_general_dilated` (and its transpose in the
  kernel for ``kernel_grad``), which computes the same numbers;
* on CPU, a call of the chosen variant's FFI handler (a custom call) -- except when lowering
  for :mod:`jax.export` (see below).

**Sharded ``jit``.** XLA's SPMD partitioner cannot see inside a custom call: left alone it would
gather a batch-sharded input and run the whole batch on every device. So on CPU the FFI call is
wrapped in :func:`jax.experimental.custom_partitioning`, with a Shardy sharding rule (and the
GSPMD callbacks, for ``jax_use_shardy_partitioner=False``):

* ``conv(x, w)``: the batch dimension of ``x`` may stay sharded (over any mesh axes, when it
  divides evenly), every other dimension of ``x`` and all of ``w`` are gathered (replicated);
  each device runs the kernel on its own shard, and ``y`` is sharded on its batch like ``x``;
* ``kernel_grad(x, g)``: ``x`` and ``g`` sharded alike on the batch; each device computes the
  kernel gradient of its shard and a ``psum`` over the batch's mesh axes makes ``dw``
  replicated (the batch is a reduction dimension).

Under ``shard_map`` (all axes manual), ``pmap`` and on one device the wrapper lowers straight to
the FFI call. The abstract evaluation in :mod:`jaxconv.ops._native` gives the matching types
under ``jax.sharding.AxisType.Explicit`` meshes (``y`` batch-sharded like ``x``, ``dw``
replicated).

**Export.** A serialized artifact must not depend on jaxconv's shared library being registered
in the process that loads it (nor can ``jax.export`` serialize custom calls it does not know).
When the lowering is for :mod:`jax.export`, the CPU lowering therefore emits XLA's convolution
too: exported jaxconv models run anywhere, at XLA's speed, with the same numbers up to float32
rounding.

Both decisions read JAX internals, kept in :mod:`jaxconv.ops._jax_internals` (tested on JAX
0.10.2); should they move, sharded ``jit`` falls back to the plain FFI call (gathered batch,
same numbers) and export detection to the custom call (export then fails as before).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental.custom_partitioning import custom_partitioning
from jax.experimental.xla_metadata import set_xla_metadata
from jax.interpreters import mlir
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jaxconv.ops import _jax_internals
from jaxconv.ops._native import _build

_DN = ("NHWC", "HWIO", "NHWC")


# --------------------------------------------------------------------------------------------
# The per-device computations.


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
  name = {"depthwise": "jaxconv_depthwise_forward", "narrow": "jaxconv_narrow_forward"}.get(algorithm,
                                                                                          "jaxconv_conv_forward")
  return jax.ffi.ffi_call(_build.target(name, isa), out)(x, w, **_attrs(stride, pads, dilation))


def ffi_kernel_grad(x, g, *, kernel_size, stride, pads, dilation, algorithm, isa):
  """The kernel gradient as a call of variant ``isa``'s FFI handler."""
  from jaxconv.ops._native import _kernel_grad_shape

  _build.load(isa)
  out = jax.ShapeDtypeStruct(_kernel_grad_shape(x.shape, g.shape, kernel_size, algorithm), jnp.float32)
  if algorithm == "winograd":
    return jax.ffi.ffi_call(_build.target("jaxconv_conv_kernel_grad_winograd", isa), out)(
        x, g, ph=np.int64(pads[0][0]), pw=np.int64(pads[1][0]))
  name = {"depthwise": "jaxconv_depthwise_kernel_grad", "narrow": "jaxconv_narrow_kernel_grad"}.get(
      algorithm, "jaxconv_conv_kernel_grad")
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


# --------------------------------------------------------------------------------------------
# Custom partitioning: the batch stays sharded, everything else is gathered.


def _batch_axes(shape, sharding, mesh):
  """The mesh axes ``shape``'s batch dimension is sharded over under ``sharding`` (a tuple, or
  ``None``), when they divide it evenly; otherwise ``None`` (gather it)."""
  if not isinstance(sharding, NamedSharding) or not sharding.spec:
    return None
  axes = sharding.spec[0]
  if axes is None:
    return None
  axes = (axes,) if isinstance(axes, str) else tuple(axes)
  if not axes:
    return None
  size = math.prod(mesh.shape[a] for a in axes)
  return axes if size > 1 and shape[0] % size == 0 else None


def _spec(batch, ndim) -> P:
  return P(batch, *([None] * (ndim - 1))) if batch else P()


def _conv_partition(params, mesh, arg_shapes, result_shape):
  x, w = arg_shapes
  batch = _batch_axes(x.shape, x.sharding, mesh)
  kw = dict(params)

  def lower_fn(x, w):
    return ffi_conv(x, w, **kw)

  return (mesh, lower_fn, NamedSharding(mesh, _spec(batch, 4)),
          (NamedSharding(mesh, _spec(batch, 4)), NamedSharding(mesh, P())))


def _conv_infer(params, mesh, arg_shapes, result_shape):
  x = arg_shapes[0]
  return NamedSharding(mesh, _spec(_batch_axes(x.shape, x.sharding, mesh), 4))


def _kernel_grad_partition(params, mesh, arg_shapes, result_shape):
  x, g = arg_shapes
  batch = _batch_axes(x.shape, x.sharding, mesh)
  if batch is None:  # x's sharding is the one that counts; g follows it
    batch = _batch_axes(g.shape, g.sharding, mesh)
  kw = dict(params)

  def lower_fn(x, g):
    dw = ffi_kernel_grad(x, g, **kw)
    return lax.psum(dw, batch) if batch else dw

  rep = NamedSharding(mesh, P())
  return mesh, lower_fn, rep, (NamedSharding(mesh, _spec(batch, 4)), NamedSharding(mesh, _spec(batch, 4)))


def _kernel_grad_infer(params, mesh, arg_shapes, result_shape):
  return NamedSharding(mesh, P())


@functools.partial(custom_partitioning, static_argnums=(2,))
def _conv_cp(x, w, params):
  return ffi_conv(x, w, **dict(params))


@functools.partial(custom_partitioning, static_argnums=(2,))
def _kernel_grad_cp(x, g, params):
  return ffi_kernel_grad(x, g, **dict(params))


# Shardy rules: only the batch factor ``n`` may be sharded; every other dimension has its own
# factor that needs replication. In the kernel gradient ``n`` is a reduction factor.
_conv_cp.def_partition(
    partition=_conv_partition, infer_sharding_from_operands=_conv_infer,
    sharding_rule="n h w c, i j k o -> n p q r",
    need_replication_factors=("h", "w", "c", "i", "j", "k", "o", "p", "q", "r"))
_kernel_grad_cp.def_partition(
    partition=_kernel_grad_partition, infer_sharding_from_operands=_kernel_grad_infer,
    sharding_rule="n h w c, n p q o -> i j k r", reduction_factors=("n",),
    need_replication_factors=("h", "w", "c", "p", "q", "o", "i", "j", "k", "r"))


def _static(params) -> tuple:
  return tuple(sorted(params.items()))


def _kernel_label(params) -> str:
  """The kernel a partitioned call stands for, as text: ``direct/avx512 dilation=1,1
  pads=1,1,1,1 stride=1,1`` (the other parameters by name; ``kernel_size`` too, for the kernel
  gradient)."""
  def text(v):
    return ",".join(map(str, np.ravel(v))) if isinstance(v, (tuple, list)) else str(v)

  rest = " ".join(f"{k}={text(v)}" for k, v in sorted(params.items()) if k not in ("algorithm", "isa"))
  return f"{params['algorithm']}/{params['isa']} {rest}"


# --------------------------------------------------------------------------------------------
# Lowering rules.


def _cpu_rule(ffi_fn, cp_fn, xla_fn, partitioning: bool):
  """The CPU lowering: XLA's convolution when exporting, else the (partitioned) FFI call."""

  def rule(ctx, a, b, **params):
    if _jax_internals.lowering_for_export(ctx):
      fn = functools.partial(xla_fn, **params)
    elif partitioning:
      # The FFI call is emitted by the partitioner, which a persistent-cache hit skips: register
      # the variant's handlers here (the trace-time choice of the variant has loaded it already).
      _build.load(params["isa"])

      def fn(a_, b_):
        # The module names the partitioner's callbacks only by their address in this process,
        # so the call also carries the kernel they stand for: with the address left out of the
        # persistent compilation cache's key (jax_remove_custom_partitioning_ptr_from_cache_key),
        # programs that differ only in their kernels still get different keys.
        with set_xla_metadata(jaxconv_kernel=_kernel_label(params)):
          return cp_fn(a_, b_, _static(params))
    else:
      fn = functools.partial(ffi_fn, **params)
    return mlir.lower_fun(fn, multiple_results=False)(ctx, a, b)

  return rule


def register(conv_p, kernel_grad_p) -> None:
  """Registers the CPU (FFI) and default (XLA) lowerings of both primitives."""
  partitioning = _jax_internals.require_devices_during_lowering(conv_p, kernel_grad_p)
  mlir.register_lowering(conv_p, _cpu_rule(ffi_conv, _conv_cp, xla_conv, partitioning), platform="cpu")
  mlir.register_lowering(kernel_grad_p, _cpu_rule(ffi_kernel_grad, _kernel_grad_cp, xla_kernel_grad, partitioning),
                         platform="cpu")
  mlir.register_lowering(conv_p, mlir.lower_fun(xla_conv, multiple_results=False))
  mlir.register_lowering(kernel_grad_p, mlir.lower_fun(xla_kernel_grad, multiple_results=False))
