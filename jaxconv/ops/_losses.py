"""Losses for classification, segmentation and image-to-image training.

Every loss first computes one value per example (averaging over any other axes: pixels,
channels), then reduces over the batch:

* ``reduction="mean"`` (default): ``sum_n w_n l_n / sum_n w_n`` (the plain mean when ``weights``
  is None; with 0/1 weights, the mean over the selected examples; 0 if every weight is 0),
* ``"sum"``: ``sum_n w_n l_n``,
* ``"none"``: the ``[N]`` vector ``w_n l_n``.

``weights`` is an optional ``[N]`` array of per-example weights. Everything works from logits in
a numerically stable form (no NaN and finite gradients at logits of ±1e4). Activations come from
:mod:`jax.nn`; nothing is added here.

Label values (probabilities in ``[0, 1]``, class indices in range) are checked when the arrays
are concrete (outside ``jit``); under ``jit`` only shapes and dtypes are checked.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from jaxconv.ops import _args
from jaxconv.ops._filters import sobel_edges

Array = jax.Array
REDUCTIONS = ("mean", "sum", "none")


def _is_concrete(x: Any) -> bool:
  return not isinstance(x, jax.core.Tracer)


def _check_reduction(reduction: str) -> None:
  if reduction not in REDUCTIONS:
    raise ValueError(f"reduction must be one of {REDUCTIONS}; got {reduction!r}.")


def _reduce(per_example: Array, reduction: str, weights: Optional[Any]) -> Array:
  """Applies per-example weights and the batch reduction (see the module docstring)."""
  n = per_example.shape[0]
  if weights is not None:
    w = jnp.asarray(weights)
    if w.shape != (n,):
      raise ValueError(f"weights must have shape [N] = ({n},), one per example; got shape {w.shape}.")
    w = w.astype(per_example.dtype)
    weighted = per_example * w
    total_w = jnp.sum(w)
  else:
    weighted = per_example
    total_w = jnp.asarray(n, per_example.dtype)
  if reduction == "none":
    return weighted
  if reduction == "sum":
    return jnp.sum(weighted)
  return jnp.sum(weighted) / jnp.where(total_w == 0, 1.0, total_w).astype(per_example.dtype)


def _per_example_mean(v: Array) -> Array:
  return v.reshape(v.shape[0], -1).mean(axis=1) if v.ndim > 1 else v


def _check_probabilities(p: Array, name: str, hint: str) -> None:
  if _is_concrete(p) and p.size:
    v = np.asarray(p)  # NumPy, not jnp: inside jit a jnp.min of a closed-over array is traced
    lo, hi = float(v.min()), float(v.max())
    if not (lo >= 0.0 and hi <= 1.0):
      raise ValueError(f"{name} must be probabilities in [0, 1]; got values in [{lo:g}, {hi:g}]. {hint}")


def _prepare(pred: Any, target: Any, name_pred: str, name_target: str, reduction: str):
  _check_reduction(reduction)
  pred = _args.check_array(pred, name_pred)
  target = jnp.asarray(target)
  if pred.ndim < 1:
    raise ValueError(f"{name_pred} must have a leading batch axis [N, ...]; got shape {pred.shape}.")
  return pred, target


def softmax_cross_entropy(
    logits: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    *,
    label_smoothing: float = 0.0,
    reduction: str = "mean",
    weights: Optional[jax.typing.ArrayLike] = None,
) -> Array:
  r"""Softmax cross-entropy from integer class labels or one-hot/probability labels.

  ``l = -sum_k q_k log softmax(z)_k`` with ``q = (1 - α) y + α / K`` (label smoothing ``α``; ``y``
  one-hot of the integer label, or the given probability labels), computed with
  ``log_softmax`` (stable at any logit scale). For dense prediction (``logits [N, H, W, K]``)
  the per-example loss is the mean over pixels.

  Shapes:
    * ``logits``: ``[N, ..., K]``.
    * ``labels``: integers ``[N, ...]`` in ``[0, K)``, or floats ``[N, ..., K]`` (one-hot or
      soft labels, each row a distribution).
    * ``weights``: ``[N]`` or None. Result: a scalar, or ``[N]`` with ``reduction="none"``.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxconv.ops import softmax_cross_entropy
    >>> logits = jnp.array([[0.0, 0.0], [0.0, 0.0]])
    >>> softmax_cross_entropy(logits, jnp.array([0, 1]))            # log 2
    Array(0.6931472, dtype=float32)
    >>> softmax_cross_entropy(logits, jnp.array([[1.0, 0.0], [0.0, 1.0]]), reduction="none")
    Array([0.6931472, 0.6931472], dtype=float32)
  """
  logits, labels = _prepare(logits, labels, "logits", "labels", reduction)
  if logits.ndim < 2:
    raise ValueError(f"logits must have shape [N, ..., K] (classes last); got shape {logits.shape}.")
  if isinstance(label_smoothing, bool) or not isinstance(label_smoothing, (int, float, np.floating)) or not 0.0 <= label_smoothing <= 1.0:
    raise ValueError(f"label_smoothing must be a number in [0, 1]; got {label_smoothing!r}.")
  k = logits.shape[-1]
  logp = jax.nn.log_softmax(logits, axis=-1)
  if jnp.issubdtype(labels.dtype, jnp.integer):
    if labels.shape != logits.shape[:-1]:
      raise ValueError(
          f"integer labels must have shape {logits.shape[:-1]} (logits {logits.shape} without the "
          f"class axis); got shape {labels.shape}. One-hot labels must be floats of shape {logits.shape}."
      )
    if _is_concrete(labels) and labels.size:
      v = np.asarray(labels)
      lo, hi = int(v.min()), int(v.max())
      if lo < 0 or hi >= k:
        raise ValueError(f"integer labels must be class indices in [0, {k}); got values in [{lo}, {hi}].")
    picked = jnp.take_along_axis(logp, labels[..., None].astype(jnp.int32), axis=-1)[..., 0]
    # (1 - a) * (-log p_y) + a * mean_k(-log p_k): the smoothed target without building one-hots.
    per = -(1.0 - label_smoothing) * picked - label_smoothing * jnp.mean(logp, axis=-1)
  else:
    if labels.shape != logits.shape:
      raise ValueError(
          f"one-hot/probability labels must have the shape of logits {logits.shape}; got shape "
          f"{labels.shape}. Integer class labels must have shape {logits.shape[:-1]}."
      )
    _check_probabilities(labels, "labels", "Did you pass logits as labels?")
    q = labels.astype(logp.dtype)
    if label_smoothing:
      q = (1.0 - label_smoothing) * q + label_smoothing / k
    per = -jnp.sum(q * logp, axis=-1)
  return _reduce(_per_example_mean(per), reduction, weights)


def sigmoid_binary_cross_entropy(
    logits: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    *,
    reduction: str = "mean",
    weights: Optional[jax.typing.ArrayLike] = None,
) -> Array:
  r"""Binary cross-entropy from logits: ``l = -(y log σ(z) + (1 - y) log(1 - σ(z)))``.

  Computed as ``max(z, 0) - z y + log1p(exp(-|z|))``, exact and finite for any ``z``. The
  per-example loss is the mean over all non-batch axes (pixels, labels of a multi-label task).

  Shapes: ``logits`` and ``labels`` (probabilities in ``[0, 1]``) both ``[N, ...]``.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxconv.ops import sigmoid_binary_cross_entropy
    >>> sigmoid_binary_cross_entropy(jnp.array([[0.0], [1e4]]), jnp.array([[1.0], [1.0]]), reduction="none")
    Array([0.6931472, 0.       ], dtype=float32)
  """
  logits, labels = _prepare(logits, labels, "logits", "labels", reduction)
  if labels.shape != logits.shape:
    raise ValueError(f"labels must have the shape of logits {logits.shape}; got shape {labels.shape}.")
  _check_probabilities(labels, "labels", "sigmoid_binary_cross_entropy takes logits first and 0/1 (or soft) labels second.")
  y = labels.astype(logits.dtype)
  per = jnp.maximum(logits, 0) - logits * y + jnp.log1p(jnp.exp(-jnp.abs(logits)))
  return _reduce(_per_example_mean(per), reduction, weights)


def _regression(pred, target, name, reduction, weights, fn):
  pred, target = _prepare(pred, target, "pred", "target", reduction)
  if target.shape != pred.shape:
    raise ValueError(f"{name}: target must have the shape of pred {pred.shape}; got shape {target.shape}.")
  return _reduce(_per_example_mean(fn(pred - target.astype(pred.dtype))), reduction, weights)


def mse_loss(
    pred: jax.typing.ArrayLike,
    target: jax.typing.ArrayLike,
    *,
    reduction: str = "mean",
    weights: Optional[jax.typing.ArrayLike] = None,
) -> Array:
  """Mean squared error: per example ``mean((pred - target)^2)`` over the non-batch axes.

  Shapes: ``pred``, ``target`` ``[N, ...]``.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxconv.ops import mse_loss
    >>> mse_loss(jnp.array([[1.0, 2.0], [0.0, 0.0]]), jnp.array([[0.0, 0.0], [0.0, 1.0]]), reduction="none")
    Array([2.5, 0.5], dtype=float32)
  """
  return _regression(pred, target, "mse_loss", reduction, weights, jnp.square)


def l1_loss(
    pred: jax.typing.ArrayLike,
    target: jax.typing.ArrayLike,
    *,
    reduction: str = "mean",
    weights: Optional[jax.typing.ArrayLike] = None,
) -> Array:
  """Mean absolute error: per example ``mean(|pred - target|)`` over the non-batch axes.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxconv.ops import l1_loss
    >>> l1_loss(jnp.array([[1.0, -2.0]]), jnp.array([[0.0, 0.0]]))
    Array(1.5, dtype=float32)
  """
  return _regression(pred, target, "l1_loss", reduction, weights, jnp.abs)


ACTIVATIONS = ("sigmoid", "softmax", None)


def _seg_probs(logits, target, activation, fn):
  """Probabilities and a same-shape float target for the overlap losses."""
  if activation not in ACTIVATIONS:
    raise ValueError(f"{fn}: activation must be one of {ACTIVATIONS}; got {activation!r}.")
  if logits.ndim < 2:
    raise ValueError(f"{fn}: logits must have shape [N, ..., C]; got shape {logits.shape}.")
  if activation is None:
    _check_probabilities(logits, "logits", f"With activation=None {fn} expects probabilities; pass activation='sigmoid' or 'softmax' for logits.")
    p = logits
  elif activation == "sigmoid":
    p = jax.nn.sigmoid(logits)
  else:
    p = jax.nn.softmax(logits, axis=-1)
  if jnp.issubdtype(target.dtype, jnp.integer):
    if target.shape != logits.shape[:-1]:
      raise ValueError(
          f"{fn}: integer (class index) target must have shape {logits.shape[:-1]}; got shape {target.shape}."
      )
    t = jax.nn.one_hot(target, logits.shape[-1], dtype=p.dtype)
  else:
    if target.shape != logits.shape:
      raise ValueError(f"{fn}: target must have the shape of logits {logits.shape} (or be class indices); got shape {target.shape}.")
    _check_probabilities(target, "target", "Masks must be 0/1 (or soft) values.")
    t = target.astype(p.dtype)
  return p, t


def soft_iou_loss(
    logits: jax.typing.ArrayLike,
    target: jax.typing.ArrayLike,
    *,
    activation: Optional[str] = "sigmoid",
    smooth: float = 1.0,
    reduction: str = "mean",
    weights: Optional[jax.typing.ArrayLike] = None,
) -> Array:
  r"""Soft Jaccard (IoU) loss for segmentation masks.

  For each example and channel ``c`` (summing over pixels):
  ``I = sum p t``, ``U = sum (p + t - p t)``, ``IoU_c = (I + s) / (U + s)``; the per-example loss
  is ``1 - mean_c IoU_c``. ``p`` is ``sigmoid(logits)`` (binary/multi-label masks),
  ``softmax(logits)`` (mutually exclusive classes) or ``logits`` itself (``activation=None``:
  probabilities). ``smooth`` keeps empty masks finite (``IoU = 1`` when both are empty).

  Shapes: ``logits`` ``[N, *spatial, C]``; ``target`` the same shape with values in ``[0, 1]``, or
  integer class indices ``[N, *spatial]`` (one-hot encoded to ``C`` channels).

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxconv.ops import soft_iou_loss
    >>> p = jnp.array([1.0, 1.0, 0.0, 0.0]).reshape(1, 4, 1)
    >>> t = jnp.array([1.0, 0.0, 0.0, 0.0]).reshape(1, 4, 1)
    >>> soft_iou_loss(p, t, activation=None, smooth=0.0)         # I = 1, U = 2
    Array(0.5, dtype=float32)
  """
  logits, target = _prepare(logits, target, "logits", "target", reduction)
  p, t = _seg_probs(logits, target, activation, "soft_iou_loss")
  axes = tuple(range(1, p.ndim - 1))
  inter = jnp.sum(p * t, axis=axes)
  union = jnp.sum(p + t - p * t, axis=axes)
  iou = (inter + smooth) / (union + smooth)
  return _reduce(1.0 - jnp.mean(iou, axis=-1), reduction, weights)


def dice_loss(
    logits: jax.typing.ArrayLike,
    target: jax.typing.ArrayLike,
    *,
    activation: Optional[str] = "sigmoid",
    smooth: float = 1.0,
    reduction: str = "mean",
    weights: Optional[jax.typing.ArrayLike] = None,
) -> Array:
  r"""Soft Dice loss: per example ``1 - mean_c (2 sum p t + s) / (sum p + sum t + s)``.

  Same shapes, ``activation`` and ``smooth`` as :func:`soft_iou_loss` (sums over pixels, one
  Dice coefficient per channel).

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxconv.ops import dice_loss
    >>> p = jnp.array([1.0, 1.0, 0.0, 0.0]).reshape(1, 4, 1)
    >>> t = jnp.array([1.0, 0.0, 0.0, 0.0]).reshape(1, 4, 1)
    >>> dice_loss(p, t, activation=None, smooth=0.0)              # 1 - 2 * 1 / (2 + 1)
    Array(0.3333, dtype=float32)
  """
  logits, target = _prepare(logits, target, "logits", "target", reduction)
  p, t = _seg_probs(logits, target, activation, "dice_loss")
  axes = tuple(range(1, p.ndim - 1))
  num = 2.0 * jnp.sum(p * t, axis=axes) + smooth
  den = jnp.sum(p, axis=axes) + jnp.sum(t, axis=axes) + smooth
  return _reduce(1.0 - jnp.mean(num / den, axis=-1), reduction, weights)


def edge_aware_loss(
    pred: jax.typing.ArrayLike,
    target: jax.typing.ArrayLike,
    *,
    border: str = "replicate",
    reduction: str = "mean",
    weights: Optional[jax.typing.ArrayLike] = None,
) -> Array:
  r"""L2 distance between the Sobel edge maps of prediction and target.

  Per example: ``mean((gx(pred) - gx(target))^2 + (gy(pred) - gy(target))^2)`` over pixels and
  channels, with ``gx, gy`` the Sobel responses of :func:`jaxconv.ops.sobel_edges` (comparing the
  two gradient components rather than magnitudes keeps the loss smooth where edges vanish).
  The target's edges carry no gradient.

  Shapes: ``pred``, ``target`` ``[N, H, W, C]``.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxconv.ops import edge_aware_loss
    >>> x = jnp.ones((2, 5, 5, 1))
    >>> edge_aware_loss(x, 3.0 * x)                     # constant images have no edges
    Array(0., dtype=float32)
  """
  pred, target = _prepare(pred, target, "pred", "target", reduction)
  if pred.ndim != 4 or target.shape != pred.shape:
    raise ValueError(
        f"edge_aware_loss: pred and target must both have shape [N, H, W, C]; got {pred.shape} and {target.shape}."
    )
  gxp, gyp = sobel_edges(pred, border)
  gxt, gyt = sobel_edges(jax.lax.stop_gradient(target.astype(pred.dtype)), border)
  per = jnp.square(gxp - gxt) + jnp.square(gyp - gyt)
  return _reduce(_per_example_mean(per), reduction, weights)


def perceptual_loss(
    pred: jax.typing.ArrayLike,
    target: jax.typing.ArrayLike,
    feature_fn: Callable[[Array], Any],
    *,
    layer_weights: Optional[Any] = None,
    distance: str = "l2",
    reduction: str = "mean",
    weights: Optional[jax.typing.ArrayLike] = None,
) -> Array:
  r"""Distance between the feature maps a frozen network produces for prediction and target.

  ``l_n = sum_j w_j mean(d(phi_j(pred)_n - phi_j(target)_n))`` over the leaves ``phi_j`` of the
  pytree that ``feature_fn`` returns (one array, or a dict/list of ``[N, ...]`` feature maps such
  as a model's ``return_features`` dict), with ``d`` the square (``"l2"``) or absolute value
  (``"l1"``). The target's features are wrapped in ``stop_gradient``. ``feature_fn`` should
  close over frozen parameters (e.g. ``lambda x: model.apply(frozen_vars, x, train=False,
  return_features=True)[1]``); gradients reach ``pred`` only when you differentiate w.r.t. it.

  Args:
    pred, target: inputs of ``feature_fn``, ``[N, ...]``.
    feature_fn: maps a batch to a feature array or a pytree of them.
    layer_weights: weights with the pytree structure of the features (default 1 for each).
    distance: ``"l2"`` or ``"l1"``.
    reduction, weights: see the module docstring.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxconv.ops import perceptual_loss
    >>> feats = lambda x: {"id": x, "double": 2.0 * x}
    >>> perceptual_loss(jnp.ones((1, 2)), jnp.zeros((1, 2)), feats)    # 1 + 4
    Array(5., dtype=float32)
  """
  pred, target = _prepare(pred, target, "pred", "target", reduction)
  if target.shape != pred.shape:
    raise ValueError(f"perceptual_loss: target must have the shape of pred {pred.shape}; got shape {target.shape}.")
  if not callable(feature_fn):
    raise TypeError(f"feature_fn must be callable (batch -> features); got {feature_fn!r}.")
  if distance not in ("l2", "l1"):
    raise ValueError(f"distance must be 'l2' or 'l1'; got {distance!r}.")
  fp = feature_fn(pred)
  ft = jax.lax.stop_gradient(feature_fn(target.astype(pred.dtype)))
  leaves_p, tree = jax.tree_util.tree_flatten(fp)
  leaves_t, tree_t = jax.tree_util.tree_flatten(ft)
  if layer_weights is None:
    lw = [1.0] * len(leaves_p)
  else:
    lw, tree_w = jax.tree_util.tree_flatten(layer_weights)
    if tree_w != tree:
      raise ValueError(f"layer_weights must have the structure of the features {tree}; got {tree_w}.")
  n = pred.shape[0]
  per = jnp.zeros((n,), pred.dtype)
  for a, b, w in zip(leaves_p, leaves_t, lw):
    if a.ndim < 1 or a.shape[0] != n:
      raise ValueError(f"perceptual_loss: every feature map must be [N={n}, ...]; got shape {a.shape}.")
    d = jnp.square(a - b) if distance == "l2" else jnp.abs(a - b)
    per = per + w * _per_example_mean(d).astype(pred.dtype)
  return _reduce(per, reduction, weights)


def combine_losses(terms: Mapping[str, tuple[float, Callable[..., Array]]]) -> Callable[..., tuple[Array, dict]]:
  """Builds a weighted sum of losses that also reports each term.

  ``combine_losses({"ce": (1.0, ce_fn), "dice": (0.5, dice_fn)})`` returns
  ``loss(*args, **kwargs) -> (total, {"ce": ..., "dice": ...})`` where every term is called with
  the same arguments and ``total = sum_i weight_i * term_i``. The ``(total, parts)`` pair fits
  ``jax.value_and_grad(..., has_aux=True)``; ``parts`` holds the unweighted terms.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxconv.ops import combine_losses, l1_loss, mse_loss
    >>> loss = combine_losses({"mse": (1.0, mse_loss), "l1": (0.5, l1_loss)})
    >>> total, parts = loss(jnp.array([[2.0]]), jnp.array([[0.0]]))
    >>> float(total), {k: float(v) for k, v in parts.items()}
    (5.0, {'mse': 4.0, 'l1': 2.0})
  """
  if not isinstance(terms, Mapping) or not terms:
    raise ValueError(f"terms must be a non-empty mapping name -> (weight, loss_fn); got {terms!r}.")
  checked = {}
  for name, term in terms.items():
    if not (isinstance(term, tuple) and len(term) == 2 and callable(term[1])):
      raise ValueError(f"terms[{name!r}] must be a (weight, loss_fn) pair; got {term!r}.")
    w = term[0]
    if isinstance(w, bool) or not isinstance(w, (int, float, np.integer, np.floating)):
      raise TypeError(f"the weight of terms[{name!r}] must be a number; got {w!r}.")
    checked[name] = (float(w), term[1])

  def loss(*args, **kwargs):
    parts = {name: fn(*args, **kwargs) for name, (_, fn) in checked.items()}
    total = sum(w * parts[name] for name, (w, _) in checked.items())
    return total, parts

  return loss
