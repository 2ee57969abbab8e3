"""Manifest reading and writing, the uint8 frame cache, clip sampling and clip loaders.

The data path (see ``docs/architecture.md``), one module per step:

    manifest.py  tracklets.csv, splits.json, meta.json: Manifest.load, write_manifest, one validator
    cache.py     FrameCache: every frame decoded once, resized to H x W, stored as uint8 .npy;
                 the training frames uploaded to the GPU; disk and GPU-memory checks
    sampling.py  which frames make a clip (train / test), which tracklets make a batch (P x K)
    clips.py     clips (N, T, 3, H, W) gathered from the cache by index, normalised and mirrored
                 as tensors on the device (the GPU when there is one); the train and test loaders
    prefetch.py  the background thread that prepares the next training step during this one
    validation.py  a validation split carved from the training identities (learning curves)
"""

from .cache import CACHE_VERSION, GPU_HEADROOM, FrameCache, check_disk_space, decode_frame, plan_gpu_cache
from .clips import (MEAN, STD, ClipBatch, TrainClipLoader, clip_visibility, denormalize_clips, erase_frames,
                    even_clip, even_frame_indices, iter_test_clips, normalize_clips, num_test_clips)
from .manifest import (FORMAT_VERSION, PROTOCOLS, SOURCES, Manifest, ManifestError, Split, Tracklet,
                       manifest_fingerprint, write_manifest)
from .prefetch import Prefetcher
from .sampling import PKSampler, test_frame_indices, train_frame_indices
from .validation import with_validation

__all__ = [
    "MEAN", "STD", "FORMAT_VERSION", "PROTOCOLS", "SOURCES", "CACHE_VERSION",
    "ManifestError", "Tracklet", "Split", "Manifest", "write_manifest", "manifest_fingerprint",
    "decode_frame", "FrameCache", "check_disk_space", "plan_gpu_cache", "GPU_HEADROOM", "Prefetcher",
    "train_frame_indices", "test_frame_indices", "PKSampler",
    "normalize_clips", "denormalize_clips", "erase_frames", "clip_visibility", "ClipBatch",
    "TrainClipLoader", "iter_test_clips", "num_test_clips", "even_clip", "even_frame_indices", "with_validation",
]
