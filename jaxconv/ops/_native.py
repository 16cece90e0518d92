r"""Native float32 convolution kernels for XLA:CPU, built from source on first use.

XLA:CPU computes a 3x3 convolution with 64 channels at about a third of the speed its own
matrix product reaches on the same cores, and its kernel gradient slower still. The C++ file
``_native/conv.cc`` holds direct-convolution kernels for AVX-512 (register-blocked over
output pixels and channels, threaded on XLA's intra-op pool) that run at about matrix-product
speed, Winograd F(4x4, 3x3) kernels for 3x3 stride-1 convolutions that do a quarter of the
multiplications, and depthwise kernels; see its header for the algorithms. They are called through the XLA FFI as
two JAX primitives:

* ``conv(x, w)``: ``y = conv_general_dilated(x, w, stride, pads, rhs_dilation)`` for 2-D
  channels-last inputs, one feature group, float32;
* ``kernel_grad(x, g)``: the transpose of ``w -> conv(x, w)`` applied to ``g``,
  ``dw[i, j, c, o] = sum_{n, h, v} x_pad[n, h s + i d, v s + j d, c] g[n, h, v, o]``.

Both take ``algorithm="direct"`` (any kernel, stride and dilation), ``"winograd"`` (3x3,
stride 1, no dilation; float32 error a few 1e-6 of the largest value, against about 4e-7 for
direct summation) or ``"depthwise"`` (``w: [KH, KW, 1, C]``, one feature group per channel).

Both are bilinear, and each one's transposes are the other or itself:

* ``conv`` transposed in ``x`` (the input gradient) is ``conv`` of the output gradient with the
  kernel flipped in space and its channel axes swapped (:func:`input_grad`; with a stride, one
  such convolution per phase of the stride, with the taps that reach it);
* ``conv`` transposed in ``w`` is ``kernel_grad``;
* ``kernel_grad`` transposed in ``g`` is ``conv(x, .)``, and in ``x`` the input gradient above.

The transposes keep the algorithm (a Winograd convolution's input gradient is a stride-1 3x3
convolution too). So reverse mode, forward mode and derivatives of any order stay native.
``vmap`` folds a batched input into the batch axis and maps over a batched kernel.

**Build.** The shared library is compiled on first use with the system C++ compiler (``$CXX``,
else ``c++``/``g++``) against the XLA FFI headers that jaxlib ships, and cached in
``$JAXCONV_NATIVE_CACHE`` (default ``~/.cache/jaxconv/native``) under a hash of the source, headers,
compiler, CPU and flags. It is used only on x86-64 CPUs with AVX-512F. Set ``JAXCONV_NATIVE=0`` to
never build or use it; without a compiler or AVX-512 the ``"auto"`` plan simply does not pick
it (:func:`status` says why).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import itertools
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import jaxlib
import numpy as np
from jax import lax
from jax.extend import core as jex_core
from jax.interpreters import ad, batching, mlir

_SOURCE = Path(__file__).with_name("_native") / "conv.cc"
_TARGETS = {"jaxconv_conv_forward": "JaxconvConvForward", "jaxconv_conv_kernel_grad": "JaxconvConvKernelGrad",
            "jaxconv_conv_winograd": "JaxconvConvWinograd",
            "jaxconv_conv_kernel_grad_winograd": "JaxconvConvKernelGradWinograd",
            "jaxconv_depthwise_forward": "JaxconvDepthwiseForward",
            "jaxconv_depthwise_kernel_grad": "JaxconvDepthwiseKernelGrad"}
# -march=native: the library is built on the machine that runs it (and the CPU is part of the
# cache key); generic -mavx512f tuning measured 20% slower.
_FLAGS = ("-O3", "-march=native", "-std=c++17", "-shared", "-fPIC")


def _cache_dir() -> Path:
  if os.environ.get("JAXCONV_NATIVE_CACHE"):
    return Path(os.environ["JAXCONV_NATIVE_CACHE"])
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return Path(base) / "jaxconv" / "native"


def _cpu_description() -> str:
  """The first CPU's model name and flags (Linux), or "" where /proc/cpuinfo cannot be read."""
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      lines = [l for l in f.read().split("\n\n")[0].splitlines() if l.startswith(("model name", "flags"))]
  except OSError:
    return ""
  return "\n".join(lines)


def _cpu_has_avx512() -> bool:
  if platform.machine().lower() not in ("x86_64", "amd64"):
    return False
  flags = next((l for l in _cpu_description().splitlines() if l.startswith("flags")), "")
  return "avx512f" in flags.split()


def _compiler() -> str | None:
  for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
    if name and shutil.which(name):
      return shutil.which(name)
  return None


def _build(cxx: str) -> Path:
  include = Path(jax.ffi.include_dir())
  h = hashlib.sha256()
  h.update(_SOURCE.read_bytes())
  for header in ("ffi.h", "c_api.h", "api.h"):
    h.update((include / "xla" / "ffi" / "api" / header).read_bytes())
  version = subprocess.run([cxx, "--version"], capture_output=True, text=True, check=True).stdout
  h.update("\0".join((cxx, version, jaxlib.__version__, _cpu_description(), *_FLAGS)).encode())
  out = _cache_dir() / f"libjaxconv_native-{h.hexdigest()[:16]}.so"
  if out.exists():
    return out
  out.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
  os.close(fd)
  try:
    cmd = [cxx, *_FLAGS, "-I", str(include), str(_SOURCE), "-o", tmp, "-lpthread"]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
      raise RuntimeError(f"{' '.join(cmd)} failed:\n{res.stderr[-2000:]}")
    os.replace(tmp, out)  # atomic: concurrent builders (test workers) each install a whole file
  finally:
    if os.path.exists(tmp):
      os.unlink(tmp)
  return out


_LOCK = threading.Lock()


def status() -> tuple[bool, str]:
  """``(True, path)`` once the kernels are built and registered, else ``(False, reason)``.

  Example:
    >>> from jaxconv.ops._native import status
    >>> ok, where = status()
    >>> isinstance(ok, bool) and isinstance(where, str)
    True
  """
  with _LOCK:  # one build and one registration per process, whichever thread asks first
    return _status()


@functools.cache
def _status() -> tuple[bool, str]:
  if os.environ.get("JAXCONV_NATIVE", "1").strip().lower() in ("0", "false", "no", "off"):
    return False, "disabled by JAXCONV_NATIVE=0"
  if not _cpu_has_avx512():
    return False, "the CPU has no AVX-512F (or this is not x86-64 Linux)"
  cxx = _compiler()
  if cxx is None:
    return False, "no C++ compiler found ($CXX, c++, g++ or clang++)"
  try:
    path = _build(cxx)
    lib = ctypes.CDLL(str(path))
    for name, symbol in _TARGETS.items():
      jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(getattr(lib, symbol)), platform="cpu")
  except (OSError, RuntimeError, subprocess.SubprocessError, AttributeError) as e:
    return False, f"building the native kernels failed: {e}"
  return True, str(path)


def available() -> bool:
  """Whether the native kernels can be used in this process (built on the first call)."""
  return status()[0]


# --------------------------------------------------------------------------------------------
# The two primitives. Shapes: x [N, H, W, C], w [KH, KW, C, O], y/g [N, Ho, Wo, O].


def _out_size(n: int, k: int, lo: int, hi: int, s: int, d: int) -> int:
  return (n + lo + hi - (k - 1) * d - 1) // s + 1


def _attrs(stride, pads, dilation) -> dict:
  """FFI attributes: strides, dilations and the padding before the first row/column (the
  kernels pad on the fly; the output shape implies the padding after)."""
  return dict(sh=np.int64(stride[0]), sw=np.int64(stride[1]), dh=np.int64(dilation[0]), dw=np.int64(dilation[1]),
              ph=np.int64(pads[0][0]), pw=np.int64(pads[1][0]))


def _conv_shape(x_shape, w_shape, stride, pads, dilation) -> tuple[int, ...]:
  sp = tuple(_out_size(x_shape[1 + i], w_shape[i], *pads[i], stride[i], dilation[i]) for i in range(2))
  return (x_shape[0], *sp, w_shape[3])


def _require() -> None:
  ok, why = status()
  if not ok:
    raise RuntimeError(f"jaxconv's native convolution kernels are not available: {why}.")


ALGORITHMS = ("direct", "winograd", "depthwise")


def winograd_applies(w_shape, stride, dilation) -> bool:
  """Whether ``conv(..., algorithm="winograd")`` computes this convolution: 3x3, stride 1, no dilation."""
  return tuple(w_shape[:2]) == (3, 3) and tuple(stride) == (1, 1) and tuple(dilation) == (1, 1)


def _conv_impl(x, w, *, stride, pads, dilation, algorithm):
  _require()
  out = jax.ShapeDtypeStruct(_conv_shape(x.shape, w.shape, stride, pads, dilation), jnp.float32)
  if algorithm == "winograd":
    return jax.ffi.ffi_call("jaxconv_conv_winograd", out)(x, w, ph=np.int64(pads[0][0]), pw=np.int64(pads[1][0]))
  target = "jaxconv_depthwise_forward" if algorithm == "depthwise" else "jaxconv_conv_forward"
  return jax.ffi.ffi_call(target, out)(x, w, **_attrs(stride, pads, dilation))


def _kernel_grad_shape(x_shape, g_shape, kernel_size, algorithm) -> tuple[int, ...]:
  return (*kernel_size, 1 if algorithm == "depthwise" else x_shape[3], g_shape[3])


def _kernel_grad_impl(x, g, *, kernel_size, stride, pads, dilation, algorithm):
  _require()
  out = jax.ShapeDtypeStruct(_kernel_grad_shape(x.shape, g.shape, kernel_size, algorithm), jnp.float32)
  if algorithm == "winograd":
    return jax.ffi.ffi_call("jaxconv_conv_kernel_grad_winograd", out)(x, g, ph=np.int64(pads[0][0]),
                                                                       pw=np.int64(pads[1][0]))
  target = "jaxconv_depthwise_kernel_grad" if algorithm == "depthwise" else "jaxconv_conv_kernel_grad"
  return jax.ffi.ffi_call(target, out)(x, g, **_attrs(stride, pads, dilation))


conv_p = jex_core.Primitive("jaxconv_native_conv")
kernel_grad_p = jex_core.Primitive("jaxconv_native_conv_kernel_grad")
conv_p.def_impl(_conv_impl)
kernel_grad_p.def_impl(_kernel_grad_impl)
conv_p.def_abstract_eval(
    lambda x, w, *, stride, pads, dilation, algorithm: jax.core.ShapedArray(
        _conv_shape(x.shape, w.shape, stride, pads, dilation), jnp.float32))
kernel_grad_p.def_abstract_eval(
    lambda x, g, *, kernel_size, stride, pads, dilation, algorithm: jax.core.ShapedArray(
        _kernel_grad_shape(x.shape, g.shape, kernel_size, algorithm), jnp.float32))
mlir.register_lowering(conv_p, mlir.lower_fun(_conv_impl, multiple_results=False), platform="cpu")
mlir.register_lowering(kernel_grad_p, mlir.lower_fun(_kernel_grad_impl, multiple_results=False), platform="cpu")


def conv(x: jax.Array, w: jax.Array, stride: Sequence[int], pads, dilation: Sequence[int],
         algorithm: str = "direct") -> jax.Array:
  """``lax.conv_general_dilated(x, w, stride, pads, rhs_dilation=dilation)``, NHWC/HWIO, float32.

  ``algorithm``: ``"direct"`` (any kernel), ``"winograd"`` (F(4x4, 3x3); 3x3 kernels with stride
  1 and no dilation, see :func:`winograd_applies`) or ``"depthwise"`` (``w: [KH, KW, 1, C]``,
  one feature group per channel: ``feature_group_count=C``). The gradients (and their
  transposes) use the same algorithm.
  """
  _check_algorithm(algorithm, w.shape, stride, dilation)
  return conv_p.bind(x, w, stride=tuple(stride), pads=tuple(map(tuple, pads)), dilation=tuple(dilation),
                     algorithm=algorithm)


def kernel_grad(x: jax.Array, g: jax.Array, kernel_size, stride, pads, dilation,
                algorithm: str = "direct") -> jax.Array:
  """The transpose of ``w -> conv(x, w, ..., algorithm)`` applied to ``g``: ``[KH, KW, C, O]``
  (depthwise: ``[KH, KW, 1, C]``)."""
  _check_algorithm(algorithm, kernel_size, stride, dilation)
  return kernel_grad_p.bind(x, g, kernel_size=tuple(kernel_size), stride=tuple(stride),
                            pads=tuple(map(tuple, pads)), dilation=tuple(dilation), algorithm=algorithm)


def _check_algorithm(algorithm, kernel_size, stride, dilation) -> None:
  if algorithm not in ALGORITHMS:
    raise ValueError(f"algorithm must be one of {ALGORITHMS}; got {algorithm!r}.")
  if algorithm == "winograd" and not winograd_applies(kernel_size, stride, dilation):
    raise ValueError(f"algorithm='winograd' needs a 3x3 kernel, stride 1 and no dilation; got kernel "
                     f"{tuple(kernel_size[:2])}, stride {tuple(stride)}, dilation {tuple(dilation)}.")


def input_grad(g: jax.Array, w: jax.Array, x_shape, stride, pads, dilation, algorithm: str = "direct") -> jax.Array:
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
    phase = conv(g, sub, (1, 1), tuple(zip(lo, hi)), (1, 1), algorithm)
    placed = lax.pad(phase, jnp.zeros((), phase.dtype),
                     ((0, 0, 0), (t0h, x_shape[1] - t0h - (nh - 1) * stride[0] - 1, stride[0] - 1),
                      (t0w, x_shape[2] - t0w - (nw - 1) * stride[1] - 1, stride[1] - 1), (0, 0, 0)))
    out = placed if out is None else out + placed
  if out is None:
    return jnp.zeros(x_shape, g.dtype)
  return out


def _conv_transpose_x(ct, x, w, *, stride, pads, dilation, algorithm):
  return input_grad(ad.instantiate_zeros(ct), w, x.aval.shape, stride, pads, dilation, algorithm)


def _conv_transpose_w(ct, x, w, *, stride, pads, dilation, algorithm):
  return kernel_grad(x, ad.instantiate_zeros(ct), w.aval.shape[:2], stride, pads, dilation, algorithm)


def _kernel_grad_transpose_x(ct, x, g, *, kernel_size, stride, pads, dilation, algorithm):
  return input_grad(g, ad.instantiate_zeros(ct), x.aval.shape, stride, pads, dilation, algorithm)


def _kernel_grad_transpose_g(ct, x, g, *, kernel_size, stride, pads, dilation, algorithm):
  return conv(x, ad.instantiate_zeros(ct), stride, pads, dilation, algorithm)


ad.defbilinear(conv_p, _conv_transpose_x, _conv_transpose_w)
ad.defbilinear(kernel_grad_p, _kernel_grad_transpose_x, _kernel_grad_transpose_g)


def _batch_both(fun, args, dims):
  """Maps ``fun`` over a vmapped axis, moved to the front of (or broadcast onto) each operand."""
  size = next(a.shape[d] for a, d in zip(args, dims) if d is not None)
  args = [jnp.broadcast_to(a, (size, *a.shape)) if d is None else jnp.moveaxis(a, d, 0) for a, d in zip(args, dims)]
  return lax.map(lambda ab: fun(*ab), tuple(args)), 0


def _conv_batch(args, dims, *, stride, pads, dilation, algorithm):
  (x, w), (bx, bw) = args, dims
  if bw is None:  # fold the vmapped axis into the batch axis
    x = jnp.moveaxis(x, bx, 0)
    b, n = x.shape[:2]
    y = conv(x.reshape(b * n, *x.shape[2:]), w, stride, pads, dilation, algorithm)
    return y.reshape(b, n, *y.shape[1:]), 0
  return _batch_both(lambda a, c: conv(a, c, stride, pads, dilation, algorithm), (x, w), (bx, bw))


def _kernel_grad_batch(args, dims, *, kernel_size, stride, pads, dilation, algorithm):
  return _batch_both(lambda a, c: kernel_grad(a, c, kernel_size, stride, pads, dilation, algorithm), args, dims)


batching.primitive_batchers[conv_p] = _conv_batch
batching.primitive_batchers[kernel_grad_p] = _kernel_grad_batch
