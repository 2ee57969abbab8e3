"""reidkit.attention: attention-vs-visibility statistics, the occlusion probe, stored results,
and the attention actually leaving uniform after a short real training."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy import stats

from reidkit import attention
from reidkit.attention import find_result, occlusion_probe, visibility_stats
from reidkit.config import Config
from reidkit.data import FrameCache, Manifest, clip_visibility
from reidkit.evaluate import even_clip_outputs
from reidkit.models import ModelConfig, build_model
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


def test_find_result_needs_this_code_and_this_machine(tmp_path, monkeypatch):
    assert find_result(tmp_path)[0] is None
    path = tmp_path / "r1" / "work" / "dose_response" / "dose_response.json"
    path.parent.mkdir(parents=True)
    good = {"rows": [], "code_fingerprint": attention.code_fingerprint(), "machine": attention.machine_id(),
            "created": "now"}
    path.write_text(json.dumps(good))
    result, reason = find_result(tmp_path)
    assert result is not None and "this code on this machine" in reason
    path.write_text(json.dumps({**good, "code_fingerprint": "0" * 64}))
    result, reason = find_result(tmp_path)
    assert result is None and "other code" in reason
    path.write_text(json.dumps({**good, "machine": {"host": "elsewhere", "cpu": "?"}}))
    result, reason = find_result(tmp_path)
    assert result is None and "another machine" in reason


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
