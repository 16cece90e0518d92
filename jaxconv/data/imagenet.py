"""ImageNet conventions of torchvision's pretrained weights: preprocessing and class indices.

torchvision's classification weights expect ``resize(256) -> center_crop(224) -> [0, 1] ->
normalize(IMAGENET_MEAN, IMAGENET_STD)`` (its ``weights.transforms()``), and their 1000 outputs
follow the ImageNet-1k synset order (WordNet IDs sorted: ``n01440764`` "tench" is 0). Here the
same, channels-last.

Example:
  >>> import numpy as np
  >>> from jaxconv.data import imagenet_classes, imagenet_preprocess
  >>> image = np.zeros((300, 400, 3), np.uint8)          # H, W, RGB
  >>> imagenet_preprocess(image).shape
  (224, 224, 3)
  >>> imagenet_classes()[:2]
  ['tench', 'goldfish']
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from importlib import resources

import jax
import jax.numpy as jnp
import numpy as np

IMAGENET_MEAN = (0.485, 0.456, 0.406)
"""Per-channel RGB mean of ImageNet images in [0, 1]."""
IMAGENET_STD = (0.229, 0.224, 0.225)
"""Per-channel RGB standard deviation of ImageNet images in [0, 1]."""


def imagenet_preprocess(images, *, resize: int = 256, crop: int = 224,
                        mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> jax.Array:
  """torchvision's ImageNet evaluation transform, channels-last.

  The shorter side is resized to ``resize`` (bilinear with antialiasing, torchvision's
  ``Resize(resize)``: the longer side becomes ``int(resize * long / short)``), the center
  ``crop x crop`` is cut (top/left offsets ``round((size - crop) / 2)``), values are scaled to
  [0, 1] and normalised: ``(x - mean) / std`` per channel. A ``uint8`` image is rounded back to
  ``uint8`` after the resize, as torchvision does on PIL images and ``uint8`` tensors (within 1
  of its values); a float image is taken as already in [0, 1].

  Args:
    images: ``[H, W, 3]`` or ``[N, H, W, 3]``, ``uint8`` (0-255) or float (0-1).
    resize: the shorter side after resizing; ``None`` skips the resize.
    crop: the side of the center crop.
    mean, std: per-channel normalisation.

  Returns:
    float32 ``[crop, crop, 3]`` or ``[N, crop, crop, 3]``.
  """
  x = np.asarray(images) if not isinstance(images, jax.Array) else images
  if x.ndim not in (3, 4) or x.shape[-1] != len(mean):
    raise ValueError(f"images must be [H, W, {len(mean)}] or [N, H, W, {len(mean)}] (channels-last); "
                     f"got shape {x.shape}.")
  if not (jnp.issubdtype(x.dtype, jnp.floating) or x.dtype == np.uint8):
    raise TypeError(f"images must be uint8 (0-255) or float (0-1); got dtype {x.dtype}.")
  h, w = x.shape[-3:-1]
  if resize is not None:
    short, long = (h, w) if h <= w else (w, h)
    new_long = int(resize * long / short)
    h, w = (resize, new_long) if h <= w else (new_long, resize)
  if crop > min(h, w):
    raise ValueError(f"crop {crop} is larger than the resized image ({h}x{w}).")
  return _preprocess(jnp.asarray(x), (h, w), crop, tuple(mean), tuple(std))


@functools.partial(jax.jit, static_argnums=(1, 2, 3, 4))
def _preprocess(x, size, crop, mean, std):
  uint8 = x.dtype == jnp.uint8
  x = x.astype(jnp.float32)
  if x.shape[-3:-1] != size:
    x = jax.image.resize(x, x.shape[:-3] + size + x.shape[-1:], method="linear", antialias=True)
    if uint8:
      x = jnp.clip(jnp.round(x), 0, 255)
  top, left = int(round((size[0] - crop) / 2.0)), int(round((size[1] - crop) / 2.0))
  x = x[..., top:top + crop, left:left + crop, :]
  if uint8:
    x = x / 255.0
  shape = (1,) * (x.ndim - 1) + (len(mean),)
  return (x - jnp.asarray(mean, jnp.float32).reshape(shape)) / jnp.asarray(std, jnp.float32).reshape(shape)


@functools.cache
def imagenet_classes() -> list[str]:
  """The 1000 ImageNet-1k class names in the index order of torchvision's weights."""
  text = resources.files("jaxconv.data").joinpath("imagenet_classes.txt").read_text(encoding="utf-8")
  names = text.splitlines()
  if len(names) != 1000:   # pragma: no cover - a damaged install
    raise RuntimeError(f"imagenet_classes.txt holds {len(names)} names, not 1000; reinstall jaxconv.")
  return names


def decode_predictions(logits, top: int = 5) -> list[list[tuple[int, str, float]]]:
  """The ``top`` classes of each row of ImageNet ``logits [N, 1000]`` as ``(index, name, probability)``."""
  logits = np.asarray(logits, np.float64)
  if logits.ndim != 2 or logits.shape[1] != 1000:
    raise ValueError(f"logits must be [N, 1000] (ImageNet classes); got shape {logits.shape}.")
  p = np.exp(logits - logits.max(1, keepdims=True))
  p /= p.sum(1, keepdims=True)
  names = imagenet_classes()
  order = np.argsort(-p, axis=1, kind="stable")[:, :top]
  return [[(int(i), names[i], float(row[i])) for i in idx] for idx, row in zip(order, p)]
