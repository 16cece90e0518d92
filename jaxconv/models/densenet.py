"""DenseNet-BC (Huang et al. 2017) as torchvision builds it."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax

from jaxconv.models import _common
from jaxconv.models._registry import build, register_model
from jaxconv.nn import initializers
from jaxconv.nn import GlobalAvgPool, MaxPool
from jaxconv.nn.blocks import DenseBlock, Transition

Array = jax.Array


class DenseNet(_common.NormedZooModel):
  """DenseNet: stem, dense blocks joined by transitions (halving channels and resolution), head.

  Stem ``conv7x7/2 (init_features, no bias) -> bn -> relu -> maxpool 3x3/2`` (``cifar_stem``:
  ``conv3x3/1`` and no pool). Block ``i`` has ``block_config[i]`` :class:`DenseLayer`s adding
  ``growth_rate`` channels each (bottleneck ``bn_size * growth_rate``); a :class:`Transition`
  follows every block but the last; then ``bn -> relu -> global pool -> head``. He-normal
  (fan-in) convolutions and zero biases as torchvision. densenet121: 7,978,856 parameters.

  Features: ``stem`` (stride 2), ``stage1``.. (each dense block's output, before its transition),
  ``pre_logits``.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> model = DenseNet(block_config=(2, 2), growth_rate=4, init_features=8, num_classes=3, cifar_stem=True)
    >>> x = jnp.zeros((1, 8, 8, 3))
    >>> jax.eval_shape(model.init_with_output, jax.random.key(0), x)[0].shape
    (1, 3)
  """

  block_config: Sequence[int] = (6, 12, 24, 16)
  growth_rate: int = 32
  init_features: int = 64
  bn_size: int = 4
  drop_rate: float = 0.0
  cifar_stem: bool = False

  @nn.compact
  def __call__(self, x: jax.typing.ArrayLike, train: bool = False, return_features: bool = False):
    x = _common.check_input(self, x)
    if self.drop_rate > 0 and train and not self.has_rng("dropout"):
      _common.dropout(self, x, self.drop_rate, train, "_")  # raises the missing-rng error
    conv = _common.conv_builder(self, initializers.kaiming_normal_fan_in)
    norm = _common.norm_builder(self, train)
    drop = functools.partial(_common.Dropout, self.drop_rate, deterministic=not train) if self.drop_rate > 0 else None
    feats = {}
    if self.cifar_stem:
      x = conv(self.init_features, 3, padding=1, use_bias=False, name="stem_conv")(x)
    else:
      x = conv(self.init_features, 7, stride=2, padding=3, use_bias=False, name="stem_conv")(x)
    x = nn.relu(norm(name="stem_bn")(x))
    feats["stem"] = x
    if not self.cifar_stem:
      x = MaxPool(3, stride=2, padding=1, name="stem_pool")(x)
    for i, n in enumerate(self.block_config):
      x = DenseBlock(n, self.growth_rate, self.bn_size, conv, norm, nn.relu, drop, name=f"block{i + 1}")(x)
      feats[f"stage{i + 1}"] = x
      if i != len(self.block_config) - 1:
        x = Transition(x.shape[-1] // 2, conv, norm, nn.relu, name=f"transition{i + 1}")(x)
    x = nn.relu(norm(name="final_bn")(x))
    x = GlobalAvgPool(name="pool")(x)
    feats["pre_logits"] = x
    logits = _common.dense(self, self.num_classes, "head")(x)
    return _common.output(logits, feats, return_features)


@register_model
def densenet121(**kw: Any) -> DenseNet:
  """DenseNet-121: blocks (6, 12, 24, 16), growth 32, 64 stem features: 7,978,856 parameters."""
  return build(DenseNet, "densenet121", dict(block_config=(6, 12, 24, 16)), kw)


@register_model
def densenet169(**kw: Any) -> DenseNet:
  """DenseNet-169: blocks (6, 12, 32, 32): 14,149,480 parameters."""
  return build(DenseNet, "densenet169", dict(block_config=(6, 12, 32, 32)), kw)


@register_model
def densenet201(**kw: Any) -> DenseNet:
  """DenseNet-201: blocks (6, 12, 48, 32): 20,013,928 parameters."""
  return build(DenseNet, "densenet201", dict(block_config=(6, 12, 48, 32)), kw)
