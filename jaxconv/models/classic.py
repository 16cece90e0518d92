"""The plain stacks: LeNet-5 (LeCun et al. 1998), a small VGG-style CNN for digits, AlexNet
(Krizhevsky et al. 2012, torchvision's single-tower form) and VGG (Simonyan & Zisserman 2015),
with torchvision's layouts and inits."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Callable, Optional, Union

import flax.linen as nn
import jax

from jaxconv.models import _common
from jaxconv.models._registry import build, register_model
from jaxconv.nn import initializers
from jaxconv.nn import AdaptiveAvgPool, AvgPool, MaxPool

Array = jax.Array


class LeNet5(_common.ZooModel):
  """LeNet-5 as built today: ``6@5x5 conv -> pool -> 16@5x5 conv -> pool -> 120 -> 84 -> classes``.

  Input ``[N, 32, 32, C]``, or ``[N, 28, 28, C]`` (MNIST), which the first convolution pads by 2
  so that both give the same ``16 x 5 x 5`` feature map (61,706 parameters with 10 classes and one
  input channel). ``input_size=None`` accepts either; an int demands that size.

  Features: ``stage1`` ``[N, 14, 14, 6]``, ``stage2`` ``[N, 5, 5, 16]``, ``pre_logits`` ``[N, 84]``.

  Attributes:
    num_classes: outputs (default 10).
    input_size: 28, 32 or ``None`` (either).
    act: activation (``nn.relu``; the 1998 paper used a scaled tanh).
    pool: ``"max"`` or ``"avg"`` (the paper's subsampling).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxconv.models import create_model
    >>> model = create_model("lenet5")
    >>> x = jnp.zeros((1, 28, 28, 1))
    >>> variables = jax.eval_shape(model.init, jax.random.key(0), x)   # shapes only: no compute
    >>> jax.eval_shape(model.apply, variables, x).shape
    (1, 10)
  """

  num_classes: int = 10
  input_size: Optional[int] = None
  act: Callable[[Array], Array] = nn.relu
  pool: str = "max"

  @nn.compact
  def __call__(self, x: jax.typing.ArrayLike, train: bool = False, return_features: bool = False):
    x = _common.check_input(self, x)
    if self.input_size not in (None, 28, 32):
      raise ValueError(f"LeNet5 input_size must be 28, 32 or None (either); got {self.input_size!r}.")
    if self.pool not in ("max", "avg"):
      raise ValueError(f"LeNet5 pool must be 'max' or 'avg'; got {self.pool!r}.")
    hw = x.shape[1:3]
    accepted = (self.input_size,) if self.input_size else (28, 32)
    if hw[0] != hw[1] or hw[0] not in accepted:
      raise ValueError(
          f"LeNet5 takes {' or '.join(f'{s}x{s}' for s in accepted)} images (28x28 is padded by 2 in "
          f"the first convolution); got {hw[0]}x{hw[1]} (x of shape {x.shape}). Its fully connected "
          "layers are sized for a 5x5 map after the second pool."
      )
    conv = _common.conv_builder(self)
    pool = MaxPool if self.pool == "max" else AvgPool
    feats = {}
    x = conv(6, 5, padding=2 if hw[0] == 28 else 0, name="conv1")(x)
    x = pool(2, stride=2, name="pool1")(self.act(x))
    feats["stage1"] = x
    x = conv(16, 5, name="conv2")(x)
    x = pool(2, stride=2, name="pool2")(self.act(x))
    feats["stage2"] = x
    x = x.reshape(x.shape[0], -1)
    x = self.act(_common.dense(self, 120, "fc1")(x))
    x = self.act(_common.dense(self, 84, "fc2")(x))
    feats["pre_logits"] = x
    return _common.output(_common.dense(self, self.num_classes, "head")(x), feats, return_features)


@register_model
def lenet5(**kw: Any) -> LeNet5:
  """LeNet-5 (10 classes by default, 28x28 or 32x32 input): 61,706 parameters."""
  return build(LeNet5, "lenet5", {}, kw)


class SmallCNN(_common.NormedZooModel):
  """A small VGG-style network for 28x28 digits: ``[conv3x3-BN-ReLU x convs_per_stage, max pool]``
  per width, then ``adaptive avg pool -> dropout -> fc(hidden) -> ReLU -> dropout -> head``.

  With the defaults (widths 32, 64; two convs per stage; 28x28x1 input) the last stage's map is
  7x7, so the adaptive pool (``pool_size=7``) is the identity and the classifier sees every
  position, as in the classic MNIST CNNs; larger inputs are averaged down to 7x7. Convolutions
  have no bias (each is followed by batch norm), He-normal (fan-out) init as torchvision's VGG.
  468,010 parameters with the defaults (10 classes, one channel). About 18.6 M multiply-adds
  per 28x28 image (LeNet-5: 0.42 M).

  Features: ``stage1``, ``stage2``, ... (after each pool), ``pre_logits`` ``[N, hidden]``.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxconv.models import create_model
    >>> model = create_model("small_cnn")
    >>> x = jnp.zeros((1, 28, 28, 1))
    >>> variables = jax.eval_shape(model.init, jax.random.key(0), x)
    >>> jax.eval_shape(model.apply, variables, x).shape
    (1, 10)
  """

  num_classes: int = 10
  widths: Sequence[int] = (32, 64)
  convs_per_stage: int = 2
  hidden: int = 128
  pool_size: int = 7
  dropout_rate: float = 0.4

  @nn.compact
  def __call__(self, x: jax.typing.ArrayLike, train: bool = False, return_features: bool = False):
    x = _common.check_input(self, x)
    if not self.widths or any(not isinstance(w, int) or w < 1 for w in self.widths):
      raise ValueError(f"SmallCNN widths must be a non-empty sequence of positive ints; got {self.widths!r}.")
    if not isinstance(self.convs_per_stage, int) or self.convs_per_stage < 1:
      raise ValueError(f"SmallCNN convs_per_stage must be a positive int; got {self.convs_per_stage!r}.")
    conv = _common.conv_builder(self, initializers.kaiming_normal_fan_out, use_bias=False)
    norm = _common.norm_builder(self, train)
    feats = {}
    for i, width in enumerate(self.widths, start=1):
      for j in range(1, self.convs_per_stage + 1):
        x = conv(width, 3, padding=1, name=f"conv{i}_{j}")(x)
        x = nn.relu(norm(name=f"bn{i}_{j}")(x))
      x = MaxPool(2, stride=2, name=f"pool{i}")(x)
      feats[f"stage{i}"] = x
    x = AdaptiveAvgPool(self.pool_size, name="avgpool")(x)
    x = _common.dropout(self, x.reshape(x.shape[0], -1), self.dropout_rate, train, "dropout1")
    x = nn.relu(_common.dense(self, self.hidden, "fc1")(x))
    x = _common.dropout(self, x, self.dropout_rate, train, "dropout2")
    feats["pre_logits"] = x
    return _common.output(_common.dense(self, self.num_classes, "head")(x), feats, return_features)


@register_model
def small_cnn(**kw: Any) -> SmallCNN:
  """A small VGG-style CNN for MNIST-sized images (10 classes, widths 32-64): 468,010 parameters."""
  return build(SmallCNN, "small_cnn", {}, kw)


def _classifier(model: nn.Module, x: Array, train: bool, feats: dict, dropout_first: bool, init: Callable) -> Array:
  """torchvision's AlexNet/VGG classifier: ``[dropout] fc relu [dropout] fc relu head``.

  AlexNet puts dropout before each hidden layer, VGG after; both apply it twice. The
  ``flatten`` order is channels-last (H, W, C); the parameter count is the same as PyTorch's.
  """
  x = x.reshape(x.shape[0], -1)
  for i in (1, 2):
    if dropout_first:
      x = _common.dropout(model, x, model.dropout_rate, train, f"dropout{i}")
    x = nn.relu(_common.dense(model, model.hidden, f"fc{i}", init)(x))
    if not dropout_first:
      x = _common.dropout(model, x, model.dropout_rate, train, f"dropout{i}")
  feats["pre_logits"] = x
  return _common.dense(model, model.num_classes, "head", init)(x)


class AlexNet(_common.ZooModel):
  """AlexNet, torchvision's single-GPU variant (the "one weird trick" widths 64-192-384-256-256).

  ``conv11/4(64) pool conv5(192) pool conv3(384) conv3(256) conv3(256) pool -> adaptive avg
  pool 6x6 -> dropout fc4096 relu dropout fc4096 relu -> head``; ReLU after every conv, max
  pools 3x3/2. No local response norm (torchvision has none either; :class:`jaxconv.nn.
  LocalResponseNorm` is there for the 2012 form). 61,100,840 parameters with 1000 classes.
  Inputs of at least 63x63 fit (224 is standard); as in torchvision, a map smaller than the 6x6
  pool is repeated to fill it. ``hidden`` and ``pool_size`` shrink the classifier for small
  experiments (``pool_size=1`` for small images).

  Features: ``stem`` (conv1, pool), ``stage1`` (conv2, pool), ``stage2`` (conv3-5, pool),
  ``pre_logits`` ``[N, hidden]``.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxconv.models import create_model
    >>> model = create_model("alexnet", num_classes=10, hidden=32, pool_size=1)
    >>> x = jnp.zeros((1, 64, 64, 3))
    >>> jax.eval_shape(model.init_with_output, jax.random.key(0), x)[0].shape
    (1, 10)
  """

  hidden: int = 4096
  pool_size: int = 6
  dropout_rate: float = 0.5

  @nn.compact
  def __call__(self, x: jax.typing.ArrayLike, train: bool = False, return_features: bool = False):
    x = _common.check_input(self, x)
    conv = _common.conv_builder(self)
    feats = {}
    x = nn.relu(conv(64, 11, stride=4, padding=2, name="conv1")(x))
    x = MaxPool(3, stride=2, name="pool1")(x)
    feats["stem"] = x
    x = nn.relu(conv(192, 5, padding=2, name="conv2")(x))
    x = MaxPool(3, stride=2, name="pool2")(x)
    feats["stage1"] = x
    x = nn.relu(conv(384, 3, padding=1, name="conv3")(x))
    x = nn.relu(conv(256, 3, padding=1, name="conv4")(x))
    x = nn.relu(conv(256, 3, padding=1, name="conv5")(x))
    x = MaxPool(3, stride=2, name="pool5")(x)
    feats["stage2"] = x
    x = AdaptiveAvgPool(self.pool_size, name="avgpool")(x)
    return _common.output(_classifier(self, x, train, feats, True, initializers.torch_default), feats, return_features)


@register_model
def alexnet(**kw: Any) -> AlexNet:
  """AlexNet (torchvision): 61,100,840 parameters."""
  return build(AlexNet, "alexnet", {}, kw)


VGG_CONFIGS: dict[str, tuple[Union[int, str], ...]] = {
    "A": (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "B": (64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "D": (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"),
    "E": (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"),
}


class VGG(_common.NormedZooModel):
  """VGG: 3x3 convolutions (padding 1, with bias) and 2x2 max pools, then three fully connected layers.

  ``config`` lists conv widths and ``"M"`` for pools (VGG_CONFIGS "A" = VGG-11, "B" = 13, "D" =
  16, "E" = 19); ``batch_norm`` inserts a norm after each conv (the conv keeps its bias, as in
  torchvision, so counts match theirs). An adaptive average pool to ``pool_size`` (7) precedes
  the classifier (``512 * pool_size**2`` inputs); five 2x2 pools need an input of at least
  32x32, and a map smaller than the pool (below 224x224) is repeated to fill it, as in
  torchvision (``pool_size=1`` makes the classifier small for 32x32 images). torchvision's
  init: He-normal fan-out convs, ``N(0, 0.01)`` linear layers, zero biases.

  Features: ``stage1``..``stage5`` (after each pool), ``pre_logits`` ``[N, hidden]``.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxconv.models import create_model
    >>> model = create_model("vgg11_bn", num_classes=10, hidden=32, pool_size=1)
    >>> x = jnp.zeros((2, 32, 32, 3))
    >>> jax.eval_shape(model.init_with_output, jax.random.key(0), x)[0].shape
    (2, 10)
  """

  config: Sequence[Union[int, str]] = VGG_CONFIGS["A"]
  batch_norm: bool = False
  hidden: int = 4096
  pool_size: int = 7
  dropout_rate: float = 0.5

  @nn.compact
  def __call__(self, x: jax.typing.ArrayLike, train: bool = False, return_features: bool = False):
    x = _common.check_input(self, x)
    conv = _common.conv_builder(self, initializers.kaiming_normal_fan_out)
    norm = _common.norm_builder(self, train)
    feats = {}
    stage, layer = 1, 1
    for v in self.config:
      if v == "M":
        x = MaxPool(2, stride=2, name=f"pool{stage}")(x)
        feats[f"stage{stage}"] = x
        stage, layer = stage + 1, 1
        continue
      x = conv(v, 3, padding=1, name=f"conv{stage}_{layer}")(x)
      if self.batch_norm:
        x = norm(name=f"bn{stage}_{layer}")(x)
      x = nn.relu(x)
      layer += 1
    x = AdaptiveAvgPool(self.pool_size, name="avgpool")(x)
    return _common.output(_classifier(self, x, train, feats, False, initializers.normal(0.01)), feats, return_features)


def _vgg(name: str, cfg: str, bn: bool, kw: dict) -> VGG:
  return build(VGG, name, dict(config=VGG_CONFIGS[cfg], batch_norm=bn), kw)


@register_model
def vgg11(**kw: Any) -> VGG:
  """VGG-11 (config A): 132,863,336 parameters."""
  return _vgg("vgg11", "A", False, kw)


@register_model
def vgg11_bn(**kw: Any) -> VGG:
  """VGG-11 with batch norm: 132,868,840 parameters."""
  return _vgg("vgg11_bn", "A", True, kw)


@register_model
def vgg13(**kw: Any) -> VGG:
  """VGG-13 (config B): 133,047,848 parameters."""
  return _vgg("vgg13", "B", False, kw)


@register_model
def vgg13_bn(**kw: Any) -> VGG:
  """VGG-13 with batch norm: 133,053,736 parameters."""
  return _vgg("vgg13_bn", "B", True, kw)


@register_model
def vgg16(**kw: Any) -> VGG:
  """VGG-16 (config D): 138,357,544 parameters."""
  return _vgg("vgg16", "D", False, kw)


@register_model
def vgg16_bn(**kw: Any) -> VGG:
  """VGG-16 with batch norm: 138,365,992 parameters."""
  return _vgg("vgg16_bn", "D", True, kw)


@register_model
def vgg19(**kw: Any) -> VGG:
  """VGG-19 (config E): 143,667,240 parameters."""
  return _vgg("vgg19", "E", False, kw)


@register_model
def vgg19_bn(**kw: Any) -> VGG:
  """VGG-19 with batch norm: 143,678,248 parameters."""
  return _vgg("vgg19_bn", "E", True, kw)
