"""Slow, obviously-correct oracles used by tests and benchmarks.

Nothing here shares code with ``jaxconv.ops``: each function is written straight from the
textbook formula (NumPy loops) or from a different formulation (im2col patches + einsum), so an
agreement between the two is evidence, not a tautology. Never imported by library code paths.
"""

from jaxconv.reference._einsum import conv_einsum as conv_einsum
from jaxconv.reference._loops import conv_loops as conv_loops
from jaxconv.reference._loops import conv_transpose_loops as conv_transpose_loops

__all__ = ["conv_einsum", "conv_loops", "conv_transpose_loops"]
