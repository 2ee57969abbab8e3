"""Table 2 of the paper: train and evaluate the six variants, over one or more seeds.

``run_ablation(config, out_dir, seeds=(0, 1))`` trains every variant of
``reidkit.models.VARIANTS`` with the same config once per seed (only ``model.variant`` and
``train.seed`` change; each run in ``out_dir/<variant>/seed_<s>/``), evaluates it with
``config.eval``, and scores untrained models as a floor (the ``cnn`` and ``all`` variants at
their random initialisation: what the architecture alone gives, before any training). It
writes::

    out_dir/ablation.csv   one row per run (method, seed): rank-1/5/10/20, mAP, ranking, time
    out_dir/summary.csv    one row per method over its seeds: mean, std, min, max of each metric
    out_dir/ablation.md    the Table-2 style Markdown table, with the protocol stated
    out_dir/cmc.json       {"curves": {method: CMC in %, mean over seeds, ranks 1..20}, ...}; draw
                           it with ``reidkit.viz.cmc_curves(json.load(f)["curves"])`` (Fig. 9)
    out_dir/run.json       what made the folder: the dataset (name, ``manifest_fingerprint``) and config

Run again on the same ``out_dir``, finished runs are kept and unfinished ones resume; only
``train.epochs`` (growing) and ``eval.*`` may change between calls (and the variants and seeds
asked for). Other settings, or another dataset, are refused (:func:`claim_ablation`): the
folder holds another experiment, and its runs are never trained over.

A difference between two variants is only worth a word when it exceeds the seed-to-seed
spread: :func:`separated` says whether two methods' seed ranges do not overlap.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from reidkit.config import Config, EvalConfig
from reidkit.data import FrameCache, Manifest
from reidkit.evaluate import evaluate
from reidkit.files import folder_entries, write_json, write_text
from reidkit.models import METHOD_NAMES, VARIANTS, build_model
from reidkit.checkpoint import load_checkpoint, load_model
from reidkit.train import (RESUMABLE_CHANGES, RunExistsError, Trainer, config_changes, dataset_record, resolve_device,
                           resume_point, seed_everything)

__all__ = ["PAPER_RANK1", "run_ablation", "summarize", "seed_spread", "separated", "format_cell", "write_tables",
           "earlier_run", "claim_ablation", "write_csv"]

# Zhou et al. (CVPR 2017), Table 2: rank-1 on MARS; the method names are reidkit.models.METHOD_NAMES
PAPER_RANK1 = {"cnn": 58.5, "cnn_rnn": 60.3, "cnn_tam": 62.7, "cnn_diff": 63.0, "cnn_srm": 64.2, "all": 70.6}
METRICS = ("rank1", "rank5", "rank10", "rank20", "mAP")
COLUMNS = ("method", "variant", "trained", "seed", *METRICS, "ranking",
           "convention", "num_queries", "num_skipped", "epochs", "steps", "train_s", "eval_s", "paper_rank1_mars")
SUMMARY_COLUMNS = ("method", "variant", "trained", "seeds", *(f"{m}_{s}" for m in METRICS for s in ("mean", "std", "min", "max")),
                   "paper_rank1_mars")


def _row(method, variant, trained, seed, result, seconds: dict, config: Config | None, steps: int) -> dict:
    return {
        "method": method, "variant": variant, "trained": trained, "seed": seed,
        **{k: round(float(getattr(result, k)), 2) for k in ("rank1", "rank5", "rank10", "rank20", "mAP")},
        "ranking": result.ranking, "convention": result.convention,
        "num_queries": result.num_queries, "num_skipped": result.num_skipped,
        "epochs": config.train.epochs if trained else 0, "steps": steps,
        "train_s": round(seconds.get("train", 0.0), 1), "eval_s": round(seconds["eval"], 1),
        "paper_rank1_mars": PAPER_RANK1[variant] if trained else "",
    }


def summarize(rows: list[dict], over: str = "seed") -> list[dict]:
    """One row per method over its seeds: ``<metric>_mean/_std/_min/_max`` (std with n − 1; 0 for
    one seed) and ``seeds``, in the order the methods first appear. ``over="split"`` summarises
    rows that differ by ``split`` instead (``reidkit.protocol``), listed as ``splits``."""
    out = []
    for method in dict.fromkeys(r["method"] for r in rows):
        runs = [r for r in rows if r["method"] == method]
        row = {"method": method, "variant": runs[0]["variant"], "trained": runs[0]["trained"],
               f"{over}s": [r[over] for r in runs], "paper_rank1_mars": runs[0].get("paper_rank1_mars", "")}
        for m in METRICS:
            v = np.array([r[m] for r in runs], dtype=np.float64)
            row.update({f"{m}_mean": round(float(v.mean()), 2), f"{m}_std": round(float(v.std(ddof=1)), 2) if len(v) > 1 else 0.0,
                        f"{m}_min": float(v.min()), f"{m}_max": float(v.max())})
        out.append(row)
    return out


def seed_spread(summary: list[dict], metric: str = "rank1") -> float:
    """The widest seed range (max − min) of any trained method: the table's measured run-to-run
    noise (0 with one seed)."""
    return max((r[f"{metric}_max"] - r[f"{metric}_min"] for r in summary if r["trained"]), default=0.0)


def separated(a: dict, b: dict, metric: str = "rank1", spread: float = 0.0) -> bool:
    """Whether two :func:`summarize` rows differ by more than the seed-to-seed spread: their
    [min, max] ranges over seeds do not overlap *and* their means differ by more than
    ``spread`` (pass :func:`seed_spread`: with few seeds one method's range underestimates the
    noise). Always False with a single seed (no spread measured, no difference called real)."""
    if len(a["seeds"]) < 2 or len(b["seeds"]) < 2:
        return False
    apart = a[f"{metric}_min"] > b[f"{metric}_max"] or b[f"{metric}_min"] > a[f"{metric}_max"]
    return apart and abs(a[f"{metric}_mean"] - b[f"{metric}_mean"]) > spread


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


RUN_FILE = "run.json"
ABLATION_KIND = "reidkit ablation"
# what may differ from the run.json of an earlier call: bookkeeping (train.epochs may only grow), eval
# (every run is evaluated again), and what run_ablation sets per run
ALLOWED_CHANGES = (RESUMABLE_CHANGES | {"model.variant", "train.seed"}
                   | {f"eval.{f.name}" for f in dataclasses.fields(EvalConfig)})
_TABLES = {"ablation.csv", "summary.csv", "ablation.md", "cmc.json", "cmc.png", RUN_FILE}


def claim_ablation(out_dir: Path, config: Config, manifest: Manifest) -> None:
    """Refuse an ``out_dir`` that holds anything but an ablation of this dataset and these settings
    (see the module docstring), before any work; then record them in ``out_dir/run.json``."""
    out_dir = Path(out_dir)
    record = {"kind": ABLATION_KIND, "dataset": dataset_record(manifest), "config": config.to_dict()}
    path = out_dir / RUN_FILE
    if path.is_file():
        try:
            earlier = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise RunExistsError(f"{path}: unreadable ({e}); choose another --out") from None
        if not isinstance(earlier, dict) or earlier.get("kind") != ABLATION_KIND:
            kind = earlier.get("kind") if isinstance(earlier, dict) else None
            raise RunExistsError(f"{path} is not an ablation's record (kind {kind!r}): choose another --out")
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
                 on_curves: Callable[[dict, Path], None] | None = None) -> list[dict]:
    """Train + evaluate ``variants`` once per seed (default: ``config.train.seed`` only) and
    evaluate untrained ``baselines`` at the first seed; returns the per-run rows.

    Run again on the same ``out_dir`` (e.g. after an interruption), runs that finished with the
    same settings are kept and evaluated, an unfinished one resumes from its checkpoint, and a
    run of other settings is replaced.

    ``on_curves(curves, out_dir)``, if given, is called with the CMC curves ({method: CMC in %,
    mean over seeds}) once the tables are written, e.g. to draw Fig. 9 (the CLI's ``--plot``).
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

    for variant in baselines:  # the floor: architecture at its seeded random initialisation
        seed_everything(seeds[0])
        model = build_model(variant, config=config.model)
        tick = time.perf_counter()
        result = evaluate(model.to(device), manifest, cache, config.eval, split=config.data.split, device=device,
                          progress=progress)
        method = f"untrained {METHOD_NAMES[variant]}"
        rows.append(_row(method, variant, False, seeds[0], result, {"eval": time.perf_counter() - tick}, None, 0))
        cmcs.setdefault(method, []).append(result.cmc)
        log(f"[ablate] {method}: {result.summary()}")

    for variant in variants:
        for seed in seeds:
            run_dir = out_dir / variant / f"seed_{seed}"
            run_config = Config.from_dict(config.to_dict(), settings={
                "model.variant": variant, "train.seed": seed, "train.out_dir": str(run_dir)})
            tick = time.perf_counter()
            earlier, state = earlier_run(run_dir, run_config, ALLOWED_CHANGES, manifest.fingerprint)  # eval: again
            if earlier == "finished":  # an earlier, interrupted ablation finished this run: keep it
                model, _ = load_model(run_dir / "last.pt", device=device)
                steps, how = int(state["step"]), "kept from an earlier run"
            else:  # a fresh run, or resume an unfinished one of this config
                trainer = Trainer(run_config, callbacks=callbacks, manifest=manifest, cache=cache)
                trainer.fit(resume=earlier == "unfinished", force=True)
                model, steps, how = trainer.model, trainer.step, "trained"
                del trainer
            train_s = time.perf_counter() - tick
            tick = time.perf_counter()
            result = evaluate(model, manifest, cache, run_config.eval, split=run_config.data.split,
                              device=device, progress=progress)
            seconds = {"train": train_s, "eval": time.perf_counter() - tick}
            method = METHOD_NAMES[variant]
            rows.append(_row(method, variant, True, seed, result, seconds, run_config, steps))
            cmcs.setdefault(method, []).append(result.cmc)
            write_json(run_dir / "eval.json", result.to_dict(per_query=False), indent=1)
            log(f"[ablate] {method}, seed {seed}: {result.summary()} ({how}, {train_s:.0f}s)")
            del model
            if device.type == "cuda":
                torch.cuda.empty_cache()

    curves = {m: [float(c) for c in np.mean(np.stack(v), axis=0)] for m, v in cmcs.items()}
    write_tables(rows, curves, out_dir, config, manifest.name)
    if on_curves is not None:
        on_curves(curves, out_dir)
    return rows


def format_cell(row: dict, metric: str, over: str = "seed") -> str:
    """A summary cell: the value (one seed), mean and min–max (two), mean ± std and min–max (more).
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


def write_tables(rows: list[dict], curves: dict, out_dir, config: Config, dataset: str = "") -> None:
    """ablation.csv (per run), summary.csv (per method), ablation.md and cmc.json in ``out_dir``."""
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
    if len(seeds) == 1:
        spread = ("- One seed: no seed-to-seed spread was measured, so no difference between two rows can be "
                  "called real from this table alone.")
    else:
        spread = (f"- {len(seeds)} seeds per trained variant ({', '.join(map(str, seeds))}): each cell is the mean over "
                  f"seeds{' ± the standard deviation' if len(seeds) > 2 else ''}, with the min–max range in brackets. "
                  f"The widest range of any variant is {seed_spread(summary):.1f} rank-1 points: a difference "
                  f"between two rows is real only where their ranges do not overlap and their means differ by more "
                  f"than that.")
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
    write_text(out_dir / "ablation.md", "\n".join(lines) + "\n")
    write_json(out_dir / "cmc.json", {
        "dataset": dataset, "convention": convention, "units": "percent", "ranks": list(range(1, 21)),
        "seeds": seeds, "curves": curves, "rankings": ranking}, indent=1)
