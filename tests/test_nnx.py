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


def _tiny_resnet():
  return models.ResNet(stage_sizes=(1, 1), width=4, cifar_stem=True, num_classes=3)


def test_wrapped_model_matches_linen():
  model = _tiny_resnet()
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
  wrapped = to_nnx(model, x, rngs=0)
  params = nnx.state(wrapped, nnx.Param)
  stats = nnx.state(wrapped, nnx.BatchStat)
  # the same variables as Linen's init with the same params key
  linen = model.init({"params": jax.random.key(0)}, x, train=False)
  assert sum(a.size for a in jax.tree.leaves(params)) == sum(a.size for a in jax.tree.leaves(linen["params"]))
  assert sum(a.size for a in jax.tree.leaves(stats)) == sum(a.size for a in jax.tree.leaves(linen["batch_stats"]))
  variables = {"params": nnx.to_pure_dict(params), "batch_stats": nnx.to_pure_dict(stats)}
  np.testing.assert_allclose(wrapped(x, train=False), model.apply(variables, x, train=False), rtol=1e-5, atol=1e-6)


def test_train_step_under_nnx_jit():
  model = _tiny_resnet()
  x = jax.random.normal(jax.random.key(0), (4, 8, 8, 3))
  y = jnp.array([0, 1, 2, 0])
  wrapped = to_nnx(model, x, rngs=nnx.Rngs(params=0, dropout=1))
  opt = nnx.Optimizer(wrapped, optax.sgd(0.1), wrt=nnx.Param)
  before_p = jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(wrapped, nnx.Param)))
  before_s = jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(wrapped, nnx.BatchStat)))

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
  assert all(jax.tree.leaves(jax.tree.map(lambda a, b: bool(np.any(a != b)), before_p, after_p)))
  assert all(jax.tree.leaves(jax.tree.map(lambda a, b: bool(np.any(a != b)), before_s, after_s)))


def test_dropout_draws_from_the_nnx_stream():
  model = models.LeNet5()
  x = jnp.ones((2, 32, 32, 1))
  wrapped = to_nnx(model, x)
  layer = to_nnx(Conv(2, 3), jnp.ones((1, 5, 5, 1)))
  assert layer.kernel.shape == (3, 3, 1, 2)
  net = models.DenseNet(block_config=(1,), growth_rate=2, init_features=4, cifar_stem=True, drop_rate=0.5, num_classes=3)
  xs = jax.random.normal(jax.random.key(0), (2, 4, 4, 3))
  dense = to_nnx(net, xs, rngs=3)
  a = dense(xs, train=True, mutable=["batch_stats"])
  b = dense(xs, train=True, mutable=["batch_stats"])
  assert not np.allclose(a, b)                              # a fresh dropout key per call
  assert wrapped(x).shape == (2, 10)


def test_bad_rngs():
  with pytest.raises(TypeError, match="rngs must be an int seed or an nnx.Rngs"):
    to_nnx(Conv(2, 3), jnp.ones((1, 5, 5, 1)), rngs="seed")
