"""Table 2 of the paper: train and evaluate the six variants with one seed on one dataset.

``run_ablation(config, out_dir)`` trains every variant of ``reidkit.models.VARIANTS`` with the
same config (only ``model.variant`` changes; each run in ``out_dir/<variant>/``), evaluates it
with ``config.eval``, and scores untrained models as a floor (the ``cnn`` and ``all`` variants
at their random initialisation: what the architecture alone gives, before any training). It
writes::

    out_dir/ablation.csv   one row per model: rank-1/5/10/20, mAP, ranking mode, convention, time
    out_dir/ablation.md    the Table-2 style Markdown table, with the protocol stated
    out_dir/cmc.json       {"curves": {method: CMC in %, ranks 1..20}, ...}; draw it with
                           ``reidkit.viz.cmc_curves(json.load(f)["curves"])`` (Fig. 9)

One seed, one split: differences of a point or two between variants are within the seed-to-seed
spread at these sizes; the table says so.
"""

from __future__ import annotations

import csv
import io
import time
from pathlib import Path
from typing import Callable

import torch

from reidkit.config import Config
from reidkit.data import FrameCache, Manifest
from reidkit.evaluate import evaluate
from reidkit.files import write_json, write_text
from reidkit.models import METHOD_NAMES, VARIANTS, build_model
from reidkit.train import Trainer, resolve_device, seed_everything

__all__ = ["PAPER_RANK1", "run_ablation", "write_tables"]

# Table 2's MARS rank-1 for reference (DESIGN.md); its method names are reidkit.models.METHOD_NAMES
PAPER_RANK1 = {"cnn": 58.5, "cnn_rnn": 60.3, "cnn_tam": 62.7, "cnn_diff": 63.0, "cnn_srm": 64.2, "all": 70.6}
COLUMNS = ("method", "variant", "trained", "rank1", "rank5", "rank10", "rank20", "mAP", "ranking",
           "convention", "num_queries", "num_skipped", "epochs", "steps", "train_s", "eval_s", "paper_rank1_mars")


def _row(method, variant, trained, result, seconds: dict, config: Config | None, steps: int) -> dict:
    return {
        "method": method, "variant": variant, "trained": trained,
        **{k: round(float(getattr(result, k)), 2) for k in ("rank1", "rank5", "rank10", "rank20", "mAP")},
        "ranking": result.ranking, "convention": result.convention,
        "num_queries": result.num_queries, "num_skipped": result.num_skipped,
        "epochs": config.train.epochs if trained else 0, "steps": steps,
        "train_s": round(seconds.get("train", 0.0), 1), "eval_s": round(seconds["eval"], 1),
        "paper_rank1_mars": PAPER_RANK1[variant] if trained else "",
    }


def run_ablation(config: Config, out_dir, variants=VARIANTS, baselines=("cnn", "all"),
                 progress: bool = True, callbacks=(),
                 on_curves: Callable[[dict, Path], None] | None = None) -> list[dict]:
    """Train + evaluate ``variants`` and evaluate untrained ``baselines``; returns the table rows.

    ``on_curves(curves, out_dir)``, if given, is called with the CMC curves ({method: CMC in %})
    once the tables are written, e.g. to draw Fig. 9 (the CLI's ``--plot``).
    """

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if not config.data.dataset:
        raise ValueError("data.dataset is not set: pass --dataset DIR")
    unknown = [v for v in (*variants, *baselines) if v not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variant(s) {unknown}; expected some of {', '.join(VARIANTS)}")
    manifest = Manifest.load(config.data.dataset)
    cache = FrameCache.build(manifest, config.model.height, config.model.width, config.data.cache_dir, progress=progress)
    device = resolve_device(config.train.device)
    rows, curves = [], {}

    def log(msg):
        if progress:
            print(msg, flush=True)

    for variant in baselines:  # the floor: architecture at its seeded random initialisation
        seed_everything(config.train.seed)
        model = build_model(variant, config=config.model)
        tick = time.perf_counter()
        result = evaluate(model.to(device), manifest, cache, config.eval, split=config.data.split, device=device,
                          progress=progress)
        method = f"untrained {METHOD_NAMES[variant]}"
        rows.append(_row(method, variant, False, result, {"eval": time.perf_counter() - tick}, None, 0))
        curves[method] = [float(c) for c in result.cmc]
        log(f"[ablate] {method}: {result.summary()}")

    for variant in variants:
        run_config = Config.from_dict(config.to_dict(), settings={"model.variant": variant,
                                                                  "train.out_dir": str(out_dir / variant)})
        tick = time.perf_counter()
        trainer = Trainer(run_config, callbacks=callbacks, manifest=manifest, cache=cache)
        trainer.fit()
        train_s = time.perf_counter() - tick
        tick = time.perf_counter()
        result = evaluate(trainer.model, manifest, cache, run_config.eval, split=run_config.data.split,
                          device=trainer.device, progress=progress)
        seconds = {"train": train_s, "eval": time.perf_counter() - tick}
        method = METHOD_NAMES[variant]
        rows.append(_row(method, variant, True, result, seconds, run_config, trainer.step))
        curves[method] = [float(c) for c in result.cmc]
        write_json(out_dir / variant / "eval.json", result.to_dict(per_query=False), indent=1)
        log(f"[ablate] {method}: {result.summary()} (train {train_s:.0f}s)")
        del trainer
        if device.type == "cuda":
            torch.cuda.empty_cache()

    write_tables(rows, curves, out_dir, config, manifest.name)
    if on_curves is not None:
        on_curves(curves, out_dir)
    return rows


def write_tables(rows: list[dict], curves: dict, out_dir, config: Config, dataset: str = "") -> None:
    """ablation.csv, ablation.md and cmc.json in ``out_dir``."""
    out_dir = Path(out_dir)
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    write_text(out_dir / "ablation.csv", table.getvalue())
    convention = rows[0]["convention"] if rows else config.eval.convention
    m, t = config.model, config.train
    rerank = ("every query × gallery pair (exact)" if config.eval.exact
              else f"top-{config.eval.rerank_top_k} of the feature ranking (every pair when K ≥ the gallery size)")
    lines = [
        f"# Ablation (Table 2 style) on {dataset or config.data.dataset}",
        "",
        f"- Protocol: {convention}.",
        f"- Ranking (per row below, as reported by reidkit.evaluate): distance of L2-normalised F(x) for "
        f"CNN/CNN+RNN/CNN+TAM; M for CNN+DIFF/CNN+SRM and S = 1/(1+F) + λM (λ = {m.lam}) for ALL, both "
        f"scoring {rerank}.",
        f"- Model: {m.cnn} (width × {m.width_mult}, norm {m.norm}, fc dropout {m.fc_dropout}), "
        f"{m.height}×{m.width} frames, T = {m.seq_len}; "
        f"trained {t.epochs} epochs × {rows[-1]['steps'] // max(1, t.epochs) if rows else '?'} steps of "
        f"P={t.P} × K={t.K} clips, {t.optimizer} lr {t.lr}, seed {t.seed}; M's negatives "
        f"{t.hard_negative_fraction:.0%} hardest{' (camera-balanced)' if t.camera_balanced_pairs else ''}, the rest random.",
        "- One seed, one split: trust a gap only if it exceeds the seed-to-seed spread (on the synthetic "
        "small benchmark two seeds moved one variant's rank-1 by up to 8.3 points; see the README).",
        "- Paper column: Zhou et al. (CVPR 2017) Table 2, rank-1 on MARS with 227×227 CaffeNet — for "
        "orientation only, a different dataset and scale.",
        "",
        "| Method | Ranking | Rank@1 | Rank@5 | Rank@20 | mAP | Paper Rank@1 (MARS) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        paper = f"{r['paper_rank1_mars']}" if r["paper_rank1_mars"] != "" else "—"
        lines.append(f"| {r['method']} | {r['ranking']} | {r['rank1']:.1f} | {r['rank5']:.1f} | "
                     f"{r['rank20']:.1f} | {r['mAP']:.1f} | {paper} |")
    write_text(out_dir / "ablation.md", "\n".join(lines) + "\n")
    write_json(out_dir / "cmc.json", {
        "dataset": dataset, "convention": convention, "units": "percent", "ranks": list(range(1, 21)),
        "curves": curves, "rankings": {r["method"]: r["ranking"] for r in rows}}, indent=1)
