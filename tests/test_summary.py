"""Tests of jaxconv.summary: per-layer shapes, parameters, MACs, receptive fields, exports, CLI.

References are independent of the code under test:
* shapes, parameters and MACs of small models are derived by hand in the comments;
* parameter totals are counted from a real ``model.init``;
* receptive fields are measured: the support of the input gradient of the centre output unit
  (all-positive weights and inputs, so nothing cancels), or, through max pools (whose gradient
  reaches one element per window), the set of input pixels whose perturbation changes that unit.
"""

from __future__ import annotations

import json
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import jaxconv
from jaxconv import models, ops
from jaxconv.ops import conv_config
from jaxconv.ops.shapes import ReceptiveField
from jaxconv.summary import LayerInfo, Summary, summary
from jaxconv.summary.cli import main as cli_main

# --------------------------------------------------------------------------------------------
# Stock Flax models (no jaxconv.nn), each exercising one kind of composition.


class SeqNet(nn.Module):
  """Sequential conv/pool stack: VALID, strided, dilated, SAME, avg pool."""

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(6, (3, 3), padding="VALID", name="c1")(x))      # 22 -> 20
    x = nn.avg_pool(x, (2, 2), strides=(2, 2))                           # 20 -> 10
    x = nn.relu(nn.Conv(8, (3, 3), padding=2, kernel_dilation=2, name="c2")(x))  # 10 -> 10
    x = nn.Conv(8, (3, 3), strides=(2, 2), padding="SAME", name="c3")(x)  # 10 -> 5
    return x


class BasicBlock(nn.Module):
  features: int
  stride: int = 1

  @nn.compact
  def __call__(self, x):
    y = nn.relu(nn.Conv(self.features, (3, 3), strides=self.stride, padding=1, name="conv1")(x))
    y = nn.Conv(self.features, (3, 3), padding=1, name="conv2")(y)
    if self.stride != 1 or x.shape[-1] != self.features:
      x = nn.Conv(self.features, (1, 1), strides=self.stride, name="proj")(x)
    return nn.relu(x + y)


class ResNetTiny(nn.Module):
  """Residual branches: identity shortcut and a strided 1x1 projection shortcut."""

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(4, (3, 3), padding=1, name="stem")(x))
    x = BasicBlock(4, name="block1")(x)
    x = BasicBlock(6, stride=2, name="block2")(x)
    return x


class Inception(nn.Module):
  """GoogLeNet-style concatenation of 1x1, 3x3, double-3x3 and pool branches."""

  @nn.compact
  def __call__(self, x):
    b1 = nn.Conv(2, (1, 1), name="b1")(x)
    b2 = nn.Conv(3, (3, 3), padding=1, name="b2b")(nn.Conv(2, (1, 1), name="b2a")(x))
    b3 = nn.Conv(2, (3, 3), padding=1, name="b3c")(
        nn.Conv(2, (3, 3), padding=1, name="b3b")(nn.Conv(2, (1, 1), name="b3a")(x)))
    b4 = nn.Conv(2, (1, 1), name="b4")(nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1))))
    return jnp.concatenate([b1, b2, b3, b4], axis=-1)


class InceptionNet(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = nn.Conv(4, (3, 3), strides=2, padding=1, name="stem")(x)
    x = Inception(name="inc")(x)
    return nn.Conv(4, (3, 3), name="out")(x)


class SENet(nn.Module):
  """Squeeze-and-excitation: a global branch broadcast back onto the feature map."""

  @nn.compact
  def __call__(self, x):
    x = nn.Conv(4, (3, 3), padding=1, name="c1")(x)
    s = nn.sigmoid(nn.Dense(4, name="fc")(x.mean(axis=(1, 2))))
    x = x * s.reshape(s.shape[0], 1, 1, -1)
    return nn.Conv(4, (3, 3), padding=1, name="c2")(x)


@jax.custom_vjp
def _conv_vjp(x, w):
  return ops.conv(x, w, padding=((2, 0), (0, 1)), dilation=(1, 2))


def _conv_vjp_fwd(x, w):
  return _conv_vjp(x, w), (x, w)


def _conv_vjp_bwd(res, g):
  x, w = res
  return jax.vjp(lambda x, w: ops.conv(x, w, padding=((2, 0), (0, 1)), dilation=(1, 2)), x, w)[1](g)


_conv_vjp.defvjp(_conv_vjp_fwd, _conv_vjp_bwd)


class OpsNet(nn.Module):
  """jaxconv.ops.conv with asymmetric padding, anchors, groups; inside custom_vjp, remat and jit."""

  @nn.compact
  def __call__(self, x):
    w1 = self.param("w1", nn.initializers.lecun_normal(), (3, 3, 3, 6))
    w2 = self.param("w2", nn.initializers.lecun_normal(), (3, 3, 6, 6))
    w3 = self.param("w3", nn.initializers.lecun_normal(), (2, 3, 2, 6))
    x = ops.conv(x, w1, stride=2, anchor=(0, 2))                    # anchored, strided
    x = _conv_vjp(x, w2)                                           # custom_vjp around the conv
    x = jax.checkpoint(lambda x: jax.jit(lambda x: ops.conv(x, w3, groups=3, padding=1))(x))(x)
    return x


class MaxPoolNet(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(4, (3, 3), padding=1, name="c1")(x))
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    x = nn.relu(nn.Conv(4, (3, 3), padding="VALID", name="c2")(x))
    x = nn.max_pool(x, (2, 2), strides=(2, 2))
    return x


# --------------------------------------------------------------------------------------------
# Measuring receptive fields.


def positive_variables(model, shape, seed=0):
  """Variables with every parameter positive and about 1/fan_in (activations stay O(1)); batch
  statistics mean 0, variance 1. Built with NumPy from the shapes: no eager init to compile."""
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.ones((1,) + shape))
  rng = np.random.default_rng(seed)

  def make(path, leaf):
    name = getattr(path[-1], "key", "")
    if getattr(path[0], "key", "") != "params":
      return jnp.full(leaf.shape, 1.0 if name == "var" else 0.0, leaf.dtype)
    fan_in = math.prod(leaf.shape[:-1]) if len(leaf.shape) >= 2 else 10
    return jnp.asarray(rng.uniform(0.5, 1.0, leaf.shape) / fan_in, leaf.dtype)

  return jax.tree_util.tree_map_with_path(make, shapes)


def centre(out_spatial):
  return tuple(n // 2 for n in out_spatial)


def expected_support(rf: ReceptiveField, unit, in_spatial) -> np.ndarray:
  """Boolean mask over the input of the field of output ``unit``, clipped to the input."""
  mask = np.ones(in_spatial, bool)
  for d, (n, i) in enumerate(zip(in_spatial, unit)):
    lo = rf.start[d] + i * rf.jump[d]
    hi = lo + rf.size[d]
    line = np.zeros(n, bool)
    line[max(lo, 0):max(min(hi, n), 0)] = True
    shape = [1] * len(in_spatial)
    shape[d] = n
    mask &= line.reshape(shape)
  return mask


def _outputs(model, names, **kw):
  """(variables, x) -> [model output, *outputs of the module calls ``names``] (from
  capture_intermediates)."""

  def f(variables, x):
    y, state = model.apply(variables, x, capture_intermediates=True, **kw)
    flat = jax.tree_util.tree_flatten_with_path(state["intermediates"])[0]
    found = {}
    for path, leaf in flat:
      keys = [p.key for p in path if hasattr(p, "key")]
      if keys and keys[-1] == "__call__":
        found["/".join(keys[:-1])] = leaf
    return [y] + [found[n] for n in names]

  return f


def grad_supports(f, variables, x, units) -> list[np.ndarray]:
  """For each output k of ``f``: input pixels where the gradient of its unit ``units[k]``
  (channel 0) is non-zero. One forward and one batched backward pass, jitted.

  ``f(variables, x)``: the variables are an argument of the program, not constants in it (a
  ResNet-18's would make 76 MB of executable to compile, cache and compress).
  """

  def run(variables, x, ks):
    ys, vjp = jax.vjp(lambda x: f(variables, x), x)

    def one(k):  # the cotangent that selects output k's unit
      return vjp([jnp.zeros(y.shape, y.dtype).at[(0, *u, 0)].set((k == i).astype(y.dtype))
                  for i, (y, u) in enumerate(zip(ys, units))])[0]

    g = jax.vmap(one)(ks)
    return jnp.abs(g[:, 0]).sum(-1) > 0

  with conv_config(forward="xla", backward="xla"):  # the same function, compiled faster
    return list(np.asarray(jax.jit(run)(variables, x, np.arange(len(units)))))


def influence_supports(f, variables, x, units, delta=1e4) -> list[np.ndarray]:
  """For each output k of ``f``: input pixels whose increase by ``delta`` changes its unit
  ``units[k]`` (channel 0).

  Needed through max pools, whose gradient reaches one element per window. With positive
  weights every path is monotone, so a large enough increase always shows.
  """
  spatial = x.shape[1:-1]
  n = math.prod(spatial)
  eye = jnp.eye(n, dtype=x.dtype).reshape((n,) + spatial + (1,))
  with conv_config(forward="xla"):  # the same function, compiled faster
    ys = jax.jit(f)(variables, jnp.concatenate([x, x + delta * eye], axis=0))
  out = []
  for y, unit in zip(ys, units):
    v = np.asarray(y[(slice(None),) + tuple(unit) + (0,)])
    changed = np.abs(v[1:] - v[0]) > 1e-4 * np.abs(v[0])
    out.append(changed.reshape(spatial))
  return out


def check_rf_against_gradient(model, shape, use_influence=False, select=None, **kw):
  """The summary's field of the output and of every module row with a spatial output (or those
  ``select(row)`` accepts) equals the measured support of its centre unit. Returns the summary
  and the number of outputs checked."""
  s = summary(model, shape, **kw)
  v = positive_variables(model, shape)
  x = jax.random.uniform(jax.random.key(3), (1,) + shape, minval=0.5, maxval=1.5)
  if use_influence:
    x = jnp.ones_like(x)  # ties everywhere: any increase of a window element raises its max
  functional = {l.name for l in s.layers if l.type == l.name.rsplit("/", 1)[-1].rsplit("_", 1)[0]}
  rows = [l for l in s.layers if l.name not in functional and len(l.output_shape) == len(shape) + 1]
  rows = [l for l in rows if select is None or select(l)]
  fields = [s.receptive_field] + [l.receptive_field for l in rows]
  shapes = [s.output_shape] + [l.output_shape for l in rows]
  units = [centre(sh[1:-1]) for sh in shapes]
  f = _outputs(model, [l.name for l in rows], **kw)
  measured = (influence_supports if use_influence else grad_supports)(f, v, x, units)
  for name, rf, unit, got in zip(["output"] + [l.name for l in rows], fields, units, measured):
    np.testing.assert_array_equal(got, expected_support(rf, unit, shape[:-1]), err_msg=name)
  return s, len(fields)


# --------------------------------------------------------------------------------------------
# Hand-checked values.


def test_sequential_values_by_hand():
  s = summary(SeqNet(), (22, 22, 3))
  rows = {(l.name, l.type): l for l in s.layers}
  assert [l.name for l in s.layers] == ["c1", "avg_pool_0", "c2", "c3"]
  c1, pool, c2, c3 = s.layers
  # c1: 3x3 VALID, 3 -> 6 channels, 22 -> 20.
  assert c1.output_shape == (1, 20, 20, 6)
  assert c1.params == 3 * 3 * 3 * 6 + 6
  assert c1.macs == 20 * 20 * 6 * (3 * 3 * 3)
  assert c1.receptive_field == ReceptiveField((3, 3), (1, 1), (0, 0))
  # 2x2/2 average pool: size 3 + 1 = 4, jump 2.
  assert pool.output_shape == (1, 10, 10, 6) and pool.macs == 0 and pool.params == 0
  assert pool.receptive_field == ReceptiveField((4, 4), (2, 2), (0, 0))
  # c2: 3x3 dilation 2, padding 2: size 4 + 2*2*2 = 12, start 0 - 2*2 = -4.
  assert c2.output_shape == (1, 10, 10, 8)
  assert c2.macs == 10 * 10 * 8 * (3 * 3 * 6)
  assert c2.receptive_field == ReceptiveField((12, 12), (2, 2), (-4, -4))
  # c3: 3x3 stride 2 SAME on 10: output 5, padding (0, 1) (TF split, extra at the end).
  assert c3.output_shape == (1, 5, 5, 8)
  assert c3.macs == 5 * 5 * 8 * (3 * 3 * 8)
  assert c3.receptive_field == ReceptiveField((16, 16), (4, 4), (-4, -4))
  assert s.total_macs == sum(l.macs for l in s.layers)
  assert s.receptive_field == c3.receptive_field
  assert s.output_shape == (1, 5, 5, 8) and s.input_shape == (1, 22, 22, 3)
  assert rows[("c2", "Conv")] is c2


def test_residual_union_and_params_by_hand():
  s = summary(ResNetTiny(), (12, 12, 3))
  names = [l.name for l in s.layers]
  assert names == ["stem", "block1/conv1", "block1/conv2", "block2/conv1", "block2/conv2", "block2/proj"]
  by = {l.name: l for l in s.layers}
  # stem 3; block1: 5, 7; the identity shortcut (3) is inside 7.
  assert by["block1/conv2"].receptive_field == ReceptiveField((7, 7), (1, 1), (-3, -3))
  # block2 conv1 stride 2: 9, jump 2; conv2: 13; proj (1x1 stride 2 on block1's output): 7, jump 2.
  assert by["block2/conv2"].receptive_field == ReceptiveField((13, 13), (2, 2), (-6, -6))
  assert by["block2/proj"].receptive_field == ReceptiveField((7, 7), (2, 2), (-3, -3))
  # The block's output is the union: 13, start -6.
  assert s.receptive_field == ReceptiveField((13, 13), (2, 2), (-6, -6))
  assert by["block2/proj"].params == 4 * 6 + 6
  assert by["block2/proj"].macs == 6 * 6 * 6 * 4
  assert by["block2/conv1"].macs == 6 * 6 * 6 * (9 * 4)
  v = jax.eval_shape(ResNetTiny().init, jax.random.key(0), jnp.ones((1, 12, 12, 3)))
  n = sum(p.size for p in jax.tree_util.tree_leaves(v["params"]))
  assert s.total_params == n == sum(l.params for l in s.layers)


def test_max_depth_folds_blocks():
  s = summary(ResNetTiny(), (12, 12, 3), max_depth=1)
  assert [(l.name, l.type) for l in s.layers] == [("stem", "Conv"), ("block1", "BasicBlock"),
                                                  ("block2", "BasicBlock")]
  full = summary(ResNetTiny(), (12, 12, 3))
  by = {l.name: l for l in full.layers}
  b2 = s.layers[2]
  assert b2.macs == sum(by[k].macs for k in ("block2/conv1", "block2/conv2", "block2/proj"))
  assert b2.params == sum(by[k].params for k in ("block2/conv1", "block2/conv2", "block2/proj"))
  assert b2.receptive_field == full.receptive_field
  assert s.total_macs == full.total_macs == sum(l.macs for l in s.layers)
  top = summary(ResNetTiny(), (12, 12, 3), max_depth=0)
  assert [(l.name, l.type, l.params, l.macs) for l in top.layers] == [
      ("ResNetTiny", "ResNetTiny", full.total_params, full.total_macs)]


def test_lifted_remat_and_scan():
  class RematNet(nn.Module):
    @nn.compact
    def __call__(self, x):
      x = nn.relu(nn.Conv(4, (3, 3), padding=1, name="stem")(x))
      x = nn.remat(BasicBlock)(4, name="block1")(x)
      return nn.remat(BasicBlock)(6, stride=2, name="block2")(x)

  a, b = summary(RematNet(), (12, 12, 3)), summary(ResNetTiny(), (12, 12, 3))
  assert a.exact and a.total_params == b.total_params
  assert [(l.name, l.macs, l.receptive_field) for l in a.layers] == [
      (l.name, l.macs, l.receptive_field) for l in b.layers]

  class Body(nn.Module):
    @nn.compact
    def __call__(self, x, _):
      return nn.relu(nn.Conv(4, (3, 3), padding=1, name="conv")(x)), None

  class ScanNet(nn.Module):
    @nn.compact
    def __call__(self, x):
      x = nn.Conv(4, (3, 3), padding=1, name="stem")(x)
      body = nn.scan(Body, variable_axes={"params": 0}, split_rngs={"params": True}, length=3)
      return body(name="body")(x, None)[0]

  s = summary(ScanNet(), (8, 8, 3))
  assert [l.name for l in s.layers] == ["stem", "body/conv"]
  assert s.layers[1].macs == 3 * 8 * 8 * 4 * (9 * 4)      # three iterations of the body
  assert s.layers[1].params == 3 * (9 * 4 * 4 + 4)
  # Fields through a loop are not composed: flagged, and a bound (the whole padded input).
  assert not s.exact and "scan" in s.notes[0]
  assert s.receptive_field == ReceptiveField((10, 10), (0, 0), (-1, -1))


def test_shared_module_params_counted_once():
  class Shared(nn.Module):
    @nn.compact
    def __call__(self, x):
      conv = nn.Conv(3, (3, 3), padding=1, name="shared")
      return conv(conv(x))

  s = summary(Shared(), (8, 8, 3))
  assert [l.name for l in s.layers] == ["shared", "shared"]
  assert [l.params for l in s.layers] == [3 * 3 * 3 * 3 + 3, 0]
  assert [l.receptive_field.size for l in s.layers] == [(3, 3), (5, 5)]
  assert s.total_macs == 2 * 8 * 8 * 3 * 27


def test_global_pool_dense_and_flatten():
  class Head(nn.Module):
    flatten: bool

    @nn.compact
    def __call__(self, x):
      x = nn.Conv(5, (3, 3), strides=2, padding="VALID", name="conv")(x)                # 9 -> 4, RF 3 jump 2
      x = x.reshape(x.shape[0], -1) if self.flatten else x.mean(axis=(1, 2))
      return nn.Dense(7, name="head")(x)

  s = summary(Head(flatten=True), (9, 9, 2))
  # Flattening a 4x4 map of jump-2, size-3 units: every logit sees 3 + 3 * 2 = 9 pixels from 0.
  assert s.receptive_field == ReceptiveField((9, 9), (0, 0), (0, 0))
  assert s.layers[-1].macs == 4 * 4 * 5 * 7 and s.layers[-1].params == 80 * 7 + 7
  g = summary(Head(flatten=False), (9, 9, 2))
  assert [l.type for l in g.layers] == ["Conv", "reduce_mean", "Dense"]
  assert g.layers[1].receptive_field == ReceptiveField((9, 9), (0, 0), (0, 0))
  assert g.layers[-1].macs == 5 * 7


def test_dense_on_feature_map_keeps_spatial_field():
  class PointWise(nn.Module):
    @nn.compact
    def __call__(self, x):
      x = nn.Conv(4, (3, 3), padding="VALID", name="conv")(x)
      return nn.Dense(6, name="pw")(x)  # a 1x1 convolution written as a Dense

  s = summary(PointWise(), (8, 8, 3))
  assert s.layers[1].output_shape == (1, 6, 6, 6)
  assert s.layers[1].receptive_field == ReceptiveField((3, 3), (1, 1), (0, 0))
  assert s.layers[1].macs == 6 * 6 * 6 * 4


def test_conv1d_and_3d():
  class C1(nn.Module):
    @nn.compact
    def __call__(self, x):
      return nn.Conv(2, (5,), strides=3, padding=2)(x)

  s = summary(C1(), (20, 1))
  assert s.receptive_field == ReceptiveField((5,), (3,), (-2,))
  assert s.total_macs == 7 * 2 * 5

  class C3(nn.Module):
    @nn.compact
    def __call__(self, x):
      return nn.Conv(2, (3, 3, 3), strides=(1, 2, 2), padding="VALID")(x)

  s = summary(C3(), (5, 9, 9, 1))
  assert s.receptive_field == ReceptiveField((3, 3, 3), (1, 2, 2), (0, 0, 0))
  assert s.total_macs == 3 * 4 * 4 * 2 * 27


def test_transposed_conv_field_is_an_envelope():
  class Up(nn.Module):
    @nn.compact
    def __call__(self, x):
      w = self.param("w", nn.initializers.lecun_normal(), (4, 4, 2, 3))
      return ops.conv_transpose(x, w, stride=2, padding=1)

  s = summary(Up(), (6, 6, 3))
  assert s.output_shape == (1, 12, 12, 2)
  # Each input element feeds 4x4 kernel taps into 2 output channels.
  assert s.total_macs == 6 * 6 * 3 * 16 * 2
  rf = s.receptive_field
  assert rf.jump == (0.5, 0.5)
  # Output i reads input elements (i + 1 - t) / 2 for the taps t, i.e. from (i - 2) / 2 to (i + 1) / 2.
  assert rf.start == (-1, -1) and rf.size == (2.5, 2.5)
  assert s.exact is False and s.notes


# --------------------------------------------------------------------------------------------
# Receptive fields against measurement.


@pytest.mark.parametrize(
    "model, shape",
    [
        (SeqNet(), (22, 22, 3)),
        (ResNetTiny(), (13, 13, 3)),
        (InceptionNet(), (15, 15, 3)),
        (OpsNet(), (17, 16, 3)),
    ],
    ids=["sequential", "residual", "inception-concat", "ops-custom_vjp-remat-jit"],
)
def test_receptive_field_equals_gradient_support(model, shape):
  s, checked = check_rf_against_gradient(model, shape)
  assert s.exact
  assert checked >= 1


class Chain1D(nn.Module):
  """A random 1-D stack of jaxconv.ops convolutions (anchors, asymmetric padding, dilation,
  stride) and average pools (padding, ceil_mode)."""

  layers: tuple

  @nn.compact
  def __call__(self, x):
    for i, (kind, k, s, d, lo, hi, ceil) in enumerate(self.layers):
      if kind == "conv":
        w = self.param(f"w{i}", nn.initializers.ones, (k, x.shape[-1], 2))
        x = ops.conv(x, w, stride=s, dilation=d, padding=((lo, hi),))
      else:
        x = ops.avg_pool(x, k, stride=s, dilation=d, padding=((min(lo, k // 2), min(hi, k // 2)),),
                         ceil_mode=ceil)
    return x


_layer = st.tuples(
    st.sampled_from(["conv", "pool"]), st.integers(1, 4), st.integers(1, 3), st.integers(1, 2),
    st.integers(0, 3), st.integers(0, 3), st.booleans(),
)


@given(st.lists(_layer, min_size=1, max_size=4))
@settings(max_examples=12)
def test_random_1d_chains_field_of_every_unit(layers):
  n = 40
  model = Chain1D(tuple(layers))
  try:
    s = summary(model, (n, 1))
  except ValueError:  # the chain does not fit the input: jaxconv.ops says so
    assume(False)
  v = positive_variables(model, (n, 1))
  x = jnp.ones((1, n, 1))
  n_out = s.output_shape[1]

  def grads(x):
    y, vjp = jax.vjp(lambda x: model.apply(v, x), x)
    cts = jnp.zeros((n_out,) + y.shape).at[jnp.arange(n_out), 0, jnp.arange(n_out), 0].set(1.0)
    return jax.vmap(vjp)(cts)[0][:, 0, :, 0]

  with conv_config(forward="xla", backward="xla"):
    got = np.asarray(jax.jit(grads)(x)) != 0
  rf = s.receptive_field
  for i in range(n_out):
    # Every unit sees only pixels inside its field. The field is the extent from the first to
    # the last pixel seen (dilation leaves holes inside it): for a unit whose field lies inside
    # the input, both ends are seen. (Near the borders a unit may read intermediate padding
    # instead of pixels; the field, like every receptive-field calculator's, counts that
    # padding as if it were units, so there it is an upper bound.)
    lo = rf.start[0] + i * rf.jump[0]
    hi = lo + rf.size[0]
    seen = np.flatnonzero(got[i])
    assert seen.size == 0 or (seen.min() >= max(lo, 0) and seen.max() < min(hi, n)), (i, seen, rf)
    if 0 <= lo and hi <= n:
      assert got[i][lo] and got[i][hi - 1], (i, seen, rf)


def test_receptive_field_through_max_pool_equals_influence():
  s, checked = check_rf_against_gradient(MaxPoolNet(), (16, 16, 1), use_influence=True)
  assert [l.type for l in s.layers] == ["Conv", "max_pool", "Conv", "max_pool"]
  # 3; pool 3/2 pad 1: 5, jump 2, start -2; conv 3: 9; pool 2/2: 11, jump 4.
  assert s.receptive_field == ReceptiveField((11, 11), (4, 4), (-2, -2))
  assert checked == 3  # the output and the two Conv rows (the pools are functional rows)


def test_squeeze_excitation_makes_field_global():
  s = summary(SENet(), (10, 10, 2))
  # After the SE product every unit sees the whole (padded) input the global mean saw.
  assert s.receptive_field.jump == (0, 0)
  assert s.receptive_field == ReceptiveField((12, 12), (0, 0), (-1, -1))
  check_rf_against_gradient(SENet(), (10, 10, 2))


# --------------------------------------------------------------------------------------------
# The model registry.

# torchvision's published GFLOPS at 224x224 (multiply-adds of convolutions and linear layers),
# from the torchvision models documentation (each weights entry's "GFLOPS").
TORCHVISION_GMACS = {
    "resnet18": 1.814, "resnet34": 3.664, "resnet50": 4.089, "resnet101": 7.801, "resnet152": 11.514,
    "alexnet": 0.714, "vgg11": 7.609, "vgg11_bn": 7.609, "vgg13": 11.308, "vgg16": 15.47,
    "vgg19": 19.632, "googlenet": 1.498, "densenet121": 2.834, "densenet169": 3.36,
    "densenet201": 4.291, "mobilenet_v2": 0.301, "squeezenet1_0": 0.819, "squeezenet1_1": 0.349,
}


@pytest.mark.parametrize("name", sorted(TORCHVISION_GMACS))
def test_registry_macs_match_torchvision(name):
  s = summary(name, (224, 224, 3))
  assert s.model == name
  assert s.total_macs / 1e9 == pytest.approx(TORCHVISION_GMACS[name], rel=0.01)
  assert s.total_macs == sum(l.macs for l in s.layers)
  assert s.total_params == sum(l.params for l in s.layers)
  assert s.output_shape == (1, 1000)
  assert s.exact, s.notes


@pytest.mark.parametrize("name", ["resnet18", "googlenet", "mobilenet_v2"])
def test_registry_params_equal_param_leaves(name):
  model = models.create_model(name)
  v = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), jnp.ones((1, 64, 64, 3)))
  s = summary(model, (64, 64, 3))
  assert s.total_params == sum(math.prod(p.shape) for p in jax.tree_util.tree_leaves(v["params"]))
  assert s.other_variables["batch_stats"] == sum(
      math.prod(p.shape) for p in jax.tree_util.tree_leaves(v["batch_stats"]))
  if name == "resnet18":  # with the variables given, the apply path gives the same summary
    assert summary(model, (64, 64, 3), variables=v) == s


def test_registry_resnet152_is_cheap():
  # Traced, never run: ResNet-152 at 224 (and a batch no CPU could hold) takes seconds.
  s = summary("resnet152", (224, 224, 3), batch_size=1024)
  assert s.input_shape == (1024, 224, 224, 3)
  assert s.total_macs / 1e9 == pytest.approx(11.514, rel=0.01)


@pytest.mark.parametrize("size", [28, 32])
def test_registry_lenet5_receptive_fields(size):
  # Max pools: the gradient reaches one element per window, so measure by perturbation.
  model = models.create_model("lenet5")
  s, checked = check_rf_against_gradient(model, (size, size, 1), use_influence=True, train=False)
  assert checked >= 5  # output, conv1, pool1, conv2, pool2
  # 28x28 is padded by 2 in conv1 (5x5): 5, pool 6/2, conv 5 -> 14/2, pool 16/4.
  pool2 = [l for l in s.layers if l.name == "pool2"][0]
  pad = 2 if size == 28 else 0
  assert pool2.receptive_field == ReceptiveField((16, 16), (4, 4), (-pad, -pad))
  avg = models.create_model("lenet5", pool="avg")  # average pools: the gradient reaches every pixel
  s_avg, _ = check_rf_against_gradient(avg, (size, size, 1), train=False)
  assert [l.receptive_field for l in s_avg.layers] == [l.receptive_field for l in s.layers]


def test_registry_resnet18_cifar_receptive_fields():
  model = models.create_model("resnet18", num_classes=10, cifar_stem=True)
  s, checked = check_rf_against_gradient(
      model, (32, 32, 3), select=lambda l: max(l.receptive_field.size) <= 32 and "conv" in l.name, train=False
  )
  assert checked >= 8
  # CIFAR stem: one 3x3 conv (3); stage1: two blocks of two 3x3 convs, 3 + 4 * 2 = 11.
  stage1_last = [l for l in s.layers if l.name.startswith("stage1_") and l.type == "Conv"][-1]
  assert stage1_last.receptive_field == ReceptiveField((11, 11), (1, 1), (-5, -5))
  # The block outputs (after the residual additions), from return_features: measured too.
  f = summary(model, (32, 32, 3), train=False, return_features=True)
  fields = {k: f.output_fields[f"[1]['{k}']"] for k in ("stem", "stage1", "stage2")}
  assert fields["stage1"] == stage1_last.receptive_field
  # stage2: a stride-2 3x3 (11 + 2 = 13, jump 2, start -6), then three 3x3 at jump 2: 13 + 3 * 4.
  assert fields["stage2"] == ReceptiveField((25, 25), (2, 2), (-12, -12))
  v = positive_variables(model, (32, 32, 3))
  x = jax.random.uniform(jax.random.key(3), (1, 32, 32, 3), minval=0.5, maxval=1.5)
  feats = lambda v, x: [model.apply(v, x, train=False, return_features=True)[1][k] for k in fields]
  shapes = [f.output_shape[[p for p in f.output_fields].index(f"[1]['{k}']")] for k in fields]
  units = [centre(sh[1:-1]) for sh in shapes]
  for k, got, unit in zip(fields, grad_supports(feats, v, x, units), units):
    np.testing.assert_array_equal(got, expected_support(fields[k], unit, (32, 32)), err_msg=k)


def test_registry_input_too_small(capsys):
  with pytest.raises(ValueError, match="28x28 or 32x32"):
    summary("lenet5", (224, 224, 1))
  assert cli_main(["lenet5", "--input-shape", "64,64,1"]) == 2
  assert "28x28 or 32x32" in capsys.readouterr().err


def test_registry_unknown_name():
  with pytest.raises(ValueError, match="unknown model name 'resnet19'"):
    summary("resnet19", (224, 224, 3))
  assert cli_main(["resnet19"]) == 2


def test_cli_formats(capsys, tmp_path):
  assert cli_main(["resnet18", "--input-shape", "32,32,3", "--num-classes", "10"]) == 0
  out = capsys.readouterr().out
  assert "Summary of resnet18" in out and "stem" in out and "Total params" in out
  assert cli_main(["squeezenet1_1", "--input-shape", "64x64x3", "--format", "json"]) == 0
  d = json.loads(capsys.readouterr().out)
  assert d["model"] == "squeezenet1_1" and d["input_shape"] == [1, 64, 64, 3]
  assert d["total_macs"] == sum(r["macs"] for r in d["layers"])
  path = tmp_path / "s.md"
  assert cli_main(["lenet5", "--input-shape", "28,28,1", "--format", "markdown", "--max-depth", "1",
                   "--output", str(path)]) == 0
  md = path.read_text()
  assert md.startswith("### Summary of lenet5") and "| conv1 |" in md


# --------------------------------------------------------------------------------------------
# Exports and printing.


def test_table_json_markdown():
  s = summary(ResNetTiny(), (12, 12, 3))
  table = str(s)
  for l in s.layers:
    assert l.name in table
  assert f"{s.total_params:,}" in table and f"{s.total_macs:,}" in table
  d = json.loads(s.to_json())
  assert d["total_params"] == s.total_params and d["total_macs"] == s.total_macs
  assert [r["name"] for r in d["layers"]] == [l.name for l in s.layers]
  assert d["layers"][-1]["receptive_field"] == {"size": [7, 7], "jump": [2, 2], "start": [-3, -3]}
  assert d["layers"][0]["output_shape"] == [1, 12, 12, 4]
  md = s.to_markdown().splitlines()
  table_lines = [line for line in md if line.startswith("|")]
  assert len(table_lines) == 2 + len(s.layers)
  assert all(line.count("|") == 9 for line in table_lines)
  assert isinstance(s, Summary) and isinstance(s.layers[0], LayerInfo)


def test_public_name_and_no_real_forward():
  assert jaxconv.summary is summary
  # A batch that would need tens of GB if it were materialised: tracing needs none of it.
  s = summary(ResNetTiny(), (512, 512, 3), batch_size=4096)
  assert s.input_shape == (4096, 512, 512, 3)
  assert s.total_macs == summary(ResNetTiny(), (512, 512, 3)).total_macs  # per example


# --------------------------------------------------------------------------------------------
# Errors.


@pytest.mark.parametrize(
    "shape, exc, match",
    [
        ("224,224,3", TypeError, "input_shape must be a sequence of ints"),
        ((224, 224.0, 3), TypeError, "input_shape must be a sequence of ints"),
        ((3,), ValueError, "1, 2 or 3 spatial dimensions"),
        ((1, 2, 3, 4, 5), ValueError, "1, 2 or 3 spatial dimensions"),
        ((0, 8, 3), ValueError, "positive sizes"),
    ],
)
def test_bad_input_shape(shape, exc, match):
  with pytest.raises(exc, match=match):
    summary(SeqNet(), shape)


def test_bad_arguments():
  with pytest.raises(ValueError, match="batch_size must be a positive int; got 0"):
    summary(SeqNet(), (22, 22, 3), batch_size=0)
  with pytest.raises(ValueError, match="max_depth must be None or an int >= 0; got -1"):
    summary(SeqNet(), (22, 22, 3), max_depth=-1)
  with pytest.raises(TypeError, match="model must be a flax.linen.Module .* got function"):
    summary(lambda x: x, (22, 22, 3))


def test_cli_bad_input_shape(capsys):
  with pytest.raises(SystemExit) as e:
    cli_main(["resnet18", "--input-shape", "224,abc,3"])
  assert e.value.code == 2
  assert "--input-shape must be comma-separated ints" in capsys.readouterr().err
