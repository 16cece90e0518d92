"""Shared test inputs."""

import math

import jax
import jax.numpy as jnp


def normal(key: jax.Array, shape, dtype=jnp.float32) -> jax.Array:
  """``jax.random.normal(key, shape, dtype)``, bit for bit, drawn flat and reshaped.

  The values are the same; the compile is seconds shorter over some 4-D shapes (the reason is
  in ``jaxconv/nn/_init.py``'s docstring, whose initializers draw the same way).
  """
  return jax.random.normal(key, (math.prod(shape),), dtype).reshape(shape)
