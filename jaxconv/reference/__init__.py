"""Slow, obviously-correct oracles used by tests and benchmarks.

Nothing here shares code with ``jaxconv.ops``: each function is written straight from the
textbook formula (NumPy loops) or from a different formulation (im2col patches + einsum), so an
agreement between the two is evidence, not a tautology. Never imported by library code paths.
"""
