"""data.val_ids: a validation split carved from the training identities, and what eval_every scores."""

import numpy as np
import pytest

from reidkit.data import Manifest, with_validation
from tests.test_train import make_tiny_dataset, tiny_config
from reidkit.train import Trainer


def test_validation_split_holds_out_training_people_only(make_manifest):
    root = make_manifest(num_ids=20, num_cams=3, tracklets_per_cam=2, distractors=2)
    m = Manifest.load(root)
    derived, i = with_validation(m, 0, 4)
    base, val = m.split(0), derived.split(i)
    pid = dict(zip(m.tracklet_ids.tolist(), m.pids.tolist()))
    cam = dict(zip(m.tracklet_ids.tolist(), m.camids.tolist()))
    held = {pid[t] for t in val.query + val.gallery}
    assert len(held) == 4 and held <= {pid[t] for t in base.train}
    assert not held & {pid[t] for t in val.train}          # held-out people never train
    assert not held & {pid[t] for t in base.query + base.gallery}  # and are no test people
    assert sorted(val.train + val.query + val.gallery) == sorted(base.train)  # nothing lost or added
    assert not set(val.query) & set(val.gallery)
    for q in val.query:  # every query keeps a cross-camera match in the gallery
        assert any(pid[g] == pid[q] and cam[g] != cam[q] for g in val.gallery)
    assert len(val.query) > 4  # up to one query per camera and person, not one per person
    assert derived.split(0) is base and derived.tracklets == m.tracklets
    again, _ = with_validation(m, 0, 4)  # the same people for every run on this dataset
    assert again.split(i) == val


@pytest.mark.parametrize("n", [0, 9, -1])
def test_validation_split_refuses_impossible_sizes(make_manifest, n):
    m = Manifest.load(make_manifest(num_ids=20, num_cams=2))  # 10 training identities
    with pytest.raises(ValueError, match=rf"data.val_ids={n}: .*splits.json has 10 training identities"):
        with_validation(m, 0, n)


def test_eval_every_scores_the_validation_people(tmp_path):
    data = make_tiny_dataset(tmp_path / "d", identities=12)
    trainer = Trainer(tiny_config(data, tmp_path / "r", "data.val_ids=3", "train.eval_every=1", "train.epochs=1"))
    derived, i = trainer.train_manifest, trainer.train_split
    held = set(derived.pids[derived.positions(derived.split(i).query)].tolist())
    sampled = {int(p) for batch in trainer.loader for p in batch.pids}  # every identity one epoch draws
    assert held and not held & sampled and len(sampled) == 12 // 2 - 3
    history = trainer.fit()
    assert history[-1]["scored_on"] == "validation" and 0 <= history[-1]["rank1"] <= 100
