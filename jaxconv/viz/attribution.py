"""Attribution: which input pixels a class score depends on (Captum's methods, channels-last).

Each function takes ``fn``, a function from a batch ``x [N, H, W, C]`` to logits ``[N, K]``
(for a zoo model: ``lambda x: model.apply(variables, x)``), the batch ``x`` and ``target`` (one
class index for every example, or ``[N]`` indices), and returns attributions shaped like ``x``.
Each compiles its whole computation once per ``fn`` (cached by identity: define ``fn``
once to reuse it); all are pure JAX and can also be called inside ``jax.jit``.

Example:
  >>> import jax, jax.numpy as jnp
  >>> from jaxconv.viz import integrated_gradients, saliency
  >>> w = jnp.arange(12.0).reshape(2, 2, 1, 3)
  >>> fn = lambda x: jnp.einsum("nhwc,hwck->nk", x ** 2, w)    # logits [N, 3]
  >>> x = jnp.ones((1, 2, 2, 1))
  >>> saliency(fn, x, 2)[0, ..., 0]                            # |d logit_2 / dx| = 2 x w[..., 2]
  Array([[ 4., 10.],
         [16., 22.]], dtype=float32)
  >>> attr, delta = integrated_gradients(fn, x, 2, return_delta=True)
  >>> bool(abs(delta[0]) < 1e-4)                                # completeness: sum(attr) = f(x) - f(0)
  True
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Optional, Union

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
Fn = Callable[[Array], Array]
Target = Union[int, jax.typing.ArrayLike]

IG_METHODS = ("riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid", "gausslegendre")


def _check(fn: Fn, x, target) -> tuple[Array, Array]:
  if not callable(fn):
    raise TypeError(f"fn must be a function from x [N, H, W, C] to logits [N, K]; got {type(fn).__name__}.")
  x = jnp.asarray(x)
  if x.ndim < 2 or not jnp.issubdtype(x.dtype, jnp.floating):
    raise ValueError(f"x must be a floating batch [N, ...] (channels-last images [N, H, W, C]); got "
                     f"shape {x.shape} and dtype {x.dtype}.")
  t = jnp.asarray(target)
  if not jnp.issubdtype(t.dtype, jnp.integer) or t.ndim > 1 or (t.ndim == 1 and t.shape[0] != x.shape[0]):
    raise ValueError(f"target must be a class index or one per example ([{x.shape[0]}] ints); got "
                     f"{target!r}.")
  return x, jnp.broadcast_to(t, (x.shape[0],)).astype(jnp.int32)


def _target_score(fn: Fn, target: Array) -> Callable[[Array], Array]:
  """``x -> sum_n fn(x)[n, target[n]]``: its gradient is every example's own target gradient."""

  def score(x):
    logits = fn(x)
    if logits.ndim != 2 or logits.shape[0] != x.shape[0]:
      raise ValueError(f"fn must return logits [N, K] for x of shape {x.shape}; got shape {logits.shape}.")
    return jnp.take_along_axis(logits, target[:, None], axis=1).sum()

  return score


def _call_static(jitted, fn, *args, **static):
  """``jitted(fn, *args, **static)``, ``jitted`` a ``jax.jit`` whose first argument (``fn``, or a
  Flax module) and ``static`` keyword arguments are static: one compiled program per ``fn`` and
  settings. One that cannot be hashed (a module with a list attribute, a callable object that
  defines ``__eq__`` only) cannot be a static argument: it is compiled for this call."""
  try:
    hash(fn)
  except TypeError:
    return jax.jit(functools.partial(jitted.__wrapped__, fn, **static))(*args)
  return jitted(fn, *args, **static)


def _per_example(fn: Fn, x: Array, target: Array) -> Array:
  return jnp.take_along_axis(fn(x), target[:, None], axis=1)[:, 0]


def saliency(fn: Fn, x: jax.typing.ArrayLike, target: Target, *, abs: bool = True) -> Array:  # noqa: A002
  """The input gradient of the target logit (Simonyan et al. 2014; Captum's ``Saliency``).

  ``attr = |d f(x)[target] / dx|`` (without ``abs``, the signed gradient).

  Returns:
    ``[N, H, W, C]``, like ``x``.
  """
  x, t = _check(fn, x, target)
  return _call_static(_saliency, fn, x, t, abs=abs)


# Called eagerly, a gradient runs op by op, each op compiled on its first call: 11 s for the first
# saliency map of a ResNet-18 (CIFAR, width 16) on a 2-core Zen 4, against 3 s compiled whole.
# Compiled once per fn (by identity: define fn once to reuse the compiled map).
@functools.partial(jax.jit, static_argnames=("fn", "abs"))
def _saliency(fn: Fn, x: Array, t: Array, *, abs: bool) -> Array:  # noqa: A002
  g = jax.grad(_target_score(fn, t))(x)
  return jnp.abs(g) if abs else g


def ig_steps(steps: int, method: str = "gausslegendre") -> tuple[np.ndarray, np.ndarray]:
  """``(alphas, weights)`` of the path integral, placed and weighted as Captum places them.

  ``riemann_left/right/middle``: ``steps`` equal weights ``1/steps`` at the left ends, right ends
  or midpoints of ``steps`` equal intervals; ``riemann_trapezoid``: ``steps`` points from 0 to 1
  with weights ``1/steps`` halved at both ends (Captum's rule); ``gausslegendre``: Gauss-Legendre
  nodes and weights mapped from [-1, 1] to [0, 1].
  """
  if isinstance(steps, bool) or not isinstance(steps, int) or steps < 2:
    raise ValueError(f"steps must be an int >= 2; got {steps!r}.")
  if method == "gausslegendre":
    nodes, w = np.polynomial.legendre.leggauss(steps)
    return 0.5 * (nodes + 1.0), 0.5 * w
  if method not in IG_METHODS:
    raise ValueError(f"method must be one of {', '.join(IG_METHODS)}; got {method!r}.")
  w = np.full(steps, 1.0 / steps)
  if method == "riemann_trapezoid":
    w[0] /= 2
    w[-1] /= 2
    return np.linspace(0.0, 1.0, steps), w
  if method == "riemann_left":
    return np.linspace(0.0, 1.0 - 1.0 / steps, steps), w
  if method == "riemann_right":
    return np.linspace(1.0 / steps, 1.0, steps), w
  return np.linspace(1.0 / (2 * steps), 1.0 - 1.0 / (2 * steps), steps), w


def integrated_gradients(fn: Fn, x: jax.typing.ArrayLike, target: Target, *,
                         baseline: Optional[jax.typing.ArrayLike] = None, steps: int = 50,
                         method: str = "gausslegendre", return_delta: bool = False):
  """Integrated gradients (Sundararajan et al. 2017; Captum's ``IntegratedGradients``).

  ``attr = (x - x0) * sum_i w_i * grad f(x0 + a_i (x - x0))[target]`` with the nodes ``a_i`` and
  weights ``w_i`` of :func:`ig_steps`; ``x0`` is ``baseline`` (zeros by default). The gradients
  along the path are taken one step at a time (``lax.map``), so memory is that of one gradient.

  Args:
    fn, x, target: see the module docstring.
    baseline: ``x0``, broadcastable to ``x``; default zeros.
    steps: number of points on the path.
    method: one of :data:`IG_METHODS` (Captum's names and rules).
    return_delta: also return the completeness gap per example,
      ``sum(attr) - (f(x)[target] - f(x0)[target])``, which tends to 0 as ``steps`` grows.

  Returns:
    ``attr`` ``[N, H, W, C]``, or ``(attr, delta [N])`` with ``return_delta``.
  """
  x, t = _check(fn, x, target)
  alphas, weights = ig_steps(steps, method)
  return _call_static(_integrated_gradients, fn, x, t, baseline, alphas.astype(x.dtype), weights.astype(x.dtype),
                      return_delta=return_delta)


# Compiled whole, like _saliency (eagerly, the completeness gap's two forward passes ran op by op).
# The nodes and weights are arguments: every method with the same number of steps runs one program.
@functools.partial(jax.jit, static_argnames=("fn", "return_delta"))
def _integrated_gradients(fn: Fn, x: Array, t: Array, baseline, alphas: Array, weights: Array, *, return_delta: bool):
  x0 = jnp.zeros_like(x) if baseline is None else jnp.broadcast_to(jnp.asarray(baseline, x.dtype), x.shape)
  grad = jax.grad(_target_score(fn, t))

  def step(aw):
    a, w = aw
    return w * grad(x0 + a * (x - x0))

  total = jax.lax.map(step, (alphas, weights)).sum(0)
  attr = total * (x - x0)
  if not return_delta:
    return attr
  gap = _per_example(fn, x, t) - _per_example(fn, x0, t)
  return attr, attr.reshape(x.shape[0], -1).sum(1) - gap


def smoothgrad(fn: Fn, x: jax.typing.ArrayLike, target: Target, *, key: Array, samples: int = 50,
               sigma: float = 0.15, abs: bool = True) -> Array:  # noqa: A002
  """SmoothGrad (Smilkov et al. 2017): saliency averaged over noisy copies of the input.

  ``attr = mean_s saliency(x + e_s)``, ``e_s ~ N(0, (sigma * (max(x_n) - min(x_n)))^2)`` per
  example ``n``: the noise level is relative to each input's range, as in the paper (Captum's
  ``NoiseTunnel`` takes an absolute standard deviation instead).

  Args:
    key: PRNG key for the noise.
    samples: noisy copies per example.
    sigma: noise standard deviation as a fraction of the input's range.
    abs: average absolute gradients (as Captum's ``NoiseTunnel(Saliency)``) or signed ones.
  """
  x, t = _check(fn, x, target)
  if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
    raise ValueError(f"samples must be a positive int; got {samples!r}.")
  if not sigma >= 0:
    raise ValueError(f"sigma must be >= 0; got {sigma!r}.")
  return _call_static(_smoothgrad, fn, x, t, key, sigma, samples=samples, abs=abs)


@functools.partial(jax.jit, static_argnames=("fn", "samples", "abs"))
def _smoothgrad(fn: Fn, x: Array, t: Array, key: Array, sigma, *, samples: int, abs: bool) -> Array:  # noqa: A002
  axes = tuple(range(1, x.ndim))
  span = (x.max(axes, keepdims=True) - x.min(axes, keepdims=True)) * sigma
  grad = jax.grad(_target_score(fn, t))

  def one(k):
    # Drawn flat: the same values as over x.shape, without XLA:CPU's slow compile of the random
    # bits over 4-D shapes (see jaxconv.nn.initializers).
    g = grad(x + span * jax.random.normal(k, (x.size,), x.dtype).reshape(x.shape))
    return jnp.abs(g) if abs else g

  return jax.lax.map(one, jax.random.split(key, samples)).mean(0)


def occlusion(fn: Fn, x: jax.typing.ArrayLike, target: Target, *, window: Union[int, tuple[int, int]],
              stride: Union[int, tuple[int, int]], baseline: float = 0.0) -> Array:
  """Occlusion (Zeiler & Fergus 2014) with Captum's ``Occlusion`` rules, the window over all channels.

  A ``window`` patch slides over the image in steps of ``stride`` from the top-left corner
  (``ceil((H - wh) / sh) + 1`` positions down, the last one cut at the border); at each
  position the patch is set to ``baseline`` and the drop of the target logit,
  ``f(x)[target] - f(x_occluded)[target]``, is added to every pixel under the patch. Each
  pixel's sum is divided by the number of patches that covered it.

  Returns:
    ``[N, H, W, C]`` (equal across channels).
  """
  x, t = _check(fn, x, target)
  if x.ndim != 4:
    raise ValueError(f"occlusion takes images [N, H, W, C]; got shape {x.shape}.")
  h, w = x.shape[1:3]
  wh, ww = (window, window) if isinstance(window, int) else tuple(window)
  sh, sw = (stride, stride) if isinstance(stride, int) else tuple(stride)
  for name, (a, b) in (("window", (wh, ww)), ("stride", (sh, sw))):
    if not all(isinstance(v, int) and v >= 1 for v in (a, b)):
      raise ValueError(f"{name} must be a positive int or a pair of them; got {window if name == 'window' else stride!r}.")
  if wh > h or ww > w:
    raise ValueError(f"window {(wh, ww)} is larger than the image {(h, w)}.")
  if (sh > wh and wh < h) or (sw > ww and ww < w):
    raise ValueError(f"stride {(sh, sw)} larger than the window {(wh, ww)} would leave pixels never occluded.")
  return _call_static(_occlusion, fn, x, t, baseline, window=(wh, ww), stride=(sh, sw))


@functools.partial(jax.jit, static_argnames=("fn", "window", "stride"))
def _occlusion(fn: Fn, x: Array, t: Array, baseline, *, window: tuple[int, int], stride: tuple[int, int]) -> Array:
  (h, w), (wh, ww), (sh, sw) = x.shape[1:3], window, stride
  rows = [i * sh for i in range(math.ceil((h - wh) / sh) + 1)]
  cols = [j * sw for j in range(math.ceil((w - ww) / sw) + 1)]
  masks = np.zeros((len(rows) * len(cols), h, w), np.float32)
  for p, (r, c) in enumerate((r, c) for r in rows for c in cols):
    masks[p, r:r + wh, c:c + ww] = 1.0
  counts = masks.sum(0)
  base = _per_example(fn, x, t)

  def drop(m):
    m = m[None, :, :, None].astype(x.dtype)
    return base - _per_example(fn, x * (1 - m) + baseline * m, t)

  diffs = jax.lax.map(drop, jnp.asarray(masks))               # [P, N]
  attr = jnp.einsum("pn,phw->nhw", diffs, jnp.asarray(masks, x.dtype)) / jnp.asarray(counts[None], x.dtype)
  return jnp.broadcast_to(attr[..., None], x.shape)
