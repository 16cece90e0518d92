"""GoogLeNet / Inception v1 (Szegedy et al. 2015) as torchvision builds it."""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxconv.models import _common
from jaxconv.models._registry import build, register_model
from jaxconv.nn import initializers
from jaxconv.nn import AdaptiveAvgPool, GlobalAvgPool, MaxPool
from jaxconv.nn.blocks import ConvNormAct, Inception

Array = jax.Array

# torchvision's ImageNet normalisation, which ``transform_input`` undoes.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# (ch1x1, ch3x3red, ch3x3, ch5x5red, ch5x5, pool_proj) of inception 3a .. 5b.
INCEPTION_CONFIGS = {
    "3a": (64, 96, 128, 16, 32, 32),
    "3b": (128, 128, 192, 32, 96, 64),
    "4a": (192, 96, 208, 16, 48, 64),
    "4b": (160, 112, 224, 24, 64, 64),
    "4c": (128, 128, 256, 24, 64, 64),
    "4d": (112, 144, 288, 32, 64, 64),
    "4e": (256, 160, 320, 32, 128, 128),
    "5a": (256, 160, 320, 32, 128, 128),
    "5b": (384, 192, 384, 48, 128, 128),
}


class GoogLeNet(_common.NormedZooModel):
  """GoogLeNet: stem, nine Inception modules in three stages, global pool, dropout, head.

  Every convolution is ``conv (no bias) -> BatchNorm (eps 1e-3) -> ReLU`` as torchvision's
  ``BasicConv2d``; pools are 3x3/2 max pools with ``ceil_mode`` (2x2 before stage 5); the
  Inception "5x5" branch uses a 3x3 kernel as torchvision's (``branch3_kernel=5`` gives the
  paper's). Weights ``N(0, 0.01)``, zero biases. 6,624,904 parameters with 1000 classes and
  ``aux_logits=False`` (torchvision's published count).

  With ``aux_logits=True`` the two auxiliary classifiers (after 4a and 4d: adaptive avg pool
  4x4, 1x1 conv 128, fc 1024, dropout 0.7, fc) are built and their logits returned in the
  features as ``aux1`` and ``aux2`` (train with ``return_features=True`` and add
  ``0.3 * loss`` of each, as the paper does).

  With ``transform_input=True`` the input, normalised with the ImageNet mean and std, is first
  re-normalised to ``(x - 0.5) / 0.5`` per channel (``x * std / 0.5 + (mean - 0.5) / 0.5``), as
  torchvision does for its published weights, which were trained on that scaling.

  Features: ``stem`` (stride 8, 192 ch), ``stage1`` (3a-3b, 480), ``stage2`` (4a-4e, 832),
  ``stage3`` (5a-5b, 1024), ``pre_logits`` ``[N, 1024]``.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxconv.models import create_model
    >>> model = create_model("googlenet", num_classes=10)
    >>> x = jnp.zeros((1, 64, 64, 3))
    >>> jax.eval_shape(model.init_with_output, jax.random.key(0), x)[0].shape
    (1, 10)
  """

  aux_logits: bool = False
  transform_input: bool = False
  branch3_kernel: int = 3
  dropout_rate: float = 0.2
  aux_dropout_rate: float = 0.7
  bn_eps: float = 1e-3

  @nn.compact
  def __call__(self, x: jax.typing.ArrayLike, train: bool = False, return_features: bool = False):
    x = _common.check_input(self, x)
    if self.transform_input:
      if x.shape[-1] != 3:
        raise ValueError(f"GoogLeNet with transform_input=True expects RGB input (3 channels); got x of shape {x.shape}.")
      mean = jnp.array(IMAGENET_MEAN, x.dtype).reshape(1, 1, 1, 3)
      std = jnp.array(IMAGENET_STD, x.dtype).reshape(1, 1, 1, 3)
      x = x * (std / 0.5) + (mean - 0.5) / 0.5
    init = initializers.normal(0.01)
    conv = _common.conv_builder(self, init)
    norm = _common.norm_builder(self, train)
    cna = functools.partial(ConvNormAct, conv=conv, norm=norm)
    inception = functools.partial(Inception, branch3_kernel=self.branch3_kernel, conv=conv, norm=norm)
    feats = {}
    x = cna(64, 7, stride=2, padding=3, name="conv1")(x)
    x = MaxPool(3, stride=2, ceil_mode=True, name="pool1")(x)
    x = cna(64, 1, name="conv2")(x)
    x = cna(192, 3, padding=1, name="conv3")(x)
    x = MaxPool(3, stride=2, ceil_mode=True, name="pool2")(x)
    feats["stem"] = x
    x = inception(*INCEPTION_CONFIGS["3a"], name="inception3a")(x)
    x = inception(*INCEPTION_CONFIGS["3b"], name="inception3b")(x)
    feats["stage1"] = x
    x = MaxPool(3, stride=2, ceil_mode=True, name="pool3")(x)
    for k in ("4a", "4b", "4c", "4d", "4e"):
      x = inception(*INCEPTION_CONFIGS[k], name=f"inception{k}")(x)
      if self.aux_logits and k in ("4a", "4d"):
        feats["aux1" if k == "4a" else "aux2"] = self._aux(x, train, cna, init, "aux1" if k == "4a" else "aux2")
    feats["stage2"] = x
    x = MaxPool(2, stride=2, ceil_mode=True, name="pool4")(x)
    x = inception(*INCEPTION_CONFIGS["5a"], name="inception5a")(x)
    x = inception(*INCEPTION_CONFIGS["5b"], name="inception5b")(x)
    feats["stage3"] = x
    x = GlobalAvgPool(name="pool")(x)
    feats["pre_logits"] = x
    x = _common.dropout(self, x, self.dropout_rate, train, "dropout")
    logits = _common.dense(self, self.num_classes, "head", init)(x)
    return _common.output(logits, feats, return_features)

  def _aux(self, x: Array, train: bool, cna, init, name: str) -> Array:
    """torchvision's InceptionAux: pool 4x4, 1x1 conv 128, fc 1024 + ReLU, dropout, fc."""
    y = AdaptiveAvgPool(4, name=f"{name}_pool")(x)
    y = cna(128, 1, name=f"{name}_conv")(y)
    y = y.reshape(y.shape[0], -1)
    y = nn.relu(_common.dense(self, 1024, f"{name}_fc1", init)(y))
    y = _common.dropout(self, y, self.aux_dropout_rate, train, f"{name}_dropout")
    return _common.dense(self, self.num_classes, f"{name}_fc2", init)(y)


@register_model
def googlenet(**kw: Any) -> GoogLeNet:
  """GoogLeNet (torchvision, without auxiliary heads): 6,624,904 parameters."""
  return build(GoogLeNet, "googlenet", {}, kw)
