"""Minimal stock models, the peers of the model suites: plain Flax and (lazily) PyTorch.

They use only ``flax.linen.Conv``/``BatchNorm``/``Dense`` (or ``torch.nn``), nothing from
jaxconv, so "jaxconv vs stock Flax" measures what jaxconv changes. Same architectures as the
zoo's: LeNet-5 (28x28, first conv padded by 2), ResNet-18 CIFAR variant (3x3 stem, no max
pool), ResNet-50 v1.5 (stride on the 3x3 of each bottleneck). They follow the zoo's calling
contract: ``model.apply(variables, x, train=...)`` with batch statistics in ``batch_stats``.
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


def stock_flax_model(name: str, num_classes: int, dtype: Any = jnp.float32) -> nn.Module:
  """``lenet5``, ``resnet18_cifar`` or ``resnet50`` in stock Flax.

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
  raise ValueError(f"unknown stock model {name!r}; choose from lenet5, resnet18_cifar, resnet50.")


def torch_model(torch: Any, name: str, num_classes: int) -> Any:
  """The same architectures in ``torch.nn`` (channels-first), built only when PyTorch is present."""
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

  if name == "lenet5":
    return LeNet5()
  if name == "resnet18_cifar":
    return ResNet((2, 2, 2, 2), Basic, cifar=True)
  if name == "resnet50":
    return ResNet((3, 4, 6, 3), Bottleneck, cifar=False)
  raise ValueError(f"unknown torch model {name!r}; choose from lenet5, resnet18_cifar, resnet50.")
