"""The per-pass convolution formulations (jaxconv.ops._conv_grad) against XLA's own gradients.

Reference: ``lax.conv_general_dilated`` under ``jax.vjp`` (what ``conv_config(forward="xla",
backward="xla")`` runs), plus a NumPy loop for the kernel gradient and numerical derivatives
(``check_grads``) to second order in both modes.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from jax import lax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from jax.test_util import check_grads

from jaxconv.ops import _conv_grad, _native, conv, conv_config, conv_transpose
from helpers import max_abs, normal

FORMS = ("xla", "taps", "im2col", "winograd", "native")  # winograd/native: where they apply, else auto's choice
XLA = dict(forward="xla", backward="xla")


def _vjp_all(f, x, w, cfg):
  """(y, dx, dw) of f at (x, w) for a fixed cotangent, traced under ``conv_config(**cfg)``."""

  def run(x, w):
    y, vjp = jax.vjp(f, x, w)
    g = jnp.cos(jnp.arange(y.size, dtype=jnp.float32).reshape(y.shape)).astype(y.dtype)
    return (y, *vjp(g))

  with conv_config(**cfg):
    return jax.jit(run)(x, w)


def _assert_close(got, want, tol=2e-4):
  for a, b in zip(got, want):
    assert a.shape == b.shape and a.dtype == b.dtype
    scale = max(max_abs(b), 1.0)
    np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32), atol=tol * scale, rtol=tol)


@st.composite
def conv_cases(draw):
  nd = draw(st.sampled_from([1, 2]))
  kind = draw(st.sampled_from(["dense", "grouped", "depthwise"]))
  if kind == "dense":
    groups, cg = 1, draw(st.integers(1, 3))
  elif kind == "grouped":
    groups, cg = 2, draw(st.integers(1, 2))
  else:
    groups, cg = draw(st.integers(2, 3)), 1
  c_out = groups * draw(st.integers(1, 2))
  ksize = tuple(draw(st.integers(1, 3)) for _ in range(nd))
  spatial = tuple(draw(st.integers(3, 7)) for _ in range(nd))
  stride = tuple(draw(st.integers(1, 2)) for _ in range(nd))
  dilation = tuple(draw(st.integers(1, 2)) for _ in range(nd))
  padding = draw(
      st.one_of(
          st.sampled_from(["VALID", "SAME", "FULL", "CAUSAL"]),
          st.integers(0, 2),
          st.tuples(*[st.tuples(st.integers(0, 2), st.integers(0, 2)) for _ in range(nd)]),
      )
  )
  mode = draw(st.sampled_from(["zeros", "zeros", "reflect", "replicate", "circular"]))
  return dict(
      n=draw(st.integers(1, 3)),
      spatial=spatial,
      c_in=groups * cg,
      kernel=ksize + (cg, c_out),
      kw=dict(stride=stride, dilation=dilation, padding=padding, padding_mode=mode, groups=groups,
              flip=draw(st.booleans())),
      cfg=dict(
          forward=draw(st.sampled_from(FORMS)),
          input_grad=draw(st.sampled_from(FORMS)),
          kernel_grad=draw(st.sampled_from(FORMS)),
          chunk_bytes=draw(st.sampled_from([0, 1])),  # 1: one image per chunk (the scan path)
      ),
  )


def _valid(case) -> bool:
  from jaxconv.ops import _args

  nd = len(case["spatial"])
  kw = case["kw"]
  window = _args.effective_kernel_size(case["kernel"][:nd], kw["dilation"])
  pads = _args.canonicalize_padding(kw["padding"], case["spatial"], window, kw["stride"])
  if kw["padding_mode"] == "reflect" and any(max(p) >= n for p, n in zip(pads, case["spatial"])):
    return False
  return all(n + lo + hi >= w for n, (lo, hi), w in zip(case["spatial"], pads, window))


@settings(max_examples=14)
@given(conv_cases())
def test_every_formulation_matches_xla_gradients(case):
  assume(_valid(case))
  kx, kw_ = jax.random.split(jax.random.key(0))
  x = normal(kx, (case["n"], *case["spatial"], case["c_in"]))
  w = normal(kw_, case["kernel"])
  f = lambda x, w: conv(x, w, **case["kw"])
  _assert_close(_vjp_all(f, x, w, case["cfg"]), _vjp_all(f, x, w, XLA))


@pytest.mark.parametrize("form", ["taps", "im2col"])
def test_matches_lax_conv_under_vjp_3d_and_unbatched(form):
  x = normal(jax.random.key(1), (2, 4, 5, 4, 4))
  w = normal(jax.random.key(2), (2, 3, 2, 2, 6))

  def stock(x, w):
    dn = ("NDHWC", "DHWIO", "NDHWC")
    return lax.conv_general_dilated(x, w, (1, 2, 1), ((1, 0), (1, 1), (0, 1)), dimension_numbers=dn,
                                    feature_group_count=2)

  ours = lambda x, w: conv(x, w, stride=(1, 2, 1), padding=((1, 0), (1, 1), (0, 1)), groups=2)
  want = _vjp_all(stock, x, w, {})
  _assert_close(_vjp_all(ours, x, w, dict(forward=form, backward=form, chunk_bytes=1)), want)
  # Unbatched input [*spatial, C] goes through the same path.
  y1 = conv(x[0], w, stride=(1, 2, 1), padding=((1, 0), (1, 1), (0, 1)), groups=2)
  with conv_config(forward=form):
    y2 = conv(x[0], w, stride=(1, 2, 1), padding=((1, 0), (1, 1), (0, 1)), groups=2)
  _assert_close([y2], [y1])


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("stride,dilation,groups", [(1, 1, 1), (2, 1, 1), (1, 2, 2), (2, 1, 6)])
def test_kernel_gradient_against_numpy_loop(form, stride, dilation, groups):
  # With an all-ones output gradient, dL/dw[j, c, o] = sum over n, i of x[n, i*s + j*d, g(o)*C_g + c].
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, 7, 6, 6)).astype(np.float32)
  c_out = 12 if groups == 6 else 4  # groups=6: depthwise with multiplier 2
  w = rng.normal(size=(3, 2, 6 // groups, c_out)).astype(np.float32)
  f = lambda w: conv(x, w, stride=stride, dilation=dilation, groups=groups).sum()
  with conv_config(kernel_grad=form, chunk_bytes=1):
    got = np.asarray(jax.grad(f)(jnp.asarray(w)))
  ho = (7 - 2 * dilation - 1) // stride + 1
  wo = (6 - dilation - 1) // stride + 1
  cg, og = 6 // groups, c_out // groups
  want = np.zeros_like(w)
  for j0, j1, c, o in itertools.product(range(3), range(2), range(cg), range(c_out)):
    ch = (o // og) * cg + c
    for i0, i1 in itertools.product(range(ho), range(wo)):
      want[j0, j1, c, o] += x[:, i0 * stride + j0 * dilation, i1 * stride + j1 * dilation, ch].sum()
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "form,kw,kshape,chunk",
    [
        ("taps", dict(stride=2, padding=1, padding_mode="reflect"), (3, 2, 2, 3), 1),
        ("im2col", dict(padding="SAME", dilation=(1, 2), groups=2), (2, 2, 1, 4), 0),  # depthwise, m=2
        ("winograd", dict(padding=1, padding_mode="replicate"), (3, 3, 2, 3), 0),
        ("native", dict(stride=(2, 1), padding=((1, 0), (2, 1)), dilation=(1, 2)), (3, 2, 2, 3), 0),
        ("native", dict(padding=1, padding_mode="circular"), (3, 3, 2, 17), 0),
    ],
)
def test_check_grads_second_order_both_modes(form, kw, kshape, chunk):
  # Winograd's float32 rounding (2e-6 relative), divided by the finite-difference step, is
  # beyond float32 check_grads' tolerance: it is checked in float64 (where it is exact to 1e-14).
  with jax.enable_x64(form == "winograd"):
    dtype = jnp.float64 if form == "winograd" else jnp.float32
    x = normal(jax.random.key(3), (2, 4, 5, 2), dtype)
    w = normal(jax.random.key(4), kshape, dtype)
    with conv_config(forward=form, backward=form, chunk_bytes=chunk):
      f = jax.jit(lambda x, w: conv(x, w, **kw))
      check_grads(f, (x, w), order=2, modes=("fwd", "rev"), atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("spatial,padding,mode", [
    ((4, 4), 1, "zeros"), ((7, 10), "VALID", "zeros"), ((9, 5), ((2, 0), (1, 3)), "zeros"),
    ((3, 3), "SAME", "reflect"), ((6, 5), 1, "circular")])
@pytest.mark.parametrize("native", [False, True], ids=["xla", "native"])
def test_winograd_matches_xla_on_its_shapes(spatial, padding, mode, native):
  # F(4x4, 3x3) tiles: outputs that are not a multiple of 4, anchors/asymmetric pads, border modes,
  # one image per chunk and the whole batch at once, every pass; in float32 on the native
  # kernels where they are built, and as the XLA formulation.
  if native and not (_native.available() and jax.default_backend() == "cpu"):
    pytest.skip(f"native kernels: {_native.status().reason}")
  kx, kw_ = jax.random.split(jax.random.key(hash((spatial, str(padding), mode)) % 1000))
  x = normal(kx, (3, *spatial, 5))
  w = normal(kw_, (3, 3, 5, 4))
  f = lambda x, w: conv(x, w, padding=padding, padding_mode=mode)
  want = _vjp_all(f, x, w, XLA)
  wino = dict(forward="winograd", backward="winograd", native=native)
  with conv_config(**wino):
    assert ("jaxconv_native_conv" in str(jax.make_jaxpr(lambda x, w: jax.vjp(f, x, w)[1](f(x, w)))(x, w))) == native
  for chunk in (0, 1) if spatial == (7, 10) and not native else (1,):  # 1: one image per chunk (the scan path)
    _assert_close(_vjp_all(f, x, w, dict(**wino, chunk_bytes=chunk)), want)


def test_winograd_float64_is_exact_to_rounding_and_kernel_gradient_matches_numpy_loop():
  with jax.enable_x64():
    rng = np.random.default_rng(1)
    x, w = rng.normal(size=(2, 9, 6, 3)), rng.normal(size=(3, 3, 3, 2))
    g = rng.normal(size=(2, 9, 6, 2))
    with conv_config(forward="winograd", kernel_grad="winograd", chunk_bytes=1):
      y, vjp = jax.vjp(lambda w: conv(jnp.asarray(x), w, padding=1), jnp.asarray(w))
      dw = np.asarray(vjp(jnp.asarray(g))[0])
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    want_y = np.einsum("nhwijc,ijco->nhwo", np.stack([np.stack([xp[:, i:i + 9, j:j + 6] for j in range(3)], 3)
                                                       for i in range(3)], 3), w)
    want_dw = np.zeros_like(w)
    for i, j in itertools.product(range(3), range(3)):
      want_dw[i, j] = np.einsum("nhwc,nhwo->co", xp[:, i:i + 9, j:j + 6], g)
    np.testing.assert_allclose(np.asarray(y), want_y, rtol=1e-11, atol=1e-11)
    np.testing.assert_allclose(dw, want_dw, rtol=1e-11, atol=1e-11)


def test_winograd_only_where_it_applies():
  names = ("x_shape", "kernel_shape", "stride", "pads", "dilation", "groups", "precision", "preferred_element_type")
  base = dict(zip(names, ((8, 16, 16, 16), (3, 3, 16, 16), (1, 1), ((1, 1), (1, 1)), (1, 1), 1, None, None)))
  passes = lambda s: (s.forward, s.input_grad, s.kernel_grad)
  with conv_config(forward="winograd", backward="winograd"):
    assert passes(_conv_grad.make_spec(**base)) == ("winograd",) * 3
    # Where it does not apply, "winograd" means what auto picks for that convolution.
    for changed in (dict(stride=(2, 2)), dict(kernel_shape=(1, 1, 16, 16)),
                    dict(kernel_shape=(3, 3, 8, 16), groups=2), dict(dilation=(2, 1)), dict(dtype=jnp.bfloat16)):
      a = {**base, **changed}
      auto = _conv_grad.auto_plan(a["x_shape"], a["kernel_shape"], a["stride"], a["groups"], jax.default_backend(),
                                  a["dilation"], a.get("dtype"))
      assert passes(_conv_grad.make_spec(**a)) == (auto["forward"], auto["input_grad"], auto["kernel_grad"]), changed
  assert _conv_grad.auto_plan(base["x_shape"], base["kernel_shape"], (1, 1), 1, "cpu",
                              native=False)["kernel_grad"] == "winograd"
  with conv_config():  # auto, on CPU: another accumulation type (float64 from float32) is not winograd
    want = "im2col" if jax.default_backend() == "cpu" else "xla"
    assert _conv_grad.make_spec(**{**base, "preferred_element_type": jnp.float64}).kernel_grad == want


# native_forms: the kernel_grad settings under which the native kernels run it (where built).
@pytest.mark.parametrize("x_shape,k_shape,kw,native_forms", [
    ((2, 5, 6, 4), (4, 4, 3, 4), dict(stride=2, padding=1), ("native",)),           # the upsampling 4x4/2
    ((2, 4, 5, 4), (3, 3, 3, 4), dict(stride=2, padding=1, output_padding=1), ("native",)),
    ((2, 3, 4, 6), (3, 2, 2, 6), dict(stride=(3, 1), padding="SAME", groups=2), ()),  # grouped: not native
    ((1, 5, 5, 4), (3, 3, 2, 4), dict(stride=1, padding=((2, 0), (1, 1)), dilation=2), ("native",)),
    ((3, 7, 4), (3, 5, 4), dict(stride=2, padding=0), ("native",)),                   # 1-D
    ((2, 4, 5, 8), (3, 3, 1, 8), dict(stride=2, padding=1, groups=8), ("native",)),   # depthwise
    ((2, 6, 5, 4), (3, 3, 3, 4), dict(stride=1, padding=1), ("native", "winograd")),  # winograd's shape
])
def test_conv_transpose_kernel_gradient_by_the_convolution_formulation(x_shape, k_shape, kw, native_forms):
  # conv_transpose's own rule: forward and input tangent by XLA, kernel tangent by the transposed
  # im2col convolution; or, where the native kernels run, the native input gradient and its
  # derivatives. Every pass must equal XLA's own derivative of its transposed convolution.
  kx, kw_ = jax.random.split(jax.random.key(len(x_shape) * 7 + k_shape[0]))
  x = normal(kx, x_shape)
  w = normal(kw_, k_shape)
  f = lambda x, w: conv_transpose(x, w, **kw)
  want = _vjp_all(f, x, w, XLA)
  for chunk in (0, 1):
    got = _vjp_all(f, x, w, dict(kernel_grad="im2col", chunk_bytes=chunk))
    _assert_close(got, want)
  with conv_config(kernel_grad="im2col"):
    assert "custom_jvp" in str(jax.make_jaxpr(f)(x, w))
  with conv_config(**XLA):
    assert "custom_jvp" not in str(jax.make_jaxpr(f)(x, w))
  native = _native.available() and jax.default_backend() == "cpu"
  for form in ("native", "winograd"):
    with conv_config(kernel_grad=form):
      jaxpr = str(jax.make_jaxpr(lambda x, w: jax.vjp(f, x, w)[1](f(x, w)))(x, w))
    assert ("jaxconv_native_conv" in jaxpr) == (native and form in native_forms), form
    _assert_close(_vjp_all(f, x, w, dict(kernel_grad=form)), want)


def test_conv_transpose_rule_second_order_both_modes():
  with jax.enable_x64():
    x = normal(jax.random.key(12), (2, 3, 4, 3), jnp.float64)
    w = normal(jax.random.key(13), (3, 3, 2, 3), jnp.float64)
    with conv_config(kernel_grad="im2col", chunk_bytes=1):
      f = jax.jit(lambda x, w: conv_transpose(x, w, stride=2, padding=1, output_padding=1))
      check_grads(f, (x, w), order=2, modes=("fwd", "rev"), atol=1e-6, rtol=1e-6)
  # The native path (float32 only; elsewhere this is the im2col rule again). Bilinear, so a large
  # finite-difference step is exact up to rounding.
  x, w = x.astype(jnp.float32), w.astype(jnp.float32)
  with conv_config(kernel_grad="native"):
    f = jax.jit(lambda x, w: conv_transpose(x, w, stride=2, padding=1, output_padding=1))
    check_grads(f, (x, w), order=2, modes=("fwd", "rev"), atol=2e-2, rtol=2e-2, eps=1e-2)


def test_grad_of_grad_and_hessian_match_xla():
  x = normal(jax.random.key(5), (2, 5, 5, 2))
  w = normal(jax.random.key(6), (3, 3, 2, 2))

  def both():
    loss = lambda w: jnp.sum(jnp.tanh(conv(x, w, stride=2, padding=1)) ** 2)
    gg = jax.grad(lambda w: jnp.sum(jax.grad(loss)(w) ** 2))
    return jax.jit(lambda w: (gg(w), jax.hessian(loss)(w)))

  with conv_config(**XLA):
    want = both()(w)
  for form in ("taps", "winograd"):
    with conv_config(forward=form, backward=form):
      got = both()(w)
    _assert_close(got, want, tol=1e-3)


def test_vmap_over_kernels_and_inputs():
  x = normal(jax.random.key(7), (3, 2, 6, 6, 4))  # a vmapped axis of 3 batches
  w = normal(jax.random.key(8), (3, 3, 3, 4, 5))  # and of 3 kernels
  loss = lambda x, w: jnp.sum(jnp.sin(conv(x, w, padding="SAME", stride=(1, 2))))
  grads = jax.vmap(jax.grad(loss, argnums=(0, 1)))
  with conv_config(**XLA):
    want = grads(x, w)
  with conv_config(forward="im2col", backward="taps", chunk_bytes=1):
    got = jax.jit(grads)(x, w)
  _assert_close(got, want)


@pytest.mark.parametrize("form", ["taps", "im2col"])
def test_mixed_precision_bf16_with_float32_accumulation(form):
  x = normal(jax.random.key(9), (2, 8, 8, 4)).astype(jnp.bfloat16)
  w = normal(jax.random.key(10), (3, 3, 4, 8), scale=0.3).astype(jnp.bfloat16)
  f = lambda x, w: conv(x, w, padding=1, preferred_element_type=jnp.float32)
  want = _vjp_all(f, x, w, XLA)
  got = _vjp_all(f, x, w, dict(forward=form, backward=form))
  assert got[0].dtype == jnp.float32 and got[1].dtype == got[2].dtype == jnp.bfloat16
  _assert_close(got, want, tol=2e-2)
  # bf16 in, bf16 out (no preferred type): the sum over taps still accumulates in float32.
  g = lambda x, w: conv(x, w, padding=1)
  _assert_close(_vjp_all(g, x, w, dict(forward=form, backward=form)), _vjp_all(g, x, w, XLA), tol=2e-2)


def test_sharded_data_parallel_step_equals_unsharded():
  devices = np.array(jax.devices())
  assert devices.size == 8
  mesh = Mesh(devices, ("data",))
  k1, k2, k3, k4 = jax.random.split(jax.random.key(11), 4)
  params = {
      "stem": normal(k1, (3, 3, 3, 16), scale=0.3),
      "body": normal(k2, (3, 3, 16, 16), scale=0.1),  # 16 channels, 64 tiles: winograd kernel gradient
      "down": normal(k3, (1, 1, 16, 16), scale=0.3),
  }
  x = normal(k4, (16, 8, 8, 3))

  def loss(p, x):
    h = jax.nn.relu(conv(x, p["stem"], padding="SAME"))
    h = jax.nn.relu(conv(h, p["body"], padding="SAME")) + h
    return jnp.mean(conv(h, p["down"], stride=2) ** 2)

  with conv_config(**XLA):
    want = jax.jit(jax.value_and_grad(loss))(params, x)
  repl, data = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
  with conv_config(forward="auto", backward="auto", chunk_bytes=1):  # auto on CPU: native or winograd/im2col
    step = jax.jit(jax.value_and_grad(loss), in_shardings=(repl, data), out_shardings=(repl, repl))
    body_spec = _conv_grad.make_spec((16, 8, 8, 16), (3, 3, 16, 16), (1, 1), ((1, 1),) * 2, (1, 1), 1, None, None)
    on_cpu = jax.default_backend() == "cpu"
    assert body_spec.kernel_grad == ("winograd" if on_cpu else "xla")  # native Winograd where built
    got = step(jax.device_put(params, repl), jax.device_put(x, data))
  _assert_close(jax.tree.leaves(got), jax.tree.leaves(want), tol=1e-5)


def test_config_override_selects_the_formulation():
  x, w = jnp.ones((2, 6, 6, 4)), jnp.ones((3, 3, 4, 4))
  grad = lambda: jax.grad(lambda x, w: conv(x, w).sum(), argnums=(0, 1))
  with conv_config(**XLA):
    text_xla = str(jax.make_jaxpr(grad())(x, w))
  with conv_config(forward="taps", backward="im2col"):
    text_ours = str(jax.make_jaxpr(grad())(x, w))
  assert "conv_general_dilated" in text_xla and "custom_jvp" not in text_xla
  assert "conv_general_dilated" not in text_ours and "dot_general" in text_ours
  with conv_config(backward="xla", kernel_grad="taps") as cfg:  # the finer setting wins
    assert (cfg["input_grad"], cfg["kernel_grad"]) == ("xla", "taps")
    with conv_config(forward="im2col") as inner:
      assert inner["kernel_grad"] == "taps" and inner["forward"] == "im2col"
    assert _conv_grad._current()["forward"] == cfg["forward"]  # restored on exit


def test_jitted_function_retraces_under_another_config():
  traces = []

  @jax.jit
  def f(x, w):
    traces.append(_conv_grad._current()["kernel_grad"])
    return jax.grad(lambda w: conv(x, w).sum())(w)

  x, w = jnp.ones((1, 4, 4, 2)), jnp.ones((3, 3, 2, 2))
  with conv_config(backward="xla"):
    a = f(x, w)
  with conv_config(backward="im2col"):
    b = f(x, w)
  f(x, w)
  with conv_config(backward="im2col"):
    f(x, w)  # cached: no new trace
  assert traces == ["xla", "im2col", _conv_grad._ENV_DEFAULT["kernel_grad"]]
  _assert_close([b], [a])


def test_auto_plan_rules():
  plan = _conv_grad.auto_plan
  for shapes, kernel_grad in [(((128, 32, 32, 64), (1, 1, 64, 128), (2, 2), 1), "im2col"),
                              (((128, 32, 32, 64), (3, 3, 64, 128), (2, 2), 1), "im2col"),
                              (((128, 32, 32, 64), (3, 3, 64, 64), (1, 1), 1), "winograd"),
                              (((128, 8, 8, 256), (3, 3, 256, 256), (1, 1), 1), "winograd"),
                              (((128, 32, 32, 3), (3, 3, 3, 64), (1, 1), 1), "xla"),  # stem: few channels
                              (((128, 4, 4, 512), (3, 3, 512, 512), (1, 1), 1), "xla"),  # tiny map
                              (((128, 4, 4, 512), (1, 1, 512, 512), (1, 1), 1), "im2col")]:
    assert plan(*shapes, "cpu", native=False) == {"forward": "xla", "input_grad": "xla", "kernel_grad": kernel_grad}
    for backend in ("gpu", "tpu"):
      assert set(plan(*shapes, backend, native=True).values()) == {"xla"}
    for backend in ("gpu", "tpu"):
      assert set(plan(*shapes, backend).values()) == {"xla"}
  depthwise = ((128, 16, 16, 128), (3, 3, 1, 128), (1, 1), 128)
  for native in (False, True):  # the native kernels take depthwise but not other grouped convs, nor bfloat16
    assert set(plan(*depthwise, "cpu", native=native).values()) == {"native" if native else "im2col"}
    assert set(plan((8, 16, 16, 64), (3, 3, 1, 128), (1, 1), 64, "cpu", native=native).values()) == {"im2col"}  # m=2
    assert plan((8, 16, 16, 128), (3, 3, 2, 128), (1, 1), 64, "cpu", native=native)["forward"] == "xla"  # grouped
    assert plan((8, 32, 32, 64), (3, 3, 64, 64), (1, 1), 1, "cpu", None, jnp.bfloat16,
                native)["kernel_grad"] == "im2col"
  assert set(plan(*depthwise, "gpu").values()) == {"xla"}
  assert plan((8, 32, 32, 64), (3, 3, 64, 64), (1, 1), 1, "cpu", (2, 2), native=False)["kernel_grad"] == "im2col"
  # With the native kernels: everything but the unstrided 1x1 forward/input gradient (plain
  # matmuls); the narrow kernels for the input gradient of stems and every pass of layers with
  # few outputs; Winograd for 3x3 stride-1 layers with enough 4x4 output tiles (at least 64 in
  # the batch) that are mostly inside the output.
  native = lambda *a, **k: tuple(plan(*a, "cpu", **k, native=True).values())
  assert native((128, 32, 32, 64), (3, 3, 64, 64), (1, 1), 1) == ("winograd",) * 3
  assert native((128, 4, 4, 512), (3, 3, 512, 512), (1, 1), 1) == ("winograd",) * 3  # 128 tiles
  assert native((16, 4, 4, 512), (3, 3, 512, 512), (1, 1), 1) == ("native",) * 3  # 16 tiles
  assert native((128, 2, 2, 512), (3, 3, 512, 512), (1, 1), 1) == ("native",) * 3  # a quarter of each tile
  assert native((128, 7, 7, 512), (3, 3, 512, 256), (1, 1), 1) == ("winograd",) * 3  # 49 of 64 outputs
  assert native((8, 32, 32, 64), (3, 3, 64, 64), (1, 1), 1, dilation=(2, 2)) == ("native",) * 3  # dilated too
  assert native((8, 32, 32, 64), (3, 3, 64, 128), (2, 2), 1) == ("native",) * 3
  assert native((8, 32, 32, 64), (1, 1, 64, 128), (2, 2), 1) == ("native",) * 3
  assert native((8, 32, 32, 64), (1, 1, 64, 128), (1, 1), 1) == ("xla", "xla", "native")
  assert native((8, 32, 32, 3), (3, 3, 3, 64), (1, 1), 1) == ("native", "winograd", "winograd")  # stem
  assert native((8, 32, 32, 3), (3, 3, 3, 64), (2, 2), 1) == ("native", "narrow", "native")  # strided stem
  assert native((8, 28, 28, 1), (5, 5, 1, 6), (1, 1), 1) == ("narrow",) * 3  # few outputs
  assert native((8, 14, 14, 6), (5, 5, 6, 16), (1, 1), 1) == ("native", "narrow", "narrow")  # few inputs
  assert native((8, 14, 14, 32), (3, 3, 32, 10), (1, 1), 1) == ("narrow", "native", "narrow")
  assert "narrow" not in native((8, 14, 14, 32), (3, 3, 4, 8), (1, 1), 8)  # grouped: not narrow
  assert native((8, 32, 64), (5, 64, 64), (1,), 1) == ("native",) * 3  # 1-D


def test_environment_variable_parsing():
  assert _conv_grad._parse_env("") == _conv_grad._DEFAULTS
  assert _conv_grad._decode(_conv_grad._encode(_conv_grad._DEFAULTS)) == _conv_grad._DEFAULTS
  assert _conv_grad._parse_env("taps")["kernel_grad"] == "taps"
  cfg = _conv_grad._parse_env("backward=xla, forward=im2col, chunk_bytes=0")
  assert (cfg["forward"], cfg["input_grad"], cfg["chunk_bytes"]) == ("im2col", "xla", 0)
  with pytest.raises(ValueError, match=r"JAXCONV_CONV: unknown setting 'speed'"):
    _conv_grad._parse_env("speed=fast")
  with pytest.raises(ValueError, match=r"JAXCONV_CONV must look like"):
    _conv_grad._parse_env("backward=xla,taps")


def test_config_errors_name_the_setting():
  with pytest.raises(ValueError, match=r"backward must be one of \('auto', 'xla', 'taps', 'im2col', 'winograd', 'native', 'narrow'\); got 'fast'"):
    with conv_config(backward="fast"):
      pass
  with pytest.raises(ValueError, match=r"forward must be one of .*got 3"):
    with conv_config(forward=3):
      pass
  with pytest.raises(ValueError, match=r"chunk_bytes must be a non-negative int .* got -1"):
    with conv_config(chunk_bytes=-1):
      pass


def test_chunk_size_divides_the_batch():
  assert _conv_grad._chunk_size((128, 34, 34, 64), 4, 1 << 20) == 2
  assert _conv_grad._chunk_size((6, 4, 4, 1), 4, 1 << 20) == 6
  assert _conv_grad._chunk_size((7, 100, 100, 100), 4, 1 << 20) == 1
  assert _conv_grad._chunk_size((12, 10, 10, 10), 4, 0) == 12
