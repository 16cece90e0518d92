"""Weight initializers as the papers and torchvision use them, for channels-last kernels.

Flax's :func:`jax.nn.initializers.variance_scaling` computes fans from an ``HWIO`` kernel as
``fan_in = prod(k) * C_in / groups`` and ``fan_out = prod(k) * C_out``, exactly what PyTorch
computes from its ``OIHW`` weight, so each torchvision rule is one ``variance_scaling`` call.
"""

from __future__ import annotations

import jax
from jax.nn import initializers

Initializer = jax.nn.initializers.Initializer

#: PyTorch's default for ``nn.Conv*d`` / ``nn.Linear`` weights, ``kaiming_uniform_(a=sqrt(5))``:
#: ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``, i.e. variance ``1 / (3 fan_in)``.
torch_default = initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")

#: He et al. 2015 (``kaiming_normal_(mode="fan_out", nonlinearity="relu")``): ``N(0, 2 / fan_out)``.
#: torchvision's ResNet, VGG and MobileNetV2 convolutions.
kaiming_normal_fan_out = initializers.variance_scaling(2.0, "fan_out", "normal")

#: ``kaiming_normal_()`` with its defaults (``fan_in``, ReLU gain): torchvision's DenseNet convs.
kaiming_normal_fan_in = initializers.variance_scaling(2.0, "fan_in", "normal")

#: ``kaiming_uniform_()`` with its defaults: ``U(+-sqrt(6 / fan_in))``; torchvision's SqueezeNet.
kaiming_uniform_fan_in = initializers.variance_scaling(2.0, "fan_in", "uniform")

zeros = initializers.zeros
ones = initializers.ones


def normal(stddev: float) -> Initializer:
  """``N(0, stddev^2)``: torchvision's classifier layers (VGG, MobileNetV2: 0.01).

  Example:
    >>> import jax
    >>> w = normal(0.01)(jax.random.key(0), (512, 10))
    >>> w.shape
    (512, 10)
  """
  return initializers.normal(stddev)


__all__ = [
    "Initializer",
    "kaiming_normal_fan_in",
    "kaiming_normal_fan_out",
    "kaiming_uniform_fan_in",
    "normal",
    "ones",
    "torch_default",
    "zeros",
]
