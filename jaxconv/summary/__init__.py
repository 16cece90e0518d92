"""Per-layer summary of a Flax model: shapes, parameters, multiply-accumulates, receptive fields.

:func:`summary` traces a model (nothing is computed on arrays) and returns a :class:`Summary`
of :class:`LayerInfo` rows; ``jaxconv summary MODEL --input-shape H,W,C`` prints it
(:mod:`jaxconv.summary.cli`). See :mod:`jaxconv.summary._summary` for how receptive fields and
MACs are counted.
"""

from jaxconv.summary._summary import FORMATS as FORMATS
from jaxconv.summary._summary import LayerInfo as LayerInfo
from jaxconv.summary._summary import Summary as Summary
from jaxconv.summary._summary import summary as summary

__all__ = ["FORMATS", "LayerInfo", "Summary", "summary"]
