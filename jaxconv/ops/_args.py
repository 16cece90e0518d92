"""Argument canonicalizers shared by every op.

One function per kind of argument: each turns the forms a user may write into one tuple, and
fails with one message that names the argument, the value received and the accepted forms.
Everything here is plain Python over static values (shapes, ints, strings), so it runs before
tracing and before XLA sees anything.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Union

import jax
import numpy as np

PaddingLike = Union[str, int, Sequence[int], Sequence[tuple[int, int]]]

PADDING_STRINGS = ("VALID", "SAME", "FULL", "CAUSAL")
PADDING_MODES = ("zeros", "reflect", "replicate", "circular")
_JNP_PAD_MODE = {"reflect": "reflect", "replicate": "edge", "circular": "wrap"}


def _is_int(v: Any) -> bool:
  return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def canonicalize_tuple(value: Any, ndim: int, name: str, *, minimum: int = 1) -> tuple[int, ...]:
  """Turns an int or a sequence of ``ndim`` ints into a tuple of ``ndim`` ints >= ``minimum``.

  Args:
    value: an int (used for every dimension) or a sequence of ``ndim`` ints.
    ndim: the number of spatial dimensions.
    name: the argument's name, for the error message.
    minimum: the smallest accepted value.

  Raises:
    TypeError: if ``value`` is neither an int nor a sequence of ints.
    ValueError: if the length is not ``ndim`` or a value is below ``minimum``.
  """
  if _is_int(value):
    out = (int(value),) * ndim
  elif isinstance(value, Sequence) and not isinstance(value, str) and all(_is_int(v) for v in value):
    out = tuple(int(v) for v in value)
    if len(out) != ndim:
      raise ValueError(
          f"{name} must be an int or a sequence of {ndim} ints (one per spatial dimension); "
          f"got {value!r} of length {len(out)}."
      )
  else:
    raise TypeError(
        f"{name} must be an int or a sequence of {ndim} ints; got {value!r} "
        f"of type {type(value).__name__}."
    )
  if any(v < minimum for v in out):
    raise ValueError(f"{name} must be >= {minimum} in every dimension; got {value!r}.")
  return out


def effective_kernel_size(kernel_size: Sequence[int], dilation: Sequence[int]) -> tuple[int, ...]:
  """Extent of a dilated kernel: ``(k - 1) * d + 1`` per dimension."""
  return tuple((k - 1) * d + 1 for k, d in zip(kernel_size, dilation))


def same_padding(in_size: int, window: int, stride: int) -> tuple[int, int]:
  """TensorFlow/Flax ``SAME`` padding of one dimension (``window`` is the dilated extent).

  The output has ``ceil(in / stride)`` elements; the total padding is split in two with the
  extra element at the end.
  """
  out = -(-in_size // stride)
  total = max((out - 1) * stride + window - in_size, 0)
  return total // 2, total - total // 2


def canonicalize_padding(
    padding: PaddingLike,
    in_shape: Sequence[int],
    window: Sequence[int],
    stride: Sequence[int],
    name: str = "padding",
) -> tuple[tuple[int, int], ...]:
  """Resolves every accepted padding form to ``(lo, hi)`` pairs, one per spatial dimension.

  Accepted forms:
    * ``"VALID"``: no padding.
    * ``"SAME"``: ``ceil(in / stride)`` outputs, total padding split with the extra at the end.
    * ``"FULL"``: ``window - 1`` on both sides (every partial overlap).
    * ``"CAUSAL"``: ``window - 1`` before, none after (output ``i`` sees inputs ``<= i``).
    * an int ``p``: ``(p, p)`` in every dimension.
    * a sequence of ints: ``(p_i, p_i)`` in dimension ``i``.
    * a sequence of ``(lo, hi)`` pairs, one per dimension (asymmetric).

  Args:
    padding: one of the forms above (strings are case-insensitive).
    in_shape: spatial sizes of the input.
    window: dilated window extent per spatial dimension.
    stride: stride per spatial dimension.
    name: the argument's name, for the error message.

  Returns:
    A tuple of ``(lo, hi)`` pairs of non-negative ints.
  """
  ndim = len(in_shape)
  accepted = (
      f"one of {PADDING_STRINGS}, an int, a sequence of {ndim} ints, "
      f"or a sequence of {ndim} (lo, hi) pairs"
  )
  if isinstance(padding, str):
    key = padding.upper()
    if key == "VALID":
      return ((0, 0),) * ndim
    if key == "SAME":
      return tuple(same_padding(i, w, s) for i, w, s in zip(in_shape, window, stride))
    if key == "FULL":
      return tuple((w - 1, w - 1) for w in window)
    if key == "CAUSAL":
      return tuple((w - 1, 0) for w in window)
    raise ValueError(f"{name} must be {accepted}; got the string {padding!r}.")
  if _is_int(padding):
    pairs = ((int(padding), int(padding)),) * ndim
  elif isinstance(padding, Sequence) and len(padding) == ndim:
    if all(_is_int(p) for p in padding):
      pairs = tuple((int(p), int(p)) for p in padding)
    elif all(
        isinstance(p, Sequence) and not isinstance(p, str) and len(p) == 2 and all(_is_int(q) for q in p)
        for p in padding
    ):
      pairs = tuple((int(lo), int(hi)) for lo, hi in padding)
    else:
      raise TypeError(f"{name} must be {accepted}; got {padding!r}.")
  else:
    raise TypeError(f"{name} must be {accepted}; got {padding!r}.")
  if any(lo < 0 or hi < 0 for lo, hi in pairs):
    raise ValueError(f"{name} must be non-negative; got {padding!r}.")
  return pairs


def canonicalize_padding_mode(mode: str, name: str = "padding_mode") -> str:
  """Checks a border mode: ``zeros``, ``reflect``, ``replicate`` or ``circular`` (PyTorch's names)."""
  if not isinstance(mode, str) or mode.lower() not in PADDING_MODES:
    raise ValueError(f"{name} must be one of {PADDING_MODES}; got {mode!r}.")
  return mode.lower()


def check_mode_padding(
    mode: str, pads: Sequence[tuple[int, int]], in_shape: Sequence[int], name: str = "padding"
) -> None:
  """PyTorch's limits on border modes: reflect needs ``pad < size``, replicate needs ``size >= 1``."""
  if mode == "reflect":
    for d, ((lo, hi), n) in enumerate(zip(pads, in_shape)):
      if max(lo, hi) >= n:
        raise ValueError(
            f"{name} of {max(lo, hi)} in spatial dimension {d} is too wide for "
            f"padding_mode='reflect' on an input of size {n}: reflect padding must be smaller "
            f"than the input size ({n - 1} at most here)."
        )


def pad_with_mode(x: jax.Array, pads: Sequence[tuple[int, int]], mode: str) -> jax.Array:
  """Pads the spatial axes of a channels-last, batched array ``[N, *spatial, C]``.

  ``(lo, hi)`` may be negative, which crops. ``mode`` is one of :data:`PADDING_MODES`:
  zeros, reflect (mirror without repeating the edge), replicate (edge) or circular (wrap).
  """
  import jax.numpy as jnp  # local: keep this module importable without touching the backend

  # Pad first, crop after: reflect/circular borders must read the whole input, not the cropped
  # one (an anchored stride-4 conv crops the end while its start wraps around to it).
  widths = [(0, 0)] + [(max(lo, 0), max(hi, 0)) for lo, hi in pads] + [(0, 0)]
  if any(w != (0, 0) for w in widths):
    x = jnp.pad(x, widths) if mode == "zeros" else jnp.pad(x, widths, mode=_JNP_PAD_MODE[mode])
  crop = [slice(None)] + [slice(max(-lo, 0), n - max(-hi, 0)) for (lo, hi), n in zip(pads, x.shape[1:-1])]
  crop.append(slice(None))
  return x[tuple(crop)]


def check_array(x: Any, name: str) -> jax.Array:
  """Converts to a JAX array, refusing 64-bit floats when JAX's 64-bit mode is off.

  JAX would silently turn a float64 NumPy array into float32; we say so instead.
  """
  dtype = getattr(x, "dtype", None)
  if dtype is None:
    x = np.asarray(x)
    dtype = x.dtype
    if dtype == np.float64:  # a Python list of floats: the user asked for nothing in particular
      dtype = np.dtype(np.float32)
      x = x.astype(np.float32)
  dtype = np.dtype(dtype)
  if dtype in (np.float64, np.complex128) and not jax.config.jax_enable_x64:
    raise TypeError(
        f"{name} has dtype {dtype} but JAX's 64-bit mode is off, so it would silently become "
        f"32-bit. Cast it ({name}.astype(np.float32)) or enable "
        "jax.config.update('jax_enable_x64', True)."
    )
  if not (np.issubdtype(dtype, np.floating) or np.issubdtype(dtype, np.complexfloating) or dtype == jax.numpy.bfloat16):
    raise TypeError(f"{name} must have a floating-point dtype; got {dtype}.")
  # A NumPy array is transferred, not staged: outside a trace jnp.asarray would compile (and
  # cache) a program for each new shape; inside one, either becomes a constant of the trace.
  return x if isinstance(x, jax.Array) else jax.device_put(x)


def check_same_dtype(**arrays: jax.Array) -> None:
  """Raises TypeError when the given arrays do not all share one dtype."""
  dtypes = {k: v.dtype for k, v in arrays.items() if v is not None}
  if len(set(dtypes.values())) > 1:
    listed = ", ".join(f"{k}: {v}" for k, v in dtypes.items())
    raise TypeError(
        f"mixed dtypes ({listed}); cast them to one dtype first, e.g. kernel.astype(x.dtype). "
        "Use preferred_element_type to choose the accumulation/output dtype."
    )


def out_size(in_size: int, window: int, stride: int, lo: int, hi: int, ceil_mode: bool = False) -> int:
  """Output length of a sliding window: ``floor_or_ceil((in + lo + hi - window) / stride) + 1``."""
  span = in_size + lo + hi - window
  if ceil_mode:
    return math.ceil(span / stride) + 1
  return span // stride + 1
