# %% [markdown]
# # 6. Retrieval, the two MARS conventions, and a reproducibility report
#
# Re-identification is ranking. For each query tracklet the gallery is sorted by the model's
# score (for `all`: $S$ of Eq. 2, on every query × gallery pair or on the top-$K$ of the feature
# ranking, as the run's `eval.exact` and `eval.rerank_top_k` say; the evaluation below prints
# which), and two numbers summarise the rankings. The **CMC** at rank $k$ is the fraction of
# queries whose first correct match is within the top $k$:
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
# | AP | mean of the precision at each hit, $k/r_k$ | trapezoidal rule, $\tfrac{1}{2}\big(p_{k-1} + \tfrac{k}{r_k}\big)$ per hit, with $p_{k-1} = \tfrac{k-1}{r_k-1}$ (the precision one rank earlier) and $p_{k-1} = 1$ when $r_k = 1$ |
# | queries without a correct match | skipped (and counted) | kept, scoring 0 |
#
# With the queries in the gallery, a query's *other* query tracklets (same person, other
# cameras) become extra correct matches; the trapezoid never exceeds the step. How far apart
# the two conventions land depends on how large a share of each query's correct matches those
# extra query tracklets are. On MARS (1,980 queries against a gallery of several thousand test
# tracklets, many per person) they are a small share; on a small split with few tracklets per
# person they can be most of them, and the gap between the conventions grows accordingly: the
# cell after the evaluation counts them for this dataset. This kit reports the common
# convention by default and says so everywhere.

# %% tags=["parameters"]
profile = "smoke"
seed = 0
device = "auto"
dataset_dir = "reports/notebooks/work/dataset"
work_dir = "reports/notebooks/work"
run_dir = "reports/notebooks/work/runs/all"
report_dir = "reports/notebooks"
metrics_path = "reports/notebooks/metrics/06_retrieval_report.json"
lambdas = [0.25, 1.0, 4.0]          # λ values of S (Eq. 2) in the "Eq. 2 taken apart" section (the model's λ is added)
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
from reidkit.evaluate import EvalResult, eq2_breakdown, evaluate, evaluation_positions, extract_features
from reidkit.lessons import REPO_ROOT, determinism_info, environment_info, git_info, key_metrics, open_run, write_metrics
from reidkit.significance import describe, paired_bootstrap, rank1_hits, verdict

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
# With the MARS protocol there are two curves, from the same features and scores: the gap
# between them is the convention alone, which is why a number without its convention cannot be
# compared. The cell below measures the gap on the queries both conventions count, with a
# paired bootstrap over those queries (`reidkit.significance`): the same model ranks the same
# queries twice, so only the draw of queries varies.

# %%
split0 = manifest.split(config.data.split)
q_pos, g_pos = manifest.positions(split0.query), manifest.positions(split0.gallery)


def correct_matches(gallery):
    """Per query: gallery tracklets of the same person from another camera (what CMC/mAP count)."""
    return np.array([np.sum((manifest.pids[gallery] == manifest.pids[q]) & (manifest.camids[gallery] != manifest.camids[q])
                            & (manifest.pids[gallery] > 0)) for q in q_pos])


common_n, official_n = correct_matches(g_pos), correct_matches(np.concatenate([g_pos, q_pos]))
share = 1.0 - common_n.sum() / max(official_n.sum(), 1)
convention_lines = [f"This split has {len(q_pos)} queries and {len(g_pos)} gallery tracklets. A query has on average "
                    f"{common_n.mean():.2f} correct matches in the common gallery and {official_n.mean():.2f} once the "
                    f"queries join it, so {100 * share:.0f}% of the official convention's correct matches are other "
                    f"queries."]
comparisons = []  # every same-model comparison of this lesson: paired bootstrap over queries


def compare(name, a, b, claim=None):
    """Rank-1 of scoring A minus scoring B on the same queries, with its interval and verdict."""
    interval = paired_bootstrap(a, b, seed=seed)
    comparisons.append({"comparison": name, "claim": claim, **interval.to_dict(), "verdict": verdict(interval),
                        "queries": len(a)})
    return interval


if "official" in results:
    d_r1 = results["official"].rank1 - results["common"].rank1
    d_map = results["official"].mAP - results["common"].mAP
    pc, po = results["common"].per_query, results["official"].per_query
    counted = np.isfinite(pc.ap)  # the queries the common convention counts (the official one counts all)
    gap = compare("official − common convention", (po.first_hit[counted] == 1).astype(float),
                  (pc.first_hit[counted] == 1).astype(float), "the official convention gives a higher rank-1")
    convention_lines.append(f"Official minus common, as reported: rank-1 {d_r1:+.1f}, mAP {d_map:+.1f} points. On the "
                            f"{int(counted.sum())} queries both count, for the claim that the official convention "
                            f"gives the higher rank-1: {describe(gap)}.")
display(Markdown(" ".join(convention_lines)))

# %% [markdown]
# ## Eq. 2 taken apart
#
# The `all` model has both branches, so the same trained network can rank the gallery by
# $F$ alone (the feature branch, as CNN+TAM does), by $M$ alone (the metric branch, as CNN+SRM
# does), or by $S = \frac{1}{1+F} + \lambda M$ at several weights $\lambda$ (the paper sets
# $\lambda = 1$, Sec. 3.1). Only this comparison, on one model, shows what the joint similarity
# adds over each of its parts. Each is scored exactly (every query × gallery pair) and on the
# top-$K$ of the feature ranking ($K$ = `eval.rerank_top_k`); this run's own evaluation is the
# first when `eval.exact` is set, else the second. The test features are extracted once.
#
# The differences between these rows are two scorings of **one model on the same queries**, so
# their yardstick is a paired bootstrap over the queries (`reidkit.significance`): it resamples
# the queries and keeps each query's two outcomes together. The spread over training seeds
# (lesson 3) answers another question, how much a retrained model moves.

# %%
if model.has_metric_branch and model.has_feature_branch:
    feats = extract_features(model, manifest, cache, evaluation_positions(manifest, config.data.split),
                             batch_size=config.eval.batch_size, device=dev, progress=False,
                             feature_cache_dir=work_dir / "features", with_pool5=True)
    # M's logits of every query × gallery pair are computed once and reused by every row
    lam = float(config.model.lam)  # the model's λ, the one its evaluation uses
    eq2 = eq2_breakdown(model, manifest, feats, config.eval, split=config.data.split, device=dev,
                        lambdas=sorted({float(x) for x in lambdas} | {lam}))
    display(Markdown("\n".join(["| ranking | scored | rank-1 | mAP |", "|---|---|---|---|"] + [
        f"| {e['ranking']} | {e['mode']} | {e['rank1']:.1f} | {e['mAP']:.1f} |" for e in eq2])))
    mode = "exact" if config.eval.exact else f"top-{config.eval.rerank_top_k}"  # as this run's evaluation scores
    row = {(e["ranking"], e["mode"]): e for e in eq2}
    hits = {k: rank1_hits(e["per_query"]) for k, e in row.items()}
    S = (f"S, λ = {lam:g}", mode)
    s_vs_f = compare(f"S (λ = {lam:g}, {mode}) − F only", hits[S], hits[("F only", "exact")], "S beats F (Eq. 2)")
    s_vs_m = compare(f"S (λ = {lam:g}, {mode}) − M only ({mode})", hits[S], hits[("M only", mode)], "S beats M (Eq. 2)")
    for other in sorted({float(x) for x in lambdas} - {lam}):
        compare(f"S (λ = {other:g}) − S (λ = {lam:g}), {mode}", hits[(f"S, λ = {other:g}", mode)], hits[S])
    compare(f"S (λ = {lam:g}) exact − top-{config.eval.rerank_top_k}",
            *(hits[(S[0], m)] for m in ("exact", f"top-{config.eval.rerank_top_k}")))
    display(Markdown("\n".join(
        ["| rank-1 of A − rank-1 of B, same queries | difference (points) | 95 % interval | verdict on A > B |",
         "|---|---:|---|---|"] + [f"| {c['comparison']} | {c['diff']:+.1f} | [{c['interval'][0]:+.1f}, "
                                  f"{c['interval'][1]:+.1f}] | {c['verdict']} |"
                                  for c in comparisons if c["comparison"].startswith("S")])))
    display(Markdown(
        f"Eq. 2's claim on this one model, with $S$ at its λ = {lam:g} scored as this run's evaluation scores it "
        f"({mode}), over the {len(hits[S])} queries: **S against F alone**: {describe(s_vs_f)}; **S against M "
        f"alone**: {describe(s_vs_m)}. `holds` needs the whole interval above 0, `reversed` below it; anything "
        f"else is `inconclusive`: this many queries cannot tell the two scorings apart."))
else:
    eq2 = []
    display(Markdown(f"The `{model.variant}` model has only one branch, so Eq. 2 cannot be taken apart here."))

# %% [markdown]
# ## Retrieval examples (Fig. 10)
#
# Each row: a query (a few of its frames), then its top-ranked gallery tracklets, one frame
# each, framed green for the same person, red for a wrong one and blue for a distractor.
# Entries that the protocol ignores (same person in the same camera, junk) are left out, so
# the columns are the ranks CMC counts. We show up to three queries found at rank 1 and up to
# two that failed, drawn at random (seeded) among the queries that have a correct match in the
# gallery (the others are skipped by the common convention and cannot fail).

# %% tags=["headline"]
pq = results["common"].per_query
top = 8
pick = np.random.default_rng(seed)
scored = np.isfinite(pq.ap)
hits = np.flatnonzero(scored & (pq.first_hit == 1))
misses = np.flatnonzero(scored & (pq.first_hit != 1))
chosen = sorted(pick.choice(hits, min(3, len(hits)), replace=False)) + sorted(
    pick.choice(misses, min(2, len(misses)), replace=False))
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
# The failures are the instructive rows. What ranks above the first correct match in each
# failure shown: distractors (pid 0: tracklets of no identity of the dataset), other identities, and
# among them look-alikes (on the synthetic benchmark some identities are drawn as near copies
# of another one, listed in `meta.json`'s `hard_negatives`), and how visible the query's own
# frames are:

# %%
look_alike = set()
for rel in manifest.meta.get("hard_negatives", []):  # the synthetic benchmark's hard negatives
    look_alike |= {(int(rel["pid"]), int(rel["base"])), (int(rel["base"]), int(rel["pid"]))}


def n_of(n, one, many):
    return f"{n} {one if n == 1 else many}"


failure_lines, failures = [], []
for i in chosen:
    if pq.first_hit[i] == 1:
        continue
    fh = int(pq.first_hit[i])
    above = [(int(f), int(g)) for f, g in zip(pq.flags[i, :top], pq.gallery_ids[i, :top])
             if g >= 0][:(fh - 1) if 0 < fh <= top else top]
    qpid = int(pq.query_pids[i])
    wrong = [int(manifest.pids[manifest.index(g)]) for f, g in above if f == 0]
    counts = {"distractors": sum(f == 2 for f, _ in above), "other identities": len(wrong),
              "look-alikes": sum((qpid, w) in look_alike for w in wrong)}
    vis = manifest.tracklets[manifest.index(int(pq.query_ids[i]))].visibility
    failures.append({"query": int(pq.query_ids[i]), "first_hit": fh, "ranks_above": len(above), **counts,
                     "query_mean_visibility": None if vis is None else float(np.mean(vis))})
    where = (f"first correct match at rank {fh}; above it" if 0 < fh <= top else
             f"first correct match at rank {fh}, below the {top} shown, which hold" if fh else
             f"no correct match ranked; the {top} shown hold")
    failure_lines.append(
        f"- query {int(pq.query_ids[i])} (pid {qpid}), {where} {n_of(counts['distractors'], 'distractor', 'distractors')} "
        f"and {n_of(counts['other identities'], 'other identity', 'other identities')}"
        + (f" ({counts['look-alikes']} of them drawn as {'a look-alike' if counts['look-alikes'] == 1 else 'look-alikes'}"
           f" of the query)" if manifest.meta.get("hard_negatives") else "")
        + (f"; the query's frames are {np.mean(vis):.0%} visible on average" if vis is not None else "") + ".")
if failures:
    total = {k: sum(f[k] for f in failures) for k in ("ranks_above", "distractors", "other identities", "look-alikes")}
    failure_lines.append(
        f"\nOver the {n_of(len(failures), 'failure', 'failures')} shown, of the {total['ranks_above']} entries ranked "
        f"above the first correct match (within the top {top}), {total['distractors']} are distractors and "
        f"{n_of(total['other identities'], 'is another identity', 'other identities')}"
        + (f" ({total['look-alikes']} of them look-alikes)" if manifest.meta.get("hard_negatives") else "") + ".")
display(Markdown("\n".join(failure_lines) if failure_lines else "No query of those drawn failed at rank 1."))

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
         f"| evaluation | {', '.join(conventions)} convention(s); ranking: {results['common'].ranking} |"]
display(Markdown("\n".join(lines)))
rows = ["| notebook | time (s) | key metrics |", "|---|---|---|"]
for name, m in metrics.items():
    km = ", ".join(f"{k} = {v:.4g}" if isinstance(v, float) else f"{k} = {v}" for k, v in key_metrics(m).items())
    rows.append(f"| {name} | {timings.get(name, '')} | {km} |")
display(Markdown("\n".join(rows)))
print("packages:", ", ".join(f"{k} {v}" for k, v in env["packages"].items() if v))

# %% [markdown]
# ### What a rerun reproduces
#
# **Bit for bit** is what the kit is built for when the seed, code, package versions, machine
# and thread count are the same: training, evaluation, attention, attributions. One run cannot
# show this; compare this report's `reproducibility.json` with a rerun's, as
# `docs/reproducibility.md` does. The one step that used to break it on a multi-threaded CPU
# was the metric branch's backward pass: it
# gathered the mined pairs' pool5 maps with advanced indexing, whose gradient PyTorch sums with
# parallel float atomics, in whatever order the threads arrive (floating-point addition is not
# associative, so the last bits differed and training drifted apart). It now gathers with
# `index_select`, whose gradient adds in index order; `tests/test_determinism.py` trains twice
# with 2 threads and compares every weight.
#
# **Only statistically:** another thread count, another CPU (oneDNN picks its kernels by
# instruction set, e.g. native bf16 or not), other package versions or a GPU sum in other
# orders, and the runs drift apart from the first step. There the honest error bar is the
# spread across training seeds that lesson 3 measures (printed below when lesson 3 ran), which
# its bootstrap intervals take into account.
# The settings that decide which case applies are recorded in `reproducibility.json`.

# %%
determinism = determinism_info()
print("threads: torch", determinism["torch_threads"], "/ inter-op", determinism["torch_interop_threads"],
      "| env", {k: v for k, v in determinism["env"].items() if v} or "(unset)",
      "| deterministic algorithms:", determinism["deterministic_algorithms"],
      "| native bf16:", determinism["cpu_native_bf16"], "| CPU:", determinism["cpu_model"])
spread = {r["method"]: r["rank1_max"] - r["rank1_min"] for r in metrics.get("03_ablations", {}).get("summary", [])
          if r.get("trained") and len(r.get("seeds", [])) > 1}
if spread:
    widest = max(spread, key=spread.get)
    print(f"lesson 3's seed spread (rank-1 max − min across seeds, this run): widest {spread[widest]:.1f} points "
          f"({widest}), median {sorted(spread.values())[len(spread) // 2]:.1f}")
else:
    print("lesson 3's seed spread: not available (lesson 3 not run, or with one seed)")

# %%
summary = {n: {k: getattr(r, k) for k in ("rank1", "rank5", "rank10", "rank20", "mAP", "num_queries",
                                          "num_skipped", "num_gallery", "ranking", "convention")}
           for n, r in results.items()}
reproducibility = {"profile": profile, "seed": seed, "environment": env, "git": git, "config": config.to_dict(),
                   "dataset": {"name": manifest.name, "path": str(dataset_dir), "meta": manifest.meta},
                   "determinism": determinism, "checkpoint": str(run_dir / "last.pt"), "evaluation": summary,
                   "notebook_metrics": {k: key_metrics(v) for k, v in metrics.items()},
                   "notebook_seconds": timings}
write_metrics(report_dir / "reproducibility.json", reproducibility)
key = {"rank1": summary["common"]["rank1"], "mAP": summary["common"]["mAP"]}
if "official" in summary:
    key.update(rank1_official=summary["official"]["rank1"], mAP_official=summary["official"]["mAP"])
claims = [{"claim": c["claim"], "verdict": c["verdict"], "interval": c["interval"], "diff": c["diff"]}
          for c in comparisons if c["claim"] and c["claim"].endswith("(Eq. 2)")]
written = write_metrics(metrics_path, {
    "reproduces": "Eq. 2 taken apart on one model (S against its parts F and M), Fig. 9's CMC and Fig. 10's "
                  "retrieval examples" + (", in both MARS conventions" if "official" in results else ""),
    "claims": claims, "comparisons": comparisons, "failures": failures,
    "key": key, "evaluation": summary, "eq2": [{k: v for k, v in e.items() if k != "per_query"} for e in eq2],
    "correct_matches": {"common": common_n.mean(), "official": official_n.mean()},
    "cmc": {n: r.cmc for n, r in results.items()}, "seconds": seconds, "git_commit": git["commit"]})
print(f"this lesson's numbers: metrics/{written.name}")
