"""Using jaxconv models from flax.nnx through flax.nnx.bridge (jaxconv.nn.to_nnx)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jaxconv import models
from jaxconv.nn import Conv, to_nnx
from helpers import normal


def test_wrapped_model_matches_linen_and_trains_under_nnx_jit():
  model = models.ResNet(stage_sizes=(1,), width=4, cifar_stem=True, num_classes=3)
  x = normal(jax.random.key(0), (4, 8, 8, 3))
  y = jnp.array([0, 1, 2, 0])
  wrapped = to_nnx(model, x, rngs=nnx.Rngs(params=0, dropout=1))

  # the same variables as Linen's, and the same function of them
  params = nnx.to_pure_dict(nnx.state(wrapped, nnx.Param))
  stats = nnx.to_pure_dict(nnx.state(wrapped, nnx.BatchStat))
  shapes = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0), x)
  assert jax.tree.map(jnp.shape, shapes) == jax.tree.map(jnp.shape, {"params": params, "batch_stats": stats})
  got = nnx.jit(lambda m, x: m(x, train=False))(wrapped, x)
  want = jax.jit(functools.partial(model.apply, train=False))({"params": params, "batch_stats": stats}, x)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)

  opt = nnx.Optimizer(wrapped, optax.sgd(0.1), wrt=nnx.Param)

  @nnx.jit
  def step(m, opt, x, y):
    def loss_fn(m):
      logits = m(x, train=True, mutable=["batch_stats"])
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    loss, grads = nnx.value_and_grad(loss_fn)(m)
    opt.update(m, grads)
    return loss

  losses = [float(step(wrapped, opt, x, y)) for _ in range(3)]
  assert all(np.isfinite(losses)) and losses[-1] < losses[0]
  after_p = nnx.to_pure_dict(nnx.state(wrapped, nnx.Param))
  after_s = nnx.to_pure_dict(nnx.state(wrapped, nnx.BatchStat))
  # every parameter moved, and the running statistics were written back into the module
  changed = lambda a, b: bool(np.any(np.asarray(a) != np.asarray(b)))  # noqa: E731
  assert all(jax.tree.leaves(jax.tree.map(changed, params, after_p)))
  assert all(jax.tree.leaves(jax.tree.map(changed, stats, after_s)))


def test_dropout_draws_from_the_nnx_stream():
  net = models.DenseNet(block_config=(1,), growth_rate=2, init_features=4, cifar_stem=True, drop_rate=0.5, num_classes=3)
  x = normal(jax.random.key(0), (2, 4, 4, 3))
  wrapped = to_nnx(net, x, rngs=3)
  f = nnx.jit(lambda m, x: m(x, train=True, mutable=["batch_stats"]))
  a, b = f(wrapped, x), f(wrapped, x)
  assert not np.allclose(a, b)                              # a fresh dropout key per call


def test_bad_rngs():
  with pytest.raises(TypeError, match="rngs must be an int seed or an nnx.Rngs"):
    to_nnx(Conv(2, 3), jnp.ones((1, 5, 5, 1)), rngs="seed")
