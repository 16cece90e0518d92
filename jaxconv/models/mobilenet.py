"""MobileNetV2 (Sandler et al. 2018) and SqueezeNet (Iandola et al. 2016), as torchvision builds them."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, Optional

import flax.linen as nn
import jax

from jaxconv.models import _common
from jaxconv.models._registry import build, register_model
from jaxconv.nn import initializers
from jaxconv.nn import GlobalAvgPool, MaxPool
from jaxconv.nn.blocks import ConvNormAct, Fire, InvertedResidual

Array = jax.Array

# (expand ratio t, channels c, repeats n, first stride s), MobileNetV2 Table 2.
MOBILENET_V2_SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                         (6, 160, 3, 2), (6, 320, 1, 1))


def make_divisible(v: float, divisor: int = 8, min_value: Optional[int] = None) -> int:
  """torchvision's ``_make_divisible``: round to the nearest multiple of ``divisor``, never below 90%.

  Example:
    >>> make_divisible(32 * 0.35), make_divisible(1280 * 1.4)
    (16, 1792)
  """
  min_value = divisor if min_value is None else min_value
  new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
  if new_v < 0.9 * v:
    new_v += divisor
  return new_v


class MobileNetV2(_common.NormedZooModel):
  """MobileNetV2: ``conv3x3/2 (32) -> 17 inverted residuals -> conv1x1 (1280) -> pool -> dropout -> head``.

  ``inverted_residual_setting`` rows are ``(expand ratio t, channels c, repeats n, first stride
  s)`` (torchvision's argument of that name; the paper's Table 2 by default). Widths scale by
  ``width_mult`` (rounded to multiples of ``round_nearest``; the last conv
  scales only up). ``act`` (ReLU6) everywhere but the linear bottlenecks. ``cifar_stem`` uses stride 1 in
  the first conv (and in the second stage's first block), for 32x32 images. He-normal fan-out
  convolutions, ``N(0, 0.01)`` head, zero biases. 3,504,872 parameters at width 1.0.

  Features: ``stem`` (stride 2), ``stage1``..``stage7`` (one per row of the setting),
  ``pre_logits`` ``[N, 1280]``.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxconv.models import create_model
    >>> model = create_model("mobilenet_v2", num_classes=10, width_mult=0.25)
    >>> x = jnp.zeros((1, 32, 32, 3))
    >>> jax.eval_shape(model.init_with_output, jax.random.key(0), x)[0].shape
    (1, 10)
  """

  width_mult: float = 1.0
  inverted_residual_setting: Sequence[tuple[float, int, int, int]] = MOBILENET_V2_SETTINGS
  round_nearest: int = 8
  dropout_rate: float = 0.2
  cifar_stem: bool = False
  act: Callable[[jax.Array], jax.Array] = nn.relu6

  @nn.compact
  def __call__(self, x: jax.typing.ArrayLike, train: bool = False, return_features: bool = False):
    x = _common.check_input(self, x)
    if not self.width_mult > 0:
      raise ValueError(f"width_mult must be > 0; got {self.width_mult!r}.")
    conv = _common.conv_builder(self, initializers.kaiming_normal_fan_out)
    norm = _common.norm_builder(self, train)
    cna = functools.partial(ConvNormAct, conv=conv, norm=norm, act=self.act)
    feats = {}
    c = make_divisible(32 * self.width_mult, self.round_nearest)
    x = cna(c, 3, stride=1 if self.cifar_stem else 2, name="stem")(x)
    feats["stem"] = x
    for i, (t, ch, n, s) in enumerate(self.inverted_residual_setting):
      out = make_divisible(ch * self.width_mult, self.round_nearest)
      if self.cifar_stem and i == 1:
        s = 1
      for j in range(n):
        x = InvertedResidual(out, s if j == 0 else 1, t, conv, norm, nn.relu6, name=f"stage{i + 1}_block{j + 1}")(x)
      feats[f"stage{i + 1}"] = x
    last = make_divisible(1280 * max(1.0, self.width_mult), self.round_nearest)
    x = cna(last, 1, name="final_conv")(x)
    x = GlobalAvgPool(name="pool")(x)
    feats["pre_logits"] = x
    x = _common.dropout(self, x, self.dropout_rate, train, "dropout")
    logits = _common.dense(self, self.num_classes, "head", initializers.normal(0.01))(x)
    return _common.output(logits, feats, return_features)


@register_model
def mobilenet_v2(**kw: Any) -> MobileNetV2:
  """MobileNetV2 (torchvision, width 1.0): 3,504,872 parameters."""
  return build(MobileNetV2, "mobilenet_v2", {}, kw)


# Per version: stem (features, kernel), then "M" (max pool 3x3/2, ceil) or Fire (squeeze, e1, e3).
SQUEEZENET_CONFIGS = {
    "1_0": ((96, 7), ("M", (16, 64, 64), (16, 64, 64), (32, 128, 128), "M", (32, 128, 128), (48, 192, 192),
                     (48, 192, 192), (64, 256, 256), "M", (64, 256, 256))),
    "1_1": ((64, 3), ("M", (16, 64, 64), (16, 64, 64), "M", (32, 128, 128), (32, 128, 128), "M",
                     (48, 192, 192), (48, 192, 192), (64, 256, 256), (64, 256, 256))),
}


class SqueezeNet(_common.ZooModel):
  """SqueezeNet 1.0 / 1.1: stem conv (stride 2), Fire modules between 3x3/2 max pools, conv head.

  The classifier is ``dropout -> conv1x1 (num_classes, the "head") -> ReLU -> global average``,
  as in the paper and torchvision. Init: He-uniform convolutions, ``N(0, 0.01)`` head, zero
  biases. 1,248,424 (1.0) and 1,235,496 (1.1) parameters.

  Features: ``stem`` (stride 2, before the first pool), ``stage1``.. (the Fire modules after each
  pool), ``pre_logits`` ``[N, h, w, 512]`` (the head's input: a map, not a vector).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxconv.models import create_model
    >>> model = create_model("squeezenet1_1", num_classes=10)
    >>> x = jnp.zeros((1, 64, 64, 3))
    >>> jax.eval_shape(model.init_with_output, jax.random.key(0), x)[0].shape
    (1, 10)
  """

  version: str = "1_0"
  dropout_rate: float = 0.5

  @nn.compact
  def __call__(self, x: jax.typing.ArrayLike, train: bool = False, return_features: bool = False):
    x = _common.check_input(self, x)
    if self.version not in SQUEEZENET_CONFIGS:
      raise ValueError(f"SqueezeNet version must be one of {sorted(SQUEEZENET_CONFIGS)}; got {self.version!r}.")
    (stem_features, stem_kernel), layers = SQUEEZENET_CONFIGS[self.version]
    conv = _common.conv_builder(self, initializers.kaiming_uniform_fan_in)
    feats = {}
    x = nn.relu(conv(stem_features, stem_kernel, stride=2, name="stem_conv")(x))
    feats["stem"] = x
    stage, fire = 0, 1
    for layer in layers:
      if layer == "M":
        if stage:
          feats[f"stage{stage}"] = x
        stage += 1
        x = MaxPool(3, stride=2, ceil_mode=True, name=f"pool{stage}")(x)
        continue
      x = Fire(*layer, conv=conv, name=f"fire{fire}")(x)
      fire += 1
    feats[f"stage{stage}"] = x
    feats["pre_logits"] = x
    x = _common.dropout(self, x, self.dropout_rate, train, "dropout")
    x = nn.relu(_common.conv_builder(self, initializers.normal(0.01))(self.num_classes, 1, name="head")(x))
    logits = GlobalAvgPool(name="pool")(x)
    return _common.output(logits, feats, return_features)


@register_model
def squeezenet1_0(**kw: Any) -> SqueezeNet:
  """SqueezeNet 1.0: 1,248,424 parameters."""
  return build(SqueezeNet, "squeezenet1_0", dict(version="1_0"), kw)


@register_model
def squeezenet1_1(**kw: Any) -> SqueezeNet:
  """SqueezeNet 1.1 (2.4x cheaper, same accuracy): 1,235,496 parameters."""
  return build(SqueezeNet, "squeezenet1_1", dict(version="1_1"), kw)
