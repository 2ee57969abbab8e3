"""Table 2 of the paper: train and evaluate the six variants, over one or more seeds.

``run_ablation(config, out_dir, seeds=(0, 1, 2))`` trains every variant of
``reidkit.models.VARIANTS`` with the same config once per seed (only ``model.variant`` and
``train.seed`` change; each run in ``out_dir/<variant>/seed_<s>/``), evaluates it with
``config.eval``, and scores floors: the ``baselines`` at their random initialisation (what the
architecture alone gives) and, when ``model.pretrained`` is set, the pretrained frame CNN
without any fine-tuning (what the starting point already gives). The paper's protocol is
``model.pretrained`` set: every variant starts from the same pretrained CNN (``reidkit
pretrain``). It writes::

    out_dir/ablation.csv   one row per run (method, seed): rank-1/5/10/20, mAP, ranking, time
    out_dir/summary.csv    one row per method over its seeds: mean, std (n − 1), min, max of each metric
    out_dir/ablation.md    the Table-2 style Markdown table, the protocol and the paper's conclusions
    out_dir/cmc.json       {"curves": {method: CMC in %, mean over seeds, ranks 1..20}, ...}; draw
                           it with ``reidkit.viz.cmc_curves(json.load(f)["curves"])`` (Fig. 9)
    out_dir/hits.json      every run's per-query rank-1 outcomes (what the intervals resample)
    out_dir/learning_curves.json  validation rank-1 against steps per method (``data.val_ids``)
    out_dir/conclusions.json      the paper's three conclusions: difference, 95 % interval, verdict
    out_dir/run.json       what made the folder: the dataset (name, ``manifest_fingerprint``) and config

Run again on the same ``out_dir``, finished runs are kept and unfinished ones resume; only
``train.epochs`` (growing) and ``eval.*`` may change between calls (and the variants and seeds
asked for). Other settings, or another dataset, are refused (:func:`claim_ablation`): the
folder holds another experiment, and its runs are never trained over.

A difference between two variants is real when the 95 % interval of
``reidkit.significance.variant_interval`` (seeds and queries resampled) excludes zero; that is
the one rule (:func:`conclusions`), used by the table and the lessons alike.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from reidkit.config import Config, EvalConfig
from reidkit.data import FrameCache, Manifest
from reidkit.evaluate import evaluate
from reidkit.files import folder_entries, write_json, write_text
from reidkit.metrics import METRICS, sample_std
from reidkit.models import METHOD_NAMES, VARIANTS, build_model
from reidkit.pretrain import pretrained_only
from reidkit.checkpoint import load_checkpoint, load_model
from reidkit.significance import describe, rank1_hits, variant_interval, verdict
from reidkit.train import (RESUMABLE_CHANGES, RunExistsError, Trainer, config_changes, dataset_record, resolve_device,
                           resume_point, seed_everything)

__all__ = ["PAPER_RANK1", "PAPER_CONCLUSIONS", "PRETRAINED_FLOOR", "run_ablation", "summarize", "format_cell",
           "write_tables", "earlier_run", "train_and_score", "RunOutcome", "read_run_record", "claim_ablation",
           "write_csv", "conclusions", "learning_curves"]

# Zhou et al. (CVPR 2017), Table 2: rank-1 on MARS; the method names are reidkit.models.METHOD_NAMES
PAPER_RANK1 = {"cnn": 58.5, "cnn_rnn": 60.3, "cnn_tam": 62.7, "cnn_diff": 63.0, "cnn_srm": 64.2, "all": 70.6}
COLUMNS = ("method", "variant", "trained", "seed", *METRICS, "ranking",
           "convention", "num_queries", "num_skipped", "epochs", "steps", "train_s", "eval_s", "paper_rank1_mars")
SUMMARY_COLUMNS = ("method", "variant", "trained", "seeds", *(f"{m}_{s}" for m in METRICS for s in ("mean", "std", "min", "max")),
                   "paper_rank1_mars")


def _row(method, variant, trained, seed, result, seconds: dict, config: Config | None, steps: int) -> dict:
    return {
        "method": method, "variant": variant, "trained": trained, "seed": seed,
        **{k: round(float(getattr(result, k)), 2) for k in METRICS},
        "ranking": result.ranking, "convention": result.convention,
        "num_queries": result.num_queries, "num_skipped": result.num_skipped,
        "epochs": config.train.epochs if trained else 0, "steps": steps,
        "train_s": round(seconds.get("train", 0.0), 1), "eval_s": round(seconds["eval"], 1),
        "paper_rank1_mars": PAPER_RANK1[variant] if trained else "",
    }


def summarize(rows: list[dict], over: str = "seed", extra=("paper_rank1_mars",)) -> list[dict]:
    """One row per method over its seeds: ``<metric>_mean/_std/_min/_max`` (std with n − 1; 0 for
    one seed), ``seeds`` and the ``extra`` columns of its first row, in the order the methods
    first appear. ``over="split"`` summarises rows that differ by ``split`` instead
    (``reidkit.protocol``, no extra columns), listed as ``splits``."""
    out = []
    for method in dict.fromkeys(r["method"] for r in rows):
        runs = [r for r in rows if r["method"] == method]
        row = {"method": method, "variant": runs[0]["variant"], "trained": runs[0]["trained"],
               f"{over}s": [r[over] for r in runs], **{k: runs[0].get(k, "") for k in extra}}
        for m in METRICS:
            v = np.array([r[m] for r in runs], dtype=np.float64)
            row.update({f"{m}_mean": round(float(v.mean()), 2), f"{m}_std": round(sample_std(v), 2),
                        f"{m}_min": float(v.min()), f"{m}_max": float(v.max())})
        out.append(row)
    return out


# The paper's three conclusions from Table 2 (Sec. 4.2), each as "A beats B": for "A beats the
# best of several", B is whichever rival has the higher mean rank-1 in this run (the harder test).
PAPER_CONCLUSIONS = (
    {"name": "attention", "claim": "temporal attention beats a plain RNN and plain averaging",
     "a": "CNN+TAM", "rivals": ("CNN+RNN", "CNN")},
    {"name": "spatial_recurrence", "claim": "the spatial recurrent model beats the bare difference",
     "a": "CNN+SRM", "rivals": ("CNN+DIFF",)},
    {"name": "joint_learning", "claim": "joint feature and metric learning (ALL) is best",
     "a": "ALL", "rivals": ("CNN", "CNN+RNN", "CNN+TAM", "CNN+DIFF", "CNN+SRM")},
)
PRETRAINED_FLOOR = "pretrained CNN, not fine-tuned"


def conclusions(hits: dict[str, dict], n_boot: int = 2000, seed: int = 0) -> list[dict]:
    """The paper's three conclusions, each judged by one rule: the difference of mean rank-1
    (A − its strongest rival) with the 95 % interval of ``variant_interval`` over seeds and
    queries, and the verdict that interval alone gives (holds / reversed / inconclusive).

    ``hits``: ``{method: {seed: per-query rank-1 outcomes}}`` (every run on the same queries).
    A conclusion whose methods were not all trained is left out."""
    out = []
    for c in PAPER_CONCLUSIONS:
        names = (c["a"], *c["rivals"])
        if not all(hits.get(m) for m in names):
            continue
        arrays = {m: np.stack([np.asarray(v, np.float64) for v in hits[m].values()]) for m in names}
        rival = max(c["rivals"], key=lambda m: arrays[m].mean())
        comparisons = []
        for b in c["rivals"]:
            iv = variant_interval(arrays[c["a"]], arrays[b], n_boot=n_boot, seed=seed)
            comparisons.append({"b": b, **iv.to_dict(), "verdict": verdict(iv), "text": describe(iv)})
        main = next(x for x in comparisons if x["b"] == rival)
        out.append({"name": c["name"], "claim": c["claim"], "a": c["a"], "b": rival, "diff": main["diff"],
                    "interval": main["interval"], "verdict": main["verdict"], "text": main["text"],
                    "seeds": {m: len(arrays[m]) for m in names}, "comparisons": comparisons})
    return out


def learning_curves(histories: dict[str, dict[int, list[dict]]]) -> dict:
    """Validation rank-1 (and mAP) against steps per method: ``{method: {"steps", "mean", "min",
    "max", "mAP_mean", "per_seed"}}`` from the runs' epoch histories (rows scored on
    ``data.val_ids``' identities). Only the steps every seed of a method was scored at are kept."""
    out = {}
    for method, runs in histories.items():
        scored = {s: {int(r["step"]): (float(r["rank1"]), float(r["mAP"])) for r in rows
                      if r.get("scored_on") == "validation"} for s, rows in runs.items()}
        steps = sorted(set.intersection(*(set(v) for v in scored.values()))) if scored else []
        if not steps:
            continue
        values = np.array([[scored[s][k] for k in steps] for s in scored])  # (seeds, steps, 2)
        rank1 = values[..., 0]
        out[method] = {"steps": steps, "mean": rank1.mean(0).round(2).tolist(), "min": rank1.min(0).tolist(),
                       "max": rank1.max(0).tolist(), "mAP_mean": values[..., 1].mean(0).round(2).tolist(),
                       "per_seed": {str(s): rank1[i].tolist() for i, s in enumerate(scored)}}
    return out


def earlier_run(run_dir: Path, config: Config, allowed=RESUMABLE_CHANGES,
                fingerprint: str | None = None) -> tuple[str, dict | None]:
    """What an earlier ablation (or ten-split run) left in ``run_dir`` for ``config``: ``("finished", state)``
    when it did exactly what ``config`` asks (same settings but ``allowed`` ones, all ``train.epochs``),
    ``("unfinished", None)`` when a run of the same settings stopped early (resume it), ``("none", None)``
    when there is no run. A run of other settings, of more epochs, or (given the ``manifest_fingerprint``
    of ``config``'s dataset) of another dataset is refused with ``RunExistsError``: never trained over."""
    point = resume_point(run_dir)  # last.pt, or the newest epoch file when a full disk cost last.pt
    if point is None:
        return "none", None
    state = load_checkpoint(point)  # one read (and checksum) per run
    changes = config_changes(state.get("config", {}), config.to_dict(), allowed)
    saved = state.get("dataset") or {}
    if fingerprint and saved.get("fingerprint") and saved["fingerprint"] != fingerprint:
        changes.append(f"trained on {saved.get('name')} at {saved.get('path')}, not on {config.data.dataset}")
    epoch = int(state.get("epoch", 0))
    if epoch > config.train.epochs:
        changes.append(f"train.epochs: {epoch} done, {config.train.epochs} asked")
    if changes:
        raise RunExistsError(f"{run_dir} holds a run of other settings or data: {'; '.join(changes)}. It is kept: "
                             f"choose another --out, or delete {run_dir} to train it again")
    if epoch == config.train.epochs and point.name == "last.pt":
        return "finished", state
    return "unfinished", None


@dataclass
class RunOutcome:
    """What ``train_and_score`` did with one run: ``earlier`` is what ``earlier_run`` found
    ("finished", "unfinished", "none"); ``how`` "kept" (finished earlier, ``reuse`` gave its
    scores), "evaluated again" (finished earlier), "resumed" or "trained"; ``epochs``/``steps``
    done; ``stopped``: a callback ended training before ``train.epochs``; ``scores``: what
    ``score`` (or ``reuse``) returned."""

    earlier: str
    how: str
    epochs: int = 0
    steps: int = 0
    history: list = field(default_factory=list)
    train_s: float = 0.0
    stopped: bool = False
    scores: Any = None


def train_and_score(run_config: Config, manifest: Manifest, cache: FrameCache,
                    score: Callable[[Any, RunOutcome], Any], *, allowed=RESUMABLE_CHANGES, device=None,
                    callbacks=(), reuse: Callable[[dict], Any] | None = None) -> RunOutcome:
    """One run of an ablation or of the ten-split protocol, in ``run_config.train.out_dir``: a run
    an earlier call finished with these settings (``earlier_run``, ``allowed`` changes) is kept,
    an unfinished one resumes, otherwise it trains; then ``score(model, outcome)`` evaluates it
    and its result becomes ``outcome.scores``. ``reuse(state)``, given, may return the scores an
    earlier call wrote for a finished run: then nothing is loaded or scored. A run of other
    settings or data is refused (``RunExistsError``), never trained over."""
    device = device if device is not None else resolve_device(run_config.train.device)
    run_dir = Path(run_config.train.out_dir)
    tick = time.perf_counter()
    earlier, state = earlier_run(run_dir, run_config, allowed, manifest.fingerprint)
    if earlier == "finished":
        scores = reuse(state) if reuse is not None else None
        done = (int(state["epoch"]), int(state["step"]), list(state.get("history", [])))
        if scores is not None:
            return RunOutcome(earlier, "kept", *done, scores=scores)
        model, _ = load_model(run_dir / "last.pt", device=device)
        outcome = RunOutcome(earlier, "evaluated again", *done)
    else:  # a fresh run, or resume an unfinished one of this config
        trainer = Trainer(run_config, callbacks=callbacks, manifest=manifest, cache=cache)
        trainer.fit(resume=earlier == "unfinished", force=True)
        model = trainer.model
        outcome = RunOutcome(earlier, "resumed" if earlier == "unfinished" else "trained", trainer.epoch,
                             trainer.step, trainer.history, time.perf_counter() - tick,
                             stopped=trainer.epoch < run_config.train.epochs)
        del trainer
    outcome.scores = score(model, outcome)
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return outcome


RUN_FILE = "run.json"
ABLATION_KIND = "reidkit ablation"
# what may differ from the run.json of an earlier call: bookkeeping (train.epochs may only grow), eval
# (every run is evaluated again), and what run_ablation sets per run
ALLOWED_CHANGES = (RESUMABLE_CHANGES | {"model.variant", "train.seed"}
                   | {f"eval.{f.name}" for f in dataclasses.fields(EvalConfig)})
_TABLES = {"ablation.csv", "summary.csv", "ablation.md", "cmc.json", "cmc.png", "hits.json", "learning_curves.json",
           "conclusions.json", RUN_FILE}


def read_run_record(path: Path, kind: str, what: str) -> dict:
    """The ``run.json`` an earlier call of ``kind`` wrote (``what``: its name in errors); a
    ``RunExistsError`` when it is unreadable or another command's."""
    try:
        earlier = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise RunExistsError(f"{path}: unreadable ({e}); choose another --out") from None
    found = earlier.get("kind") if isinstance(earlier, dict) else None
    if found != kind:
        raise RunExistsError(f"{path} is not {what}'s record (kind {found!r}): choose another --out")
    return earlier


def claim_ablation(out_dir: Path, config: Config, manifest: Manifest) -> None:
    """Refuse an ``out_dir`` that holds anything but an ablation of this dataset and these settings
    (see the module docstring), before any work; then record them in ``out_dir/run.json``."""
    out_dir = Path(out_dir)
    record = {"kind": ABLATION_KIND, "dataset": dataset_record(manifest), "config": config.to_dict()}
    path = out_dir / RUN_FILE
    if path.is_file():
        earlier = read_run_record(path, ABLATION_KIND, "an ablation")
        old = earlier.get("dataset") or {}
        if old.get("fingerprint") and manifest.fingerprint and old["fingerprint"] != manifest.fingerprint:
            raise RunExistsError(f"{out_dir} holds an ablation on another dataset ({old.get('name')} at "
                                 f"{old.get('path')}; the manifest at {manifest.root} differs): choose another --out")
        changes = config_changes(earlier.get("config", {}), record["config"], allowed=ALLOWED_CHANGES)
        before = (earlier.get("config") or {}).get("train", {}).get("epochs", 0)
        if before > config.train.epochs:
            changes.append(f"train.epochs: {before} → {config.train.epochs} (it may only grow)")
        if changes:
            raise RunExistsError(f"{out_dir} holds an ablation of other settings: " + "; ".join(changes)
                                 + " (only train.epochs, growing, and eval.* may change between calls): its runs "
                                   "are kept; choose another --out")
    else:
        entries = folder_entries(out_dir)
        foreign = [p.name for p in entries if p.name not in _TABLES and not (p.is_dir() and p.name in VARIANTS)]
        if foreign:
            raise RunExistsError(f"{out_dir} is not empty and holds no ablation ({', '.join(foreign[:3])}"
                                 f"{', …' if len(foreign) > 3 else ''}): choose another --out")
        fingerprint = manifest.fingerprint
        for run_dir in sorted(out_dir.glob("*/seed_*")):  # written before run.json existed: check every run
            seed = run_dir.name.split("_", 1)[1]
            if seed.lstrip("-").isdigit():
                earlier_run(run_dir, Config.from_dict(config.to_dict(), settings={
                    "model.variant": run_dir.parent.name, "train.seed": int(seed), "train.out_dir": str(run_dir)}),
                    ALLOWED_CHANGES, fingerprint)
    write_json(path, record, indent=1)


def run_ablation(config: Config, out_dir, variants=VARIANTS, baselines=("cnn", "all"), seeds=None,
                 progress: bool = True, callbacks=(),
                 on_curves: Callable[[dict, Path], None] | None = None, feature_cache_dir=None) -> list[dict]:
    """Train + evaluate ``variants`` once per seed (default: ``config.train.seed`` only) and
    evaluate the floors (untrained ``baselines``, and the pretrained CNN alone with
    ``model.pretrained``) at the first seed; returns the per-run rows.

    Run again on the same ``out_dir`` (e.g. after an interruption), runs that finished with the
    same settings are kept and evaluated, an unfinished one resumes from its checkpoint, and
    other settings or another dataset are refused (:func:`claim_ablation`).

    ``on_curves(curves, out_dir)``, if given, is called with the CMC curves ({method: CMC in %,
    mean over seeds}) once the tables are written, e.g. to draw Fig. 9 (the CLI's ``--plot``).
    ``feature_cache_dir``: test features are reused from (and saved to) there, keyed by the
    model's weights (a model another lesson already evaluated is not extracted again).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if not config.data.dataset:
        raise ValueError("data.dataset is not set: pass --dataset DIR")
    unknown = [v for v in (*variants, *baselines) if v not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variant(s) {unknown}; expected some of {', '.join(VARIANTS)}")
    seeds = [config.train.seed] if seeds is None else [int(s) for s in seeds]
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct integers, got {seeds}")
    manifest = Manifest.load(config.data.dataset)
    claim_ablation(out_dir, config, manifest)  # before the frame cache: another experiment's folder is refused
    cache = FrameCache.build(manifest, config.model.height, config.model.width, config.data.cache_dir, progress=progress)
    device = resolve_device(config.train.device)
    rows, cmcs = [], {}

    def log(msg):
        if progress:
            print(msg, flush=True)

    hits, histories = {}, {}

    def score(model, method, variant, trained, seed, seconds, run_config, steps):
        tick = time.perf_counter()
        result = evaluate(model.to(device), manifest, cache, (run_config or config).eval, split=config.data.split,
                          device=device, progress=progress, feature_cache_dir=feature_cache_dir)
        seconds = {**seconds, "eval": time.perf_counter() - tick}
        rows.append(_row(method, variant, trained, seed, result, seconds, run_config, steps))
        cmcs.setdefault(method, []).append(result.cmc)
        hits.setdefault(method, {})[seed] = rank1_hits(result).astype(int).tolist()
        return result

    for variant in baselines:  # the floor: architecture at its seeded random initialisation
        seed_everything(seeds[0])
        result = score(build_model(variant, config=config.model), f"untrained {METHOD_NAMES[variant]}", variant,
                       False, seeds[0], {}, None, 0)
        log(f"[ablate] untrained {METHOD_NAMES[variant]}: {result.summary()}")
    if config.model.pretrained:  # the second floor: the shared starting point, before fine-tuning
        result = score(pretrained_only(config.model, seeds[0]), PRETRAINED_FLOOR, "cnn", False, seeds[0], {}, None, 0)
        log(f"[ablate] {PRETRAINED_FLOOR}: {result.summary()}")

    for variant in variants:
        for seed in seeds:
            run_dir = out_dir / variant / f"seed_{seed}"
            run_config = Config.from_dict(config.to_dict(), settings={
                "model.variant": variant, "train.seed": seed, "train.out_dir": str(run_dir)})
            method = METHOD_NAMES[variant]
            run = train_and_score(  # eval settings may change: every run is evaluated again
                run_config, manifest, cache, allowed=ALLOWED_CHANGES, device=device, callbacks=callbacks,
                score=lambda model, run: score(model, method, variant, True, seed, {"train": run.train_s},
                                               run_config, run.steps))  # noqa: B023 - called in this iteration
            histories.setdefault(method, {})[seed] = run.history
            write_json(run_dir / "eval.json", run.scores.to_dict(per_query=False), indent=1)
            how = "kept from an earlier run" if run.earlier == "finished" else "trained"
            log(f"[ablate] {method}, seed {seed}: {run.scores.summary()} ({how}, {run.train_s:.0f}s)")

    curves = {m: [float(c) for c in np.mean(np.stack(v), axis=0)] for m, v in cmcs.items()}
    trained = {m: h for m, h in hits.items() if m in METHOD_NAMES.values()}
    write_json(out_dir / "hits.json", {"dataset": manifest.name, "hits": hits}, indent=None)
    write_json(out_dir / "learning_curves.json", learning_curves(histories), indent=1)
    verdicts = conclusions(trained)
    write_json(out_dir / "conclusions.json", verdicts, indent=1)
    write_tables(rows, curves, out_dir, config, manifest.name, verdicts)
    if on_curves is not None:
        on_curves(curves, out_dir)
    return rows


def format_cell(row: dict, metric: str, over: str = "seed") -> str:
    """A summary cell: the value (one seed), mean and min–max (two), mean ± std (n − 1) and min–max (more).
    ``over="split"`` for :func:`summarize` rows over splits."""
    n, mean = len(row[f"{over}s"]), row[f"{metric}_mean"]
    if n == 1:
        return f"{mean:.1f}"
    spread = f"{row[f'{metric}_min']:.1f}–{row[f'{metric}_max']:.1f}"
    return f"{mean:.1f} ± {row[f'{metric}_std']:.1f} ({spread})" if n > 2 else f"{mean:.1f} ({spread})"


def write_csv(path: Path, columns, rows) -> None:
    """``rows`` (dicts) as a CSV file of ``columns``; a list value (``seeds``) as space-separated items."""
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=columns)
    writer.writeheader()
    writer.writerows([{k: " ".join(map(str, v)) if isinstance(v, list) else v for k, v in r.items()} for r in rows])
    write_text(path, table.getvalue())


def write_tables(rows: list[dict], curves: dict, out_dir, config: Config, dataset: str = "",
                 verdicts: list[dict] = ()) -> None:
    """ablation.csv (per run), summary.csv (per method), ablation.md (with the ``conclusions``
    verdicts) and cmc.json in ``out_dir``."""
    out_dir = Path(out_dir)
    summary = summarize(rows)
    write_csv(out_dir / "ablation.csv", COLUMNS, rows)
    write_csv(out_dir / "summary.csv", SUMMARY_COLUMNS, summary)
    convention = rows[0]["convention"] if rows else config.eval.convention
    m, t = config.model, config.train
    seeds = sorted({r["seed"] for r in rows if r["trained"]})
    rerank = ("every query × gallery pair (exact)" if config.eval.exact
              else f"top-{config.eval.rerank_top_k} of the feature ranking (every pair when K ≥ the gallery size)")
    steps = max((r["steps"] for r in rows if r["trained"]), default=0)
    spread = (f"- {len(seeds)} seed{'s' if len(seeds) > 1 else ''} per trained variant ({', '.join(map(str, seeds))}): each cell is the mean over "
              f"seeds{' ± the standard deviation (n − 1)' if len(seeds) > 2 else ''}"
              f"{', with the min–max range in brackets' if len(seeds) > 1 else ''}. A difference between two variants "
              f"is real only where the 95 % bootstrap interval of their difference (seeds and queries resampled, "
              f"reidkit.significance) excludes zero; the verdicts below apply that rule.")
    start = (f"- Start: every variant fine-tuned from the same pretrained frame CNN ({config.model.pretrained}), as the "
             f"paper fine-tunes ImageNet CaffeNet." if config.model.pretrained else
             "- Start: every variant trained from random weights (not the paper's protocol, which fine-tunes a "
             "pretrained CNN).")
    lines = [
        f"# Ablation (Table 2 style) on {dataset or config.data.dataset}",
        "",
        f"- Protocol: {convention}.",
        f"- Ranking (per row below, as reported by reidkit.evaluate): distance of L2-normalised F(x) for "
        f"CNN/CNN+RNN/CNN+TAM; M for CNN+DIFF/CNN+SRM and S = 1/(1+F) + λM (λ = {m.lam}) for ALL, both "
        f"scoring {rerank}.",
        f"- Model: {m.cnn} (width × {m.width_mult}, norm {m.norm}, fc dropout {m.fc_dropout}), "
        f"{m.height}×{m.width} frames, T = {m.seq_len}; trained {steps} steps of P={t.P} × K={t.K} clips, "
        f"{t.optimizer} lr {t.lr}; M's negatives {t.hard_negative_fraction:.0%} hardest"
        f"{' (camera-balanced)' if t.camera_balanced_pairs else ''}, the rest random.",
        start,
        spread,
        "- Paper column: Zhou et al. (CVPR 2017) Table 2, rank-1 on MARS with 227×227 CaffeNet — for "
        "orientation only, a different dataset and scale.",
        "",
        "| Method | Ranking | Seeds | Rank@1 | Rank@5 | Rank@20 | mAP | Paper Rank@1 (MARS) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    ranking = {r["method"]: r["ranking"] for r in rows}
    for r in summary:
        paper = f"{r['paper_rank1_mars']}" if r["paper_rank1_mars"] != "" else "—"
        lines.append(f"| {r['method']} | {ranking[r['method']]} | {len(r['seeds'])} | {format_cell(r, 'rank1')} | "
                     f"{format_cell(r, 'rank5')} | {format_cell(r, 'rank20')} | {format_cell(r, 'mAP')} | {paper} |")
    if verdicts:
        lines += ["", "| Paper's conclusion | A − B (rank-1) | 95 % interval | Verdict |", "|---|---|---|---|"]
        lines += [f"| {c['claim']} | {c['a']} − {c['b']}: {c['diff']:+.1f} | [{c['interval'][0]:+.1f}, "
                  f"{c['interval'][1]:+.1f}] | **{c['verdict']}** |" for c in verdicts]
    write_text(out_dir / "ablation.md", "\n".join(lines) + "\n")
    write_json(out_dir / "cmc.json", {
        "dataset": dataset, "convention": convention, "units": "percent", "ranks": list(range(1, 21)),
        "seeds": seeds, "curves": curves, "rankings": ranking}, indent=1)
