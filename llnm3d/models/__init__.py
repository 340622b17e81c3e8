"""The model stage: image + nodule mask + report text -> LLNM-Net prediction.

The network and its inputs (``model``, ``inputs``, ``text``, ``features``, ``cases``), training
(``train``), per-case predictions and GradCAM++ heatmaps (``heatmap``), the heatmap sanity checks
(``heatmap_checks``) and the QC contact sheets (``qc``). Only the bundled weights' folder is
defined here, with the GradCAM++ layer names, so ``import llnm3d.models`` does not load torch;
import the module you need.
"""

from importlib import resources
from pathlib import Path

# The bundled weights travel inside the package (package data), so a wheel carries them; pip
# installs a wheel unpacked, so the resource is a real folder.
MODEL_DIR = Path(str(resources.files("llnm3d").joinpath("weights")))

# Layers GradCAM++ can read (:meth:`llnm3d.models.model.LLNMNet.gradcam_layers`) and the
# default, whose heatmaps the sanity checks in model/MODEL_CARD.md measure.
GRADCAM_LAYERS = ("fused", "last", "bidirectional")
DEFAULT_LAYER = "fused"
