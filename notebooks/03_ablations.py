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
# over the bare difference, (3) joint feature and metric learning is best.
#
# **The paper's protocol.** Every variant starts from the same pretrained CNN and is fine-tuned
# with the same configuration, data and budget. Here that CNN is the one lesson 2 pretrained on
# a population of other people (the kit's stand-in for ImageNet), and each variant is fine-tuned
# once per seed in `seeds`. Two floors frame the table: the architecture with **random weights**
# (what no training at all gives) and the **pretrained CNN alone**, not fine-tuned (what the
# starting point already gives).
#
# **When is a difference real?** A seed decides the head's initial weights, the batches and the
# mined pairs, and on a test set of a hundred-odd queries a few queries more or less move rank-1 by
# points. So every comparison below comes with a 95 % interval for the difference of mean rank-1,
# from a bootstrap that resamples both sources of noise at once: the seeds of each variant, and
# the test queries (the same queries for both variants). The one rule of the whole report: a claim
# **holds** when the interval lies wholly on its side of zero, is **reversed** when it lies wholly on
# the other side, and is **inconclusive** otherwise.

# %% tags=["parameters"]
profile = "smoke"
seed = 0
device = "auto"
config_file = "configs/smoke.yaml"
overrides = []                    # config overrides for every variant (lesson 2 fine-tuned with the same)
seeds = [0, 1]                    # every variant is fine-tuned once per seed
baselines = ["cnn", "all"]        # variants also scored untrained, at their random initialisation
pretrained = ""                   # lesson 2's pretrained frame CNN (cnn.pt); "" trains from random weights
from_scratch = False              # also run the whole table from random weights, beside the paper's protocol
training_metrics = ""             # lesson 2's metrics file
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
from reidkit.ablate import PAPER_RANK1, PRETRAINED_FLOOR, format_cell, run_ablation, summarize
from reidkit.config import Config
from reidkit.lessons import REPO_ROOT, write_metrics

ROOT = REPO_ROOT  # paths below are relative to the repository root
dataset_dir, ablation_dir = ROOT / dataset_dir, ROOT / ablation_dir
pretrained = str(ROOT / pretrained) if pretrained else ""
config = Config.from_yaml(ROOT / config_file, [
    f"data.dataset={dataset_dir}", f"train.seed={seed}", f"train.device={device}", "train.progress=false",
    *([f"model.pretrained={pretrained}"] if pretrained else []), *overrides])
t, m = config.train, config.model
print(f"each variant, each of the seeds {seeds}: {t.epochs} epoch(s) × {t.steps_per_epoch or 'all'} steps of "
      f"P={t.P} × K={t.K} clips, {m.cnn} at {m.height}×{m.width}; start: "
      + (f"the pretrained CNN {Path(pretrained).name}" if pretrained else "random weights"))

# %% [markdown]
# ## Fine-tuning and evaluating the six variants
#
# `reidkit.ablate.run_ablation` fine-tunes each variant once per seed in its own folder under
# `ablation_dir`, evaluates it with the config's protocol on the test people, and writes
# `ablation.csv` (one row per run), `summary.csv`, `ablation.md`, `cmc.json`, the per-query
# outcomes (`hits.json`), the learning curves and the verdicts (`conclusions.json`). A run that a
# lesson already trained with the same settings is kept, not trained again: lesson 2's `all`
# model is this table's ALL row for the first seed.

# %%
t0 = time.perf_counter()
rows = run_ablation(config, ablation_dir, baselines=baselines, seeds=seeds, progress=False,
                    feature_cache_dir=ablation_dir.parent / "features")  # lesson 2's ALL and floor: not again
ablation_s = time.perf_counter() - t0
display(Markdown((ablation_dir / "ablation.md").read_text()))
print(f"{ablation_s:.0f}s in total")

# %% tags=["headline"]
curves = json.loads((ablation_dir / "cmc.json").read_text())["curves"]
viz.cmc_curves(curves, title=f"CMC of the variants ({profile} profile)")

# %% [markdown]
# The CMC curves (Fig. 9) show each variant's matching rate from rank 1 to 20 (the mean over
# seeds); the untrained and pretrained-only curves mark what the starting points already achieve.

# %% [markdown]
# ## Have the variants converged? Learning curves on held-out training people
#
# A budget that stops one variant while it is still climbing and another on its plateau ranks
# budgets, not architectures. During fine-tuning every run was scored after each epoch on a
# validation split carved from the *training* identities (`data.val_ids` of them are held out of
# training; the test people are never looked at): the curves show the mean over seeds and the
# range.

# %%
learning = json.loads((ablation_dir / "learning_curves.json").read_text())
if learning:
    display(viz.learning_curves(learning, title=f"validation rank-1 while fine-tuning ({profile} profile)"))
    lines = []
    for method, c in learning.items():
        if len(c["steps"]) >= 2:
            (before, last), (m_before, m_last) = c["mean"][-2:], c["mAP_mean"][-2:]
            rising = last - before > 2 or m_last - m_before > 2
            ceiling = " (rank-1 at its ceiling: mAP still tells)" if last >= 99 else ""
            lines.append(f"- {method}: rank-1 {before:.1f} → {last:.1f}, mAP {m_before:.1f} → {m_last:.1f} over the "
                         f"last epoch{ceiling}; "
                         + ("still rising by more than 2 points: not converged at this budget" if rising
                            else "both within 2 points: near its plateau at this budget"))
    display(Markdown("\n".join(lines) or "One point per run: no slope to read."))
else:
    print("no validation scores (data.val_ids = 0 or train.eval_every = 0): no learning curves in this run")

# %% [markdown]
# ## What this run says about the paper's three conclusions
#
# The sentences are generated from the numbers above. For a conclusion against several rivals
# ("attention beats a plain RNN *and* plain averaging"; "ALL is best"), the verdict is the one
# against the strongest rival in this run, and every single comparison is listed.

# %%
summary = {r["method"]: r for r in summarize(rows)}
r1 = {k: v["rank1_mean"] for k, v in summary.items()}
verdicts = json.loads((ablation_dir / "conclusions.json").read_text())
lines = []
for i, c in enumerate(verdicts, 1):
    paper = PAPER_RANK1[summary[c["a"]]["variant"]] - PAPER_RANK1[summary[c["b"]]["variant"]]
    lines.append(f"{i}. **{c['claim']}**: {c['a']} − {c['b']} = {c['text']} (paper on MARS: {paper:+.1f}).")
    for x in c["comparisons"]:
        if x["b"] != c["b"]:
            lines.append(f"    - against {x['b']}: {x['text']}")
floor = max((v for k, v in r1.items() if k.startswith("untrained")), default=float("nan"))
trained = [k for k in r1 if summary[k]["trained"]]
if floor == floor:  # not NaN: at least one untrained baseline was scored
    lines.append(f"\nEvery run against the untrained floor (rank-1 {floor:.1f}): "
                 f"{sum(summary[k]['rank1_min'] >= floor + 20 for k in trained)} of {len(trained)} variants are "
                 f"at least 20 points above it with every seed; the weakest run is "
                 f"{min(r['rank1'] for r in rows if r['trained']):.1f}.")
if PRETRAINED_FLOOR in r1:
    above = [k for k in trained if summary[k]["rank1_mean"] > r1[PRETRAINED_FLOOR]]
    lines.append(f"The pretrained CNN alone scores {r1[PRETRAINED_FLOOR]:.1f}; {len(above)} of {len(trained)} "
                 f"fine-tuned variants beat it on average ({', '.join(above) or 'none'}).")
display(Markdown("\n".join(lines) or "Not every variant was trained: no conclusion to judge."))

# %% [markdown]
# ## Feature sizes
#
# A fair comparison of the feature branches needs features of one size: the CNN row ranks by the
# fc7 average, the CNN+RNN and CNN+TAM rows by the LSTM's output. The cell below prints both sizes
# for this configuration.

# %%
sizes = {"CNN (fc7)": m.fc_dim, "CNN+RNN / CNN+TAM (LSTM output)": m.rnn_hidden}
print(", ".join(f"{k}: {v}-d" for k, v in sizes.items())
      + (" — equal, so no row is favoured by a wider feature" if len(set(sizes.values())) == 1
         else " — NOT equal: a difference between these rows may come from the feature size"))

# %% [markdown]
# ## The same table from random weights
#
# The `full` profile also trains every variant from random weights with the same budget, so the
# two protocols stand side by side and a reader can see which of the paper's conclusions depend on
# the starting point (later work found plain temporal pooling competitive with recurrent models
# once the frame CNN is strong).

# %%
scratch = None
if from_scratch and pretrained:
    scratch_config = Config.from_dict(config.to_dict(), ["model.pretrained=null"])
    scratch_dir = ablation_dir.parent / f"{ablation_dir.name}_from_scratch"
    scratch_rows = run_ablation(scratch_config, scratch_dir, baselines=(), seeds=seeds, progress=False)
    scratch_summary = {r["method"]: r for r in summarize(scratch_rows)}
    scratch = json.loads((scratch_dir / "conclusions.json").read_text())
    table = ["| Method | from the pretrained CNN | from random weights |", "|---|---|---|"]
    table += [f"| {k} | {format_cell(summary[k], 'rank1')} | {format_cell(scratch_summary[k], 'rank1')} |"
              for k in trained if k in scratch_summary]
    table += ["", "| Conclusion | from the pretrained CNN | from random weights |", "|---|---|---|"]
    table += [f"| {a['claim']} | {a['verdict']} ({a['diff']:+.1f}) | {b['verdict']} ({b['diff']:+.1f}) |"
              for a, b in zip(verdicts, scratch) if a["name"] == b["name"]]
    display(Markdown("\n".join(table)))
else:
    display(Markdown("Not run in this profile (`from_scratch` is off): `reidkit report --profile full` runs it."))

# %% [markdown]
# ## Lesson 2's model in this table
#
# Lessons 4–6 study the `all` model that lesson 2 fine-tuned. The cell below checks whether it is
# this table's ALL run for the first seed (same folder, same settings).

# %%
lesson2 = Path(training_metrics) if training_metrics else None
k2 = None
if lesson2 is not None and lesson2.is_file():
    m2 = json.loads(lesson2.read_text())
    k2 = m2["key"]
    shared = Path(m2["checkpoint"]).parent == ablation_dir / "all" / f"seed_{seeds[0]}"
    all_row = next((r for r in rows if r["method"] == "ALL" and r["seed"] == seeds[0]), None)
    lesson2_line = (f"Lesson 2's `all` model ({k2['steps']} steps, rank-1 {k2['rank1']:.1f}) "
                    + (f"is this table's ALL run for seed {seeds[0]} (rank-1 here {all_row['rank1']:.1f})."
                       if shared and all_row else "was trained in another folder: it is not a row of this table."))
else:
    lesson2_line = "Lesson 2's metrics were not found (run lesson 2 first, as `reidkit report` does)."
display(Markdown(lesson2_line))

# %%
_ = write_metrics(metrics_path, {
    "key": {"pretrained_from": pretrained or None, "seeds": len(seeds), "rank1_ALL": r1.get("ALL"),
            "rank1_CNN": r1.get("CNN"), "untrained_floor": floor, "pretrained_floor": r1.get(PRETRAINED_FLOOR),
            "conclusions": [{"name": c["name"], "claim": c["claim"], "a": c["a"], "b": c["b"], "diff": c["diff"],
                             "interval": c["interval"], "verdict": c["verdict"]} for c in verdicts],
            "ablation_s": round(ablation_s, 1)},
    "reproduces": "Table 2 and Fig. 9: six variants fine-tuned from one pretrained CNN, "
                  f"{len(seeds)} seeds each, and the paper's three conclusions",
    "claims": [{"claim": c["claim"], "verdict": c["verdict"], "interval": c["interval"], "diff": c["diff"]}
               for c in verdicts],
    "rows": rows, "summary": list(summary.values()), "cmc": curves, "learning_curves": learning,
    "conclusions": verdicts, "from_scratch_conclusions": scratch, "feature_sizes": sizes, "lesson2": k2,
    "ablation_dir": str(ablation_dir),
})
