# %% [markdown]
# # 2. Training: one network, two losses
#
# The network of Zhou et al. (Fig. 2) has two heads on one shared CaffeNet. The **feature
# branch** turns a clip $x$ of $T$ frames into one vector $\mathcal{F}(x)$ (the temporal
# attention model, notebook 4); the **metric branch** looks at two clips at once and outputs
# $M(x^i, x^j)$, the probability that they show the same person (the spatial recurrent model,
# notebook 5). Each head has its own loss, and both are trained together, end to end.
#
# **Triplet loss with hard negatives** on the feature branch. With $d(a,b)$ the Euclidean
# distance of L2-normalised features, for every anchor $a$ in the batch take its *hardest*
# positive (same person, farthest away) and *hardest* negative (other person, closest):
#
# $$L_{\mathrm{tri}} = \frac{1}{N}\sum_{a} \Big[\, m + \max_{p:\,y_p = y_a} d(a,p) \;-\; \min_{n:\,y_n \ne y_a} d(a,n) \Big]_+$$
#
# With a margin $m$, a triplet whose negative is already $m$ farther than its positive gives
# zero loss and zero gradient. On a few dozen training identities that soon holds for almost
# every anchor, and then nothing trains any more — in particular not the attention of notebook
# 4, which learns only through this loss. The CPU configuration therefore uses the **soft
# margin** form (`train.margin: null`; Hermans et al., 2017), which replaces $[m + x]_+$ by
# $\log(1 + e^{x})$: never exactly zero, so every triplet keeps pulling with a weight that
# shrinks smoothly. docs/experiments.md gives the measurement behind that choice, made on a
# separate draw of the synthetic benchmark; notebook 4 measures the attention of this run.
#
# **Binary cross-entropy** on the metric branch, for pairs drawn from the same batch (all
# positive pairs and as many of the hardest negative pairs), with $y=1$ for "same person":
#
# $$L_{\mathrm{pair}} = -\big[\, y \log M(x^i,x^j) + (1-y)\log\big(1 - M(x^i,x^j)\big) \big]$$
#
# The paper says only "hard negatives". Which negatives $M$ sees matters more than that
# suggests. In a P×K batch most positive pairs span two cameras, while the closest negatives
# tend to share a camera (same background, same light): trained on those alone, $M$ learns
# "another camera, so the same person". And it never sees an easy negative, so a large
# difference can score high. We therefore take half of the negatives as the hardest, in the
# same cross/same-camera mix as the positives, and the other half at random
# (`train.hard_negative_fraction`, `train.camera_balanced_pairs`); docs/experiments.md
# ("Training from scratch") has the measurement behind this choice.
#
# **Where training starts.** Zhou et al. do not train CaffeNet from scratch: they start from
# CaffeNet pretrained on ImageNet and fine-tune the whole network, both heads included, on the
# re-id data, and every row of their Table 2 starts from that same network. ImageNet cannot be
# downloaded here, so the kit makes its own stand-in: the same frame CNN trained first on a
# *different population* — 150 people of the synthetic benchmark drawn with another seed, none
# of whom appears among this dataset's people (`tests/test_pretrain.py` checks it). That
# pretraining uses the `cnn` variant alone (mean-pooled fc7, triplet loss). This lesson runs it,
# measures what the pretrained CNN already scores on the test people without any fine-tuning,
# then fine-tunes `all` from it; lesson 3 fine-tunes every variant from the same file.
#
# **Together.** The two losses are added, $L = L_{\mathrm{tri}} + L_{\mathrm{pair}}$, and one
# backward pass trains the shared CNN for both. Both need the right batches: **P identities ×
# K tracklets**, so every anchor has positives *and* negatives in the batch, each tracklet
# giving one clip of $T$ frames drawn at random (kept in temporal order) and mirrored with
# probability ½.

# %% tags=["parameters"]
profile = "smoke"
seed = 0
device = "auto"
config_file = "configs/smoke.yaml"
overrides = []                    # extra config overrides of the fine-tuning, as on the command line
pretrain_overrides = []           # config overrides of the pretraining (its step budget)
pretrain_preset = "pretrain"      # synthetic preset of the pretraining population
pretrain_seed = 7                 # its generator seed (the lessons' dataset is drawn with `seed`)
resume = False                    # continue run_dir/last.pt instead of starting over
dataset_dir = "reports/notebooks/work/dataset"
work_dir = "reports/notebooks/work"
pretrain_dir = "reports/notebooks/work/pretrain"
run_dir = "reports/notebooks/work/runs/all"
metrics_path = "reports/notebooks/metrics/02_training.json"
interactive = False

# %%
# %matplotlib inline
import copy
import time
from pathlib import Path

import numpy as np
import torch
from IPython.display import Markdown, display

from reidkit import viz
from reidkit.checkpoint import load_checkpoint
from reidkit.config import Config
from reidkit.data import Manifest
from reidkit.evaluate import evaluate
from reidkit.losses import batch_hard_triplet, mine_pairs, pair_bce
from reidkit.lessons import REPO_ROOT, write_metrics
from reidkit.pretrain import population, pretrain, pretrained_only
from reidkit.significance import describe, paired_bootstrap, rank1_hits, verdict
from reidkit.train import Trainer

ROOT = REPO_ROOT  # paths below are relative to the repository root
dataset_dir, work_dir, run_dir, pretrain_dir = (ROOT / p for p in (dataset_dir, work_dir, run_dir, pretrain_dir))

# %% [markdown]
# ## Pretraining the frame CNN on other people
#
# The population is generated once (a few seconds), then the `cnn` variant trains on it with the
# lesson's configuration: the same frame CNN, at the same size, that every variant will use.

# %%
people = population(work_dir / "pretrain_population", preset=pretrain_preset, seed=pretrain_seed, progress=False)
pre_config = Config.from_yaml(ROOT / config_file, [f"train.seed={seed}", f"train.device={device}", "train.progress=false",
                                                   *pretrain_overrides])
t0 = time.perf_counter()
weights = pretrain(pre_config, people, pretrain_dir, progress=False, force=True)
pretrain_s = time.perf_counter() - t0
pre_state = load_checkpoint(pretrain_dir / "last.pt")
pre_history = pre_state["history"]
pre_manifest = Manifest.load(people)
pre_ids = np.unique(pre_manifest.pids[pre_manifest.positions(pre_manifest.split(0).train)])
print(f"population: {pre_manifest.name}, {len(pre_ids[pre_ids > 0])} training identities; pretrained "
      f"{pre_state['step']} steps of the cnn variant in {pretrain_s:.0f}s → {weights.relative_to(work_dir)}")
viz.training_curves(pre_history, keys=("triplet",), title="pretraining on the other population: triplet loss per epoch")

# %% [markdown]
# ## Fine-tuning `all` from the pretrained CNN
#
# The fine-tuning configuration names the pretrained file (`model.pretrained`); the trainer
# loads its convolutions and fc layers into the new model, and the heads (the attention, the
# LSTM, the SRM) start from random weights.

# %%
config = Config.from_yaml(ROOT / config_file, [
    f"data.dataset={dataset_dir}", f"train.out_dir={run_dir}", f"train.seed={seed}",
    f"train.device={device}", "model.variant=all", "train.progress=false", "train.log_every=1",
    f"model.pretrained={weights}", *overrides])
display(Markdown(
    "<details><summary>The fine-tuning configuration (click to open)</summary>\n\n```yaml\n"
    + config.to_yaml() + "```\n</details>"))

# %% [markdown]
# ## The network (Fig. 2), as this configuration builds it
#
# The diagram is drawn from the model itself: one blank clip goes through it, and every
# layer reports its output shape. Change the config (frame size, widths, variant) and the
# figure changes with it.

# %%
live = []  # filled by the callback below
trainer = Trainer(config, callbacks=[{"on_step_end": lambda tr, step, logs: live.append({"step": step, **logs})}])
viz.network_diagram(trainer.model.layer_shapes())

# %% [markdown]
# **A second floor: the pretrained CNN alone.** Before any fine-tuning, how well does the
# pretrained CNN, with plain averaging of its fc7 over the frames (the `cnn` variant as it comes
# out of pretraining), already match this dataset's test people? Lesson 3 adds the first floor,
# the same architecture with random weights.

# %%
floor_model = pretrained_only(config.model, seed)  # the cnn variant with the pretrained CNN, not fine-tuned
floor = evaluate(floor_model, trainer.manifest, trainer.cache, config.eval, feature_cache_dir=work_dir / "features",
                 progress=False)  # lesson 3 scores the same floor: it finds these features
print("pretrained CNN, not fine-tuned:", floor.summary())
del floor_model

# %% [markdown]
# ## A P × K batch
#
# The trainer owns the data pipeline (manifest → frame cache → `TrainClipLoader`); here is
# what one step sees: P identities, K clips each, $T$ frames per clip.

# %%
batch = next(iter(trainer.loader))
print("clips", tuple(batch.clips.shape), "= (P·K, T, 3, H, W); pids", batch.pids.tolist())
show = range(0, len(batch.pids), max(1, len(batch.pids) // 6))
viz.sample_grid([list(viz.to_uint8(batch.clips[i])) for i in show],
                [f"pid {int(batch.pids[i])}" for i in show],
                title=f"one batch: P={config.train.P} identities × K={config.train.K} clips of T={config.model.seq_len} frames")

# %% [markdown]
# Every row is one training clip; consecutive rows with the same pid are the K clips of one
# identity, from different tracklets (and usually cameras).

# %% [markdown]
# ## Both losses on that batch, by hand
#
# The same computation as `reidkit.train.TrainingObjective`, spelled out: one CNN pass gives
# $\mathcal{F}(x)$ for the triplet loss and the pool5 maps that $M$ compares. It runs on a
# copy of the model, with the random-number state restored afterwards: in training mode a
# forward pass updates BatchNorm's running statistics and dropout draws random numbers, and
# this look must not change the run that follows.

# %%
with torch.random.fork_rng(), torch.no_grad():
    model = copy.deepcopy(trainer.model).train()
    out = model(batch.clips)
    triplet = batch_hard_triplet(out.features, batch.pids, config.train.margin)
    t = config.train
    idx_a, idx_b, labels = mine_pairs(out.features, batch.pids, camids=batch.camids if t.camera_balanced_pairs else None,
                                      hard_fraction=t.hard_negative_fraction)
    bce = pair_bce(model.metric(out.pool5[idx_a], out.pool5[idx_b]), labels)
print(f"features {tuple(out.features.shape)}, attention {tuple(out.attention.shape)}, pool5 {tuple(out.pool5.shape)}")
print(f"{int(labels.sum())} positive + {int((1 - labels).sum())} negative pairs for M "
      f"({t.hard_negative_fraction:.0%} of them the hardest, camera-balanced: {t.camera_balanced_pairs})")
m_text = "soft margin: log 2 = 0.6931 when positives and negatives are equally far" if config.train.margin is None else f"margin m = {config.train.margin}"
print(f"L_tri = {triplet.item():.4f}  ({m_text})")
print(f"L_pair = {bce.item():.4f}  (log 2 = {np.log(2):.4f} is a coin flip)")
unit = torch.nn.functional.normalize(out.features.float(), dim=1)
gaps = torch.cdist(unit, unit)[~torch.eye(len(unit), dtype=torch.bool)]
print(f"distances between the batch's L2-normalised features at initialisation: mean {gaps.mean():.3f}, "
      f"max {gaps.max():.3f} (2 is the largest possible)")
del model, out

# %% [markdown]
# ## Training `all`
#
# `Trainer.fit` runs the loop; a callback receives the losses every `train.log_every` steps.
# The library knows nothing about notebooks: here the callback appends to a list, and in
# interactive mode it also redraws the curves in place.

# %% tags=["headline"]
if interactive:
    handle = display(viz.training_curves([{"step": 0, "loss": np.nan}], keys=("loss",)), display_id=True)

    def redraw(tr, step, logs):
        handle.update(viz.training_curves(live, title=f"step {step}"))

    trainer.callbacks.append({"on_step_end": redraw})

t0 = time.perf_counter()
history = trainer.fit(resume=resume, force=not resume)  # this lesson owns its run folder
train_s = time.perf_counter() - t0
steps = trainer.step_history or live
print(f"{trainer.step} steps in {train_s:.0f}s; last epoch: loss {history[-1]['loss']:.4f}, "
      f"{history[-1]['frames_per_s']:.0f} frames/s")
viz.training_curves(steps, title=f"training curves ({profile} profile)")

# %% [markdown]
# The curves show the total loss and its two terms per logged step. With the soft margin, an
# anchor whose hardest positive and hardest negative are equally far away costs $\log 2$: that is
# where a network sits whose features do not yet tell people apart (with a margin, the margin
# $m$). The cell below measures where this run's triplet term started, relative to that value,
# and when it first fell below 90 % of it; and whether the pair loss of $M$ ended below a coin
# flip.

# %%
tri = np.array([s["triplet"] for s in steps], dtype=float)
plateau = float(np.log(2)) if config.train.margin is None else float(config.train.margin)
below = np.flatnonzero(tri < 0.9 * plateau)
left_at = int(steps[below[0]]["step"]) if len(below) else None
bce_last = float(np.mean([s["bce"] for s in steps[-max(1, len(steps) // 10):]]))
start = ("already below 90 % of it" if tri[0] < 0.9 * plateau else "near it" if tri[0] < 1.1 * plateau else "above it")
display(Markdown(
    f"At the first logged step the triplet term was {tri[0]:.3f}, {start} "
    f"({'log 2, the soft margin' if config.train.margin is None else 'the margin'}: {plateau:.3f}); the batch's "
    f"L2-normalised features before fine-tuning were {gaps.mean():.2f} apart on average (0 if every clip got the same "
    f"feature, 2 at most). "
    + (f"It was first below 90 % of that value at step {left_at} of {trainer.step}. " if left_at is not None
       else f"It stayed within 10 % of that value for all {trainer.step} steps. ")
    + f"The pair loss of $M$ averaged {bce_last:.3f} over the last tenth of the logged steps, "
    f"{'below' if bce_last < np.log(2) else 'not below'} a coin flip (log 2 = {np.log(2):.3f})."))
curve = [(r["step"], r["rank1"]) for r in history if r.get("scored_on") == "validation"]
if curve:
    print("validation rank-1 (held-out training identities) by step: "
          + ", ".join(f"{k}: {v:.1f}" for k, v in curve))

# %% [markdown]
# ## Checkpoints and resuming
#
# After every epoch the trainer writes `epoch_XXX.pt` and `last.pt` atomically (a crash never
# leaves a half-written file). A checkpoint holds the weights *and* everything needed to
# continue exactly: the optimiser state, the step and epoch counters, the random-number states
# and the history. `Trainer(config).fit(resume=True)` — or `reidkit train ... --resume` —
# picks up `last.pt` and continues with the next epoch, drawing the same batches as an
# uninterrupted run would (the clip loader is seeded by seed and epoch).

# %%
ckpt_path = run_dir / "last.pt"
state = load_checkpoint(ckpt_path)
print(ckpt_path, f"{ckpt_path.stat().st_size / 2**20:.1f} MiB")
print("keys:", ", ".join(state))
print("epoch", state["epoch"], "step", state["step"], "variant", state["variant"])
print("files:", ", ".join(sorted(p.name for p in run_dir.iterdir())))

# %% [markdown]
# ## A first evaluation
#
# The full evaluation (both MARS conventions, retrieval examples) is notebook 6; here one
# number to see that training did something. Like every lesson, it uses the run's own
# evaluation settings (`config.eval`), so notebook 6 reports the same number for this model;
# the test features are cached under `work/`, so notebook 6 does not extract them again.

# %%
model = trainer.model.eval()
result = evaluate(model, trainer.manifest, trainer.cache, config.eval, feature_cache_dir=work_dir / "features",
                  progress=False)
print(result.summary())
gain = paired_bootstrap(rank1_hits(result), rank1_hits(floor))
display(Markdown(
    f"Fine-tuning `all` for {trainer.step} steps took rank-1 from {floor.rank1:.1f} (the pretrained CNN alone) to "
    f"{result.rank1:.1f}: {describe(gain)} (a paired bootstrap over the {len(rank1_hits(result))} queries: the same "
    f"queries scored by two models). Lesson 3 asks what each part of the model adds."))

# %%
_ = write_metrics(metrics_path, {
    "key": {"steps": trainer.step, "final_loss": history[-1]["loss"], "rank1": result.rank1, "mAP": result.mAP,
            "pretrained_only_rank1": floor.rank1, "pretrain_steps": int(pre_state["step"]),
            "train_s": round(train_s, 1), "pretrain_s": round(pretrain_s, 1)},
    "reproduces": "Sec. 4.1: the network fine-tuned end to end from a pretrained CaffeNet (here pretrained on "
                  "other synthetic people), with the triplet and pair losses",
    "claims": [{"claim": "fine-tuning ALL beats the pretrained CNN alone", "diff": gain.diff,
                "interval": [gain.low, gain.high], "verdict": verdict(gain)}],
    "pretrained_from": str(weights), "pretrained_only": floor.to_dict(per_query=False),
    "pretrain_history": pre_history, "validation_curve": curve,
    "triplet_plateau": {"value": plateau, "first_logged": tri[0], "left_at_step": left_at},
    "history": history, "steps": steps, "eval": result.to_dict(per_query=False),
    "config": config.to_dict(), "checkpoint": str(ckpt_path), "train_s": train_s,
    "frames_per_s": history[-1]["frames_per_s"],
})
