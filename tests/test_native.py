"""The native convolution kernels (jaxconv.ops._native) against XLA and a NumPy loop.

They are built on first use; on an x86-64 machine with a C++ compiler (this project's machines
and CI) they must build. Every test that runs them runs once per variant this CPU can run
(AVX-512, AVX2, portable: all three here). Elsewhere only the fallback is checked.
"""

import functools
import itertools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from jaxconv.ops import _conv_grad, _native, conv, conv_config
from helpers import max_abs, normal

NATIVE = dict(forward="native", backward="native")
WINOGRAD = dict(forward="winograd", backward="winograd")
NARROW = dict(forward="narrow", backward="narrow")
XLA = dict(forward="xla", backward="xla")
_CPU_ISAS = _native._build.cpu_isas()
_CAN_BUILD = bool(_CPU_ISAS) and _native._build.compiler() is not None and os.environ.get("JAXCONV_NATIVE") != "0"
# The kernels serve the CPU backend only (JAXCONV_TEST_PLATFORM=gpu runs the suite on a GPU).
needs_native = pytest.mark.skipif(not _CAN_BUILD or jax.default_backend() != "cpu",
                                  reason="no x86-64 CPU, C++ compiler or CPU backend: the fallback is tested")


@pytest.fixture(params=_CPU_ISAS or ("none",))
def isa(request, monkeypatch):
  """Runs a test once per variant this CPU can run: under conv_config(native_isa=...) and with
  JAXCONV_NATIVE_ISA set (for direct calls of the primitives)."""
  if request.param == "none":
    yield None
    return
  monkeypatch.setenv("JAXCONV_NATIVE_ISA", request.param)
  with conv_config(native_isa=request.param):
    yield request.param


def test_builds_where_it_can_and_says_why_not_elsewhere():
  s = _native.status()
  assert s.available == _CAN_BUILD, s.reason
  if s.available:
    assert s.isa == _CPU_ISAS[0] and os.path.exists(s.path) and s.path.endswith(".so")
    # The cached library is reused: a second build returns the same file without compiling.
    mtime = os.path.getmtime(s.path)
    assert str(_native._build.build(s.isa)) == s.path and os.path.getmtime(s.path) >= mtime
  else:
    assert any(k in s.reason for k in ("x86-64", "compiler", "JAXCONV_NATIVE", "failed"))


def test_disabled_by_environment_and_refused_when_unavailable(monkeypatch):
  monkeypatch.setenv("JAXCONV_NATIVE", "0")
  assert _native.status().reason == "disabled by JAXCONV_NATIVE=0"
  with pytest.raises(RuntimeError, match="native convolution kernels are not available: disabled"):
    _native.conv(jnp.ones((1, 3, 3, 1)), jnp.ones((1, 1, 1, 1)), (1, 1), ((0, 0), (0, 0)), (1, 1))
  # ... and "native" in conv_config then means what auto picks without it.
  with conv_config(**NATIVE):
    spec = _conv_grad.make_spec((2, 8, 8, 16), (3, 3, 16, 16), (1, 1), ((1, 1),) * 2, (1, 1), 1, None, None)
  assert "native" not in (spec.forward, spec.input_grad, spec.kernel_grad)


def _vjp_all(f, x, w, cfg):
  def run(x, w):
    y, vjp = jax.vjp(f, x, w)
    g = jnp.cos(jnp.arange(y.size, dtype=jnp.float32).reshape(y.shape))
    return (y, *vjp(g))

  with conv_config(**cfg):
    return jax.jit(run)(x, w)


def _vjp_jaxpr(f, x, w, cfg) -> str:
  """The jaxpr of ``f``'s forward and both gradients under ``conv_config(**cfg)``."""
  with conv_config(**cfg):
    return str(jax.make_jaxpr(lambda x, w: jax.vjp(f, x, w)[1](f(x, w)))(x, w))


def _close(got, want, tol=1e-5):
  for a, b in zip(got, want):
    assert a.shape == b.shape and a.dtype == b.dtype
    scale = max_abs(b) or 1.0
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=tol * scale, rtol=0)


# Kernel sizes, strides, dilations, paddings (incl. asymmetric and wider than the kernel) and
# channel counts that are not multiples of the kernels' 16-lane vectors or 7-row blocks.
GRID = [
    dict(x=(2, 9, 7, 5), k=(3, 3, 5, 17), stride=1, padding=1),
    dict(x=(3, 11, 10, 16), k=(3, 2, 16, 64), stride=(2, 1), padding=((2, 0), (1, 3)), dilation=(1, 2)),
    dict(x=(1, 6, 6, 3), k=(1, 1, 3, 80), stride=1, padding=0),
    dict(x=(2, 8, 8, 33), k=(5, 5, 33, 20), stride=(3, 2), padding=2),
    dict(x=(4, 5, 5, 70), k=(3, 3, 70, 33), stride=1, padding="SAME", dilation=2),
    dict(x=(1, 12, 13, 8), k=(4, 4, 8, 16), stride=2, padding="VALID"),
    dict(x=(5, 3, 3, 1), k=(3, 3, 1, 1), stride=1, padding="FULL"),
    dict(x=(2, 6, 5, 130), k=(3, 3, 130, 70), stride=1, padding=1),  # channel blocks (113 + 17), partial output block
    dict(x=(2, 10, 11, 16), k=(1, 1, 16, 24), stride=3, padding=0),  # phases no tap reaches
    dict(x=(2, 13, 12, 18), k=(3, 3, 18, 32), stride=2, padding=((3, 1), (0, 2)), dilation=2),  # s, d not coprime
    dict(x=(2, 17, 24), k=(5, 24, 48), stride=1, padding=4, dilation=2),  # 1-D
    dict(x=(3, 20, 7), k=(3, 7, 9), stride=3, padding=((0, 2),)),  # 1-D, strided
]


@needs_native
@pytest.mark.parametrize("case", GRID, ids=lambda c: f"x{c['x']}k{c['k']}")
def test_every_pass_matches_xla(case, isa):
  kx, kw_ = jax.random.split(jax.random.key(len(case["x"]) + case["k"][-1]))
  x, w = normal(kx, case["x"]), normal(kw_, case["k"])
  kw = {k: v for k, v in case.items() if k not in ("x", "k")}
  f = lambda x, w: conv(x, w, **kw)
  with conv_config(**NATIVE):
    spec = _conv_grad.make_spec(x.shape, w.shape, (1,) * (w.ndim - 2), ((0, 0),) * (w.ndim - 2),
                                (1,) * (w.ndim - 2), 1, None, None)
    assert (spec.forward, spec.input_grad, spec.kernel_grad) == ("native",) * 3
  assert "jaxconv_native_conv" in _vjp_jaxpr(f, x, w, NATIVE)
  _close(_vjp_all(f, x, w, NATIVE), _vjp_all(f, x, w, XLA))


# (x, w, stride, padding, dilation) per algorithm: odd channel counts, asymmetric pads.
LOOP_CASES = {
    "direct": ((2, 7, 9, 19), (3, 2, 19, 21), (2, 2), ((1, 0), (0, 1)), (1, 2)),
    "winograd": ((3, 10, 7, 21), (3, 3, 21, 18), (1, 1), ((2, 1), (0, 3)), (1, 1)),
    "depthwise": ((2, 8, 7, 19), (3, 2, 1, 19), (2, 1), ((1, 0), (0, 1)), (1, 2)),
    "narrow": ((3, 9, 23, 5), (4, 5, 5, 7), (2, 2), ((2, 1), (0, 3)), (1, 2)),
}


@needs_native
@pytest.mark.parametrize("algorithm", LOOP_CASES)
def test_forward_and_kernel_gradient_against_numpy_loop(algorithm, isa):
  x_shape, w_shape, stride, pads, dil = LOOP_CASES[algorithm]
  rng = np.random.default_rng(0)
  x, w = rng.normal(size=x_shape).astype(np.float32), rng.normal(size=w_shape).astype(np.float32)
  y = _native.conv(jnp.asarray(x), jnp.asarray(w), stride, pads, dil, algorithm)
  g = rng.normal(size=y.shape).astype(np.float32)
  dw = _native.kernel_grad(jnp.asarray(x), jnp.asarray(g), w_shape[:2], stride, pads, dil, algorithm)
  xp = np.pad(x.astype(np.float64), ((0, 0), *pads, (0, 0)))
  ho, wo = y.shape[1:3]
  want_y, want_dw = np.zeros(y.shape), np.zeros(w.shape)
  for i, j in itertools.product(range(w_shape[0]), range(w_shape[1])):
    sl = xp[:, i * dil[0]::stride[0], j * dil[1]::stride[1]][:, :ho, :wo]
    if algorithm == "depthwise":
      want_y += sl * w[i, j, 0]
      want_dw[i, j, 0] = np.einsum("nhwc,nhwc->c", sl, g)
    else:
      want_y += np.einsum("nhwc,co->nhwo", sl, w[i, j])
      want_dw[i, j] = np.einsum("nhwc,nhwo->co", sl, g)
  # Float32: direct summation is within about 4e-7 of the largest value, F(4x4, 3x3) a few 1e-6.
  np.testing.assert_allclose(np.asarray(y), want_y, atol=1e-5 * np.abs(want_y).max(), rtol=0)
  np.testing.assert_allclose(np.asarray(dw), want_dw, atol=1e-5 * np.abs(want_dw).max(), rtol=0)


_XLA_DERIVATIVES = {}


@needs_native
@pytest.mark.parametrize("algorithm,kshape,kw", [
    ("direct", (3, 2, 3, 4), dict(padding=1)),
    ("direct", (3, 2, 3, 4), dict(stride=2, padding=((1, 0), (0, 1)), dilation=(2, 1))),
    ("winograd", (3, 3, 3, 4), dict(padding=((1, 2), (1, 0)))),
    ("depthwise", (3, 2, 1, 3), dict(stride=(2, 1), padding=((1, 0), (0, 1)), dilation=(1, 2), groups=3)),
    ("narrow", (3, 2, 3, 4), dict(stride=2, padding=((1, 0), (0, 1)), dilation=(2, 1))),
])
def test_second_order_forward_mode_and_per_example_gradients(algorithm, kshape, kw, isa):
  x = normal(jax.random.key(1), (2, 6, 5, 3))
  w = normal(jax.random.key(2), kshape, scale=0.5)
  cfg = {"winograd": WINOGRAD, "narrow": NARROW}.get(algorithm, NATIVE)
  loss = lambda x, w: jnp.sum(jnp.sin(conv(x, w, **kw)))
  with conv_config(**cfg):
    assert f"algorithm={algorithm}" in str(jax.make_jaxpr(jax.grad(loss, argnums=(0, 1)))(x, w))
    # The differentiation rules are Python shared by every variant, so the numerical check of
    # them runs once (on the first variant); each variant's kernels inside the second-order
    # programs are compared with XLA's below. A convolution is bilinear, so central differences
    # are exact up to rounding at any step: a large one keeps Winograd's float32 rounding (a few
    # 1e-6) from being divided by a small one.
    if isa in (None, _CPU_ISAS[0]):
      check_grads(jax.jit(lambda x, w: conv(x, w, **kw)), (x, w), order=2, modes=("fwd", "rev"), atol=2e-2,
                  rtol=2e-2, eps=1e-2)

  def derivatives(cfg):
    with conv_config(**cfg):
      hvp = jax.jit(lambda x, w: jax.jvp(jax.grad(loss, argnums=(0, 1)), (x, w), (jnp.cos(x), jnp.sin(w)))[1])
      ggw = jax.jit(jax.grad(lambda x, w: jnp.sum(jax.grad(loss, argnums=1)(x, w) ** 2), argnums=(0, 1)))
      fwd = jax.jit(lambda x, w: jax.jvp(loss, (x, w), (x, w))[1])
      per_example = jax.jit(jax.vmap(jax.grad(lambda x, w: loss(x[None], w), argnums=1), in_axes=(0, None)))
      return (*hvp(x, w), *ggw(x, w), fwd(x, w), per_example(x, w))

  ref = repr((kshape, kw))  # XLA's answer, shared by the variants
  if ref not in _XLA_DERIVATIVES:
    _XLA_DERIVATIVES[ref] = derivatives(XLA)
  _close(derivatives(cfg), _XLA_DERIVATIVES[ref], tol=1e-4)


def _narrow_grid():
  """Convolutions with few channels (the "narrow" kernels' domain): every input and output
  channel count 1..17, every kernel size 1..7, strides 1 and 2, dilations, every padding form
  and batch sizes 1..257, combined in 17 cases (not a full product: each value appears)."""
  batches = (1, 2, 3, 5, 8, 31, 64, 129, 257)
  pads = (0, 1, "SAME", "VALID", ((2, 0), (1, 3)), "FULL", 3)
  cases = []
  for i in range(17):
    k = 1 + i % 7
    stride = (1 + i % 2, 1 + (i // 2) % 2)
    cases.append(dict(x=(batches[i % len(batches)], 7 + i % 5, 6 + (3 * i) % 11, 1 + i), k=(k, max(1, k - i % 3),
                      1 + i, 1 + (5 * i) % 17), stride=stride, padding=pads[i % len(pads)],
                      dilation=(1 + (i % 5 == 4), 1)))
  return cases


_NARROW_GRID = _narrow_grid()


@functools.lru_cache(maxsize=None)
def _narrow_case(i: int):
  """Inputs, the convolution and XLA's forward and gradients for grid case i (shared by the
  variants)."""
  case = _NARROW_GRID[i]
  kx, kw_ = jax.random.split(jax.random.key(case["k"][-1] + 100 * case["k"][-2]))
  x, w = normal(kx, case["x"]), normal(kw_, case["k"])
  kw = {k: v for k, v in case.items() if k not in ("x", "k")}
  f = lambda x, w: conv(x, w, **kw)
  return x, w, f, _vjp_all(f, x, w, XLA)


@needs_native
@pytest.mark.parametrize("i", range(len(_NARROW_GRID)),
                         ids=[f"x{c['x']}k{c['k']}" for c in _NARROW_GRID])
def test_narrow_every_pass_matches_xla(i, isa):
  x, w, f, want = _narrow_case(i)
  assert "algorithm=narrow" in _vjp_jaxpr(f, x, w, NARROW)
  _close(_vjp_all(f, x, w, NARROW), want)


@needs_native
def test_auto_runs_lenet_on_the_narrow_kernels():
  plan = lambda xs, ks: _conv_grad.auto_plan(xs, ks, (1, 1), 1, "cpu", native=True)
  # 5x5 1->6 (all three passes) and 6->16 (input and kernel gradients); 3->64 stems keep theirs.
  assert plan((128, 28, 28, 1), (5, 5, 1, 6)) == {"forward": "narrow", "input_grad": "narrow", "kernel_grad": "narrow"}
  assert plan((128, 14, 14, 6), (5, 5, 6, 16)) == {"forward": "native", "input_grad": "narrow",
                                                   "kernel_grad": "narrow"}
  assert plan((128, 32, 32, 3), (3, 3, 3, 64))["kernel_grad"] == "winograd"


def test_portable_variant_keeps_only_the_passes_it_wins():
  """The portable kernels (4 lanes, no FMA) keep Winograd, narrow and depthwise layers; the
  direct passes and the 512-channel Winograd kernel gradient take the plan without them."""
  plan = lambda xs, ks, stride, isa: _conv_grad.auto_plan(xs, ks, stride, 1, "cpu", native=True, isa=isa)
  everything = {"forward": "native", "input_grad": "native", "kernel_grad": "native"}
  assert plan((128, 32, 32, 64), (3, 3, 64, 128), (2, 2), "avx2") == everything
  without = {"forward": "xla", "input_grad": "xla", "kernel_grad": "im2col"}
  assert plan((128, 32, 32, 64), (3, 3, 64, 128), (2, 2), "portable") == without
  assert plan((128, 8, 8, 256), (1, 1, 256, 512), (2, 2), "portable") == without
  assert plan((128, 8, 8, 256), (3, 3, 256, 256), (1, 1), "portable") == {p: "winograd" for p in everything}
  assert plan((128, 4, 4, 512), (3, 3, 512, 512), (1, 1), "portable") == {   # 16 positions: XLA's gradient
      "forward": "winograd", "input_grad": "winograd", "kernel_grad": "xla"}
  assert plan((128, 4, 4, 512), (3, 3, 512, 512), (1, 1), "avx512")["kernel_grad"] == "winograd"
  # Narrow and depthwise layers are the same on every variant.
  for xs, ks, groups in (((128, 28, 28, 1), (5, 5, 1, 6), 1), ((64, 16, 16, 96), (3, 3, 1, 96), 96)):
    assert (_conv_grad.auto_plan(xs, ks, (1, 1), groups, "cpu", native=True, isa="portable")
            == _conv_grad.auto_plan(xs, ks, (1, 1), groups, "cpu", native=True, isa="avx512"))


@needs_native
def test_vmap_over_inputs_and_kernels(isa):
  xs = normal(jax.random.key(3), (3, 2, 6, 6, 16))
  ws = normal(jax.random.key(4), (3, 3, 3, 16, 16))
  per_example = lambda x, w: jax.grad(lambda w: jnp.sum(conv(x[None], w, padding=1) ** 2))(w)

  def run(cfg):
    with conv_config(**cfg):
      a = jax.jit(jax.vmap(lambda x: conv(x, ws[0], padding=1)))(xs)  # folded into the batch
      b = jax.jit(jax.vmap(lambda x, w: conv(x, w, padding=1)))(xs, ws)  # batched kernels
      c = jax.jit(jax.vmap(per_example, in_axes=(0, None)))(xs[:, 0], ws[0])  # per-example gradients
      return a, b, c

  with conv_config(**NATIVE):
    assert "jaxconv_native_conv" in str(jax.make_jaxpr(jax.vmap(per_example, in_axes=(0, None)))(xs[:, 0], ws[0]))
  _close(run(NATIVE), run(XLA), tol=1e-5)


@functools.lru_cache(maxsize=None)
def _resnet_case():
  """A small ResNet's loss, parameters and XLA's gradient (shared by the variants)."""
  from jaxconv.models import create_model

  # SiLU, not ReLU: the native kernels sum in another order than XLA, and a ReLU turns that
  # float32 rounding of a pre-activation within 1e-7 of zero into a different gradient, which
  # batch norm over a 2x2 map then spreads (measured: 2e-2 relative in one stage-4 kernel
  # gradient, while each convolution alone agrees with XLA to 2e-6). With a smooth activation
  # both plans are within 2e-5 of float64.
  # width 16 (16-128 channels): every pass still runs natively (the portable variant: its
  # Winograd layers), at a sixteenth of the cost. One block per stage: an identity shortcut and
  # three strided projections, at half the compile time of two.
  model = create_model("resnet18", num_classes=10, cifar_stem=True, act=jax.nn.silu, width=16).clone(
      stage_sizes=(1, 1, 1, 1))
  x = normal(jax.random.key(5), (4, 16, 16, 3))
  variables = jax.jit(lambda k: model.init(k, x, train=False))(jax.random.key(6))

  def loss(params):
    logits, _ = model.apply({**variables, "params": params}, x, train=True, mutable=["batch_stats"])
    return jnp.mean(jax.nn.log_softmax(logits)[:, 0])

  with conv_config(**XLA):
    want = jax.jit(jax.grad(loss))(variables["params"])
  return loss, variables["params"], want


@needs_native
def test_resnet_block_train_step_matches_xla(isa):
  loss, params, want = _resnet_case()
  with conv_config():
    spec = _conv_grad.make_spec((4, 16, 16, 64), (3, 3, 64, 64), (1, 1), ((1, 1),) * 2, (1, 1), 1, None, None)
  assert (spec.forward, spec.input_grad, spec.kernel_grad) == ("winograd",) * 3  # what auto picks here (64 tiles)
  got = jax.jit(jax.grad(loss))(params)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-4 * (max_abs(b) or 1), rtol=0)


@needs_native
@pytest.mark.parametrize("algorithm,x_shape,kshape,kw", [
    ("direct", (32, 16, 16, 24), (3, 3, 24, 32), dict(stride=2, padding=1)),  # 16 chunks of pixels
    ("winograd", (32, 16, 16, 24), (3, 3, 24, 32), dict(padding=1)),  # 512 tiles: 6 chunks
    ("depthwise", (32, 16, 16, 40), (3, 3, 1, 40), dict(padding=1, groups=40)),
    ("narrow", (64, 14, 14, 6), (5, 5, 6, 6), dict(padding=2)),  # 64 images in groups
])
def test_same_inputs_give_the_same_bits(algorithm, x_shape, kshape, kw, isa):
  """The kernel gradients reduce over threads: the same jitted gradient, called 20 times on the
  same inputs, gives the same bits (the work is split statically and partial sums are added in
  a fixed order, whatever the threads' timing)."""
  x = normal(jax.random.key(7), x_shape)
  w = normal(jax.random.key(8), kshape)
  with conv_config(**{"winograd": WINOGRAD, "narrow": NARROW}.get(algorithm, NATIVE)):
    f = jax.jit(jax.grad(lambda x, w: jnp.sum(jnp.sin(conv(x, w, **kw))), argnums=(0, 1)))
    assert f"algorithm={algorithm}" in str(jax.make_jaxpr(f)(x, w))
    first = [np.asarray(a) for a in f(x, w)]
    for _ in range(19):
      again = f(x, w)
      for a, b in zip(first, again):
        np.testing.assert_array_equal(a, np.asarray(b))


@needs_native
def test_scratch_cap_bounds_the_memory_kept_between_calls(isa):
  """Under a 1 MiB cap the kernels keep at most 1 MiB of scratch between calls (a thread gives
  its buffer back at its next call after the change) and still compute the same gradient (up to
  the order of the partial sums); under the default cap they keep their buffers again. The
  limits are read at run time: no recompilation."""
  x = normal(jax.random.key(9), (32, 16, 16, 64))
  w = normal(jax.random.key(10), (3, 3, 64, 64))
  with conv_config(**WINOGRAD):
    f = jax.jit(jax.grad(lambda x, w: jnp.sum(jnp.sin(conv(x, w, padding=1))), argnums=(0, 1)))
    want = jax.block_until_ready(f(x, w))
    assert _native._build.scratch_kept_bytes(isa) > 1 << 20
    before = _native._build.limits()
    try:
      _native._build.set_limits(scratch_mb=1)
      got = jax.block_until_ready(f(x, w))
      assert 0 < _native._build.scratch_kept_bytes(isa) <= 1 << 20
    finally:
      _native._build.set_limits(**before)
    jax.block_until_ready(f(x, w))
    assert _native._build.scratch_kept_bytes(isa) > 1 << 20
  _close(got, want, tol=1e-5)


# Depthwise (multiplier 1): kernel sizes 1 to 7, strides, dilations, asymmetric and wide pads,
# channel counts around the 16-lane vectors and 64-channel blocks, 1-D, and a batch of several
# chunks of pixels (shared by the threads).
DEPTHWISE_GRID = [
    dict(x=(2, 9, 7, 5), k=(3, 3, 1, 5), stride=1, padding=1),
    dict(x=(2, 11, 10, 70), k=(3, 3, 1, 70), stride=2, padding=((1, 0), (0, 1))),
    dict(x=(3, 10, 6, 130), k=(5, 5, 1, 130), stride=(1, 2), padding=((2, 2), (3, 1)), dilation=(2, 1)),
    dict(x=(4, 12, 11, 33), k=(7, 7, 1, 33), stride=(3, 2), padding=3),
    dict(x=(1, 6, 6, 16), k=(1, 1, 1, 16), stride=2, padding=0),
    dict(x=(2, 5, 5, 48), k=(3, 2, 1, 48), stride=1, padding="FULL"),
    dict(x=(2, 17, 24), k=(5, 1, 24), stride=1, padding=4, dilation=2),  # 1-D
    dict(x=(64, 16, 16, 40), k=(3, 3, 1, 40), stride=1, padding=1),  # 16384 pixels
]


@needs_native
@pytest.mark.parametrize("case", DEPTHWISE_GRID, ids=lambda c: f"x{c['x']}k{c['k']}")
def test_depthwise_every_pass_matches_xla(case, isa):
  kx, kw_ = jax.random.split(jax.random.key(case["x"][0] + case["k"][-1]))
  x, w = normal(kx, case["x"]), normal(kw_, case["k"])
  c = case["k"][-1]
  kw = {k: v for k, v in case.items() if k not in ("x", "k")}
  f = lambda x, w: conv(x, w, groups=c, **kw)
  nd = w.ndim - 2
  with conv_config():  # auto picks the native depthwise kernels for every pass
    spec = _conv_grad.make_spec(x.shape, w.shape, (1,) * nd, ((0, 0),) * nd, (1,) * nd, c, None, None)
    assert (spec.forward, spec.input_grad, spec.kernel_grad) == (("native",) * 3 if c >= 16 else ("im2col",) * 3)
  jaxpr = _vjp_jaxpr(f, x, w, NATIVE)
  assert jaxpr.count("algorithm=depthwise") >= 3 and "algorithm=direct" not in jaxpr
  _close(_vjp_all(f, x, w, NATIVE), _vjp_all(f, x, w, XLA))


# F(4x4, 3x3): outputs that are not multiples of 4 (partial tiles), asymmetric pads and pads wider
# than the kernel, 1 to 130 channels (partial vectors and output blocks), one tile per image, and
# batches of several chunks of 96 tiles (shared by the threads).
WINOGRAD_GRID = [
    dict(x=(2, 9, 7, 5), k=(3, 3, 5, 17), padding=1),
    dict(x=(3, 4, 4, 33), k=(3, 3, 33, 70), padding=((0, 2), (3, 1))),
    dict(x=(1, 13, 6, 130), k=(3, 3, 130, 20), padding="VALID"),
    dict(x=(2, 6, 5, 16), k=(3, 3, 16, 64), padding="FULL"),
    dict(x=(5, 3, 3, 1), k=(3, 3, 1, 1), padding=1),
    dict(x=(100, 5, 5, 8), k=(3, 3, 8, 33), padding=1),  # 400 tiles
]


@needs_native
@pytest.mark.parametrize("case", WINOGRAD_GRID, ids=lambda c: f"x{c['x']}k{c['k']}")
def test_winograd_every_pass_matches_xla(case, isa):
  kx, kw_ = jax.random.split(jax.random.key(case["x"][0] + case["k"][-1]))
  x, w = normal(kx, case["x"]), normal(kw_, case["k"])
  f = lambda x, w: conv(x, w, padding=case["padding"])
  with conv_config(**WINOGRAD):
    spec = _conv_grad.make_spec(x.shape, w.shape, (1, 1), ((1, 1),) * 2, (1, 1), 1, None, None)
    assert (spec.forward, spec.input_grad, spec.kernel_grad) == ("winograd",) * 3
  jaxpr = _vjp_jaxpr(f, x, w, WINOGRAD)
  assert jaxpr.count("algorithm=winograd") >= 3 and "algorithm=direct" not in jaxpr  # all three passes native
  _close(_vjp_all(f, x, w, WINOGRAD), _vjp_all(f, x, w, XLA), tol=2e-5)


def test_algorithm_is_checked():
  x, w = jnp.ones((1, 5, 5, 2)), jnp.ones((3, 3, 2, 2))
  with pytest.raises(ValueError, match=r"algorithm must be one of \('direct', 'winograd', 'depthwise', 'narrow'\); got 'fft'"):
    _native.conv(x, w, (1, 1), ((1, 1), (1, 1)), (1, 1), "fft")
  with pytest.raises(ValueError, match=r"needs a 3x3 kernel, stride 1 and no dilation; got kernel \(3, 3\), stride \(2, 2\)"):
    _native.conv(x, w, (2, 2), ((1, 1), (1, 1)), (1, 1), "winograd")
  with pytest.raises(ValueError, match=r"got kernel \(5, 5\), stride \(1, 1\), dilation \(1, 1\)"):
    _native.kernel_grad(x, jnp.ones((1, 1, 1, 2)), (5, 5), (1, 1), ((0, 0), (0, 0)), (1, 1), "winograd")


def test_native_applies_only_to_dense_or_depthwise_float32_1d_2d():
  assert _conv_grad.native_applies((3, 3, 8, 8), 1, jnp.float32)
  assert _conv_grad.native_applies((5, 8, 8), 1, jnp.float32)
  assert _conv_grad.native_applies((3, 3, 1, 8), 8, jnp.float32)  # depthwise
  assert _conv_grad.native_applies((5, 1, 8), 8, jnp.float32)  # depthwise, 1-D
  assert not _conv_grad.native_applies((3, 3, 3, 8, 8), 1, jnp.float32)  # 3-D
  assert not _conv_grad.native_applies((3, 3, 4, 8), 2, jnp.float32)  # groups
  assert not _conv_grad.native_applies((3, 3, 1, 16), 8, jnp.float32)  # depthwise with multiplier 2
  assert not _conv_grad.native_applies((3, 3, 8, 8), 1, jnp.bfloat16)
  assert not _conv_grad.native_applies((3, 3, 8, 8), 1, jnp.float64)
