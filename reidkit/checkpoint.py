"""Checkpoints: atomic saves and ``weights_only=True`` loads.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts, so it loads with
``torch.load(..., weights_only=True)`` (no pickled code runs on load). The trainer stores the
config as a dict, RNG states as tensors/lists, and the history as lists of dicts of floats.

``save_checkpoint`` writes through ``files.atomic_write`` (temporary file, fsync,
``os.replace``): a crash mid-save leaves the previous checkpoint intact, never a half-written one.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from reidkit.config import Config
from reidkit.files import atomic_write, unreadable_torch_file
from reidkit.models import JSTRNN, build_model


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, unreadable or not a reidkit checkpoint; names the file."""


CHECKSUM_KEY = "sha256"


def state_checksum(state: dict) -> str:
    """SHA-256 over everything in a checkpoint but its own checksum: every tensor's name, dtype,
    shape and bytes, every other value's text, in sorted key order."""
    h = hashlib.sha256()

    def walk(prefix: str, value) -> None:
        if isinstance(value, dict):
            for k in sorted(value, key=str):
                if not (prefix == "" and k == CHECKSUM_KEY):
                    walk(f"{prefix}/{k}", value[k])
        elif isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                walk(f"{prefix}[{i}]", v)
        elif isinstance(value, torch.Tensor):
            t = value.detach().cpu().contiguous().reshape(-1)
            h.update(f"{prefix}:{t.dtype}:{tuple(value.shape)}".encode())
            h.update(t.view(torch.uint8).numpy().tobytes())
        else:
            h.update(f"{prefix}={value!r}".encode())

    walk("", state)
    return h.hexdigest()


def save_checkpoint(path: str | Path, state: dict) -> Path:
    """Atomically and durably write ``state`` to ``path`` (``files.atomic_write``), with a
    checksum of its contents that ``load_checkpoint`` verifies."""
    state = {**state, CHECKSUM_KEY: state_checksum(state)}
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
        raise CheckpointError(f"cannot read checkpoint {path}: {unreadable_torch_file(path, e)}") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} is not a reidkit checkpoint (expected a dict, got {type(state).__name__})")
    return verify_state(path, state)


def verify_state(path: str | Path, state: dict) -> dict:
    """``state`` (read from ``path``) without its checksum, after checking that checksum; a
    mismatch is a ``CheckpointError`` naming the file."""
    saved = state.pop(CHECKSUM_KEY, None)
    if saved is None:
        raise CheckpointError(f"{path} has no checksum: it was not written by reidkit's save_checkpoint "
                              f"(`reidkit train` or `reidkit pretrain`)")
    if saved != state_checksum(state):
        raise CheckpointError(f"{path} is damaged: its contents do not match the checksum written with it "
                              f"(use another epoch_XXX.pt of the run, or train again)")
    return state


def load_model(path: str | Path, device="cpu", state: dict | None = None) -> tuple[JSTRNN, Config]:
    """The one loader of a trained run: ``(model in eval mode on device, Config)`` from a
    trainer checkpoint (``run_dir/last.pt`` or an ``epoch_XXX.pt``); ``state``: its contents,
    when the caller has already loaded them with ``load_checkpoint``."""
    state = load_checkpoint(path, map_location="cpu") if state is None else state
    if "model" not in state or "config" not in state:
        raise CheckpointError(f"{path} is not a reidkit training checkpoint (no model/config)")
    config = Config.from_dict(state["config"], source=str(path))
    model = build_model(config=config.model)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:  # weights of another variant or size than the config says
        first = str(e).splitlines()[1].strip() if len(str(e).splitlines()) > 1 else str(e)
        raise CheckpointError(f"{path}: the weights do not fit its own config (model.variant="
                              f"{config.model.variant}): {first}") from None
    return model.to(device).eval(), config
