"""Losses against optax where it has the same loss, hand-computed values, NumPy and SciPy."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.ndimage as ndi
from jax.test_util import check_grads

from jaxconv import ops


def _logits(rng, *shape, scale=3.0):
  return (rng.normal(size=shape) * scale).astype(np.float32)


@pytest.mark.parametrize("shape", [(5, 4), (2, 3, 3, 5)])
@pytest.mark.parametrize("alpha", [0.0, 0.1])
def test_softmax_cross_entropy_vs_optax(rng, shape, alpha):
  logits = _logits(rng, *shape)
  labels = rng.integers(0, shape[-1], size=shape[:-1])
  onehot = np.eye(shape[-1], dtype=np.float32)[labels]
  want = optax.softmax_cross_entropy(logits, optax.smooth_labels(onehot, alpha))
  want_n = want.reshape(shape[0], -1).mean(axis=1)
  for lab in (labels, onehot):
    got = ops.softmax_cross_entropy(logits, lab, label_smoothing=alpha, reduction="none")
    np.testing.assert_allclose(got, want_n, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ops.softmax_cross_entropy(logits, lab, label_smoothing=alpha), want_n.mean(), rtol=1e-5)
  if alpha == 0.0:
    ref = optax.softmax_cross_entropy_with_integer_labels(logits, labels).reshape(shape[0], -1).mean(axis=1)
    np.testing.assert_allclose(ops.softmax_cross_entropy(logits, labels, reduction="none"), ref, rtol=1e-5, atol=1e-6)


def test_cross_entropy_hand_values():
  np.testing.assert_allclose(ops.softmax_cross_entropy(jnp.zeros((3, 4)), jnp.array([0, 1, 3])), np.log(4.0), rtol=1e-6)
  # logits [2, 0], label 0, smoothing 0.2 over K = 2: q = [0.9, 0.1].
  want = 0.9 * np.log1p(np.exp(-2.0)) + 0.1 * (2.0 + np.log1p(np.exp(-2.0)))
  got = ops.softmax_cross_entropy(jnp.array([[2.0, 0.0]]), jnp.array([0]), label_smoothing=0.2)
  np.testing.assert_allclose(got, want, rtol=1e-6)
  np.testing.assert_allclose(ops.sigmoid_binary_cross_entropy(jnp.zeros((2, 3)), jnp.ones((2, 3))), np.log(2.0), rtol=1e-6)
  # BCE with a soft label 0.25 at logit log(3) (p = 0.75).
  want = -(0.25 * np.log(0.75) + 0.75 * np.log(0.25))
  np.testing.assert_allclose(ops.sigmoid_binary_cross_entropy(jnp.full((1, 1), np.log(3.0)), jnp.full((1, 1), 0.25)), want, rtol=1e-6)


def test_sigmoid_bce_vs_optax(rng):
  logits = _logits(rng, 4, 3, 3, 2, scale=5.0)
  labels = rng.uniform(size=logits.shape).astype(np.float32)
  want = optax.sigmoid_binary_cross_entropy(logits, labels).reshape(4, -1).mean(axis=1)
  np.testing.assert_allclose(ops.sigmoid_binary_cross_entropy(logits, labels, reduction="none"), want, rtol=1e-5, atol=1e-6)


def test_regression_and_reductions(rng):
  pred = rng.normal(size=(4, 3, 2)).astype(np.float32)
  target = rng.normal(size=(4, 3, 2)).astype(np.float32)
  d = (pred - target).astype(np.float64)
  mse_n, l1_n = (d**2).reshape(4, -1).mean(1), np.abs(d).reshape(4, -1).mean(1)
  np.testing.assert_allclose(ops.mse_loss(pred, target, reduction="none"), mse_n, rtol=1e-5)
  np.testing.assert_allclose(ops.l1_loss(pred, target, reduction="none"), l1_n, rtol=1e-5)
  np.testing.assert_allclose(ops.mse_loss(pred, target), mse_n.mean(), rtol=1e-5)
  np.testing.assert_allclose(ops.mse_loss(pred, target, reduction="sum"), mse_n.sum(), rtol=1e-5)
  w = np.array([1.0, 0.0, 2.0, 0.5], np.float32)
  np.testing.assert_allclose(ops.l1_loss(pred, target, weights=w), (w * l1_n).sum() / w.sum(), rtol=1e-5)
  np.testing.assert_allclose(ops.l1_loss(pred, target, weights=w, reduction="sum"), (w * l1_n).sum(), rtol=1e-5)
  np.testing.assert_allclose(ops.l1_loss(pred, target, weights=w, reduction="none"), w * l1_n, rtol=1e-5)
  np.testing.assert_array_equal(ops.l1_loss(pred, target, weights=np.zeros(4)), 0.0)  # no NaN


def _overlap_np(p, t, smooth):
  axes = tuple(range(1, p.ndim - 1))
  inter = (p * t).sum(axes)
  iou = (inter + smooth) / ((p + t - p * t).sum(axes) + smooth)
  dice = (2 * inter + smooth) / (p.sum(axes) + t.sum(axes) + smooth)
  return 1 - iou.mean(-1), 1 - dice.mean(-1)


@pytest.mark.parametrize("activation", ["sigmoid", "softmax", None])
def test_iou_and_dice(rng, activation):
  logits = _logits(rng, 3, 4, 5, 3)
  if activation is None:
    logits = rng.uniform(size=logits.shape).astype(np.float32)
    p = logits.astype(np.float64)
  elif activation == "sigmoid":
    p = 1 / (1 + np.exp(-logits.astype(np.float64)))
  else:
    e = np.exp(logits.astype(np.float64))
    p = e / e.sum(-1, keepdims=True)
  t = (rng.uniform(size=logits.shape) > 0.5).astype(np.float32)
  iou, dice = _overlap_np(p, t, 0.5)
  kw = dict(activation=activation, smooth=0.5, reduction="none")
  np.testing.assert_allclose(ops.soft_iou_loss(logits, t, **kw), iou, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(ops.dice_loss(logits, t, **kw), dice, rtol=1e-5, atol=1e-6)
  idx = rng.integers(0, 3, size=logits.shape[:-1])
  onehot = np.eye(3, dtype=np.float32)[idx]
  np.testing.assert_allclose(ops.dice_loss(logits, idx, **kw), ops.dice_loss(logits, onehot, **kw), rtol=1e-6)


def test_overlap_closed_forms():
  t = np.zeros((2, 4, 4, 1), np.float32)
  t[:, 1:3, 1:3] = 1.0
  np.testing.assert_allclose(ops.soft_iou_loss(t, t, activation=None), 0.0, atol=1e-7)
  np.testing.assert_allclose(ops.dice_loss(t, t, activation=None), 0.0, atol=1e-7)
  np.testing.assert_allclose(ops.dice_loss(1 - t, t, activation=None, smooth=0.0), 1.0, atol=1e-7)
  np.testing.assert_allclose(ops.soft_iou_loss(np.zeros_like(t), np.zeros_like(t), activation=None), 0.0, atol=1e-7)  # both empty


def test_edge_aware_loss_vs_scipy(rng):
  pred = rng.normal(size=(2, 6, 7, 2)).astype(np.float32)
  target = rng.normal(size=(2, 6, 7, 2)).astype(np.float32)

  def edges(a):
    a = a.astype(np.float64)
    gx = np.stack([[ndi.sobel(a[n, :, :, c], axis=1, mode="nearest") for c in range(2)] for n in range(2)])
    gy = np.stack([[ndi.sobel(a[n, :, :, c], axis=0, mode="nearest") for c in range(2)] for n in range(2)])
    return gx, gy

  (px, py), (tx, ty) = edges(pred), edges(target)
  want = ((px - tx) ** 2 + (py - ty) ** 2).reshape(2, -1).mean(1)
  np.testing.assert_allclose(ops.edge_aware_loss(pred, target, reduction="none"), want, rtol=1e-4)
  np.testing.assert_allclose(ops.edge_aware_loss(pred, pred + 5.0), 0.0, atol=1e-4)  # edges ignore offsets
  g = jax.grad(lambda t: ops.edge_aware_loss(pred, t))(target)
  np.testing.assert_array_equal(g, 0.0)  # no gradient into the target


def test_perceptual_loss(rng):
  k1 = rng.normal(size=(3, 3, 2, 4)).astype(np.float32)

  def feats(x):
    h = jax.nn.relu(ops.conv(x, k1, padding="SAME"))
    return {"a": h, "b": ops.avg_pool(h, 2)}

  pred = rng.normal(size=(2, 4, 4, 2)).astype(np.float32)
  target = rng.normal(size=(2, 4, 4, 2)).astype(np.float32)
  fp, ft = feats(pred), feats(target)
  per = {k: np.asarray((fp[k] - ft[k]) ** 2).reshape(2, -1).mean(1) for k in fp}
  got = ops.perceptual_loss(pred, target, feats, layer_weights={"a": 1.0, "b": 0.5}, reduction="none")
  np.testing.assert_allclose(got, per["a"] + 0.5 * per["b"], rtol=1e-5)
  l1 = ops.perceptual_loss(pred, target, lambda x: x, distance="l1")
  np.testing.assert_allclose(l1, np.abs(pred - target).mean(), rtol=1e-5)
  g = jax.grad(lambda t: ops.perceptual_loss(pred, t, feats))(target)
  np.testing.assert_array_equal(g, 0.0)  # stop_gradient on the target's features
  assert float(ops.perceptual_loss(pred, pred, feats)) == 0.0


def test_combine_losses(rng):
  logits = _logits(rng, 3, 2, 2, 1)
  t = (rng.uniform(size=logits.shape) > 0.5).astype(np.float32)
  loss = ops.combine_losses({"bce": (1.0, ops.sigmoid_binary_cross_entropy), "dice": (0.5, ops.dice_loss)})
  (total, parts), g = jax.jit(jax.value_and_grad(loss, has_aux=True))(logits, t)
  bce, dice = ops.sigmoid_binary_cross_entropy(logits, t), ops.dice_loss(logits, t)
  np.testing.assert_allclose(parts["bce"], bce, rtol=1e-6)
  np.testing.assert_allclose(total, bce + 0.5 * dice, rtol=1e-6)
  g_want = jax.jit(jax.grad(lambda z: ops.sigmoid_binary_cross_entropy(z, t) + 0.5 * ops.dice_loss(z, t)))(logits)
  np.testing.assert_allclose(g, g_want, rtol=1e-5, atol=1e-7)


def test_extreme_logits_are_stable():
  z = jnp.array([[1e4, -1e4, 0.0], [-1e4, 1e4, 5.0]], jnp.float32)
  labels = jnp.array([1, 0])
  onehot = jax.nn.one_hot(labels, 3)
  cases = {
      "ce_int": lambda a: ops.softmax_cross_entropy(a, labels, label_smoothing=0.1),
      "ce_onehot": lambda a: ops.softmax_cross_entropy(a, onehot),
      "bce": lambda a: ops.sigmoid_binary_cross_entropy(a, onehot),
      "iou": lambda a: ops.soft_iou_loss(a[:, None], onehot[:, None]),
      "dice": lambda a: ops.dice_loss(a[:, None], onehot[:, None], activation="softmax"),
  }
  for name, f in cases.items():
    v, g = jax.jit(jax.value_and_grad(f))(z)
    assert np.isfinite(float(v)), name
    assert np.isfinite(np.asarray(g)).all(), name
  # Confidently wrong costs ~2e4 (exactly, not inf); confidently right costs 0.
  np.testing.assert_allclose(ops.softmax_cross_entropy(z[:1], jnp.array([1])), 2e4, rtol=1e-6)
  np.testing.assert_allclose(ops.sigmoid_binary_cross_entropy(z[:1, :2], jnp.array([[1.0, 0.0]])), 0.0, atol=1e-7)


def test_loss_gradients(rng):
  logits = _logits(rng, 2, 2, 2, 3, scale=1.0)
  labels = rng.integers(0, 3, size=(2, 2, 2))
  soft = rng.uniform(size=logits.shape).astype(np.float32)
  target = rng.normal(size=(2, 4, 4, 1)).astype(np.float32)
  kw = dict(order=1, modes=("rev",), atol=1e-2, rtol=1e-2, eps=1e-2)
  check_grads(jax.jit(lambda a: ops.softmax_cross_entropy(a, labels, label_smoothing=0.1)), (logits,), **kw)
  check_grads(jax.jit(lambda a: ops.softmax_cross_entropy(a, soft / soft.sum(-1, keepdims=True))), (logits,), **kw)
  check_grads(jax.jit(lambda a: ops.sigmoid_binary_cross_entropy(a, soft, weights=np.array([1.0, 2.0]))), (logits,), **kw)
  check_grads(jax.jit(lambda a, b: ops.mse_loss(a, b)), (logits, soft), **kw)
  check_grads(jax.jit(lambda a: ops.l1_loss(a, soft)), (logits,), **kw)
  check_grads(jax.jit(lambda a: ops.soft_iou_loss(a, soft)), (logits,), **kw)
  check_grads(jax.jit(lambda a: ops.dice_loss(a, labels, activation="softmax")), (logits,), **kw)
  check_grads(jax.jit(lambda a: ops.edge_aware_loss(a, target)), (target * 0.5,), **kw)
  check_grads(jax.jit(lambda a: ops.perceptual_loss(a, target, lambda x: jnp.tanh(x))), (target * 0.5,), **kw)


def test_loss_errors():
  z = jnp.zeros((2, 3))
  with pytest.raises(ValueError, match=r"integer labels must have shape \(2,\) .*got shape \(2, 1\)"):
    ops.softmax_cross_entropy(z, jnp.zeros((2, 1), jnp.int32))
  with pytest.raises(ValueError, match=r"one-hot/probability labels must have the shape of logits \(2, 3\); got shape \(2, 4\)"):
    ops.softmax_cross_entropy(z, jnp.zeros((2, 4)))
  with pytest.raises(ValueError, match=r"integer labels must be class indices in \[0, 3\); got values in \[0, 3\]"):
    ops.softmax_cross_entropy(z, jnp.array([0, 3]))
  with pytest.raises(ValueError, match=r"labels must be probabilities in \[0, 1\]; got values in \[-2, 3\]. sigmoid_binary_cross_entropy takes logits first"):
    ops.sigmoid_binary_cross_entropy(z, jnp.array([[-2.0, 0.0, 3.0], [0.0, 1.0, 0.0]]))
  with pytest.raises(ValueError, match=r"labels must be probabilities in \[0, 1\].*Did you pass logits as labels"):
    ops.softmax_cross_entropy(z, jnp.array([[2.0, -1.0, 0.0], [0.0, 1.0, 0.0]]))
  with pytest.raises(ValueError, match=r"logits must be probabilities in \[0, 1\].*activation='sigmoid' or 'softmax'"):
    ops.dice_loss(jnp.full((1, 2, 2), 3.0), jnp.ones((1, 2, 2)), activation=None)
  with pytest.raises(ValueError, match=r"labels must have the shape of logits \(2, 3\); got shape \(3, 2\)"):
    ops.sigmoid_binary_cross_entropy(z, jnp.zeros((3, 2)))
  with pytest.raises(ValueError, match=r"mse_loss: target must have the shape of pred \(2, 3\); got shape \(2,\)"):
    ops.mse_loss(z, jnp.zeros(2))
  with pytest.raises(ValueError, match=r"reduction must be one of \('mean', 'sum', 'none'\); got 'avg'"):
    ops.l1_loss(z, z, reduction="avg")
  with pytest.raises(ValueError, match=r"weights must have shape \[N\] = \(2,\), one per example; got shape \(3,\)"):
    ops.l1_loss(z, z, weights=jnp.ones(3))
  with pytest.raises(ValueError, match=r"label_smoothing must be a number in \[0, 1\]; got 1.5"):
    ops.softmax_cross_entropy(z, jnp.array([0, 1]), label_smoothing=1.5)
  with pytest.raises(ValueError, match=r"soft_iou_loss: activation must be one of .*got 'relu'"):
    ops.soft_iou_loss(jnp.zeros((1, 2, 2)), jnp.zeros((1, 2, 2)), activation="relu")
  with pytest.raises(ValueError, match=r"dice_loss: integer \(class index\) target must have shape \(1, 2\)"):
    ops.dice_loss(jnp.zeros((1, 2, 3)), jnp.zeros((1, 3), jnp.int32), activation="softmax")
  with pytest.raises(ValueError, match=r"edge_aware_loss: pred and target must both have shape \[N, H, W, C\]"):
    ops.edge_aware_loss(z, z)
  with pytest.raises(ValueError, match=r"terms\['a'\] must be a \(weight, loss_fn\) pair"):
    ops.combine_losses({"a": ops.mse_loss})
  with pytest.raises(ValueError, match=r"distance must be 'l2' or 'l1'; got 'cos'"):
    ops.perceptual_loss(z, z, lambda x: x, distance="cos")


def test_jit_skips_value_checks_but_keeps_shapes():
  f = jax.jit(lambda a, y: ops.softmax_cross_entropy(a, y))
  np.testing.assert_allclose(f(jnp.zeros((2, 3)), jnp.array([0, 2])), np.log(3.0), rtol=1e-6)
  with pytest.raises(ValueError, match=r"integer labels must have shape"):
    f(jnp.zeros((2, 3)), jnp.zeros((3,), jnp.int32))


def test_closed_over_labels_are_checked_under_jit():
  bad = jnp.array([0, 5])  # concrete, closed over by the jitted function
  with pytest.raises(ValueError, match=r"integer labels must be class indices in \[0, 3\); got values in \[0, 5\]"):
    jax.jit(lambda a: ops.softmax_cross_entropy(a, bad))(jnp.zeros((2, 3)))
