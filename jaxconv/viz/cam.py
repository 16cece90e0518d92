"""Looking at a layer: its feature maps, and class activation maps (Grad-CAM, Grad-CAM++).

A layer is named by its Flax module path, ``"/"``-joined (``"stage4_block2"``,
``"inception5b"``, ``"block1/layer2/conv1"``); :func:`default_layer` gives each zoo family's
last convolutional stage, the layer Grad-CAM is usually shown for. The layer's output is read
(and, for the gradient, perturbed by a zero that the gradient is taken against) through
``flax.linen.intercept_methods``, so any Flax model works without changes to its code.

Example:
  >>> import jax, jax.numpy as jnp
  >>> from jaxconv.models import create_model
  >>> from jaxconv.viz import default_layer, grad_cam, intermediates
  >>> model = create_model("resnet18", num_classes=10, cifar_stem=True, width=8)
  >>> x = jnp.ones((2, 32, 32, 3))
  >>> variables = jax.jit(model.init)(jax.random.key(0), x)
  >>> default_layer(model)
  'stage4_block2'
  >>> grad_cam(model, variables, x, 3).shape                    # at the layer's resolution
  (2, 4, 4)
  >>> intermediates(model, variables, x, ["stem_conv", "stage2_block1"])["stage2_block1"].shape
  (2, 16, 16, 16)
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, Optional, Union

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxconv.viz.attribution import Target, _call_static, _check

Array = jax.Array


def _path(module: nn.Module) -> str:
  return "/".join(str(p) for p in module.path)


def default_layer(model: nn.Module) -> str:
  """The last convolutional stage of a zoo model (its output is what Grad-CAM looks at).

  ResNet: the last block (``stage4_block2`` for resnet18); VGG, AlexNet, LeNet-5, SmallCNN: the
  last pool; GoogLeNet: ``inception5b``; DenseNet: ``final_bn`` (torchvision's ``norm5``);
  MobileNetV2: ``final_conv``; SqueezeNet: the last Fire module.
  """
  kind = type(model).__name__
  if kind == "ResNet":
    return f"stage{len(model.stage_sizes)}_block{model.stage_sizes[-1]}"
  if kind == "VGG":
    return f"pool{sum(1 for v in model.config if v == 'M')}"
  if kind == "AlexNet":
    return "pool5"
  if kind == "GoogLeNet":
    return "inception5b"
  if kind == "DenseNet":
    return "final_bn"
  if kind == "MobileNetV2":
    return "final_conv"
  if kind == "SqueezeNet":
    return "fire8"
  if kind == "LeNet5":
    return "pool2"
  if kind == "SmallCNN":
    return f"pool{len(model.widths)}"
  raise ValueError(f"no default layer for {kind}; pass layer= (a module path such as 'block3/conv').")


def _run(model, variables, x, layers: Sequence[str], deltas: Optional[dict] = None, train: bool = False):
  """``(logits, {layer: output})``, adding ``deltas[layer]`` to each named layer's output."""
  seen: dict[str, Array] = {}

  def interceptor(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if context.method_name == "__call__":
      path = _path(context.module)
      if path in layers and path not in seen:
        if not isinstance(out, jax.Array):
          raise ValueError(f"layer {path!r} returns {type(out).__name__}, not an array; choose a layer inside it.")
        if deltas is not None:
          out = out + deltas[path]
        seen[path] = out
    return out

  with nn.intercept_methods(interceptor):
    logits = model.apply(variables, x, train=train)
  if isinstance(logits, tuple):
    logits = logits[0]
  missing = [p for p in layers if p not in seen]
  if missing:
    raise ValueError(f"no module at path(s) {missing} ran in {type(model).__name__}; module paths are "
                     f"'/'-joined names such as {_some_paths(model, variables, x)}.")
  return logits, seen


def _some_paths(model, variables, x) -> str:
  found: list[str] = []

  def interceptor(next_fun, args, kwargs, context):
    if context.method_name == "__call__" and context.module.path and len(found) < 400:
      found.append(_path(context.module))
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(interceptor):
    jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, x)
  tops = list(dict.fromkeys(p for p in found))
  return ", ".join(repr(p) for p in tops[:8]) + (f", ... ({len(tops)} in all)" if len(tops) > 8 else "")


def layer_output(model: nn.Module, variables: Any, layer: str, x) -> jax.ShapeDtypeStruct:
  """Shape and dtype of ``layer``'s output for ``x`` (an array or a ``jax.ShapeDtypeStruct``),
  by tracing only."""
  return jax.eval_shape(lambda x: _run(model, variables, x, [layer])[1][layer], x)


def intermediates(model: nn.Module, variables: Any, x: jax.typing.ArrayLike,
                  layers: Union[str, Sequence[str]]) -> dict[str, Array]:
  """The outputs of the named layers for ``x`` (eval mode): ``{path: [N, h, w, C]}``.

  Args:
    model, variables: a Flax model and its variables.
    x: ``[N, H, W, C]``.
    layers: one module path or several (see the module docstring); ``jaxconv.summary(model, ...)``
      lists a model's layers.
  """
  layers = [layers] if isinstance(layers, str) else list(layers)
  _, seen = _run(model, variables, jnp.asarray(x), layers)
  return {p: seen[p] for p in layers}


def _layer_grads(model, variables, x, target, layer):
  x, t = _check(lambda v: v, x, target)
  layer = default_layer(model) if layer is None else layer
  out = layer_output(model, variables, layer, x)
  if len(out.shape) != 4:
    raise ValueError(f"layer {layer!r} gives shape {out.shape}; Grad-CAM needs feature maps [N, h, w, C].")
  a, g = _call_static(_acts_and_grads, model, variables, x, t, {layer: jnp.zeros(out.shape, out.dtype)},
                      layer=layer)
  return x, a, g


# Compiled whole: called eagerly, the gradient would run (and compile) op by op.
@functools.partial(jax.jit, static_argnames=("model", "layer"))
def _acts_and_grads(model, variables, x, t, zero, *, layer):
  def score(deltas):
    logits, seen = _run(model, variables, x, [layer], deltas)
    return jnp.take_along_axis(logits, t[:, None], axis=1).sum(), seen[layer]

  grads, acts = jax.grad(score, has_aux=True)(zero)
  return acts.astype(jnp.float32), grads[layer].astype(jnp.float32)


def _finish(cam: Array, x: Array, upsample: bool) -> Array:
  cam = jax.nn.relu(cam)
  if not upsample:
    return cam
  # pytorch-grad-cam: scale to [0, 1], resize (bilinear, half-pixel centres), scale again.
  cam = _unit_range(cam)
  cam = jax.image.resize(cam, (cam.shape[0],) + x.shape[1:3], method="linear", antialias=False)
  return _unit_range(cam)


def _unit_range(cam: Array) -> Array:
  cam = cam - cam.min((1, 2), keepdims=True)
  return cam / (1e-7 + cam.max((1, 2), keepdims=True))


def grad_cam(model: nn.Module, variables: Any, x: jax.typing.ArrayLike, target: Target, *,
             layer: Optional[str] = None, upsample: bool = False) -> Array:
  """Grad-CAM (Selvaraju et al. 2017): where in a layer's maps the target class is decided.

  ``cam = relu(sum_k a_k A_k)`` with ``a_k = mean_hw(d logit_target / d A_k)``, for the layer's
  output ``A [N, h, w, K]`` (eval mode).

  Args:
    model, variables: a Flax model and its variables.
    x: ``[N, H, W, C]``.
    target: class index, or ``[N]`` indices.
    layer: module path; default :func:`default_layer`.
    upsample: resize to the input's ``H x W`` (bilinear, half-pixel centres) and scale each map
      to [0, 1], as pytorch-grad-cam returns it.

  Returns:
    ``[N, h, w]`` non-negative (or ``[N, H, W]`` in [0, 1] with ``upsample``).
  """
  x, a, g = _layer_grads(model, variables, x, target, layer)
  weights = g.mean((1, 2), keepdims=True)
  return _finish((weights * a).sum(-1), x, upsample)


def grad_cam_plus_plus(model: nn.Module, variables: Any, x: jax.typing.ArrayLike, target: Target, *,
                       layer: Optional[str] = None, upsample: bool = False) -> Array:
  """Grad-CAM++ (Chattopadhay et al. 2018), with pytorch-grad-cam's closed-form weights.

  ``a_k = sum_hw relu(g) * g^2 / (2 g^2 + sum_hw(A_k) g^3 + 1e-6)`` (zero where ``g = 0``),
  ``g = d logit_target / d A``; then as :func:`grad_cam`.
  """
  x, a, g = _layer_grads(model, variables, x, target, layer)
  g2 = g * g
  alpha = g2 / (2 * g2 + a.sum((1, 2), keepdims=True) * g2 * g + 1e-6)
  alpha = jnp.where(g != 0, alpha, 0.0)
  weights = (jax.nn.relu(g) * alpha).sum((1, 2), keepdims=True)
  return _finish((weights * a).sum(-1), x, upsample)
