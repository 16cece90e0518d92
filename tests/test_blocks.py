"""Blocks of jaxconv.nn.blocks against hand-written compositions of the reference convolution.

Every block runs in eval mode with randomised parameters and running statistics, so that each
norm is a non-trivial affine map, and is compared with the same computation written directly
from the paper's equations with a NumPy convolution (a sum over kernel taps of strided slices,
independent of ``ops.conv``).
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxconv import reference
from jaxconv.nn import BatchNorm, blocks

EPS = 1e-5
relu = lambda a: np.maximum(a, 0)  # noqa: E731
sigmoid = lambda a: 1 / (1 + np.exp(-a))  # noqa: E731


def randomize(variables, seed=0):
  """Random parameters (so nothing is zero or one) and positive running variances."""
  leaves, tree = jax.tree.flatten_with_path(variables)
  rng = np.random.default_rng(seed)
  out = []
  for path, v in leaves:
    a = rng.standard_normal(v.shape).astype(np.float32) * (0.5 if v.ndim > 1 else 1.0)
    if path[-1].key == "var":
      a = np.abs(a) + 0.5
    out.append(jnp.asarray(a))
  return jax.tree.unflatten(tree, out)


FAST = dict(xla_backend_optimization_level=0, xla_llvm_disable_expensive_passes=True)


def run(block, x, seed=0):
  """Initialise (shapes only), randomise, and apply the block in one cheap compilation."""
  v = randomize(jax.eval_shape(block.init, jax.random.key(0), x), seed)
  y = np.asarray(jax.jit(block.apply, compiler_options=FAST)(v, x))
  p = jax.tree.map(np.asarray, v["params"])
  s = jax.tree.map(np.asarray, v.get("batch_stats", {}))
  return y, p, s


def conv(x, p, stride=1, padding=0, groups=1):
  """Reference convolution in NumPy: a sum over kernel taps of strided slices times weights."""
  k = p["kernel"].astype(np.float64)
  kh, kw, cig, co = k.shape
  xp = np.pad(np.asarray(x, np.float64), ((0, 0), (padding, padding), (padding, padding), (0, 0)))
  n, h, w, _ = xp.shape
  oh, ow = (h - kh) // stride + 1, (w - kw) // stride + 1
  og = co // groups
  out = np.zeros((n, oh, ow, co))
  for i in range(kh):
    for j in range(kw):
      patch = xp[:, i:i + stride * (oh - 1) + 1:stride, j:j + stride * (ow - 1) + 1:stride, :]
      for g in range(groups):
        out[..., g * og:(g + 1) * og] += patch[..., g * cig:(g + 1) * cig] @ k[i, j, :, g * og:(g + 1) * og]
  return out + p["bias"] if "bias" in p else out


def bn(x, p, s):
  return (x - s["mean"]) / np.sqrt(s["var"] + EPS) * p["scale"] + p["bias"]


def cna(x, p, s, stride=1, padding=0, groups=1, act=relu):
  y = bn(conv(x, p["conv"], stride, padding, groups), p["bn"], s["bn"])
  return y if act is None else act(y)


@pytest.fixture
def x(rng):
  return rng.standard_normal((2, 8, 8, 8)).astype(np.float32)


@pytest.mark.parametrize("stride, features", [(1, 8), (2, 16)])
def test_basic_block(x, stride, features):
  y, p, s = run(blocks.BasicBlock(features, stride=stride), x)
  h = relu(bn(conv(x, p["conv1"], stride, 1), p["bn1"], s["bn1"]))
  h = bn(conv(h, p["conv2"], 1, 1), p["bn2"], s["bn2"])
  sc = x if stride == 1 else bn(conv(x, p["downsample_conv"], stride), p["downsample_bn"], s["downsample_bn"])
  np.testing.assert_allclose(y, relu(h + sc), rtol=2e-4, atol=2e-4)
  assert ("downsample_conv" in p) == (stride != 1)


def test_bottleneck_v15_puts_the_stride_on_the_3x3(x):
  y, p, s = run(blocks.Bottleneck(4, stride=2), x)
  assert p["conv1"]["kernel"].shape == (1, 1, 8, 4) and p["conv2"]["kernel"].shape == (3, 3, 4, 4)
  h = relu(bn(conv(x, p["conv1"]), p["bn1"], s["bn1"]))                 # 1x1, stride 1
  h = relu(bn(conv(h, p["conv2"], 2, 1), p["bn2"], s["bn2"]))           # 3x3, stride 2
  h = bn(conv(h, p["conv3"]), p["bn3"], s["bn3"])
  sc = bn(conv(x, p["downsample_conv"], 2), p["downsample_bn"], s["downsample_bn"])
  assert y.shape == (2, 4, 4, 16)
  np.testing.assert_allclose(y, relu(h + sc), rtol=2e-4, atol=2e-4)


def test_bottleneck_groups_and_width():
  v = jax.eval_shape(blocks.Bottleneck(8, groups=4, base_width=32).init, jax.random.key(0), jnp.ones((1, 4, 4, 32)))
  # ResNeXt width = features * base_width / 64 * groups = 16; grouped 3x3 has 16 / 4 inputs per group
  assert v["params"]["conv2"]["kernel"].shape == (3, 3, 4, 16)


def test_preact_bottleneck(x):
  y, p, s = run(blocks.PreActBottleneck(4, stride=2), x)
  a = relu(bn(x, p["bn1"], s["bn1"]))
  sc = conv(a, p["downsample_conv"], 2)                                  # projection of the pre-activation, no norm
  h = conv(a, p["conv1"])
  h = conv(relu(bn(h, p["bn2"], s["bn2"])), p["conv2"], 2, 1)
  h = conv(relu(bn(h, p["bn3"], s["bn3"])), p["conv3"])
  np.testing.assert_allclose(y, h + sc, rtol=2e-4, atol=2e-4)
  assert "downsample_bn" not in p


def test_preact_basic_identity_path_has_no_activation(x):
  y, p, s = run(blocks.PreActBasicBlock(8), x)
  a = relu(bn(x, p["bn1"], s["bn1"]))
  h = conv(relu(bn(conv(a, p["conv1"], 1, 1), p["bn2"], s["bn2"])), p["conv2"], 1, 1)
  np.testing.assert_allclose(y, x + h, rtol=2e-4, atol=2e-4)
  assert (y < 0).any()


def test_zero_init_last_makes_the_block_an_identity(x):
  block = blocks.BasicBlock(8, zero_init_last=True)
  v = jax.jit(block.init, compiler_options=FAST)(jax.random.key(0), x)
  np.testing.assert_array_equal(v["params"]["bn2"]["scale"], np.zeros(8))
  np.testing.assert_allclose(jax.jit(block.apply, compiler_options=FAST)(v, x), relu(x), rtol=1e-6)   # relu(0 + x)
  v = jax.jit(blocks.Bottleneck(2, zero_init_last=True).init, compiler_options=FAST)(jax.random.key(0), x)
  assert not np.any(v["params"]["bn3"]["scale"]) and np.all(v["params"]["bn2"]["scale"] == 1)


def test_squeeze_excite(x):
  y, p, _ = run(blocks.SqueezeExcite(reduction=4), x)
  assert p["fc1"]["kernel"].shape == (1, 1, 8, 2)
  m = x.mean(axis=(1, 2))
  g = sigmoid(relu(m @ p["fc1"]["kernel"][0, 0] + p["fc1"]["bias"]) @ p["fc2"]["kernel"][0, 0] + p["fc2"]["bias"])
  np.testing.assert_allclose(y, x * g[:, None, None, :], rtol=1e-4, atol=1e-5)


def test_se_in_a_residual_block_scales_the_branch_before_the_add(x):
  se = functools.partial(blocks.SqueezeExcite, reduction=2)
  y, p, s = run(blocks.BasicBlock(8, se=se), x)
  h = relu(bn(conv(x, p["conv1"], 1, 1), p["bn1"], s["bn1"]))
  h = bn(conv(h, p["conv2"], 1, 1), p["bn2"], s["bn2"])
  q = p["se"]
  g = sigmoid(relu(h.mean((1, 2)) @ q["fc1"]["kernel"][0, 0] + q["fc1"]["bias"]) @ q["fc2"]["kernel"][0, 0] + q["fc2"]["bias"])
  np.testing.assert_allclose(y, relu(h * g[:, None, None, :] + x), rtol=2e-4, atol=2e-4)


def test_inception(x):
  y, p, s = run(blocks.Inception(3, 2, 4, 2, 5, 6), x)
  b1 = cna(x, p["branch1"], s["branch1"])
  b2 = cna(cna(x, p["branch2_reduce"], s["branch2_reduce"]), p["branch2"], s["branch2"], padding=1)
  b3 = cna(cna(x, p["branch3_reduce"], s["branch3_reduce"]), p["branch3"], s["branch3"], padding=1)
  pooled = reference.pool_loop(x, "max", (3, 3), (1, 1), ((1, 1), (1, 1)), ceil_mode=True)
  b4 = cna(pooled, p["branch4"], s["branch4"])
  np.testing.assert_allclose(y, np.concatenate([b1, b2, b3, b4], -1), rtol=2e-4, atol=2e-4)
  v = jax.eval_shape(blocks.Inception(3, 2, 4, 2, 5, 6, branch3_kernel=5).init, jax.random.key(0), x)
  assert v["params"]["branch3"]["conv"]["kernel"].shape == (5, 5, 2, 5)


def test_depthwise_separable(x):
  y, p, s = run(blocks.DepthwiseSeparable(12, stride=2), x)
  h = cna(x, p["depthwise"], s["depthwise"], stride=2, padding=1, groups=8)
  np.testing.assert_allclose(y, cna(h, p["pointwise"], s["pointwise"]), rtol=2e-4, atol=2e-4)
  assert p["depthwise"]["conv"]["kernel"].shape == (3, 3, 1, 8)


@pytest.mark.parametrize("stride, features, t", [(1, 8, 6), (2, 8, 6), (1, 12, 1)])
def test_inverted_residual(x, stride, features, t):
  y, p, s = run(blocks.InvertedResidual(features, stride=stride, expand_ratio=t), x)
  relu6 = lambda a: np.clip(a, 0, 6)  # noqa: E731
  h = x
  if t != 1:
    h = cna(h, p["expand"], s["expand"], act=relu6)
  else:
    assert "expand" not in p
  hidden = 8 * t
  h = cna(h, p["depthwise"], s["depthwise"], stride=stride, padding=1, groups=hidden, act=relu6)
  h = cna(h, p["project"], s["project"], act=None)                     # linear bottleneck
  if stride == 1 and features == 8:
    h = h + x
  np.testing.assert_allclose(y, h, rtol=2e-4, atol=2e-4)


def test_dense_block_and_transition(x):
  y, p, s = run(blocks.DenseBlock(2, growth_rate=3, bn_size=2), x)
  feats = x
  for i in (1, 2):
    q, t = p[f"layer{i}"], s[f"layer{i}"]
    h = conv(relu(bn(feats, q["bn1"], t["bn1"])), q["conv1"])
    h = conv(relu(bn(h, q["bn2"], t["bn2"])), q["conv2"], 1, 1)
    feats = np.concatenate([feats, h], -1)
  np.testing.assert_allclose(y, feats, rtol=2e-4, atol=2e-4)
  np.testing.assert_array_equal(y[..., :8], x)                            # the input is carried through
  y, p, s = run(blocks.Transition(7), feats)
  h = conv(relu(bn(feats, p["bn"], s["bn"])), p["conv"])
  np.testing.assert_allclose(y, h.reshape(2, 4, 2, 4, 2, 7).mean((2, 4)), rtol=2e-4, atol=2e-4)


def test_fire(x):
  y, p, _ = run(blocks.Fire(3, 4, 5), x)
  sq = relu(conv(x, p["squeeze"]))
  want = np.concatenate([relu(conv(sq, p["expand1x1"])), relu(conv(sq, p["expand3x3"], 1, 1))], -1)
  np.testing.assert_allclose(y, want, rtol=2e-4, atol=2e-4)


def test_blocks_take_their_layers_as_data(x):
  # A block built with another norm and activation uses them (variants are data, not classes).
  ln = functools.partial(nn.LayerNorm)
  block = blocks.BasicBlock(8, norm=ln, act=nn.gelu)
  v = randomize(jax.eval_shape(block.init, jax.random.key(0), x))
  assert "batch_stats" not in v and set(v["params"]["bn1"]) == {"scale", "bias"}
  y = jax.jit(block.apply, compiler_options=FAST)(v, x)
  assert (np.asarray(y) < 0).any()                                       # gelu, unlike relu, goes negative


def test_blocks_train_mode_updates_statistics(x):
  norm = functools.partial(BatchNorm, train=True)
  block = blocks.Bottleneck(2, norm=norm)
  v = randomize(jax.eval_shape(block.init, jax.random.key(0), x))
  _, upd = jax.jit(functools.partial(block.apply, mutable=["batch_stats"]), compiler_options=FAST)(v, x)
  assert set(upd["batch_stats"]) == {"bn1", "bn2", "bn3"}
  assert not np.allclose(upd["batch_stats"]["bn1"]["mean"], 0)


def test_channel_mismatch_between_blocks_is_explained(x):
  with pytest.raises(ValueError, match=r"channel mismatch at BasicBlock .*8 channels at stride 1 .* 16 channels at stride 2; set projection=True"):
    jax.eval_shape(blocks.BasicBlock(16, stride=2, projection=False).init, jax.random.key(0), x)
  block = blocks.Fire(2, 4, 4)
  v = jax.eval_shape(block.init, jax.random.key(0), x)
  with pytest.raises(ValueError, match=r"channel mismatch at Conv 'squeeze'"):
    jax.eval_shape(block.apply, v, x[..., :4])
  with pytest.raises(ValueError, match=r"stride must be 1 or 2; got 3"):
    jax.eval_shape(blocks.InvertedResidual(8, stride=3).init, jax.random.key(0), x)
