"""jaxconv.ops.conv and friends against independent references, closed forms and gradients.

Oracles: jaxconv.reference.conv_loops / conv_transpose_loops (NumPy loops from the formulas),
jaxconv.reference.conv_einsum (im2col + einsum), SciPy (true convolution), and PyTorch's
conv_transpose as an extra oracle for the transposed convolution.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.test_util import check_grads

from jaxconv import ops
from jaxconv.ops import conv, conv_transpose, depthwise_conv, separable_conv
from jaxconv.reference import conv_einsum, conv_loops, conv_transpose_loops

MODES = ("zeros", "reflect", "replicate", "circular")
TOL = dict(rtol=1e-4, atol=1e-4)


def _randn(rng, shape, dtype=np.float32):
  return rng.standard_normal(shape).astype(dtype)


def _jit_einsum(**opts):
  return jax.jit(functools.partial(conv_einsum, **opts))


# --------------------------------------------------------------------------------------------
# (1) Randomized grid: ops.conv == conv_loops == conv_einsum.


def _geometry(in_shape, ksize, stride, dilation, padding, anchor, flip):
  """Per dimension: (lo, hi) padding as the op's error checks see it, and the overhang read.

  Written here from the definitions in the op's docstring, independently of both the op and the
  references.
  """
  pads = []
  for d, (n, k, s, dl) in enumerate(zip(in_shape, ksize, stride, dilation)):
    w = (k - 1) * dl + 1
    if anchor is not None:
      a = (k - 1) // 2 if anchor == "center" else anchor if isinstance(anchor, int) else anchor[d]
      a = k - 1 - a if flip else a
      last = (math.ceil(n / s) - 1) * s
      pads.append((a * dl, last + (k - 1 - a) * dl - (n - 1)))
    elif isinstance(padding, str):
      out = math.ceil(n / s)
      total = max((out - 1) * s + w - n, 0)
      pads.append(
          {
              "VALID": (0, 0),
              "FULL": (w - 1, w - 1),
              "CAUSAL": (w - 1, 0),
              "SAME": (total // 2, total - total // 2),
          }[padding.upper()]
      )
    elif isinstance(padding, int):
      pads.append((padding, padding))
    elif isinstance(padding[d], int):
      pads.append((padding[d], padding[d]))
    else:
      pads.append(tuple(padding[d]))
  return pads


@st.composite
def conv_cases(draw, nd):
  max_size = {1: 7, 2: 6, 3: 4}[nd]
  max_k = {1: 4, 2: 3, 3: 3}[nd]
  groups = draw(st.sampled_from([1, 1, 2, 3]))
  depthwise = draw(st.booleans())
  cg = 1 if depthwise else draw(st.integers(1, 6 // groups))
  og = draw(st.integers(1, max(1, 6 // groups)))
  c_in, c_out = groups * cg, groups * og
  ksize = tuple(draw(st.integers(1, max_k)) for _ in range(nd))

  def per_dim(lo, hi):
    if draw(st.booleans()):
      return draw(st.integers(lo, hi))
    return tuple(draw(st.integers(lo, hi)) for _ in range(nd))

  stride = per_dim(1, 3)
  dilation = per_dim(1, 2)
  dil = (dilation,) * nd if isinstance(dilation, int) else dilation
  in_shape = []
  for k, dl in zip(ksize, dil):  # mostly at least the window (a valid VALID conv), sometimes less
    n = draw(st.integers(1, max_size))
    in_shape.append(max(n, (k - 1) * dl + 1) if draw(st.integers(0, 4)) else n)
  in_shape = tuple(in_shape)
  form = draw(st.sampled_from(["VALID", "same", "SAME", "FULL", "CAUSAL", "int", "ints", "pairs", "anchor", "center"]))
  anchor, padding = None, None
  if form == "int":
    padding = draw(st.integers(0, 2))
  elif form == "ints":
    padding = tuple(draw(st.integers(0, 2)) for _ in range(nd))
  elif form == "pairs":
    padding = tuple((draw(st.integers(0, 3)), draw(st.integers(0, 3))) for _ in range(nd))
  elif form == "anchor":
    if draw(st.booleans()):
      anchor = draw(st.integers(0, min(ksize) - 1))
    else:
      anchor = tuple(draw(st.integers(0, k - 1)) for k in ksize)
  elif form == "center":
    anchor = "center"
  else:
    padding = form
  opts = dict(
      stride=stride,
      dilation=dilation,
      groups=groups,
      padding_mode=draw(st.sampled_from(MODES)),
      flip=draw(st.booleans()),
  )
  if anchor is not None:
    opts["anchor"] = anchor
  elif padding != "VALID" or draw(st.booleans()):  # VALID is also the default (padding=None)
    opts["padding"] = padding
  batch = draw(st.sampled_from([None, 1, 2]))
  x_shape = (in_shape + (c_in,)) if batch is None else ((batch,) + in_shape + (c_in,))
  k_shape = ksize + (cg, c_out)
  return x_shape, k_shape, draw(st.booleans()), opts


def _check_against_references(case, seed, jit=True):
  x_shape, k_shape, with_bias, opts = case
  rng = np.random.default_rng(seed)
  x, w = _randn(rng, x_shape), _randn(rng, k_shape)
  b = _randn(rng, (k_shape[-1],)) if with_bias else None
  nd = len(k_shape) - 2
  tup = lambda v: (v,) * nd if isinstance(v, int) else v
  in_shape = x_shape[-nd - 1 : -1]
  pads = _geometry(
      in_shape, k_shape[:nd], tup(opts.get("stride", 1)), tup(opts.get("dilation", 1)),
      opts.get("padding", "VALID"), opts.get("anchor"), opts.get("flip", False),
  )
  window = [(k - 1) * tup(opts.get("dilation", 1))[d] + 1 for d, k in enumerate(k_shape[:nd])]
  if opts.get("padding_mode") == "reflect" and any(max(lo, hi) >= n for n, (lo, hi) in zip(in_shape, pads)):
    with pytest.raises(ValueError, match="too wide for padding_mode='reflect'"):
      conv(x, w, b, **opts)
    return "rejected"
  if any(n + lo + hi < wd for n, (lo, hi), wd in zip(in_shape, pads, window)):
    with pytest.raises(ValueError, match="larger than the padded input"):
      conv(x, w, b, **opts)
    return "rejected"
  got = jax.jit(functools.partial(conv, **opts))(x, w, b) if jit else conv(x, w, b, **opts)
  want = conv_loops(x, w, b, **opts)
  assert got.shape == want.shape and got.dtype == x.dtype
  np.testing.assert_allclose(np.asarray(got), want, **TOL)
  np.testing.assert_allclose(np.asarray(_jit_einsum(**opts)(x, w, b)), want, **TOL)
  return "checked"


@pytest.mark.parametrize("nd", [1, 2, 3])
def test_conv_matches_references_randomized(nd):
  outcomes = []

  @settings(max_examples={1: 30, 2: 25, 3: 18}[nd])
  @given(case=conv_cases(nd), seed=st.integers(0, 2**16))
  def run(case, seed):
    outcomes.append(_check_against_references(case, seed))

  run()
  # The grid must mostly compare values, not only exercise the error paths.
  assert outcomes.count("checked") >= 0.6 * len(outcomes), outcomes


@pytest.mark.parametrize(
    "x_shape,k_shape,opts",
    [
        ((6, 1), (2, 1, 1), dict(stride=4, anchor=1, padding_mode="circular")),  # wraps to cropped end
        ((5, 1), (3, 1, 1), dict(stride=5, anchor=2, padding_mode="reflect")),
        ((2, 7, 5, 4), (3, 2, 2, 6), dict(stride=(2, 3), anchor=(2, 0), flip=True, padding_mode="circular", groups=2)),
        ((2, 5, 4, 3, 2), (2, 3, 2, 1, 4), dict(stride=(2, 1, 2), padding=[(1, 0), (2, 1), (0, 1)], padding_mode="replicate", groups=2, flip=True)),
        ((7, 3), (3, 3, 3), dict(padding="FULL", dilation=2, flip=True, padding_mode="circular")),
        ((2, 6, 6, 4), (3, 3, 1, 8), dict(groups=4, padding="SAME", stride=2, padding_mode="reflect")),
    ],
)
def test_conv_matches_references_fixed(x_shape, k_shape, opts):
  assert _check_against_references((x_shape, k_shape, True, opts), 0, jit=False) == "checked"


def test_depthwise_and_separable_match_loops(rng):
  x = _randn(rng, (2, 6, 5, 3))
  dw = _randn(rng, (3, 3, 1, 6))  # multiplier 2
  pw = _randn(rng, (1, 1, 6, 4))
  b = _randn(rng, (4,))
  opts = dict(stride=2, padding="SAME", padding_mode="reflect", dilation=(1, 2))
  want_dw = conv_loops(x, dw, groups=3, **opts)
  np.testing.assert_allclose(depthwise_conv(x, dw, **opts), want_dw, **TOL)
  want = conv_loops(want_dw, pw, b)
  np.testing.assert_allclose(separable_conv(x, dw, pw, b, **opts), want, **TOL)
  with pytest.raises(TypeError, match="do not pass groups"):
    depthwise_conv(x, dw, groups=3)
  with pytest.raises(ValueError, match=r"depthwise kernel must have shape \[\*k, 1, C \* multiplier\]"):
    depthwise_conv(x, _randn(rng, (3, 3, 3, 6)))
  with pytest.raises(ValueError, match=r"pointwise_kernel must have shape \[1, 1, C \* M, C_out\]"):
    separable_conv(x, dw, _randn(rng, (3, 3, 6, 4)))


# --------------------------------------------------------------------------------------------
# (2) Closed forms and hand-computed cases.


def _count_in_range(n, k, s, d, lo, out):
  """Closed form: #{j in [0, k): 0 <= i s + j d - lo < n} for each output i."""
  counts = []
  for i in range(out):
    first = max(0, math.ceil((lo - i * s) / d))
    last = min(k - 1, (n - 1 + lo - i * s) // d)
    counts.append(max(0, last - first + 1))
  return np.array(counts)


@pytest.mark.parametrize(
    "in_shape,ksize,stride,dilation,padding,groups",
    [
        ((9,), (3,), (1,), (1,), "SAME", 1),
        ((8,), (4,), (3,), (2,), [(5, 2)], 2),
        ((7, 6), (3, 2), (2, 1), (1, 3), "FULL", 1),
        ((5, 6), (3, 3), (1, 2), (2, 1), [(4, 0), (1, 3)], 3),
        ((4, 3, 5), (2, 3, 2), (1, 2, 2), (2, 1, 1), "CAUSAL", 1),
    ],
)
def test_all_ones_counts_in_range_taps(in_shape, ksize, stride, dilation, padding, groups):
  nd = len(in_shape)
  cg = 2
  x = jnp.ones((1, *in_shape, cg * groups))
  w = jnp.ones((*ksize, cg, 2 * groups))
  y = conv(x, w, stride=stride, dilation=dilation, padding=padding, groups=groups)
  if isinstance(padding, str):
    pads = [
        # Only lo matters here (the output size comes from y); SAME is used with stride 1.
        {"FULL": ((k - 1) * d, (k - 1) * d), "CAUSAL": ((k - 1) * d, 0), "SAME": (((k - 1) * d) // 2, 0)}[padding]
        for k, d in zip(ksize, dilation)
    ]
  else:
    pads = padding
  counts = np.ones(())
  for dim in range(nd):
    c = _count_in_range(in_shape[dim], ksize[dim], stride[dim], dilation[dim], pads[dim][0], y.shape[1 + dim])
    counts = np.multiply.outer(counts, c)
  np.testing.assert_array_equal(np.asarray(y[0, ..., 0]), cg * counts)
  assert bool(jnp.all(y == y[..., :1]))  # every output channel sees cg ones
  for mode in ("replicate", "circular", "reflect"):  # a constant input stays constant at the border
    yc = conv(x, w, stride=stride, dilation=dilation, padding=padding, groups=groups, padding_mode=mode)
    np.testing.assert_array_equal(np.asarray(yc), cg * math.prod(ksize))


def test_hand_computed_1d():
  x = jnp.array([1.0, 2.0, 3.0, 4.0]).reshape(4, 1)
  w = jnp.array([1.0, 10.0, 100.0]).reshape(3, 1, 1)
  f = lambda **kw: np.asarray(conv(x, w, **kw)[:, 0]).tolist()
  assert f() == [321.0, 432.0]  # x[i] + 10 x[i+1] + 100 x[i+2]
  assert f(flip=True) == [123.0, 234.0]  # 100 x[i] + 10 x[i+1] + x[i+2]
  assert f(anchor=0) == [321.0, 432.0, 43.0, 4.0]
  assert f(anchor=2, flip=True) == [123.0, 234.0, 340.0, 400.0]  # sum_j w[j] x[i - (j - 2)]
  assert f(anchor=1, padding_mode="replicate") == [211.0, 321.0, 432.0, 443.0]
  assert f(padding=1, padding_mode="circular") == [214.0, 321.0, 432.0, 143.0]
  assert f(padding=1, padding_mode="reflect") == [212.0, 321.0, 432.0, 343.0]  # 2 1 2 3 4 3
  assert f(padding="CAUSAL") == [100.0, 210.0, 321.0, 432.0]
  assert f(padding=[(0, 2)], stride=2) == [321.0, 43.0]
  assert f(dilation=2, padding="SAME") == [310.0, 420.0, 31.0, 42.0]  # window 5, pads (2, 2)
  ones = jnp.ones((3, 1, 1))
  g = lambda xs, **kw: np.asarray(conv(jnp.array(xs).reshape(-1, 1), ones, **kw)[:, 0]).tolist()
  assert g([1.0, 2.0, 3.0], padding=1, padding_mode="reflect") == [5.0, 6.0, 7.0]  # 2 1 2 3 2
  assert g([1.0, 2.0, 3.0], padding=1, padding_mode="circular") == [6.0, 6.0, 6.0]  # 3 1 2 3 1
  assert g([1.0, 2.0, 3.0], padding=1, padding_mode="replicate") == [4.0, 6.0, 8.0]  # 1 1 2 3 3
  # SAME with stride 2: odd input pads (1, 1), even input pads (0, 1) (the extra at the end).
  assert g([1.0, 2.0, 3.0, 4.0, 5.0], padding="SAME", stride=2) == [3.0, 9.0, 9.0]
  assert g([1.0, 2.0, 3.0, 4.0, 5.0, 6.0], padding="SAME", stride=2) == [6.0, 12.0, 11.0]


def test_hand_computed_2d_groups_and_bias():
  x = jnp.arange(9.0).reshape(3, 3, 1)
  w = jnp.array([[1.0, 0.0], [0.0, -1.0]]).reshape(2, 2, 1, 1)
  np.testing.assert_array_equal(conv(x, w)[..., 0], np.full((2, 2), -4.0))  # x[i,j] - x[i+1,j+1]
  # Two groups: channel 0 through [1, 1], channel 1 through [1, -1]; bias per output channel.
  x2 = jnp.stack([jnp.array([1.0, 2.0, 3.0]), jnp.array([10.0, 20.0, 40.0])], axis=-1)  # [W=3, C=2]
  w2 = jnp.array([[1.0, 1.0], [1.0, -1.0]]).reshape(2, 1, 2)  # [k=2, C_in/g=1, C_out=2]
  y = conv(x2, w2, jnp.array([0.5, -0.5]), groups=2)
  np.testing.assert_array_equal(y, [[3.5, -10.5], [5.5, -20.5]])


# --------------------------------------------------------------------------------------------
# (3) Numerical gradients.

GRAD_CASES = [
    ((2, 5, 2), (3, 2, 3), dict(stride=2, padding="SAME", padding_mode="reflect")),
    ((1, 4, 5, 4), (2, 2, 2, 4), dict(groups=2, padding=[(1, 2), (2, 0)], padding_mode="circular", dilation=(2, 1))),
    ((4, 4, 3), (3, 2, 1, 3), dict(groups=3, anchor="center", flip=True, stride=(1, 2))),  # depthwise
    ((1, 3, 3, 3, 2), (2, 2, 2, 2, 2), dict(padding="CAUSAL")),
]


@pytest.mark.parametrize("x_shape,k_shape,opts", GRAD_CASES)
def test_conv_check_grads(rng, x_shape, k_shape, opts):
  x, w, b = _randn(rng, x_shape), _randn(rng, k_shape), _randn(rng, k_shape[-1:])
  f = jax.jit(lambda x, w, b: conv(x, w, b, **opts))
  check_grads(f, (x, w, b), order=2, modes=("fwd", "rev"), eps=1e-2, atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize(
    "x_shape,k_shape,opts",
    [
        ((2, 3, 4), (3, 2, 4), dict(stride=2, padding=1, output_padding=1)),
        ((1, 3, 2, 4), (2, 3, 1, 4), dict(groups=2, stride=(2, 1), dilation=(1, 2), padding=[(1, 0), (0, 2)])),
    ],
)
def test_conv_transpose_check_grads(rng, x_shape, k_shape, opts):
  x, w = _randn(rng, x_shape), _randn(rng, k_shape)
  b = _randn(rng, (k_shape[-2] * opts.get("groups", 1),))
  f = jax.jit(lambda x, w, b: conv_transpose(x, w, b, **opts))
  check_grads(f, (x, w, b), order=2, modes=("fwd", "rev"), eps=1e-2, atol=2e-2, rtol=2e-2)


def test_grad_matches_einsum_gradient(rng):
  x, w = _randn(rng, (2, 6, 5, 4)), _randn(rng, (3, 2, 2, 6))
  # The first-order gradient with another border mode, against the einsum formulation's autodiff.
  opts = dict(stride=(2, 1), padding="SAME", padding_mode="replicate", groups=2, dilation=(1, 2))
  loss = lambda f: (lambda x, w: jnp.sum(jnp.sin(f(x, w, **opts))))
  gx, gw = jax.jit(jax.grad(loss(conv), argnums=(0, 1)))(x, w)
  ex, ew = jax.jit(jax.grad(loss(conv_einsum), argnums=(0, 1)))(x, w)
  np.testing.assert_allclose(gx, ex, **TOL)
  np.testing.assert_allclose(gw, ew, **TOL)


# --------------------------------------------------------------------------------------------
# (4) conv_transpose: adjointness, loops, PyTorch.


@st.composite
def transpose_cases(draw):
  nd = draw(st.integers(1, 3))
  groups = draw(st.sampled_from([1, 2, 3]))
  cg = draw(st.integers(1, 2))
  og = draw(st.integers(1, 2))
  ksize = tuple(draw(st.integers(1, 3)) for _ in range(nd))
  stride = tuple(draw(st.integers(1, 3)) for _ in range(nd))
  dilation = tuple(draw(st.integers(1, 2)) for _ in range(nd))
  v_shape = tuple(draw(st.integers(1, 4 if nd < 3 else 3)) for _ in range(nd))
  form = draw(st.sampled_from(["int", "pairs", "VALID", "SAME"]))
  opts = dict(stride=stride, dilation=dilation, groups=groups)
  if form == "int":
    opts["padding"] = draw(st.integers(0, 2))
  elif form == "pairs":
    opts["padding"] = tuple((draw(st.integers(0, 2)), draw(st.integers(0, 2))) for _ in range(nd))
  else:
    opts["padding"] = form
  if form != "SAME":
    opts["output_padding"] = tuple(draw(st.integers(0, max(s, d) - 1)) for s, d in zip(stride, dilation))
  return (draw(st.integers(1, 2)),) + v_shape + (groups * og,), ksize + (cg, groups * og), opts


def _transpose_out_shape(v_shape, ksize, opts):
  nd = len(ksize)
  if opts["padding"] == "SAME":
    return tuple(n * s for n, s in zip(v_shape, opts["stride"]))
  p = opts["padding"]
  pads = [(0, 0)] * nd if p == "VALID" else [(p, p)] * nd if isinstance(p, int) else list(p)
  return tuple(
      (n - 1) * s - lo - hi + (k - 1) * d + 1 + op
      for n, s, (lo, hi), k, d, op in zip(v_shape, opts["stride"], pads, ksize, opts["dilation"], opts["output_padding"])
  )


def test_conv_transpose_is_adjoint_and_matches_loops():
  adjoint_checked = []

  @settings(max_examples=24)
  @given(case=transpose_cases(), seed=st.integers(0, 2**16))
  def run(case, seed):
    _check_transpose(case, seed, adjoint_checked)

  run()
  assert len(adjoint_checked) >= 12, len(adjoint_checked)


def _check_transpose(case, seed, adjoint_checked):
  v_shape, k_shape, opts = case
  nd = len(k_shape) - 2
  out_shape = _transpose_out_shape(v_shape[1:-1], k_shape[:nd], opts)
  if any(o < 1 for o in out_shape):
    with pytest.raises(ValueError, match="too large: conv_transpose would produce spatial shape"):
      conv_transpose(np.zeros(v_shape, np.float32), np.zeros(k_shape, np.float32), **opts)
    return
  rng = np.random.default_rng(seed)
  v, w = _randn(rng, v_shape), _randn(rng, k_shape)
  u = _randn(rng, (v_shape[0],) + out_shape + (k_shape[-2] * opts["groups"],))
  t = jax.jit(functools.partial(conv_transpose, **opts))(v, w)
  assert t.shape == u.shape
  np.testing.assert_allclose(t, conv_transpose_loops(v, w, **opts), **TOL)
  if all(op < s for op, s in zip(opts.get("output_padding", (0,) * nd), opts["stride"])):
    # Then conv maps u's shape back to v's shape, and the two maps are adjoint. (With
    # stride <= output_padding < dilation, PyTorch's rule, conv(u) would be longer than v.)
    fwd = {k: val for k, val in opts.items() if k != "output_padding"}
    cu = jax.jit(functools.partial(conv, **fwd))(u, w)
    assert cu.shape == v.shape
    lhs = float(jnp.vdot(cu, v))
    rhs = float(jnp.vdot(u, t))
    assert lhs == pytest.approx(rhs, rel=1e-4, abs=1e-3)
    adjoint_checked.append(True)


@pytest.mark.parametrize(
    "v_shape,k_shape,opts",
    [
        ((2, 4, 4), (3, 2, 4), dict(stride=2, padding=1, output_padding=1, groups=2)),
        ((1, 3, 4, 6), (3, 2, 2, 6), dict(stride=(2, 3), padding=(1, 0), output_padding=(1, 2), dilation=(2, 1), groups=3)),
        ((2, 2, 3, 2, 2), (2, 3, 2, 3, 2), dict(stride=(1, 2, 2), padding=(0, 1, 1), dilation=(1, 1, 2), output_padding=(0, 1, 1))),
        ((3, 5, 4), (2, 3, 4, 4), dict(stride=1, padding=2, dilation=3, output_padding=2)),  # op < dilation
    ],
)
def test_conv_transpose_matches_torch(rng, v_shape, k_shape, opts):
  import torch  # optional peer: an extra oracle, besides conv_transpose_loops above

  nd = len(k_shape) - 2
  v, w, b = _randn(rng, v_shape), _randn(rng, k_shape), _randn(rng, (k_shape[-2] * opts.get("groups", 1),))
  got = conv_transpose(v, w, b, **opts)
  batched = v.ndim == nd + 2
  tv = torch.from_numpy(v if batched else v[None]).movedim(-1, 1)  # [N, C, *spatial]
  tw = torch.from_numpy(w).permute(nd + 1, nd, *range(nd))  # [C_out, C_in / g, *k]
  fn = getattr(torch.nn.functional, f"conv_transpose{nd}d")
  want = fn(tv, tw, torch.from_numpy(b), **opts).movedim(1, -1).numpy()
  np.testing.assert_allclose(got, want if batched else want[0], **TOL)
  np.testing.assert_allclose(got, conv_transpose_loops(v, w, b, **opts), **TOL)


# --------------------------------------------------------------------------------------------
# (5) Transformations, caching, dtypes.


def test_jit_vmap_grad(rng):
  x, w, b = _randn(rng, (3, 2, 6, 5, 4)), _randn(rng, (3, 3, 2, 6)), _randn(rng, (6,))
  opts = dict(stride=2, padding="SAME", padding_mode="circular", groups=2)
  f = functools.partial(conv, **opts)
  per_example = np.stack([f(x[i], w, b) for i in range(3)])
  np.testing.assert_allclose(jax.jit(f)(x[0], w, b), per_example[0], **TOL)
  np.testing.assert_allclose(jax.vmap(f, in_axes=(0, None, None))(x, w, b), per_example, **TOL)
  np.testing.assert_allclose(jax.jit(jax.vmap(f, in_axes=(0, None, None)))(x, w, b), per_example, **TOL)
  # vmap over unbatched examples equals the batched call; vmap over kernels too.
  np.testing.assert_allclose(jax.vmap(f, in_axes=(0, None, None))(x[0], w, b), f(x[0], w, b), **TOL)
  ws = np.stack([w, 2 * w])
  np.testing.assert_allclose(jax.vmap(f, in_axes=(None, 0, None))(x[0], ws, b)[1], f(x[0], 2 * w, b), **TOL)
  g = jax.jit(jax.grad(lambda w: jnp.sum(f(x[0], w, b) ** 2)))(w)
  assert g.shape == w.shape and bool(jnp.all(jnp.isfinite(g))) and float(jnp.abs(g).sum()) > 0
  ft = functools.partial(conv_transpose, stride=2, padding=1, output_padding=1)
  y = _randn(rng, (3, 2, 4, 4, 6))
  np.testing.assert_allclose(
      jax.vmap(ft, in_axes=(0, None))(y, w[..., :2, :]), np.stack([ft(y[i], w[..., :2, :]) for i in range(3)]), **TOL
  )


def test_no_recompilation_on_second_call(rng):
  traces = []

  def f(x, w, b):
    traces.append(x.shape)
    return conv(x, w, b, stride=2, padding="SAME", padding_mode="reflect", anchor=None)

  jf = jax.jit(f)
  w, b = _randn(rng, (3, 3, 2, 4)), _randn(rng, (4,))
  jf(_randn(rng, (2, 7, 7, 2)), w, b)
  jf(_randn(rng, (2, 7, 7, 2)), 2 * w, -b)
  assert len(traces) == 1 and jf._cache_size() == 1
  jf(_randn(rng, (2, 8, 7, 2)), w, b)  # a new shape does retrace: the counter can fail
  assert len(traces) == 2 and jf._cache_size() == 2
  jt = jax.jit(functools.partial(conv_transpose, stride=2, padding="SAME"))
  jt(_randn(rng, (1, 3, 3, 4)), w)
  jt(_randn(rng, (1, 3, 3, 4)), w)
  assert jt._cache_size() == 1


def test_eager_call_compiles_one_program_per_plan(rng):
  """Outside jit a convolution runs as one compiled program keyed on its plan: a second call
  reuses it, and a call under another conv_config compiles that plan, not the cached one."""
  from jaxconv.ops import _conv_grad, conv_config

  x, w = _randn(rng, (1, 11, 13, 3)), _randn(rng, (3, 3, 3, 7))  # shapes no other test uses
  ref = conv(x, w, padding=1)
  cached = _conv_grad._conv_by_spec._cache_size()
  conv(2 * x, w, padding=1)
  assert _conv_grad._conv_by_spec._cache_size() == cached
  with conv_config(forward="taps", backward="taps"):
    got = conv(x, w, padding=1)
    g = jax.grad(lambda w: conv(x, w, padding=1).sum())(w)
  assert _conv_grad._conv_by_spec._cache_size() == cached + 1
  np.testing.assert_allclose(got, ref, **TOL)
  np.testing.assert_allclose(g, jax.grad(lambda w: conv(x, w, padding=1).sum())(w), **TOL)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_dtypes_preserved(rng, dtype):
  x32, w32, b32 = _randn(rng, (2, 5, 5, 4)), _randn(rng, (3, 3, 2, 4)), _randn(rng, (4,))
  x, w, b = (jnp.asarray(a, dtype) for a in (x32, w32, b32))
  want = conv_loops(np.asarray(x, np.float32), np.asarray(w, np.float32), np.asarray(b, np.float32), padding="SAME", groups=2)
  y = conv(x, w, b, padding="SAME", groups=2)
  assert y.dtype == dtype
  np.testing.assert_allclose(np.asarray(y, np.float32), want, rtol=5e-2, atol=1e-1)
  y32 = conv(x, w, b, padding="SAME", groups=2, preferred_element_type=jnp.float32)
  assert y32.dtype == jnp.float32
  assert conv_einsum(x, w, b, padding="SAME", groups=2).dtype == dtype
  t = conv_transpose(y, w, stride=2, padding=1, groups=2)
  assert t.dtype == dtype
  assert depthwise_conv(x, w[..., :1, :]).dtype == dtype
  pw = jnp.asarray(_randn(rng, (1, 1, 4, 3)), dtype)
  assert separable_conv(x, w[..., :1, :], pw).dtype == dtype
  s32 = separable_conv(x, w[..., :1, :], pw, preferred_element_type=jnp.float32)  # was a mixed-dtype error
  assert s32.dtype == jnp.float32
  f32 = lambda a: np.asarray(a, np.float32)
  want_s = conv_loops(conv_loops(f32(x), f32(w[..., :1, :]), groups=4), f32(pw))
  np.testing.assert_allclose(s32, want_s, rtol=5e-2, atol=1e-1)


# --------------------------------------------------------------------------------------------
# (6) SAME versus the centre anchor; true convolution versus SciPy.


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("k_shape,dilation", [((3,), 1), ((5, 3), (1, 2)), ((3, 1, 3), 2)])
def test_same_equals_center_anchor(rng, mode, k_shape, dilation):
  nd = len(k_shape)
  x = _randn(rng, (2,) + (7, 6, 5)[:nd] + (3,))
  w = _randn(rng, k_shape + (3, 2))
  for flip in (False, True):
    a = conv(x, w, padding="SAME", padding_mode=mode, dilation=dilation, flip=flip)
    c = conv(x, w, anchor="center", padding_mode=mode, dilation=dilation, flip=flip)
    np.testing.assert_allclose(a, c, **TOL)


@pytest.mark.parametrize("x_shape,k_shape", [((9,), (4,)), ((6, 7), (3, 2)), ((4, 5, 3), (2, 3, 2))])
def test_true_convolution_matches_scipy(rng, x_shape, k_shape):
  import scipy.ndimage
  import scipy.signal

  x, w = _randn(rng, x_shape), _randn(rng, k_shape)
  x1, w1 = x[..., None], w[..., None, None]  # one channel
  for mode in ("full", "valid"):
    want = scipy.signal.convolve(x.astype(np.float64), w, mode=mode, method="direct")
    np.testing.assert_allclose(conv(x1, w1, flip=True, padding=mode.upper())[..., 0], want, **TOL)
    np.testing.assert_allclose(conv_loops(x1, w1, flip=True, padding=mode.upper())[..., 0], want, **TOL)
  # ndimage centres the kernel at k // 2: y[i] = sum_j w[j] x[i - (j - k // 2)], the anchor form.
  nd_modes = {"zeros": "constant", "reflect": "mirror", "replicate": "nearest", "circular": "wrap"}
  if len(x_shape) == 3:  # keep the suite fast: two modes suffice in 3-D (all four run in 1-D, 2-D)
    nd_modes = {"reflect": "mirror", "circular": "wrap"}
  anchor = tuple(k // 2 for k in k_shape)
  for ours, theirs in nd_modes.items():
    want = scipy.ndimage.convolve(x.astype(np.float64), w.astype(np.float64), mode=theirs)
    got = conv(x1, w1, flip=True, anchor=anchor, padding_mode=ours)[..., 0]
    np.testing.assert_allclose(got, want, **TOL)
    np.testing.assert_allclose(conv_loops(x1, w1, flip=True, anchor=anchor, padding_mode=ours)[..., 0], want, **TOL)
  # Cross-correlation is ndimage.correlate with the same centring (anchor k // 2).
  want_c = scipy.ndimage.correlate(x.astype(np.float64), w.astype(np.float64), mode="mirror")
  np.testing.assert_allclose(conv(x1, w1, anchor=anchor, padding_mode="reflect")[..., 0], want_c, **TOL)


@pytest.mark.parametrize(
    "x_shape,k_shape,opts",
    [
        ((2, 7, 4), (3, 2, 6), dict(stride=2, padding=2, padding_mode="reflect", dilation=2, groups=2)),
        ((1, 5, 6, 3), (3, 2, 1, 3), dict(stride=(1, 2), padding=((2, 2), (1, 1)), padding_mode="circular", groups=3)),
        ((1, 4, 3, 5, 2), (2, 3, 3, 2, 4), dict(stride=(2, 1, 1), padding=1, padding_mode="replicate")),
    ],
)
def test_border_modes_match_torch(rng, x_shape, k_shape, opts):
  """PyTorch defines the border modes: F.pad(mode) then its convolution (an extra oracle)."""
  import torch
  import torch.nn.functional as F

  nd = len(k_shape) - 2
  x, w = _randn(rng, x_shape), _randn(rng, k_shape)
  pads = opts["padding"]
  pads = [(pads, pads)] * nd if isinstance(pads, int) else pads
  flat = [p for pair in reversed(pads) for p in pair]  # F.pad lists the last dimension first
  tx = F.pad(torch.from_numpy(x).movedim(-1, 1), flat, mode=opts["padding_mode"])
  tw = torch.from_numpy(w).permute(nd + 1, nd, *range(nd))  # [C_out, C_in / g, *k]
  fn = getattr(F, f"conv{nd}d")
  want = fn(tx, tw, stride=opts["stride"], dilation=opts.get("dilation", 1), groups=opts.get("groups", 1))
  np.testing.assert_allclose(conv(x, w, **opts), want.movedim(1, -1).numpy(), **TOL)


# --------------------------------------------------------------------------------------------
# (7) Bad input: the right error, naming the argument, the value and what is accepted.

_X2 = np.zeros((1, 5, 5, 4), np.float32)
_W2 = np.zeros((3, 3, 4, 2), np.float32)


@pytest.mark.parametrize(
    "args,kwargs,exc,match",
    [
        ((np.zeros((5, 4), np.float32), _W2), {}, ValueError, r"x must have rank 4 \(\[N, \*spatial, C\]\) or 3 .* got shape \(5, 4\)"),
        ((_X2, np.zeros((3, 4), np.float32)), {}, ValueError, r"kernel must have shape \[\*kernel_size, C_in // groups, C_out\].*got shape \(3, 4\)"),
        ((_X2, np.zeros((3, 3, 2, 2), np.float32)), {"groups": 3}, ValueError, r"channels of x \(4\) must be divisible by groups \(3\)"),
        ((_X2, np.zeros((3, 3, 4, 2), np.float32)), {"groups": 2}, ValueError, r"input-channel axis must be C_in // groups = 4 // 2 = 2"),
        ((_X2, np.zeros((3, 3, 1, 3), np.float32)), {"groups": 4}, ValueError, r"output channels \(3\) must be divisible by groups \(4\)"),
        ((_X2, np.zeros((7, 3, 4, 2), np.float32)), {}, ValueError, r"kernel \(extent 7 with dilation 1\) is larger than the padded input in spatial dimension 0: input 5"),
        ((_X2, _W2), {"dilation": 3}, ValueError, r"kernel \(extent 7 with dilation 3\) is larger than the padded input"),
        ((_X2, _W2), {"padding": 5, "padding_mode": "reflect"}, ValueError, r"padding of 5 in spatial dimension 0 is too wide for padding_mode='reflect' on an input of size 5"),
        ((_X2, _W2), {"stride": 0}, ValueError, r"stride must be >= 1 in every dimension; got 0"),
        ((_X2, _W2), {"stride": (1, -2)}, ValueError, r"stride must be >= 1 in every dimension; got \(1, -2\)"),
        ((_X2, _W2), {"dilation": (0, 1)}, ValueError, r"dilation must be >= 1 in every dimension; got \(0, 1\)"),
        ((_X2, _W2), {"stride": (1, 1, 1)}, ValueError, r"stride must be an int or a sequence of 2 ints .* got \(1, 1, 1\) of length 3"),
        ((_X2, _W2), {"stride": 1.5}, TypeError, r"stride must be an int or a sequence of 2 ints; got 1.5 of type float"),
        ((_X2, _W2), {"padding": "HALF"}, ValueError, r"padding must be one of \('VALID', 'SAME', 'FULL', 'CAUSAL'\).*got the string 'HALF'"),
        ((_X2, _W2), {"padding": -1}, ValueError, r"padding must be non-negative; got -1"),
        ((_X2, _W2), {"padding": [(1, 2, 3), (0, 0)]}, TypeError, r"padding must be one of .*got \[\(1, 2, 3\), \(0, 0\)\]"),
        ((_X2, _W2), {"padding_mode": "mirror"}, ValueError, r"padding_mode must be one of \('zeros', 'reflect', 'replicate', 'circular'\); got 'mirror'"),
        ((_X2, _W2), {"anchor": (1, 3)}, ValueError, r"anchor \(1, 3\) lies outside the kernel in spatial dimension 1: it must be in \[0, 2\] for a kernel of size 3"),
        ((_X2, _W2), {"anchor": -1}, ValueError, r"anchor must be >= 0 in every dimension; got -1"),
        ((_X2, _W2), {"anchor": "middle"}, ValueError, r"anchor must be 'center', an int, or a sequence of 2 ints; got 'middle'"),
        ((_X2, _W2), {"anchor": 1, "padding": "SAME"}, ValueError, r"give either padding or anchor, not both; got padding='SAME' and anchor=1"),
        ((_X2, _W2), {"groups": 0}, ValueError, r"groups must be a positive int; got 0"),
        ((_X2, _W2), {"flip": "yes"}, TypeError, r"flip must be a bool; got 'yes'"),
        ((_X2, _W2, np.zeros((3,), np.float32)), {}, ValueError, r"bias must have shape \[C_out\] = \(2,\) .* got \(3,\)"),
        ((_X2.astype(np.float64), _W2), {}, TypeError, r"x has dtype float64 but JAX's 64-bit mode is off"),
        ((_X2, _W2.astype(np.float64)), {}, TypeError, r"kernel has dtype float64 but JAX's 64-bit mode is off"),
        ((_X2, _W2.astype(np.float16)), {}, TypeError, r"mixed dtypes \(x: float32, kernel: float16"),
        ((_X2, _W2, np.zeros((2,), jnp.bfloat16)), {}, TypeError, r"mixed dtypes \(x: float32, kernel: float32, bias: bfloat16\)"),
        ((_X2.astype(np.int32), _W2), {}, TypeError, r"x must have a floating-point dtype; got int32"),
    ],
)
def test_conv_bad_input(args, kwargs, exc, match):
  with pytest.raises(exc, match=match):
    conv(*args, **kwargs)


@pytest.mark.parametrize(
    "args,kwargs,exc,match",
    [
        ((np.zeros((1, 3, 3, 3), np.float32), _W2), {}, ValueError, r"x must have C_out = 2 channels \(the kernel's last axis\) for conv_transpose; got shape \(1, 3, 3, 3\)"),
        ((np.zeros((1, 3, 3, 2), np.float32), _W2), {"stride": 2, "output_padding": 2}, ValueError, r"output_padding must be smaller than stride or dilation in every dimension; got 2 in dimension 0 \(stride 2, dilation 1\)"),
        ((np.zeros((1, 3, 3, 2), np.float32), _W2), {"padding": "SAME", "output_padding": 1}, ValueError, r"output_padding must be 0 with padding='SAME'"),
        ((np.zeros((1, 3, 3, 2), np.float32), _W2), {"padding": "FULL"}, ValueError, r"padding for conv_transpose must be 'VALID', 'SAME', .*got 'FULL'"),
        ((np.zeros((1, 1, 1, 2), np.float32), _W2), {"padding": 2}, ValueError, r"padding 2 is too large: conv_transpose would produce spatial shape \(-1, -1\)"),
        ((np.zeros((1, 3, 3, 2), np.float32), _W2, np.zeros((2,), np.float32)), {}, ValueError, r"bias must have shape \[C_in\] = \(4,\) for conv_transpose; got \(2,\)"),
        ((np.zeros((1, 3, 3, 2), np.float32), _W2), {"stride": 0}, ValueError, r"stride must be >= 1 in every dimension; got 0"),
        ((np.zeros((1, 3, 3, 2), np.float64), _W2), {}, TypeError, r"x has dtype float64 but JAX's 64-bit mode is off"),
        ((np.zeros((1, 3, 3, 2), np.float16), _W2), {}, TypeError, r"mixed dtypes \(x: float16, kernel: float32"),
        ((np.zeros((3, 2), np.float32), _W2), {}, ValueError, r"x must have rank 4 .* got shape \(3, 2\)"),
    ],
)
def test_conv_transpose_bad_input(args, kwargs, exc, match):
  with pytest.raises(exc, match=match):
    conv_transpose(*args, **kwargs)


def test_errors_raise_before_tracing_reaches_xla():
  # Abstract evaluation raises the same Python error: the checks need only static shapes.
  with pytest.raises(ValueError, match="too wide for padding_mode='reflect'"):
    jax.eval_shape(functools.partial(conv, padding=5, padding_mode="reflect"), _X2, _W2)
  with pytest.raises(ValueError, match="must be divisible by groups"):
    jax.jit(functools.partial(conv, groups=3))(_X2, np.zeros((3, 3, 2, 3), np.float32))


def test_public_names():
  for name in ops.__all__:
    assert getattr(ops, name) is not None
  import jaxconv.reference as ref

  assert {"conv_loops", "conv_einsum", "conv_transpose_loops"} <= set(ref.__all__)
