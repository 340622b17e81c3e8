"""The model stage: image + nodule mask + report text -> LLNM-Net prediction.

The network and its inputs (``model``, ``inputs``, ``text``, ``features``, ``cases``), training
(``train``), per-case predictions and GradCAM++ heatmaps (``heatmap``), the heatmap sanity checks
(``heatmap_checks``) and the QC contact sheets (``qc``). Nothing is imported here, so
``import llnm3d.models`` does not load torch; import the module you need.
"""
