"""See what a trained network looks at: CAM, Grad-CAM(++), gradient attributions, feature maps, mistakes.

``explain(model, images, "gradcam")`` returns heat maps for a batch; the
``*_run`` functions do the same for a run folder and write the figures that
``cnnlab explain``, ``features``, ``filters`` and ``errors`` show. Methods are
looked up by name in :data:`METHODS`; CAM and Grad-CAM++ are implemented here
from their papers, the others go through captum.
"""

from __future__ import annotations

from cnnlab.explain.attribution import MethodOptions
from cnnlab.explain.core import Explanation, explain, normalize_maps
from cnnlab.explain.methods import METHODS, Method, list_methods
from cnnlab.explain.modules import default_layer, explainable_copy, layer_names, resolve_layer
from cnnlab.explain.runs import (
    ErrorReport,
    ExplainOutputs,
    errors_run,
    explain_run,
    features_run,
    filters_run,
    select_images,
)
from cnnlab.explain.targets import resolve_targets
from cnnlab.explain.views import (
    ClassAccuracy,
    confident_mistakes,
    feature_maps,
    layer_kernels,
    per_class_accuracy,
)

__all__ = [
    "METHODS",
    "ClassAccuracy",
    "ErrorReport",
    "ExplainOutputs",
    "Explanation",
    "Method",
    "MethodOptions",
    "confident_mistakes",
    "default_layer",
    "errors_run",
    "explain",
    "explain_run",
    "explainable_copy",
    "feature_maps",
    "features_run",
    "filters_run",
    "layer_kernels",
    "layer_names",
    "list_methods",
    "normalize_maps",
    "per_class_accuracy",
    "resolve_layer",
    "resolve_targets",
    "select_images",
]
