# %% [markdown]
# # 6. Retrieval, the two MARS conventions, and a reproducibility report
#
# Re-identification is ranking. For each query tracklet the gallery is sorted by the model's
# score (for `all`: $S$ of Eq. 2 on the top-$K$ of the feature ranking), and two numbers
# summarise the rankings. The **CMC** at rank $k$ is the fraction of queries whose first
# correct match is within the top $k$:
#
# $$\mathrm{CMC}(k) = \frac{1}{|Q|} \sum_{q \in Q} \mathbb{1}\big[\mathrm{rank}_q(\text{first correct}) \le k\big].$$
#
# **mAP** also counts the other correct matches (MARS has several per query): with $n_q$
# correct gallery entries found at ranks $r_1 < r_2 < \dots$,
#
# $$\mathrm{AP}_q = \frac{1}{n_q}\sum_{k=1}^{n_q} \frac{k}{r_k}, \qquad \mathrm{mAP} = \frac{1}{|Q|}\sum_q \mathrm{AP}_q .$$
#
# **Two conventions for MARS** give different numbers from the same ranking, and papers rarely
# say which one they used:
#
# | | common (torchreid, most papers since 2017) | official MATLAB code (MARS-evaluation) |
# |---|---|---|
# | gallery | test tracklets *without* the queries | *all* test tracklets, queries included |
# | ignored | same pid and same camera, junk (pid −1) | the same |
# | AP | mean of the precision at each hit, $k/r_k$ | trapezoidal rule, $\tfrac{1}{2}\big(\tfrac{k-1}{r_k-1} + \tfrac{k}{r_k}\big)$ per hit |
# | queries without a correct match | skipped (and counted) | kept, scoring 0 |
#
# With the queries in the gallery, a query's *other* query tracklets (same person, other
# cameras) become extra correct matches; the trapezoid never exceeds the step. On MARS the two
# differ by about a point. This kit reports the common one by default and says so everywhere.

# %% tags=["parameters"]
profile = "smoke"
seed = 0
device = "auto"
dataset_dir = "reports/notebooks/work/dataset"
work_dir = "reports/notebooks/work"
run_dir = "reports/notebooks/work/runs/all"
report_dir = "reports/notebooks"
metrics_path = "reports/notebooks/metrics/06_retrieval_report.json"
interactive = False

# %%
# %matplotlib inline
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
from IPython.display import Markdown, display

from reidkit import viz
from reidkit.data import even_frame_indices
from reidkit.evaluate import EvalResult, evaluate
from reidkit.lessons import REPO_ROOT, environment_info, git_info, key_metrics, open_run, write_metrics

ROOT = REPO_ROOT  # paths below are relative to the repository root
dataset_dir, work_dir, run_dir, report_dir = (ROOT / p for p in (dataset_dir, work_dir, run_dir, report_dir))
model, config, manifest, cache, dev = open_run(run_dir, dataset_dir, device)
T = config.model.seq_len

# %% [markdown]
# ## Both conventions, one model
#
# The test features are extracted once (and cached under `work/features`, shared with
# notebook 2); only the gallery and the AP rule change between the two evaluations.

# %%
conventions = ["common", "official"] if manifest.protocol == "mars" else ["common"]
results, seconds = {}, {}
for convention in conventions:
    t0 = time.perf_counter()
    results[convention] = evaluate(model, manifest, cache, dataclasses.replace(config.eval, convention=convention),
                                   feature_cache_dir=work_dir / "features", device=dev, progress=False)
    seconds[convention] = time.perf_counter() - t0
    print(results[convention].summary())
display(Markdown("\n".join([EvalResult.table_header()] +
                           [r.table_row(f"{model.variant}, {c} ({r.num_gallery} gallery)") for c, r in results.items()])))

# %%
viz.cmc_curves({f"{c} convention": r.cmc for c, r in results.items()}, title=f"CMC of {model.variant} on {manifest.name}")

# %% [markdown]
# The two curves come from the same features and scores; the gap between them is the
# convention alone, which is why a number without its convention cannot be compared.

# %% [markdown]
# ## Retrieval examples (Fig. 10)
#
# Each row: a query (a few of its frames), then its top-ranked gallery tracklets, one frame
# each, framed green for the same person, red for a wrong one and blue for a distractor.
# Entries that the protocol ignores (same person in the same camera, junk) are left out, so
# the columns are the ranks CMC counts. We show queries found at rank 1 and queries that failed.

# %%
pq = results["common"].per_query
top = 8
hits = np.flatnonzero(pq.first_hit == 1)
misses = np.flatnonzero(pq.first_hit != 1)
chosen = list(hits[:3]) + list(misses[:2])
queries, galleries, flags, labels = [], [], [], []
for i in chosen:
    p = manifest.index(int(pq.query_ids[i]))
    queries.append(cache.clip(p, even_frame_indices(manifest, p, T)))
    ids = [int(g) for g in pq.gallery_ids[i, :top] if g >= 0]
    galleries.append([cache.clip(manifest.index(g), [int(manifest.lengths[manifest.index(g)]) // 2]) for g in ids])
    flags.append(list(pq.flags[i, :len(ids)]))
    labels.append(f"query {int(pq.query_ids[i])} (pid {int(pq.query_pids[i])}), first hit: "
                  f"{int(pq.first_hit[i]) or 'none'}")
if chosen:
    display(viz.retrieval_rows(queries, galleries, flags, query_labels=labels,
                               title="retrieval (green = same person, red = wrong, blue = distractor)"))

# %% [markdown]
# The failures are the instructive rows: look for look-alike clothing (the synthetic benchmark
# draws some identities as near copies of others) and for queries whose frames are mostly
# occluded.

# %%
if interactive:
    from reidkit.widgets import query_explorer

    display(query_explorer(results["common"], manifest, cache))

# %% [markdown]
# ## Reproducibility report
#
# Everything needed to rerun this report and to tell whether a rerun matches: the
# environment, the code version, the seeds and the configuration, every notebook's numbers and
# how long each took. It is also written to `reproducibility.json` beside `index.html`.

# %%
env, git = environment_info(), git_info(ROOT)
metrics = {p.stem: json.loads(p.read_text()) for p in sorted((report_dir / "metrics").glob("*.json"))}
run_log = json.loads((report_dir / "run.json").read_text()) if (report_dir / "run.json").exists() else {}
timings = {n["name"]: n["duration_s"] for n in run_log.get("notebooks", []) if n.get("duration_s") is not None}
lines = ["| | |", "|---|---|",
         f"| profile | {profile} |",
         f"| code | commit `{git['commit'] or 'unknown (no git)'}`" + (" with uncommitted changes" if git["dirty"] else "") + " |",
         f"| python / torch | {env['python']} / {env['packages']['torch']} ({'CUDA ' + env['cuda'] if env.get('cuda') else 'CPU'}, {env.get('torch_threads')} threads) |",
         f"| platform | {env['platform']}, {env['cpu_count']} CPUs {', '.join(env.get('gpus', []))} |",
         f"| dataset | {manifest.name} ({dataset_dir}) |",
         f"| model | {config.model.variant}: {config.model.cnn} ×{config.model.width_mult}, {config.model.height}×{config.model.width}, T = {T} |",
         f"| seeds | report {seed}, training {config.train.seed} |",
         f"| evaluation | {', '.join(conventions)} convention(s), M re-scores the top {config.eval.rerank_top_k} |"]
display(Markdown("\n".join(lines)))
rows = ["| notebook | time (s) | key metrics |", "|---|---|---|"]
for name, m in metrics.items():
    km = ", ".join(f"{k} = {v:.4g}" if isinstance(v, float) else f"{k} = {v}" for k, v in key_metrics(m).items())
    rows.append(f"| {name} | {timings.get(name, '')} | {km} |")
display(Markdown("\n".join(rows)))
print("packages:", ", ".join(f"{k} {v}" for k, v in env["packages"].items() if v))

# %%
summary = {n: {k: getattr(r, k) for k in ("rank1", "rank5", "rank10", "rank20", "mAP", "num_queries",
                                          "num_skipped", "num_gallery", "ranking", "convention")}
           for n, r in results.items()}
reproducibility = {"profile": profile, "seed": seed, "environment": env, "git": git, "config": config.to_dict(),
                   "dataset": {"name": manifest.name, "path": str(dataset_dir), "meta": manifest.meta},
                   "checkpoint": str(run_dir / "last.pt"), "evaluation": summary,
                   "notebook_metrics": {k: key_metrics(v) for k, v in metrics.items()},
                   "notebook_seconds": timings}
write_metrics(report_dir / "reproducibility.json", reproducibility)
key = {"rank1": summary["common"]["rank1"], "mAP": summary["common"]["mAP"]}
if "official" in summary:
    key.update(rank1_official=summary["official"]["rank1"], mAP_official=summary["official"]["mAP"])
write_metrics(metrics_path, {"key": key, "evaluation": summary,
                             "cmc": {n: r.cmc for n, r in results.items()}, "seconds": seconds,
                             "git_commit": git["commit"]})
