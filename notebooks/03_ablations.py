# %% [markdown]
# # 3. Ablations: what does each part buy? (Table 2, Fig. 9)
#
# The paper builds the full model up in steps and trains each step on MARS (Table 2):
#
# | variant | feature branch $\mathcal{F}(x)$ | metric branch $M$ | ranks by | paper rank-1 |
# |---|---|---|---|---|
# | CNN | mean of the frames' fc7 | — | $F$ | 58.5 |
# | CNN+RNN | LSTM over the frames, mean of its outputs | — | $F$ | 60.3 |
# | CNN+TAM | temporal attention model (Eq. 3) | — | $F$ | 62.7 |
# | CNN+DIFF | — | 1×1 conv + FC on the pool5 difference | $M$ | 63.0 |
# | CNN+SRM | — | spatial recurrent model | $M$ | 64.2 |
# | ALL | TAM | SRM | $S$ (Eq. 2) | 70.6 |
#
# with $F$ the Euclidean distance of L2-normalised features and
# $S(x^i,x^j) = \frac{1}{1 + F(\mathcal{F}(x^i), \mathcal{F}(x^j))} + \lambda M(x^i,x^j)$, $\lambda = 1$.
# The paper concludes (1) attention helps over plain pooling and a plain RNN, (2) the SRM helps
# over the bare difference, (3) joint feature and metric learning is best. Here the six
# variants are trained with the same configuration, data and budget, each once per seed in
# `seeds`, and evaluated the same way; the same architectures **untrained** (random weights,
# the `baselines` parameter) give the floor that training must beat.
#
# Why several seeds? The seed decides the initial weights, the batches and the mined pairs.
# On a small dataset and a short budget two seeds of the same variant can end several rank-1
# points apart, so a single run cannot tell a real difference between two variants from luck.
# With several seeds the table shows each variant's range, and a difference counts only where
# two ranges do not overlap.

# %% tags=["parameters"]
profile = "smoke"
seed = 0
device = "auto"
config_file = "configs/smoke.yaml"
overrides = []                    # extra config overrides for every variant, as on the command line
seeds = [0, 1]                    # every variant is trained once per seed
baselines = ["cnn", "all"]        # variants also scored untrained, at their random initialisation
training_metrics = ""             # lesson 2's metrics file: its `all` model is compared below
dataset_dir = "reports/notebooks/work/dataset"
ablation_dir = "reports/notebooks/work/ablation"
metrics_path = "reports/notebooks/metrics/03_ablations.json"
interactive = False

# %%
# %matplotlib inline
import json
import time
from pathlib import Path

from IPython.display import Markdown, display

from reidkit import viz
from reidkit.ablate import PAPER_RANK1, format_cell, run_ablation, seed_spread, separated, summarize
from reidkit.config import Config
from reidkit.lessons import REPO_ROOT, write_metrics

ROOT = REPO_ROOT  # paths below are relative to the repository root
dataset_dir, ablation_dir = ROOT / dataset_dir, ROOT / ablation_dir
config = Config.from_yaml(ROOT / config_file, [
    f"data.dataset={dataset_dir}", f"train.seed={seed}", f"train.device={device}", "train.progress=false",
    *overrides])
t = config.train
print(f"each variant, each of the seeds {seeds}: {t.epochs} epoch(s) × {t.steps_per_epoch or 'all'} steps of "
      f"P={t.P} × K={t.K} clips, {config.model.cnn} at {config.model.height}×{config.model.width}")

# %% [markdown]
# ## Training and evaluating the six variants
#
# `reidkit.ablate.run_ablation` trains each variant once per seed in its own folder under
# `ablation_dir`, evaluates it with the config's protocol, and writes `ablation.csv` (one row
# per run), `summary.csv` (one row per variant over its seeds), `ablation.md` and `cmc.json`.

# %%
t0 = time.perf_counter()
rows = run_ablation(config, ablation_dir, baselines=baselines, seeds=seeds, progress=False)
ablation_s = time.perf_counter() - t0
display(Markdown((ablation_dir / "ablation.md").read_text()))
print(f"{ablation_s:.0f}s in total")

# %% tags=["headline"]
curves = json.loads((ablation_dir / "cmc.json").read_text())["curves"]
viz.cmc_curves(curves, title=f"CMC of the variants ({profile} profile)")

# %% [markdown]
# The CMC curves (Fig. 9) show each variant's matching rate from rank 1 to 20 (the mean over
# seeds); the untrained curves mark what random weights already achieve with this
# architecture and protocol.

# %% [markdown]
# ## What this run says about the paper's three conclusions
#
# The sentences below are generated from the numbers above, not written in advance. Each
# compares the mean rank-1 over seeds and calls the difference real only when the two
# variants' seed ranges (min–max) do not overlap and the means differ by more than the widest
# seed range of any variant (with two seeds, one variant's own range underestimates the noise).

# %%
summary = {r["method"]: r for r in summarize(rows)}
r1 = {k: v["rank1_mean"] for k, v in summary.items()}
_variant = {k: v["variant"] for k, v in summary.items()}
spreads = {k: v["rank1_max"] - v["rank1_min"] for k, v in summary.items() if v["trained"] and len(v["seeds"]) > 1}
noise = seed_spread(list(summary.values()))


def compare(a, b):
    d = r1[a] - r1[b]
    word = "above" if d > 0 else "below" if d < 0 else "level with"
    verdict = (f"a real difference (beyond the widest seed range, {noise:.1f})" if separated(summary[a], summary[b], spread=noise)
               else "within the seed spread" if len(summary[a]["seeds"]) > 1 else "one seed: spread unknown")
    paper = PAPER_RANK1[_variant[a]] - PAPER_RANK1[_variant[b]]
    return f"{a} is {abs(d):.1f} rank-1 points {word} {b}, {verdict} (paper: {paper:+.1f})"


floor = max((v for k, v in r1.items() if k.startswith("untrained")), default=float("nan"))
trained = [k for k in r1 if not k.startswith("untrained")]
best = max(trained, key=r1.get)
lines = [
    f"1. Attention: {compare('CNN+TAM', 'CNN+RNN')}; {compare('CNN+TAM', 'CNN')}.",
    f"2. Spatial recurrence: {compare('CNN+SRM', 'CNN+DIFF')}.",
    f"3. Joint learning: the highest mean here is **{best}** (rank-1 {r1[best]:.1f}, mAP "
    f"{summary[best]['mAP_mean']:.1f}); {compare('ALL', 'CNN+TAM')}; {compare('ALL', 'CNN+SRM')}.",
]
if spreads:
    widest = max(spreads, key=spreads.get)
    lines.append(f"4. Seed spread: across {len(seeds)} seeds one variant's rank-1 moved by up to "
                 f"{spreads[widest]:.1f} points ({widest}); the median range is "
                 f"{sorted(spreads.values())[len(spreads) // 2]:.1f} points.")
if floor == floor:  # not NaN: at least one untrained baseline was scored
    lines.append(f"{len(lines) + 1}. Training: {sum(summary[k]['rank1_min'] > floor for k in trained)} of "
                 f"{len(trained)} trained variants beat the best untrained model (rank-1 {floor:.1f}) with every seed, "
                 f"after {max(r['steps'] for r in rows) * t.P * t.K} training clips per run.")
display(Markdown("\n".join(lines)))

# %% [markdown]
# ## Lesson 2's model is not one of these rows
#
# Lessons 4–6 study the `all` model that lesson 2 trained. It gets its own, longer budget
# (the attention of lesson 4 needs it), so it is not comparable to the equal-budget runs of
# this table; the cell below puts its lesson-2 evaluation next to the ALL row.

# %%
lesson2 = Path(training_metrics) if training_metrics else None
if lesson2 is not None and lesson2.is_file():
    k2 = json.loads(lesson2.read_text())["key"]
    lesson2_line = (f"Lesson 2's `all` model: {k2['steps']} training steps, rank-1 {k2['rank1']:.1f}, mAP "
                    f"{k2['mAP']:.1f}; this table's ALL: {max(r['steps'] for r in rows if r['method'] == 'ALL')} steps "
                    f"per seed, rank-1 {format_cell(summary['ALL'], 'rank1')}.")
else:
    k2, lesson2_line = None, "Lesson 2's metrics were not found (run lesson 2 first, as `reidkit report` does)."
display(Markdown(lesson2_line))

# %% [markdown]
# With the short budgets of the `smoke` and `default` profiles the variants are far from
# convergence; `reidkit ablate --config configs/cpu.yaml --seeds 0,1,2` with more epochs, or
# the `paper` profile on MARS, is where the comparison becomes meaningful.

# %%
write_metrics(metrics_path, {
    "key": {"best": best, "rank1_ALL": r1.get("ALL"), "rank1_CNN": r1.get("CNN"), "untrained_floor": floor,
            "seeds": len(seeds), "ablation_s": round(ablation_s, 1)},
    "rows": rows, "summary": list(summary.values()), "cmc": curves, "conclusions": lines,
    "lesson2": k2, "ablation_dir": str(ablation_dir), "seed_spread": spreads,
})
