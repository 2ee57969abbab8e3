"""A validation split carved from the training identities (learning curves without the test set).

``with_validation(manifest, split, num_ids)`` holds ``num_ids`` training identities out of
training and makes a query/gallery split of them, following the MARS protocol's rule: a
tracklet of an identity becomes a query (at most one per camera) only while every query of that
identity still has a tracklet of the same identity from *another* camera in the gallery; the
gallery is every held-out tracklet that is not a query. The identities are drawn with a fixed
generator from the sorted training identities, so every run on the same dataset and split (any
variant, any training seed) holds out the same people. The test identities are never touched.
"""

from __future__ import annotations

import numpy as np

from .manifest import Manifest, Split

__all__ = ["with_validation", "VALIDATION_SEED"]

VALIDATION_SEED = 20170721  # the held-out identities depend on the dataset only, not on train.seed


def _queries_of(tracklets: list[tuple[int, int]]) -> list[int]:
    """Query tracklet ids for one identity's ``(camid, tracklet_id)`` list (see the module rule)."""
    chosen: list[tuple[int, int]] = []
    for cam in sorted({c for c, _ in tracklets}):
        candidate = min((c, t) for c, t in tracklets if c == cam)
        queries = chosen + [candidate]
        gallery = [x for x in tracklets if x not in queries]
        if all(any(gc != qc for gc, _ in gallery) for qc, _ in queries):
            chosen = queries
    return [t for _, t in chosen]


def with_validation(manifest: Manifest, split: int, num_ids: int) -> tuple[Manifest, int]:
    """``(manifest', index)``: ``manifest'`` shares the tracklets of ``manifest`` and holds one more
    split, at ``index``: its ``train`` is the split's training identities minus ``num_ids`` held-out
    ones, its ``query``/``gallery`` are the held-out identities."""
    base = manifest.split(split)
    positions = manifest.positions(base.train)
    pids = manifest.pids[positions]
    people = np.unique(pids[pids >= 1])
    if not 1 <= num_ids <= len(people) - 2:
        raise ValueError(f"data.val_ids={num_ids}: split {split} of {manifest.root / 'splits.json'} has "
                         f"{len(people)} training identities; hold out between 1 and {len(people) - 2} "
                         f"(at least 2 must stay for training)")
    held = set(np.random.default_rng(VALIDATION_SEED).choice(people, size=num_ids, replace=False).tolist())
    train, per_person = [], {}
    for tid, pid, cam in zip(base.train, pids, manifest.camids[positions]):
        if int(pid) in held:
            per_person.setdefault(int(pid), []).append((int(cam), int(tid)))
        else:
            train.append(int(tid))
    query = sorted(t for person in per_person.values() for t in _queries_of(person))
    qset = set(query)
    gallery = sorted(t for person in per_person.values() for _, t in person if t not in qset)
    if not query:
        raise ValueError(f"data.val_ids={num_ids}: no held-out identity of {manifest.root} is seen by two "
                         f"cameras, so no validation query has a match; hold out more identities")
    splits = [*manifest.splits, Split(train=train, query=query, gallery=gallery)]
    return Manifest(manifest.root, manifest.tracklets, splits, manifest.meta), len(splits) - 1
