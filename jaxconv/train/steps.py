"""Train state and the pure train/eval step functions (jitted by :mod:`jaxconv.train.parallel`).

The state holds everything a run needs to continue exactly: ``step``, ``params``,
``batch_stats``, ``opt_state``, ``rng`` (a raw ``uint32[2]`` key; the step's key is
``fold_in(rng, step)``, so augmentation and dropout depend only on the step) and, for float16
training, the dynamic loss scale.

Example:
  >>> import jax, jax.numpy as jnp, numpy as np, flax.linen as nn, optax
  >>> model = nn.Dense(3)
  >>> state = TrainState.create(model.apply, model.init(jax.random.key(0), jnp.zeros((1, 4))),
  ...                           optax.sgd(0.1), seed=0)
  >>> int(state.step), sorted(state.params)
  (0, ['bias', 'kernel'])
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, Optional

import flax
import jax
import jax.numpy as jnp
import optax
from flax.training.dynamic_scale import DynamicScale

from jaxconv.data.augment import augment, normalize


class TrainState(flax.struct.PyTreeNode):
  """Params, batch statistics, optimizer state, step, RNG and loss scale of a run (a pytree).

  ``dynamic_scale`` is ``None`` unless the run uses dynamic loss scaling (float16 compute):
  then a :class:`flax.training.dynamic_scale.DynamicScale` whose ``scale`` multiplies the loss
  before differentiation (and divides the gradients after), halves after a step whose gradients
  are not finite (that step's update is skipped) and doubles after ``growth_interval`` finite
  steps in a row (PyTorch's ``GradScaler`` defaults: 2**16 and 2000).
  """
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  rng: jax.Array
  apply_fn: Callable = flax.struct.field(pytree_node=False)
  tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)
  dynamic_scale: Optional[DynamicScale] = None

  @classmethod
  def create(cls, apply_fn: Callable, variables: dict, tx: optax.GradientTransformation, *,
             seed: int, loss_scaling: bool = False) -> "TrainState":
    params = variables["params"]
    # Arrays, not Python numbers: the scale is checkpointed and donated like the rest.
    scale = (DynamicScale(fin_steps=jnp.zeros((), jnp.int32), scale=jnp.asarray(2.0 ** 16, jnp.float32))
             if loss_scaling else None)
    return cls(step=jnp.zeros((), jnp.int32), params=params,
               batch_stats=variables.get("batch_stats", {}), opt_state=tx.init(params),
               rng=jax.random.PRNGKey(seed + 1), apply_fn=apply_fn, tx=tx, dynamic_scale=scale)

  def apply_gradients(self, grads, *, batch_stats, value) -> "TrainState":
    updates, opt_state = self.tx.update(grads, self.opt_state, self.params, value=value)
    return self.replace(step=self.step + 1, params=optax.apply_updates(self.params, updates),
                        batch_stats=batch_stats, opt_state=opt_state)

  def variables(self) -> dict:
    return {"params": self.params, "batch_stats": self.batch_stats}

  def to_tree(self) -> dict:
    """The checkpointed part (no functions)."""
    tree = {"step": self.step, "params": self.params, "batch_stats": self.batch_stats,
            "opt_state": self.opt_state, "rng": self.rng}
    if self.dynamic_scale is not None:
      tree["loss_scale"] = {"scale": self.dynamic_scale.scale, "fin_steps": self.dynamic_scale.fin_steps}
    return tree

  def from_tree(self, tree: dict) -> "TrainState":
    tree = dict(tree)
    scale = tree.pop("loss_scale", None)
    if scale is not None:
      tree["dynamic_scale"] = self.dynamic_scale.replace(**scale)
    return self.replace(**tree)


def topk_correct(logits: jax.Array, labels: jax.Array, k: int) -> jax.Array:
  """``[N]`` float: 1 where the label is among the ``k`` largest logits.

  Example:
    >>> topk_correct(jnp.array([[0., 2., 1.]]), jnp.array([2]), 2)
    Array([1.], dtype=float32)
  """
  k = min(k, logits.shape[-1])
  _, idx = jax.lax.top_k(logits, k)
  return jnp.any(idx == labels[:, None], axis=-1).astype(jnp.float32)


def all_finite(tree) -> jax.Array:
  """Whether every floating-point entry of ``tree`` is finite (a scalar bool)."""
  leaves = [jnp.all(jnp.isfinite(a)) for a in jax.tree.leaves(tree)
            if jnp.issubdtype(jnp.asarray(a).dtype, jnp.inexact)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)


def make_train_step(*, num_classes: int, mean, std, crop_padding: int, flip: bool,
                    rotate: float = 0.0, scale: float = 0.0, label_smoothing: float, compute_dtype,
                    lr_fn: Callable, axis_name: Optional[str] = None) -> Callable:
  """``train_step(state, x_uint8 [B,H,W,C], y [B]) -> (state, metrics)``.

  Augments and normalises on device, computes softmax cross-entropy (with label smoothing) in
  float32, and applies the optimizer. Under ``pmap`` (``axis_name`` set) gradients, loss and
  metrics are averaged over devices with ``lax.pmean``; under sharded ``jit`` the batch is
  global and no collective is written by hand.

  With a loss scale in the state (float16 compute), the loss is scaled before differentiation
  and the float32 gradients unscaled after; a step whose gradients are not finite leaves the
  parameters, batch statistics and optimizer state as they were (only ``step`` and the scale
  move), as PyTorch's ``GradScaler`` skips ``optimizer.step()``.

  Metrics: ``loss``, ``top1``, ``top5``, ``grad_norm``, ``lr`` (scalars), and ``finite``: 1.0 when
  the loss, the gradient norm and every entry of the new parameters, batch statistics and
  optimizer moments (the optimizer state's non-scalar arrays; its scalars, such as a plateau
  schedule's best value, may rightly be infinite) are finite, else 0.0. The trainer never saves
  a state that is not. With a loss scale also ``loss_scale`` (the scale this step used) and
  ``skipped`` (1.0 for a skipped step, whose loss and gradient norm need not be finite).
  """
  def train_step(state: TrainState, x, y):
    key = jax.random.fold_in(state.rng, state.step)
    if axis_name is not None:  # each device draws its own augmentation and dropout
      key = jax.random.fold_in(key, jax.lax.axis_index(axis_name))
    k_aug, k_drop = jax.random.split(key)
    x = augment(k_aug, x, crop_padding=crop_padding, flip=flip, rotate=rotate, scale=scale)
    x = normalize(x, mean, std, compute_dtype)
    targets = optax.smooth_labels(jax.nn.one_hot(y, num_classes), label_smoothing) \
        if label_smoothing else jax.nn.one_hot(y, num_classes)

    def loss_fn(params):
      logits, updates = state.apply_fn(
          {"params": params, "batch_stats": state.batch_stats}, x, train=True,
          mutable=["batch_stats"], rngs={"dropout": k_drop})
      logits = logits.astype(jnp.float32)
      return optax.softmax_cross_entropy(logits, targets).mean(), (logits, updates)

    scaler = state.dynamic_scale
    if scaler is None:
      (loss, (logits, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
      if axis_name is not None:
        grads = jax.lax.pmean(grads, axis_name)
    else:  # unscaled float32 gradients, averaged over axis_name, and whether they are finite
      scaler, grads_ok, (loss, (logits, updates)), grads = scaler.value_and_grad(
          loss_fn, has_aux=True, axis_name=axis_name)(state.params)
    metrics = {"loss": loss, "top1": topk_correct(logits, y, 1).mean(),
               "top5": topk_correct(logits, y, 5).mean()}
    if axis_name is not None:
      metrics = jax.lax.pmean(metrics, axis_name)
    metrics["grad_norm"] = optax.tree.norm(grads)
    metrics["lr"] = lr_fn(state.step, state.opt_state)
    new_state = state.apply_gradients(
        grads, batch_stats=updates.get("batch_stats", state.batch_stats), value=metrics["loss"])
    loss, grad_norm = metrics["loss"], metrics["grad_norm"]
    if scaler is not None:
      keep = lambda new, old: jax.tree.map(functools.partial(jnp.where, grads_ok), new, old)  # noqa: E731
      new_state = new_state.replace(
          params=keep(new_state.params, state.params), opt_state=keep(new_state.opt_state, state.opt_state),
          batch_stats=keep(new_state.batch_stats, state.batch_stats), dynamic_scale=scaler)
      metrics["loss_scale"] = state.dynamic_scale.scale
      metrics["skipped"] = 1.0 - grads_ok.astype(jnp.float32)
      loss, grad_norm = jnp.where(grads_ok, loss, 0.0), jnp.where(grads_ok, grad_norm, 0.0)
    moments = [a for a in jax.tree.leaves(new_state.opt_state) if jnp.ndim(a) > 0]
    metrics["finite"] = all_finite((loss, grad_norm, new_state.params,
                                    new_state.batch_stats, moments)).astype(jnp.float32)
    return new_state, metrics

  return train_step


def make_eval_step(*, num_classes: int, mean, std, compute_dtype,
                   axis_name: Optional[str] = None) -> Callable:
  """``eval_step(state, x, y, mask) -> (sums, predictions [B])``.

  ``sums`` holds ``loss``, ``top1``, ``top5`` summed over the unmasked examples and ``count``;
  padded examples (``mask=False``) contribute nothing.
  """
  def eval_step(state: TrainState, x, y, mask):
    x = normalize(x, mean, std, compute_dtype)
    logits = state.apply_fn(state.variables(), x, train=False).astype(jnp.float32)
    w = mask.astype(jnp.float32)
    loss = optax.softmax_cross_entropy(logits, jax.nn.one_hot(y, num_classes))
    sums = {"loss": (loss * w).sum(), "top1": (topk_correct(logits, y, 1) * w).sum(),
            "top5": (topk_correct(logits, y, 5) * w).sum(), "count": w.sum()}
    if axis_name is not None:
      sums = jax.lax.psum(sums, axis_name)
    return sums, jnp.argmax(logits, -1)

  return eval_step
