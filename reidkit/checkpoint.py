"""Checkpoints: atomic saves and ``weights_only=True`` loads.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts, so it loads with
``torch.load(..., weights_only=True)`` (no pickled code runs on load). The trainer stores the
config as a dict, RNG states as tensors/lists, and the history as lists of dicts of floats.

``save_checkpoint`` writes through ``files.atomic_write`` (temporary file, fsync,
``os.replace``): a crash mid-save leaves the previous checkpoint intact, never a half-written one.
"""

from __future__ import annotations

from pathlib import Path

import torch

from reidkit.config import Config
from reidkit.files import atomic_write
from reidkit.models import JSTRNN, build_model


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, unreadable or not a reidkit checkpoint; names the file."""


def save_checkpoint(path: str | Path, state: dict) -> Path:
    """Atomically and durably write ``state`` to ``path`` (``files.atomic_write``)."""
    with atomic_write(path, durable=True) as tmp:
        torch.save(state, tmp)
    return Path(path)


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


def load_model(path: str | Path, device="cpu") -> tuple[JSTRNN, Config]:
    """The one loader of a trained run: ``(model in eval mode on device, Config)`` from a
    trainer checkpoint (``run_dir/last.pt`` or an ``epoch_XXX.pt``)."""
    state = load_checkpoint(path, map_location="cpu")
    if "model" not in state or "config" not in state:
        raise CheckpointError(f"{path} is not a reidkit training checkpoint (no model/config)")
    config = Config.from_dict(state["config"], source=str(path))
    model = build_model(config=config.model)
    model.load_state_dict(state["model"])
    return model.to(device).eval(), config
