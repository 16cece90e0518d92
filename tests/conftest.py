"""Strict test harness: 8 fake CPU devices, rank promotion as an error, deterministic seeds."""

import os

# Must happen before JAX initialises its backends.
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
# The suite runs on CPU; JAXCONV_TEST_PLATFORM=gpu runs it on an accelerator instead (a device check).
PLATFORM = os.environ.get("JAXCONV_TEST_PLATFORM", "cpu")
if PLATFORM == "cpu":
  os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")  # TensorFlow (via tfds) must not grab GPUs

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_platforms", PLATFORM)
if PLATFORM != "cpu":
  # GPUs multiply float32 in TF32 by default (H100: 8e-4 relative between two formulations of
  # one convolution); the tests check float32 results, so they ask for full precision.
  jax.config.update("jax_default_matmul_precision", "highest")

settings.register_profile(
    "ci",
    derandomize=True,  # the same examples on every run
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture
def rng() -> np.random.Generator:
  """A NumPy generator with a fixed seed."""
  return np.random.default_rng(0)


@pytest.fixture
def key() -> jax.Array:
  """A JAX PRNG key with a fixed seed."""
  return jax.random.key(0)
