"""reidkit.models: shapes, TAM and SRM against hand-written references, Eq. 2, weights, overfitting."""

import pytest
import numpy as np
import torch
from torch import nn

from reidkit.losses import batch_hard_triplet, mine_pairs, pair_bce
from reidkit.models import (
    DIRECTIONS, VARIANTS, CaffeNet, ModelConfig, PretrainedWeightsError, SpatialRecurrentModel,
    TemporalAttention, build_model, feature_distance, feature_distance_matrix, similarity,
)
from reidkit.models.spatial import SWEEP_AXES

CPU = ModelConfig.cpu()


def caffenet(config: ModelConfig, with_fc: bool = True) -> CaffeNet:
    """The CaffeNet a JSTRNN builds for ``config``."""
    c = config
    return CaffeNet(c.cnn, c.width_mult, c.height, c.width, c.fc_dim, c.norm, c.fc_dropout, with_fc=with_fc)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # The test machine's two cores are shared; one thread avoids oversubscription stalls.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---------------------------------------------------------------- config


def test_config_defaults_are_the_paper_and_cpu_keeps_a_grid():
    c = ModelConfig()
    assert (c.seq_len, c.height, c.width, c.cnn, c.fc_dim, c.lam, c.dropout) == (6, 227, 227, "caffenet", 1024, 1.0, 0.5)
    assert c.pool5_grid == (6, 6) and c.pool5_channels == 256
    assert CPU.cnn == "caffenet_light" and CPU.pool5_grid == (8, 4)
    assert ModelConfig(height=128, width=64).pool5_grid == (3, 1)  # why the light variant exists
    assert ModelConfig.from_dict(CPU.to_dict()) == CPU
    assert c.variant == "all" and list(c.to_dict())[0] == "variant"  # the first field


@pytest.mark.parametrize(
    "kwargs, message",
    [({"cnn": "resnet"}, "unknown cnn"), ({"seq_len": 0}, "seq_len"), ({"height": 40, "width": 40}, "pool5 would be 0×0"),
     ({"variant": "cnn_lstm"}, "unknown variant")],
)
def test_config_errors_say_what_is_wrong(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig(**kwargs)
    with pytest.raises(ValueError, match="unknown ModelConfig keys"):
        ModelConfig.from_dict({"seq_len": 6, "fc7": 3})


# ---------------------------------------------------------------- shapes of every variant


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("config, batch", [(ModelConfig(), 1), (CPU, 2)], ids=["227x227", "cpu"])
def test_variant_shapes(variant, config, batch):
    torch.manual_seed(0)
    model = build_model(variant, config=config).eval()
    c = config
    clips = torch.randn(batch, c.seq_len, 3, c.height, c.width)
    with torch.no_grad():
        out = model.features(clips)
        h, w = c.pool5_grid
        assert out.pool5.shape == (batch, c.seq_len, c.pool5_channels, h, w)
        assert out.features.shape == (batch, model.feature_dim)
        if variant in ("cnn_tam", "all"):
            assert out.attention.shape == (batch, c.seq_len, c.seq_len)
            assert torch.allclose(out.attention.sum(-1), torch.ones(batch, c.seq_len), atol=1e-5)
        else:
            assert out.attention is None
        if model.has_metric_branch:
            from_pool5 = model.metric(out.pool5, out.pool5.flip(0))
            assert from_pool5.shape == (batch,)
            from_clips = model.metric(clips, clips.flip(0))  # clips are told apart by their frame shape
            assert torch.allclose(from_pool5, from_clips, atol=1e-4)
            assert model.input_kind(clips) == "clips" and model.input_kind(out.pool5) == "pool5"
            with pytest.raises(ValueError, match=r"expected clips \(N, T, 3, .*\) or pool5 maps .*got shape"):
                model.metric(clips[..., :-1], clips[..., :-1])  # frames of another size
        else:
            with pytest.raises(RuntimeError, match="no metric branch"):
                model.metric(out.pool5, out.pool5)
    expected_ranking = {"cnn": "distance", "cnn_rnn": "distance", "cnn_tam": "distance",
                        "cnn_diff": "metric", "cnn_srm": "metric", "all": "similarity"}
    assert model.ranking == expected_ranking[variant]


def test_build_model_accepts_config_and_overrides():
    model = build_model("cnn", config=CPU, seq_len=4)
    assert model.config.seq_len == 4 and model.config.cnn == "caffenet_light"
    assert model.variant == model.config.variant == "cnn" and CPU.variant == "all"  # CPU itself untouched
    with pytest.raises(ValueError, match="unknown variant"):
        build_model("cnn_lstm", config=CPU)
    # the variant comes from the config unless given; a given one wins
    cfg = ModelConfig.cpu(variant="cnn_srm")
    assert build_model(config=cfg).variant == "cnn_srm" and build_model(config=cfg).config is cfg
    assert build_model("cnn_tam", config=cfg).variant == "cnn_tam"
    assert build_model("all", height=160, width=80, cnn="caffenet_light").config.height == 160
    assert build_model().variant == "all" and build_model().config == ModelConfig()


def test_bf16_autocast_and_channels_last_run():
    torch.manual_seed(0)
    model = build_model("all", config=CPU).eval().to(memory_format=torch.channels_last)
    clips = torch.randn(2, CPU.seq_len, 3, CPU.height, CPU.width)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model.features(clips)
        logits = model.metric(out.pool5, out.pool5.flip(0))
    assert torch.isfinite(out.features.float()).all() and torch.isfinite(logits.float()).all()


@pytest.mark.parametrize("variant", ["cnn_tam", "all"])
def test_bf16_and_fp32_cpu_paths_agree(variant):
    """The CPU bf16 autocast path (train.amp) computes the same model as fp32, to bf16's precision.

    Tolerances (measured at seed 0: cosine > 0.9999 and relative error < 1 %): features keep a
    cosine similarity > 0.999 and < 3 % relative L2 error, ω differs by < 0.01, M's logits by
    < 0.1 (bf16 keeps 8 bits of mantissa: ~0.4 % per rounding, through ~10 layers).
    """
    torch.manual_seed(0)
    model = build_model(variant, config=CPU).eval()
    clips = torch.randn(4, CPU.seq_len, 3, CPU.height, CPU.width)
    with torch.no_grad():
        ref = model.features(clips)
        ref_m = model.metric(ref.pool5, ref.pool5.flip(0)) if model.has_metric_branch else None
        model.to(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model.features(clips)
            got_m = model.metric(out.pool5, out.pool5.flip(0)) if model.has_metric_branch else None
    a, b = ref.features, out.features.float()
    assert torch.nn.functional.cosine_similarity(a, b, dim=1).min() > 0.999
    assert ((a - b).norm(dim=1) / a.norm(dim=1)).max() < 0.03
    assert (ref.attention - out.attention.float()).abs().max() < 0.01
    if ref_m is not None:
        assert (ref_m - got_m.float()).abs().max() < 0.1


# ---------------------------------------------------------------- TAM (Eq. 3, Fig. 3-4)


def _lstm_step(x, h, c, w_ih, w_hh, b_ih, b_hh):
    """One LSTM step written out (gate order i, f, g, o as in torch)."""
    i, f, g, o = (x @ w_ih.T + b_ih + h @ w_hh.T + b_hh).chunk(4, dim=-1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


def test_tam_matches_hand_unrolled_steps():
    torch.manual_seed(0)
    n, t_len, d, hidden, att = 2, 5, 7, 6, 4
    tam = TemporalAttention(d, hidden, att)
    f = torch.randn(n, t_len, d)
    feat, omega = tam(f)
    cell = tam.cell
    for b in range(n):
        h, c = torch.zeros(hidden), torch.zeros(hidden)
        z = f[b].mean(0)  # z_0: the mean of the frame features (documented choice)
        outs = []
        for t in range(t_len):
            e = torch.stack([
                tam.w.weight[0] @ torch.tanh(tam.U.weight @ f[b, i] + tam.U.bias + tam.V.weight @ h + tam.W.weight @ z)
                for i in range(t_len)
            ])
            w_t = torch.exp(e) / torch.exp(e).sum()
            assert torch.allclose(omega[b, t], w_t, atol=1e-6)
            x_bar = sum(w_t[i] * f[b, i] for i in range(t_len))
            h, c = _lstm_step(x_bar, h, c, cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh)
            outs.append(h)
            z = x_bar
        assert torch.allclose(feat[b], torch.stack(outs).mean(0), atol=1e-6)


def test_tam_learns_to_ignore_blank_frames():
    """Non-blank frames carry s·v; 1-4 frames per clip are blank (zero). Regressing s needs the
    attended input at full scale, which uniform weights cannot give (the blank count varies)."""
    torch.manual_seed(0)
    n, t_len, d = 32, 6, 8
    v = nn.functional.normalize(torch.randn(d), dim=0)
    s = torch.rand(n) + 0.5
    f = s[:, None, None] * v + 0.1 * torch.randn(n, t_len, d)
    blank = torch.zeros(n, t_len, dtype=torch.bool)
    for k in range(n):
        blank[k, torch.randperm(t_len)[: int(torch.randint(1, 5, ()))]] = True
    f = f.masked_fill(blank[..., None], 0.0)
    tam, head = TemporalAttention(d, 16, 8), nn.Linear(16, 1)
    opt = torch.optim.Adam([*tam.parameters(), *head.parameters()], lr=1e-2)

    def attention_on(mask):
        with torch.no_grad():
            omega = tam(f)[1]  # (N, T, T): weight of frame i at step t
        return (omega * mask[:, None, :]).sum() / (mask.sum() * t_len)

    blank_before = attention_on(blank)
    for _ in range(60):
        loss = ((head(tam(f)[0]).squeeze(1) - s) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    blank_after, kept_after = attention_on(blank), attention_on(~blank)
    assert blank_after < 0.6 * blank_before  # measured: 0.164 → 0.035
    assert blank_after < 0.6 * kept_after  # measured: 0.035 vs 0.236


# ---------------------------------------------------------------- SRM (Fig. 5-7)


def _sweep_by_loop(lstm, u, axis, reverse):
    """Reference sweep: an LSTMCell with the LSTM's weights, position by position (u: N,T,h,w,C)."""
    cell = nn.LSTMCell(lstm.input_size, lstm.hidden_size)
    cell.load_state_dict({k.replace("_l0", ""): v for k, v in lstm.state_dict().items()})
    out = torch.zeros(*u.shape[:-1], lstm.hidden_size)
    n_, t_, h_, w_ = u.shape[:4]
    ranges = [range(t_), range(h_), range(w_)]
    length = u.shape[axis]
    others = [r for k, r in enumerate(ranges) if k + 1 != axis]
    for n in range(n_):
        for p in others[0]:
            for q in others[1]:
                state = None
                order = range(length - 1, -1, -1) if reverse else range(length)
                for step in order:
                    pos = [p, q]
                    pos.insert(axis - 1, step)
                    idx = (n, *pos)
                    state = cell(u[idx][None], state)
                    out[idx] = state[0][0]
    return out


@torch.no_grad()
def test_each_srm_sweep_matches_an_explicit_loop():
    torch.manual_seed(0)
    srm = SpatialRecurrentModel(in_channels=5, seq_len=3, grid=(4, 2), mid_channels=4, hidden=3, out_channels=2).eval()
    a, b = torch.randn(2, 3, 5, 4, 2), torch.randn(2, 3, 5, 4, 2)
    _, maps = srm(a, b, return_maps=True)
    assert torch.allclose(maps["difference"], a - b)
    u = maps["conv"].permute(0, 1, 3, 4, 2)  # back to (N, T, h, w, C)
    assert set(DIRECTIONS) == {"time_fwd", "time_bwd", "width_fwd", "width_bwd", "height_fwd", "height_bwd"}
    for name in DIRECTIONS:
        axis, direction = name.split("_")
        ref = _sweep_by_loop(srm.rnns[name], u, SWEEP_AXES[axis], direction == "bwd")
        assert torch.allclose(maps[name], ref.permute(0, 1, 4, 2, 3), atol=1e-5), name
    assert maps["context"].shape == (2, 3, 2, 4, 2)
    assert len({id(m) for m in srm.rnns.values()}) == 6  # six separate LSTMs


@torch.no_grad()
def test_no_srm_sweep_is_a_no_op():
    """Flipping the input along T, h or w changes M; and the contextual map of the flipped input,
    flipped back, differs from the original: a sweep that did nothing along that axis (a
    per-position map) would make the two equal."""
    torch.manual_seed(0)
    srm = SpatialRecurrentModel(in_channels=6, seq_len=4, grid=(5, 3), mid_channels=4, hidden=3, out_channels=3).eval()
    a, b = torch.randn(1, 4, 6, 5, 3), torch.randn(1, 4, 6, 5, 3)
    logit, maps = srm(a, b, return_maps=True)
    for dim in (1, 3, 4):  # T, h, w of (N, T, C, h, w)
        flipped_logit, flipped = srm(a.flip(dim), b.flip(dim), return_maps=True)
        assert not torch.allclose(flipped_logit, logit, atol=1e-6)
        assert not torch.allclose(flipped["context"].flip(dim), maps["context"], atol=1e-5)
        # the 1x1 conv alone is per position: flipping commutes with it
        assert torch.allclose(flipped["conv"].flip(dim), maps["conv"], atol=1e-6)


# ---------------------------------------------------------------- Eq. 2


@torch.no_grad()
def test_similarity_symmetry_and_metric_asymmetry():
    torch.manual_seed(0)
    model = build_model("all", config=CPU).eval()
    clips_a = torch.randn(2, CPU.seq_len, 3, CPU.height, CPU.width)
    clips_b = torch.randn(2, CPU.seq_len, 3, CPU.height, CPU.width)
    fa, fb = model.features(clips_a), model.features(clips_b)
    logits = torch.tensor([0.3, -1.2])
    assert torch.allclose(model.pair_score(fa.features, fb.features, logits), model.pair_score(fb.features, fa.features, logits))
    m_ab, m_ba = model.metric(fa.pool5, fb.pool5), model.metric(fb.pool5, fa.pool5)
    assert not torch.allclose(m_ab, m_ba)  # d = a − b changes sign: M is not symmetric
    s_ab = model.pair_score(fa.features, fb.features, m_ab)
    s_ba = model.pair_score(fb.features, fa.features, m_ba)
    assert torch.allclose(s_ab - s_ba, torch.sigmoid(m_ab) - torch.sigmoid(m_ba), atol=1e-6)  # only through M
    pair = 1.0 / (1.0 + feature_distance_matrix(fa.features, fb.features))
    assert torch.allclose(pair.diagonal(), similarity(fa.features, fb.features), atol=1e-5)
    assert torch.allclose(similarity(fa.features, fa.features), torch.ones(2), atol=1e-3)  # F(a, a) = 0


def _hand_f(a, b):
    """F of Eq. 2 for one pair, written out: Euclidean distance of the L2-normalised vectors."""
    a, b = a / a.pow(2).sum().sqrt(), b / b.pow(2).sum().sqrt()
    return (a - b).pow(2).sum().sqrt()


@pytest.mark.parametrize("variant", VARIANTS)
@torch.no_grad()
def test_pair_score_is_what_the_variant_ranks_by(variant):
    """−F for feature variants, M = σ(logit) for metric-only ones, S = 1/(1+F) + λM for ``all``
    (λ = 0.5 here), each against a hand computation; M's logits are fixed numbers."""
    torch.manual_seed(0)
    model = build_model(variant, config=ModelConfig.cpu(lam=0.5))
    fa, fb = torch.randn(3, 8, dtype=torch.float64), torch.randn(3, 8, dtype=torch.float64)
    logits = torch.tensor([0.3, -1.2, 2.0], dtype=torch.float64)
    f = torch.stack([_hand_f(fa[k], fb[k]) for k in range(3)])
    m = 1.0 / (1.0 + torch.exp(-logits))
    expected = {"distance": -f, "metric": m, "similarity": 1.0 / (1.0 + f) + 0.5 * m}[model.ranking]
    feature_only = variant in ("cnn", "cnn_rnn", "cnn_tam")
    got = model.pair_score(fa, fb, None if feature_only else logits)
    torch.testing.assert_close(got, expected)
    if feature_only:  # −F needs no M
        assert model.ranking == "distance"
        torch.testing.assert_close(model.pair_score(fa, fb, logits), expected)
    elif variant == "all":
        assert model.ranking == "similarity"
    else:  # metric-only: the features do not enter M
        assert model.ranking == "metric"
        torch.testing.assert_close(model.pair_score(None, None, logits), expected)
    # other kinds on request (the Captum attributions use them)
    torch.testing.assert_close(model.pair_score(fa, fb, logits, kind="logit"), logits)
    torch.testing.assert_close(model.pair_score(fa, fb, kind="distance"), -f)
    if not feature_only:
        with pytest.raises(ValueError, match="needs the metric branch's logits"):
            model.pair_score(fa, fb)


def test_the_two_forms_of_f_agree_and_where_they_differ():
    """Row-wise F and the matrix F (2 − 2 q·g) agree to float rounding apart from 0: F(a, a) is
    exactly 0 row-wise, but up to ~1e-3 in the matrix form (sqrt of a rounding error); the
    losses' ``min_square=1e-12`` floors it at 1e-6."""
    torch.manual_seed(0)
    q, g = torch.randn(4, 16), torch.randn(5, 16)
    mat = feature_distance_matrix(q, g)
    rows = feature_distance(q[:, None, :].expand(4, 5, 16), g[None].expand(4, 5, 16))
    torch.testing.assert_close(mat, rows, atol=1e-5, rtol=0)
    torch.testing.assert_close(mat, torch.stack([torch.stack([_hand_f(a, b) for b in g]) for a in q]), atol=1e-5, rtol=0)
    assert torch.all(feature_distance(q, q) == 0)
    assert torch.all(feature_distance_matrix(q).diagonal() < 1e-3)
    assert torch.all(feature_distance_matrix(q, min_square=1e-12).diagonal() >= 1e-6)


# ---------------------------------------------------------------- pretrained weights


def test_load_pretrained_round_trip_and_errors(tmp_path):
    torch.manual_seed(0)
    net = caffenet(CPU)
    path = tmp_path / "w.pt"
    torch.save(net.state_dict(), path)
    other = caffenet(CPU)
    other.load_pretrained(path)
    assert torch.equal(other.conv3.weight, net.conv3.weight)

    state = net.state_dict()
    state.pop("conv2.bias")
    state["conv9.weight"] = torch.zeros(1)
    state["fc6.weight"] = torch.zeros(3, 4)
    torch.save(state, path)
    with pytest.raises(PretrainedWeightsError) as err:
        other.load_pretrained(path)
    msg = str(err.value)
    assert "missing keys: conv2.bias" in msg and "unexpected keys: conv9.weight" in msg
    assert f"fc6.weight: expected {tuple(net.fc6.weight.shape)}, got (3, 4)" in msg

    headless = caffenet(CPU, with_fc=False)  # metric-only variants ignore the file's fc layers
    torch.save(net.state_dict(), path)
    headless.load_pretrained(path)

    # CaffeNet's own layout (LRN, no BatchNorm) loads into norm="lrn" and is refused, with a hint, by "batch"
    caffe = caffenet(ModelConfig.cpu(norm="lrn"))
    torch.save(caffe.state_dict(), path)
    caffenet(ModelConfig.cpu(norm="lrn")).load_pretrained(path)
    with pytest.raises(PretrainedWeightsError, match="norm='lrn'"):
        caffenet(CPU).load_pretrained(path)
    with pytest.raises(PretrainedWeightsError, match=r"CaffeNet\(cnn='caffenet_light', width_mult=0.25, 128×64\)"):
        caffenet(CPU).load_pretrained(path)


def test_load_pretrained_can_start_fc_of_another_width_fresh(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "w.pt"
    torch.save({"state_dict": caffenet(ModelConfig.cpu(fc_dim=64)).state_dict(), "meta": {"source": "x"}}, path)
    net = caffenet(CPU)  # fc_dim 256, with BatchNorm on fc6/fc7 too
    with pytest.raises(PretrainedWeightsError, match=r"fc6.weight: expected \(256, 2048\), got \(64, 2048\)"):
        net.load_pretrained(path)  # the default stays strict
    fc6, bn6 = net.fc6.weight.detach().clone(), net.bn["fc6"].weight.detach().clone()
    result = net.load_pretrained(path, skip_mismatched_fc=True)
    assert result.skipped == ["fc6 (file (64, 2048), model (256, 2048))", "fc7 (file (64, 64), model (256, 256))"]
    assert "conv5" in result.loaded and "bn.conv5" in result.loaded and "fc6" not in result.loaded
    assert torch.equal(net.fc6.weight, fc6) and torch.equal(net.bn["fc6"].weight, bn6)  # left fresh
    state = caffenet(CPU).state_dict()
    state["conv2.weight"] = state["conv2.weight"][:, :-1]
    torch.save(state, path)
    with pytest.raises(PretrainedWeightsError, match="conv2.weight: expected"):  # convolutions must always fit
        net.load_pretrained(path, skip_mismatched_fc=True)
    path.write_bytes(b"not a torch file")
    with pytest.raises(PretrainedWeightsError, match="cannot read pretrained weights .*w.pt"):
        net.load_pretrained(path)
    with pytest.raises(FileNotFoundError, match="pretrained weights not found: .*nope.pt"):
        net.load_pretrained(tmp_path / "nope.pt")


def test_norm_choices_change_the_layers_not_the_shapes():
    x = torch.randn(2, 3, 128, 64)
    lrn, bn = caffenet(ModelConfig.cpu(norm="lrn")).eval(), caffenet(ModelConfig.cpu(norm="batch")).eval()
    assert isinstance(lrn.norm, nn.LocalResponseNorm) and lrn.bn is None
    assert isinstance(bn.norm, nn.Identity)
    assert sorted(bn.bn) == ["conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7"]
    assert sorted(caffenet(ModelConfig.cpu(norm="batch"), with_fc=False).bn) == ["conv1", "conv2", "conv3", "conv4", "conv5"]
    assert [t.shape for t in lrn(x)] == [t.shape for t in bn(x)]
    with pytest.raises(ValueError, match="unknown norm 'layer'"):
        ModelConfig.cpu(norm="layer")
    with pytest.raises(ValueError, match="fc_dropout must be in"):
        ModelConfig.cpu(fc_dropout=1.0)


# ---------------------------------------------------------------- end to end


def test_all_overfits_a_tiny_batch():
    """4 identities × 2 tracklets (cpu config, no dropout): triplet + pair BCE falls ≥ 5× in 25 steps."""
    torch.manual_seed(0)
    model = build_model("all", config=ModelConfig.cpu(dropout=0.0))
    pids = torch.arange(4).repeat_interleave(2)
    clips = torch.randn(4, 1, 3, CPU.height, CPU.width)[pids] + 0.5 * torch.randn(8, CPU.seq_len, 3, CPU.height, CPU.width)
    opt = torch.optim.Adam(model.parameter_groups(cnn_lr=3e-4, head_lr=2e-3))
    losses = []
    for _ in range(25):
        out = model(clips)  # one CNN pass: features and pool5
        idx_a, idx_b, labels = mine_pairs(out.features.detach(), pids)
        logits = model.metric(out.pool5[idx_a], out.pool5[idx_b])
        loss = batch_hard_triplet(out.features, pids) + pair_bce(logits, labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-3:]) / 3 < losses[0] / 5, losses


def test_feature_path_compiles_without_graph_breaks():
    """CNN + TAM trace as one graph (the SRM's nn.LSTM sweeps graph-break under dynamo; they run eagerly)."""
    torch.manual_seed(0)
    model = build_model("cnn_tam", config=ModelConfig.cpu(dropout=0.0))
    clips = torch.randn(1, CPU.seq_len, 3, CPU.height, CPU.width)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    out, ref = compiled(clips), model(clips)
    assert torch.allclose(out.features, ref.features, atol=1e-5) and torch.allclose(out.attention, ref.attention, atol=1e-6)


def test_layer_shapes_follow_the_config():
    from reidkit.models import ModelConfig, build_model

    arch = build_model("all", config=ModelConfig.cpu()).layer_shapes()
    names = [n for n, _ in arch["cnn"]]
    assert names == ["input", "conv1", "pool1", "conv2", "pool2", "conv3", "conv4", "conv5", "pool5", "fc6", "fc7"]
    assert dict(arch["cnn"])["pool5"] == arch["pool5"][1:] == (64, 8, 4)
    assert arch["temporal"] == "TemporalAttention" and arch["head"] == "SpatialRecurrentModel"
    wide = build_model("cnn", config=ModelConfig.cpu(width_mult=0.5, fc_dim=128)).layer_shapes()
    assert dict(wide["cnn"])["conv1"][0] == 48 and dict(wide["cnn"])["fc7"] == (128,) and wide["head"] is None


def test_srm_impulse_reaches_only_where_each_sweep_has_passed():
    from reidkit.models import ModelConfig, build_model

    torch.manual_seed(0)
    srm = build_model("all", config=ModelConfig.cpu()).head
    T, (h, w), (t0, y0, x0) = 6, (8, 4), (2, 4, 1)
    r = {k: v.numpy() > 1e-7 for k, v in srm.impulse_response(T, (h, w), (t0, y0, x0)).items()}
    expect = {"time_fwd": (slice(t0, T), y0, x0), "time_bwd": (slice(0, t0 + 1), y0, x0),
              "width_fwd": (t0, y0, slice(x0, w)), "width_bwd": (t0, y0, slice(0, x0 + 1)),
              "height_fwd": (t0, slice(y0, h), x0), "height_bwd": (t0, slice(0, y0 + 1), x0)}
    for name, where in expect.items():
        mask = np.zeros((T, h, w), bool)
        mask[where] = True
        np.testing.assert_array_equal(r[name], mask, err_msg=name)


def test_every_lstm_runs_in_float32_under_bf16_autocast():
    """torch's CUDA autocast would run cuDNN RNNs in fp16 (no GradScaler here: silent underflow),
    so the SRM sweeps, the CNN+RNN pooling and the TAM's cell run with autocast off."""
    cfg = ModelConfig.cpu()
    for variant in ("all", "cnn_rnn"):
        model = build_model(variant, config=cfg)
        seen = []
        hooks = [m.register_forward_hook(lambda mod, inp, out: seen.append((type(mod).__name__, inp[0].dtype,
                                                                             (out[0] if isinstance(out, tuple) else out).dtype)))
                 for m in model.modules() if isinstance(m, (torch.nn.LSTM, torch.nn.LSTMCell))]
        clips = torch.randn(2, cfg.seq_len, 3, cfg.height, cfg.width)
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(clips)
            if model.has_metric_branch:
                model.metric(out.pool5, out.pool5.flip(0))
        for h in hooks:
            h.remove()
        assert seen and all(i == o == torch.float32 for _, i, o in seen), seen
        assert {name for name, _, _ in seen} == ({"LSTM", "LSTMCell"} if variant == "all" else {"LSTM"})


@pytest.mark.parametrize("cfg", [ModelConfig.cpu(), ModelConfig(norm="lrn", fc_dropout=0.5)], ids=["cpu", "paper_lrn"])
def test_compiled_frame_cnn_has_no_graph_break(cfg):
    """train.compile compiles the frame CNN only (the pair mining and nn.LSTM calls break graphs);
    dynamo must capture the whole CNN as one graph, channels_last and bf16 autocast included."""
    cnn = build_model("all", config=cfg).cnn.to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, cfg.height, cfg.width).to(memory_format=torch.channels_last)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        explained = torch._dynamo.explain(cnn)(x)
    assert explained.graph_count == 1 and explained.graph_break_count == 0, explained.break_reasons
