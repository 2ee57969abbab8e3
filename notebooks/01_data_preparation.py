# %% [markdown]
# # 1. Data preparation: from raw videos to a manifest and a frame cache
#
# Video re-identification compares **tracklets**: short sequences of person crops that a
# detector and a tracker produced in one camera. A query tracklet from one camera is ranked
# against a gallery of tracklets from the other cameras, and the right answer is every gallery
# tracklet of the same person. Zhou et al. (CVPR 2017) evaluate on MARS, iLIDS-VID and
# PRID2011 (their Table 1); this kit adds a procedurally rendered **synthetic benchmark** that
# has the same structure as MARS (six cameras, distractors, junk, the same query/gallery
# protocol) and, unlike the real datasets, per-frame ground truth: how much of the person is
# visible, and why not (an object or another person in front, blur, a bad crop).
#
# Everything downstream reads one thing, the **manifest** that `data_prep` writes:
#
# | file | content |
# |---|---|
# | `tracklets.csv` | one row per tracklet: `tracklet_id, pid, camid, num_frames, frames` (paths joined with `\|`, in temporal order), optional per-frame `visibility`, `occlusion`, ... |
# | `splits.json` | the protocol splits: `{"train": [...], "query": [...], "gallery": [...]}` (MARS: one; iLIDS-VID / PRID2011: ten) |
# | `meta.json` | name, source, protocol, counts, frame size, what was excluded and why |

# %% tags=["parameters"]
profile = "smoke"                 # the reidkit report profile that injected these values
seed = 0
device = "auto"
config_file = "configs/smoke.yaml"  # the training config: its frame size is the cache's
synthetic_preset = "tiny"         # tiny, small, medium or large (empty: never generate)
dataset_dir = "reports/notebooks/work/dataset"
metrics_path = "reports/notebooks/metrics/01_data_preparation.json"
interactive = False               # True: also build the ipywidgets explorers

# %%
# %matplotlib inline
import time
from pathlib import Path

import numpy as np
from IPython.display import Markdown, display
from PIL import Image

from reidkit import stats, viz
from reidkit.config import Config
from reidkit.data import FrameCache, Manifest, decode_frame
from reidkit.lessons import REPO_ROOT, write_metrics

# Paths are relative to the repository root, wherever the notebook runs from.
ROOT = REPO_ROOT  # paths below are relative to the repository root
dataset_dir = ROOT / dataset_dir
config = Config.from_yaml(ROOT / config_file)
H, W = config.model.height, config.model.width
timings = {}

# %% [markdown]
# ## The synthetic benchmark
#
# `data_prep.synthetic.generate(out, preset, seed)` renders every frame from a seeded plan:
# identities (clothing colours and patterns, some drawn as look-alikes of another identity:
# hard negatives), cameras with their own illumination, tracklets with walking motion and
# occlusions. Same seed, same bytes. How often and how badly frames are degraded is a dial:
# `generate(out, preset, seed, occlusion="none" | "default" | "heavy" | r)` (or
# `python -m data_prep synthetic ... --occlusion LEVEL`); this report uses the default level.
# Notebook 4's dose-response study trains at several levels, in the `full` profile only
# (`reidkit report --profile full`: six more training runs); the other profiles skip it. If
# the folder already holds a manifest it is used as it is, so the same cell also works for a
# real dataset.

# %%
t0 = time.perf_counter()
if not (dataset_dir / "tracklets.csv").exists():
    if not synthetic_preset:
        raise FileNotFoundError(f"{dataset_dir} has no manifest; prepare it with `python -m data_prep ...`")
    from data_prep.synthetic import generate

    generate(dataset_dir, preset=synthetic_preset, seed=seed, progress=False)
timings["generate_s"] = time.perf_counter() - t0
manifest = Manifest.load(dataset_dir)
print(f"{manifest.name}: {len(manifest)} tracklets, {manifest.total_frames:,} frames, {len(manifest.splits)} split(s), "
      f"protocol {manifest.protocol!r}; ready in {timings['generate_s']:.1f}s")

# %% [markdown]
# ## The real datasets
#
# Nothing here downloads data (links die; licences differ). Get the raw folders from the
# datasets' authors, then point `data_prep` at them — for example:
#
# ```bash
# python -m data_prep mars      --src /data/raw/MARS      --out datasets/mars      # bbox_train/, bbox_test/, info/
# python -m data_prep ilidsvid  --src /data/raw/iLIDS-VID --out datasets/ilidsvid  # i-LIDS-VID/sequences/cam1|cam2
# python -m data_prep prid2011  --src /data/raw/PRID2011  --out datasets/prid2011  # multi_shot/cam_a|cam_b
# reidkit report --profile paper --dataset datasets/mars
# ```
#
# Frames are not copied: the manifest stores paths relative to `--out`. Frame order is the
# frame number parsed from the file name, never a directory listing's order (several toolkits
# feed iLIDS-VID and PRID2011 frames to their RNNs shuffled). `data_prep/README.md` describes
# every layout.

# %% [markdown]
# ## The manifest files
#
# Plain text a person can open. The first rows of `tracklets.csv` (frame lists shortened):

# %%
with open(dataset_dir / "tracklets.csv", encoding="utf-8") as f:
    head = [next(f).rstrip("\n") for _ in range(4)]
print("\n".join(line if len(line) < 160 else line[:157] + "..." for line in head))
split = manifest.split(0)
print(f"\nsplits.json: {len(manifest.splits)} split(s); split 0: train {len(split.train)}, "
      f"query {len(split.query)}, gallery {len(split.gallery)} tracklets")
print("meta.json keys:", ", ".join(manifest.meta))

# %% [markdown]
# ## Table 1
#
# The paper's Table 1 lists identities, tracklets, boxes (frames), distractors, cameras,
# resolution, how boxes were found (by hand for iLIDS-VID and PRID2011, by a detector for MARS),
# and the evaluation. `reidkit.stats.table1` computes the same
# rows from any manifest. Below, the paper's three columns as it prints them (rounded there,
# e.g. MARS's "21K" tracklets; its text gives 20,715 with 3,248 distractors), and last the
# column computed from this run's dataset.

# %%
table = stats.table1(manifest)
display(Markdown(stats.format_table1([*stats.PAPER_TABLE1, table])))

# %% [markdown]
# ## Tracklet lengths
#
# The length matters twice: training samples a clip of $T$ frames at random inside a
# tracklet (the paper sets $T = 6$; this run's $T$ is printed below), and testing walks
# through *all* frames in chunks of $T$ and averages the chunk features, so a long tracklet
# costs more at test time but is never pushed through the network at once.

# %%
dist = stats.length_distribution(manifest)
fig = viz.length_histogram({"train": manifest.lengths[manifest.positions(split.train)],
                            "test": manifest.lengths[manifest.positions(split.query + split.gallery)]},
                           title=f"{manifest.name}: tracklet lengths")
display(fig)
p = dist["percentiles"]
T = config.model.seq_len
short = int(np.sum(manifest.lengths < T))
display(Markdown(
    f"The median tracklet has {dist['median']:.0f} frames (middle half {p['25']:.0f}–{p['75']:.0f}, "
    f"95th percentile {p['95']:.0f}), the longest {dist['max']} ({dist['max'] / dist['median']:.1f}× the median), "
    f"the shortest {dist['min']}. This run's clips have $T$ = {T} frames; "
    + (f"{short} tracklets ({short / len(manifest):.0%}) are shorter, and their clips repeat frames."
       if short else "no tracklet is shorter.")))

# %% [markdown]
# ## Sample frames (Fig. 8 style)
#
# One row per identity, the middle frame of each of its tracklets (up to eight), labelled
# with the tracklet's camera: what re-identification has to see through is how much the same
# person changes between cameras.

# %% tags=["headline"]
rng = np.random.default_rng(seed)
real = [p for p in range(len(manifest)) if manifest.pids[p] >= 1]
pids = rng.choice(np.unique(manifest.pids[real]), size=min(4, len(np.unique(manifest.pids[real]))), replace=False)
rows, labels = [], []
for pid in pids:
    positions = [p for p in real if manifest.pids[p] == pid][:8]
    rows.append([np.asarray(Image.open(manifest.frame_paths(p)[manifest.lengths[p] // 2]).convert("RGB"))
                 for p in positions])
    labels.append(f"pid {pid}\ncams " + " ".join(str(manifest.camids[p]) for p in positions))
viz.sample_grid(rows, labels, title="sample frames: one row per identity, one column per tracklet")

# %% [markdown]
# On the synthetic benchmark each camera has its own scene, viewpoint and colour cast, so the
# same clothing looks different in another camera (compare the columns of a row that have
# different camera ids), as it does on real data.

# %% [markdown]
# ## Visibility and occlusion: the ground truth behind the attention lesson
#
# Each synthetic frame records `visibility` (the fraction of the person's pixels that are
# visible) and an `occlusion` label. The temporal attention model (notebook 4) should give
# such frames less weight — here we can check it, on real data one cannot.

# %%
vis_frac = {}
if manifest.has_visibility:
    occluded = [p for p in real if manifest.tracklets[p].visibility is not None
                and manifest.tracklets[p].visibility.min() < 0.5]
    for p in occluded[:2]:
        t = manifest.tracklets[p]
        idx = np.linspace(0, t.num_frames - 1, min(8, t.num_frames)).round().astype(int)
        frames = np.stack([np.asarray(Image.open(manifest.root / t.frames[i]).convert("RGB")) for i in idx])
        labels_t = t.extras.get("occlusion")
        title = f"tracklet {t.tracklet_id} (pid {t.pid}, cam {t.camid})"
        if labels_t:
            title += ": " + ", ".join(sorted({labels_t[i] for i in idx} - {"none"}))
        display(viz.frame_strip(frames, visibility=t.visibility[idx], title=title))
    all_vis = np.concatenate([manifest.tracklets[p].visibility for p in real
                              if manifest.tracklets[p].visibility is not None])
    vis_frac = {"frames_below_half_visible": float(np.mean(all_vis < 0.5)),
                "tracklets_with_occlusion": len(occluded) / max(1, len(real))}
    print(f"{vis_frac['frames_below_half_visible']:.1%} of the identities' frames are less than half visible; "
          f"{vis_frac['tracklets_with_occlusion']:.0%} of their tracklets hold at least one such frame")
else:
    print("this dataset has no per-frame visibility (real datasets do not)")

# %% [markdown]
# The dots under each strip are the ground-truth visibility of those frames, and the title
# names the kinds of degradation among them: a dip is a frame where something passes in front
# of the person, the frame is blurred, or the crop cuts the person off.

# %% [markdown]
# ## The frame cache
#
# Training reads every frame many times (once per epoch that samples its tracklet), and
# decoding a JPEG and resizing it costs CPU time on every read. So every frame is decoded
# **once**, resized to the model's input size, and kept as one uint8 array `(frames, H, W, 3)`
# on disk (opened as a memory map; on a GPU it can live in device memory). A training step
# only gathers rows of it. The cache is keyed by a fingerprint of the manifest and the frame
# files, and rebuilt only when they change. The cell below times both ways of getting the
# same frames on this machine.

# %%
t0 = time.perf_counter()
cache = FrameCache.build(manifest, H, W, progress=False)
timings["cache_s"] = time.perf_counter() - t0
print(f"frame cache: {len(cache):,} frames of {H}×{W}, {cache.nbytes / 2**20:.1f} MiB, "
      f"{'built' if cache.built else 'reused'} in {timings['cache_s']:.1f}s; tracklet 0 = rows "
      f"{cache.offsets[0]}..{cache.offsets[0] + cache.lengths[0] - 1}")
sample = [(p, i) for p in range(min(20, len(manifest))) for i in range(min(5, int(manifest.lengths[p])))]
t0 = time.perf_counter()
for p, i in sample:
    decode_frame(manifest.root / manifest.tracklets[p].frames[i], H, W)
timings["decode_ms"] = 1000 * (time.perf_counter() - t0) / len(sample)
t0 = time.perf_counter()
for p, i in sample:
    np.array(cache.clip(p, [i]))  # a copy, as a training batch makes
timings["cache_read_ms"] = 1000 * (time.perf_counter() - t0) / len(sample)
display(Markdown(f"Measured here on the same {len(sample)} frames, one core: decoding and resizing takes "
                 f"**{timings['decode_ms']:.2f} ms** per frame, reading it from the cache "
                 f"**{timings['cache_read_ms']:.4f} ms** "
                 f"({timings['decode_ms'] / max(timings['cache_read_ms'], 1e-9):.0f}× faster)."))
viz.sample_grid([list(cache.clip(real[0], np.arange(min(8, cache.lengths[real[0]]))))],
                [f"{H}×{W}"], title="the first tracklet as the model sees it (from the cache)")

# %% [markdown]
# The cached frames are the source frames resized to the model's input size; the network
# never sees anything else.

# %%
written = write_metrics(metrics_path, {
    "reproduces": "Table 1 (the datasets' statistics) and Fig. 8 (sample frames), computed from this run's "
                  "manifest beside the paper's columns",
    "key": {"identities": table["identities"], "tracklets": table["tracklets"], "frames": table["boxes"],
            "median_length": dist["median"]},
    "table1": table, "length_distribution": dist, "visibility": vis_frac,
    "cache": {"height": H, "width": W, "frames": len(cache), "megabytes": cache.nbytes / 2**20,
              "built": cache.built},
    "timings": timings, "dataset_dir": str(dataset_dir),
})
print(f"this lesson's numbers: metrics/{written.name}")
