"""Pictures of what a network holds: kernel and feature-map grids, heat-map overlays, receptive fields.

Every helper returns a NumPy image (``[H, W, 3]`` float in [0, 1], or ``[H, W]``); only
:func:`save_image` needs matplotlib.

Example:
  >>> import numpy as np
  >>> from jaxconv.viz import feature_grid, kernel_grid, overlay
  >>> kernel_grid(np.random.default_rng(0).normal(size=(5, 5, 3, 6))).shape   # 6 RGB tiles, 2 x 3
  (13, 19, 3)
  >>> feature_grid(np.ones((7, 7, 4))).shape                # 2 x 2 tiles of 7, 1-pixel gaps
  (17, 17)
  >>> overlay(np.zeros((8, 8, 1)), np.eye(8)).shape
  (8, 8, 3)
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Optional, Union

import numpy as np


def _tile(tiles: np.ndarray, cols: int, pad: int, fill: float) -> np.ndarray:
  """``tiles [n, h, w, (c)]`` laid out ``cols`` per row with ``pad`` pixels of ``fill`` between."""
  n, h, w = tiles.shape[:3]
  rows = math.ceil(n / cols)
  out = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad) + tiles.shape[3:], fill, np.float32)
  for i, t in enumerate(tiles):
    r, c = divmod(i, cols)
    out[pad + r * (h + pad):pad + r * (h + pad) + h, pad + c * (w + pad):pad + c * (w + pad) + w] = t
  return out


def kernel_grid(kernel, *, pad: int = 1, max_tiles: int = 256) -> np.ndarray:
  """A grid of convolution kernels ``[kh, kw, C_in, C_out]``.

  With three input channels (a first layer on RGB images) each output channel is one colour
  tile; otherwise each (output, input) pair is a grey tile, one row per output channel. Values
  are centred at 0.5 and scaled by the largest magnitude (per tile), so zero is mid-grey.
  """
  k = np.asarray(kernel, np.float32)
  if k.ndim != 4:
    raise ValueError(f"kernel must be [kh, kw, C_in, C_out]; got shape {k.shape}.")
  if k.shape[2] == 3:
    tiles = k.transpose(3, 0, 1, 2)                                     # [C_out, kh, kw, 3]
    scale = np.abs(tiles).reshape(len(tiles), -1).max(1)[:, None, None, None] + 1e-12
    tiles = (0.5 + 0.5 * tiles / scale)[:max_tiles]
    cols = math.ceil(math.sqrt(len(tiles)))
    return _tile(tiles, cols, pad, 1.0)
  cols = min(k.shape[2], max_tiles)
  rows = min(k.shape[3], max(1, max_tiles // cols))
  tiles = k.transpose(3, 2, 0, 1)[:rows, :cols].reshape(-1, k.shape[0], k.shape[1])
  scale = np.abs(tiles).reshape(len(tiles), -1).max(1)[:, None, None] + 1e-12
  return _tile(0.5 + 0.5 * tiles / scale, cols, pad, 1.0)


def feature_grid(fmap, *, pad: int = 1, max_channels: int = 64, cols: Optional[int] = None) -> np.ndarray:
  """A grid of one image's feature maps ``[h, w, C]``, each channel scaled to [0, 1]."""
  f = np.asarray(fmap, np.float32)
  if f.ndim != 3:
    raise ValueError(f"fmap must be one image's feature maps [h, w, C]; got shape {f.shape}.")
  tiles = f.transpose(2, 0, 1)[:max_channels]
  lo = tiles.reshape(len(tiles), -1).min(1)[:, None, None]
  hi = tiles.reshape(len(tiles), -1).max(1)[:, None, None]
  tiles = (tiles - lo) / np.maximum(hi - lo, 1e-12)
  return _tile(tiles, cols or math.ceil(math.sqrt(len(tiles))), pad, 1.0)


def _jet(v: np.ndarray) -> np.ndarray:
  """The 'jet' colour map (blue - cyan - yellow - red) for values in [0, 1]."""
  v = np.clip(v, 0.0, 1.0)[..., None]
  return np.clip(1.5 - np.abs(4.0 * v - np.array([3.0, 2.0, 1.0])), 0.0, 1.0)


def as_rgb(image) -> np.ndarray:
  """An image ``[H, W, C]`` (C = 1 or 3, any range) as RGB in [0, 1]: min-max scaled."""
  x = np.asarray(image, np.float32)
  if x.ndim != 3 or x.shape[-1] not in (1, 3):
    raise ValueError(f"image must be [H, W, 1] or [H, W, 3]; got shape {x.shape}.")
  x = (x - x.min()) / max(float(x.max() - x.min()), 1e-12)
  return np.repeat(x, 3, axis=-1) if x.shape[-1] == 1 else x


def overlay(image, heat, *, alpha: float = 0.5) -> np.ndarray:
  """``heat [H, W]`` (any non-negative range, scaled to [0, 1]) in the jet colours over ``image``.

  ``out = (1 - alpha) * image + alpha * jet(heat / max(heat))``; a heat map at another resolution
  (a Grad-CAM map at its layer's) is resized to the image first (nearest neighbour).
  """
  img = as_rgb(image)
  h = np.asarray(heat, np.float32)
  if h.ndim != 2:
    raise ValueError(f"heat must be [H, W]; got shape {h.shape}.")
  if h.shape != img.shape[:2]:
    rows = (np.arange(img.shape[0]) * h.shape[0] // img.shape[0])
    cols = (np.arange(img.shape[1]) * h.shape[1] // img.shape[1])
    h = h[rows][:, cols]
  h = h / max(float(h.max()), 1e-12)
  return (1 - alpha) * img + alpha * _jet(h)


def receptive_field_box(model, image_shape: Sequence[int], layer: str, unit: Sequence[int],
                        variables=None) -> tuple[int, int, int, int]:
  """``(top, left, height, width)`` of the input pixels that ``unit`` = ``(i, j)`` of ``layer`` sees.

  From :func:`jaxconv.summary`'s receptive fields: ``top = start + i * jump``, ``height = size``
  per dimension (it may extend past the image into the padding).
  """
  from jaxconv.summary import summary

  rows = {row.name: row for row in summary(model, tuple(image_shape), variables=variables).layers}
  if layer not in rows:
    raise ValueError(f"no layer {layer!r} in the summary; layers: {', '.join(list(rows)[:12])}, ...")
  rf = rows[layer].receptive_field
  if rf is None or len(rf.size) != 2:
    raise ValueError(f"layer {layer!r} has no 2-D receptive field ({rf}).")
  i, j = unit
  return (int(rf.start[0] + i * rf.jump[0]), int(rf.start[1] + j * rf.jump[1]), int(rf.size[0]), int(rf.size[1]))


def draw_box(image, box: tuple[int, int, int, int], *, color=(1.0, 0.0, 0.0)) -> np.ndarray:
  """An RGB copy of ``image`` with a one-pixel rectangle ``(top, left, height, width)`` (clipped)."""
  out = as_rgb(image).copy()
  top, left, h, w = box
  bottom, right = top + h - 1, left + w - 1
  H, W = out.shape[:2]
  rows = slice(max(top, 0), min(bottom, H - 1) + 1)
  cols = slice(max(left, 0), min(right, W - 1) + 1)
  for r in (top, bottom):
    if 0 <= r < H:
      out[r, cols] = color
  for c in (left, right):
    if 0 <= c < W:
      out[rows, c] = color
  return out


def save_image(path: Union[str, os.PathLike], image, *, scale: int = 1) -> Path:
  """Writes ``image`` (``[H, W]`` grey or ``[H, W, 3]`` RGB, in [0, 1]) as a PNG, each pixel
  repeated ``scale`` times (small digits stay sharp). Needs matplotlib."""
  try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
  except ImportError as e:
    raise ImportError("writing images needs matplotlib: pip install matplotlib "
                      "(or pip install -e \".[viz]\" in a checkout)") from e
  img = np.clip(np.asarray(image, np.float32), 0.0, 1.0)
  if scale > 1:
    img = img.repeat(scale, 0).repeat(scale, 1)
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  plt.imsave(path, img, cmap="gray" if img.ndim == 2 else None, vmin=0.0, vmax=1.0)
  return path
