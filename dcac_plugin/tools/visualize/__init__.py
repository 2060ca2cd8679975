"""Pictures of a trained run: ranked retrieval results, GradCAM maps (paper Fig. 3), training curves.

Kept out of the training path: these only read what a run left on disk (config, weights,
TensorBoard events) and import matplotlib/OpenCV lazily where possible.
"""
from .curves import plot_training_curves, read_scalars
from .gradcam import gradcam, overlay, save_gradcam_grid
from .ranked import ranked_results_for_run, save_ranked_results

__all__ = ["gradcam", "overlay", "plot_training_curves", "ranked_results_for_run", "read_scalars",
           "save_gradcam_grid", "save_ranked_results"]
