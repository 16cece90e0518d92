"""Normalization ops against float64 NumPy references, PyTorch's conventions, and 8 fake devices."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, PartitionSpec as P
from jax.test_util import check_grads

from jaxconv import ops
from jaxconv import reference as ref


def _params(rng, c):
  f = lambda *s: rng.normal(size=s).astype(np.float32)  # noqa: E731
  return f(c), f(c), f(c), np.abs(f(c)) + 0.5  # scale, bias, running mean, running var


@pytest.mark.parametrize("shape", [(6, 4), (3, 4, 5, 3), (2, 3, 2, 4, 2)])
@pytest.mark.parametrize("unbiased", [False, True])
def test_batch_norm_train_steps_and_eval(rng, shape, unbiased):
  c = shape[-1]
  scale, bias, rm, rv = _params(rng, c)
  rm_ref, rv_ref = rm.astype(np.float64), rv.astype(np.float64)
  step = jax.jit(functools.partial(ops.batch_norm, train=True, momentum=0.8, eps=1e-3, unbiased_running_var=unbiased))
  for _ in range(3):  # running statistics over several steps
    x = (rng.normal(size=shape) * 2 + 1).astype(np.float32)
    y, rm, rv = step(x, scale, bias, rm, rv)
    y_ref, rm_ref, rv_ref = ref.batch_norm_np(x, scale, bias, rm_ref, rv_ref, train=True, momentum=0.8, eps=1e-3, unbiased_running_var=unbiased)
    np.testing.assert_allclose(y, y_ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(rm, rm_ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(rv, rv_ref, rtol=1e-5, atol=1e-6)
  x = rng.normal(size=shape).astype(np.float32)
  y, m2, v2 = ops.batch_norm(x, scale, bias, rm, rv, train=False, eps=1e-3)
  y_ref, _, _ = ref.batch_norm_np(x, scale, bias, rm, rv, train=False, eps=1e-3)
  np.testing.assert_allclose(y, y_ref, rtol=1e-4, atol=1e-5)
  assert m2 is rm and v2 is rv  # eval returns the running statistics unchanged


def test_batch_norm_closed_form(rng):
  x = rng.normal(size=(8, 3, 3, 2)).astype(np.float32) * 5 + 3
  y, _, _ = ops.batch_norm(x, None, None, None, None, train=True, eps=0.0)
  np.testing.assert_allclose(y.mean(axis=(0, 1, 2)), 0.0, atol=1e-5)
  np.testing.assert_allclose(y.std(axis=(0, 1, 2)), 1.0, rtol=1e-4)
  # momentum 1 keeps the running statistics; momentum 0 replaces them by the batch's.
  _, m, v = ops.batch_norm(x, None, None, jnp.zeros(2), jnp.ones(2), train=True, momentum=1.0)
  np.testing.assert_array_equal(m, 0.0)
  _, m, v = ops.batch_norm(x, None, None, jnp.zeros(2), jnp.ones(2), train=True, momentum=0.0)
  np.testing.assert_allclose(m, x.mean(axis=(0, 1, 2)), rtol=1e-5)
  np.testing.assert_allclose(v, x.var(axis=(0, 1, 2)), rtol=1e-4)


def test_batch_norm_matches_torch_mapping(rng):
  torch = pytest.importorskip("torch")
  bn = torch.nn.BatchNorm2d(3, momentum=0.1, eps=1e-5)
  scale, bias, _, _ = _params(rng, 3)
  with torch.no_grad():
    bn.weight.copy_(torch.from_numpy(scale))
    bn.bias.copy_(torch.from_numpy(bias))
  rm, rv = jnp.zeros(3), jnp.ones(3)
  bn.train()
  for _ in range(3):
    x = rng.normal(size=(4, 5, 5, 3)).astype(np.float32)
    want = bn(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).detach().numpy().transpose(0, 2, 3, 1)
    y, rm, rv = ops.batch_norm(x, scale, bias, rm, rv, train=True, momentum=0.9, unbiased_running_var=True)
    np.testing.assert_allclose(y, want, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(rm, bn.running_mean.numpy(), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(rv, bn.running_var.numpy(), rtol=1e-5, atol=1e-6)


def test_batch_norm_mask_equals_valid_subset(rng):
  scale, bias, rm, rv = _params(rng, 3)
  x = rng.normal(size=(7, 4, 4, 3)).astype(np.float32)
  mask = np.array([1, 0, 1, 1, 0, 0, 1], bool)
  x_bad = x.copy()
  x_bad[~mask] = 1e6  # padding rows must not leak into the statistics
  y, m, v = ops.batch_norm(x_bad, scale, bias, rm, rv, train=True, mask=mask, unbiased_running_var=True)
  y2, m2, v2 = ops.batch_norm(x[mask], scale, bias, rm, rv, train=True, unbiased_running_var=True)
  np.testing.assert_allclose(y[mask], y2, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(m, m2, rtol=1e-6)
  np.testing.assert_allclose(v, v2, rtol=1e-6)
  # Nothing valid: no NaN, running statistics untouched.
  y0, m0, v0 = ops.batch_norm(x, scale, bias, rm, rv, train=True, mask=np.zeros(7, bool))
  assert np.isfinite(np.asarray(y0)).all()
  np.testing.assert_array_equal(m0, rm)
  np.testing.assert_array_equal(v0, rv)


def _device_batches(rng, per_device=5, c=3):
  n_dev = jax.device_count()
  assert n_dev == 8, "conftest sets 8 fake CPU devices"
  x = (rng.normal(size=(n_dev, per_device, 2, 2, c)) * 3 + 2).astype(np.float32)
  counts = np.array([5, 1, 0, 3, 2, 5, 4, 1])  # unequal numbers of valid examples, one device empty
  mask = np.arange(per_device)[None, :] < counts[:, None]
  return x, mask


@pytest.mark.parametrize("mapper", ["pmap", "shard_map"])
def test_batch_norm_cross_device_unequal_masks(rng, mapper):
  scale, bias, rm, rv = _params(rng, 3)
  x, mask = _device_batches(rng)
  f = functools.partial(ops.batch_norm, train=True, axis_name="batch", momentum=0.7, unbiased_running_var=True)
  if mapper == "pmap":
    y, m, v = jax.pmap(lambda a, k: f(a, scale, bias, rm, rv, mask=k), axis_name="batch")(x, mask)
    m, v = m[0], v[0]  # replicated per device
    y = np.asarray(y)
  else:
    mesh = Mesh(np.array(jax.devices()), ("batch",))

    def body(a, k):
      return f(a[0], scale, bias, rm, rv, mask=k[0])

    sm = jax.shard_map(body, mesh=mesh, in_specs=(P("batch"), P("batch")), out_specs=(P("batch"), P(), P()))
    y, m, v = jax.jit(sm)(x, mask)
    y = np.asarray(y).reshape(x.shape)
  valid = x[mask]  # the concatenated valid examples
  y1, m1, v1 = ops.batch_norm(valid, scale, bias, rm, rv, train=True, momentum=0.7, unbiased_running_var=True)
  np.testing.assert_allclose(y[mask], y1, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(m, m1, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(v, v1, rtol=1e-5, atol=1e-6)
  # A mean of per-device means is a different (wrong) answer: the test can tell them apart.
  per_dev = np.array([x[i][mask[i]].mean(axis=(0, 1, 2)) for i in range(8) if mask[i].any()])
  assert not np.allclose(0.7 * rm + 0.3 * per_dev.mean(axis=0), m1, rtol=1e-3)


def test_batch_norm_errors(rng):
  x = jnp.ones((4, 3))
  c3 = jnp.ones(3)
  with pytest.raises(ValueError, match=r"Expected more than 1 value per channel when training, got input of shape \(1, 3\)"):
    ops.batch_norm(jnp.ones((1, 3)), c3, c3, c3, c3, train=True)
  with pytest.raises(ValueError, match=r"Expected more than 1 value per channel when training.*\(1, 1, 1, 3\)"):
    ops.batch_norm(jnp.ones((1, 1, 1, 3)), c3, c3, c3, c3, train=True)
  ops.batch_norm(jnp.ones((1, 3)), c3, c3, c3, c3, train=False)  # one example is fine in eval
  with pytest.raises(ValueError, match=r"mask must have shape \[N\] = \(4,\).*got shape \(4, 1\)"):
    ops.batch_norm(x, c3, c3, c3, c3, train=True, mask=jnp.ones((4, 1)))
  with pytest.raises(ValueError, match=r"momentum must be a number in \[0, 1\].*PyTorch's 0.1 is 0.9 here\); got 1.5"):
    ops.batch_norm(x, c3, c3, c3, c3, train=True, momentum=1.5)
  with pytest.raises(ValueError, match=r"scale must have shape \[C\] = \(3,\).*got shape \(4,\)"):
    ops.batch_norm(x, jnp.ones(4), c3, c3, c3, train=True)
  with pytest.raises(ValueError, match=r"running_mean and running_var are required when train=False"):
    ops.batch_norm(x, c3, c3, None, None, train=False)
  with pytest.raises(TypeError, match=r"train must be a bool; got 'yes'"):
    ops.batch_norm(x, c3, c3, c3, c3, train="yes")
  with pytest.raises(ValueError, match=r"mask must have shape \[N\] = \(4,\).*got shape \(3,\)"):
    ops.batch_norm(x, c3, c3, c3, c3, train=False, mask=jnp.ones(3))
  y_eval = ops.batch_norm(x, c3, c3, c3, c3, train=False, mask=jnp.array([1, 0, 1, 0]))[0]
  np.testing.assert_array_equal(y_eval, ops.batch_norm(x, c3, c3, c3, c3, train=False)[0])  # no effect in eval


def test_batch_norm_dtype(rng):
  x = jnp.asarray(rng.normal(size=(4, 3, 3, 2)), jnp.bfloat16)
  y, m, v = ops.batch_norm(x, None, None, jnp.zeros(2), jnp.ones(2), train=True)
  assert y.dtype == jnp.bfloat16 and m.dtype == jnp.float32 and v.dtype == jnp.float32


@pytest.mark.parametrize("axis", [-1, (1, 2, 3), (1, 2)])
def test_layer_norm(rng, axis):
  x = rng.normal(size=(2, 3, 4, 5)).astype(np.float32) * 2 + 1
  scale, bias, _, _ = _params(rng, 5)
  ax = (axis,) if isinstance(axis, int) else axis
  xd = x.astype(np.float64)
  want = (xd - xd.mean(axis=ax, keepdims=True)) / np.sqrt(xd.var(axis=ax, keepdims=True) + 1e-5) * scale + bias
  np.testing.assert_allclose(ops.layer_norm(x, scale, bias, axis=axis), want, rtol=1e-4, atol=1e-5)
  # (1, 2, 3) on NHWC is group norm with one group.
  if ax == (1, 2, 3):
    np.testing.assert_allclose(ops.layer_norm(x, axis=axis), ref.group_norm_np(x, 1), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("groups", [1, 2, 3, 6])
def test_group_and_instance_norm(rng, groups):
  x = rng.normal(size=(2, 3, 4, 6)).astype(np.float32)
  scale, bias, _, _ = _params(rng, 6)
  np.testing.assert_allclose(ops.group_norm(x, groups, scale, bias), ref.group_norm_np(x, groups, scale, bias), rtol=1e-4, atol=1e-5)
  if groups == 6:
    np.testing.assert_allclose(ops.instance_norm(x, scale, bias), ref.group_norm_np(x, 6, scale, bias), rtol=1e-4, atol=1e-5)


def test_group_norm_matches_torch(rng):
  torch = pytest.importorskip("torch")
  x = rng.normal(size=(2, 3, 4, 6)).astype(np.float32)
  scale, bias, _, _ = _params(rng, 6)
  t = torch.nn.functional.group_norm(torch.from_numpy(x.transpose(0, 3, 1, 2).copy()), 3, torch.from_numpy(scale), torch.from_numpy(bias))
  np.testing.assert_allclose(ops.group_norm(x, 3, scale, bias), t.numpy().transpose(0, 2, 3, 1), rtol=1e-4, atol=1e-5)
  t = torch.nn.functional.local_response_norm(torch.from_numpy(x.transpose(0, 3, 1, 2).copy()), 4, 0.3, 0.6, 2.0)
  np.testing.assert_allclose(ops.local_response_norm(x, 4, 0.3, 0.6, 2.0), t.numpy().transpose(0, 2, 3, 1), rtol=1e-5)


@pytest.mark.parametrize("size", [1, 2, 3, 5, 8])
def test_local_response_norm(rng, size):
  x = rng.normal(size=(2, 3, 3, 6)).astype(np.float32) * 3
  np.testing.assert_allclose(ops.local_response_norm(x, size, 0.5, 0.75, 1.5), ref.lrn_loop(x, size, 0.5, 0.75, 1.5), rtol=1e-5)


@pytest.mark.parametrize("mapper", ["pmap", "shard_map"])
def test_batch_norm_gradients_across_devices_with_masks(rng, mapper):
  # The hand-written derivative of the training normalisation, with per-device masks and
  # cross-device sums: the gradient of a loss over every device's valid outputs equals the
  # gradient on the concatenated valid examples (one device).
  scale, bias, rm, rv = _params(rng, 3)
  x, mask = _device_batches(rng)
  w = rng.normal(size=x.shape).astype(np.float32)
  f = functools.partial(ops.batch_norm, running_mean=rm, running_var=rv, train=True, axis_name="batch")

  def local_loss(a, g, b, k, wk):
    y = f(a, g, b, mask=k)[0]
    return jnp.sum(jnp.sin(y) * wk * k[:, None, None, None])

  if mapper == "pmap":
    grads = jax.pmap(jax.grad(local_loss, (0, 1, 2)), axis_name="batch", in_axes=(0, None, None, 0, 0))
    gx, gs, gb = grads(x, scale, bias, mask, w)
    gs, gb = gs.sum(0), gb.sum(0)  # each device holds its share of the parameter gradient
  else:
    mesh = Mesh(np.array(jax.devices()), ("batch",))

    def total_loss(a, g, b, k, wk):
      body = lambda a, k, wk: jax.lax.psum(local_loss(a[0], g, b, k[0], wk[0]), "batch")
      return jax.shard_map(body, mesh=mesh, in_specs=(P("batch"),) * 3, out_specs=P())(a, k, wk)

    gx, gs, gb = jax.jit(jax.grad(total_loss, (0, 1, 2)))(x, scale, bias, mask, w)
  one = lambda a, g, b: jnp.sum(jnp.sin(ops.batch_norm(a, g, b, rm, rv, train=True)[0]) * w[mask])
  wx, ws, wb = jax.grad(one, (0, 1, 2))(x[mask], scale, bias)
  np.testing.assert_allclose(np.asarray(gx)[mask], wx, rtol=1e-4, atol=1e-5)
  assert not np.asarray(gx)[~mask].any()  # padded examples receive no gradient
  np.testing.assert_allclose(gs, ws, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(gb, wb, rtol=1e-4, atol=1e-5)


def test_batch_norm_second_order_and_forward_mode_in_float64(rng):
  with jax.enable_x64():
    x = rng.normal(size=(4, 3, 2, 3))
    scale, bias = rng.normal(size=3), rng.normal(size=3)
    mask = np.array([1.0, 0.0, 1.0, 1.0])
    for m in (None, mask):
      f = lambda a, g, b: ops.batch_norm(a, g, b, np.zeros(3), np.ones(3), train=True, mask=m)
      check_grads(lambda a, g, b: f(a, g, b)[0], (x, scale, bias), order=2, modes=("fwd", "rev"),
                  atol=1e-6, rtol=1e-6)
      # The running statistics carry no gradient.
      assert not np.any(jax.grad(lambda a: jnp.sum(f(a, scale, bias)[1]))(x))


def test_norm_gradients(rng):
  x = rng.normal(size=(3, 2, 2, 4)).astype(np.float32)
  scale, bias, rm, rv = _params(rng, 4)
  kw = dict(order=1, modes=("rev",), atol=2e-2, rtol=2e-2, eps=1e-2)
  check_grads(jax.jit(lambda a, g, b: ops.batch_norm(a, g, b, rm, rv, train=True)[0]), (x, scale, bias), **kw)
  mask = np.array([1, 0, 1], bool)
  check_grads(jax.jit(lambda a: ops.batch_norm(a, scale, bias, rm, rv, train=True, mask=mask)[0]), (x,), **kw)
  check_grads(jax.jit(lambda a, g, b: ops.batch_norm(a, g, b, rm, rv, train=False)[0]), (x, scale, bias), **kw)
  check_grads(jax.jit(lambda a, g, b: ops.layer_norm(a, g, b)), (x, scale, bias), **kw)
  check_grads(jax.jit(lambda a, g, b: ops.group_norm(a, 2, g, b)), (x, scale, bias), **kw)
  check_grads(jax.jit(lambda a, g, b: ops.instance_norm(a, g, b)), (x, scale, bias), **kw)
  check_grads(jax.jit(lambda a: ops.local_response_norm(a, 3, 0.5, 0.75, 1.0)), (x,), **kw)


def test_other_norm_errors():
  x = jnp.ones((2, 3, 3, 4))
  with pytest.raises(ValueError, match=r"num_groups must be a positive divisor of the channels C = 4; got 3"):
    ops.group_norm(x, 3)
  with pytest.raises(ValueError, match=r"rank >= 3"):
    ops.instance_norm(jnp.ones((2, 4)))
  with pytest.raises(ValueError, match=r"axis must be an int or a non-empty sequence of ints in \[-4, 4\); got 4"):
    ops.layer_norm(x, axis=4)
  with pytest.raises(ValueError, match=r"bias must have shape \[C\] = \(4,\)"):
    ops.layer_norm(x, jnp.ones(4), jnp.ones(3))
  with pytest.raises(ValueError, match=r"size must be a positive int .*got 0"):
    ops.local_response_norm(x, 0)
  with pytest.raises(ValueError, match=r"eps must be a non-negative number; got -1"):
    ops.layer_norm(x, eps=-1)
