"""Which frames make a clip, and which tracklets make a batch.

Sampling follows Zhou et al. (CVPR 2017), section 4.2: "The length of an image sequence is
experimentally set to 6. The image sequence is randomly selected in a track-let." We read that
as T distinct frames drawn at random and kept in temporal order (see ``train_frame_indices``);
identities are drawn P at a time with K tracklets each (``PKSampler``) so batch-hard mining of
the triplet loss always finds positives and negatives. Testing uses every frame, in chunks of T
(``test_frame_indices``); the evaluator averages the chunk features.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Iterator

import numpy as np


# --------------------------------------------------------------------------------------------
# Frame sampling
# --------------------------------------------------------------------------------------------

def _pad_in_order(idx: np.ndarray, T: int) -> np.ndarray:
    """Stretch ``len(idx) < T`` indices to T by repeating each in temporal order.

    Element ``k`` of the result is ``idx[floor(k * L / T)]``: every frame is kept, each repeated
    ``T/L`` times (rounded), order preserved, e.g. [0, 1, 2] with T=6 -> [0, 0, 1, 1, 2, 2].
    """
    L = len(idx)
    return idx[(np.arange(T) * L) // T]


def train_frame_indices(num_frames: int, T: int, rng: np.random.Generator) -> np.ndarray:
    """Frame indices (int64, shape (T,)) of one training clip.

    Paper, section 4.2: "The image sequence is randomly selected in a track-let." We choose T
    *distinct* frames uniformly at random and sort them, so the RNN sees them in temporal order
    (the whole tracklet's span is reachable, not just a contiguous window). A tracklet shorter
    than T is used whole, each frame repeated in order: 3 frames, T=6 -> [0, 0, 1, 1, 2, 2]
    (no randomness in that case).
    """
    if num_frames < 1 or T < 1:
        raise ValueError(f"need num_frames >= 1 and T >= 1, got {num_frames}, {T}")
    if num_frames < T:
        return _pad_in_order(np.arange(num_frames, dtype=np.int64), T)
    return np.sort(rng.choice(num_frames, size=T, replace=False)).astype(np.int64)


def test_frame_indices(num_frames: int, T: int, mode: str = "chunks") -> list[np.ndarray]:
    """Frame indices of the test clips of one tracklet, a list of int64 arrays of shape (T,).

    ``"chunks"``: all frames, in consecutive chunks of T (frames 0..T-1, T..2T-1, ...); the last
    chunk, if shorter, is padded by repeating its own frames in order (``[6, 7]`` with T=6 ->
    ``[6, 6, 6, 7, 7, 7]``). Every frame appears in exactly one chunk. The evaluator averages the
    chunk features of a tracklet, so long tracklets never go through the network at once.

    ``"even"``: one clip of T evenly spaced frames (the centres of T equal segments); a tracklet
    shorter than T is padded in order as in ``train_frame_indices``.
    """
    if num_frames < 1 or T < 1:
        raise ValueError(f"need num_frames >= 1 and T >= 1, got {num_frames}, {T}")
    if mode == "even":
        return [((2 * np.arange(T, dtype=np.int64) + 1) * num_frames) // (2 * T)]
    if mode == "chunks":
        chunks = []
        for start in range(0, num_frames, T):
            idx = np.arange(start, min(start + T, num_frames), dtype=np.int64)
            chunks.append(idx if len(idx) == T else _pad_in_order(idx, T))
        return chunks
    raise ValueError(f"mode must be 'chunks' or 'even', got {mode!r}")


test_frame_indices.__test__ = False  # a library function, not a test: tell pytest not to collect it


# --------------------------------------------------------------------------------------------
# P x K identity sampler
# --------------------------------------------------------------------------------------------

class PKSampler:
    """Batches of P identities x K tracklets each, for batch-hard triplet mining.

    ``pids[i]`` is the identity of item i; iteration yields ``positions`` of the chosen items
    (``positions`` defaults to ``arange(len(pids))``, pass the manifest positions of the train
    split to get manifest positions back). Only real identities (pid >= 1) are sampled: junk (-1)
    and distractors (0) have no positives. An identity with fewer than K tracklets is sampled
    with replacement.

    Identities are visited in shuffled order, epoch after epoch, so every identity appears about
    equally often; a batch never holds an identity twice. The default epoch length is
    ``ceil(number of real-identity items / (P*K))`` steps. Everything is drawn from
    ``np.random.default_rng([seed, epoch])``: deterministic for a seed and epoch.

    Distributed training: every rank computes the same global batch and keeps identities
    ``rank*P/world_size : (rank+1)*P/world_size`` (P must divide by ``world_size``), so each rank
    yields ``(P/world_size)*K`` positions, the shards are disjoint and together form the batch.
    Mining then happens per rank on whole identities.
    """

    def __init__(self, pids, P: int, K: int, seed: int = 0, rank: int = 0, world_size: int = 1,
                 positions=None, steps_per_epoch: int | None = None):
        pids = np.asarray(pids, dtype=np.int64)
        positions = np.arange(len(pids)) if positions is None else np.asarray(positions, dtype=np.int64)
        if len(positions) != len(pids):
            raise ValueError(f"{len(positions)} positions for {len(pids)} pids")
        if P < 1 or K < 1:
            raise ValueError(f"P and K must be >= 1, got P={P}, K={K}")
        if world_size < 1 or not 0 <= rank < world_size or P % world_size:
            raise ValueError(f"P={P} must divide by world_size={world_size} and 0 <= rank={rank} < world_size")
        real = pids >= 1
        self.identities = np.unique(pids[real])
        if len(self.identities) < P:
            raise ValueError(f"P={P} identities per batch but only {len(self.identities)} "
                             f"identities with pid >= 1")
        self.items = [positions[real & (pids == pid)] for pid in self.identities]
        self.P, self.K, self.seed = P, K, seed
        self.rank, self.world_size = rank, world_size
        self.num_items = int(real.sum())
        self.steps_per_epoch = steps_per_epoch or math.ceil(self.num_items / (P * K))
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.steps_per_epoch

    @property
    def batch_size(self) -> int:
        """Items per yielded batch on this rank."""
        return self.P // self.world_size * self.K

    def global_batches(self, epoch: int | None = None) -> np.ndarray:
        """All global batches of an epoch: positions, shape (steps, P, K) (row = one identity)."""
        rng = np.random.default_rng([self.seed, self.epoch if epoch is None else epoch])
        n_ids = len(self.identities)
        queue: deque[int] = deque()
        out = np.empty((self.steps_per_epoch, self.P, self.K), dtype=np.int64)
        for s in range(self.steps_per_epoch):
            chosen: list[int] = []
            deferred: list[int] = []
            while len(chosen) < self.P:
                if not queue:
                    queue.extend(rng.permutation(n_ids).tolist())
                i = queue.popleft()
                (deferred if i in chosen else chosen).append(i)
            queue.extendleft(reversed(deferred))  # seen again first in the next batch
            for p, i in enumerate(chosen):
                items = self.items[i]
                out[s, p] = rng.choice(items, size=self.K, replace=len(items) < self.K)
        return out

    def __iter__(self) -> Iterator[np.ndarray]:
        per_rank = self.P // self.world_size
        lo = self.rank * per_rank
        for batch in self.global_batches():
            yield batch[lo:lo + per_rank].reshape(-1)
