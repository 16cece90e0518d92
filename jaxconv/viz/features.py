"""Feature visualization: the input a channel responds to most (Olah et al., Distill 2017; Lucid).

An image is optimised by gradient ascent to maximise the mean activation of one channel of a
layer. Left alone this finds high-frequency patterns that no photograph contains; Lucid's
remedies are here: a decorrelated Fourier parameterization (each frequency scaled by ``1/f``,
colours decorrelated with ImageNet's colour covariance), a sigmoid to keep pixels in [0, 1],
random jitter, scaling and rotation at every step (the image must work under all of them), and
optional L2 and total-variation penalties.

Example:
  >>> import jax, jax.numpy as jnp
  >>> from jaxconv.models import create_model
  >>> from jaxconv.viz import activation_maximization
  >>> model = create_model("lenet5")
  >>> variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
  >>> img = activation_maximization(model, variables, layer="conv2", channel=3, key=jax.random.key(1),
  ...                               size=28, channels=1, steps=8)
  >>> img.shape, bool(img.min() >= 0 and img.max() <= 1)
  ((28, 28, 1), True)
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, Optional, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxconv.viz.attribution import _call_static
from jaxconv.viz.cam import _run, layer_output

Array = jax.Array

# Lucid's square root of ImageNet's RGB colour covariance (its SVD), columns scaled to norm <= 1.
_COLOR_SQRT = np.array([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]], np.float32)
_COLOR_SQRT = _COLOR_SQRT / np.max(np.linalg.norm(_COLOR_SQRT, axis=0))

# Lucid's standard robustness transforms, for 224-pixel images: pad 12 px (grey), jitter 8 px,
# scale by 0.9-1.1, rotate by up to 10 degrees. Padding and jitter scale with the image size.
STANDARD_TRANSFORMS = {"pad": 12 / 224, "jitter": 8 / 224, "scale": (0.9, 1.1), "rotate": 10.0}

PARAMETERIZATIONS = ("fourier", "pixel")


def _fourier_scale(size: int, decay_power: float = 1.0) -> np.ndarray:
  """``1 / max(f, 1/size)^decay`` over the rfft2 frequencies, times ``size`` (Lucid's fft_image)."""
  fy = np.fft.fftfreq(size)[:, None]
  fx = np.fft.rfftfreq(size)[None, :]
  freqs = np.sqrt(fx * fx + fy * fy)
  return (1.0 / np.maximum(freqs, 1.0 / size) ** decay_power * size).astype(np.float32)


def _image(param: Array, parameterization: str, size: int, channels: int, unit_norm: bool) -> Array:
  """The ``[size, size, channels]`` image a parameter stands for."""
  if parameterization == "fourier":
    spectrum = (param[0] + 1j * param[1]) * _fourier_scale(size)[None]
    t = jnp.fft.irfft2(spectrum, s=(size, size)).transpose(1, 2, 0) / 4.0   # [size, size, C]
  else:
    t = param
  if unit_norm:
    return t / jnp.sqrt(jnp.sum(t * t) + 1e-12)
  if channels == 3:
    t = (t.reshape(-1, 3) @ jnp.asarray(_COLOR_SQRT.T)).reshape(t.shape)
  return jax.nn.sigmoid(t)


def _init_param(key: Array, parameterization: str, size: int, channels: int) -> Array:
  if parameterization == "fourier":
    return 0.01 * jax.random.normal(key, (2, channels, size, size // 2 + 1))
  return 0.01 * jax.random.normal(key, (size, size, channels))


def _transform(key: Array, img: Array, spec: dict) -> Array:
  """Pad, then one random affine resampling (jitter, scale, rotation) back to the padded size."""
  size = img.shape[0]
  pad = int(round(spec.get("pad", 0.0) * size))
  if pad:
    img = jnp.pad(img, ((pad, pad), (pad, pad), (0, 0)), constant_values=0.5)
  n = img.shape[0]
  k1, k2, k3 = jax.random.split(key, 3)
  jitter = spec.get("jitter", 0.0) * size
  shift = jax.random.uniform(k1, (2,), minval=-jitter, maxval=jitter)
  lo, hi = spec.get("scale", (1.0, 1.0))
  scale = jax.random.uniform(k2, (), minval=lo, maxval=hi)
  angle = jnp.deg2rad(jax.random.uniform(k3, (), minval=-spec.get("rotate", 0.0), maxval=spec.get("rotate", 0.0)))
  c = (n - 1) / 2.0
  yy, xx = jnp.meshgrid(jnp.arange(n, dtype=jnp.float32) - c, jnp.arange(n, dtype=jnp.float32) - c, indexing="ij")
  cos, sin = jnp.cos(angle), jnp.sin(angle)
  src_y = (cos * yy - sin * xx) / scale + c + shift[0]
  src_x = (sin * yy + cos * xx) / scale + c + shift[1]
  return jnp.stack([jax.scipy.ndimage.map_coordinates(img[..., ch], [src_y, src_x], order=1, mode="nearest")
                    for ch in range(img.shape[-1])], axis=-1)


def _total_variation(img: Array) -> Array:
  return jnp.abs(img[1:] - img[:-1]).sum() + jnp.abs(img[:, 1:] - img[:, :-1]).sum()


def activation_maximization(model: nn.Module, variables: Any, *, layer: str, channel: Union[int, Sequence[int]],
                            key: Array,
                            steps: int = 256, size: int = 128, channels: int = 3,
                            parameterization: str = "fourier", transforms: Union[bool, dict] = True,
                            lr: float = 0.05, l2: float = 0.0, tv: float = 0.0, unit_norm: bool = False,
                            mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None) -> Array:
  """An image that maximises the mean activation of ``channel`` in ``layer``.

  Maximises ``mean_hw A[..., channel] - l2 * mean((img - 0.5)^2) - tv * TV(img) / size^2`` with
  Adam (``lr``, Lucid's 0.05) for ``steps`` steps, ``A`` the layer's output (eval mode) for the
  transformed image.

  Args:
    model, variables: a Flax model and its variables.
    layer: module path (see :mod:`jaxconv.viz.cam`).
    channel: the channel of the layer's output (last axis), or several: they are optimised
      together (``vmap``, one compilation) and the images stacked.
    key: PRNG key (initial image and transforms).
    steps: optimisation steps.
    size: image side.
    channels: image channels (3: RGB with Lucid's colour decorrelation).
    parameterization: ``"fourier"`` (Lucid's decorrelated spectrum) or ``"pixel"``.
    transforms: ``True`` for Lucid's standard robustness transforms (:data:`STANDARD_TRANSFORMS`:
      pad, jitter, scale, rotate), a dict overriding them, or ``False``.
    lr, l2, tv: step size and penalty weights.
    unit_norm: constrain the image to unit L2 norm instead of a sigmoid range (for a linear
      layer the optimum is then the normalised kernel itself).
    mean, std: per-channel normalisation the model expects, applied to the image in [0, 1].

  Returns:
    float32 ``[size, size, channels]``, in [0, 1] (unit norm with ``unit_norm``);
    ``[len(channel), size, size, channels]`` for several channels.
  """
  if parameterization not in PARAMETERIZATIONS:
    raise ValueError(f"parameterization must be one of {', '.join(PARAMETERIZATIONS)}; got {parameterization!r}.")
  for name, value in (("steps", steps), ("size", size), ("channels", channels)):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
      raise ValueError(f"{name} must be a positive int; got {value!r}.")
  spec = dict(STANDARD_TRANSFORMS) if transforms is True else (dict(STANDARD_TRANSFORMS, **transforms)
                                                              if isinstance(transforms, dict) else None)
  if isinstance(transforms, dict) and set(transforms) - set(STANDARD_TRANSFORMS):
    raise ValueError(f"transforms takes the keys {sorted(STANDARD_TRANSFORMS)}; got {sorted(transforms)}.")
  norm_mean = jnp.zeros((channels,)) if mean is None else jnp.asarray(mean, jnp.float32)
  norm_std = jnp.ones((channels,)) if std is None else jnp.asarray(std, jnp.float32)
  probe = layer_output(model, variables, layer, jax.ShapeDtypeStruct((1, size, size, channels), jnp.float32))
  several = not isinstance(channel, (int, np.integer))
  chans = [int(c) for c in (channel if several else [channel])]
  if not chans or not all(0 <= c < probe.shape[-1] for c in chans):
    raise ValueError(f"channel must lie in [0, {probe.shape[-1]}) for layer {layer!r} (shape {probe.shape}); "
                     f"got {channel!r}.")

  # Static settings must hash: list-valued transforms become tuples.
  frozen = None if spec is None else tuple(sorted(
      (k, tuple(v) if isinstance(v, (list, tuple, np.ndarray)) else v) for k, v in spec.items()))
  settings = (steps, size, channels, parameterization, frozen, float(lr), float(l2), float(tv), bool(unit_norm))
  images = _call_static(_maximize, model, variables, jax.random.split(key, len(chans)),
                        jnp.asarray(chans), norm_mean, norm_std, layer=layer, settings=settings)
  return images if several else images[0]


# One compiled program per model, layer and settings, whatever the variables (arguments, not
# constants baked into the program): a second call with the same settings compiles nothing.
@functools.partial(jax.jit, static_argnames=("model", "layer", "settings"))
def _maximize(model, variables, keys, chans, norm_mean, norm_std, *, layer, settings):
  """One image per (key, channel), optimised together."""
  steps, size, channels, parameterization, spec, lr, l2, tv, unit_norm = settings
  spec = None if spec is None else dict(spec)

  def objective(param, k, channel):
    img = _image(param, parameterization, size, channels, unit_norm)
    seen = _transform(k, img, spec) if spec else img
    x = ((seen - norm_mean.reshape(1, 1, -1)) / norm_std.reshape(1, 1, -1))[None]
    act = _run(model, variables, x, [layer])[1][layer]
    value = jnp.take(act, channel, axis=-1).mean()
    if l2:
      value = value - l2 * jnp.mean((img - 0.5) ** 2)
    if tv:
      value = value - tv * _total_variation(img) / (size * size)
    return -value

  tx = optax.adam(lr)

  def run(key, channel):
    k0, key = jax.random.split(key)
    param = _init_param(k0, parameterization, size, channels)

    def step(carry, k):
      param, opt = carry
      grads = jax.grad(objective)(param, k, channel)
      updates, opt = tx.update(grads, opt, param)
      return (optax.apply_updates(param, updates), opt), None

    (param, _), _ = jax.lax.scan(step, (param, tx.init(param)), jax.random.split(key, steps))
    return _image(param, parameterization, size, channels, unit_norm)

  return jax.vmap(run)(keys, chans)
