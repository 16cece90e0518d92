"""Slow, obviously-correct oracles used by tests and benchmarks.

Nothing here shares code with ``jaxconv.ops``: each function is written straight from the
textbook formula (NumPy loops) or from a different formulation (im2col patches + einsum), so an
agreement between the two is evidence, not a tautology. Never imported by library code paths.
"""

from jaxconv.reference._einsum import conv_einsum as conv_einsum
from jaxconv.reference._loops import conv_loops as conv_loops
from jaxconv.reference._loops import conv_transpose_loops as conv_transpose_loops
from jaxconv.reference._norm import batch_norm_np as batch_norm_np
from jaxconv.reference._norm import group_norm_np as group_norm_np
from jaxconv.reference._norm import lrn_loop as lrn_loop
from jaxconv.reference._pool import adaptive_pool_loop as adaptive_pool_loop
from jaxconv.reference._pool import max_pool_indices_loop as max_pool_indices_loop
from jaxconv.reference._pool import pool_loop as pool_loop

__all__ = ["conv_einsum", "conv_loops", "conv_transpose_loops"]
__all__ += ["adaptive_pool_loop", "batch_norm_np", "group_norm_np", "lrn_loop", "max_pool_indices_loop", "pool_loop"]
