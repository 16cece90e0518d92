"""The implementations a layer row compares, each behind one small adapter.

An adapter turns ``(case, mode, inputs)`` into a ``prepare`` callable for
:func:`jaxconv.bench.measure`; every one returns its outputs channels-last, so the agreement
check compares like with like:

* ``fwd``: ``y``;  ``fwd+bwd``: ``(y, dx, dw)``;  ``fwd+dx``: ``(y, dx)``;  ``fwd+dw``: ``(y, dw)``
  where ``dx, dw`` are the vector-Jacobian products with the fixed cotangent ``g``. The forward
  output is returned with the gradients, so XLA cannot drop the forward pass (the gradients of a
  convolution do not need it, but a training step does).

Optional peers (PyTorch) are imported lazily; a failed import is reported, never fatal.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any, Optional

import numpy as np

from jaxconv.bench._cases import ConvCase


@dataclasses.dataclass(frozen=True)
class Inputs:
  """Deterministic inputs of one case: ``x``, ``w`` (fan-in scaled) and the cotangent ``g``."""

  x: np.ndarray
  w: np.ndarray
  g: np.ndarray


def make_inputs(case: ConvCase, seed: int = 0) -> Inputs:
  """Float32 NumPy inputs from ``seed`` (the same for every implementation of a row).

  Example:
    >>> from jaxconv.bench._cases import ConvCase
    >>> i = make_inputs(ConvCase("c", 1, (5, 5), 2, 3, (3, 3)))
    >>> i.x.shape, i.w.shape, i.g.shape
    ((1, 5, 5, 2), (3, 3, 2, 3), (1, 3, 3, 3))
  """
  rng = np.random.default_rng(seed)
  fan_in = int(np.prod(case.kernel_shape[:-1]))
  x = rng.standard_normal(case.x_shape, dtype=np.float32)
  w = rng.standard_normal(case.kernel_shape, dtype=np.float32) / np.float32(np.sqrt(fan_in))
  g = rng.standard_normal(case.y_shape, dtype=np.float32)
  return Inputs(x, w, g)


# --- JAX implementations: a function f(x, w) -> y per case ------------------------------------


def _jaxconv_fn(case: ConvCase) -> Callable:
  from jaxconv import ops

  if case.transposed:
    return functools.partial(ops.conv_transpose, stride=case.strides, padding=case.pads, dilation=case.dilations,
                             groups=case.groups)
  return functools.partial(ops.conv, stride=case.strides, padding=case.pads, dilation=case.dilations,
                           groups=case.groups)


def _reference_fn(case: ConvCase, precision: Any = None) -> Callable:
  import jax
  import jax.numpy as jnp

  from jaxconv.reference import conv_einsum

  fwd = functools.partial(conv_einsum, stride=case.strides, padding=case.pads, dilation=case.dilations,
                          groups=case.groups, precision=precision)
  if not case.transposed:
    return fwd

  def transposed(y, w):  # conv_transpose is the adjoint of conv: the VJP of the einsum conv
    _, vjp = jax.vjp(lambda x: fwd(x, w), jnp.zeros(case.y_shape[:1] + case.out_spatial + (case.c_out,), y.dtype))
    return vjp(y)[0]

  return transposed


def _flax_fn(case: ConvCase, dtype: Any) -> Callable:
  import flax.linen as nn

  if case.transposed:
    # lax.conv_transpose pads the stride-dilated input: PyTorch's padding p is (k_eff - 1 - p).
    ext = [(k - 1) * d + 1 for k, d in zip(case.kernel, case.dilations)]
    module = nn.ConvTranspose(
        features=case.c_out, kernel_size=case.kernel, strides=case.strides,
        padding=[(e - 1 - p, e - 1 - p) for e, p in zip(ext, case.pads)], kernel_dilation=case.dilations,
        use_bias=False, transpose_kernel=True, dtype=dtype, param_dtype=dtype,
    )
  else:
    module = nn.Conv(
        features=case.c_out, kernel_size=case.kernel, strides=case.strides,
        padding=[(p, p) for p in case.pads], kernel_dilation=case.dilations, feature_group_count=case.groups,
        use_bias=False, dtype=dtype, param_dtype=dtype,
    )
  return lambda x, w: module.apply({"params": {"kernel": w}}, x)


def _jax_mode(f: Callable, mode: str) -> Callable:
  import jax

  if mode == "fwd":
    return lambda x, w, g: f(x, w)
  if mode == "fwd+bwd":

    def both(x, w, g):
      y, vjp = jax.vjp(f, x, w)
      return (y, *vjp(g))

    return both
  if mode == "fwd+dx":

    def dx(x, w, g):
      y, vjp = jax.vjp(lambda x_: f(x_, w), x)
      return y, vjp(g)[0]

    return dx
  if mode == "fwd+dw":

    def dw(x, w, g):
      y, vjp = jax.vjp(lambda w_: f(x, w_), w)
      return y, vjp(g)[0]

    return dw
  raise ValueError(f"unknown mode {mode!r}")


def jax_prepare(f: Callable, mode: str, inputs: Inputs, dtype: Any) -> Callable[[], Callable[[], Any]]:
  """``prepare`` for :func:`measure`: moves inputs to the device, jit-compiles ``mode`` of ``f``."""
  import jax
  import jax.numpy as jnp

  args = tuple(jax.device_put(jnp.asarray(a, dtype=dtype)) for a in (inputs.x, inputs.w, inputs.g))
  fn = _jax_mode(f, mode)

  def prepare():
    compiled = jax.jit(fn).lower(*args).compile()
    return lambda: compiled(*args)

  return prepare


# --- PyTorch ----------------------------------------------------------------------------------


def _torch_perm(nd: int) -> tuple[int, ...]:
  """Axis order taking our kernel ``[*k, A, B]`` to PyTorch's ``[B, A, *k]`` (conv and transpose)."""
  return (nd + 1, nd) + tuple(range(nd))


def torch_device(torch: Any) -> str:
  """``"cuda"`` when JAX runs on a GPU and PyTorch sees one too (peers on the same chip), else ``"cpu"``."""
  import jax

  return "cuda" if jax.default_backend() == "gpu" and torch.cuda.is_available() else "cpu"


def torch_prepare(torch: Any, case: ConvCase, mode: str, inputs: Inputs, dtype: str) -> Callable[[], Callable[[], Any]]:
  """``prepare`` for the PyTorch peer (``torch.nn.functional``, channels-first, eager).

  Outputs are converted back to channels-last NumPy after timing, by :func:`torch_to_channels_last`.
  """
  F = torch.nn.functional
  nd = case.nd
  tdtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
  dev = torch_device(torch)
  x = torch.from_numpy(np.ascontiguousarray(np.moveaxis(inputs.x, -1, 1))).to(dev, tdtype)
  w = torch.from_numpy(np.ascontiguousarray(inputs.w.transpose(_torch_perm(nd)))).to(dev, tdtype)
  g = torch.from_numpy(np.ascontiguousarray(np.moveaxis(inputs.g, -1, 1))).to(dev, tdtype)
  if case.transposed:
    op = getattr(F, f"conv_transpose{nd}d")
    f = lambda x_, w_: op(x_, w_, None, case.strides, case.pads, 0, case.groups, case.dilations)  # noqa: E731
  else:
    op = getattr(F, f"conv{nd}d")
    f = lambda x_, w_: op(x_, w_, None, case.strides, case.pads, case.dilations, case.groups)  # noqa: E731

  if mode == "fwd":

    def run():
      with torch.no_grad():
        return f(x, w)

    return lambda: run
  need_x = mode in ("fwd+bwd", "fwd+dx")
  need_w = mode in ("fwd+bwd", "fwd+dw")
  xr = x.clone().requires_grad_(need_x)
  wr = w.clone().requires_grad_(need_w)
  wrt = tuple(t for t, need in ((xr, need_x), (wr, need_w)) if need)

  def run():
    y = f(xr, wr)
    grads = torch.autograd.grad(y, wrt, g)
    return (y.detach(), *grads)

  return lambda: run


def torch_to_channels_last(out: Any, case: ConvCase, mode: str) -> Any:
  """PyTorch outputs (channels-first, kernels ``[B, A, *k]``) as channels-last float32 NumPy."""
  nd = case.nd
  outs = out if isinstance(out, tuple) else (out,)
  arrays = [o.detach().float().cpu().numpy() for o in outs]
  kinds = {"fwd": "y", "fwd+bwd": "yxw", "fwd+dx": "yx", "fwd+dw": "yw"}[mode]
  inv = tuple(np.argsort(_torch_perm(nd)))
  conv = [np.moveaxis(a, 1, -1) if k in "yx" else a.transpose(inv) for a, k in zip(arrays, kinds)]
  return conv[0] if mode == "fwd" else tuple(conv)


def import_torch() -> tuple[Optional[Any], Optional[str]]:
  """``(torch, None)``, or ``(None, why)`` when PyTorch cannot be imported."""
  try:
    import torch  # noqa: PLC0415 - optional peer, imported only when the suite runs
  except Exception as e:  # noqa: BLE001 - any failure to import means: no PyTorch column
    return None, f"PyTorch peer unavailable ({type(e).__name__}: {e}); its columns are omitted."
  return torch, None


# --- The registry ----------------------------------------------------------------------------

IMPLS = ("jaxconv", "reference", "flax", "torch")
IMPL_LABELS = {
    "jaxconv": "jaxconv.ops.conv",
    "reference": "jaxconv.reference.conv_einsum (im2col + einsum)",
    "flax": "flax.linen.Conv (stock XLA)",
    "torch": "torch.nn.functional (PyTorch)",
    "numpy_loops": "jaxconv.reference.conv_loops (NumPy loops, tiny shapes only)",
}


def layer_prepare(impl: str, case: ConvCase, mode: str, inputs: Inputs, dtype: str, torch: Any = None):
  """The ``prepare`` callable of ``impl`` for one row (see the module docstring)."""
  import jax.numpy as jnp

  jdtype = jnp.dtype(dtype)
  if impl == "jaxconv":
    return jax_prepare(_jaxconv_fn(case), mode, inputs, jdtype)
  if impl == "reference":
    return jax_prepare(_reference_fn(case), mode, inputs, jdtype)
  if impl == "flax":
    return jax_prepare(_flax_fn(case, jdtype), mode, inputs, jdtype)
  if impl == "torch":
    return torch_prepare(torch, case, mode, inputs, dtype)
  raise ValueError(f"unknown implementation {impl!r}; choose from {IMPLS}.")


def reference_outputs(case: ConvCase, mode: str, inputs: Inputs, dtype: str) -> Any:
  """The reference's outputs at the highest precision (untimed; for accelerators, where the
  timed reference runs at the backend's default precision)."""
  import jax
  import jax.numpy as jnp

  f = _jax_mode(_reference_fn(case, precision=jax.lax.Precision.HIGHEST), mode)
  args = tuple(jnp.asarray(a, dtype=dtype) for a in (inputs.x, inputs.w, inputs.g))
  return jax.jit(f)(*args)


def loops_anchor(case: ConvCase, seed: int = 0) -> dict[str, Any]:
  """The reference against NumPy loops on the tiny version of ``case`` (forward, float32).

  For a transposed case the loops' ``conv_transpose_loops`` is the anchor. Returns
  ``{"case", "agreement"}`` (relative error, tolerance 1e-5).
  """
  import jax

  from jaxconv.bench._harness import agreement
  from jaxconv.reference import conv_loops, conv_transpose_loops

  tiny = case.tiny()
  inputs = make_inputs(tiny, seed)
  ref = np.asarray(jax.jit(_reference_fn(tiny, precision=jax.lax.Precision.HIGHEST))(inputs.x, inputs.w))
  kw = dict(stride=tiny.strides, padding=tiny.pads, dilation=tiny.dilations, groups=tiny.groups)
  loops = (conv_transpose_loops if tiny.transposed else conv_loops)(inputs.x, inputs.w, **kw)
  return {"case": tiny.describe(), "agreement": agreement(ref, loops, tol=1e-5).to_dict()}
