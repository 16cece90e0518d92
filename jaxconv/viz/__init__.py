"""Seeing inside a CNN, and plots of training runs.

- Attribution (:mod:`jaxconv.viz.attribution`): :func:`saliency`, :func:`integrated_gradients`,
  :func:`smoothgrad`, :func:`occlusion` -- Captum's methods for any ``fn: x -> logits``.
- Layers (:mod:`jaxconv.viz.cam`): :func:`intermediates` (feature maps of named layers), :func:`layer_output`,
  :func:`grad_cam`, :func:`grad_cam_plus_plus`, :func:`default_layer`.
- Feature visualization (:mod:`jaxconv.viz.features`): :func:`activation_maximization`.
- Pictures (:mod:`jaxconv.viz.images`, NumPy images): :func:`kernel_grid`, :func:`feature_grid`,
  :func:`overlay`, :func:`receptive_field_box`, :func:`draw_box`; :func:`save_image` writes PNG.
- Plots (PNG, matplotlib imported lazily; ``pip install -e ".[viz]"``): :func:`plot_metrics`,
  :func:`plot_confusion_matrix`.

Example:
  >>> import tempfile
  >>> recs = [{"split": "train", "step": s, "loss": 1 / s, "top1": 0.5, "lr": 0.1} for s in (1, 2)]
  >>> [p.name for p in plot_metrics(recs, tempfile.mkdtemp())]
  ['loss.png', 'accuracy.png', 'lr.png']
"""

from jaxconv.viz.attribution import IG_METHODS as IG_METHODS
from jaxconv.viz.attribution import ig_steps as ig_steps
from jaxconv.viz.attribution import integrated_gradients as integrated_gradients
from jaxconv.viz.attribution import occlusion as occlusion
from jaxconv.viz.attribution import saliency as saliency
from jaxconv.viz.attribution import smoothgrad as smoothgrad
from jaxconv.viz.cam import default_layer as default_layer
from jaxconv.viz.features import STANDARD_TRANSFORMS as STANDARD_TRANSFORMS
from jaxconv.viz.features import activation_maximization as activation_maximization
from jaxconv.viz.cam import grad_cam as grad_cam
from jaxconv.viz.cam import grad_cam_plus_plus as grad_cam_plus_plus
from jaxconv.viz.cam import intermediates as intermediates
from jaxconv.viz.cam import layer_output as layer_output
from jaxconv.viz.images import as_rgb as as_rgb
from jaxconv.viz.images import draw_box as draw_box
from jaxconv.viz.images import feature_grid as feature_grid
from jaxconv.viz.images import kernel_grid as kernel_grid
from jaxconv.viz.images import overlay as overlay
from jaxconv.viz.images import receptive_field_box as receptive_field_box
from jaxconv.viz.images import save_image as save_image
from jaxconv.viz.plots import plot_confusion_matrix as plot_confusion_matrix
from jaxconv.viz.plots import plot_metrics as plot_metrics

__all__ = ["IG_METHODS", "STANDARD_TRANSFORMS", "activation_maximization", "as_rgb", "default_layer", "draw_box",
           "feature_grid", "grad_cam", "grad_cam_plus_plus", "ig_steps", "integrated_gradients", "intermediates",
           "kernel_grid", "layer_output", "occlusion", "overlay", "plot_confusion_matrix", "plot_metrics", "receptive_field_box",
           "saliency", "save_image", "smoothgrad"]
