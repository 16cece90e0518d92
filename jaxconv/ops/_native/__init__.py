r"""Native float32 convolution kernels for XLA:CPU, built from source on first use.

XLA:CPU computes a 3x3 convolution with 64 channels at about a third of the speed its own
matrix product reaches on the same cores, and its kernel gradient slower still. The C++ file
``_native/conv.cc`` holds direct-convolution kernels (register-blocked over output pixels and
channels, threaded on XLA's intra-op pool) that run at about matrix-product speed, Winograd
F(4x4, 3x3) kernels for 3x3 stride-1 convolutions that do a quarter of the multiplications, and
depthwise kernels; see its header for the algorithms. It is built in three variants (AVX-512,
AVX2+FMA and portable C++; :mod:`._build`), one of which is chosen from the CPU at load time.
They are called through the XLA FFI as two JAX primitives:

* ``conv(x, w)``: ``y = conv_general_dilated(x, w, stride, pads, rhs_dilation)`` for 2-D
  channels-last inputs, one feature group, float32;
* ``kernel_grad(x, g)``: the transpose of ``w -> conv(x, w)`` applied to ``g``,
  ``dw[i, j, c, o] = sum_{n, h, v} x_pad[n, h s + i d, v s + j d, c] g[n, h, v, o]``.

Both take ``algorithm="direct"`` (any kernel, stride and dilation), ``"winograd"`` (3x3,
stride 1, no dilation; float32 error a few 1e-6 of the largest value, against about 4e-7 for
direct summation) or ``"depthwise"`` (``w: [KH, KW, 1, C]``, one feature group per channel),
and ``isa``, the variant that runs them on CPU.

Both are bilinear, and each one's transposes are the other or itself:

* ``conv`` transposed in ``x`` (the input gradient) is ``conv`` of the output gradient with the
  kernel flipped in space and its channel axes swapped (:func:`input_grad`; with a stride, one
  such convolution per phase of the stride, with the taps that reach it);
* ``conv`` transposed in ``w`` is ``kernel_grad``;
* ``kernel_grad`` transposed in ``g`` is ``conv(x, .)``, and in ``x`` the input gradient above.

The transposes keep the algorithm (a Winograd convolution's input gradient is a stride-1 3x3
convolution too). So reverse mode, forward mode and derivatives of any order stay native.
``vmap`` folds a batched input into the batch axis and maps over a batched kernel. How the
primitives lower (the FFI call on CPU, XLA's convolution on other platforms) is in
:mod:`._lowering`.

Results are deterministic: every kernel splits its work statically and adds partial sums in a
fixed order, so identical inputs give identical bits whatever the threads' timing (for a given
number of threads).

Set ``JAXCONV_NATIVE=0`` to never build or use the kernels, ``JAXCONV_NATIVE_ISA`` to force a
variant (or ``jaxconv.ops.conv_config(native=..., native_isa=...)`` at run time);
:func:`status` says which variant runs and why.
"""

from __future__ import annotations

import dataclasses
import itertools
import platform
from collections.abc import Sequence
from typing import Optional

import jax
import jax.numpy as jnp
from jax import lax
from jax.extend import core as jex_core
from jax.interpreters import ad, batching
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jaxconv.ops._native import _build
from jaxconv.ops._native._build import ISAS, BuildError, resolve_isa  # noqa: F401  (resolve_isa: for conv_config)


@dataclasses.dataclass(frozen=True)
class NativeStatus:
  """Whether the native kernels run in this process, which variant, and why.

  Attributes:
    available: whether :func:`conv` and :func:`kernel_grad` can run.
    isa: the variant that runs (``"avx512"``, ``"avx2"`` or ``"portable"``), or ``None``.
    reason: why this variant, or why none (one line).
    path: the loaded shared library, or ``None``.
    cpu_isas: the variants this CPU can run, best first.
    threads: the worker-thread cap (0: XLA's intra-op pool size).
    scratch_mb: the cap on scratch memory kept between calls, over all threads (MiB).
  """

  available: bool
  isa: Optional[str]
  reason: str
  path: Optional[str]
  cpu_isas: tuple[str, ...]
  threads: int
  scratch_mb: int

  def __str__(self) -> str:
    head = f"native kernels: {self.isa} ({self.reason})" if self.available else \
        f"native kernels: not used ({self.reason})"
    lim = f"threads={self.threads or 'XLA pool'}, scratch cap {self.scratch_mb} MiB"
    return f"{head}\n  CPU variants: {', '.join(self.cpu_isas) or 'none'}; {lim}" + \
        (f"\n  library: {self.path}" if self.path else "")


def status(isa: Optional[str] = None) -> NativeStatus:
  """Whether (and which variant of) the native kernels run here, building them on first call.

  Args:
    isa: ``"auto"`` (the best variant the CPU runs), ``"avx512"``, ``"avx2"`` or ``"portable"``;
      ``None`` reads ``$JAXCONV_NATIVE_ISA`` (default ``"auto"``).

  Returns:
    A :class:`NativeStatus`. With ``"auto"``, a variant that fails to build falls back to the
    next one, and the reason says so.

  Raises:
    ValueError: for a variant name that is unknown or that this CPU cannot run.

  Example:
    >>> from jaxconv.ops import native_status
    >>> s = native_status()
    >>> s.isa in (None, "avx512", "avx2", "portable") and isinstance(s.reason, str)
    True
  """
  requested = _build.requested_isa() if isa is None else isa
  source = "JAXCONV_NATIVE_ISA" if isa is None else "isa"
  chosen = _build.resolve_isa(requested, source)  # ValueError first: a bad request is an error
  lim = _build.limits()
  cpu = _build.cpu_isas()

  def result(ok, which, why, path=None):
    return NativeStatus(ok, which, why, path, cpu, lim["threads"], lim["scratch_mb"])

  if not _build.enabled_by_env():
    return result(False, None, "disabled by JAXCONV_NATIVE=0")
  if chosen is None:
    return result(False, None, f"the kernels are built for x86-64 Linux CPUs; this is {platform.machine()} "
                               f"{platform.system()}")
  candidates = cpu[cpu.index(chosen):] if requested == "auto" else (chosen,)
  failures = []
  for which in candidates:
    try:
      loaded = _build.load(which)
    except BuildError as e:
      failures.append(f"{which}: {e}")
      continue
    if requested != "auto":
      why = f"forced by {source}={requested}"
    elif failures:
      why = f"the best variant that built ({'; '.join(failures)})"
    else:
      why = f"the best variant this CPU runs (of {', '.join(cpu)})"
    return result(True, which, why, loaded.path)
  return result(False, None, "building failed: " + "; ".join(failures))


def available(isa: Optional[str] = None) -> bool:
  """Whether the native kernels can be used in this process (built on the first call).

  A variant this CPU cannot run is simply not available here (no error).
  """
  try:
    return status(isa).available
  except ValueError:
    return False


def resolved_isa(isa: Optional[str] = None) -> str:
  """The variant :func:`conv` runs for ``isa`` (``None``/``"auto"``: the best that is available).

  Raises:
    RuntimeError: when the native kernels are not available, with the reason.
  """
  s = status(isa)
  if not s.available:
    raise RuntimeError(f"jaxconv's native convolution kernels are not available: {s.reason}.")
  return s.isa


# --------------------------------------------------------------------------------------------
# The two primitives. Shapes: x [N, H, W, C], w [KH, KW, C, O], y/g [N, Ho, Wo, O].


def _out_size(n: int, k: int, lo: int, hi: int, s: int, d: int) -> int:
  return (n + lo + hi - (k - 1) * d - 1) // s + 1


def _conv_shape(x_shape, w_shape, stride, pads, dilation) -> tuple[int, ...]:
  sp = tuple(_out_size(x_shape[1 + i], w_shape[i], *pads[i], stride[i], dilation[i]) for i in range(2))
  return (x_shape[0], *sp, w_shape[3])


ALGORITHMS = ("direct", "winograd", "depthwise", "narrow")


def winograd_fits(w_shape, stride, dilation) -> bool:
  """Whether the native Winograd kernels compute this convolution's shape: 3x3, stride 1, no
  dilation (``_conv_grad.winograd_applies`` adds the dtype and group conditions)."""
  return tuple(w_shape[:2]) == (3, 3) and tuple(stride) == (1, 1) and tuple(dilation) == (1, 1)


def _kernel_grad_shape(x_shape, g_shape, kernel_size, algorithm) -> tuple[int, ...]:
  return (*kernel_size, 1 if algorithm == "depthwise" else x_shape[3], g_shape[3])


def _eager(prim):
  """Eager evaluation of a primitive: compile it alone (its lowering rules do the work)."""
  def impl(*args, **params):
    return jax.jit(lambda *a: prim.bind(*a, **params))(*args)
  return impl


conv_p = jex_core.Primitive("jaxconv_native_conv")
kernel_grad_p = jex_core.Primitive("jaxconv_native_conv_kernel_grad")
conv_p.def_impl(_eager(conv_p))
kernel_grad_p.def_impl(_eager(kernel_grad_p))


def _out_aval(shape, a, b, batch_like):
  """The result type: ``shape``, float32, varying over the manual axes either operand varies
  over (``shard_map``), and, under explicit mesh axes, sharded on its first dimension like
  ``batch_like``'s first dimension (``None``: replicated), as the lowering
  (:mod:`._lowering`) partitions it. JAX's own ``conv_general_dilated`` types its kernel
  gradient the same way (replicated, the batch summed over)."""
  mesh = a.sharding.mesh if not a.sharding.mesh.empty else b.sharding.mesh
  lead = batch_like.sharding.spec[0] if batch_like is not None else None
  sharding = NamedSharding(mesh, P(lead, *([None] * (len(shape) - 1))))
  mat = a.mat
  if b.mat.varying - a.mat.varying:
    mat = mat.update(varying=a.mat.varying | b.mat.varying)
  return a.update(shape=tuple(shape), dtype=jnp.dtype(jnp.float32), weak_type=False, sharding=sharding,
                  manual_axis_type=mat)


def _conv_abstract(x, w, *, stride, pads, dilation, algorithm, isa):
  return _out_aval(_conv_shape(x.shape, w.shape, stride, pads, dilation), x, w, x)


def _kernel_grad_abstract(x, g, *, kernel_size, stride, pads, dilation, algorithm, isa):
  return _out_aval(_kernel_grad_shape(x.shape, g.shape, kernel_size, algorithm), x, g, None)


conv_p.def_abstract_eval(_conv_abstract)
kernel_grad_p.def_abstract_eval(_kernel_grad_abstract)


def conv(x: jax.Array, w: jax.Array, stride: Sequence[int], pads, dilation: Sequence[int],
         algorithm: str = "direct", isa: Optional[str] = None) -> jax.Array:
  """``lax.conv_general_dilated(x, w, stride, pads, rhs_dilation=dilation)``, NHWC/HWIO, float32.

  ``algorithm``: ``"direct"`` (any kernel), ``"winograd"`` (F(4x4, 3x3); 3x3 kernels with stride
  1 and no dilation, see :func:`winograd_fits`) or ``"depthwise"`` (``w: [KH, KW, 1, C]``,
  one feature group per channel: ``feature_group_count=C``). The gradients (and their
  transposes) use the same algorithm. ``isa``: the variant to run on CPU (``None``/``"auto"``:
  as :func:`status` resolves it); a :class:`RuntimeError` says why when none is available.
  """
  _check_algorithm(algorithm, w.shape, stride, dilation)
  isa = isa if isa in ISAS else resolved_isa(isa)
  x, w = _vary_alike(x, w)
  return conv_p.bind(x, w, stride=tuple(stride), pads=tuple(map(tuple, pads)), dilation=tuple(dilation),
                     algorithm=algorithm, isa=isa)


def kernel_grad(x: jax.Array, g: jax.Array, kernel_size, stride, pads, dilation,
                algorithm: str = "direct", isa: Optional[str] = None) -> jax.Array:
  """The transpose of ``w -> conv(x, w, ..., algorithm)`` applied to ``g``: ``[KH, KW, C, O]``
  (depthwise: ``[KH, KW, 1, C]``)."""
  _check_algorithm(algorithm, kernel_size, stride, dilation)
  isa = isa if isa in ISAS else resolved_isa(isa)
  x, g = _vary_alike(x, g)
  return kernel_grad_p.bind(x, g, kernel_size=tuple(kernel_size), stride=tuple(stride),
                            pads=tuple(map(tuple, pads)), dilation=tuple(dilation), algorithm=algorithm, isa=isa)


def _vary_alike(*args):
  """Inside ``shard_map``, casts each operand to vary over every manual axis that any operand
  varies over (``jax.lax.pcast``): a replicated kernel meeting a per-device input. Then the
  result's type, and the transposes' cotangents, are per-device too, as ``check_vma`` expects."""
  varying = [frozenset(jax.typeof(a).mat.varying) for a in args]
  vma = frozenset().union(*varying)
  return tuple(lax.pcast(a, tuple(sorted(vma - v)), to="varying") if vma - v else a for a, v in zip(args, varying))


def _check_algorithm(algorithm, kernel_size, stride, dilation) -> None:
  if algorithm not in ALGORITHMS:
    raise ValueError(f"algorithm must be one of {ALGORITHMS}; got {algorithm!r}.")
  if algorithm == "winograd" and not winograd_fits(kernel_size, stride, dilation):
    raise ValueError(f"algorithm='winograd' needs a 3x3 kernel, stride 1 and no dilation; got kernel "
                     f"{tuple(kernel_size[:2])}, stride {tuple(stride)}, dilation {tuple(dilation)}.")


def input_grad(g: jax.Array, w: jax.Array, x_shape, stride, pads, dilation, algorithm: str = "direct",
               isa: Optional[str] = None) -> jax.Array:
  """The transpose of ``x -> conv(x, w)`` (``x: x_shape``) applied to ``g``, by the forward kernel.

  In one dimension, ``y[h] = sum_i x[h s + i d - p] w[i]``, so input position ``t`` receives
  ``g[h] w[i]`` wherever ``t + p = h s + i d``. Split ``t`` by its phase ``r = (t + p) mod s``:
  the taps that reach phase ``r`` are those with ``i d = r + s q_i`` (``q_i >= 0``), and on the
  positions ``t = s u + r - p`` of that phase ``dx[t] = sum_i g[u - q_i] w[i]``, a stride-1
  convolution of ``g`` with the sub-kernel of those taps, flipped (``K[M - 1 - q_i] = w[i]``,
  channel axes swapped) and padded by ``M - 1 - u_0`` before. With stride 1 there is one phase
  and the sub-kernel is the whole kernel; with stride ``s`` there are ``s`` per dimension (no
  multiply by the zeros of a dilated ``g``), each placed back by a pad with ``s - 1`` interior
  zeros and summed. ``algorithm`` is passed on (stride 1: the one phase is a 3x3 convolution).
  A depthwise kernel ``[KH, KW, 1, C]`` has no channel axes to swap: the transpose of a depthwise
  convolution is a depthwise convolution with the flipped kernel.
  """
  wt = w if algorithm == "depthwise" else jnp.swapaxes(w, 2, 3)
  out = None
  for rh, rw in itertools.product(range(stride[0]), range(stride[1])):
    geo = []
    for ax, r in enumerate((rh, rw)):
      k, s, d, (p, _), t_len = w.shape[ax], stride[ax], dilation[ax], pads[ax], x_shape[1 + ax]
      taps = [i for i in range(k) if (i * d - r) % s == 0]
      u0 = -((r - p) // s)  # first u with t = s u + r - p >= 0
      t0 = s * u0 + r - p
      n_out = max(0, -(-(t_len - t0) // s))
      if not taps or n_out == 0:
        break
      q = [(i * d - r) // s for i in taps]
      geo.append((taps, q, max(q) + 1, u0, t0, n_out))
    if len(geo) < 2:
      continue  # no tap reaches this phase, or it has no positions: it stays zero
    (ti, qi, mh, u0h, t0h, nh), (tj, qj, mw, u0w, t0w, nw) = geo
    sub = jnp.zeros((mh, mw, *wt.shape[2:]), wt.dtype)
    for (i, a), (j, b) in itertools.product(zip(ti, qi), zip(tj, qj)):
      sub = sub.at[mh - 1 - a, mw - 1 - b].set(wt[i, j])
    lo = (mh - 1 - u0h, mw - 1 - u0w)
    hi = (nh - g.shape[1] + mh - 1 - lo[0], nw - g.shape[2] + mw - 1 - lo[1])
    phase = conv(g, sub, (1, 1), tuple(zip(lo, hi)), (1, 1), algorithm, isa)
    placed = lax.pad(phase, jnp.zeros((), phase.dtype),
                     ((0, 0, 0), (t0h, x_shape[1] - t0h - (nh - 1) * stride[0] - 1, stride[0] - 1),
                      (t0w, x_shape[2] - t0w - (nw - 1) * stride[1] - 1, stride[1] - 1), (0, 0, 0)))
    out = placed if out is None else out + placed
  if out is None:
    return jnp.zeros(x_shape, g.dtype)
  return out


def _conv_transpose_x(ct, x, w, *, stride, pads, dilation, algorithm, isa):
  return input_grad(ad.instantiate_zeros(ct), w, x.aval.shape, stride, pads, dilation, algorithm, isa)


def _conv_transpose_w(ct, x, w, *, stride, pads, dilation, algorithm, isa):
  return kernel_grad(x, ad.instantiate_zeros(ct), w.aval.shape[:2], stride, pads, dilation, algorithm, isa)


def _kernel_grad_transpose_x(ct, x, g, *, kernel_size, stride, pads, dilation, algorithm, isa):
  return input_grad(g, ad.instantiate_zeros(ct), x.aval.shape, stride, pads, dilation, algorithm, isa)


def _kernel_grad_transpose_g(ct, x, g, *, kernel_size, stride, pads, dilation, algorithm, isa):
  return conv(x, ad.instantiate_zeros(ct), stride, pads, dilation, algorithm, isa)


ad.defbilinear(conv_p, _conv_transpose_x, _conv_transpose_w)
ad.defbilinear(kernel_grad_p, _kernel_grad_transpose_x, _kernel_grad_transpose_g)


def _batch_both(fun, args, dims):
  """Maps ``fun`` over a vmapped axis, moved to the front of (or broadcast onto) each operand.

  Where that axis is sharded over explicit mesh axes (a scan may not run over a sharded axis),
  each device maps over its own slice (``shard_map`` over those axes).
  """
  size = next(a.shape[d] for a, d in zip(args, dims) if d is not None)
  args = [jnp.broadcast_to(a, (size, *a.shape)) if d is None else jnp.moveaxis(a, d, 0) for a, d in zip(args, dims)]
  mapped = lambda *ab: lax.map(lambda t: fun(*t), tuple(ab))
  shardings = [jax.typeof(a).sharding for a in args]
  lead = next((s.spec[0] for s in shardings if len(s.spec) and s.spec[0] is not None), None)
  if lead is None:
    return mapped(*args), 0
  mesh = next(s.mesh for s in shardings if len(s.spec) and s.spec[0] is not None)
  spec = P(lead)
  args = [a if jax.typeof(a).sharding.spec[0] == lead else jax.sharding.reshard(a, spec) for a in args]
  axes = {lead} if isinstance(lead, str) else set(lead)
  return jax.shard_map(mapped, mesh=mesh, in_specs=(spec,) * len(args), out_specs=spec, axis_names=axes)(*args), 0


def _conv_batch(args, dims, *, stride, pads, dilation, algorithm, isa):
  (x, w), (bx, bw) = args, dims
  if bw is None:  # fold the vmapped axis into the batch axis
    x = jnp.moveaxis(x, bx, 0)
    b, n = x.shape[:2]
    y = conv(x.reshape(b * n, *x.shape[2:]), w, stride, pads, dilation, algorithm, isa)
    return y.reshape(b, n, *y.shape[1:]), 0
  return _batch_both(lambda a, c: conv(a, c, stride, pads, dilation, algorithm, isa), (x, w), (bx, bw))


def _kernel_grad_batch(args, dims, *, kernel_size, stride, pads, dilation, algorithm, isa):
  return _batch_both(lambda a, c: kernel_grad(a, c, kernel_size, stride, pads, dilation, algorithm, isa), args,
                     dims)


batching.primitive_batchers[conv_p] = _conv_batch
batching.primitive_batchers[kernel_grad_p] = _kernel_grad_batch


from jaxconv.ops._native import _lowering  # noqa: E402  (registers the primitives' lowerings)

_lowering.register(conv_p, kernel_grad_p)
