"""Pure functional ops over ``jax.Array``: convolution, padding and shape arithmetic.

Every op is jit-able, vmap-able and differentiable; inputs are channels-last.
"""

from jaxconv.ops import shapes as shapes
from jaxconv.ops._args import PADDING_MODES as PADDING_MODES
from jaxconv.ops._conv import conv as conv
from jaxconv.ops._conv import conv_transpose as conv_transpose
from jaxconv.ops._conv import depthwise_conv as depthwise_conv
from jaxconv.ops._conv import separable_conv as separable_conv
from jaxconv.ops._conv_grad import conv_config as conv_config
from jaxconv.ops._native import NativeStatus as NativeStatus
from jaxconv.ops._native import status as native_status
from jaxconv.ops._filters import box_kernel as box_kernel
from jaxconv.ops._filters import filter2d as filter2d
from jaxconv.ops._filters import gabor_kernel as gabor_kernel
from jaxconv.ops._filters import gaussian_kernel as gaussian_kernel
from jaxconv.ops._filters import gaussian_size as gaussian_size
from jaxconv.ops._filters import laplacian_kernel as laplacian_kernel
from jaxconv.ops._filters import scharr_kernel as scharr_kernel
from jaxconv.ops._filters import sobel_edges as sobel_edges
from jaxconv.ops._filters import sobel_kernel as sobel_kernel
from jaxconv.ops._losses import combine_losses as combine_losses
from jaxconv.ops._losses import dice_loss as dice_loss
from jaxconv.ops._losses import edge_aware_loss as edge_aware_loss
from jaxconv.ops._losses import l1_loss as l1_loss
from jaxconv.ops._losses import mse_loss as mse_loss
from jaxconv.ops._losses import perceptual_loss as perceptual_loss
from jaxconv.ops._losses import sigmoid_binary_cross_entropy as sigmoid_binary_cross_entropy
from jaxconv.ops._losses import soft_iou_loss as soft_iou_loss
from jaxconv.ops._losses import softmax_cross_entropy as softmax_cross_entropy
from jaxconv.ops._norm import batch_norm as batch_norm
from jaxconv.ops._norm import group_norm as group_norm
from jaxconv.ops._norm import instance_norm as instance_norm
from jaxconv.ops._norm import layer_norm as layer_norm
from jaxconv.ops._norm import local_response_norm as local_response_norm
from jaxconv.ops._pool import adaptive_avg_pool as adaptive_avg_pool
from jaxconv.ops._pool import adaptive_max_pool as adaptive_max_pool
from jaxconv.ops._pool import avg_pool as avg_pool
from jaxconv.ops._pool import global_avg_pool as global_avg_pool
from jaxconv.ops._pool import global_max_pool as global_max_pool
from jaxconv.ops._pool import lp_pool as lp_pool
from jaxconv.ops._pool import max_pool as max_pool
from jaxconv.ops._pool import max_pool_with_indices as max_pool_with_indices
from jaxconv.ops._pool import max_unpool as max_unpool
from jaxconv.ops._pool import min_pool as min_pool
from jaxconv.ops._pool import pool as pool

__all__ = [
    "PADDING_MODES",
    "conv",
    "conv_config",
    "NativeStatus",
    "native_status",
    "conv_transpose",
    "depthwise_conv",
    "separable_conv",
    "shapes",
]
__all__ += [  # pooling and normalization
    "adaptive_avg_pool", "adaptive_max_pool", "avg_pool", "batch_norm", "global_avg_pool",
    "global_max_pool", "group_norm", "instance_norm", "layer_norm", "local_response_norm",
    "lp_pool", "max_pool", "max_pool_with_indices", "max_unpool", "min_pool", "pool",
]
__all__ += [  # classic filters
    "box_kernel", "filter2d", "gabor_kernel", "gaussian_kernel", "gaussian_size",
    "laplacian_kernel", "scharr_kernel", "sobel_edges", "sobel_kernel",
]
__all__ += [  # losses
    "combine_losses", "dice_loss", "edge_aware_loss", "l1_loss", "mse_loss", "perceptual_loss",
    "sigmoid_binary_cross_entropy", "soft_iou_loss", "softmax_cross_entropy",
]
