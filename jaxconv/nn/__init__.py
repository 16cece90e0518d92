"""Flax Linen modules: layers that own parameters and call one op each, and the blocks of classic CNNs.

Every layer is channels-last. Training-time state is explicit: batch statistics live in the
``batch_stats`` collection, ``train`` is an argument, and dropout draws from the ``"dropout"`` rng.

Using a module or model from ``flax.nnx``: wrap it with ``flax.nnx.bridge.ToNNX`` and initialise
it lazily on a sample input (``jaxconv.nn.to_nnx`` does both; see its docstring).
"""

from jaxconv.nn import blocks as blocks
from jaxconv.nn import _init as initializers
from jaxconv.nn._layers import AdaptiveAvgPool as AdaptiveAvgPool
from jaxconv.nn._layers import AdaptiveMaxPool as AdaptiveMaxPool
from jaxconv.nn._layers import AvgPool as AvgPool
from jaxconv.nn._layers import BatchNorm as BatchNorm
from jaxconv.nn._layers import Conv as Conv
from jaxconv.nn._layers import ConvTranspose as ConvTranspose
from jaxconv.nn._layers import DepthwiseConv as DepthwiseConv
from jaxconv.nn._layers import GlobalAvgPool as GlobalAvgPool
from jaxconv.nn._layers import GlobalMaxPool as GlobalMaxPool
from jaxconv.nn._layers import LocalResponseNorm as LocalResponseNorm
from jaxconv.nn._layers import MaxPool as MaxPool
from jaxconv.nn._layers import SeparableConv as SeparableConv
from jaxconv.nn._nnx import to_nnx as to_nnx

__all__ = [
    "AdaptiveAvgPool",
    "AdaptiveMaxPool",
    "AvgPool",
    "BatchNorm",
    "Conv",
    "ConvTranspose",
    "DepthwiseConv",
    "GlobalAvgPool",
    "GlobalMaxPool",
    "LocalResponseNorm",
    "MaxPool",
    "SeparableConv",
    "blocks",
    "initializers",
    "to_nnx",
]
