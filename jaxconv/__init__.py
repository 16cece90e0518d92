"""jaxconv: convolutional neural networks in JAX.

Layers, from the bottom: ``jaxconv.reference`` (slow oracles), ``jaxconv.ops`` (pure functions),
``jaxconv.nn`` (Flax modules and blocks), ``jaxconv.models`` (the zoo), and the workflows
``jaxconv.data``, ``jaxconv.train``, ``jaxconv.bench``, ``jaxconv.viz``.
"""

from jaxconv import ops as ops
from jaxconv import nn as nn
from jaxconv import models as models
from jaxconv.summary import summary as summary

__version__ = "0.1.0"

__all__ = ["ops", "nn", "models", "summary", "__version__"]
