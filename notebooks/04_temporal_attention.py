# %% [markdown]
# # 4. The temporal attention model: which frames count?
#
# Not every frame of a tracklet is equally useful: in some the person is hidden behind an
# object or another pedestrian, blurred, or cut off by a bad crop. Averaging all frames lets
# those frames pollute the descriptor. The temporal attention model (TAM, Sec. 3.2, Fig. 3–4)
# lets the network choose. At each LSTM step $t$ it scores every frame $i$ from the frame's
# fc7 feature $f_i$, the previous hidden state $h_{t-1}$ and the previous input $z_{t-1}$:
#
# $$e_{t,i} = w^\top \tanh\!\big(U f_i + V h_{t-1} + W z_{t-1} + b\big), \qquad
#   \omega_{t,i} = \frac{\exp e_{t,i}}{\sum_{j=1}^{T} \exp e_{t,j}},$$
#
# feeds the LSTM the weighted average (Eq. 3)
#
# $$\bar{x}_t = \sum_{i=1}^{T} \omega_{t,i}\, f(x_i)_{fc7}, \qquad h_t = \mathrm{LSTM}(\bar{x}_t, h_{t-1}),$$
#
# and takes the mean of the $T$ LSTM outputs as $\mathcal{F}(x)$. The weights $\omega$ form a
# $T \times T$ matrix per clip (row = step, column = frame, each row sums to 1). The model
# returns it, so we can look. On the synthetic benchmark each frame also has a ground-truth
# **visibility**, which lets us ask a question the paper could only answer by eye: does the
# attention avoid the occluded frames?

# %% tags=["parameters"]
profile = "smoke"
seed = 0
device = "auto"
max_tracklets = 32                # test tracklets used for the statistics
dataset_dir = "reports/notebooks/work/dataset"
run_dir = "reports/notebooks/work/runs/all"
metrics_path = "reports/notebooks/metrics/04_temporal_attention.json"
interactive = False

# %%
# %matplotlib inline
from pathlib import Path

import numpy as np
import torch
from IPython.display import display

from reidkit import viz
from reidkit.evaluate import even_clip_outputs
from reidkit.report import REPO_ROOT, load_run, write_metrics
from reidkit.train import resolve_device

ROOT = REPO_ROOT  # paths below are relative to the repository root
dataset_dir, run_dir = ROOT / dataset_dir, ROOT / run_dir
dev = resolve_device(device)
model, config, manifest, cache = load_run(run_dir, dataset_dir, dev)
T = config.model.seq_len
print(f"{model.variant} model from {run_dir / 'last.pt'}, T = {T}, {config.height}×{config.width} frames")

# %% [markdown]
# ## Attention on many test tracklets
#
# One clip of $T$ evenly spaced frames per test tracklet, through the feature branch. We keep
# the weights, and the ground truth of the same frames.

# %%
split = manifest.split(0)
test = manifest.positions(split.query + split.gallery)
test = test[manifest.pids[test] >= 1]  # real people only: distractors and junk have no "person"
rng = np.random.default_rng(seed)
positions = np.sort(rng.choice(test, size=min(max_tracklets, len(test)), replace=False))
clip_out = even_clip_outputs(model, manifest, cache, positions, device=dev, with_pool5=False)
attention, frame_idx = clip_out.attention.numpy(), clip_out.frame_idx
row_sums = attention.sum(-1)
print(f"{len(positions)} clips, attention {attention.shape}; rows sum to 1 within "
      f"{np.abs(row_sums - 1).max():.1e}")

# %% [markdown]
# ## One clip with occluded frames
#
# The strip shows the frames, each frame's attention averaged over the steps
# $\bar\omega_i = \frac{1}{T}\sum_t \omega_{t,i}$ (bars; uniform would be $1/T$), and the
# ground-truth visibility; the heatmap is the full $T \times T$ matrix.

# %%
has_vis = manifest.has_visibility
vis = [manifest.tracklets[p].visibility[i] if has_vis else None for p, i in zip(positions, frame_idx)]
occl = [manifest.tracklets[p].extras.get("occlusion") for p in positions]
labels = [np.asarray(o)[i] if o else None for o, i in zip(occl, frame_idx)]
# the most informative example: the clip whose visibility varies most
order = np.argsort([-(np.ptp(v) if v is not None else 0) for v in vis])
k = int(order[0])
p = positions[k]
frames = cache.clip(p, frame_idx[k])
t = manifest.tracklets[p]
display(viz.frame_strip(frames, weights=attention[k], visibility=vis[k],
                        title=f"tracklet {t.tracklet_id} (pid {t.pid}, cam {t.camid})"))
viz.attention_heatmap(attention[k], title="ω: row t = LSTM step, column i = frame")

# %% [markdown]
# Where the bars of ω̄ dip at the same frames as the visibility, the model has learned to look
# past the occlusion; a flat row of 1/T would mean it has not learned to choose at all.

# %% [markdown]
# ## Attention against visibility, over all clips
#
# Each dot is one frame: its ground-truth visibility against $T\bar\omega_i$ (1 = the uniform
# weight). A positive correlation means the TAM gives visible frames more weight. The box plot
# splits the weights by the reason a frame is degraded.

# %%
corr = {"pearson": float("nan"), "spearman": float("nan"), "n": 0}
occluded_vs_visible = {}
if has_vis:
    rel = [viz.frame_weights(a) * T for a in attention]
    corr = viz.correlations(rel, vis)
    all_labels = labels if all(x is not None for x in labels) else None
    display(viz.attention_vs_visibility(list(attention), vis, labels=all_labels, relative=True,
                                        title="temporal attention vs ground-truth visibility"))
    w, v = np.concatenate(rel), np.concatenate(vis)
    occluded_vs_visible = {"relative_weight_visibility_below_0.5": float(w[v < 0.5].mean()) if (v < 0.5).any() else None,
                           "relative_weight_visibility_above_0.9": float(w[v > 0.9].mean()) if (v > 0.9).any() else None}
    print({name: (round(x, 3) if isinstance(x, float) else x) for name, x in {**corr, **occluded_vs_visible}.items()})
else:
    print("no per-frame visibility in this dataset: the correlation needs the synthetic benchmark")

# %% [markdown]
# The title gives Pearson's r and Spearman's ρ over all frames; the numbers are in the
# metrics file, so the report states what this run learned rather than what we hoped for.

# %% [markdown]
# ## Did the attention leave uniform?
#
# A known failure of attention models is weights that never move from $1/T$: the TAM then is
# an expensive average. The spread $\max_i \omega_{t,i} - \min_i \omega_{t,i}$ is 0 and the
# normalised entropy $H(\omega_t)/\log T$ is 1 for uniform weights.

# %%
spread = viz.attention_spread(attention)
print(f"mean spread {spread['spread'].mean():.3f} (uniform: 0, one-hot: 1); {np.mean(spread['spread'] < 1e-3):.0%} "
      f"of the clips are within 1e-3 of uniform; mean normalised entropy {spread['entropy'].mean():.3f}")
viz.spread_of_attention(attention, title=f"spread of the attention over {len(positions)} clips")

# %% [markdown]
# Mass near 0 spread and entropy 1 means near-uniform attention; mass to the right (left) in
# the spread (entropy) histogram means the model picks frames.

# %%
if interactive:
    from reidkit.widgets import tracklet_explorer

    display(tracklet_explorer(model, manifest, cache, positions=list(positions[order[:50]]), device=dev))

# %%
write_metrics(metrics_path, {
    "key": {"pearson_r": corr["pearson"], "spearman_rho": corr["spearman"],
            "mean_spread": float(spread["spread"].mean()), "mean_entropy": float(spread["entropy"].mean())},
    "correlation": corr, "occluded_vs_visible": occluded_vs_visible,
    "row_sum_max_error": float(np.abs(row_sums - 1).max()),
    "near_uniform_fraction": float(np.mean(spread["spread"] < 1e-3)), "uniform_weight": 1 / T,
    "num_clips": len(positions), "T": T,
    "example": {"tracklet_id": int(t.tracklet_id), "attention": attention[k]},
})
