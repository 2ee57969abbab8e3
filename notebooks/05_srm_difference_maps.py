# %% [markdown]
# # 5. The spatial recurrent model: comparing two tracklets location by location
#
# The feature branch squeezes each tracklet into one vector before comparing. The metric
# branch (Sec. 3.3, Fig. 5–7) compares *before* squeezing: it subtracts the two clips' pool5
# maps frame by frame and location by location,
#
# $$d_{t}(h, w) = f(x^i_t)_{pool5}(h, w) - f(x^j_t)_{pool5}(h, w),$$
#
# a $T \times C \times h \times w$ volume that is small where the two people look alike. A
# difference at one location means little alone (a bag, a shadow, a slightly shifted crop), so
# after a 1×1 convolution $u = \mathrm{ReLU}(W_1 * d)$ six LSTMs sweep the volume, each along
# one direction — forward and backward in **time**, left↔right in **width**, top↔bottom in
# **height** — and each location collects what its neighbours in that direction saw:
#
# $$s^{(k)}_\ell = \mathrm{LSTM}_k\big(u_\ell,\; s^{(k)}_{\ell - 1}\big), \qquad k = 1, \dots, 6,$$
#
# with $\ell - 1$ the previous location along direction $k$. The six outputs are stacked and a
# second 1×1 convolution mixes them into the **contextual feature**
# $c = \mathrm{ReLU}\big(W_2 * [s^{(1)}; \dots; s^{(6)}]\big)$ (Fig. 7); a fully connected layer
# turns $c$ into the logit of "same person", $M(x^i, x^j) = \sigma(w^\top c + b)$. At test time
# $M$ joins the feature distance in Eq. 2:
# $S = \frac{1}{1 + F(\mathcal{F}(x^i), \mathcal{F}(x^j))} + \lambda M(x^i, x^j)$.

# %% tags=["parameters"]
profile = "smoke"
seed = 0
device = "auto"
ig_steps = 4                      # integration steps of Integrated Gradients
num_pairs = 64                    # positive and negative pairs for the statistics
dataset_dir = "reports/notebooks/work/dataset"
run_dir = "reports/notebooks/work/runs/all"
diff_run_dir = ""                 # a trained cnn_diff run to compare with (lesson 3 trains one); empty: skip
metrics_path = "reports/notebooks/metrics/05_srm_difference_maps.json"
interactive = False

# %%
# %matplotlib inline
from pathlib import Path

from itertools import combinations

import numpy as np
import torch
from IPython.display import Markdown, display
from scipy.stats import spearmanr

from reidkit import explain, viz
from reidkit.attention import test_people
from reidkit.data import even_clip, even_frame_indices
from reidkit.evaluate import even_clip_outputs
from reidkit.checkpoint import load_model
from reidkit.lessons import REPO_ROOT, open_run, write_metrics
from reidkit.models import metric_score
from reidkit.significance import describe, paired_bootstrap, verdict

ROOT = REPO_ROOT  # paths below are relative to the repository root
dataset_dir, run_dir = ROOT / dataset_dir, ROOT / run_dir
model, config, manifest, cache, dev = open_run(run_dir, dataset_dir, device)
T = config.model.seq_len
print(f"{model.variant} model, pool5 grid {config.model.pool5_grid} × {config.model.pool5_channels} channels, T = {T}")

# %% [markdown]
# ## A positive and a negative pair
#
# A query tracklet, a tracklet of the same person from another camera (positive), and one of
# another person (negative); $T$ evenly spaced frames of each.

# %%
split = manifest.split(0)
rng = np.random.default_rng(seed)
test = test_people(manifest, 0)  # real people only: distractors and junk have no "person"


def frames_and_clip(p):
    return cache.clip(p, even_frame_indices(manifest, p, T)), even_clip(manifest, cache, p, T, dev)


q = next(p for p in manifest.positions(split.query)
         if any(manifest.pids[g] == manifest.pids[p] and manifest.camids[g] != manifest.camids[p] for g in test))
pos = next(g for g in test if manifest.pids[g] == manifest.pids[q] and manifest.camids[g] != manifest.camids[q])
# the negative is also from another camera, as the positive is: the pair differs only in the person
neg = rng.choice(test[(manifest.pids[test] != manifest.pids[q]) & (manifest.camids[test] != manifest.camids[q])])
(fq, cq), (fp, cp), (fn, cn) = (frames_and_clip(p) for p in (q, pos, neg))
with torch.no_grad():
    logit_pos, maps_pos = model.metric(cq, cp, return_maps=True)
    logit_neg, maps_neg = model.metric(cq, cn, return_maps=True)
m_pos, m_neg = metric_score(logit_pos).item(), metric_score(logit_neg).item()  # M of Eq. 2
print(f"query pid {manifest.pids[q]}: M(positive, pid {manifest.pids[pos]}) = {m_pos:.3f}, "
      f"M(negative, pid {manifest.pids[neg]}) = {m_neg:.3f}")
display(Markdown("\n".join(["| map of the pair | frames T | channels C | grid h × w |", "|---|---:|---:|---|"] + [
    f"| `{k}` | {v.shape[1]} | {v.shape[2]} | {v.shape[3]} × {v.shape[4]} |" for k, v in maps_pos.items()])))

# %% [markdown]
# ## The difference map and the six sweeps
#
# Every map below is reduced to one value per location (the L2 norm over channels), one column
# per frame: first the two clips, then $d$, the 1×1-conv input of the sweeps, the six sweep
# outputs, and the contextual feature.

# %%
viz.srm_maps(maps_pos, fq, fp, title=f"SRM maps of the positive pair (M = {m_pos:.3f})")

# %% [markdown]
# ## How far does each sweep reach? (Fig. 6, measured)
#
# The paper's Fig. 6 draws the order in which each of the six spatial RNNs visits the
# locations. The trained SRM can show it instead: give the sweeps' input a single impulse at
# one location of the $(T, h, w)$ grid and see where each sweep's output changes. An LSTM
# carries what it has read forward along its own direction only, so the forward time sweep
# should respond at the impulse and at every later frame of that location, the backward one at
# every earlier frame, and the width and height sweeps along the impulse's row or column within
# its frame. The cell checks this on the measured maps.

# %%
if model.head is not None and hasattr(model.head, "impulse_response"):
    grid = config.model.pool5_grid
    at = (T // 2, grid[0] // 2, grid[1] // 2)
    reach = model.head.impulse_response(T, grid, at)
    display(viz.sweep_impulses(reach, at))
    reached = {k: int((v > 1e-6 * max(float(v.max()), 1e-12)).sum()) for k, v in reach.items()}
    expected = {"time_fwd": T - at[0], "time_bwd": at[0] + 1, "height_fwd": grid[0] - at[1],
                "height_bwd": at[1] + 1, "width_fwd": grid[1] - at[2], "width_bwd": at[2] + 1}
    agree = [k for k in expected if reached[k] == expected[k]]
    print("locations reached per sweep (expected along its own direction only): " +
          ", ".join(f"{k.replace('_', ' ')} {reached[k]} ({expected[k]})" for k in expected))
    print(f"{len(agree)} of 6 sweeps reach exactly their own line"
          + ("." if len(agree) == 6 else f"; not: {', '.join(k for k in expected if k not in agree)}."))
else:
    reach, reached = {}, {}
    print(f"the {model.variant} model has no spatial recurrent model")

# %% [markdown]
# Where all six sweeps reach as expected (the cell above counts them), every location of the
# contextual feature has heard from its whole row, column and time line, in both directions:
# that is what lets the metric judge a difference by its surroundings, not only by its own
# value.
#
# ## CNN+DIFF beside CNN+SRM, same pair
#
# CNN+DIFF (Table 2) is the SRM without its sweeps: the difference map, a 1×1 convolution and
# the FC layer. Lesson 3 trained one with the ablation's budget; its maps for the same positive
# pair show what the sweeps add: the 1×1 conv output is as local as $d$ itself.

# %%
diff_model = None
if diff_run_dir and (Path(diff_run_dir) / "last.pt").is_file():
    diff_model, _ = load_model(Path(diff_run_dir) / "last.pt", device=dev)
    with torch.no_grad():
        logit_diff, maps_diff = diff_model.metric(cq, cp, return_maps=True)
    display(viz.srm_maps(maps_diff, fq, fp, title=f"CNN+DIFF maps of the same positive pair "
                                                   f"(M = {metric_score(logit_diff).item():.3f}; lesson 3's run)"))
else:
    print("no trained cnn_diff run given (diff_run_dir); lesson 3 trains one when run first")

# %% [markdown]
# ## Contextual feature: positive against negative
#
# Same colour scale for both pairs, so magnitudes compare.

# %% tags=["headline"]
viz.srm_pair_comparison(maps_pos, maps_neg, (fq, fp), (fq, fn), pos_score=m_pos, neg_score=m_neg)

# %% [markdown]
# For a trained model, the difference map of the same-person pair should be weaker (darker)
# than that of the different-person pair; the statistics below check this over many pairs
# instead of one.

# %% [markdown]
# ## Over many pairs
#
# Up to `num_pairs` anchor tracklets of the test set, each with a positive (the same person
# in another camera) and a negative (another person, also in another camera, so that camera
# change cannot explain a difference between the two): the mean norm of $d$ and of the
# contextual feature, and $M$. Both pairs share their anchor, so the two scores of one anchor
# compare directly; the interval for the gap in $M$ resamples the anchors (a paired bootstrap,
# `reidkit.significance`).

# %%
def pool5_of(positions):
    return even_clip_outputs(model, manifest, cache, positions, device=dev).pool5.to(dev)


pairs = {"positive": [], "negative": []}
for a in rng.permutation(test):
    same = test[(manifest.pids[test] == manifest.pids[a]) & (manifest.camids[test] != manifest.camids[a])]
    other = test[(manifest.pids[test] != manifest.pids[a]) & (manifest.camids[test] != manifest.camids[a])]
    if len(same) and len(other):
        pairs["positive"].append((a, rng.choice(same)))
        pairs["negative"].append((a, rng.choice(other)))
    if len(pairs["positive"]) == num_pairs:
        break
stats_pairs = {}
for kind, ab in pairs.items():
    ab = np.array(ab)
    with torch.no_grad():
        logits, maps = model.metric(pool5_of(ab[:, 0]), pool5_of(ab[:, 1]), return_maps=True)
    stats_pairs[kind] = {"n": len(ab), "M": metric_score(logits).cpu().numpy(),
                         "difference_norm": maps["difference"].flatten(2).norm(dim=2).mean(1).cpu().numpy(),
                         "context_norm": maps["context"].flatten(2).norm(dim=2).mean(1).cpu().numpy()}
P, N = stats_pairs["positive"], stats_pairs["negative"]
auc = float(np.mean(P["M"][:, None] > N["M"][None, :]) + 0.5 * np.mean(P["M"][:, None] == N["M"][None, :]))
for name in ("M", "difference_norm", "context_norm"):
    print(f"{name:16s} positive {P[name].mean():.3f}   negative {N[name].mean():.3f}")
print(f"P(M(positive) > M(negative)) = {auc:.3f} over all positive × negative pairs  (0.5 = chance)")
m_gap = paired_bootstrap(P["M"], N["M"], seed=seed)  # per anchor: M(positive) − M(negative), × 100
weaker = float(np.mean(P["difference_norm"] < N["difference_norm"]))
display(Markdown(
    f"Over {len(P['M'])} anchors, $M$ of the same-person pair minus $M$ of the other-person pair (in points of "
    f"$M$'s 0–100 % scale): {describe(m_gap)} for the claim that $M$ scores the same person higher. "
    f"The same-person difference map is the weaker one for {weaker:.0%} of the anchors (mean $\\|d\\|$ "
    f"{P['difference_norm'].mean():.2f} against {N['difference_norm'].mean():.2f})."))

# %% [markdown]
# ## Which frames and pixels drive the score? (Captum)
#
# Three attributions of the pair score $S$ (Eq. 2) of (query, positive) to the query's pixels:
# **Integrated Gradients** (gradients along a path from a grey clip to the real one; the
# attributions add up to the change of the score), **frame occlusion** (replace one frame at a
# time by grey and see how much the score drops), and **Grad-CAM** on conv5 (where in each
# frame the evidence sits).

# %%
attributions = explain.explain_pair(model, cq, cp, methods=("integrated_gradients", "frame_occlusion", "layer_gradcam"),
                                    integrated_gradients={"steps": ig_steps})
viz.attribution_figure(fq, attributions, title=f"attribution of S(query, positive) = {attributions['frame_occlusion'].score:.3f}")

# %% [markdown]
# The overlays show where each method finds the evidence, the bars how much each frame
# contributes. Do the three methods rank the frames alike? Spearman's ρ between each two
# methods' frame importances (1: the same order, −1: the reverse) and each method's most
# important frame. Grad-CAM keeps only evidence *for* the score (it is ReLU'd), frame occlusion
# measures the score's actual drop without a frame, and IG splits the score's change along a
# path from a grey clip, so they need not agree; where they do, a frame's role is better
# supported than by any one of them.

# %%
importance = {m: np.asarray(a.frame_importance, np.float64) for m, a in attributions.items()}
top_frame = {m: int(np.argmax(v)) for m, v in importance.items()}
rho = {}
for a, b in combinations(importance, 2):
    r = spearmanr(importance[a], importance[b]).statistic if np.ptp(importance[a]) and np.ptp(importance[b]) else np.nan
    rho[f"{a} vs {b}"] = float(r)
display(Markdown("\n".join(["| method | frame importance / max \\|·\\| (frame 0, 1, …) | most important frame |",
                             "|---|---|---:|"] + [
    f"| {m} | {', '.join(f'{x:+.2f}' for x in v / (np.abs(v).max() or 1.0))} | {top_frame[m]} |"
    for m, v in importance.items()])))
finite = [r for r in rho.values() if np.isfinite(r)]
pairs_text = ", ".join(f"ρ({k}) = {r:+.2f}" for k, r in rho.items())
if finite and min(finite) >= 0.5 and len(set(top_frame.values())) == 1:
    agreement = (f"The methods agree ({pairs_text}) and all rank frame {next(iter(top_frame.values()))} first: "
                 f"on this pair, that frame carries the score by every measure.")
elif finite and max(finite) >= 0.5:
    agreement = (f"The methods agree only in part ({pairs_text}; most important frames "
                 f"{', '.join(f'{m} {t}' for m, t in top_frame.items())}): a frame's role is supported only "
                 f"where the agreeing methods say the same.")
else:
    agreement = (f"The methods disagree ({pairs_text}; most important frames "
                 f"{', '.join(f'{m} {t}' for m, t in top_frame.items())}): on this pair no frame can be named as "
                 f"the one the score rests on.")
display(Markdown(agreement))

# %%
if interactive:
    from reidkit.widgets import pair_explorer

    display(pair_explorer(model, manifest, cache, positions=list(test[:200]), device=dev))

# %%
claim = "M scores a same-person pair above a different-person pair of the same anchor (Sec. 3.3)"
written = write_metrics(metrics_path, {
    "reproduces": "Sec. 3.3 and Fig. 5–7: the spatial recurrent model's difference map, its six sweeps (Fig. 6, "
                  "measured) and the contextual feature, on one trained model",
    "claims": [{"claim": claim, "verdict": verdict(m_gap), "interval": [m_gap.low, m_gap.high], "diff": m_gap.diff}],
    "key": {"M_positive": float(P["M"].mean()), "M_negative": float(N["M"].mean()), "pair_auc": auc,
            "diff_norm_pos": float(P["difference_norm"].mean()), "diff_norm_neg": float(N["difference_norm"].mean())},
    "sweep_reach": reached, "diff_model_shown": diff_model is not None,
    "example": {"query": int(manifest.tracklet_ids[q]), "positive": int(manifest.tracklet_ids[pos]),
                "negative": int(manifest.tracklet_ids[neg]), "M_positive": m_pos, "M_negative": m_neg},
    "pairs": {k: {"n": v["n"], **{n: float(v[n].mean()) for n in ("M", "difference_norm", "context_norm")}}
              for k, v in stats_pairs.items()},
    "M_gap": m_gap.to_dict(), "difference_weaker_for_positive": weaker,
    "attribution_agreement": {"spearman": rho, "top_frame": top_frame},
    "attributions": {m: {"score": a.score, "kind": a.kind, "frame_importance": a.frame_importance,
                         **{k: v for k, v in a.info.items() if isinstance(v, (int, float, str))}}
                     for m, a in attributions.items()},
})
print(f"this lesson's numbers: metrics/{written.name}")
