"""ResNet v1.5 (He et al. 2016, torchvision), pre-activation ResNet v2, and SE-ResNet (Hu et al. 2018).

One class, :class:`ResNet`; every registered name is a configuration of it (stage sizes, block,
pre-activation, SE reduction).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, Callable, Optional

import flax.linen as nn
import jax

from jaxconv.models import _common
from jaxconv.models._registry import build, register_model
from jaxconv.nn import initializers
from jaxconv.nn import GlobalAvgPool, MaxPool
from jaxconv.nn.blocks import (
    BasicBlock,
    Bottleneck,
    ModuleDef,
    PreActBasicBlock,
    PreActBottleneck,
    SqueezeExcite,
)

Array = jax.Array


class ResNet(_common.NormedZooModel):
  """Residual network: stem, ``len(stage_sizes)`` stages of residual blocks, global pool, head.

  Stem: ``conv7x7/2 (width) -> bn -> act -> maxpool3x3/2`` (ImageNet) or, with
  ``cifar_stem=True``, ``conv3x3/1 -> bn -> act`` and no pool (32x32 images). Stage ``i`` has
  ``stage_sizes[i]`` blocks of ``width * 2**i`` features, the first of stages 2.. with stride 2
  (on the 3x3 convolution: torchvision's v1.5). Convolutions use He-normal fan-out init; the
  head uses PyTorch's default; biases start at zero.

  With ``preact=True`` (ResNet v2) the blocks must be pre-activation blocks, the stem has no
  norm/act (each block normalises its input), and a final ``bn -> act`` precedes the pool.
  ``se_reduction`` adds a Squeeze-and-Excitation module to every block.

  Shapes: ``x [N, H, W, C] -> logits [N, num_classes]``; features ``stem`` (after the stem
  activation, stride 2 or 1), ``stage1``.. (strides 4, 8, 16, 32 on ImageNet), ``pre_logits``
  ``[N, width * 2**(K-1) * expansion]``.

  Attributes:
    stage_sizes: blocks per stage.
    block: block class (:class:`BasicBlock`, :class:`Bottleneck`, or their pre-activation forms).
    num_classes: classifier outputs (>= 1).
    width: channels of the stem and of stage 1's blocks.
    cifar_stem: small-image stem.
    preact: ResNet v2 layout.
    se_reduction: SE reduction ratio, or ``None`` for no SE.
    zero_init_residual: zero-initialise the last norm scale of each residual branch (v1 only).
    act: activation.
    bn_momentum, bn_eps: BatchNorm momentum (Flax convention) and epsilon.
    dtype, param_dtype: computation and parameter dtypes.
    axis_name: mapped axis for cross-device batch statistics (``None``: local).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxconv.models import create_model
    >>> model = create_model("resnet18", num_classes=10, cifar_stem=True, width=8)
    >>> x = jnp.ones((2, 16, 16, 3))
    >>> variables = jax.eval_shape(model.init, jax.random.key(0), x)   # shapes only: no compute
    >>> logits, feats = jax.eval_shape(lambda v: model.apply(v, x, return_features=True), variables)
    >>> logits.shape, feats["stage4"].shape
    ((2, 10), (2, 2, 2, 64))
  """

  stage_sizes: Sequence[int] = (2, 2, 2, 2)
  block: ModuleDef = BasicBlock
  width: int = 64
  cifar_stem: bool = False
  preact: bool = False
  se_reduction: Optional[int] = None
  zero_init_residual: bool = False
  act: Callable[[Array], Array] = nn.relu

  @nn.compact
  def __call__(self, x: jax.typing.ArrayLike, train: bool = False, return_features: bool = False):
    x = _common.check_input(self, x)
    if self.preact and self.zero_init_residual:
      raise ValueError("zero_init_residual applies to ResNet v1 blocks (a norm ends each branch); got preact=True.")
    conv = _common.conv_builder(self, initializers.kaiming_normal_fan_out)
    norm = _common.norm_builder(self, train)
    feats = {}
    if self.cifar_stem:
      x = conv(self.width, 3, padding=1, use_bias=False, name="stem_conv")(x)
    else:
      x = conv(self.width, 7, stride=2, padding=3, use_bias=False, name="stem_conv")(x)
    if not self.preact:
      x = self.act(norm(name="stem_bn")(x))
    feats["stem"] = x
    if not self.cifar_stem:
      x = MaxPool(3, stride=2, padding=1, name="stem_pool")(x)
    block_kw: dict[str, Any] = dict(conv=conv, norm=norm, act=self.act)
    if self.se_reduction is not None:
      block_kw["se"] = functools.partial(SqueezeExcite, reduction=self.se_reduction, conv=conv, act=self.act)
    if self.zero_init_residual:
      block_kw["zero_init_last"] = True
    for i, n in enumerate(self.stage_sizes):
      for j in range(n):
        stride = 2 if i > 0 and j == 0 else 1
        x = self.block(self.width * 2**i, stride=stride, **block_kw, name=f"stage{i + 1}_block{j + 1}")(x)
      feats[f"stage{i + 1}"] = x
    if self.preact:
      x = self.act(norm(name="final_bn")(x))
    x = GlobalAvgPool(name="pool")(x)
    feats["pre_logits"] = x
    logits = _common.dense(self, self.num_classes, "head")(x)
    return _common.output(logits, feats, return_features)


_DEPTHS = {
    18: ((2, 2, 2, 2), False),
    34: ((3, 4, 6, 3), False),
    50: ((3, 4, 6, 3), True),
    101: ((3, 4, 23, 3), True),
    152: ((3, 8, 36, 3), True),
}


def _resnet(name: str, depth: int, kind: str, options: dict) -> ResNet:
  sizes, bottleneck = _DEPTHS[depth]
  if kind == "v2":
    block = PreActBottleneck if bottleneck else PreActBasicBlock
  else:
    block = Bottleneck if bottleneck else BasicBlock
  fixed: dict[str, Any] = dict(stage_sizes=sizes, block=block, preact=kind == "v2")
  if kind == "se":
    options.setdefault("se_reduction", 16)
  return build(ResNet, name, fixed, options)


# torchvision's published counts (1000 classes): resnet18 11,689,512; resnet34 21,797,672;
# resnet50 25,557,032; resnet101 44,549,160; resnet152 60,192,808. tests/test_models.py checks them.
@register_model
def resnet18(**kw: Any) -> ResNet:
  """ResNet-18 (torchvision): BasicBlock, stages (2, 2, 2, 2)."""
  return _resnet("resnet18", 18, "v1", kw)


@register_model
def resnet34(**kw: Any) -> ResNet:
  """ResNet-34 (torchvision): BasicBlock, stages (3, 4, 6, 3)."""
  return _resnet("resnet34", 34, "v1", kw)


@register_model
def resnet50(**kw: Any) -> ResNet:
  """ResNet-50 v1.5 (torchvision): Bottleneck, stages (3, 4, 6, 3)."""
  return _resnet("resnet50", 50, "v1", kw)


@register_model
def resnet101(**kw: Any) -> ResNet:
  """ResNet-101 v1.5 (torchvision): Bottleneck, stages (3, 4, 23, 3)."""
  return _resnet("resnet101", 101, "v1", kw)


@register_model
def resnet152(**kw: Any) -> ResNet:
  """ResNet-152 v1.5 (torchvision): Bottleneck, stages (3, 8, 36, 3)."""
  return _resnet("resnet152", 152, "v1", kw)


# Pre-activation ResNet v2 (He et al. 2016, "Identity Mappings"). torchvision has none, so there is
# no published count to match; ours follows from the layout. Relative to v1 of the same depth:
# no stem norm (-2*64), each block's first norm sees its input channels instead of the last
# norm seeing its output channels (+2*(C_in - C_out) per block), projections carry no norm
# (-2*C_out per projection), plus a final norm (+2*C_final). That gives resnetv2_18 11,687,720,
# resnetv2_34 21,795,880, resnetv2_50 25,549,352 (resnet50 - 7,680), resnetv2_101 44,541,480,
# resnetv2_152 60,185,128; tests/test_models.py derives each from v1 with that arithmetic.
@register_model
def resnetv2_18(**kw: Any) -> ResNet:
  """Pre-activation ResNet-18: PreActBasicBlock, stages (2, 2, 2, 2)."""
  return _resnet("resnetv2_18", 18, "v2", kw)


@register_model
def resnetv2_34(**kw: Any) -> ResNet:
  """Pre-activation ResNet-34: PreActBasicBlock, stages (3, 4, 6, 3)."""
  return _resnet("resnetv2_34", 34, "v2", kw)


@register_model
def resnetv2_50(**kw: Any) -> ResNet:
  """Pre-activation ResNet-50: PreActBottleneck, stages (3, 4, 6, 3)."""
  return _resnet("resnetv2_50", 50, "v2", kw)


@register_model
def resnetv2_101(**kw: Any) -> ResNet:
  """Pre-activation ResNet-101: PreActBottleneck, stages (3, 4, 23, 3)."""
  return _resnet("resnetv2_101", 101, "v2", kw)


@register_model
def resnetv2_152(**kw: Any) -> ResNet:
  """Pre-activation ResNet-152: PreActBottleneck, stages (3, 8, 36, 3)."""
  return _resnet("resnetv2_152", 152, "v2", kw)


# SE-ResNet (Hu et al. 2018): an SE module (reduction 16, 1x1 convs with bias) on each block's
# branch before the addition; it adds 2*C^2/16 + C/16 + C per block of C output channels.
# seresnet50 = 28,088,024 = resnet50 + 2,530,992, the count timm publishes for its seresnet50
# (and the SENet paper's 28.1M). The reduced width is C // 16 as in the paper; timm rounds it up
# to a multiple of 8, which differs only where C = 64 (seresnet18/34, stage 1: 4 vs 8 channels).
@register_model
def seresnet18(**kw: Any) -> ResNet:
  """SE-ResNet-18: resnet18 with an SE module (reduction 16) in every block."""
  return _resnet("seresnet18", 18, "se", kw)


@register_model
def seresnet34(**kw: Any) -> ResNet:
  """SE-ResNet-34: resnet34 with SE (reduction 16)."""
  return _resnet("seresnet34", 34, "se", kw)


@register_model
def seresnet50(**kw: Any) -> ResNet:
  """SE-ResNet-50: resnet50 with SE (reduction 16); 28,088,024 parameters as timm's."""
  return _resnet("seresnet50", 50, "se", kw)


@register_model
def seresnet101(**kw: Any) -> ResNet:
  """SE-ResNet-101: resnet101 with SE (reduction 16)."""
  return _resnet("seresnet101", 101, "se", kw)


@register_model
def seresnet152(**kw: Any) -> ResNet:
  """SE-ResNet-152: resnet152 with SE (reduction 16)."""
  return _resnet("seresnet152", 152, "se", kw)
