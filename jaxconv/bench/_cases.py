"""The layer suites: named lists of convolution shapes, and their FLOP counts.

Every padding is an explicit symmetric int (PyTorch's convention), so all implementations
compute the same thing, PyTorch included (``"SAME"`` with stride 2 pads asymmetrically, which
PyTorch cannot express).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

MODES = ("fwd", "fwd+bwd", "fwd+dx", "fwd+dw")
MODE_HELP = {
    "fwd": "forward only",
    "fwd+bwd": "forward, then gradients with respect to input and kernel",
    "fwd+dx": "forward, then the gradient with respect to the input only",
    "fwd+dw": "forward, then the gradient with respect to the kernel only",
}
# Multiply-accumulates of each mode in units of the forward's: each gradient is a convolution
# with the same number of multiply-accumulates as the forward.
MODE_MAC_FACTOR = {"fwd": 1, "fwd+bwd": 3, "fwd+dx": 2, "fwd+dw": 2}


def _tup(v: Any, nd: int) -> tuple[int, ...]:
  return (int(v),) * nd if isinstance(v, int) else tuple(int(i) for i in v)


@dataclasses.dataclass(frozen=True)
class ConvCase:
  """One convolution shape.

  For ``transposed=False``: ``x [batch, *spatial, c_in]``, ``kernel [*k, c_in // groups, c_out]``
  (the arguments of :func:`jaxconv.ops.conv`). For ``transposed=True``: ``x [batch, *spatial,
  c_in]`` goes through :func:`jaxconv.ops.conv_transpose` with the forward kernel
  ``[*k, c_out, c_in]`` (the convolution it is the adjoint of maps ``c_out`` to ``c_in``).

  Attributes:
    name: short label in the reports.
    batch, spatial, c_in, c_out, kernel, stride, padding, dilation, groups: the shape; padding
      is symmetric (``p`` before and after).
    transposed: a transposed convolution.
    quick: part of the ``--quick`` subset.

  Example:
    >>> c = ConvCase("s1", batch=2, spatial=(8, 8), c_in=4, c_out=16, kernel=(3, 3), padding=1)
    >>> c.out_spatial, c.macs, c.flops("fwd+bwd")
    ((8, 8), 73728, 442368)
  """

  name: str
  batch: int
  spatial: tuple[int, ...]
  c_in: int
  c_out: int
  kernel: tuple[int, ...]
  stride: Any = 1
  padding: Any = 0
  dilation: Any = 1
  groups: int = 1
  transposed: bool = False
  quick: bool = False

  @property
  def nd(self) -> int:
    return len(self.spatial)

  @property
  def strides(self) -> tuple[int, ...]:
    return _tup(self.stride, self.nd)

  @property
  def pads(self) -> tuple[int, ...]:
    return _tup(self.padding, self.nd)

  @property
  def dilations(self) -> tuple[int, ...]:
    return _tup(self.dilation, self.nd)

  @property
  def x_shape(self) -> tuple[int, ...]:
    return (self.batch, *self.spatial, self.c_in)

  @property
  def kernel_shape(self) -> tuple[int, ...]:
    if self.transposed:
      return (*self.kernel, self.c_out // self.groups, self.c_in)
    return (*self.kernel, self.c_in // self.groups, self.c_out)

  @property
  def out_spatial(self) -> tuple[int, ...]:
    ext = [(k - 1) * d + 1 for k, d in zip(self.kernel, self.dilations)]
    if self.transposed:
      return tuple((n - 1) * s - 2 * p + e for n, s, p, e in zip(self.spatial, self.strides, self.pads, ext))
    return tuple((n + 2 * p - e) // s + 1 for n, s, p, e in zip(self.spatial, self.strides, self.pads, ext))

  @property
  def y_shape(self) -> tuple[int, ...]:
    return (self.batch, *self.out_spatial, self.c_out)

  @property
  def macs(self) -> int:
    """Multiply-accumulates of the forward pass (zeros inserted by strides not counted)."""
    k = math.prod(self.kernel)
    if self.transposed:  # the adjoint of a convolution from y's shape to x's shape
      return self.batch * math.prod(self.spatial) * self.c_in * k * self.c_out // self.groups
    return self.batch * math.prod(self.out_spatial) * self.c_out * k * self.c_in // self.groups

  def flops(self, mode: str = "fwd") -> int:
    """Nominal floating-point operations of ``mode``: ``2 * macs`` per convolution computed."""
    return 2 * self.macs * MODE_MAC_FACTOR[mode]

  def describe(self) -> str:
    """A compact shape string, e.g. ``32x32x64->64 k3 s2 p1 N16``."""
    sp = "x".join(map(str, self.spatial))
    k = "x".join(map(str, self.kernel)) if len(set(self.kernel)) > 1 else str(self.kernel[0])
    parts = [f"{sp}x{self.c_in}->{self.c_out}", f"k{k}"]
    for label, v in (("s", self.strides), ("p", self.pads), ("d", self.dilations)):
      if any(i != (0 if label == "p" else 1) for i in v):
        parts.append(f"{label}{v[0] if len(set(v)) == 1 else 'x'.join(map(str, v))}")
    if self.groups > 1:
      parts.append("dw" if self.groups == self.c_in and not self.transposed else f"g{self.groups}")
    if self.transposed:
      parts.append("T")
    parts.append(f"N{self.batch}")
    return " ".join(parts)

  def with_batch(self, batch: int) -> "ConvCase":
    return dataclasses.replace(self, batch=batch)

  def tiny(self) -> "ConvCase":
    """The same configuration (stride, dilation, groups, padding, kind) on a few pixels and
    channels: small enough for :func:`jaxconv.reference.conv_loops`."""
    ext = [(k - 1) * d + 1 for k, d in zip(self.kernel, self.dilations)]
    side = 4 if self.nd == 3 else 7
    spatial = tuple(max(min(n, side), e - 2 * p, s) for n, e, p, s in zip(self.spatial, ext, self.pads, self.strides))
    if self.transposed:
      spatial = tuple(min(n, 4) for n in self.spatial)
    if self.groups == self.c_in and self.groups > 1:  # depthwise
      c = 3
      c_in, c_out, groups = c, c * (self.c_out // self.c_in), c
    elif self.groups > 1:
      groups = min(self.groups, 3)
      c_in, c_out = 2 * groups, 2 * groups
    else:
      groups, c_in, c_out = 1, min(self.c_in, 3), min(self.c_out, 4)
    return dataclasses.replace(self, batch=1, spatial=spatial, c_in=c_in, c_out=c_out, groups=groups)


def _c(name, batch, spatial, c_in, c_out, k, **kw) -> ConvCase:
  nd = len(spatial)
  return ConvCase(name, batch, tuple(spatial), c_in, c_out, _tup(k, nd), **kw)


# name -> (description, cases). Batch sizes are picked so each forward is a few hundred MFLOP:
# long enough to time, short enough that XLA:CPU's slow kernel gradients stay within seconds.
LAYER_SUITES: dict[str, tuple[str, tuple[ConvCase, ...]]] = {
    "lenet_mnist": (
        "LeNet-5 on 28x28 MNIST, batch 128",
        (
            _c("conv1 5x5 1->6", 128, (28, 28), 1, 6, 5, padding=2),
            _c("conv2 5x5 6->16", 128, (14, 14), 6, 16, 5, quick=True),
        ),
    ),
    "resnet_cifar": (
        "ResNet-18 (CIFAR variant) layers at 32x32, 64-512 channels, batch 16",
        (
            _c("stem 3x3 3->64", 16, (32, 32), 3, 64, 3, padding=1),
            _c("stage1 3x3 64", 16, (32, 32), 64, 64, 3, padding=1, quick=True),
            _c("stage2 3x3/2 64->128", 16, (32, 32), 64, 128, 3, stride=2, padding=1),
            _c("stage2 shortcut 1x1/2", 16, (32, 32), 64, 128, 1, stride=2),
            _c("stage2 3x3 128", 16, (16, 16), 128, 128, 3, padding=1),
            _c("stage3 3x3/2 128->256", 16, (16, 16), 128, 256, 3, stride=2, padding=1),
            _c("stage3 3x3 256", 16, (8, 8), 256, 256, 3, padding=1),
            _c("stage4 3x3/2 256->512", 16, (8, 8), 256, 512, 3, stride=2, padding=1),
            _c("stage4 3x3 512", 16, (4, 4), 512, 512, 3, padding=1),
        ),
    ),
    "resnet50_224": (
        "ResNet-50 (v1.5) stages at 224x224, batch 4",
        (
            _c("stem 7x7/2 3->64", 4, (224, 224), 3, 64, 7, stride=2, padding=3),
            _c("conv2 3x3 64", 4, (56, 56), 64, 64, 3, padding=1),
            _c("conv2 1x1 64->256", 4, (56, 56), 64, 256, 1),
            _c("conv3 3x3/2 128", 4, (56, 56), 128, 128, 3, stride=2, padding=1, quick=True),
            _c("conv3 1x1 512->128", 4, (28, 28), 512, 128, 1),
            _c("conv4 3x3 256", 4, (14, 14), 256, 256, 3, padding=1),
            _c("conv4 1x1 1024->256", 4, (14, 14), 1024, 256, 1),
            _c("conv5 3x3 512", 4, (7, 7), 512, 512, 3, padding=1),
            _c("conv5 1x1 512->2048", 4, (7, 7), 512, 2048, 1),
        ),
    ),
    "mobilenetv2": (
        "MobileNetV2 depthwise 3x3 and pointwise 1x1 layers at 224x224 input, batch 8",
        (
            _c("dw 3x3 32 @112", 8, (112, 112), 32, 32, 3, padding=1, groups=32),
            _c("pw 1x1 32->16 @112", 8, (112, 112), 32, 16, 1),
            _c("dw 3x3/2 96 @112", 8, (112, 112), 96, 96, 3, stride=2, padding=1, groups=96),
            _c("pw 1x1 24->144 @56", 8, (56, 56), 24, 144, 1, quick=True),
            _c("dw 3x3 144 @56", 8, (56, 56), 144, 144, 3, padding=1, groups=144, quick=True),
            _c("dw 3x3 384 @14", 8, (14, 14), 384, 384, 3, padding=1, groups=384),
            _c("pw 1x1 384->64 @14", 8, (14, 14), 384, 64, 1),
            _c("dw 3x3 960 @7", 8, (7, 7), 960, 960, 3, padding=1, groups=960),
            _c("pw 1x1 960->320 @7", 8, (7, 7), 960, 320, 1),
        ),
    ),
    "special": (
        "dilated, grouped, strided, transposed, 1-D and 3-D convolutions",
        (
            _c("dilated 3x3 d2", 8, (32, 32), 64, 64, 3, padding=2, dilation=2, quick=True),
            _c("grouped 3x3 g8", 8, (16, 16), 128, 128, 3, padding=1, groups=8, quick=True),
            _c("strided 4x4/4 patchify", 8, (64, 64), 3, 96, 4, stride=4),
            _c("transposed 4x4/2 up", 8, (16, 16), 64, 32, 4, stride=2, padding=1, transposed=True, quick=True),
            _c("1-D k5", 8, (1024,), 64, 64, 5, padding=2, quick=True),
            _c("3-D 3x3x3", 2, (16, 16, 16), 16, 32, 3, padding=1, quick=True),
        ),
    ),
}

# The ResNet CIFAR layers at the batch of the ResNet-18 train step (128): XLA:CPU's kernel gradient
# is about 2.5x slower per FLOP there than at batch 16, so this is the suite that shows what a
# training step meets. 8x the work of resnet_cifar (about 6 minutes on two cores), hence optional.
LAYER_SUITES["resnet_cifar_b128"] = (
    "ResNet-18 (CIFAR variant) layers at the train step's batch 128 (optional: named, or --include-large)",
    tuple(c.with_batch(128) for c in LAYER_SUITES["resnet_cifar"][1]),
)
OPTIONAL_SUITES = ("resnet_cifar_b128",)

QUICK_BATCH = 2


def suite_cases(name: str, quick: bool = False, batch_scale: int = 1) -> tuple[ConvCase, ...]:
  """The cases of a layer suite, their batch multiplied by ``batch_scale`` (accelerators need
  more work per call than two CPU cores); with ``quick``, the ``quick`` subset at batch 2.

  Example:
    >>> [c.batch for c in suite_cases("lenet_mnist")], [c.batch for c in suite_cases("lenet_mnist", batch_scale=8)]
    ([128, 128], [1024, 1024])
  """
  cases = LAYER_SUITES[name][1]
  if quick:
    return tuple(c.with_batch(min(c.batch, QUICK_BATCH)) for c in cases if c.quick)
  return tuple(c.with_batch(c.batch * batch_scale) for c in cases)
