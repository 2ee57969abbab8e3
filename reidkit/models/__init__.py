"""The model of the paper by its parts' names (re-exports; each module's docstring cites its figure or equation).

- ``jstrnn``: ``JSTRNN`` (Fig. 2), ``build_model``, ``FeatureOutput``, ``load_pretrained_cnn``; ``model_device``,
  ``eval_mode``
- ``variants``: ``VARIANTS``, the six models of Table 2, and ``METHOD_NAMES``
- ``similarity``: Eq. 2: F, M, S and ``pair_score``
- ``config``: ``ModelConfig``
- ``caffenet``: ``CaffeNet`` (Sec. 3.1), ``state_dict_differences``; ``temporal``: ``TemporalAttention`` (Eq. 3) and the
  pooling baselines; ``spatial``: ``SpatialRecurrentModel`` (Fig. 5-7), ``DifferenceHead``
"""

from .caffenet import CaffeNet, PretrainedLoad, PretrainedWeightsError, state_dict_differences
from .config import ModelConfig
from .jstrnn import JSTRNN, FeatureOutput, build_model, eval_mode, load_pretrained_cnn, model_device
from .similarity import feature_distance, feature_distance_matrix, metric_score, pair_score, similarity
from .spatial import DIRECTIONS, DifferenceHead, SpatialRecurrentModel
from .temporal import AveragePooling, RecurrentPooling, TemporalAttention
from .variants import METHOD_NAMES, VARIANTS

__all__ = [
    "VARIANTS", "METHOD_NAMES", "ModelConfig", "CaffeNet", "PretrainedWeightsError", "PretrainedLoad", "AveragePooling",
    "RecurrentPooling", "TemporalAttention", "DifferenceHead", "SpatialRecurrentModel", "DIRECTIONS", "JSTRNN",
    "FeatureOutput", "build_model", "load_pretrained_cnn", "state_dict_differences", "model_device", "eval_mode", "feature_distance",
    "feature_distance_matrix", "metric_score", "similarity", "pair_score",
]
