"""Shared test inputs and comparisons.

Both stay out of XLA where they can: every distinct shape a test hands to an eager ``jnp`` call
is one more compiled program (tens of milliseconds each on CPU), and a suite of grid tests makes
thousands of them.
"""

import functools
import math
import os

import jax
import jax.numpy as jnp
import numpy as np


@functools.partial(jax.jit, static_argnums=(1, 2))
def _draw(key: jax.Array, size: int, dtype) -> jax.Array:
  return jax.random.normal(key, (size,), dtype)


def normal(key: jax.Array, shape, dtype=jnp.float32, scale=None) -> jax.Array:
  """``jax.random.normal(key, shape, dtype) * scale``, bit for bit.

  JAX's (partitionable) threefry gives element ``i`` of a draw the same value whatever the
  draw's size, so the values are the first ``prod(shape)`` of a flat draw whose size is the next
  power of two: one compiled program per size class instead of one per shape. The reshape and
  ``scale`` (rounded to ``dtype`` like a weakly typed scalar) happen in NumPy.
  """
  n = math.prod(shape)
  flat = np.asarray(_draw(key, 1 << max(n - 1, 0).bit_length(), jnp.dtype(dtype)))[:n]
  if scale is not None:
    flat = flat * np.asarray(scale, flat.dtype)
  return jax.device_put(flat.reshape(shape))  # jnp.asarray would compile a program per shape


def max_abs(a) -> float:
  """``max |a|`` as a Python float (0.0 for an empty array), computed by NumPy."""
  a = np.asarray(a, np.float64)
  return float(np.abs(a).max()) if a.size else 0.0


# XLA's default optimisation for one program when the suite compiles with the quick pipeline
# (tests/conftest.py), as ``jax.jit(f, compiler_options=OPTIMIZED)``: for the few programs a test
# runs hundreds of times (training curves, integrals of 200 steps), where unoptimised elementwise
# code (about 12x slower) costs more than the longer compile, and for checks that two
# formulations agree bit for bit, which hold on XLA's optimised code only.
OPTIMIZED = {"xla_backend_optimization_level": 2} if os.environ.get("JAXCONV_TEST_XLA_FLAGS") else None
