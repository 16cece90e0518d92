"""Plots of training runs (PNG, matplotlib imported lazily; ``pip install 'jaxconv[viz]'``).

Example:
  >>> import tempfile
  >>> recs = [{"split": "train", "step": s, "loss": 1 / s, "top1": 0.5, "lr": 0.1} for s in (1, 2)]
  >>> [p.name for p in plot_metrics(recs, tempfile.mkdtemp())]
  ['loss.png', 'accuracy.png', 'lr.png']
"""

from jaxconv.viz.plots import plot_confusion_matrix as plot_confusion_matrix
from jaxconv.viz.plots import plot_metrics as plot_metrics

__all__ = ["plot_metrics", "plot_confusion_matrix"]
