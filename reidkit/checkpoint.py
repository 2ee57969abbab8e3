"""Checkpoints: atomic saves and ``weights_only=True`` loads.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts, so it loads with
``torch.load(..., weights_only=True)`` (no pickled code runs on load). The trainer stores the
config as a dict, RNG states as tensors/lists, and the history as lists of dicts of floats.

``save_checkpoint`` writes a temporary file in the destination folder, fsyncs it and renames it
over the target with ``os.replace`` (atomic on POSIX): a crash mid-save leaves the previous
checkpoint intact, never a half-written one.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, unreadable or not a reidkit checkpoint; names the file."""


def save_checkpoint(path: str | Path, state: dict) -> Path:
    """Atomically write ``state`` to ``path`` (temp file in the same folder, fsync, os.replace)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    # make the rename itself durable
    try:
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:  # some filesystems do not allow fsync on directories
        pass
    return path


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """Load a checkpoint written by ``save_checkpoint`` with ``weights_only=True``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated/corrupt files raise various errors from zipfile/pickle
        raise CheckpointError(f"cannot read checkpoint {path}: {type(e).__name__}: {e}") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} is not a reidkit checkpoint (expected a dict, got {type(state).__name__})")
    return state
