"""reidkit.attention: attention-vs-visibility statistics, lesson 4's analyses (row variation,
training dynamics, fc7 diagnostics, the visibility oracle, the discount interval) against
brute-force references, the occlusion probe, stored results, and the attention actually leaving
uniform after a short real training."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy import stats

from reidkit import __version__, attention
from reidkit.attention import (fc7_diagnostics, find_result, low_visibility_discount, occlusion_probe,
                               row_variation, tracklet_fc7, training_dynamics, visibility_oracle, visibility_stats)
from reidkit.config import Config
from reidkit.data import FrameCache, Manifest, clip_visibility, normalize_clips
from reidkit.evaluate import even_clip_outputs
from reidkit.models import ModelConfig, build_model, eval_mode
from reidkit.train import Trainer


def test_visibility_stats_match_a_direct_computation():
    rng = np.random.default_rng(0)
    a = rng.dirichlet(np.ones(4), size=(5, 4))  # (N, T, T), rows sum to 1
    v = rng.uniform(0, 1, size=(5, 4))
    v[0] = [1.0, 0.95, 0.98, 0.99]  # a clean clip
    s = visibility_stats(a, v)
    rel = a.mean(1) * 4
    assert math.isclose(s["spearman_rho"], stats.spearmanr(rel.ravel(), v.ravel())[0])
    deg = (v < 0.7).any(1)
    assert s["num_degraded_clips"] == deg.sum()
    assert math.isclose(s["spearman_rho_degraded_clips"], stats.spearmanr(rel[deg].ravel(), v[deg].ravel())[0])
    assert math.isclose(s["relative_weight_visibility_below_0.5"], rel[v < 0.5].mean())
    uniform = visibility_stats(np.full((2, 3, 3), 1 / 3), np.array([[1, 0.2, 0.9], [0.4, 1, 1]]))
    assert uniform["mean_spread"] == 0 and math.isclose(uniform["mean_entropy"], 1.0)
    assert math.isnan(uniform["spearman_rho"])  # constant weights: no correlation defined
    with pytest.raises(ValueError, match="expected attention"):
        visibility_stats(np.ones((2, 3, 3)), np.ones((2, 4)))


def test_occlusion_probe_reports_every_kind_and_k(make_manifest):
    root = make_manifest(num_ids=4, visibility=True, length_range=(6, 8), frame_size=(128, 64))
    m = Manifest.load(root)
    cache = FrameCache.build(m, 128, 64, progress=False)
    torch.manual_seed(0)
    model = build_model("cnn_tam", config=ModelConfig.cpu(seq_len=4)).eval()
    out = occlusion_probe(model, m, cache, np.arange(4), ks=(0, 1, 2), seed=1)
    assert set(out) == {"blank", "patch"} and set(out["blank"]) == {0, 1, 2}
    assert out["blank"][0]["occluded"] is None and math.isclose(out["blank"][0]["clean"], 1.0, rel_tol=1e-5)
    for kind in out:
        for k in (1, 2):  # the weights still sum to T over occluded and untouched frames
            r = out[kind][k]
            assert math.isclose(k * r["occluded"] + (4 - k) * r["clean"], 4.0, rel_tol=1e-4)
    assert not model.training
    with pytest.raises(ValueError, match="cannot occlude 5"):
        occlusion_probe(model, m, cache, np.arange(4), ks=(5,))


def test_row_variation_is_the_largest_step_to_step_change():
    same_rows = np.tile(np.array([0.1, 0.2, 0.3, 0.4]), (4, 1))  # ω independent of t
    varied = np.array([[0.5, 0.5], [0.9, 0.1]])  # row mean [0.7, 0.3]: every cell 0.2 away
    assert row_variation(same_rows[None])[0] == 0
    assert math.isclose(row_variation(varied[None])[0], 0.2)
    rng = np.random.default_rng(0)
    a = rng.dirichlet(np.ones(5), size=(3, 5))
    brute = [max(abs(a[n, t, i] - sum(a[n, s, i] for s in range(5)) / 5) for t in range(5) for i in range(5))
             for n in range(3)]
    np.testing.assert_allclose(row_variation(a), brute, rtol=1e-12)
    with pytest.raises(ValueError, match="expected"):
        row_variation(np.ones((3, 3)))


def test_training_dynamics_averages_the_first_and_last_third_of_the_logged_steps():
    log = [{"step": 0, "triplet": 9.0}]  # a step without attention statistics is not counted
    for i in range(7):  # 7 logged steps: thirds of 2
        log.append({"step": i + 1, "triplet": float(i), "attention_entropy": 1.0 - i / 100,
                    "attention_grad_norm": float(10 * (i + 1))})
    dyn = training_dynamics(log)
    assert dyn == pytest.approx({"first_grad": 15.0, "last_grad": 65.0, "first_entropy": 0.995,
                                 "last_entropy": 0.945, "last_triplet": 5.5})
    one = training_dynamics(log[:2])  # one logged step: it is the first and the last third
    assert one["first_grad"] == one["last_grad"] == 10.0
    assert training_dynamics([{"step": 0, "triplet": 1.0}]) == {} and training_dynamics([]) == {}


def test_fc7_diagnostics_match_a_per_frame_computation():
    rng = np.random.default_rng(0)
    fc7 = [torch.tensor(rng.normal(size=(n, 6)), dtype=torch.float32) for n in (4, 5, 3)]
    vis = [np.array([1.0, 0.2, 0.95, 0.6]), np.array([0.3, 0.99, 1.0, 0.1, 0.92]), np.array([1.0, 1.0, 0.7])]
    cos, norm, v = [], [], []
    for f, vv in zip(fc7, vis):
        x, mean = f.double().numpy(), f.double().numpy().mean(0)
        for i in range(len(x)):
            cos.append(1 - x[i] @ mean / (np.linalg.norm(x[i]) * np.linalg.norm(mean)))
            norm.append(np.linalg.norm(x[i]))
            v.append(vv[i])
    cos, norm, v = map(np.array, (cos, norm, v))
    d = fc7_diagnostics(fc7, vis)
    assert d["cosine_distance_below_0.5"] == pytest.approx(cos[v < 0.5].mean(), rel=1e-5)
    assert d["cosine_distance_above_0.9"] == pytest.approx(cos[v > 0.9].mean(), rel=1e-5)
    assert d["norm_ratio_below_0.5"] == pytest.approx(norm[v < 0.5].mean() / norm[v > 0.9].mean(), rel=1e-5)
    assert d["fraction_frames_below_0.5"] == pytest.approx(3 / 12)
    assert fc7_diagnostics(fc7, [np.ones(4), np.ones(5), np.ones(3)]) == {}  # no degraded frame
    with pytest.raises(ValueError, match="visibility values"):
        fc7_diagnostics(fc7, [np.ones(4), np.ones(5), np.ones(2)])


def test_visibility_oracle_ranks_right_when_the_occluded_frames_are_weighted_out(make_manifest):
    """Every query's last frame is occluded and looks like another test person (×10): the plain
    mean matches that person first (rank-1 0, the true match second: mAP 50); weighting by
    visibility⁴ ignores the frame (rank-1 100, mAP 100)."""
    root = make_manifest(num_ids=8, protocol="two_camera", num_splits=1, visibility=True, length_range=(4, 4))
    m = Manifest.load(root)
    s = m.split(0)
    q_pos, g_pos = m.positions(s.query), m.positions(s.gallery)
    test_pids = sorted(int(m.pids[p]) for p in q_pos)
    other = {a: test_pids[(i + 1) % len(test_pids)] for i, a in enumerate(test_pids)}
    feats = {}
    for p in range(len(m.tracklets)):
        f = np.zeros((4, 9), np.float32)
        f[:, m.pids[p]] = 1.0
        m.tracklets[p].visibility[:] = 1.0
        if p in q_pos:
            m.tracklets[p].visibility[-1] = 0.01
            f[-1] = 0.0
            f[-1, other[int(m.pids[p])]] = 10.0
        feats[p] = torch.from_numpy(f)
    scores, hits = visibility_oracle(lambda p: feats[int(p)], m)
    assert scores["mean"] == pytest.approx({"rank1": 0.0, "mAP": 50.0})
    assert scores["visibility_weighted"] == pytest.approx({"rank1": 100.0, "mAP": 100.0})
    np.testing.assert_array_equal(hits["mean"], np.zeros(len(q_pos)))
    np.testing.assert_array_equal(hits["visibility_weighted"], np.ones(len(q_pos)))
    for p in q_pos:  # weights v⁰ = 1: both descriptors are the plain mean
        m.tracklets[p].visibility[-1] = 0.5
    scores, _ = visibility_oracle(lambda p: feats[int(p)], m, power=0)
    assert scores["visibility_weighted"] == scores["mean"]


def test_tracklet_fc7_covers_every_frame_in_chunks_and_memoises(make_manifest):
    root = make_manifest(num_ids=2, length_range=(5, 7), frame_size=(128, 64))
    m = Manifest.load(root)
    cache = FrameCache.build(m, 128, 64, progress=False)
    torch.manual_seed(0)
    model = build_model("cnn_tam", config=ModelConfig.cpu(seq_len=4)).train()
    memo = {}
    whole = tracklet_fc7(model, m, cache, 1, memo=memo)
    assert whole.shape == (m.lengths[1], model.config.fc_dim) and whole.dtype == torch.float32
    assert model.training and not whole.requires_grad  # eval mode for the pass, then restored
    assert tracklet_fc7(model, m, cache, np.int64(1), memo=memo) is whole and list(memo) == [1]
    torch.testing.assert_close(tracklet_fc7(model, m, cache, 1, chunk=2), whole, rtol=1e-4, atol=1e-5)
    with eval_mode(model):
        clip = torch.from_numpy(np.asarray(cache.clip(1, np.arange(m.lengths[1]))))
        direct = model.pool5_and_fc7(normalize_clips(clip[None]))[1][0]
    torch.testing.assert_close(whole, direct, rtol=1e-4, atol=1e-5)


def test_low_visibility_discount_resamples_the_clips_of_degraded_frames():
    T = 4
    a = np.full((3, T, T), 1 / T)
    a[0, :, 0] = [0.1] * T  # clip 0: frame 0 (degraded) gets 0.4 of the uniform weight
    a[0, :, 1:] = 0.3
    vis = np.array([[0.2, 1, 1, 1], [1, 1, 1, 1], [0.3, 0.4, 1, 1]])  # clip 1 has no degraded frame
    d = low_visibility_discount(a, vis, seed=0, n_boot=500)
    per_clip = [0.4, 1.0]  # the degraded frames' mean relative weight, per clip that has them
    assert d.diff == pytest.approx((1 - np.mean(per_clip)) * 100)
    assert 0.0 - 1e-9 <= d.low <= d.diff <= d.high <= 60.0 + 1e-9 and d.n_boot == 500 and d.level == 0.95
    boot = np.random.default_rng(0).choice(np.asarray(per_clip), size=(500, 2)).mean(axis=1)
    assert (d.low, d.high) == pytest.approx(tuple(np.percentile((1 - boot) * 100, [2.5, 97.5])))
    assert low_visibility_discount(a, np.ones((3, T))) is None


def _study(tmp_path, name: str, config: dict, **code) -> Path:
    path = tmp_path / name / "work" / "dose_response" / "dose_response.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"rows": [], "config": config, "created": "now",
                                "code": {"reidkit": __version__, "commit": "a" * 40, "dirty": False} | code}))
    return path


def test_find_result_needs_the_same_config_and_version(tmp_path):
    config = Config.from_dict({}, ["train.epochs=8", "train.device=auto"])
    assert find_result(tmp_path, config)[0] is None
    path = _study(tmp_path, "r1", config.to_dict())
    result, reason = find_result(tmp_path, config)
    assert result is not None and result["path"] == str(path) and "with this config" in reason
    assert f"reidkit {__version__}" in reason and "commit aaaaaaaaaaaa" in reason
    assert find_result(tmp_path, config.to_dict())[0] is not None  # a dict works as well as a Config

    other = Config.from_dict({}, ["train.epochs=5", "train.device=auto"])
    result, reason = find_result(tmp_path, other)
    assert result is None and "another config" in reason and "train.epochs" in reason

    path.write_text(json.dumps({**json.loads(path.read_text()), "code": {"reidkit": "0.0.0-other"}}))
    result, reason = find_result(tmp_path, config)
    assert result is None and "reidkit 0.0.0-other" in reason
    # a study recorded before config-and-version matching (a code fingerprint, a machine) is not shown
    path.write_text(json.dumps({"rows": [], "config": config.to_dict(), "code_fingerprint": "0" * 64,
                                "machine": {"host": "h", "cpu": "c"}}))
    assert find_result(tmp_path, config)[0] is None


def test_code_version_names_reidkit_and_the_commit():
    code = attention.code_version()
    assert code["reidkit"] == __version__ and set(code) == {"reidkit", "commit", "dirty"}
    assert code["commit"] is None or len(code["commit"]) == 40


def test_attention_leaves_uniform_after_a_short_training_on_heavy_occlusion(tmp_path):
    """80 steps of CNN+TAM at the CPU model size on the tiny synthetic benchmark at heavy occlusion.

    Before BatchNorm on fc6/fc7, the soft margin and the fp32 TAM the same training left ω at
    a mean spread of 0.006 and a normalised entropy of 0.9999 (measured); now it measures
    ~0.065 / 0.993. The test asks for a spread above 0.03 and an entropy below 0.998.
    """
    from data_prep.synthetic import generate

    root = tmp_path / "heavy"
    generate(root, preset="tiny", seed=0, occlusion="heavy", progress=False, workers=1)
    config = Config.from_dict({}, [
        f"data.dataset={root}", f"data.cache_dir={tmp_path / 'cache'}", "model.variant=cnn_tam",
        "model.cnn=caffenet_light", "model.height=128", "model.width=64", "model.width_mult=0.25",
        "model.fc_dim=256", "model.rnn_hidden=128", "model.attention_dim=64", "model.seq_len=6",
        "train.P=4", "train.K=2", "train.steps_per_epoch=80", "train.epochs=1", "train.lr=1e-3",
        "train.warmup=5", "train.margin=null", "train.device=cpu", "train.amp=off", "train.channels_last=false",
        "train.progress=false", f"train.out_dir={tmp_path / 'run'}", "train.eval_every=0", "train.log_every=10"])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        trainer = Trainer(config)
        trainer.fit()
    finally:
        torch.set_num_threads(threads)
    m = trainer.manifest
    test = attention.test_people(m)
    out = even_clip_outputs(trainer.model, m, trainer.cache, test, with_pool5=False)
    s = visibility_stats(out.attention.numpy(), clip_visibility(m, test, out.frame_idx))
    assert s["mean_spread"] > 0.03, s
    assert s["mean_entropy"] < 0.998, s
    logged = [r for r in trainer.step_history if "attention_entropy" in r]
    assert logged and all(0 < r["attention_entropy"] <= 1 + 1e-6 for r in logged)
    assert all(r["attention_grad_norm"] > 0 for r in logged)
