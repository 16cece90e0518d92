"""Weight initializers as the papers and torchvision use them, for channels-last kernels.

Each rule is :func:`jax.nn.initializers.variance_scaling` (or ``normal``), whose fans from an
``HWIO`` kernel, ``fan_in = prod(k) * C_in / groups`` and ``fan_out = prod(k) * C_out``, are
exactly what PyTorch computes from its ``OIHW`` weight.

The values are JAX's, bit for bit, but drawn as one flat vector and reshaped. JAX's random bits
for element ``i`` of a shape depend only on ``i`` in row-major order, so the values are the
same; what differs is the compile time: XLA:CPU takes seconds to compile the random-bit
generator over some 4-D shapes (with jax 0.10.2 on a 2-core Zen 4: 5.6 s for a
``(3, 2, 17, 13)`` normal, 0.3 s flat; a jitted ResNet-18 ``init``, 6.1 s against 3.1 s).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.nn import initializers

Initializer = jax.nn.initializers.Initializer


def _draw_flat(reference: Initializer, sample, scale_of) -> Initializer:
  """``sample(key, (n,), dtype) * scale_of(shape, dtype)``, reshaped to ``shape``: ``reference``'s
  values, drawn flat. ``reference`` (JAX's own) serves what the flat draw does not cover: a
  requested output sharding, fewer than two dimensions, non-float dtypes."""

  def init(key, shape, dtype=None, out_sharding=None):
    shape = tuple(int(d) for d in shape)
    dtype = jnp.dtype(jax.dtypes.canonicalize_dtype(jnp.float_ if dtype is None else dtype))
    if out_sharding is not None or len(shape) < 2 or not jnp.issubdtype(dtype, jnp.floating):
      return reference(key, shape, dtype, out_sharding=out_sharding)
    return (sample(key, (math.prod(shape),), dtype) * scale_of(shape, dtype)).reshape(shape)

  return init


def variance_scaling(scale: float, mode: str, distribution: str) -> Initializer:
  """:func:`jax.nn.initializers.variance_scaling` for ``[..., in, out]`` kernels, drawn flat.

  Variance ``scale / fan`` with ``fan = prod(shape[:-2]) * shape[-2]`` (``"fan_in"``) or
  ``* shape[-1]`` (``"fan_out"``); ``"normal"`` draws ``N(0, variance)``, ``"uniform"``
  draws ``U(+-sqrt(3 variance))``. The values equal JAX's bit for bit.

  Example:
    >>> import jax, numpy as np
    >>> init = variance_scaling(2.0, "fan_out", "normal")
    >>> w = init(jax.random.key(0), (3, 3, 16, 32))
    >>> ref = jax.nn.initializers.variance_scaling(2.0, "fan_out", "normal")
    >>> bool(np.array_equal(w, ref(jax.random.key(0), (3, 3, 16, 32))))
    True
  """
  if mode not in ("fan_in", "fan_out"):
    raise ValueError(f"mode={mode!r}: expected 'fan_in' or 'fan_out'")
  if distribution not in ("normal", "uniform"):
    raise ValueError(f"distribution={distribution!r}: expected 'normal' or 'uniform'")

  def scale_of(shape, dtype):
    fan = math.prod(shape[:-2]) * shape[-2 if mode == "fan_in" else -1]
    variance = jnp.array(scale / fan, dtype=dtype)
    return jnp.sqrt(3 * variance) if distribution == "uniform" else jnp.sqrt(variance)

  sample = (lambda key, n, dtype: jax.random.uniform(key, n, dtype, -1)) if distribution == "uniform" else jax.random.normal
  return _draw_flat(initializers.variance_scaling(scale, mode, distribution), sample, scale_of)


#: PyTorch's default for ``nn.Conv*d`` / ``nn.Linear`` weights, ``kaiming_uniform_(a=sqrt(5))``:
#: ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``, i.e. variance ``1 / (3 fan_in)``.
torch_default = variance_scaling(1.0 / 3.0, "fan_in", "uniform")

#: He et al. 2015 (``kaiming_normal_(mode="fan_out", nonlinearity="relu")``): ``N(0, 2 / fan_out)``.
#: torchvision's ResNet, VGG and MobileNetV2 convolutions.
kaiming_normal_fan_out = variance_scaling(2.0, "fan_out", "normal")

#: ``kaiming_normal_()`` with its defaults (``fan_in``, ReLU gain): torchvision's DenseNet convs.
kaiming_normal_fan_in = variance_scaling(2.0, "fan_in", "normal")

#: ``kaiming_uniform_()`` with its defaults: ``U(+-sqrt(6 / fan_in))``; torchvision's SqueezeNet.
kaiming_uniform_fan_in = variance_scaling(2.0, "fan_in", "uniform")

zeros = initializers.zeros
ones = initializers.ones


def normal(stddev: float) -> Initializer:
  """``N(0, stddev^2)``: torchvision's classifier layers (VGG, MobileNetV2: 0.01).

  Example:
    >>> import jax
    >>> w = normal(0.01)(jax.random.key(0), (512, 10))
    >>> w.shape
    (512, 10)
  """
  return _draw_flat(initializers.normal(stddev), jax.random.normal, lambda shape, dtype: jnp.array(stddev, dtype))


__all__ = [
    "Initializer",
    "kaiming_normal_fan_in",
    "kaiming_normal_fan_out",
    "kaiming_uniform_fan_in",
    "normal",
    "ones",
    "torch_default",
    "variance_scaling",
    "zeros",
]
