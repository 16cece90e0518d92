"""Building blocks of the classic CNNs, each taking its conv, norm and activation as arguments.

``conv`` is a callable that builds a convolution module like :class:`jaxconv.nn.Conv`
(``conv(features, kernel_size, stride=..., padding=..., groups=..., use_bias=..., name=...)``),
typically a ``functools.partial`` that fixes ``dtype``, ``param_dtype`` and ``kernel_init``.
``norm`` builds a normalisation module called as ``norm(name=...)(x)``, typically
``partial(BatchNorm, train=train, axis_name=...)``: the model binds ``train`` once, so blocks
need no ``train`` argument. ``act`` is a function (``nn.relu``, ``nn.relu6``...). Variants are
data: SE-ResNet is ``BasicBlock(se=partial(SqueezeExcite, reduction=16))``, not another class.

All blocks are channels-last, ``x: [N, H, W, C]``.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxconv import ops
from jaxconv.nn import _init
from jaxconv.nn._layers import AvgPool, BatchNorm, Conv, MaxPool, _where

Array = jax.Array
ModuleDef = Callable[..., nn.Module]

_default_conv = functools.partial(Conv, kernel_init=_init.kaiming_normal_fan_out)
_default_norm = functools.partial(BatchNorm, train=False)


def _shortcut_needed(module: nn.Module, x: Array, out_features: int, stride: int, projection: Optional[bool]) -> bool:
  """Whether the shortcut needs a 1x1 projection; a clear error when it needs one but was refused."""
  mismatch = x.shape[-1] != out_features or stride != 1
  if projection is None:
    return mismatch
  if mismatch and not projection:
    raise ValueError(
        f"channel mismatch at {_where(module)}: the identity shortcut carries {x.shape[-1]} channels "
        f"at stride 1 but the residual branch outputs {out_features} channels at stride {stride}; "
        "set projection=True (or None to decide from the shapes)."
    )
  return bool(projection)


class _Residual(nn.Module):
  """The fields and the shortcut shared by the residual blocks (v1 and pre-activation)."""

  features: int
  stride: int = 1
  conv: ModuleDef = _default_conv
  norm: ModuleDef = _default_norm
  act: Callable[[Array], Array] = nn.relu
  se: Optional[ModuleDef] = None
  projection: Optional[bool] = None
  expansion = 1

  def _out(self, x: Array) -> tuple[int, bool]:
    """Output channels, and whether the shortcut needs a projection."""
    out = self.features * self.expansion
    return out, _shortcut_needed(self, x, out, self.stride, self.projection)

  def _attend(self, y: Array) -> Array:
    return y if self.se is None else self.se(name="se")(y)

  def _projection(self, x: Array, out: int, norm: bool) -> Array:
    """``[bn](conv1x1_stride(x))``: the shortcut when shapes change."""
    y = self.conv(out, 1, stride=self.stride, use_bias=False, name="downsample_conv")(x)
    return self.norm(name="downsample_bn")(y) if norm else y


class ConvNormAct(nn.Module):
  """``act(norm(conv(x)))``: the unit of GoogLeNet, MobileNet and most stems.

  Shapes: ``[N, H, W, C] -> [N, H', W', features]`` (``H' = floor((H + 2p - k) / s) + 1``).
  ``padding=None`` pads ``(kernel_size - 1) // 2`` on each side ("same" for odd kernels and
  stride 1). ``act=None`` leaves the output linear.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> block = ConvNormAct(8, 3, stride=2)
    >>> v = jax.eval_shape(block.init, jax.random.key(0), jnp.ones((1, 8, 8, 3)))
    >>> jax.eval_shape(block.apply, v, jnp.ones((1, 8, 8, 3))).shape
    (1, 4, 4, 8)
  """

  features: int
  kernel_size: int = 3
  stride: int = 1
  padding: Any = None
  groups: int = 1
  conv: ModuleDef = _default_conv
  norm: ModuleDef = _default_norm
  act: Optional[Callable[[Array], Array]] = nn.relu

  @nn.compact
  def __call__(self, x: Array) -> Array:
    pad = (self.kernel_size - 1) // 2 if self.padding is None else self.padding
    x = self.conv(self.features, self.kernel_size, stride=self.stride, padding=pad, groups=self.groups,
                  use_bias=False, name="conv")(x)
    x = self.norm(name="bn")(x)
    return x if self.act is None else self.act(x)


class BasicBlock(_Residual):
  """ResNet basic block (two 3x3 convolutions), He et al. 2016, as torchvision builds it.

  ``y = act(bn2(conv2(act(bn1(conv1(x))))) + shortcut(x))`` where ``shortcut`` is the identity or,
  when channels or stride change, ``bn(conv1x1_stride(x))``. Output channels: ``features``
  (``expansion = 1``).

  Attributes:
    features: output channels.
    stride: stride of the first 3x3 convolution (and the projection).
    conv, norm, act: the layer builders.
    se: optional channel-attention builder (e.g. ``partial(SqueezeExcite, reduction=16)``), applied
      to the branch before the addition.
    zero_init_last: initialise the last norm's scale to zero, so the block starts as identity
      (torchvision's ``zero_init_residual``, Goyal et al. 2017).
    projection: ``None`` decides from the shapes; ``False`` raises if the shapes differ.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> block = BasicBlock(16, stride=2)
    >>> v = jax.eval_shape(block.init, jax.random.key(0), jnp.ones((1, 8, 8, 8)))
    >>> jax.eval_shape(block.apply, v, jnp.ones((1, 8, 8, 8))).shape
    (1, 4, 4, 16)
  """

  zero_init_last: bool = False
  expansion = 1

  @nn.compact
  def __call__(self, x: Array) -> Array:
    out, project = self._out(x)
    y = self.conv(self.features, 3, stride=self.stride, padding=1, use_bias=False, name="conv1")(x)
    y = self.act(self.norm(name="bn1")(y))
    y = self.conv(self.features, 3, padding=1, use_bias=False, name="conv2")(y)
    y = self._attend(self.norm(name="bn2", **_zero_scale(self.zero_init_last))(y))
    return self.act(y + (self._projection(x, out, norm=True) if project else x))


def _zero_scale(flag: bool) -> dict:
  return {"scale_init": _init.zeros} if flag else {}


class Bottleneck(_Residual):
  """ResNet bottleneck, torchvision's "v1.5": 1x1 reduce, 3x3 (carrying the stride), 1x1 expand.

  ``y = act(bn3(conv3(act(bn2(conv2(act(bn1(conv1(x))))))) + shortcut(x))``; inner width
  ``features * base_width / 64 * groups``, output ``4 * features`` channels. Attributes as
  :class:`BasicBlock`, plus ``groups`` and ``base_width`` (ResNeXt / wide ResNet).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> block = Bottleneck(4)
    >>> v = jax.eval_shape(block.init, jax.random.key(0), jnp.ones((1, 8, 8, 16)))
    >>> jax.eval_shape(block.apply, v, jnp.ones((1, 8, 8, 16))).shape
    (1, 8, 8, 16)
  """

  zero_init_last: bool = False
  groups: int = 1
  base_width: int = 64
  expansion = 4

  @nn.compact
  def __call__(self, x: Array) -> Array:
    out, project = self._out(x)
    width = int(self.features * (self.base_width / 64.0)) * self.groups
    y = self.conv(width, 1, use_bias=False, name="conv1")(x)
    y = self.act(self.norm(name="bn1")(y))
    y = self.conv(width, 3, stride=self.stride, padding=1, groups=self.groups, use_bias=False, name="conv2")(y)
    y = self.act(self.norm(name="bn2")(y))
    y = self.conv(out, 1, use_bias=False, name="conv3")(y)
    y = self._attend(self.norm(name="bn3", **_zero_scale(self.zero_init_last))(y))
    shortcut = self._projection(x, out, norm=True) if project else x
    return self.act(y + shortcut)


class PreActBasicBlock(_Residual):
  """Pre-activation basic block (ResNet v2, He et al. 2016, "Identity mappings").

  ``p = act(bn1(x))``; ``y = conv2(act(bn2(conv1(p)))) + shortcut`` where ``shortcut`` is ``x``
  or, when shapes change, ``conv1x1_stride(p)`` (no norm: the next block normalises). No
  activation after the addition: the identity path stays clean. ``zero_init_last`` is not
  meaningful here (there is no norm at the end of the branch) and so is absent.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> block = PreActBasicBlock(8)
    >>> v = jax.eval_shape(block.init, jax.random.key(0), jnp.ones((1, 8, 8, 8)))
    >>> jax.eval_shape(block.apply, v, jnp.ones((1, 8, 8, 8))).shape
    (1, 8, 8, 8)
  """

  expansion = 1

  @nn.compact
  def __call__(self, x: Array) -> Array:
    out, project = self._out(x)
    p = self.act(self.norm(name="bn1")(x))
    shortcut = self._projection(p, out, norm=False) if project else x
    y = self.conv(self.features, 3, stride=self.stride, padding=1, use_bias=False, name="conv1")(p)
    y = self.act(self.norm(name="bn2")(y))
    y = self.conv(out, 3, padding=1, use_bias=False, name="conv2")(y)
    return self._attend(y) + shortcut


class PreActBottleneck(_Residual):
  """Pre-activation bottleneck (ResNet v2): ``bn-act-conv1x1, bn-act-conv3x3(stride), bn-act-conv1x1``.

  Output ``4 * features`` channels; shortcut as :class:`PreActBasicBlock`.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> block = PreActBottleneck(4, stride=2)
    >>> v = jax.eval_shape(block.init, jax.random.key(0), jnp.ones((1, 8, 8, 8)))
    >>> jax.eval_shape(block.apply, v, jnp.ones((1, 8, 8, 8))).shape
    (1, 4, 4, 16)
  """

  expansion = 4

  @nn.compact
  def __call__(self, x: Array) -> Array:
    out, project = self._out(x)
    p = self.act(self.norm(name="bn1")(x))
    shortcut = self._projection(p, out, norm=False) if project else x
    y = self.conv(self.features, 1, use_bias=False, name="conv1")(p)
    y = self.act(self.norm(name="bn2")(y))
    y = self.conv(self.features, 3, stride=self.stride, padding=1, use_bias=False, name="conv2")(y)
    y = self.act(self.norm(name="bn3")(y))
    y = self.conv(out, 1, use_bias=False, name="conv3")(y)
    return self._attend(y) + shortcut


class SqueezeExcite(nn.Module):
  """Squeeze-and-Excitation (Hu et al. 2018): ``x * gate(W2 act(W1 mean_hw(x) + b1) + b2)``.

  ``W1: C -> C // reduction`` (at least ``min_features``), ``W2`` back to ``C``, as 1x1
  convolutions with bias (the SENet paper's and timm's parameter count:
  ``2 C^2 / r + C / r + C``).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> se = SqueezeExcite(reduction=4)
    >>> v = jax.eval_shape(se.init, jax.random.key(0), jnp.ones((1, 4, 4, 16)))
    >>> jax.tree.map(jnp.shape, v["params"]["fc1"])
    {'bias': (4,), 'kernel': (1, 1, 16, 4)}
  """

  reduction: int = 16
  min_features: int = 1
  conv: ModuleDef = Conv
  act: Callable[[Array], Array] = nn.relu
  gate: Callable[[Array], Array] = nn.sigmoid

  @nn.compact
  def __call__(self, x: Array) -> Array:
    c = x.shape[-1]
    mid = max(self.min_features, c // self.reduction)
    s = ops.global_avg_pool(x, keepdims=True)
    s = self.act(self.conv(mid, 1, name="fc1")(s))
    s = self.gate(self.conv(c, 1, name="fc2")(s))
    return x * s.astype(x.dtype)


class Inception(nn.Module):
  """GoogLeNet's Inception module (Szegedy et al. 2015), as torchvision builds it.

  Four branches concatenated along channels: ``1x1``; ``1x1 -> 3x3``; ``1x1 -> k x k``;
  ``maxpool 3x3 (stride 1, pad 1, ceil) -> 1x1``, each conv a :class:`ConvNormAct`. Output
  channels ``ch1x1 + ch3x3 + ch5x5 + pool_proj``. ``branch3_kernel`` is 3 as in torchvision (a
  known deviation from the paper's 5x5 that its published weights and parameter count carry);
  set 5 for the paper.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> block = Inception(4, 4, 8, 2, 4, 4)
    >>> v = jax.eval_shape(block.init, jax.random.key(0), jnp.ones((1, 8, 8, 6)))
    >>> jax.eval_shape(block.apply, v, jnp.ones((1, 8, 8, 6))).shape
    (1, 8, 8, 20)
  """

  ch1x1: int
  ch3x3red: int
  ch3x3: int
  ch5x5red: int
  ch5x5: int
  pool_proj: int
  branch3_kernel: int = 3
  conv: ModuleDef = _default_conv
  norm: ModuleDef = _default_norm
  act: Callable[[Array], Array] = nn.relu

  @nn.compact
  def __call__(self, x: Array) -> Array:
    cna = functools.partial(ConvNormAct, conv=self.conv, norm=self.norm, act=self.act)
    b1 = cna(self.ch1x1, 1, name="branch1")(x)
    b2 = cna(self.ch3x3red, 1, name="branch2_reduce")(x)
    b2 = cna(self.ch3x3, 3, name="branch2")(b2)
    b3 = cna(self.ch5x5red, 1, name="branch3_reduce")(x)
    b3 = cna(self.ch5x5, self.branch3_kernel, name="branch3")(b3)
    b4 = MaxPool(3, stride=1, padding=1, ceil_mode=True, name="branch4_pool")(x)
    b4 = cna(self.pool_proj, 1, name="branch4")(b4)
    return jnp.concatenate([b1, b2, b3, b4], axis=-1)


class DepthwiseSeparable(nn.Module):
  """MobileNet v1 block: depthwise 3x3 (stride) -> norm -> act -> pointwise 1x1 -> norm -> act.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> block = DepthwiseSeparable(16, stride=2)
    >>> v = jax.eval_shape(block.init, jax.random.key(0), jnp.ones((1, 8, 8, 8)))
    >>> jax.eval_shape(block.apply, v, jnp.ones((1, 8, 8, 8))).shape
    (1, 4, 4, 16)
  """

  features: int
  stride: int = 1
  conv: ModuleDef = _default_conv
  norm: ModuleDef = _default_norm
  act: Callable[[Array], Array] = nn.relu

  @nn.compact
  def __call__(self, x: Array) -> Array:
    c = x.shape[-1]
    x = ConvNormAct(c, 3, stride=self.stride, groups=c, conv=self.conv, norm=self.norm, act=self.act,
                    name="depthwise")(x)
    return ConvNormAct(self.features, 1, conv=self.conv, norm=self.norm, act=self.act, name="pointwise")(x)


class InvertedResidual(nn.Module):
  """MobileNetV2's inverted residual with linear bottleneck (Sandler et al. 2018).

  ``expand 1x1 (C -> t C, act) -> depthwise 3x3 (stride, act) -> project 1x1 (-> features, no
  act)``; the input is added back when ``stride == 1`` and ``C == features``. ``expand_ratio 1``
  skips the expansion (the first block of MobileNetV2).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> block = InvertedResidual(8, stride=1, expand_ratio=6)
    >>> v = jax.eval_shape(block.init, jax.random.key(0), jnp.ones((1, 8, 8, 8)))
    >>> jax.eval_shape(block.apply, v, jnp.ones((1, 8, 8, 8))).shape
    (1, 8, 8, 8)
  """

  features: int
  stride: int = 1
  expand_ratio: float = 6
  conv: ModuleDef = _default_conv
  norm: ModuleDef = _default_norm
  act: Callable[[Array], Array] = nn.relu6

  @nn.compact
  def __call__(self, x: Array) -> Array:
    if self.stride not in (1, 2):
      raise ValueError(f"{_where(self)}: stride must be 1 or 2; got {self.stride!r}.")
    c = x.shape[-1]
    hidden = int(round(c * self.expand_ratio))
    cna = functools.partial(ConvNormAct, conv=self.conv, norm=self.norm)
    y = x
    if self.expand_ratio != 1:
      y = cna(hidden, 1, act=self.act, name="expand")(y)
    y = cna(hidden, 3, stride=self.stride, groups=hidden, act=self.act, name="depthwise")(y)
    y = cna(self.features, 1, act=None, name="project")(y)
    if self.stride == 1 and c == self.features:
      y = y + x
    return y


class DenseLayer(nn.Module):
  """DenseNet's bottleneck layer (Huang et al. 2017): ``norm-act-conv1x1(bn_size k)-norm-act-conv3x3(k)``.

  Returns only the ``growth_rate`` new channels; :class:`DenseBlock` concatenates. ``dropout`` is
  an optional builder (``partial(nn.Dropout, rate, deterministic=not train)``).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> layer = DenseLayer(growth_rate=4, bn_size=2)
    >>> v = jax.eval_shape(layer.init, jax.random.key(0), jnp.ones((1, 8, 8, 6)))
    >>> jax.eval_shape(layer.apply, v, jnp.ones((1, 8, 8, 6))).shape
    (1, 8, 8, 4)
  """

  growth_rate: int
  bn_size: int = 4
  conv: ModuleDef = _default_conv
  norm: ModuleDef = _default_norm
  act: Callable[[Array], Array] = nn.relu
  dropout: Optional[ModuleDef] = None

  @nn.compact
  def __call__(self, x: Array) -> Array:
    y = self.act(self.norm(name="bn1")(x))
    y = self.conv(self.bn_size * self.growth_rate, 1, use_bias=False, name="conv1")(y)
    y = self.act(self.norm(name="bn2")(y))
    y = self.conv(self.growth_rate, 3, padding=1, use_bias=False, name="conv2")(y)
    if self.dropout is not None:
      y = self.dropout(name="dropout")(y)
    return y


class DenseBlock(nn.Module):
  """``num_layers`` :class:`DenseLayer`s, each seeing the concatenation of all earlier outputs.

  Output channels ``C + num_layers * growth_rate``.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> block = DenseBlock(3, growth_rate=4, bn_size=2)
    >>> v = jax.eval_shape(block.init, jax.random.key(0), jnp.ones((1, 8, 8, 6)))
    >>> jax.eval_shape(block.apply, v, jnp.ones((1, 8, 8, 6))).shape
    (1, 8, 8, 18)
  """

  num_layers: int
  growth_rate: int
  bn_size: int = 4
  conv: ModuleDef = _default_conv
  norm: ModuleDef = _default_norm
  act: Callable[[Array], Array] = nn.relu
  dropout: Optional[ModuleDef] = None

  @nn.compact
  def __call__(self, x: Array) -> Array:
    for i in range(self.num_layers):
      y = DenseLayer(self.growth_rate, self.bn_size, self.conv, self.norm, self.act, self.dropout,
                     name=f"layer{i + 1}")(x)
      x = jnp.concatenate([x, y], axis=-1)
    return x


class Transition(nn.Module):
  """DenseNet transition: ``norm -> act -> conv1x1(features) -> avgpool 2x2 stride 2``.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> t = Transition(4)
    >>> v = jax.eval_shape(t.init, jax.random.key(0), jnp.ones((1, 8, 8, 8)))
    >>> jax.eval_shape(t.apply, v, jnp.ones((1, 8, 8, 8))).shape
    (1, 4, 4, 4)
  """

  features: int
  conv: ModuleDef = _default_conv
  norm: ModuleDef = _default_norm
  act: Callable[[Array], Array] = nn.relu

  @nn.compact
  def __call__(self, x: Array) -> Array:
    x = self.act(self.norm(name="bn")(x))
    x = self.conv(self.features, 1, use_bias=False, name="conv")(x)
    return AvgPool(2, stride=2, name="pool")(x)


class Fire(nn.Module):
  """SqueezeNet's Fire module (Iandola et al. 2016): squeeze 1x1, then expand 1x1 and 3x3, concatenated.

  ``s = act(conv1x1_s(x))``; ``y = concat(act(conv1x1_e1(s)), act(conv3x3_e3(s)))``; convolutions
  with bias and no norm, as in the paper and torchvision. Output ``expand1x1 + expand3x3``
  channels.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> fire = Fire(4, 8, 8)
    >>> v = jax.eval_shape(fire.init, jax.random.key(0), jnp.ones((1, 8, 8, 16)))
    >>> jax.eval_shape(fire.apply, v, jnp.ones((1, 8, 8, 16))).shape
    (1, 8, 8, 16)
  """

  squeeze: int
  expand1x1: int
  expand3x3: int
  conv: ModuleDef = Conv
  act: Callable[[Array], Array] = nn.relu

  @nn.compact
  def __call__(self, x: Array) -> Array:
    s = self.act(self.conv(self.squeeze, 1, name="squeeze")(x))
    e1 = self.act(self.conv(self.expand1x1, 1, name="expand1x1")(s))
    e3 = self.act(self.conv(self.expand3x3, 3, padding=1, name="expand3x3")(s))
    return jnp.concatenate([e1, e3], axis=-1)


__all__ = [
    "BasicBlock",
    "Bottleneck",
    "ConvNormAct",
    "DenseBlock",
    "DenseLayer",
    "DepthwiseSeparable",
    "Fire",
    "Inception",
    "InvertedResidual",
    "ModuleDef",
    "PreActBasicBlock",
    "PreActBottleneck",
    "SqueezeExcite",
    "Transition",
]
