"""An illustrated report of what a trained CNN has learned: PNG files and an ``index.html``.

:func:`write_report` takes a model, its variables and test images; ``jaxconv viz`` joins it to a
training run. Sections: first-layer filters; feature maps of one test image per class (first
convolution and the Grad-CAM layer); Grad-CAM and integrated-gradients overlays for correctly
and wrongly classified test images; activation-maximization images for a few channels of a
layer.
"""

from __future__ import annotations

import html
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from jaxconv.viz import images as im
from jaxconv.viz.attribution import integrated_gradients
from jaxconv.viz.cam import default_layer, grad_cam, intermediates, layer_output
from jaxconv.viz.features import activation_maximization


def _first_conv(model, variables, image_shape) -> tuple[str, np.ndarray]:
  """The first convolution the model applies: its path and kernel."""
  from jaxconv.summary import summary

  for row in summary(model, tuple(image_shape), variables=variables).layers:
    node = variables["params"]
    for part in row.name.split("/"):
      node = node.get(part, {}) if isinstance(node, dict) else {}
    kernel = node.get("kernel") if isinstance(node, dict) else None
    if kernel is not None and np.ndim(kernel) == 4:
      return row.name, np.asarray(kernel)
  raise ValueError(f"{type(model).__name__} has no 2-D convolution to show.")


def write_report(model, variables: Any, x_test: np.ndarray, y_test: np.ndarray, out: str | os.PathLike, *,
                 class_names: Optional[Sequence[str]] = None, mean=None, std=None, layer: Optional[str] = None,
                 channels: int = 4, examples: int = 4, steps: int = 128, seed: int = 0,
                 log: Callable[[str], None] = lambda m: print(m, file=sys.stderr, flush=True)) -> Path:
  """Writes the report into ``out`` and returns the path of its ``index.html``.

  Args:
    model, variables: a Flax image classifier (``apply(variables, x) -> logits``).
    x_test, y_test: test images ``[N, H, W, C]`` (``uint8`` 0-255 or float 0-1) and labels.
    out: folder for the PNG files and ``index.html`` (created).
    class_names: names of the classes (default: their indices).
    mean, std: the per-channel normalisation the model was trained with (images in [0, 1]).
    layer: the layer for Grad-CAM, feature maps and activation maximization
      (default :func:`jaxconv.viz.default_layer`).
    channels: channels of ``layer`` to visualise by activation maximization.
    examples: correct and misclassified test images shown with attributions (each).
    steps: activation-maximization steps.
    seed: PRNG seed.
    log: progress messages.
  """
  t0 = time.perf_counter()
  out = Path(out)
  out.mkdir(parents=True, exist_ok=True)
  x01 = np.asarray(x_test, np.float32) / (255.0 if np.asarray(x_test).dtype == np.uint8 else 1.0)
  y = np.asarray(y_test).astype(np.int64)
  c = x01.shape[-1]
  mean = np.zeros(c, np.float32) if mean is None else np.asarray(mean, np.float32).reshape(c)
  std = np.ones(c, np.float32) if std is None else np.asarray(std, np.float32).reshape(c)
  names = [str(n) for n in (class_names if class_names is not None else range(int(y.max()) + 1))]
  layer = layer or default_layer(model)
  scale = max(1, 128 // x01.shape[1])   # small images (digits) are enlarged without blurring

  def fn(x):   # logits of images in [0, 1]
    return model.apply(variables, (x - mean.reshape(1, 1, 1, c)) / std.reshape(1, 1, 1, c), train=False)

  sections: list[tuple[str, str, list[tuple[str, str]]]] = []

  log("viz: first-layer filters")
  first, kernel = _first_conv(model, variables, x01.shape[1:])
  im.save_image(out / "filters.png", im.kernel_grid(kernel), scale=8)
  sections.append(("First-layer filters", f"The {kernel.shape[-1]} kernels of <code>{html.escape(first)}</code> "
                   f"({kernel.shape[0]}x{kernel.shape[1]}, mid-grey = 0).", [("filters.png", first)]))

  log(f"viz: predictions on {len(x01)} test images")
  logits = np.concatenate([np.asarray(jax.jit(fn)(jnp.asarray(x01[i:i + 256]))) for i in range(0, len(x01), 256)])
  pred = logits.argmax(1)
  accuracy = float((pred == y).mean())

  log(f"viz: feature maps of one test image per class ({first}, {layer})")
  picks = [int(np.flatnonzero(y == k)[0]) for k in range(len(names)) if np.any(y == k)]
  maps = intermediates(model, variables, (x01[picks] - mean) / std, [first, layer])
  items = []
  for row, i in enumerate(picks):
    stem = f"features-{y[i]}"
    im.save_image(out / f"{stem}-input.png", im.as_rgb(x01[i]), scale=scale)
    im.save_image(out / f"{stem}-first.png", im.feature_grid(np.asarray(maps[first][row])), scale=4)
    im.save_image(out / f"{stem}-layer.png", im.feature_grid(np.asarray(maps[layer][row])), scale=8)
    items += [(f"{stem}-input.png", f"class {names[y[i]]}"), (f"{stem}-first.png", first), (f"{stem}-layer.png", layer)]
  sections.append(("Feature maps", f"One test image per class, then its maps after <code>{html.escape(first)}</code> "
                   f"and <code>{html.escape(layer)}</code> (each channel scaled to its own range).", items))

  log(f"viz: Grad-CAM and integrated gradients for {examples} correct and {examples} misclassified images")
  right, wrong = np.flatnonzero(pred == y)[:examples], np.flatnonzero(pred != y)[:examples]
  items = []
  for kind, idx in (("correct", right), ("wrong", wrong)):
    if not len(idx):
      continue
    xs, targets = jnp.asarray(x01[idx]), jnp.asarray(pred[idx])
    normed = (xs - mean.reshape(1, 1, 1, c)) / std.reshape(1, 1, 1, c)
    cams = np.asarray(grad_cam(model, variables, normed, targets, layer=layer, upsample=True))
    ig = np.asarray(jnp.abs(integrated_gradients(fn, xs, targets, steps=32)).sum(-1))
    for n, i in enumerate(idx):
      name = f"attr-{kind}-{n}"
      panel = np.concatenate([im.as_rgb(x01[i]), im.overlay(x01[i], cams[n]), im.overlay(x01[i], ig[n])], axis=1)
      im.save_image(out / f"{name}.png", panel, scale=scale)
      items.append((f"{name}.png", f"true {names[y[i]]}, predicted {names[pred[i]]}"))
  sections.append(("Attribution", "Each panel: the test image, Grad-CAM of the predicted class at "
                   f"<code>{html.escape(layer)}</code>, and integrated gradients (|attribution| summed over "
                   "channels, black baseline, 32 steps).", items))

  n_ch = min(channels, layer_output(model, variables, layer, x01[:1]).shape[-1])
  log(f"viz: activation maximization of {n_ch} channels of {layer} ({steps} steps)")
  imgs = activation_maximization(model, variables, layer=layer, channel=list(range(n_ch)),
                                 key=jax.random.key(seed), steps=steps, size=x01.shape[1], channels=c,
                                 mean=mean, std=std)
  items = []
  for k in range(n_ch):
    im.save_image(out / f"maximize-{k}.png", im.as_rgb(np.asarray(imgs[k])), scale=scale)
    items.append((f"maximize-{k}.png", f"{layer} channel {k}"))
  sections.append(("Feature visualization", f"Images that maximise the mean activation of channels of "
                   f"<code>{html.escape(layer)}</code> (Fourier parameterization, jitter/scale/rotation).", items))

  index = out / "index.html"
  index.write_text(_html(type(model).__name__, accuracy, len(x01), sections), encoding="utf-8")
  log(f"viz: wrote {index} ({time.perf_counter() - t0:.0f} s)")
  return index


def _html(title: str, accuracy: float, count: int, sections) -> str:
  parts = [f"<!doctype html><meta charset='utf-8'><title>{html.escape(title)}: what it learned</title>",
           "<style>body{font-family:sans-serif;max-width:70em;margin:auto}figure{display:inline-block;"
           "margin:.3em;text-align:center}img{image-rendering:pixelated;max-width:32em}figcaption{font-size:80%}</style>",
           f"<h1>{html.escape(title)}</h1><p>Test accuracy {accuracy:.4f} on {count} images.</p>"]
  for heading, text, items in sections:
    parts.append(f"<h2>{html.escape(heading)}</h2><p>{text}</p>")
    parts += [f"<figure><img src='{html.escape(f)}'><figcaption>{html.escape(cap)}</figcaption></figure>"
              for f, cap in items]
  return "\n".join(parts) + "\n"
