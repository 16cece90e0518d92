r"""Convolution formulations for XLA:CPU, and the derivative rule that picks one per pass.

:func:`jaxconv.ops.conv` ends in one call, :func:`conv_general`, which computes

.. math::
   y[n, i, o] = \sum_{j, c} w[j, c, o] \; x[n, i \cdot s + j \cdot d, g(o) C_g + c]

on an input ``x: [N, *spatial, C_in]`` that is already padded (or is padded here with zeros by
``pads``), a kernel ``w: [*k, C_g, C_out]`` (``C_g = C_in / groups``), stride ``s`` and kernel
dilation ``d``; ``i`` runs over the ``out = floor((in + lo + hi - (k - 1) d - 1) / s) + 1``
output positions and ``j`` over the ``K = prod(k)`` kernel taps. XLA computes the forward pass
fast on CPU, but its automatic kernel gradient runs at a small fraction of the machine's matmul
speed, and its 1x1 and stem (few input channels) convolutions are slow too. Every pass is
therefore computed by one of these *formulations*, chosen per pass and per shape:

``"xla"``
  :func:`jax.lax.conv_general_dilated` and, for the derivatives, XLA's own transposes of it.

``"taps"``
  Write ``X_j = x[:, j d : j d + (out - 1) s + 1 : s, :]``, the input seen by tap ``j`` (a strided
  slice, ``[N, *out, C_in]``). Then ``y = sum_j X_j @ w[j]``: one matrix product per tap over the
  ``M = N * prod(out)`` rows. A 1x1 convolution is the single product ``X_0 @ w[0]`` (with a
  stride, ``X_0`` is a strided slice): the forward, both gradients and their transposes are plain
  matmuls.

``"im2col"``
  Stack the taps along channels, ``P = [X_0, ..., X_{K-1}]`` (``[M, K C_in]``, the patch matrix),
  and ``y = P @ w.reshape(K C_in, C_out)``: one large product instead of ``K`` small ones.

``"winograd"``
  For 2-D 3x3 convolutions with stride 1, no dilation and no groups (in float32/float64), the
  minimal-filtering algorithm F(4x4, 3x3) of Lavin & Gray (2016). Cut the padded input into
  6x6 tiles ``d`` that overlap by 2 (one per 4x4 block of output) and compute, per tile,

  .. math::
     Y = A^\top \big[ (G\, w\, G^\top) \odot (B^\top d\, B) \big] A ,

  with the constant Toom-Cook matrices ``B^T`` (6x6), ``G`` (6x3) and ``A^T`` (4x6) built on
  the points 0, +-1, +-2 and infinity. With channels, ``\odot`` becomes 36 independent matrix
  products ``V_k [T, C_in] @ U_k [C_in, C_out]`` over the ``T`` tiles (``k`` runs over the 6x6
  transformed positions): 36 products of 1/16 the rows replace 9 of full size, 4x fewer
  multiplications. The transforms are cheap fused elementwise passes. In float32 the result
  differs from direct summation by about 2e-6 relative (direct: 4e-7). Its **kernel gradient**
  is the transpose in ``w``: ``dU_k = V_k^T dM_k`` with ``dM = A dY A^T`` per tile and
  ``dw = G^T dU G``, i.e. 36 products over all tiles instead of 9 over all pixels; on XLA:CPU
  this is the fastest kernel gradient for ResNet's 3x3 layers. (Its input gradient, a
  transposed input transform, is slow on XLA:CPU, and XLA's own forward is as fast.) Other
  convolutions given ``"winograd"`` use what ``"auto"`` picks for that pass. In float32 on a CPU
  with the native kernels (below), all three passes run natively instead: the forward and the
  input gradient (a stride-1 3x3 convolution of the output gradient with the flipped kernel)
  as fused tile transforms around the direct kernels' register block, the kernel gradient as
  ``dU_k = V_k^T dM_k`` per chunk of tiles, faster than the native direct kernels on ResNet's
  3x3 layers (``benchmarks/results/conv-grad-cpu.md``).

``"native"``
  Direct-convolution kernels in C++, called through the XLA FFI (:mod:`jaxconv.ops._native`;
  built on first use in three variants, AVX-512, AVX2+FMA and portable C++, one of which is
  chosen from the CPU at load time, see :func:`jaxconv.ops.native_status`): the forward keeps a block of 6 output
  pixels x 64 output channels in registers and sums ``x * w`` over taps and input channels,
  padding on the fly; the kernel gradient keeps 6 input channels x 64 output channels and sums
  ``x * g`` over pixels; the input gradient is the forward kernel applied to the output
  gradient with the flipped, channel-swapped kernel (one call per stride phase). They run at
  about the machine's matrix-product speed, several times XLA's kernel gradient (per-layer
  figures: ``benchmarks/results/conv-grad-cpu.md``). Depthwise convolutions (one input channel per group,
  multiplier 1) have their own kernels: a multiply-add over taps with 6 pixels x 64 channels in
  registers, and a kernel gradient reducing up to 8 taps x 16 channels over pixels. They apply
  to 1-D and 2-D float32 convolutions with one feature group or depthwise, on x86-64 CPUs where
  a C++ compiler is found; elsewhere (or with ``conv_config(native=False)``) ``"native"`` means
  ``"auto"``. (Register blocks are per variant: the AVX-512 sizes are quoted here.)

**Kernel gradient.** ``y`` is linear in ``w`` with ``dy = sum_j X_j @ dw[j]``; its transpose maps
the output gradient ``g: [M, C_out]`` to

.. math::
   \bar w[j] = X_j^\top g \quad (\text{one } C_{in} \times M \text{ by } M \times C_{out}
   \text{ product per tap}), \qquad \bar w = P^\top g \text{ (im2col)},

the correlation of the input with the output gradient, summed over batch and positions.
**Input gradient.** ``y`` is linear in ``x``; the transpose of a strided slice is a strided
scatter (a zero-filled pad with ``s - 1`` interior zeros), so

.. math::
   \bar x = \sum_j \mathrm{scatter}_j(g \; w[j]^\top) ,

i.e. a true convolution of the stride-dilated output gradient with the kernel. Written as one
convolution, it is ``conv(dilate_s(g), flip(w)^{IO})`` with ``lhs_dilation = s``, padding
``(k - 1) d - lo`` and the kernel flipped in space and with its channel axes swapped: that is
what ``"xla"`` computes for the input gradient. **Grouped** convolutions split channels into
``G`` blocks and run the same products batched over the group axis (``[G, M, K C_g] x
[G, K C_g, C_out / G]``). **Depthwise** ones (``C_g = 1``, multiplier ``m``) have no matrix
product left: ``y[.., c m + r] = sum_j X_j[.., c] w[j, 0, c m + r]`` is an elementwise
multiply-add that XLA fuses into one loop, and its gradients are fused reductions and pads.

**How the pieces are put together.** The convolution is a :func:`jax.custom_jvp` whose tangent is

.. math::
   \dot y = \mathrm{conv}_{A}(\dot x, w) + \mathrm{conv}_{B}(x, \dot w),

with ``A`` the formulation chosen for the input gradient and ``B`` the one for the kernel
gradient. Reverse mode transposes each linear term, so ``A``'s transpose *is* the input-gradient
algorithm above and ``B``'s the kernel-gradient one; nothing is hand-transposed, and forward
mode, :func:`jax.vmap`, ``grad`` of ``grad``, :func:`jax.hessian` and sharded ``jit`` all work
because every piece is an ordinary differentiable JAX op. Each term is wrapped in
:func:`jax.checkpoint`, so the residual kept for the backward pass is ``x`` itself, never the
``K``-times larger patch matrix. Large batches are processed in chunks of a few images
(:func:`jax.lax.scan` with a checkpointed body), so each chunk's patches stay in cache: on
XLA:CPU this doubles the speed of the kernel gradient of a 32x32x64 layer.

Caveats: the chunks are contiguous slices of the batch, and a scan cannot run over a sharded
axis. Where the batch is sharded over explicit mesh axes (``jax.make_mesh``'s default), each
device chunks its own shard (a ``shard_map`` over those axes); inside a ``jax.set_mesh`` context
with automatic axes, where the trace cannot see how the batch is sharded, the batch is not
chunked. Under plain ``jit`` of batch-sharded inputs with no mesh context the partitioner
gathers each chunk (results stay equal; there use ``conv_config(chunk_bytes=0)``). The
``"native"`` kernels are custom calls with partitioning rules (:mod:`jaxconv.ops._native._lowering`):
each device runs them on its own shard of the batch; ``jax.export`` lowers them to XLA's
convolution.

The choice (``"auto"``) follows rules measured with ``benchmarks/conv_grad.py`` (results in
``benchmarks/results/conv-grad-cpu.md``); off CPU everything stays ``"xla"``, and a function
traced on a CPU but lowered for another platform (``jax.export`` with ``platforms=("cpu",
"cuda")``) runs XLA's convolution there in every pass that ``"auto"`` chose for the CPU
(``lax.platform_dependent``; lowering for one platform keeps only its branch). Override it with
:func:`conv_config` or the ``JAXCONV_CONV`` environment variable (read at import), e.g.
``JAXCONV_CONV="backward=xla,forward=xla"``.

Example:
  >>> import jax, jax.numpy as jnp
  >>> from jaxconv.ops import conv, conv_config
  >>> x, w = jnp.ones((2, 5, 5, 3)), jnp.ones((3, 3, 3, 4))
  >>> loss = lambda w: conv(x, w, padding="SAME").sum()
  >>> with conv_config(backward="taps"):
  ...   g_taps = jax.grad(loss)(w)
  >>> with conv_config(backward="xla", forward="xla"):
  ...   g_xla = jax.grad(loss)(w)
  >>> bool(jnp.allclose(g_taps, g_xla)), g_taps[1, 1, 0, 0]   # centre tap sees all 2*25 pixels
  (True, Array(50., dtype=float32))
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
import itertools
import math
import os
from collections.abc import Iterator, Sequence
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxconv.ops import _jax_internals, _native

STRATEGIES = ("auto", "xla", "taps", "im2col", "winograd", "native", "narrow")
_PASSES = ("forward", "input_grad", "kernel_grad")
_SPATIAL = {1: "W", 2: "HW", 3: "DHW"}
# Images per chunk are chosen so that one chunk of the padded input stays within this many
# bytes (about the size of a core's L2 cache: 0.5-1 MiB was best for ResNet-18's layers).
_CHUNK_BYTES = 1 << 20

_DEFAULTS = {**{p: "auto" for p in _PASSES}, "chunk_bytes": _CHUNK_BYTES, "native": True, "winograd": True,
             "native_isa": "env"}  # "env": as JAXCONV_NATIVE_ISA says (default auto), read at use
_SWITCHES = ("native", "winograd")


def _parse_env(text: str) -> dict:
  """Parses ``JAXCONV_CONV="backward=taps,forward=xla"`` (or a single strategy for every pass)."""
  out = dict(_DEFAULTS)
  text = text.strip()
  if not text:
    return out
  if "=" not in text:
    return _merge(out, forward=text, backward=text, source="JAXCONV_CONV")
  kw = {}
  for item in text.split(","):
    k, sep, v = item.partition("=")
    if not sep:
      raise ValueError(f"JAXCONV_CONV must look like 'backward=taps,forward=xla'; got {text!r}.")
    k, v = k.strip(), v.strip()
    if k in _SWITCHES:
      if v.lower() not in ("0", "1", "true", "false", "on", "off"):
        raise ValueError(f"JAXCONV_CONV: {k} must be 0/1, true/false or on/off; got {v!r}.")
      v = v.lower() in ("1", "true", "on")
    elif k == "chunk_bytes":
      try:
        v = int(v)
      except ValueError:
        raise ValueError(f"JAXCONV_CONV: chunk_bytes must be an int; got {v!r}.") from None
    kw[k] = v
  return _merge(out, source="JAXCONV_CONV", **kw)


def _merge(base: dict, source: str = "conv_config", **kw: Any) -> dict:
  allowed = ("forward", "backward", "input_grad", "kernel_grad", "chunk_bytes", "native", "winograd", "native_isa")
  out = dict(base)
  for k, v in kw.items():
    if k not in allowed:
      raise ValueError(f"{source}: unknown setting {k!r}; accepted settings are {allowed}.")
    if v is None:
      continue
    if k in _SWITCHES:
      if not isinstance(v, (bool, np.bool_)):
        raise ValueError(f"{source}: {k} must be True or False; got {v!r}.")
      out[k] = bool(v)
      continue
    if k == "native_isa":
      if not isinstance(v, str) or v.lower() not in ("auto", *_native.ISAS):
        raise ValueError(f"{source}: native_isa must be one of {('auto', *_native.ISAS)}; got {v!r}.")
      out[k] = v.lower()
      continue
    if k == "chunk_bytes":
      if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 0:
        raise ValueError(f"{source}: chunk_bytes must be a non-negative int (0 = no chunking); got {v!r}.")
      out[k] = int(v)
      continue
    if not isinstance(v, str) or v.lower() not in STRATEGIES:
      raise ValueError(f"{source}: {k} must be one of {STRATEGIES}; got {v!r}.")
    v = v.lower()
    if k == "backward":
      out["input_grad"] = out["kernel_grad"] = v
    else:
      out[k] = v
  return out


_KEYS = ("forward", "input_grad", "kernel_grad", "chunk_bytes", "native", "winograd", "native_isa")


def _encode(cfg: dict) -> str:
  return ",".join(f"{k}={cfg[k]}" for k in _KEYS)


@functools.lru_cache(maxsize=64)
def _decode(text: str) -> dict:
  out = dict(item.split("=") for item in text.split(","))
  out["chunk_bytes"] = int(out["chunk_bytes"])
  for k in _SWITCHES:
    out[k] = out[k] == "True"
  return out


_ENV_DEFAULT = _parse_env(os.environ.get("JAXCONV_CONV", ""))
_CONFIG: contextvars.ContextVar[dict] = contextvars.ContextVar("jaxconv_conv_config", default=_ENV_DEFAULT)


# The plan as a JAX config state, part of jit's cache key (a jitted function retraces under a
# different conv_config); None where that private API is missing (then _CONFIG, read at trace).
_STATE = _jax_internals.jit_keyed_state("jaxconv_conv", _encode(_ENV_DEFAULT),
                                        "jaxconv.ops.conv formulation plan (set with jaxconv.ops.conv_config).")


def _current() -> dict:
  if _STATE is not None:
    return dict(_decode(_STATE.value))
  return _CONFIG.get()


@contextlib.contextmanager
def conv_config(
    *,
    forward: Optional[str] = None,
    backward: Optional[str] = None,
    input_grad: Optional[str] = None,
    kernel_grad: Optional[str] = None,
    chunk_bytes: Optional[int] = None,
    native: Optional[bool] = None,
    winograd: Optional[bool] = None,
    native_isa: Optional[str] = None,
) -> Iterator[dict]:
  """Chooses the formulation of each convolution pass inside a ``with`` block.

  Each setting is one of ``"auto"`` (measured per-shape rules; the default), ``"xla"``
  (:func:`jax.lax.conv_general_dilated` and XLA's own gradients), ``"taps"`` (one matmul per
  kernel tap), ``"im2col"`` (one matmul over the patch matrix), ``"winograd"`` (F(4x4, 3x3)
  minimal filtering, for 2-D 3x3 stride-1 convolutions; on others it means ``"auto"``), or the
  native CPU kernels ``"native"`` (direct) and ``"narrow"`` (vectors over output columns, for
  layers with few channels; one feature group), which mean ``"auto"`` where they do not run.
  ``backward`` sets both ``input_grad`` and ``kernel_grad``; ``None`` keeps the enclosing
  setting. ``chunk_bytes`` bounds the padded input of one batch chunk in the
  ``taps``/``im2col``/``winograd`` formulations
  (0 = the whole batch at once).

  Three run-time switches govern the native CPU kernels: ``native=False`` never uses them
  (``"native"`` then means ``"auto"``, and Winograd runs as the XLA formulation),
  ``winograd=False`` never uses Winograd (``"auto"`` does not pick it, and ``"winograd"`` means
  ``"auto"``), and ``native_isa`` forces a variant of the native kernels (``"avx512"``,
  ``"avx2"``, ``"portable"``; ``"auto"``: the best this CPU runs, see
  :func:`jaxconv.ops.native_status`). Their defaults come from ``JAXCONV_NATIVE=0`` and
  ``JAXCONV_NATIVE_ISA``.

  The setting is part of :func:`jax.jit`'s cache key (through a JAX config state), so a
  jitted function retraces when called under a different setting. (Should that private JAX
  hook be unavailable, the setting is read at trace time only.)

  Args:
    forward: formulation of the forward pass.
    backward: formulation of both gradients.
    input_grad: formulation of the gradient with respect to the input (overrides ``backward``).
    kernel_grad: formulation of the gradient with respect to the kernel (overrides ``backward``).
    chunk_bytes: chunk size bound in bytes, or ``None`` to keep it.
    native: whether the native CPU kernels may be used.
    winograd: whether Winograd F(4x4, 3x3) may be used.
    native_isa: the native kernels' variant, ``"auto"`` or one this CPU runs.

  Yields:
    The settings in force inside the block (a dict).

  Raises:
    ValueError: for an unknown strategy name, or a ``native_isa`` this CPU cannot run.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxconv.ops import conv, conv_config
    >>> with conv_config(forward="im2col", backward="taps") as cfg:
    ...   y = conv(jnp.ones((1, 4, 4, 2)), jnp.ones((3, 3, 2, 1)))
    >>> y[0, :, :, 0], cfg["kernel_grad"]
    (Array([[18., 18.],
           [18., 18.]], dtype=float32), 'taps')
  """
  if backward is not None:
    _merge({}, backward=backward)  # validate before applying the finer settings on top
  new = _merge(_current(), forward=forward, backward=backward, chunk_bytes=chunk_bytes)
  new = _merge(new, input_grad=input_grad, kernel_grad=kernel_grad, native=native, winograd=winograd,
               native_isa=native_isa)
  if native_isa is not None:
    _native.resolve_isa(new["native_isa"], "conv_config(native_isa)")
  if _STATE is not None:
    with _STATE(_encode(new)):
      yield dict(new)
    return
  token = _CONFIG.set(new)
  try:
    yield dict(new)
  finally:
    _CONFIG.reset(token)


def native_isa() -> Optional[str]:
  """The native kernels' variant that the current setting runs, or ``None`` when they are off
  (``native=False``, ``JAXCONV_NATIVE=0``) or unavailable (see :func:`jaxconv.ops.native_status`)."""
  cfg = _current()
  if not cfg["native"]:
    return None
  s = _native.status(None if cfg["native_isa"] == "env" else cfg["native_isa"])
  return s.isa if s.available else None


# --------------------------------------------------------------------------------------------
# The plan: which formulation each pass uses.


@dataclasses.dataclass(frozen=True)
class Spec:
  """Static description of one convolution and the formulation chosen for each pass."""

  stride: tuple[int, ...]
  pads: tuple[tuple[int, int], ...]
  dilation: tuple[int, ...]
  groups: int
  precision: Any
  preferred_element_type: Any
  forward: str
  input_grad: str
  kernel_grad: str
  chunk_bytes: int
  isa: Optional[str] = None  # the native kernels' variant where any pass runs them
  # Passes whose formulation "auto" chose for the CPU and that are not native kernels (those lower
  # per platform by themselves): lowered for another platform (jax.export with platforms=("cpu",
  # "cuda"), say), they are XLA's convolution there.
  cpu_passes: tuple[str, ...] = ()


def auto_plan(
    x_shape: Sequence[int],
    kernel_shape: Sequence[int],
    stride: Sequence[int],
    groups: int,
    backend: str,
    dilation: Optional[Sequence[int]] = None,
    dtype: Any = None,
    native: Optional[bool] = None,
    isa: Optional[str] = None,
) -> dict:
  """The formulation ``"auto"`` picks for each pass, from rules measured on XLA:CPU.

  Where the ``"native"`` kernels are available and apply (see :func:`native_applies`) and the
  convolution has at least 16 output channels, every pass is ``"native"`` except the forward
  and input gradient of unstrided 1x1 convolutions (plain matrix products, as fast in XLA) and
  the input gradient (and, up to 16 output channels, the kernel gradient) of convolutions with
  fewer than 16 input channels, which run on the ``"narrow"`` kernels (vectors over output
  columns instead of 16 channels, most of which would idle). With fewer than 16 output channels
  all three passes are ``"narrow"`` (the input gradient ``"native"`` from 16 input channels).
  3x3 stride-1 convolutions run all three passes as native ``"winograd"`` where the batch has
  at least 64 4x4 output tiles, mostly inside the output (see ``_winograd_pays``); with fewer
  than 16 input channels only the two gradients do (the stem's forward gains nothing).
  Depthwise convolutions (multiplier 1) run all three passes on the native depthwise kernels.
  The portable variant keeps Winograd, narrow and depthwise layers on its kernels and runs the
  other passes as without them (``_portable_plan``).
  The rules below are for machines without them.

  Off CPU every pass is ``"xla"`` (XLA's own is the fastest there,
  ``benchmarks/results/conv-grad-gpu-h100.md``). On CPU the forward and input gradient stay
  ``"xla"`` and the kernel gradient is

  * ``"xla"`` for tiny spatial maps (at most 16 input positions with a kernel larger than 1x1,
    e.g. 4x4x512) and for inputs with fewer than 16 channels (stems: 3 or 1 channels), where
    XLA's own is fastest;
  * ``"winograd"`` where it applies (2-D 3x3, stride 1, no dilation or groups, float32/64):
    ResNet's 3x3 layers;
  * ``"im2col"`` otherwise (one patch-matrix product per cache-sized batch chunk).

  Depthwise convolutions (``C_in / groups == 1``) use ``"im2col"`` (a fused multiply-add over
  taps) for all three passes: XLA:CPU's grouped convolution is several times slower per pass.

  The measurements behind each rule, per layer and per model step, are in
  ``benchmarks/results/conv-grad-cpu.md`` (``python benchmarks/conv_grad.py``),
  ``conv-plans-cpu.md`` and ``lenet5-cpu.md`` (``python benchmarks/conv_plans.py``).

  For dense convolutions the ``"taps"``/``"im2col"`` *forward* (and input gradient) are faster
  alone for most ResNet 3x3 layers and 1x1 convs, but ``"auto"`` does not choose them: no
  rule for them has been measured on whole models. (They were first held back because a jitted
  ResNet-18's ReLU gradients differed from XLA's by up to 1e-1 relative. That turned out to be
  float32 rounding flipping pre-activations that sit within 1e-7 of ReLU's kink: XLA alone does
  the same under a 1e-7 perturbation of one kernel, the formulations match XLA to 1e-14 in
  float64, and with a smooth activation every plan matches float64 as well as XLA does.)

  Args:
    x_shape: ``[N, *spatial, C_in]``.
    kernel_shape: ``[*k, C_in // groups, C_out]``.
    stride: per spatial dimension.
    groups: feature groups.
    backend: ``jax.default_backend()`` (``"cpu"``, ``"gpu"``, ``"tpu"``, ...).
    dilation: kernel dilation per spatial dimension (``None``: 1).
    dtype: the input's dtype (``None``: float32).
    native: whether the native kernels are available (``None``: find out, on CPU).
    isa: their variant (``None``: the current one). The portable variant runs fewer passes
      on its kernels (see ``_portable_plan``).

  Returns:
    ``{"forward": ..., "input_grad": ..., "kernel_grad": ...}``.

  Example:
    >>> from jaxconv.ops._conv_grad import auto_plan
    >>> auto_plan((128, 32, 32, 64), (1, 1, 64, 128), (2, 2), 1, "cpu", native=False)["kernel_grad"]
    'im2col'
    >>> auto_plan((128, 32, 32, 64), (3, 3, 64, 128), (2, 2), 1, "cpu", native=True)
    {'forward': 'native', 'input_grad': 'native', 'kernel_grad': 'native'}
    >>> auto_plan((128, 32, 32, 64), (3, 3, 64, 64), (1, 1), 1, "cpu", native=True)["forward"]
    'winograd'
    >>> auto_plan((128, 32, 32, 64), (3, 3, 64, 64), (1, 1), 1, "gpu")["kernel_grad"]
    'xla'
  """
  if backend != "cpu":
    return {p: "xla" for p in _PASSES}
  dilation = dilation or (1,) * len(stride)
  if native is None:
    isa = native_isa()
    native = isa is not None
  elif native and isa is None:
    isa = native_isa()
  applies = native and native_applies(kernel_shape, groups, dtype or jnp.float32)
  cin, cout = kernel_shape[-2], kernel_shape[-1]
  if applies and groups == 1 and cout < 16:
    # Few output channels: the native kernels' 16-channel vectors would idle, the "narrow" ones
    # vectorize over columns (LeNet-5's first layer). Its input gradient has C_in output channels.
    return {"forward": "narrow", "input_grad": "narrow" if cin < 16 else "native", "kernel_grad": "narrow"}
  if applies and cout >= 16:
    if groups > 1:  # depthwise: far faster than XLA's grouped convolution and "im2col"
      return {p: "native" for p in _PASSES}
    if math.prod(kernel_shape[:-2]) == 1 and max(stride) == 1:  # plain matrix products: XLA's are as fast
      return {"forward": "xla", "input_grad": "xla", "kernel_grad": "native"}
    narrow = x_shape[-1] < 16
    if _winograd_pays(x_shape, kernel_shape, stride, dilation, groups, dtype):
      # Fewer multiplications outweigh idle lanes for narrow inputs too, except in the forward
      # (a 3->64 stem: both gradients gain, the forward ties with the direct kernels).
      plan = {"forward": "native" if narrow else "winograd", "input_grad": "winograd", "kernel_grad": "winograd"}
    else:
      # The input gradient's output channels are C_in: below 16 the "narrow" kernels (LeNet-5's
      # second layer), and for the kernel gradient too up to 16 output channels.
      plan = {"forward": "native", "input_grad": "narrow" if narrow else "native",
              "kernel_grad": "narrow" if narrow and cout <= 16 else "native"}
    if isa == "portable":
      plan = _portable_plan(plan, math.prod(kernel_shape), _plan_without_native(x_shape, kernel_shape, stride,
                                                                                 groups, dilation, dtype))
    return plan
  return _plan_without_native(x_shape, kernel_shape, stride, groups, dilation, dtype)


def _plan_without_native(x_shape, kernel_shape, stride, groups, dilation, dtype) -> dict:
  """``auto``'s plan on CPU without the native kernels (see :func:`auto_plan`)."""
  small = math.prod(x_shape[1:-1]) <= 16 and math.prod(kernel_shape[:-2]) > 1
  if small or x_shape[-1] < 16:
    kernel_grad = "xla"
  elif winograd_applies(kernel_shape, stride, dilation, groups, dtype or jnp.float32):
    kernel_grad = "winograd"
  else:
    kernel_grad = "im2col"
  if groups > 1 and kernel_shape[-2] == 1:  # depthwise: XLA:CPU's grouped conv is several times slower
    return {"forward": "im2col", "input_grad": "im2col", "kernel_grad": "im2col"}
  return {"forward": "xla", "input_grad": "xla", "kernel_grad": kernel_grad}


def _portable_plan(plan: dict, kernel_size: int, without: dict) -> dict:
  """The portable variant's share of a dense convolution's native plan, by rules from measurements.

  Its vectors are 4 lanes without fused multiply-add (AVX-512's are 16 lanes with it), so its
  direct kernels lose to XLA's matrix products on dense layers of 16 channels or more: those
  passes take the plan without native kernels (``without``). Its Winograd kernels keep their
  quarter of the multiplications and win, except the kernel gradient of 3x3 512->512 layers
  (from ``10**6`` kernel elements: a ``36 C O`` transformed copy per thread). Narrow and
  depthwise layers keep their native kernels. Per-layer times:
  ``benchmarks/results/conv-grad-cpu-portable.md``.
  """
  return {p: without[p] if v == "native" or (p == "kernel_grad" and v == "winograd" and kernel_size >= 10**6)
          else v for p, v in plan.items()}


def _winograd_pays(x_shape, kernel_shape, stride, dilation, groups, dtype) -> bool:
  """Whether the native Winograd kernels beat the native direct ones, by a rule from measurements.

  They need enough 4x4 output tiles to amortize a transformed kernel 4x the size of the kernel
  (at least 64 in the batch; a 4x4x512 layer gains at batch 128 and loses at batch 16) and
  tiles that are mostly inside the output (2x2 maps fill a quarter of a tile, and lose). The
  spatial size of
  ``x`` stands for that of the output (equal with "SAME" padding). One rule serves all three
  passes: the input gradient has the same tiles.
  """
  if not winograd_applies(kernel_shape, stride, dilation, groups, dtype or jnp.float32):
    return False
  h, w = x_shape[1:3]
  th, tw = -(-h // 4), -(-w // 4)
  return x_shape[0] * th * tw >= 64 and h * w >= 8 * th * tw


def _hashable(v: Any) -> Any:
  if isinstance(v, list):
    return tuple(_hashable(u) for u in v)
  return v


def make_spec(x_shape, kernel_shape, stride, pads, dilation, groups, precision, preferred_element_type,
              dtype=jnp.float32) -> Spec:
  """Resolves the configuration (``conv_config`` over ``"auto"`` rules) into a :class:`Spec`.

  A pass set to ``"winograd"`` or ``"native"`` on a convolution that it does not apply to (see
  :func:`winograd_applies`, :func:`native_applies`; native also needs the CPU backend and the
  built kernels) gets the ``"auto"`` choice instead.
  """
  cfg = _current()
  plan = {p: cfg[p] for p in _PASSES}
  same_type = preferred_element_type in (None, dtype)
  winograd_ok = cfg["winograd"] and same_type and winograd_applies(kernel_shape, stride, dilation, groups, dtype)
  isa = (native_isa() if same_type and jax.default_backend() == "cpu" and native_applies(kernel_shape, groups, dtype)
         else None)
  native_ok = isa is not None
  for name, ok in (("winograd", winograd_ok), ("native", native_ok), ("narrow", native_ok and groups == 1)):
    if not ok:
      plan = {p: "auto" if v == name else v for p, v in plan.items()}
  cpu_passes = ()
  if any(v == "auto" for v in plan.values()):
    auto = auto_plan(x_shape, kernel_shape, stride, groups, jax.default_backend(), dilation, dtype, native_ok, isa)
    if not winograd_ok:  # e.g. a float64 accumulation of float32 inputs, or winograd=False
      auto = {p: ("native" if native_ok else "im2col") if v == "winograd" else v for p, v in auto.items()}
    if jax.default_backend() == "cpu":
      cpu_passes = tuple(p for p in _PASSES if plan[p] == "auto" and auto[p] not in ("xla", "native", "narrow"))
    plan = {p: auto[p] if v == "auto" else v for p, v in plan.items()}
  return Spec(
      stride=tuple(stride),
      pads=tuple((int(lo), int(hi)) for lo, hi in pads),
      dilation=tuple(dilation),
      groups=int(groups),
      precision=_hashable(precision),
      preferred_element_type=preferred_element_type,
      chunk_bytes=cfg["chunk_bytes"],
      isa=isa,
      cpu_passes=cpu_passes,
      **plan,
  )


# --------------------------------------------------------------------------------------------
# Formulations. Each maps (x, w) -> y for the convolution described by `spec`, and is linear in
# each argument separately, so JAX's transpose of it is the corresponding gradient algorithm.


def dimension_numbers(ndim: int) -> lax.ConvDimensionNumbers:
  """Channels-last ``lax`` dimension numbers for ``ndim`` spatial dimensions (NHWC, HWIO, NHWC)."""
  if ndim not in _SPATIAL:
    raise ValueError(f"only 1, 2 or 3 spatial dimensions are supported; got {ndim}.")
  s = _SPATIAL[ndim]
  return lax.conv_dimension_numbers((1,) * (ndim + 2), (1,) * (ndim + 2), (f"N{s}C", f"{s}IO", f"N{s}C"))


def _out_dtype(x: jax.Array, spec: Spec):
  if spec.preferred_element_type is not None:
    return jnp.dtype(spec.preferred_element_type)
  return x.dtype


def _acc_dtype(x: jax.Array, spec: Spec):
  """Accumulate low-precision floats in float32 across taps (XLA's conv does so internally)."""
  if spec.preferred_element_type is not None:
    return jnp.dtype(spec.preferred_element_type)
  if x.dtype in (jnp.bfloat16, jnp.float16):
    return jnp.dtype(jnp.float32)
  return None


def _conv_xla(x: jax.Array, w: jax.Array, spec: Spec) -> jax.Array:
  return lax.conv_general_dilated(
      x,
      w,
      window_strides=spec.stride,
      padding=spec.pads,
      rhs_dilation=spec.dilation,
      dimension_numbers=dimension_numbers(w.ndim - 2),
      feature_group_count=spec.groups,
      precision=spec.precision,
      preferred_element_type=spec.preferred_element_type,
  )


def _pad(x: jax.Array, spec: Spec) -> jax.Array:
  if all(p == (0, 0) for p in spec.pads):
    return x
  zero = jnp.zeros((), x.dtype)
  return lax.pad(x, zero, ((0, 0, 0),) + tuple((lo, hi, 0) for lo, hi in spec.pads) + ((0, 0, 0),))


def _out_shape(xp_spatial: Sequence[int], ksize: Sequence[int], spec: Spec) -> tuple[int, ...]:
  return tuple(
      (n - (k - 1) * d - 1) // s + 1 for n, k, d, s in zip(xp_spatial, ksize, spec.dilation, spec.stride)
  )


def _tap_slices(xp: jax.Array, ksize: Sequence[int], spec: Spec) -> list[jax.Array]:
  """``X_j`` for every tap ``j`` (row-major over the kernel): strided slices ``[B, *out, C]``."""
  out = _out_shape(xp.shape[1:-1], ksize, spec)
  res = []
  for j in itertools.product(*(range(k) for k in ksize)):
    start = (0,) + tuple(jj * d for jj, d in zip(j, spec.dilation)) + (0,)
    limit = (xp.shape[0],) + tuple(st + (o - 1) * s + 1 for st, o, s in zip(start[1:], out, spec.stride))
    limit += (xp.shape[-1],)
    res.append(lax.slice(xp, start, limit, (1,) + spec.stride + (1,)))
  return res


def _contract(a: jax.Array, b: jax.Array, spec: Spec, acc) -> jax.Array:
  """``a[..., c] @ b[c, o]``."""
  return lax.dot_general(
      a, b, (((a.ndim - 1,), (0,)), ((), ())), precision=spec.precision, preferred_element_type=acc
  )


def _grouped_contract(a: jax.Array, b: jax.Array, spec: Spec, acc) -> jax.Array:
  """``a[..., G, c] x b[c, G, o] -> [..., G, o]`` (batched over the group axis)."""
  y = lax.dot_general(
      a, b, (((a.ndim - 1,), (0,)), ((a.ndim - 2,), (1,))), precision=spec.precision, preferred_element_type=acc
  )
  return jnp.moveaxis(y, 0, -2)  # [G, ..., o] -> [..., G, o]


def _conv_chunk(xp: jax.Array, w: jax.Array, spec: Spec, how: str) -> jax.Array:
  """``taps``/``im2col`` convolution of an already padded chunk ``xp: [B, *sp, C_in]``."""
  nd = w.ndim - 2
  ksize, cg, c_out = w.shape[:nd], w.shape[-2], w.shape[-1]
  g = spec.groups
  acc = _acc_dtype(xp, spec)
  ntaps = math.prod(ksize)
  xs = _tap_slices(xp, ksize, spec)
  lead = xs[0].shape[:-1]  # (B, *out)
  if g > 1 and cg == 1:  # depthwise: elementwise multiply-add over taps, fused by XLA
    m = c_out // g
    wt = w.reshape(ntaps, g, m)
    dt = acc or xp.dtype
    y = None
    for t, a in enumerate(xs):
      term = a.astype(dt).reshape(*lead, g, 1) * wt[t].astype(dt).reshape((1,) * len(lead) + (g, m))
      y = term if y is None else y + term
    return y.reshape(*lead, c_out)
  if how == "im2col":
    if g == 1:
      cols = xs[0] if ntaps == 1 else jnp.concatenate(xs, axis=-1)
      y = _contract(cols, w.reshape(ntaps * cg, c_out), spec, acc)
    else:
      cols = jnp.stack([a.reshape(*lead, g, cg) for a in xs], axis=-2)  # [..., G, K, C_g]
      cols = cols.reshape(*lead, g, ntaps * cg)
      wk = w.reshape(ntaps * cg, g, c_out // g)
      y = _grouped_contract(cols, wk, spec, acc).reshape(*lead, c_out)
  else:  # taps
    wt = w.reshape(ntaps, cg, c_out)
    y = None
    for t, a in enumerate(xs):
      if g == 1:
        term = _contract(a, wt[t], spec, acc)
      else:
        term = _grouped_contract(a.reshape(*lead, g, cg), wt[t].reshape(cg, g, c_out // g), spec, acc)
        term = term.reshape(*lead, c_out)
      y = term if y is None else y + term
  return y


def _explicit_batch(x: jax.Array) -> Optional[tuple]:
  """``(mesh, spec entry)`` when ``x``'s batch dimension is sharded over explicit mesh axes
  (:class:`jax.sharding.AxisType.Explicit`: the type says so), else ``None``."""
  s = jax.typeof(x).sharding
  lead = s.spec[0] if len(s.spec) else None
  if lead is None or s.mesh.empty:
    return None
  return s.mesh, lead


def _per_shard(fn, x: jax.Array, w: jax.Array) -> jax.Array:
  """``fn(x, w)``, or with ``x``'s batch sharded over explicit mesh axes, ``fn`` on each
  device's shard (``shard_map`` over those axes, ``w`` replicated over them): the chunks of a
  :func:`jax.lax.scan` over the batch are then local, where a scan over a sharded axis is not
  allowed (and in the reverse pass JAX's transpose of ``shard_map`` sums ``w``'s gradient over
  the shards)."""
  sharded = _explicit_batch(x)
  if sharded is None:
    return fn(x, w)
  mesh, lead = sharded
  axes = {lead} if isinstance(lead, str) else set(lead)
  spec = jax.sharding.PartitionSpec(lead)
  return jax.shard_map(fn, mesh=mesh, in_specs=(spec, jax.sharding.PartitionSpec()), out_specs=spec,
                       axis_names=axes)(x, w)


def _batch_may_be_sharded() -> bool:
  """Whether the context mesh (``jax.set_mesh``) has automatic axes of more than one device: the
  partitioner may shard the batch over them, which the trace cannot see, and it would gather
  the chunks of a scan over the batch (so we do not chunk there)."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return False
  return any(t == jax.sharding.AxisType.Auto and mesh.shape[a] > 1 for a, t in zip(mesh.axis_names, mesh.axis_types))


def _chunk_size(xp_shape: Sequence[int], itemsize: int, budget: int) -> int:
  """Largest divisor ``B`` of the batch with ``B`` padded images within ``budget`` bytes (the
  whole batch where it may be sharded over automatic mesh axes, see :func:`_batch_may_be_sharded`)."""
  n = xp_shape[0]
  if budget <= 0 or _batch_may_be_sharded():
    return n
  per_image = math.prod(xp_shape[1:]) * itemsize
  best = 1
  for b in range(1, n + 1):
    if n % b == 0 and b * per_image <= budget:
      best = b
  return best


def _conv_matmul(x: jax.Array, w: jax.Array, spec: Spec, how: str, remat: bool) -> jax.Array:
  """The ``taps``/``im2col`` formulation over the whole batch, in cache-sized chunks (per
  device where the batch is sharded over explicit mesh axes)."""
  if _explicit_batch(x) is not None:
    return _per_shard(lambda a, b: _conv_matmul(a, b, spec, how, remat), x, w)
  xp = _pad(x, spec)
  n = xp.shape[0]
  b = _chunk_size(xp.shape, xp.dtype.itemsize, spec.chunk_bytes)
  if b == n:
    y = _conv_chunk(xp, w, spec, how)
  else:
    body = lambda _, xc: (None, _conv_chunk(xc, w, spec, how))
    if remat:  # keep only the chunk of x as residual; recompute its patches in the backward
      body = jax.checkpoint(body, prevent_cse=False)
    _, y = lax.scan(body, None, xp.reshape(n // b, b, *xp.shape[1:]))
    y = y.reshape(n, *y.shape[2:])
  return y.astype(_out_dtype(x, spec))


# F(4x4, 3x3) on the points 0, +-1, +-2, infinity (Lavin & Gray 2016, eq. 9-11 for F(2x2, 3x3)),
# correlation form: Y = A^T [(G w G^T) * (B^T d B)] A for one 6x6 input tile d and 4x4 output Y.
_WINO_M = 4  # output tile
_WINO_BT = np.array([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
                     [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]], np.float64)
_WINO_G = np.array([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
                    [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]], np.float64)
_WINO_AT = np.array([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0],
                     [0, 1, -1, 8, -8, 1]], np.float64)


def winograd_applies(kernel_shape: Sequence[int], stride: Sequence[int], dilation: Sequence[int], groups: int,
                     dtype: Any) -> bool:
  """Whether the ``"winograd"`` formulation computes this convolution: 2-D, 3x3, stride 1, no
  dilation, one group, float32 or float64 (its transforms lose too much in 16-bit floats).

  Example:
    >>> winograd_applies((3, 3, 64, 64), (1, 1), (1, 1), 1, "float32")
    True
    >>> winograd_applies((3, 3, 64, 64), (2, 2), (1, 1), 1, "float32")
    False
  """
  return (len(kernel_shape) == 4 and _native.winograd_fits(kernel_shape, stride, dilation) and groups == 1
          and jnp.dtype(dtype) in (jnp.dtype(jnp.float32), jnp.dtype(jnp.float64)))


def _combine(coeffs: np.ndarray, terms: Sequence[jax.Array]) -> jax.Array:
  """``sum_i coeffs[i] * terms[i]``, skipping zeros and multiplying by +-1 for free."""
  out = None
  for c, t in zip(coeffs, terms):
    if c == 0:
      continue
    t = t if c == 1 else -t if c == -1 else t * jnp.asarray(c, t.dtype)
    out = t if out is None else out + t
  return out


def _wino_input(xp: jax.Array, th: int, tw: int) -> jax.Array:
  """``V = B^T d B`` for every 6x6 tile of ``xp: [B, 4 th + 2, 4 tw + 2, C]`` -> ``[36, B th tw, C]``.

  Separable: rows first (strided slices, one per tile row offset), then columns; XLA fuses
  each into one elementwise pass.
  """
  m, a = _WINO_M, _WINO_M + 2
  rows = [xp[:, i:i + m * (th - 1) + 1:m] for i in range(a)]  # [B, th, W, C]
  out = []
  for r in (_combine(_WINO_BT[p], rows) for p in range(a)):
    cols = [r[:, :, j:j + m * (tw - 1) + 1:m] for j in range(a)]  # [B, th, tw, C]
    out += [_combine(_WINO_BT[q], cols) for q in range(a)]
  return jnp.stack(out).reshape(a * a, -1, xp.shape[-1])


def _wino_output(m_: jax.Array, b: int, th: int, tw: int) -> jax.Array:
  """``Y = A^T M A`` per tile: ``[36, B th tw, O]`` -> ``[B, 4 th, 4 tw, O]``.

  Written as two small contractions with ``A^T`` (not as sliced sums): its transpose, which the
  kernel gradient runs, is then two contractions again, far faster on XLA:CPU than the
  transpose of the sliced form.
  """
  m, a = _WINO_M, _WINO_M + 2
  o = m_.shape[-1]
  at = jnp.asarray(_WINO_AT, m_.dtype)
  y = m_.reshape(a, a, -1)
  y = jnp.einsum("pa,abk->pbk", at, y)
  y = jnp.einsum("qb,pbk->pqk", at, y).reshape(m, m, b, th, tw, o)
  return y.transpose(2, 3, 0, 4, 1, 5).reshape(b, th * m, tw * m, o)


def _conv_winograd(x: jax.Array, w: jax.Array, spec: Spec) -> jax.Array:
  """The ``"winograd"`` formulation over the batch, in cache-sized chunks (checkpointed; per
  device where the batch is sharded over explicit mesh axes)."""
  if _explicit_batch(x) is not None:
    return _per_shard(lambda a, b: _conv_winograd(a, b, spec), x, w)
  m, a = _WINO_M, _WINO_M + 2
  xp = _pad(x, spec)
  n, hp, wp, c = xp.shape
  ho, wo = hp - 2, wp - 2
  th, tw = -(-ho // m), -(-wo // m)
  xp = jnp.pad(xp, ((0, 0), (0, th * m + 2 - hp), (0, tw * m + 2 - wp), (0, 0)))  # whole tiles
  g = jnp.asarray(_WINO_G, w.dtype)
  u = jnp.einsum("ai,ijco,bj->abco", g, w, g, precision=spec.precision).reshape(a * a, c, w.shape[-1])

  def chunk(xc):
    v = _wino_input(xc, th, tw)
    prod = lax.dot_general(v, u, (((2,), (1,)), ((0,), (0,))), precision=spec.precision)  # [36, T, O]
    return _wino_output(prod, xc.shape[0], th, tw)

  b = _chunk_size(xp.shape, xp.dtype.itemsize, spec.chunk_bytes)
  if b == n:
    y = chunk(xp)
  else:
    body = jax.checkpoint(lambda _, xc: (None, chunk(xc)), prevent_cse=False)
    _, y = lax.scan(body, None, xp.reshape(n // b, b, *xp.shape[1:]))
    y = y.reshape(n, *y.shape[2:])
  return y[:, :ho, :wo].astype(_out_dtype(x, spec))


def _depthwise(kernel_shape: Sequence[int], groups: int) -> bool:
  """One input channel per group and one output per input channel (multiplier 1)."""
  return groups > 1 and kernel_shape[-2] == 1 and kernel_shape[-1] == groups


def native_applies(kernel_shape: Sequence[int], groups: int, dtype: Any) -> bool:
  """Whether the ``"native"`` kernels compute this convolution (if built): 1-D or 2-D, float32,
  one feature group or depthwise with multiplier 1. Any kernel size, stride, dilation and padding.

  Example:
    >>> native_applies((3, 3, 64, 64), 1, "float32"), native_applies((3, 3, 1, 64), 64, "float32")
    (True, True)
    >>> native_applies((3, 3, 1, 128), 64, "float32"), native_applies((3, 3, 2, 64), 32, "float32")
    (False, False)
  """
  return (len(kernel_shape) in (3, 4) and (groups == 1 or _depthwise(kernel_shape, groups))
          and jnp.dtype(dtype) == jnp.dtype(jnp.float32))


def _conv_native(x: jax.Array, w: jax.Array, spec: Spec, algorithm: str = "direct") -> jax.Array:
  """The ``"native"`` formulation; a 1-D convolution runs as a 2-D one of height 1."""
  if spec.groups > 1:
    algorithm = "depthwise"
  if w.ndim == 3:
    y = _native.conv(x[:, None], w[None], (1, *spec.stride), ((0, 0), *spec.pads), (1, *spec.dilation), algorithm,
                     spec.isa)
    return y[:, 0]
  return _native.conv(x, w, spec.stride, spec.pads, spec.dilation, algorithm, spec.isa)


def _native_here(x: jax.Array, spec: Spec) -> bool:
  """Whether the native kernels run ``x`` here: float32 in and out, on CPU, built."""
  return (x.dtype == jnp.float32 and spec.preferred_element_type in (None, jnp.float32)
          and jax.default_backend() == "cpu" and spec.isa is not None)


def _formulation(x: jax.Array, w: jax.Array, spec: Spec, how: str, remat: bool = False) -> jax.Array:
  if how == "xla":
    return _conv_xla(x, w, spec)
  if how in ("native", "narrow"):
    return _conv_native(x, w, spec, "direct" if how == "native" else "narrow")
  if how == "winograd":
    if _native_here(x, spec):
      return _conv_native(x, w, spec, "winograd")
    return _conv_winograd(x, w, spec)
  return _conv_matmul(x, w, spec, how, remat)


def _pass(x: jax.Array, w: jax.Array, spec: Spec, name: str, remat: bool = False) -> jax.Array:
  """Pass ``name``'s formulation. One that ``auto`` chose for the CPU is XLA's convolution on
  every other platform (``lax.platform_dependent``: lowering for one platform keeps only its
  branch); the native kernels lower per platform by themselves."""
  how = getattr(spec, name)
  run = lambda a, b: _formulation(a, b, spec, how, remat)  # noqa: E731
  if name not in spec.cpu_passes or (how == "winograd" and _native_here(x, spec)):  # native: per platform
    return run(x, w)
  return lax.platform_dependent(x, w, cpu=run, default=lambda a, b: _conv_xla(a, b, spec))


@functools.partial(jax.custom_jvp, nondiff_argnums=(2,))
def _conv(x: jax.Array, w: jax.Array, spec: Spec) -> jax.Array:
  return _pass(x, w, spec, "forward")


def _conv_jvp(spec: Spec, primals, tangents):
  x, w = primals
  dx, dw = tangents
  y = _conv(x, w, spec)
  zero = jax.custom_derivatives.SymbolicZero
  dy = None
  if not isinstance(dx, zero):  # linear in dx: its transpose is the input-gradient algorithm
    dy = jax.checkpoint(lambda a, b: _pass(a, b, spec, "input_grad", True))(dx, w)
  if not isinstance(dw, zero):  # linear in dw: its transpose is the kernel-gradient algorithm
    t = jax.checkpoint(lambda a, b: _pass(a, b, spec, "kernel_grad", True))(x, dw)
    dy = t if dy is None else dy + t
  if dy is None:
    dy = jnp.zeros(y.shape, y.dtype)
  return y, dy


_conv.defjvp(_conv_jvp, symbolic_zeros=True)


def conv_transpose_general(
    x: jax.Array,
    kernel: jax.Array,
    transpose_xla,
    z_shape: Sequence[int],
    stride: Sequence[int],
    pads: Sequence[tuple[int, int]],
    dilation: Sequence[int],
    groups: int,
    precision: Any = None,
) -> jax.Array:
  """``transpose_xla(x, kernel)`` (the adjoint of the convolution ``z -> conv(z, kernel)`` of
  ``z: z_shape``, computed by XLA), with a kernel gradient by the convolution's own formulation.

  XLA's derivative of its transposed convolution with respect to the kernel is slow on CPU (as
  its kernel gradient is). That derivative is, by adjointness, the *kernel gradient of the forward
  convolution* at input ``ybar`` (the incoming cotangent) and output cotangent ``x``:
  ``<ybar, conv^T(x, dw)> = <conv(ybar, dw), x>``. So the rule below writes the kernel tangent
  as the transpose in ``z`` of the ``"im2col"`` convolution (a scatter of per-tap products),
  whose transpose in ``dw`` -- what reverse mode runs -- is the im2col kernel gradient, several
  times faster. The input tangent stays ``transpose_xla(dx, kernel)``, whose transpose
  is XLA's forward convolution. Where ``"auto"`` (or ``conv_config``) leaves the convolution's
  kernel gradient to XLA, this is plain ``transpose_xla``. Where it picks the native kernels
  (``"native"``, or ``"winograd"`` run natively), the adjoint is the native input gradient
  itself, :func:`jaxconv.ops._native.input_grad`: its derivatives in both arguments are native
  too (it is built of the bilinear native primitives), and it is as fast as XLA's forward or
  faster.
  """
  spec = make_spec(z_shape, kernel.shape, stride, pads, dilation, groups, precision, None, x.dtype)
  if spec.kernel_grad == "xla":
    return transpose_xla(x, kernel)
  if spec.kernel_grad in ("native", "winograd") and _native_here(x, spec):
    algorithm = "depthwise" if spec.groups > 1 else "winograd" if spec.kernel_grad == "winograd" else "direct"
    if kernel.ndim == 3:  # 1-D, as 2-D of height 1
      z = _native.input_grad(x[:, None], kernel[None], (z_shape[0], 1, *z_shape[1:]), (1, *spec.stride),
                             ((0, 0), *spec.pads), (1, *spec.dilation), algorithm, spec.isa)
      return z[:, 0]
    return _native.input_grad(x, kernel, tuple(z_shape), spec.stride, spec.pads, spec.dilation, algorithm, spec.isa)
  # im2col also where the convolution would use winograd: winograd's transpose in z is slow.
  spec = dataclasses.replace(spec, kernel_grad="im2col")
  z_struct = jax.ShapeDtypeStruct(tuple(z_shape), x.dtype)

  def kernel_term(x, dw):
    return jax.linear_transpose(lambda z: _formulation(z, dw, spec, "im2col", True), z_struct)(x)[0]

  @jax.custom_jvp
  def transposed(x, w):
    return transpose_xla(x, w)

  def transposed_jvp(primals, tangents):
    x, w = primals
    dx, dw = tangents
    y = transposed(x, w)
    zero = jax.custom_derivatives.SymbolicZero
    dy = None
    if not isinstance(dx, zero):
      dy = transpose_xla(dx, w)
    if not isinstance(dw, zero):  # off the CPU an auto choice is XLA's: the tangent of transpose_xla in w
      t = (lax.platform_dependent(x, dw, cpu=jax.checkpoint(kernel_term), default=transpose_xla)
           if "kernel_grad" in spec.cpu_passes else jax.checkpoint(kernel_term)(x, dw))
      dy = t if dy is None else dy + t
    return y, jnp.zeros(y.shape, y.dtype) if dy is None else dy

  transposed.defjvp(transposed_jvp, symbolic_zeros=True)
  return transposed(x, kernel)


def conv_general(
    x: jax.Array,
    kernel: jax.Array,
    stride: Sequence[int],
    pads: Sequence[tuple[int, int]],
    dilation: Sequence[int],
    groups: int,
    precision: Any = None,
    preferred_element_type: Any = None,
) -> jax.Array:
  """Channels-last convolution of a batched ``x`` with zero padding ``pads``, by the chosen plan.

  Shapes: ``x: [N, *spatial, C_in]``, ``kernel: [*k, C_in // groups, C_out]``, result
  ``[N, *out, C_out]``; the same numbers as :func:`jax.lax.conv_general_dilated` with
  channels-last dimension numbers. Arguments are assumed checked (by :func:`jaxconv.ops.conv`).

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxconv.ops._conv_grad import conv_general
    >>> conv_general(jnp.ones((1, 4, 4, 2)), jnp.ones((1, 1, 2, 3)), (2, 2), ((0, 0),) * 2, (1, 1), 1).shape
    (1, 2, 2, 3)
  """
  spec = make_spec(x.shape, kernel.shape, stride, pads, dilation, groups, precision, preferred_element_type,
                   x.dtype)
  return _conv_by_spec(x, kernel, spec)


@functools.partial(jax.jit, static_argnums=(2,))
def _conv_by_spec(x: jax.Array, kernel: jax.Array, spec: Spec) -> jax.Array:
  # One compiled program per call outside jit, not one per operation of the formulation (a
  # chunked im2col is dozens): eager calls and their derivatives dispatch once.
  if spec.forward == spec.input_grad == spec.kernel_grad == "xla":
    return _conv_xla(x, kernel, spec)  # plain XLA: no custom rule at all
  return _conv(x, kernel, spec)
