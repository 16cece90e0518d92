"""Pure functional ops over ``jax.Array``: convolution, padding and shape arithmetic.

Every op is jit-able, vmap-able and differentiable; inputs are channels-last.
"""

from jaxconv.ops import shapes as shapes
from jaxconv.ops._args import PADDING_MODES as PADDING_MODES
from jaxconv.ops._conv import conv as conv
from jaxconv.ops._conv import conv_transpose as conv_transpose
from jaxconv.ops._conv import depthwise_conv as depthwise_conv
from jaxconv.ops._conv import separable_conv as separable_conv

__all__ = [
    "PADDING_MODES",
    "conv",
    "conv_transpose",
    "depthwise_conv",
    "separable_conv",
    "shapes",
]
