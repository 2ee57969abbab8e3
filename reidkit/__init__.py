"""reidkit: video-based person re-identification with joint spatial and temporal RNNs.

Implements Zhou et al., "See the Forest for the Trees: Joint Spatial and Temporal
Recurrent Neural Networks for Video-based Person Re-identification", CVPR 2017.
The core imports only torch, numpy, pillow, tqdm, pyyaml and scipy.
"""

__version__ = "0.1.0"
