"""The shared test inputs are what their docstrings say."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import max_abs, normal


@pytest.mark.parametrize("shape, dtype, scale", [((2, 5, 7, 3), jnp.float32, None), ((3, 3, 4, 8), jnp.float32, 0.3),
                                                 ((5, 7), jnp.bfloat16, None), ((1,), jnp.float32, 0.5)])
def test_normal_is_jax_random_normal_bit_for_bit(shape, dtype, scale):
  key = jax.random.key(11)
  want = jax.random.normal(key, shape, dtype)
  want = want if scale is None else want * scale
  got = normal(key, shape, dtype, scale)
  assert got.shape == want.shape and got.dtype == want.dtype
  np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_max_abs():
  assert max_abs(np.array([[-3.0, 2.0]], np.float32)) == 3.0 and max_abs(np.zeros((0, 2))) == 0.0
