"""Minimal stock models, the peers of the model suites: plain Flax and (lazily) PyTorch.

They use only ``flax.linen.Conv``/``BatchNorm``/``Dense`` (or ``torch.nn``), nothing from
jaxconv, so "jaxconv vs stock Flax" measures what jaxconv changes. Same architectures as the
zoo's: LeNet-5 (28x28, first conv padded by 2), ResNet-18 CIFAR variant (3x3 stem, no max
pool), ResNet-50 v1.5 (stride on the 3x3 of each bottleneck), MobileNetV2 (width 1.0, ReLU6,
dropout 0.2) and VGG-16 (no batch norm; ``4096-4096`` classifier with dropout 0.5 on the 7x7 map
of a 224x224 input). They follow the zoo's calling contract: ``model.apply(variables, x,
train=...)`` with batch statistics in ``batch_stats``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


class StockLeNet5(nn.Module):
  """LeNet-5 for ``[N, 28, 28, 1]``: conv5(6, pad 2)-maxpool-conv5(16)-maxpool-120-84-classes, ReLU
  (the zoo's default ``lenet5``)."""

  num_classes: int = 10
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    del train
    x = nn.relu(nn.Conv(6, (5, 5), padding=[(2, 2), (2, 2)], dtype=self.dtype)(x))
    x = nn.max_pool(x, (2, 2), (2, 2))
    x = nn.relu(nn.Conv(16, (5, 5), padding="VALID", dtype=self.dtype)(x))
    x = nn.max_pool(x, (2, 2), (2, 2))
    x = x.reshape(x.shape[0], -1)
    x = nn.relu(nn.Dense(120, dtype=self.dtype)(x))
    x = nn.relu(nn.Dense(84, dtype=self.dtype)(x))
    return nn.Dense(self.num_classes, dtype=self.dtype, name="head")(x)


class _Basic(nn.Module):
  features: int
  stride: int
  dtype: Any

  @nn.compact
  def __call__(self, x, train):
    bn = lambda: nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=self.dtype)  # noqa: E731
    s = (self.stride, self.stride)
    y = nn.relu(bn()(nn.Conv(self.features, (3, 3), s, padding=[(1, 1), (1, 1)], use_bias=False, dtype=self.dtype)(x)))
    y = bn()(nn.Conv(self.features, (3, 3), padding=[(1, 1), (1, 1)], use_bias=False, dtype=self.dtype)(y))
    if self.stride != 1 or x.shape[-1] != self.features:
      x = bn()(nn.Conv(self.features, (1, 1), s, use_bias=False, dtype=self.dtype)(x))
    return nn.relu(x + y)


class _Bottleneck(nn.Module):
  features: int
  stride: int
  dtype: Any

  @nn.compact
  def __call__(self, x, train):
    bn = lambda: nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=self.dtype)  # noqa: E731
    s = (self.stride, self.stride)
    y = nn.relu(bn()(nn.Conv(self.features, (1, 1), use_bias=False, dtype=self.dtype)(x)))
    y = nn.relu(bn()(nn.Conv(self.features, (3, 3), s, padding=[(1, 1), (1, 1)], use_bias=False, dtype=self.dtype)(y)))
    y = bn()(nn.Conv(4 * self.features, (1, 1), use_bias=False, dtype=self.dtype)(y))
    if self.stride != 1 or x.shape[-1] != 4 * self.features:
      x = bn()(nn.Conv(4 * self.features, (1, 1), s, use_bias=False, dtype=self.dtype)(x))
    return nn.relu(x + y)


class StockResNet(nn.Module):
  """ResNet v1.5 in stock Flax: ``stage_sizes`` blocks per stage, widths 64-512.

  ``cifar_stem`` uses a 3x3 stride-1 stem without max pool (for 32x32 inputs).
  """

  stage_sizes: Sequence[int]
  bottleneck: bool = False
  cifar_stem: bool = False
  num_classes: int = 1000
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    bn = lambda: nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=self.dtype)  # noqa: E731
    if self.cifar_stem:
      x = nn.relu(bn()(nn.Conv(64, (3, 3), padding=[(1, 1), (1, 1)], use_bias=False, dtype=self.dtype)(x)))
    else:
      x = nn.relu(bn()(nn.Conv(64, (7, 7), (2, 2), padding=[(3, 3), (3, 3)], use_bias=False, dtype=self.dtype)(x)))
      x = nn.max_pool(x, (3, 3), (2, 2), padding=[(1, 1), (1, 1)])
    block = _Bottleneck if self.bottleneck else _Basic
    for i, n in enumerate(self.stage_sizes):
      for j in range(n):
        x = block(64 * 2**i, 2 if (i > 0 and j == 0) else 1, self.dtype)(x, train)
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.num_classes, dtype=self.dtype, name="head")(x)


# MobileNetV2's inverted residual rows: (expansion, channels, repeats, first stride).
_MOBILENET_V2 = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                 (6, 320, 1, 1))
_VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


class StockMobileNetV2(nn.Module):
  """MobileNetV2 (width 1.0) in stock Flax: depthwise convolutions as ``feature_group_count``."""

  num_classes: int = 1000
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    bn = lambda: nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=self.dtype)  # noqa: E731
    conv = lambda f, k, s=1, groups=1: nn.Conv(  # noqa: E731
        f, (k, k), (s, s), padding=[((k - 1) // 2,) * 2] * 2, feature_group_count=groups, use_bias=False,
        dtype=self.dtype)
    x = nn.relu6(bn()(conv(32, 3, 2)(x)))
    for t, c, n, s in _MOBILENET_V2:
      for j in range(n):
        stride, cin = (s if j == 0 else 1), x.shape[-1]
        y = nn.relu6(bn()(conv(cin * t, 1)(x))) if t != 1 else x
        y = nn.relu6(bn()(conv(cin * t, 3, stride, groups=cin * t)(y)))
        y = bn()(conv(c, 1)(y))
        x = x + y if stride == 1 and cin == c else y
    x = nn.relu6(bn()(conv(1280, 1)(x)))
    x = nn.Dropout(0.2, deterministic=not train)(jnp.mean(x, axis=(1, 2)))
    return nn.Dense(self.num_classes, dtype=self.dtype, name="head")(x)


class StockVGG16(nn.Module):
  """VGG-16 in stock Flax: 3x3 convolutions with bias, 2x2 max pools, two 4096-wide layers."""

  num_classes: int = 1000
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    for v in _VGG16:
      if v == "M":
        x = nn.max_pool(x, (2, 2), (2, 2))
      else:
        x = nn.relu(nn.Conv(v, (3, 3), padding=[(1, 1), (1, 1)], dtype=self.dtype)(x))
    x = x.reshape(x.shape[0], -1)
    for _ in range(2):
      x = nn.Dropout(0.5, deterministic=not train)(nn.relu(nn.Dense(4096, dtype=self.dtype)(x)))
    return nn.Dense(self.num_classes, dtype=self.dtype, name="head")(x)


STOCK_MODELS = ("lenet5", "resnet18_cifar", "resnet50", "mobilenet_v2", "vgg16")


def stock_flax_model(name: str, num_classes: int, dtype: Any = jnp.float32) -> nn.Module:
  """``lenet5``, ``resnet18_cifar``, ``resnet50``, ``mobilenet_v2`` or ``vgg16`` in stock Flax.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> m = stock_flax_model("lenet5", 10)
    >>> v = jax.eval_shape(lambda: m.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1))))
    >>> jax.eval_shape(m.apply, v, jnp.zeros((2, 28, 28, 1))).shape
    (2, 10)
  """
  if name == "lenet5":
    return StockLeNet5(num_classes, dtype)
  if name == "resnet18_cifar":
    return StockResNet((2, 2, 2, 2), cifar_stem=True, num_classes=num_classes, dtype=dtype)
  if name == "resnet50":
    return StockResNet((3, 4, 6, 3), bottleneck=True, num_classes=num_classes, dtype=dtype)
  if name == "mobilenet_v2":
    return StockMobileNetV2(num_classes, dtype)
  if name == "vgg16":
    return StockVGG16(num_classes, dtype)
  raise ValueError(f"unknown stock model {name!r}; choose from {', '.join(STOCK_MODELS)}.")


def torch_model(torch: Any, name: str, num_classes: int, spatial: int = 224) -> Any:
  """The same architectures in ``torch.nn`` (channels-first), built only when PyTorch is present.

  ``spatial`` (the input's height and width) sizes VGG-16's first fully connected layer.
  """
  tnn = torch.nn

  class LeNet5(tnn.Module):
    def __init__(self):
      super().__init__()
      self.c1, self.c2 = tnn.Conv2d(1, 6, 5, padding=2), tnn.Conv2d(6, 16, 5)
      self.f1, self.f2, self.head = tnn.Linear(400, 120), tnn.Linear(120, 84), tnn.Linear(84, num_classes)

    def forward(self, x):
      F = tnn.functional
      x = F.max_pool2d(F.relu(self.c1(x)), 2)
      x = F.max_pool2d(F.relu(self.c2(x)), 2).flatten(1)
      return self.head(F.relu(self.f2(F.relu(self.f1(x)))))

  class Basic(tnn.Module):
    expansion = 1

    def __init__(self, cin, f, stride):
      super().__init__()
      self.body = tnn.Sequential(
          tnn.Conv2d(cin, f, 3, stride, 1, bias=False), tnn.BatchNorm2d(f), tnn.ReLU(inplace=True),
          tnn.Conv2d(f, f, 3, 1, 1, bias=False), tnn.BatchNorm2d(f))
      self.short = (tnn.Sequential(tnn.Conv2d(cin, f, 1, stride, bias=False), tnn.BatchNorm2d(f))
                    if stride != 1 or cin != f else tnn.Identity())

    def forward(self, x):
      return torch.relu(self.body(x) + self.short(x))

  class Bottleneck(tnn.Module):
    expansion = 4

    def __init__(self, cin, f, stride):
      super().__init__()
      self.body = tnn.Sequential(
          tnn.Conv2d(cin, f, 1, bias=False), tnn.BatchNorm2d(f), tnn.ReLU(inplace=True),
          tnn.Conv2d(f, f, 3, stride, 1, bias=False), tnn.BatchNorm2d(f), tnn.ReLU(inplace=True),
          tnn.Conv2d(f, 4 * f, 1, bias=False), tnn.BatchNorm2d(4 * f))
      self.short = (tnn.Sequential(tnn.Conv2d(cin, 4 * f, 1, stride, bias=False), tnn.BatchNorm2d(4 * f))
                    if stride != 1 or cin != 4 * f else tnn.Identity())

    def forward(self, x):
      return torch.relu(self.body(x) + self.short(x))

  class ResNet(tnn.Module):
    def __init__(self, stages, block, cifar):
      super().__init__()
      if cifar:
        stem = [tnn.Conv2d(3, 64, 3, 1, 1, bias=False), tnn.BatchNorm2d(64), tnn.ReLU(inplace=True)]
      else:
        stem = [tnn.Conv2d(3, 64, 7, 2, 3, bias=False), tnn.BatchNorm2d(64), tnn.ReLU(inplace=True),
                tnn.MaxPool2d(3, 2, 1)]
      layers, cin = list(stem), 64
      for i, n in enumerate(stages):
        for j in range(n):
          layers.append(block(cin, 64 * 2**i, 2 if (i > 0 and j == 0) else 1))
          cin = 64 * 2**i * block.expansion
      self.body = tnn.Sequential(*layers)
      self.head = tnn.Linear(cin, num_classes)

    def forward(self, x):
      return self.head(self.body(x).mean(dim=(2, 3)))

  def conv_bn(cin, cout, k, stride=1, groups=1, act=True):
    layers = [tnn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False), tnn.BatchNorm2d(cout)]
    return layers + [tnn.ReLU6(inplace=True)] if act else layers

  class InvertedResidual(tnn.Module):
    def __init__(self, cin, cout, stride, t):
      super().__init__()
      hidden = cin * t
      layers = conv_bn(cin, hidden, 1) if t != 1 else []
      self.body = tnn.Sequential(*layers, *conv_bn(hidden, hidden, 3, stride, hidden),
                                 *conv_bn(hidden, cout, 1, act=False))
      self.residual = stride == 1 and cin == cout

    def forward(self, x):
      return x + self.body(x) if self.residual else self.body(x)

  class MobileNetV2(tnn.Module):
    def __init__(self):
      super().__init__()
      layers, cin = conv_bn(3, 32, 3, 2), 32
      for t, c, n, s in _MOBILENET_V2:
        for j in range(n):
          layers.append(InvertedResidual(cin, c, s if j == 0 else 1, t))
          cin = c
      self.body = tnn.Sequential(*layers, *conv_bn(cin, 1280, 1))
      self.head = tnn.Sequential(tnn.Dropout(0.2), tnn.Linear(1280, num_classes))

    def forward(self, x):
      return self.head(self.body(x).mean(dim=(2, 3)))

  class VGG16(tnn.Module):
    def __init__(self, spatial):
      super().__init__()
      layers, cin = [], 3
      for v in _VGG16:
        if v == "M":
          layers.append(tnn.MaxPool2d(2))
        else:
          layers += [tnn.Conv2d(cin, v, 3, padding=1), tnn.ReLU(inplace=True)]
          cin = v
      self.body = tnn.Sequential(*layers)
      flat = 512 * (spatial // 32) ** 2
      self.head = tnn.Sequential(tnn.Linear(flat, 4096), tnn.ReLU(inplace=True), tnn.Dropout(0.5),
                                 tnn.Linear(4096, 4096), tnn.ReLU(inplace=True), tnn.Dropout(0.5),
                                 tnn.Linear(4096, num_classes))

    def forward(self, x):
      return self.head(self.body(x).flatten(1))

  if name == "lenet5":
    return LeNet5()
  if name == "resnet18_cifar":
    return ResNet((2, 2, 2, 2), Basic, cifar=True)
  if name == "resnet50":
    return ResNet((3, 4, 6, 3), Bottleneck, cifar=False)
  if name == "mobilenet_v2":
    return MobileNetV2()
  if name == "vgg16":
    return VGG16(spatial)
  raise ValueError(f"unknown torch model {name!r}; choose from {', '.join(STOCK_MODELS)}.")
