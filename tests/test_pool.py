"""Pooling ops against NumPy loops (jaxconv.reference), closed forms, hand cases and PyTorch."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from jaxconv import ops
from jaxconv import reference as ref


def _distinct(rng, shape):
  """Values with gaps >= 0.1: no ties, so max/argmax and finite differences are well defined."""
  n = int(np.prod(shape))
  return (rng.permutation(n).reshape(shape) * 0.1 - 0.05 * n).astype(np.float32)


def _configs(seed=0, count=24):
  """A randomized grid of valid pooling settings (nd, window, stride, pads, dilation, ceil)."""
  r = np.random.default_rng(seed)
  out = []
  kinds = ["max", "min", "avg", "avg", "sum", "lp"]
  while len(out) < count:
    nd = int(r.integers(1, 4))
    size = tuple(int(v) for v in r.integers(3, 8 if nd < 3 else 5, nd))
    win = tuple(int(v) for v in r.integers(1, 4, nd))
    stride = tuple(int(v) for v in r.integers(1, 4, nd))
    dil = tuple(int(v) for v in r.integers(1, 3, nd))
    pads = tuple((int(r.integers(0, w + 1)), int(r.integers(0, w + 1))) for w in win)
    ext = [(w - 1) * d + 1 for w, d in zip(win, dil)]
    if any(n + lo + hi < e for n, (lo, hi), e in zip(size, pads, ext)):
      continue
    if any(  # some window entirely in the padding: an error, tested in test_errors
        not any(0 <= i * s + j * d - lo < n for j in range(w))
        for n, (lo, hi), w, s, d in zip(size, pads, win, stride, dil)
        for i in range((n + lo + hi + s - 1) // s)
    ):
      continue
    kind = kinds[len(out) % len(kinds)]
    out.append((kind, size, win, stride, pads, dil, bool(r.integers(0, 2)), bool(r.integers(0, 2))))
  return out


@pytest.mark.parametrize("kind,size,win,stride,pads,dil,ceil,cip", _configs())
def test_pool_matches_loops(kind, size, win, stride, pads, dil, ceil, cip):
  rng = np.random.default_rng(hash((size, win)) % 2**32)
  x = rng.normal(size=(2, *size, 2)).astype(np.float32)
  if kind == "lp":
    x = np.abs(x) + 0.1
  kw = dict(count_include_pad=cip) if kind == "avg" else {}
  if kind == "lp":
    kw["p"] = 3
  got = ops.pool(x, kind, win, stride, pads, dil, ceil, **kw)
  want = ref.pool_loop(x, kind, win, stride, pads, dil, ceil, count_include_pad=cip, p=3)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "padding,pairs",
    [
        ("SAME", ((1, 1), (0, 1))),  # in (5, 6), window 3, stride (1, 2): totals 2 and 1
        ("FULL", ((2, 2), (2, 2))),
        ("CAUSAL", ((2, 0), (2, 0))),
        (1, ((1, 1), (1, 1))),
        ((0, 2), ((0, 0), (2, 2))),
    ],
)
def test_padding_forms(rng, padding, pairs):
  x = rng.normal(size=(1, 5, 6, 2)).astype(np.float32)
  for f in (ops.max_pool, ops.avg_pool):
    np.testing.assert_allclose(f(x, 3, (1, 2), padding), f(x, 3, (1, 2), pairs), rtol=1e-6)


def test_closed_forms_and_hand_case():
  ones = jnp.ones((2, 5, 7, 3))
  np.testing.assert_array_equal(ops.avg_pool(ones, 3, 2, 1, count_include_pad=False), 1.0)
  np.testing.assert_array_equal(ops.max_pool(-ones, 3, 2, 1), -1.0)  # -inf padding never wins
  np.testing.assert_array_equal(ops.min_pool(ones, 3, 2, "SAME"), 1.0)
  np.testing.assert_allclose(ops.lp_pool(ones, 2, 2), 2.0)  # sqrt(4)
  # 1-D, 5 inputs, window 2, stride 2, ceil_mode: windows [0,1] [2,3] [4] -> 3 outputs.
  x = jnp.array([1.0, 2.0, 3.0, 4.0, 10.0]).reshape(1, 5, 1)
  np.testing.assert_allclose(ops.avg_pool(x, 2, ceil_mode=True)[0, :, 0], [1.5, 3.5, 10.0])
  np.testing.assert_allclose(ops.max_pool(x, 2, ceil_mode=True)[0, :, 0], [2.0, 4.0, 10.0])
  assert ops.max_pool(x, 2).shape == (1, 2, 1)
  # ceil_mode never starts a window in the trailing padding: in 4, window 2, stride 2, pad 1.
  assert ops.max_pool(jnp.ones((1, 4, 1)), 2, 2, 1, ceil_mode=True).shape == (1, 3, 1)
  # count_include_pad: padding 1 around [1, 2, 3], window 3, stride 1.
  x = jnp.array([1.0, 2.0, 3.0]).reshape(1, 3, 1)
  np.testing.assert_allclose(ops.avg_pool(x, 3, 1, 1)[0, :, 0], [1.0, 2.0, 5.0 / 3])
  np.testing.assert_allclose(ops.avg_pool(x, 3, 1, 1, count_include_pad=False)[0, :, 0], [1.5, 2.0, 2.5])


def test_unbatched_vmap_jit_dtype(rng):
  x = rng.normal(size=(3, 6, 6, 2)).astype(np.float32)
  batched = ops.max_pool(x, (2, 2))
  np.testing.assert_array_equal(ops.max_pool(x[0], (2, 2)), batched[0])
  np.testing.assert_array_equal(jax.vmap(lambda a: ops.max_pool(a, (2, 2)))(x), batched)
  f = jax.jit(lambda a: ops.avg_pool(a, 3, 2, "SAME", count_include_pad=False))
  np.testing.assert_allclose(f(x), ops.avg_pool(x, 3, 2, "SAME", count_include_pad=False), rtol=1e-6)
  f(x + 1)
  assert f._cache_size() == 1  # no recompilation for the same shapes
  xb = jnp.asarray(x, jnp.bfloat16)
  for fn in (ops.max_pool, ops.avg_pool, ops.min_pool):
    assert fn(xb, 2).dtype == jnp.bfloat16
  assert ops.adaptive_avg_pool(xb, 4).dtype == jnp.bfloat16


def test_global_pools(rng):
  x = rng.normal(size=(2, 3, 4, 5)).astype(np.float32)
  np.testing.assert_allclose(ops.global_avg_pool(x), x.mean(axis=(1, 2)), rtol=1e-6)
  np.testing.assert_array_equal(ops.global_max_pool(x), x.max(axis=(1, 2)))
  assert ops.global_avg_pool(x, keepdims=True).shape == (2, 1, 1, 5)
  x3 = rng.normal(size=(2, 2, 3, 4, 5)).astype(np.float32)
  np.testing.assert_allclose(ops.global_avg_pool(x3), x3.mean(axis=(1, 2, 3)), rtol=1e-6)


@pytest.mark.parametrize(
    "size,out",
    [((7,), (3,)), ((10,), (4,)), ((5, 7), (3, 4)), ((6, 6), (3, 2)), ((5, 7), (None, 2)), ((4, 5, 6), (3, 2, 4)),
     ((3,), (7,)), ((2, 5), (6, 3))],
)
def test_adaptive_matches_bins(rng, size, out):
  x = rng.normal(size=(2, *size, 3)).astype(np.float32)
  full = tuple(n if o is None else o for o, n in zip(out, size))
  for kind, f in (("avg", ops.adaptive_avg_pool), ("max", ops.adaptive_max_pool)):
    np.testing.assert_allclose(f(x, out), ref.adaptive_pool_loop(x, full, kind), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(ops.adaptive_avg_pool(x[0], out), ref.adaptive_pool_loop(x, full, "avg")[0], rtol=1e-5, atol=1e-6)


def test_adaptive_int_and_identity(rng):
  x = rng.normal(size=(1, 7, 7, 2)).astype(np.float32)
  np.testing.assert_allclose(ops.adaptive_avg_pool(x, 1), ops.global_avg_pool(x, keepdims=True), rtol=1e-5)
  np.testing.assert_array_equal(ops.adaptive_max_pool(x, 7), x)


def test_adaptive_avg_over_uneven_bins_is_a_matrix_product():
  """Bins that differ in size or overlap average by one matrix product per axis, not a gather
  and a sum (which XLA:CPU fused into the next matrix products: VGG on small images ran about
  10x slower)."""
  jaxpr = str(jax.make_jaxpr(lambda a: ops.adaptive_avg_pool(a, 7))(jnp.zeros((2, 2, 3, 8))))
  assert jaxpr.count("dot_general") == 2 and "gather" not in jaxpr


@pytest.mark.parametrize(
    "size,win,stride,pads,dil,ceil",
    [
        ((6, 7), (2, 2), (2, 2), ((0, 0), (0, 0)), (1, 1), True),
        ((7, 7), (3, 3), (2, 2), ((1, 1), (1, 1)), (1, 1), False),
        ((8,), (3,), (2,), ((1, 1),), (2,), True),
        ((4, 5, 5), (2, 3, 2), (2, 1, 2), ((0, 1), (1, 0), (0, 0)), (1, 1, 2), False),
    ],
)
def test_max_pool_with_indices_and_unpool(rng, size, win, stride, pads, dil, ceil):
  x = _distinct(rng, (2, *size, 3))
  v, i = ops.max_pool_with_indices(x, win, stride, pads, dil, ceil)
  rv, ri = ref.max_pool_indices_loop(x, win, stride, pads, dil, ceil)
  np.testing.assert_array_equal(v, rv.astype(np.float32))
  np.testing.assert_array_equal(i, ri)
  np.testing.assert_array_equal(v, ops.max_pool(x, win, stride, pads, dil, ceil))
  u = np.asarray(ops.max_unpool(v, i, output_size=size))
  flat_x, flat_u = x.reshape(2, -1, 3), u.reshape(2, -1, 3)
  for n in range(2):
    for c in range(3):
      chosen = np.unique(ri[n, ..., c])
      np.testing.assert_array_equal(flat_u[n, chosen, c], flat_x[n, chosen, c])
      rest = np.setdiff1d(np.arange(flat_x.shape[1]), chosen)
      np.testing.assert_array_equal(flat_u[n, rest, c], 0.0)


def test_unpool_default_size_and_hand_case():
  v = jnp.array([[4.0, 8.0]]).reshape(1, 1, 2, 1)
  i = jnp.array([[5, 2]]).reshape(1, 1, 2, 1)
  want = np.zeros((2, 4))
  want[1, 1], want[0, 2] = 4.0, 8.0
  np.testing.assert_array_equal(ops.max_unpool(v, i, 2)[0, :, :, 0], want)
  np.testing.assert_array_equal(ops.max_unpool(v[0], i[0], (2, 2))[:, :, 0], want)
  assert ops.max_unpool(v, i, 3, stride=2, padding=1).shape == (1, 1, 3, 1)


def test_against_torch(rng):
  torch = pytest.importorskip("torch")
  F = torch.nn.functional
  x = rng.normal(size=(2, 7, 9, 3)).astype(np.float32)
  t = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())

  def back(a):
    return a.numpy().transpose(0, 2, 3, 1)

  for cip in (True, False):
    for ceil in (True, False):
      want = back(F.avg_pool2d(t, 3, 2, 1, ceil_mode=ceil, count_include_pad=cip))
      got = ops.avg_pool(x, 3, 2, 1, ceil_mode=ceil, count_include_pad=cip)
      np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  want, wi = F.max_pool2d(t, 3, 2, 1, dilation=2, ceil_mode=True, return_indices=True)
  got, gi = ops.max_pool_with_indices(x, 3, 2, 1, 2, ceil_mode=True)
  np.testing.assert_array_equal(got, back(want))
  np.testing.assert_array_equal(gi, back(wi))
  want, wi = F.max_pool2d(t, 3, 2, 1, return_indices=True)
  got, gi = ops.max_pool_with_indices(x, 3, 2, 1)
  np.testing.assert_array_equal(gi, back(wi))
  np.testing.assert_array_equal(ops.max_unpool(got, gi, 3, 2, 1), back(F.max_unpool2d(want, wi, 3, 2, 1)))
  np.testing.assert_allclose(ops.adaptive_avg_pool(x, (3, 4)), back(F.adaptive_avg_pool2d(t, (3, 4))), rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(ops.adaptive_max_pool(x, (4, 5)), back(F.adaptive_max_pool2d(t, (4, 5))))
  # An output larger than the input repeats elements (AlexNet/VGG's pool on small images).
  big = (2 * x.shape[1] + 1, x.shape[2] + 3)
  np.testing.assert_allclose(ops.adaptive_avg_pool(x, big), back(F.adaptive_avg_pool2d(t, big)), rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(ops.adaptive_max_pool(x, big), back(F.adaptive_max_pool2d(t, big)))
  xp = np.abs(x) + 0.1
  tp = torch.from_numpy(xp.transpose(0, 3, 1, 2).copy())
  np.testing.assert_allclose(ops.lp_pool(xp, 2, (2, 3), (2, 2)), back(F.lp_pool2d(tp, 2, (2, 3), (2, 2))), rtol=1e-5)


def test_gradients(rng):
  x = _distinct(rng, (1, 5, 6, 1))
  pos = np.abs(x) + 0.5
  kw = dict(order=1, modes=("rev",), atol=1e-2, rtol=1e-2, eps=1e-2)
  check_grads(jax.jit(lambda a: ops.max_pool(a, 3, 2, 1, ceil_mode=True)), (x,), **kw)
  check_grads(jax.jit(lambda a: ops.min_pool(a, 2, 1, "SAME", dilation=2)), (x,), **kw)
  check_grads(jax.jit(lambda a: ops.avg_pool(a, 3, 2, 1, ceil_mode=True, count_include_pad=False)), (x,), **kw)
  check_grads(jax.jit(lambda a: ops.pool(a, "sum", 2, 1, "SAME", dilation=(1, 2))), (x,), **kw)
  check_grads(jax.jit(lambda a: ops.lp_pool(a, 2.5, 2)), (pos,), order=1, modes=("rev",), atol=1e-2, rtol=1e-2, eps=1e-3)
  check_grads(jax.jit(lambda a: ops.adaptive_avg_pool(a, (3, 4))), (x,), **kw)
  check_grads(jax.jit(lambda a: ops.adaptive_max_pool(a, (3, 4))), (x,), **kw)
  check_grads(jax.jit(lambda a: ops.global_avg_pool(a)), (x,), **kw)
  check_grads(jax.jit(lambda a: ops.global_max_pool(a)), (x,), **kw)
  check_grads(jax.jit(lambda a: ops.max_pool_with_indices(a, 2, 2, 0, 1, True)[0]), (x,), **kw)
  _, idx = ops.max_pool_with_indices(x, 2)
  check_grads(jax.jit(lambda v: ops.max_unpool(v, idx, 2)), (ops.max_pool(x, 2),), **kw)


def _reduce_window_max(x, win, stride, pads):
  """Max pooling as one lax.reduce_window, differentiated by JAX (select_and_scatter)."""
  return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, *win, 1), (1, *stride, 1),
                               ((0, 0), *pads, (0, 0)))


@pytest.mark.parametrize("shape,win,pads", [
    ((3, 8, 8, 5), (2, 2), ((0, 0), (0, 0))),
    ((2, 9, 7, 2), (2, 2), ((1, 1), (1, 1))),  # padding and a last row dropped
    ((2, 9, 7, 3), (3, 3), ((0, 0), (1, 1))),
    ((4, 10, 3), (2,), ((0, 0),)),  # 1-D
    ((1, 4, 6, 4, 2), (2, 3, 2), ((0, 0),) * 3),  # 3-D
])
def test_tiled_max_pool_gradient_breaks_ties_as_select_and_scatter(rng, shape, win, pads):
  """Windows that tile the input have a derivative rule of their own (no select_and_scatter):
  on inputs full of ties it gives the gradient (and, on distinct values, the forward-mode and
  second-order derivatives) of reduce_window's maximum, bit for bit: the first maximum of each
  window in row-major order takes the gradient, as in PyTorch."""
  x = jnp.asarray(rng.integers(0, 3, size=shape), jnp.float32)
  pool = jax.jit(lambda a: ops.max_pool(a, win, padding=pads))
  want = jax.jit(lambda a: _reduce_window_max(a, win, win, pads))
  y = pool(x)
  np.testing.assert_array_equal(y, want(x))
  weights = jnp.asarray(rng.normal(size=y.shape), jnp.float32)
  grad = lambda f: jax.jit(jax.grad(lambda a: jnp.sum(f(a) * weights)))(x)
  np.testing.assert_array_equal(grad(pool), grad(want))
  np.testing.assert_array_equal(grad(lambda a: ops.min_pool(a, win, padding=pads)),
                                -grad(lambda a: want(-a)))
  assert "select_and_scatter" not in str(jax.make_jaxpr(jax.grad(lambda a: jnp.sum(pool(a))))(x))
  xd = jnp.asarray(_distinct(rng, shape))
  t = jnp.asarray(rng.normal(size=shape), jnp.float32)
  np.testing.assert_array_equal(jax.jvp(pool, (xd,), (t,))[1], jax.jvp(want, (xd,), (t,))[1])
  hvp = lambda f: jax.jvp(jax.grad(lambda a: jnp.sum(jnp.sin(f(a)) * weights)), (xd,), (t,))[1]
  np.testing.assert_allclose(hvp(pool), hvp(want), rtol=1e-6, atol=1e-6)
  check_grads(pool, (xd,), order=2, modes=("fwd", "rev"), atol=1e-2, rtol=1e-2, eps=1e-2)


def test_tiled_max_pool_gradient_goes_to_the_first_nan():
  x = jnp.array([1.0, jnp.nan, 3.0, jnp.nan, 2.0, 0.0]).reshape(1, 6, 1)
  y, vjp = jax.vjp(lambda a: ops.max_pool(a, 3), x)
  assert np.isnan(np.asarray(y)).all()
  np.testing.assert_array_equal(vjp(jnp.ones_like(y))[0][0, :, 0], [0, 1, 0, 1, 0, 0])


def test_errors():
  x = jnp.ones((1, 4, 4, 2))
  with pytest.raises(ValueError, match=r"window .* is larger than the padded input in spatial dimension 0: input 4"):
    ops.max_pool(x, (5, 2))
  with pytest.raises(ValueError, match=r"avg_pool: the window \(extent 5 = \(window 3 - 1\) \* dilation 2 \+ 1\) is larger"):
    ops.avg_pool(x, 3, dilation=2)
  with pytest.raises(ValueError, match=r"count_include_pad applies to average pooling only.*kind='max'"):
    ops.pool(x, "max", 2, count_include_pad=False)
  with pytest.raises(ValueError, match=r"max_pool: padding 2 leaves output window 0 of spatial dimension 0 entirely in the padding"):
    ops.max_pool(x, 2, 1, 2)
  with pytest.raises(ValueError, match=r"kind must be one of .*'median'"):
    ops.pool(x, "median", 2)
  with pytest.raises(ValueError, match=r"adaptive_max_pool: output_size must hold positive ints"):
    ops.adaptive_max_pool(x, (0, 2))
  with pytest.raises(ValueError, match=r"max_pool: x must have rank 3 .* or 2 .*got shape \(1, 4, 4, 2\)"):
    ops.max_pool(x, (2,))
  with pytest.raises(ValueError, match=r"window must be >= 1"):
    ops.max_pool(x, 0)
  with pytest.raises(ValueError, match=r"padding must be one of .*got the string 'half'"):
    ops.max_pool(x, 2, padding="half")
  with pytest.raises(ValueError, match=r"lp_pool: p must be a positive number; got -1"):
    ops.lp_pool(x, -1, 2)
  with pytest.raises(ValueError, match=r"rank >= 3"):
    ops.global_avg_pool(jnp.ones((2, 3)))
  with pytest.raises(ValueError, match=r"max_unpool: give window .* or output_size"):
    ops.max_unpool(x, jnp.zeros(x.shape, jnp.int32))
  with pytest.raises(TypeError, match=r"indices must be integers"):
    ops.max_unpool(x, x, 2)
  with pytest.raises(TypeError, match=r"x must have a floating-point dtype"):
    ops.max_pool(jnp.ones((1, 4, 4, 1), jnp.int32), 2)


def test_errors_need_only_shapes_and_public_names():
  spec = jax.ShapeDtypeStruct((1, 4, 4, 2), jnp.float32)
  with pytest.raises(ValueError, match=r"max_pool: the window .* is larger than the padded input"):
    jax.eval_shape(lambda a: ops.max_pool(a, 5), spec)
  with pytest.raises(ValueError, match=r"Expected more than 1 value per channel"):
    jax.eval_shape(lambda a: ops.batch_norm(a, None, None, None, None, train=True), jax.ShapeDtypeStruct((1, 2), jnp.float32))
  issue3 = {
      "pool", "max_pool", "min_pool", "avg_pool", "lp_pool", "global_avg_pool", "global_max_pool",
      "adaptive_avg_pool", "adaptive_max_pool", "max_pool_with_indices", "max_unpool", "batch_norm",
      "layer_norm", "group_norm", "instance_norm", "local_response_norm", "softmax_cross_entropy",
      "sigmoid_binary_cross_entropy", "mse_loss", "l1_loss", "soft_iou_loss", "dice_loss",
      "edge_aware_loss", "perceptual_loss", "combine_losses", "box_kernel", "gaussian_kernel",
      "gaussian_size", "sobel_kernel", "scharr_kernel", "laplacian_kernel", "gabor_kernel",
      "filter2d", "sobel_edges",
  }
  assert issue3 <= set(ops.__all__) and all(callable(getattr(ops, n)) for n in issue3)
  oracles = {"pool_loop", "max_pool_indices_loop", "adaptive_pool_loop", "batch_norm_np", "group_norm_np", "lrn_loop"}
  assert oracles <= set(ref.__all__) and all(callable(getattr(ref, n)) for n in oracles)
