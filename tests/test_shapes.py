"""jaxconv.ops.shapes against the ops themselves, published layer sizes, XLA and gradients."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxconv.ops import conv, conv_transpose, shapes


def _shape_of(f, *shapes_):
  """Output shape by abstract evaluation: no compilation, no FLOPs."""
  return jax.eval_shape(f, *(jax.ShapeDtypeStruct(s, jnp.float32) for s in shapes_)).shape


@st.composite
def conv_geometry(draw):
  nd = draw(st.integers(1, 3))
  ksize = tuple(draw(st.integers(1, 5)) for _ in range(nd))
  stride = tuple(draw(st.integers(1, 4)) for _ in range(nd))
  dilation = tuple(draw(st.integers(1, 3)) for _ in range(nd))
  in_shape = tuple(draw(st.integers((k - 1) * d + 1, 40)) for k, d in zip(ksize, dilation))
  padding = draw(
      st.one_of(
          st.sampled_from(["VALID", "SAME", "FULL", "CAUSAL"]),
          st.integers(0, 4),
          st.tuples(*[st.integers(0, 4)] * nd),
          st.tuples(*[st.tuples(st.integers(0, 4), st.integers(0, 4))] * nd),
      )
  )
  return in_shape, ksize, stride, dilation, padding


@settings(max_examples=60)
@given(geom=conv_geometry())
def test_conv_output_shape_matches_conv(geom):
  in_shape, ksize, stride, dilation, padding = geom
  f = functools.partial(conv, stride=stride, padding=padding, dilation=dilation)
  got = _shape_of(f, (2, *in_shape, 3), (*ksize, 3, 5))
  assert shapes.conv_output_shape(in_shape, ksize, stride, padding, dilation) == got[1:-1]
  if len(in_shape) == 1 and isinstance(padding, (str, int)):  # scalar in, scalar out
    assert shapes.conv_output_shape(in_shape[0], ksize[0], stride[0], padding, dilation[0]) == got[1]


@settings(max_examples=40)
@given(geom=conv_geometry(), op_seed=st.integers(0, 100))
def test_conv_transpose_output_shape_matches_conv_transpose(geom, op_seed):
  in_shape, ksize, stride, dilation, _ = geom
  nd = len(in_shape)
  pad = tuple(p % ((k - 1) * d + 1) for p, k, d in zip((op_seed, op_seed // 3, op_seed // 7), ksize, dilation))[:nd]
  outpad = tuple((op_seed + i) % max(s, d) for i, (s, d) in enumerate(zip(stride, dilation)))
  small = tuple(max(1, n // 4) for n in in_shape)
  f = functools.partial(conv_transpose, stride=stride, padding=pad, output_padding=outpad, dilation=dilation)
  want = shapes.conv_transpose_output_shape(small, ksize, stride, pad, outpad, dilation)
  if min(want) < 1:  # the formula says empty: the op must refuse
    with pytest.raises(ValueError, match="is too large: conv_transpose would produce spatial shape"):
      _shape_of(f, (1, *small, 4), (*ksize, 2, 4))
  else:
    assert want == _shape_of(f, (1, *small, 4), (*ksize, 2, 4))[1:-1]


def test_textbook_output_sizes():
  # O = (W - F + 2P) / S + 1 on layers whose sizes are published.
  assert shapes.conv_output_shape(227, 11, stride=4) == 55  # AlexNet conv1
  assert shapes.conv_output_shape(224, 7, stride=2, padding=3) == 112  # ResNet stem
  assert shapes.conv_output_shape(112, 3, stride=2, padding=1) == 56  # ResNet max pool
  assert shapes.conv_output_shape((224, 224), 3, padding="SAME") == (224, 224)  # VGG
  assert shapes.conv_output_shape(112, 3, stride=2, ceil_mode=True) == 56  # GoogLeNet pool1 (ceil)
  assert shapes.conv_output_shape(112, 3, stride=2) == 55
  assert shapes.conv_output_shape(9, 3, dilation=4, padding=4) == 9  # dilated "same"
  with pytest.raises(ValueError, match="does not fit input"):
    shapes.conv_output_shape(3, 5)


@pytest.mark.parametrize("n,k,s,p,d", [(10, 3, 2, 0, 1), (11, 3, 2, 1, 1), (7, 2, 3, 1, 1), (13, 3, 4, 1, 2), (6, 4, 3, 2, 1), (5, 5, 3, 2, 1)])
def test_ceil_mode_matches_torch_pooling(n, k, s, p, d):
  import torch  # extra oracle: ceil mode is PyTorch's definition

  want = torch.nn.functional.max_pool1d(torch.zeros(1, 1, n), k, s, p, d, ceil_mode=True).shape[-1]
  assert shapes.conv_output_shape(n, k, s, p, d, ceil_mode=True) == want
  floor = torch.nn.functional.max_pool1d(torch.zeros(1, 1, n), k, s, p, d, ceil_mode=False).shape[-1]
  assert shapes.conv_output_shape(n, k, s, p, d) == floor == _shape_of(
      functools.partial(conv, stride=s, padding=p, dilation=d), (n, 1), (k, 1, 1)
  )[0]


def test_conv_params_on_known_layers():
  assert shapes.conv_params((7, 7), 3, 64, bias=False) == 9408  # ResNet conv1
  assert shapes.conv_params((11, 11), 3, 64) == 23296  # torchvision AlexNet features[0]
  assert shapes.conv_params((3, 3), 32, 32, groups=32, bias=False) == 288  # MobileNetV2 depthwise
  # VGG-16: 13 convs + 3 fully connected layers (dense == 1x1 conv) = 138,357,544 (torchvision).
  widths = [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]
  convs = sum(shapes.conv_params((3, 3), c_in, c_out) for c_in, c_out in zip([3] + widths[:-1], widths))
  fc = shapes.conv_params(1, 512 * 7 * 7, 4096) + shapes.conv_params(1, 4096, 4096) + shapes.conv_params(1, 4096, 1000)
  assert convs == 14_714_688
  assert convs + fc == 138_357_544
  with pytest.raises(ValueError, match=r"must be divisible by groups \(4\)"):
    shapes.conv_params(3, 6, 8, groups=4)


@pytest.mark.parametrize("k,c_in,c_out,groups,bias", [((3, 3), 4, 6, 2, True), ((1, 5), 6, 6, 6, False), ((2, 3, 2), 3, 9, 3, True)])
def test_conv_params_match_array_sizes(k, c_in, c_out, groups, bias):
  import torch  # extra oracle besides the kernel shape our conv accepts

  kernel_shape = (*k, c_in // groups, c_out)
  _shape_of(functools.partial(conv, groups=groups), (1, *[2 * kk for kk in k], c_in), kernel_shape)  # conv accepts it
  assert shapes.conv_params(k, c_in, c_out, groups, bias) == math.prod(kernel_shape) + (c_out if bias else 0)
  layer = getattr(torch.nn, f"Conv{len(k)}d")(c_in, c_out, k, groups=groups, bias=bias)
  assert shapes.conv_params(k, c_in, c_out, groups, bias) == sum(p.numel() for p in layer.parameters())


def test_conv_macs_resnet18_published_total():
  # torchvision publishes ResNet-18 at 1.81 GFLOPS (multiply-accumulates) for 224x224.
  macs = shapes.conv_macs((112, 112), (7, 7), 3, 64)
  macs += 4 * shapes.conv_macs((56, 56), (3, 3), 64, 64)
  for size, c_in, c_out in [(28, 64, 128), (14, 128, 256), (7, 256, 512)]:
    macs += shapes.conv_macs((size, size), (3, 3), c_in, c_out)  # first conv of the stage (stride 2)
    macs += 3 * shapes.conv_macs((size, size), (3, 3), c_out, c_out)
    macs += shapes.conv_macs((size, size), (1, 1), c_in, c_out)  # downsample shortcut
  macs += shapes.conv_macs(1, 1, 512, 1000)  # the classifier
  assert round(macs / 1e9, 2) == 1.81


@pytest.mark.parametrize(
    "x_shape,k_shape,groups,stride,dilation",
    # Not depthwise (C_in / groups == 1): there XLA's cost model counts (2 * taps - 1) flops per
    # output, one addition fewer than the multiply-accumulates.
    [((1, 9, 9, 4), (3, 3, 2, 6), 2, 1, 1), ((2, 12, 5), (3, 5, 5), 1, 2, 2), ((1, 6, 5, 4, 6), (2, 3, 1, 2, 6), 3, (1, 2, 1), 1)],
)
def test_conv_macs_match_xla_cost_analysis(x_shape, k_shape, groups, stride, dilation):
  # XLA's cost model of its own convolution op (ops.conv may lower grouped convs differently).
  nd = len(k_shape) - 2
  spatial = "DHW"[-nd:]
  f = functools.partial(
      jax.lax.conv_general_dilated, window_strides=(stride,) * nd if isinstance(stride, int) else stride,
      padding="VALID", rhs_dilation=(dilation,) * nd, feature_group_count=groups,  # every tap counts
      dimension_numbers=(f"N{spatial}C", f"{spatial}IO", f"N{spatial}C"),
  )
  x, w = jnp.ones(x_shape), jnp.ones(k_shape)
  out = _shape_of(functools.partial(conv, groups=groups, stride=stride, dilation=dilation), x_shape, k_shape)
  assert jax.eval_shape(f, x, w).shape == out
  flops = jax.jit(f).lower(x, w).cost_analysis()["flops"]
  macs = shapes.conv_macs(out[1:-1], k_shape[:-2], x_shape[-1], k_shape[-1], groups)
  assert 2 * macs * x_shape[0] == flops


RF_CHAINS = [
    [dict(kernel_size=3, padding=1), dict(kernel_size=3, padding=1), dict(kernel_size=2, stride=2)],
    [dict(kernel_size=7, stride=2, padding=3), dict(kernel_size=3, stride=2, padding=1), dict(kernel_size=3, padding=1), dict(kernel_size=3, dilation=2, padding=2)],
    [dict(kernel_size=(3, 5), stride=(1, 2), padding=((0, 2), (1, 1))), dict(kernel_size=4, stride=3, dilation=(2, 1)), dict(kernel_size=(1, 3), padding=(0, 1))],
]


@pytest.mark.parametrize("chain", RF_CHAINS)
def test_receptive_field_matches_gradient_support(chain):
  """The support of d(output unit)/d(input) through a chain of positive 1-channel convs."""
  ndim = 2
  fields = shapes.receptive_field(chain, ndim=ndim)
  n = 48

  def net(x):
    for layer in chain:
      k = layer["kernel_size"]
      k = (k,) * ndim if isinstance(k, int) else k
      p = layer.get("padding", 0)
      if isinstance(p, int) or isinstance(p[0], int):
        p = [(q, q) for q in ((p,) * ndim if isinstance(p, int) else p)]
      x = conv(x, jnp.ones((*k, 1, 1)), stride=layer.get("stride", 1), padding=p, dilation=layer.get("dilation", 1))
    return x

  x = jnp.ones((n, n, 1))
  out = jax.eval_shape(net, x).shape[:-1]
  unit = tuple(o // 2 for o in out)  # a unit whose field lies inside the input
  grad = jax.jit(jax.grad(lambda x: net(x)[unit + (0,)]))(x)[..., 0]
  nz = np.nonzero(np.asarray(grad))
  rf = fields[-1]
  for dim in range(ndim):
    first = rf.start[dim] + unit[dim] * rf.jump[dim]
    assert 0 <= first and first + rf.size[dim] <= n  # the field is not clipped by the border
    assert nz[dim].min() == first
    assert nz[dim].max() == first + rf.size[dim] - 1
  # The jump is the distance between neighbouring units' fields.
  nxt = tuple(u + 1 for u in unit)
  grad2 = jax.jit(jax.grad(lambda x: net(x)[nxt + (0,)]))(x)[..., 0]
  nz2 = np.nonzero(np.asarray(grad2))
  for dim in range(ndim):
    assert nz2[dim].min() - nz[dim].min() == rf.jump[dim]


def test_receptive_field_union_matches_residual_support():
  branch = shapes.ReceptiveField.identity(1).then(3, padding=1).then(3, padding=1)
  skip = shapes.ReceptiveField.identity(1).then(1)
  rf = branch.union(skip)
  x = jnp.ones((20, 1))
  w = jnp.ones((3, 1, 1))
  net = lambda x: conv(conv(x, w, padding=1), w, padding=1) + x
  grad = np.asarray(jax.jit(jax.grad(lambda x: net(x)[10, 0]))(x))[:, 0]
  support = np.nonzero(grad)[0]
  assert support.min() == rf.start[0] + 10 and support.max() == rf.start[0] + 10 + rf.size[0] - 1
  with pytest.raises(ValueError, match="different jumps"):
    branch.union(skip.then(2, stride=2))
