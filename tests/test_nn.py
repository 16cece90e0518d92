"""Layers of jaxconv.nn: parameters, agreement with independent references, dtypes, errors."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxconv
from jaxconv import nn as jnn
from jaxconv import reference
from helpers import OPTIMIZED


# One unoptimised compilation per call instead of eager op-by-op dispatch: far cheaper for tests.
jit = functools.partial(jax.jit, compiler_options=dict(xla_backend_optimization_level=0, xla_llvm_disable_expensive_passes=True))


def _init_apply(module, x, **kw):
  v = jit(functools.partial(module.init, **kw))(jax.random.key(1), x)
  return v, jit(functools.partial(module.apply, **kw))(v, x)


def test_public_names():
  for name in jnn.__all__:
    assert getattr(jnn, name) is not None
  assert jaxconv.nn is jnn and "nn" in jaxconv.__all__ and "models" in jaxconv.__all__


# ------------------------------------------------------------------------------ convolutions


CONV_CASES = [
    dict(kernel_size=3),
    dict(kernel_size=(3, 2), stride=2, padding=1),
    dict(kernel_size=3, padding="SAME", dilation=2),
    dict(kernel_size=3, padding=((2, 0), (1, 1)), groups=2, features=4),
    dict(kernel_size=3, padding="FULL", flip=True),
    dict(kernel_size=3, padding=1, padding_mode="reflect", stride=(1, 2)),
    dict(kernel_size=(2, 3), anchor=(0, 1), padding_mode="circular"),
    dict(kernel_size=3, padding="CAUSAL", padding_mode="replicate", use_bias=False),
]


@pytest.mark.parametrize("case", CONV_CASES, ids=str)
def test_conv_matches_loop_reference(case, rng):
  case = dict(case)
  features = case.pop("features", 6)
  layer = jnn.Conv(features, bias_init=jax.nn.initializers.normal(1.0), **case)
  x = rng.standard_normal((2, 7, 6, 4)).astype(np.float32)
  v, y = _init_apply(layer, x)
  p = v["params"]
  groups = case.get("groups", 1)
  assert p["kernel"].shape == tuple(np.broadcast_to(case["kernel_size"], (2,))) + (4 // groups, features)
  assert ("bias" in p) == case.get("use_bias", True)
  opts = {k: case[k] for k in ("stride", "padding", "padding_mode", "dilation", "groups", "flip", "anchor") if k in case}
  want = reference.conv_loops(x, np.asarray(p["kernel"]), None if "bias" not in p else np.asarray(p["bias"]), **opts)
  np.testing.assert_allclose(y, want, rtol=1e-4, atol=1e-4)


def test_conv_1d_3d_and_unbatched(rng):
  x1 = rng.standard_normal((2, 9, 3)).astype(np.float32)
  v, y = _init_apply(jnn.Conv(5, 3, stride=2), x1)
  np.testing.assert_allclose(y, reference.conv_loops(x1, np.asarray(v["params"]["kernel"]), stride=2), rtol=1e-4, atol=1e-5)
  x3 = rng.standard_normal((1, 4, 5, 6, 2)).astype(np.float32)
  assert _init_apply(jnn.Conv(3, 2), x3)[1].shape == (1, 3, 4, 5, 3)
  layer = jnn.Conv(3, (3, 3), padding=1)
  v = layer.init(jax.random.key(0), x3[0, 0])            # unbatched [H, W, C] with a sequence kernel
  assert layer.apply(v, x3[0, 0]).shape == (5, 6, 3)


def test_conv_default_inits():
  # PyTorch's default weight init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)); biases zero.
  v = jnn.Conv(256, 3).init(jax.random.key(0), jnp.ones((1, 5, 5, 64)))
  k = np.asarray(v["params"]["kernel"])
  bound = 1 / np.sqrt(3 * 3 * 64)
  assert np.abs(k).max() <= bound and np.abs(k).max() > 0.98 * bound
  assert np.all(np.asarray(v["params"]["bias"]) == 0)


def test_kaiming_fan_out_matches_torchvision_formula():
  k = jnn.initializers.kaiming_normal_fan_out(jax.random.key(0), (3, 3, 64, 128))
  np.testing.assert_allclose(np.std(np.asarray(k)), np.sqrt(2 / (3 * 3 * 128)), rtol=0.02)
  # grouped (depthwise) kernel: fan_out = k*k*C_out as PyTorch computes it from [C_out, C_in/g, k, k]
  k = jnn.initializers.kaiming_normal_fan_out(jax.random.key(1), (3, 3, 1, 4096))
  np.testing.assert_allclose(np.std(np.asarray(k)), np.sqrt(2 / (9 * 4096)), rtol=0.02)
  k = jnn.initializers.kaiming_normal_fan_in(jax.random.key(2), (3, 3, 128, 256))
  np.testing.assert_allclose(np.std(np.asarray(k)), np.sqrt(2 / (9 * 128)), rtol=0.02)


@pytest.mark.parametrize("partitionable", [True, False])
def test_initializers_equal_jax_bit_for_bit(partitionable):
  """The flat draw gives JAX's own values (both threefry modes), for every rule, dtypes, and
  the shapes it hands back to JAX (1-D, complex). Compiled with XLA's optimisation (``OPTIMIZED``):
  the two formulations agree bit for bit there, not in the quick pipeline's unoptimised code."""
  import itertools

  from jax.nn import initializers as ji

  pairs = []  # (ours, JAX's), all evaluated in one jit
  for shape, dtype in [((3, 3, 16, 32), jnp.float32), ((5, 7), jnp.bfloat16), ((2, 1, 3, 4, 5), jnp.float32),
                       ((7,), jnp.float32), ((3, 4), jnp.complex64)]:
    rules = itertools.product((1 / 3, 2.0), ("fan_in", "fan_out"), ("normal", "uniform")) if len(shape) > 1 else ()
    for scale, mode, dist in rules:
      if dtype != jnp.complex64:
        pairs.append((jnn.initializers.variance_scaling(scale, mode, dist), ji.variance_scaling(scale, mode, dist),
                      shape, dtype))
    pairs.append((jnn.initializers.normal(0.01), ji.normal(0.01), shape, dtype))

  old = jax.config.jax_threefry_partitionable
  jax.config.update("jax_threefry_partitionable", partitionable)
  try:
    out = jax.jit(lambda key: [(ours(key, s, d), theirs(key, s, d)) for ours, theirs, s, d in pairs],
                  compiler_options=OPTIMIZED)(jax.random.key(11))
  finally:
    jax.config.update("jax_threefry_partitionable", old)
  for (got, want), (_, _, shape, dtype) in zip(out, pairs):
    assert got.dtype == want.dtype == dtype and np.array_equal(np.asarray(got), np.asarray(want)), shape
  with pytest.raises(ValueError, match="mode='fan_avg'"):
    jnn.initializers.variance_scaling(1.0, "fan_avg", "normal")
  with pytest.raises(ValueError, match="distribution='truncated_normal'"):
    jnn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal")


def test_conv_dtypes():
  layer = jnn.Conv(4, 3, dtype=jnp.bfloat16)
  x = jnp.ones((1, 6, 6, 2))
  v = jax.eval_shape(layer.init, jax.random.key(0), x)
  assert v["params"]["kernel"].dtype == jnp.float32
  assert jax.eval_shape(layer.apply, v, x).dtype == jnp.bfloat16
  v16 = jax.eval_shape(jnn.Conv(4, 3, param_dtype=jnp.bfloat16).init, jax.random.key(0), x.astype(jnp.bfloat16))
  assert v16["params"]["kernel"].dtype == jnp.bfloat16


def test_conv_transpose_is_adjoint_of_conv(rng):
  # <conv(u, w), y> == <u, conv_transpose(y, w)> with the layer's kernel (no bias).
  layer = jnn.ConvTranspose(3, (3, 3), stride=2, padding=1, output_padding=1, use_bias=False)
  y = rng.standard_normal((2, 4, 4, 5)).astype(np.float32)
  v, xt = _init_apply(layer, y)
  k = np.asarray(v["params"]["kernel"])
  assert k.shape == (3, 3, 3, 5) and xt.shape == (2, 8, 8, 3)
  u = rng.standard_normal(xt.shape).astype(np.float32)
  fwd = reference.conv_loops(u, k, stride=2, padding=1)
  np.testing.assert_allclose(np.vdot(fwd, y), np.vdot(u, np.asarray(xt)), rtol=1e-4)
  np.testing.assert_allclose(xt, reference.conv_transpose_loops(y, k, stride=2, padding=1, output_padding=1), rtol=1e-4, atol=1e-5)


def test_depthwise_and_separable(rng):
  x = rng.standard_normal((2, 6, 6, 3)).astype(np.float32)
  v, y = _init_apply(jnn.DepthwiseConv(3, multiplier=2, padding=1), x)
  k = np.asarray(v["params"]["kernel"])
  assert k.shape == (3, 3, 1, 6)
  np.testing.assert_allclose(y, reference.conv_loops(x, k, padding=1, groups=3), rtol=1e-4, atol=1e-5)
  v, y = _init_apply(jnn.SeparableConv(5, 3, stride=2, padding=1, bias_init=jax.nn.initializers.ones), x)
  p = {k: np.asarray(a) for k, a in v["params"].items()}
  h = reference.conv_loops(x, p["depthwise_kernel"], stride=2, padding=1, groups=3)
  want = np.einsum("nhwc,co->nhwo", h, p["pointwise_kernel"][0, 0]) + p["bias"].reshape(1, 1, 1, -1)
  np.testing.assert_allclose(y, want, rtol=1e-4, atol=1e-5)


def test_conv_channel_mismatch_names_the_layer():
  layer = jnn.Conv(4, 3)
  v = jax.eval_shape(layer.init, jax.random.key(0), jnp.ones((1, 5, 5, 3)))
  with pytest.raises(ValueError, match=r"channel mismatch at Conv .*kernel \(3, 3, 3, 4\).*\(3, 3, 1, 4\)"):
    jax.eval_shape(layer.apply, v, jnp.ones((1, 5, 5, 1)))


def test_conv_too_small_input_names_the_layer():
  with pytest.raises(ValueError, match=r"input too small at Conv .*spatial shape \(2, 8\).*spans 3 in spatial dimension 0"):
    jax.eval_shape(jnn.Conv(4, 3).init, jax.random.key(0), jnp.ones((1, 2, 8, 3)))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(features=4, kernel_size=3, groups=2), r"groups \(2\) must be a positive int dividing both the input channels \(3\)"),
        (dict(features=0, kernel_size=3), r"features must be a positive int; got 0"),
        (dict(features=4, kernel_size=(3,)), r"x must have rank 3 .* or 2 \(unbatched\) for kernel_size \(3,\)"),
    ],
)
def test_conv_bad_arguments(kwargs, match):
  with pytest.raises(ValueError, match=match):
    jax.eval_shape(jnn.Conv(**kwargs).init, jax.random.key(0), jnp.ones((1, 6, 6, 3)))


def test_conv_passes_op_errors_through():
  with pytest.raises(ValueError, match="padding_mode must be one of"):
    jax.eval_shape(jnn.Conv(2, 3, padding_mode="mirror").init, jax.random.key(0), jnp.ones((1, 6, 6, 3)))


# ------------------------------------------------------------------------------ pooling


def test_pool_layers_match_loop_reference(rng):
  x = rng.standard_normal((2, 7, 7, 3)).astype(np.float32)
  y = jnn.MaxPool(3, stride=2, padding=1, ceil_mode=True).apply({}, x)
  np.testing.assert_allclose(y, reference.pool_loop(x, "max", (3, 3), (2, 2), ((1, 1), (1, 1)), ceil_mode=True))
  y = jnn.AvgPool(2, count_include_pad=False, padding=1).apply({}, x)
  np.testing.assert_allclose(y, reference.pool_loop(x, "avg", (2, 2), (2, 2), ((1, 1), (1, 1)), count_include_pad=False),
                             rtol=1e-6, atol=3e-7)  # summation order aside: an ulp of the inputs (|x| < 4)
  np.testing.assert_allclose(jnn.GlobalAvgPool().apply({}, x), x.mean((1, 2)), rtol=1e-6)
  np.testing.assert_allclose(jnn.GlobalMaxPool(keepdims=True).apply({}, x), x.max((1, 2), keepdims=True))
  np.testing.assert_allclose(jnn.AdaptiveAvgPool(3).apply({}, x), reference.adaptive_pool_loop(x, (3, 3), "avg"), rtol=1e-6)
  np.testing.assert_allclose(jnn.AdaptiveMaxPool((2, 3)).apply({}, x), reference.adaptive_pool_loop(x, (2, 3), "max"))


def test_pool_too_small_names_the_layer():
  with pytest.raises(ValueError, match=r"input too small at MaxPool .*spatial shape \(1, 1\).*window spans 2"):
    jnn.MaxPool(2).apply({}, jnp.ones((1, 1, 1, 3)))
  # An adaptive pool to more bins than the input has repeats elements, as PyTorch's does.
  x = jnp.arange(10.0).reshape(1, 2, 5, 1)
  np.testing.assert_array_equal(jnn.AdaptiveAvgPool(3).apply({}, x), reference.adaptive_pool_loop(x, (3, 3), "avg"))


# ------------------------------------------------------------------------------ normalisation


def _np_bn_train(x, scale, bias, eps):
  mu = x.mean(axis=(0, 1, 2))
  var = x.var(axis=(0, 1, 2))
  return (x - mu) / np.sqrt(var + eps) * scale + bias, mu, var


def test_batch_norm_train_and_eval(rng):
  x = (3 + 2 * rng.standard_normal((4, 3, 3, 5))).astype(np.float32)
  bn = jnn.BatchNorm(momentum=0.8, epsilon=1e-3, scale_init=jax.nn.initializers.normal(1.0), bias_init=jax.nn.initializers.normal(1.0))
  v = bn.init(jax.random.key(0), x, train=False)
  assert set(v) == {"params", "batch_stats"}
  np.testing.assert_array_equal(v["batch_stats"]["mean"], np.zeros(5))
  np.testing.assert_array_equal(v["batch_stats"]["var"], np.ones(5))
  scale, bias = np.asarray(v["params"]["scale"]), np.asarray(v["params"]["bias"])
  y, upd = bn.apply(v, x, train=True, mutable=["batch_stats"])
  want, mu, var = _np_bn_train(x.astype(np.float64), scale, bias, 1e-3)
  np.testing.assert_allclose(y, want, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(upd["batch_stats"]["mean"], 0.2 * mu, rtol=1e-5)
  np.testing.assert_allclose(upd["batch_stats"]["var"], 0.8 + 0.2 * var, rtol=1e-5)
  # eval mode uses the running statistics and changes nothing
  v2 = {"params": v["params"], **upd}
  y_eval = bn.apply(v2, x, train=False)
  m, s = np.asarray(upd["batch_stats"]["mean"]), np.asarray(upd["batch_stats"]["var"])
  np.testing.assert_allclose(y_eval, (x - m) / np.sqrt(s + 1e-3) * scale + bias, rtol=1e-4, atol=1e-4)


def test_batch_norm_mask_ignores_padded_examples(rng):
  x = rng.standard_normal((6, 2, 2, 3)).astype(np.float32)
  bn = jnn.BatchNorm(train=True)
  v = bn.init(jax.random.key(0), x)
  mask = np.array([1, 1, 1, 1, 0, 0], bool)
  _, upd = bn.apply(v, x, mask=mask, mutable=["batch_stats"])
  np.testing.assert_allclose(upd["batch_stats"]["mean"], 0.1 * x[:4].mean((0, 1, 2)), rtol=1e-5, atol=1e-7)


def test_batch_norm_axis_name_gives_global_statistics(rng):
  # 4 devices x 2 examples: statistics over the 8-example global batch.
  x = rng.standard_normal((4, 2, 3, 3, 2)).astype(np.float32)
  bn = jnn.BatchNorm(axis_name="batch")
  v = bn.init(jax.random.key(0), x[0], train=False)
  f = jax.pmap(lambda xs: bn.apply(v, xs, train=True, mutable=["batch_stats"]), axis_name="batch", devices=jax.devices()[:4])
  y, upd = f(x)
  flat = x.reshape(8, 3, 3, 2).astype(np.float64)
  want, mu, _ = _np_bn_train(flat, 1.0, 0.0, 1e-5)
  np.testing.assert_allclose(np.asarray(y).reshape(8, 3, 3, 2), want, rtol=1e-4, atol=1e-4)
  for d in range(4):
    np.testing.assert_allclose(upd["batch_stats"]["mean"][d], 0.1 * mu, rtol=1e-4, atol=1e-6)


def test_batch_norm_bfloat16_keeps_float32_statistics():
  bn = jnn.BatchNorm(dtype=jnp.bfloat16)
  x = jnp.ones((2, 3, 3, 4), jnp.float32)
  v = bn.init(jax.random.key(0), x, train=False)
  y, upd = bn.apply(v, x, train=True, mutable=["batch_stats"])
  assert y.dtype == jnp.bfloat16 and upd["batch_stats"]["mean"].dtype == jnp.float32
  assert v["params"]["scale"].dtype == jnp.float32


def test_batch_norm_errors_say_what_to_do():
  bn = jnn.BatchNorm()
  x = jnp.ones((2, 4))
  v = bn.init(jax.random.key(0), x, train=False)
  with pytest.raises(ValueError, match=r"mutable=\['batch_stats'\]"):
    bn.apply(v, x, train=True)
  with pytest.raises(ValueError, match=r"has no running statistics: apply the model with all the variables .*'batch_stats'"):
    bn.apply({"params": v["params"]}, x, train=False)
  with pytest.raises(ValueError, match=r"channel mismatch at BatchNorm"):
    bn.apply(v, jnp.ones((2, 5)), train=False)
  with pytest.raises(ValueError, match=r"train"):
    bn.init(jax.random.key(0), x)                      # train given neither as attribute nor argument


def test_local_response_norm_matches_loop(rng):
  x = rng.standard_normal((1, 3, 3, 7)).astype(np.float32)
  y = jnn.LocalResponseNorm(size=3, alpha=0.5, beta=0.75, k=2.0).apply({}, x)
  np.testing.assert_allclose(y, reference.lrn_loop(x, size=3, alpha=0.5, beta=0.75, k=2.0), rtol=1e-5)


def test_layers_jit_and_grad(rng):
  # The layers are pure: jit gives the same answer and gradients check numerically.
  layer = jnn.Conv(3, 3, stride=2, padding=1)
  x = rng.standard_normal((1, 5, 5, 2)).astype(np.float32)
  v = layer.init(jax.random.key(0), x)
  np.testing.assert_allclose(jax.jit(layer.apply)(v, x), layer.apply(v, x), rtol=1e-6)
  from jax.test_util import check_grads

  f = functools.partial(layer.apply)
  check_grads(lambda p, x: f({"params": p}, x), (v["params"], x), order=1, modes=("rev",), atol=1e-2, rtol=1e-2)


@pytest.mark.parametrize("layer", [jnn.DepthwiseConv(3, multiplier=0), jnn.SeparableConv(4, 3, multiplier=-1)])
def test_depth_multiplier_must_be_positive(layer):
  with pytest.raises(ValueError, match="multiplier must be a positive int"):
    jax.eval_shape(layer.init, jax.random.key(0), jnp.ones((1, 8, 8, 4)))
