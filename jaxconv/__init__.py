"""jaxconv: convolutional neural networks in JAX.

Layers, from the bottom: ``jaxconv.reference`` (slow oracles), ``jaxconv.ops`` (pure functions),
``jaxconv.nn`` (Flax modules and blocks), ``jaxconv.models`` (the zoo), and the workflows
``jaxconv.data``, ``jaxconv.train``, ``jaxconv.bench``, ``jaxconv.viz``.

``jaxconv.ops`` needs only JAX: ``jaxconv.nn`` and ``jaxconv.models`` (which need Flax) are
imported on first use. ``jaxconv.summary`` is the function; its package's modules import by
name (``from jaxconv.summary.cli import main``).
"""

import importlib

from jaxconv import ops as ops
from jaxconv.summary import summary as summary

__version__ = "0.1.0"

__all__ = ["ops", "nn", "models", "summary", "__version__"]

_LAZY = ("nn", "models")


def __getattr__(name: str):
  if name in _LAZY:   # Flax is imported with them, not with jaxconv.ops
    return importlib.import_module(f"jaxconv.{name}")
  raise AttributeError(f"module 'jaxconv' has no attribute {name!r}")


def __dir__():
  return sorted(set(globals()) | set(_LAZY))
