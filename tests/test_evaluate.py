"""reidkit.evaluate with fake models (the JSTRNN interface, trivial insides) on tiny manifests."""

import dataclasses
import json
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from reidkit.config import EvalConfig
from reidkit.data import FrameCache, Manifest, normalize_clips, num_test_clips, test_frame_indices
from reidkit.evaluate import (evaluate, evaluate_features, evaluation_positions, even_clip_outputs, extract_features,
                              rank_gallery)
from reidkit.models import FeatureOutput, pair_score

T = 3


class FakeModel(nn.Module):
    """features = mean colour of the clip; pool5 = frames pooled to 2×1; M from the pool5 difference.

    Linear in the pixels, so chunk averaging can be checked exactly. Counts its calls.
    """

    def __init__(self, ranking="distance"):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1))  # something for the weights hash to see
        self.ranking = ranking
        self.has_feature_branch = ranking != "metric"
        self.has_metric_branch = ranking != "distance"
        self.variant = {"distance": "cnn", "metric": "cnn_srm", "similarity": "all"}[ranking]
        self.config = SimpleNamespace(seq_len=T, lam=1.0)
        self.clips_seen = 0
        self.max_T = 0

    def describe(self, clips):
        return clips.mean(dim=(1, 3, 4)) * self.scale

    def features(self, clips):
        self.clips_seen += len(clips)
        self.max_T = max(self.max_T, clips.shape[1])
        n, t = clips.shape[:2]
        pool5 = F.adaptive_avg_pool2d(clips.flatten(0, 1), (2, 1)).view(n, t, 3, 2, 1)
        return FeatureOutput(self.describe(clips), None, pool5)

    def metric(self, a, b):
        return 2.0 - 4.0 * (a - b)[:, :, 2, 1, 0].abs().mean(dim=1)  # bottom half, blue only

    def pair_score(self, fa, fb, logits=None, kind=None):
        return pair_score(kind or self.ranking, fa, fb, logits, self.config.lam)


class OracleModel(FakeModel):
    """Knows every tracklet's identity from its colour: a perfectly separable feature."""

    def __init__(self, manifest, cache):
        super().__init__("distance")
        keys, pids = [], []
        for p, t in enumerate(manifest.tracklets):
            frame = torch.from_numpy(np.asarray(cache.frames[cache.offsets[p]]))[None, None]
            keys.append(self._key(normalize_clips(frame))[0])
            pids.append(t.pid)
        self.keys = torch.stack(keys)
        self.pids = torch.tensor(pids)

    @staticmethod
    def _key(clips):
        return clips[:, 0, :, 0, -1]  # top row, last column: the tracklet's own colour

    def describe(self, clips):
        pid = self.pids[torch.cdist(self._key(clips), self.keys).argmin(dim=1)]
        return F.one_hot(pid + 1, int(self.pids.max()) + 2).float()


def load(make_manifest, **kwargs):
    manifest = Manifest.load(make_manifest(**kwargs))
    cache = FrameCache.build(manifest, 24, 12, progress=False)
    return manifest, cache


def run(model, manifest, cache, convention="common", rerank_top_k=100, exact=False, batch_size=64, **kwargs):
    kwargs.setdefault("progress", False)
    eval_cfg = EvalConfig(convention=convention, rerank_top_k=rerank_top_k, exact=exact, batch_size=batch_size)
    return evaluate(model, manifest, cache, eval_cfg, **kwargs)


def test_eval_config_drives_the_evaluation(make_manifest):
    """``evaluate`` takes a run's ``config.eval``; None means the ``EvalConfig`` defaults."""
    manifest, cache = load(make_manifest, num_ids=10, distractors=3)
    model = FakeModel("similarity")
    default = evaluate(model, manifest, cache, progress=False)
    assert default.to_dict()["per_query"] == run(model, manifest, cache, batch_size=256).to_dict()["per_query"]
    assert "top-100" in default.ranking or "exact" in default.ranking
    k2 = run(model, manifest, cache, rerank_top_k=2)
    assert "top-2 " in k2.ranking and not np.array_equal(k2.per_query.gallery_ids, default.per_query.gallery_ids)
    official = run(model, manifest, cache, convention="official")
    assert official.convention_name == "official" and official.num_gallery > default.num_gallery
    feats = extract_features(model, manifest, cache, np.arange(len(manifest.tracklets)), progress=False)
    again = evaluate_features(model, manifest, feats, EvalConfig(rerank_top_k=2), progress=False)
    np.testing.assert_array_equal(again.per_query.gallery_ids, k2.per_query.gallery_ids)
    with pytest.raises(TypeError):
        evaluate(model, manifest, cache, None, 0)  # split and the rest are keyword-only


def test_perfectly_separable_model_scores_100(make_manifest):
    manifest, cache = load(make_manifest, num_ids=8, tracklets_per_cam=2, distractors=3, junk=2)
    result = run(OracleModel(manifest, cache), manifest, cache)
    assert result.rank1 == 100.0 and result.mAP == pytest.approx(100.0)
    assert result.num_queries == 4 and result.num_skipped == 0
    assert np.all(result.cmc == 100.0)


def test_top_k_covering_the_gallery_equals_exact(make_manifest):
    manifest, cache = load(make_manifest, num_ids=10, distractors=3)
    model = FakeModel("similarity")
    top = run(model, manifest, cache, rerank_top_k=10_000)
    exact = run(model, manifest, cache, exact=True)
    np.testing.assert_array_equal(top.per_query.gallery_ids, exact.per_query.gallery_ids)
    np.testing.assert_allclose(top.per_query.scores, exact.per_query.scores)
    assert (top.rank1, top.mAP) == (exact.rank1, exact.mAP)
    assert "exact" in exact.ranking and "similarity S" in exact.ranking
    # and S really changes the order compared with the features alone
    feature_only = run(FakeModel("distance"), manifest, cache)
    assert not np.array_equal(exact.per_query.gallery_ids, feature_only.per_query.gallery_ids)


def test_top_1_keeps_the_feature_order(make_manifest):
    manifest, cache = load(make_manifest, num_ids=10, distractors=3)
    k1 = run(FakeModel("metric"), manifest, cache, rerank_top_k=1)
    feature_only = run(FakeModel("distance"), manifest, cache)
    np.testing.assert_array_equal(k1.per_query.gallery_ids, feature_only.per_query.gallery_ids)
    assert np.all(np.isfinite(k1.per_query.scores[:, 0]))   # the one re-scored entry
    assert np.all(np.isnan(k1.per_query.scores[:, 1:]))
    assert "top-1 " in k1.ranking and "metric M" in k1.ranking


def test_rank_gallery_rescores_only_the_top_k():
    dist = torch.tensor([[0.5, 0.1, 0.4, 0.2, 0.3]])          # feature order: 1, 3, 4, 2, 0
    table = torch.tensor([[9.0, 1.0, 8.0, 3.0, 2.0]])
    r = rank_gallery(dist, lambda q, g: table[q, g], top_k=3, pair_batch=2)
    assert r.order.tolist() == [[3, 4, 1, 2, 0]]              # 1, 3, 4 re-sorted by score; 2, 0 stay
    np.testing.assert_allclose(r.scores, [[3.0, 2.0, 1.0]])
    assert rank_gallery(dist, lambda q, g: table[q, g], exact=True).order.tolist() == [[0, 2, 3, 4, 1]]
    assert rank_gallery(dist).order.tolist() == [[1, 3, 4, 2, 0]]


def test_chunked_extraction_averages_chunks_and_never_sees_a_whole_tracklet(make_manifest):
    manifest, cache = load(make_manifest, num_ids=4, length_range=(2, 10))
    model = FakeModel()
    positions = np.arange(len(manifest.tracklets))
    feats = extract_features(model, manifest, cache, positions, T=T, batch_size=2, progress=False)
    assert model.max_T == T and model.clips_seen == num_test_clips(manifest, positions, T)
    assert feats.pool5 is None
    checked_whole = 0
    for p in positions:
        frames = torch.from_numpy(np.asarray(cache.frames[cache.offsets[p]:cache.offsets[p] + cache.lengths[p]]))
        clips = normalize_clips(frames[None])                         # (1, L, 3, H, W)
        chunks = [model.describe(clips[:, idx]) for idx in test_frame_indices(len(frames), T)]
        torch.testing.assert_close(feats.features[p], torch.cat(chunks).mean(0))
        if len(frames) % T == 0:   # equal chunks: the mean of chunk means is the whole-tracklet mean
            torch.testing.assert_close(feats.features[p], model.describe(clips)[0])
            checked_whole += 1
    assert checked_whole > 0


def test_pool5_is_one_even_clip_per_tracklet(make_manifest):
    manifest, cache = load(make_manifest, num_ids=4)
    model = FakeModel("similarity")
    positions = np.arange(len(manifest.tracklets))[::-1].copy()
    feats = extract_features(model, manifest, cache, positions, batch_size=4, progress=False)
    assert feats.pool5.shape == (len(positions), T, 3, 2, 1)
    p = int(positions[1])
    idx = test_frame_indices(int(manifest.lengths[p]), T, "even")[0]
    clip = normalize_clips(torch.from_numpy(np.asarray(cache.frames[cache.offsets[p] + idx]))[None])
    torch.testing.assert_close(feats.pool5[1], model.features(clip).pool5[0])


def test_even_clip_outputs_match_the_model_on_the_same_frames(make_manifest):
    manifest, cache = load(make_manifest, num_ids=4)
    model = FakeModel("similarity").train()
    positions = np.arange(len(manifest.tracklets))[::-1].copy()
    out = even_clip_outputs(model, manifest, cache, positions, batch_size=3)
    assert model.training  # the mode is restored
    assert out.frame_idx.shape == (len(positions), T) and out.attention is None
    assert out.features.shape == (len(positions), 3) and out.pool5.shape == (len(positions), T, 3, 2, 1)
    for k in (0, len(positions) - 1):
        p = int(positions[k])
        np.testing.assert_array_equal(out.frame_idx[k], test_frame_indices(int(manifest.lengths[p]), T, "even")[0])
        clip = normalize_clips(torch.from_numpy(np.asarray(cache.frames[cache.offsets[p] + out.frame_idx[k]]))[None])
        torch.testing.assert_close(out.features[k], model.features(clip).features[0])
    assert even_clip_outputs(model, manifest, cache, positions[:2], with_pool5=False).pool5 is None
    with pytest.raises(ValueError, match="non-empty"):
        even_clip_outputs(model, manifest, cache, [])


def test_feature_cache_is_reused(make_manifest, tmp_path):
    manifest, cache = load(make_manifest, num_ids=6)
    model = FakeModel("similarity")
    first = run(model, manifest, cache, feature_cache_dir=tmp_path / "features")
    assert model.clips_seen > 0 and len(list((tmp_path / "features").glob("*.pt"))) == 1
    model.clips_seen = 0
    second = run(model, manifest, cache, feature_cache_dir=tmp_path / "features")
    assert model.clips_seen == 0 and second.seconds["features_from_cache"] == 1.0
    assert second.to_dict() | {"seconds": None} == first.to_dict() | {"seconds": None}
    with torch.no_grad():
        model.scale.fill_(2.0)                                   # new weights: new key
    run(model, manifest, cache, feature_cache_dir=tmp_path / "features")
    assert model.clips_seen > 0


def test_two_camera_averages_over_splits(make_manifest):
    manifest, cache = load(make_manifest, num_ids=8, protocol="two_camera", num_splits=3)
    model = FakeModel()
    result = run(model, manifest, cache)
    assert len(result.splits) == 3 and result.protocol == "two_camera"
    tested = sorted({t for s in manifest.splits for t in (*s.query, *s.gallery)})
    assert model.clips_seen == num_test_clips(manifest, manifest.positions(tested), T)  # once for all
    for name in ("rank1", "rank5", "mAP"):
        values = [getattr(s, name) for s in result.splits]
        assert getattr(result, name) == pytest.approx(np.mean(values))
        assert result.std[name] == pytest.approx(np.std(values, ddof=1))  # n − 1, as over seeds
    assert result.num_queries == sum(len(s.query) for s in manifest.splits)
    assert "±" in result.summary() and "std (n − 1) over 3 split" in result.convention
    single = run(model, manifest, cache, split=1)
    assert single.rank1 == result.splits[1].rank1 and not single.splits
    with pytest.raises(ValueError, match="official"):
        run(model, manifest, cache, convention="official")


def test_result_states_convention_ranking_and_skips(make_manifest):
    manifest, cache = load(make_manifest, num_ids=8, distractors=2, junk=2)
    split = manifest.splits[0]
    query = split.query[0]
    pid = manifest.tracklets[manifest.index(query)].pid
    # take away the query's only other-camera match: it must be skipped, and say so
    split.gallery = [t for t in split.gallery
                     if not (manifest.tracklets[manifest.index(t)].pid == pid
                             and manifest.tracklets[manifest.index(t)].camid != 1)]
    model = FakeModel("similarity")
    common = run(model, manifest, cache, rerank_top_k=5)
    assert common.num_skipped == 1 and common.num_queries == len(split.query)
    assert "common" in common.convention and "skipped" in common.convention
    assert "top-5" in common.ranking and "1 skipped" in common.summary()
    official = run(model, manifest, cache, convention="official", rerank_top_k=5)
    assert official.num_skipped == 0 and "official" in official.convention
    assert official.num_gallery == common.num_gallery + len(split.query)
    pq = official.per_query   # each query is in its own gallery, but as junk: never listed
    assert not any(q in row for q, row in zip(pq.query_ids, pq.gallery_ids.tolist()))
    assert any(set(split.query) & set(row) for row in pq.gallery_ids.tolist())  # other queries are
    assert official.table_row("ALL").startswith("| ALL | ")
    json.dumps(official.to_dict(), allow_nan=False)   # JSON-serialisable, NaN → null


def test_per_query_flags_drop_junk_and_mark_distractors(make_manifest):
    manifest, cache = load(make_manifest, num_ids=8, distractors=3, junk=3)
    result = run(FakeModel(), manifest, cache, keep_top=50)
    pq = result.per_query
    by_id = {t.tracklet_id: t for t in manifest.tracklets}
    listed = pq.gallery_ids[pq.gallery_ids >= 0]
    assert all(by_id[int(t)].pid != -1 for t in listed)                       # junk never listed
    n_gallery = len(manifest.splits[0].gallery) - 3                           # minus junk
    assert np.all((pq.gallery_ids >= 0).sum(1) == n_gallery)                  # nothing else dropped
    for i, q in enumerate(pq.query_ids):
        for g, f in zip(pq.gallery_ids[i], pq.flags[i]):
            if g < 0:
                continue
            t = by_id[int(g)]
            expected = 2 if t.pid == 0 else 1 if t.pid == by_id[int(q)].pid else 0
            assert f == expected
        first = np.flatnonzero(pq.flags[i] == 1)
        assert pq.first_hit[i] == first[0] + 1                               # ranks as CMC counts them
        assert np.all(np.diff(pq.distances[i][pq.gallery_ids[i] >= 0]) >= 0)   # feature order


def test_real_model_all_variant_runs(make_manifest):
    from reidkit.models import ModelConfig, build_model

    torch.manual_seed(0)
    manifest = Manifest.load(make_manifest(num_ids=6, length_range=(3, 7)))
    config = ModelConfig.cpu()
    cache = FrameCache.build(manifest, config.height, config.width, progress=False)
    model = build_model("all", config=config)
    model.train()
    result = run(model, manifest, cache, rerank_top_k=2, batch_size=8)
    assert model.training                                  # mode restored
    assert result.num_queries == 3 and result.num_gallery == 3 and 0.0 <= result.rank1 <= 100.0
    assert np.all(np.isfinite(result.per_query.scores[:, :2]))
    assert "similarity S" in result.ranking and "top-2" in result.ranking


@pytest.fixture
def all_model(make_manifest):
    """(model, manifest, features with pool5) of an untrained `all` model on a tiny manifest."""
    from reidkit.models import ModelConfig, build_model

    torch.manual_seed(0)
    manifest = Manifest.load(make_manifest(num_ids=6, length_range=(3, 7)))
    config = ModelConfig.cpu()
    cache = FrameCache.build(manifest, config.height, config.width, progress=False)
    model = build_model("all", config=config).eval()
    feats = extract_features(model, manifest, cache, evaluation_positions(manifest), batch_size=8, progress=False,
                             with_pool5=True)
    return model, manifest, feats


def test_eq2_parts_isolated_on_a_real_all_model(all_model):
    """score/lam rank an `all` model by F only, M only or S at another λ (lesson 6)."""
    model, manifest, feats = all_model
    config = model.config
    exact = EvalConfig(exact=True)

    def run_(**kw):
        return evaluate_features(model, manifest, feats, exact, progress=False, **kw)

    default, same = run_(), run_(score="similarity", lam=config.lam)
    np.testing.assert_array_equal(default.per_query.gallery_ids, same.per_query.gallery_ids)
    f_only, s0 = run_(score="distance"), run_(score="similarity", lam=0.0)
    assert "Euclidean distance" in f_only.ranking and "λ=0" in s0.ranking
    # S with λ = 0 is 1/(1+F): the same order as F
    np.testing.assert_array_equal(f_only.per_query.gallery_ids, s0.per_query.gallery_ids)
    m_only = run_(score="metric")
    assert "metric M" in m_only.ranking
    s_big = run_(score="similarity", lam=1e6)  # λ → ∞: M decides
    np.testing.assert_array_equal(m_only.per_query.gallery_ids[:, :3], s_big.per_query.gallery_ids[:, :3])


def test_eq2_breakdown_equals_separate_evaluations(all_model):
    from reidkit.evaluate import eq2_breakdown
    from reidkit.significance import rank1_hits

    model, manifest, feats = all_model
    cfg = EvalConfig(rerank_top_k=2)
    rows = eq2_breakdown(model, manifest, feats, cfg, lambdas=(0.5, 2.0))
    assert [(r["ranking"], r["mode"]) for r in rows] == [
        ("F only", "exact"), ("M only", "exact"), ("M only", "top-2"), ("S, λ = 0.5", "exact"), ("S, λ = 0.5", "top-2"),
        ("S, λ = 2", "exact"), ("S, λ = 2", "top-2")]
    for r in rows:
        one = evaluate_features(model, manifest, feats, dataclasses.replace(cfg, exact=r["mode"] == "exact"),
                                progress=False, score=r["score"], lam=r["lam"])
        assert r["rank1"] == pytest.approx(one.rank1) and r["mAP"] == pytest.approx(one.mAP), r
        # each row keeps its per-query outcomes: the same queries, in the same order, as the evaluation
        np.testing.assert_array_equal(r["per_query"].query_ids, one.per_query.query_ids)
        np.testing.assert_array_equal(r["per_query"].first_hit, one.per_query.first_hit)
        np.testing.assert_allclose(r["per_query"].ap, one.per_query.ap)
        assert 100 * rank1_hits(r["per_query"]).mean() == pytest.approx(r["rank1"])


def test_a_damaged_feature_cache_file_is_extracted_again(make_manifest, tmp_path):
    from reidkit.models import ModelConfig, build_model

    torch.manual_seed(0)
    manifest = Manifest.load(make_manifest(num_ids=6, length_range=(3, 7)))
    config = ModelConfig.cpu()
    cache = FrameCache.build(manifest, config.height, config.width, progress=False)
    model = build_model("cnn", config=config).eval()
    positions = evaluation_positions(manifest)
    first = extract_features(model, manifest, cache, positions, progress=False, feature_cache_dir=tmp_path)
    (saved,) = tmp_path.glob("features_*.pt")
    saved.write_bytes(saved.read_bytes()[:100])  # truncated
    again = extract_features(model, manifest, cache, positions, progress=False, feature_cache_dir=tmp_path)
    assert not again.from_cache and torch.equal(again.features, first.features)
    assert extract_features(model, manifest, cache, positions, progress=False, feature_cache_dir=tmp_path).from_cache


def test_exact_scoring_of_a_huge_gallery_on_cpu_warns(all_model, monkeypatch):
    """At MARS scale exact M runs for hours on a CPU: say so (here with the threshold lowered)."""
    import reidkit.evaluate as ev

    model, manifest, feats = all_model
    monkeypatch.setattr(ev, "EXACT_CPU_PAIRS", 1)
    with pytest.warns(UserWarning, match=r"eval.exact: M scores all .* pairs on the CPU"):
        ev.evaluate_features(model, manifest, feats, EvalConfig(exact=True), progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # top-K re-scoring: no warning
        ev.evaluate_features(model, manifest, feats, EvalConfig(exact=False, rerank_top_k=2), progress=False)
