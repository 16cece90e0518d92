"""``jax.export`` of functions that use the native kernels.

Exporting lowers the native primitives to XLA's own convolution on every platform (CPU too): an
exported artifact does not depend on jaxconv's shared library being registered where it is
loaded, and ``jax.export`` cannot serialize custom calls it does not know. Plain ``jit`` keeps
the native custom calls.
"""

import functools

import jax
import numpy as np
import pytest

from jaxconv.models import create_model
from jaxconv.ops import conv, native_status
from helpers import normal

NATIVE = native_status().available


def _close(a, b, rel):
  a, b = np.asarray(a), np.asarray(b)
  assert a.shape == b.shape
  assert np.max(np.abs(a - b)) <= rel * max(np.max(np.abs(b)), 1e-3), np.max(np.abs(a - b))


def _problem():
  x = normal(jax.random.key(0), (4, 8, 8, 16))
  w = normal(jax.random.key(1), (3, 3, 16, 32), scale=0.1)
  return x, w


def _f(x, w):  # a Winograd forward, a strided direct one, their gradients
  y = conv(x, w, padding="SAME")
  return (y ** 2).mean() + (conv(x, w, stride=2, padding="SAME") ** 2).mean()


def _no_native_calls(text):
  assert "custom_call @jaxconv" not in text and 'call_target_name = "jaxconv' not in text


def test_jit_keeps_the_native_calls():
  if not NATIVE:
    pytest.skip("the native kernels are not available here")
  x, w = _problem()
  assert "jaxconv_conv" in jax.jit(jax.grad(_f, argnums=(0, 1))).lower(x, w).as_text()


def test_multi_platform_export():
  x, w = _problem()
  fn = jax.value_and_grad(_f, argnums=(0, 1))
  exp = jax.export.export(jax.jit(fn), platforms=("cpu", "cuda"))(x, w)
  assert exp.platforms == ("cpu", "cuda")
  text = exp.mlir_module()
  _no_native_calls(text)
  assert "stablehlo.convolution" in text
  got, want = exp.call(x, w), jax.jit(fn)(x, w)  # the CPU path of the artifact
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    _close(a, b, 1e-5)  # XLA's direct sums against the native Winograd kernels: float32 rounding


def test_export_whole_model_round_trips():
  pytest.importorskip("flatbuffers")  # jax.export's serialization needs it
  model = create_model("resnet18", num_classes=5, cifar_stem=True, width=8)
  x = normal(jax.random.key(1), (2, 16, 16, 3))
  variables = jax.jit(functools.partial(model.init, train=False))(jax.random.key(0), x)
  apply = jax.jit(functools.partial(model.apply, train=False))
  exp = jax.export.export(apply)(variables, x)
  _no_native_calls(exp.mlir_module())
  loaded = jax.export.deserialize(exp.serialize())
  want = apply(variables, x)
  _close(loaded.call(variables, x), want, 1e-5)
  _close(exp.call(variables, x), want, 1e-5)


def test_auto_choices_made_for_the_cpu_are_xla_convolutions_elsewhere():
  """A bfloat16 convolution has no native kernel: on CPU "auto" runs its kernel gradient as
  matrix products (im2col). Traced once and lowered for CUDA, every pass is XLA's convolution
  instead; lowered for the CPU, the matrix products stay, and the result is unchanged."""
  import jax.numpy as jnp

  from jaxconv.ops import _conv_grad

  if jax.default_backend() != "cpu":
    pytest.skip("the CPU's choices are traced on a CPU")
  x, w = (a.astype(jnp.bfloat16) for a in _problem())
  spec = _conv_grad.make_spec(x.shape, w.shape, (2, 2), ((0, 1),) * 2, (1, 1), 1, None, None, x.dtype)
  assert spec.kernel_grad == "im2col" and spec.cpu_passes == ("kernel_grad",)  # what "auto" picks on CPU
  fn = jax.jit(jax.value_and_grad(lambda x, w: (conv(x, w, stride=2, padding="SAME") ** 2).astype(jnp.float32).mean(),
                                  argnums=(0, 1)))
  traced = fn.trace(x, w)
  cuda = traced.lower(lowering_platforms=("cuda",)).as_text()
  cpu = traced.lower(lowering_platforms=("cpu",)).as_text()
  assert cuda.count("stablehlo.convolution") == 3 and "stablehlo.dot_general" not in cuda
  assert "stablehlo.dot_general" in cpu
  exp = jax.export.export(fn, platforms=("cpu", "cuda"))(x, w)
  for a, b in zip(jax.tree.leaves(exp.call(x, w)), jax.tree.leaves(fn(x, w))):
    np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32))
