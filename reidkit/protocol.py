"""Table 3's protocol on iLIDS-VID and PRID2011: one model per split, each scored on its own test half.

Sec. 4 of the paper: both datasets "are evaluated over ten train/test partitions", each cutting
the persons into two equal halves, one to train on and one to test on; Table 3 reports the CMC
averaged over the ten. ``run_splits(config, out_dir)`` does that for a two-camera manifest
(``protocol: two_camera``: ``python -m data_prep ilidsvid|prid2011``, or the synthetic preset
``pairs``). For each split i (all of the manifest's, or ``splits=[...]``) it trains ``config``
with ``data.split = i`` into ``out_dir/split_<i>/`` and evaluates that model with ``config.eval``
on split i's query (camera 1) and gallery (camera 2) only: another split's test persons overlap
the persons it trained on. One manifest and one frame cache serve every split. It writes::

    out_dir/run.json              the dataset (name, a digest of its tracklets and splits) and config
    out_dir/split_<i>/            the run (last.pt, history) and metrics.json: rank-1/5/10/20, mAP
                                  and CMC of split i, with the epoch/step and eval settings they come from
    out_dir/splits.csv            one row per split
    out_dir/summary.json          mean, std (n − 1), min, max of each metric over the splits, mean CMC
    out_dir/summary.md            the Table-3 style table, with the protocol stated

Run it again on the same ``out_dir`` and a split whose run finished and whose metrics.json matches
it (same epoch and step, same ``config.eval``) is neither trained nor evaluated again; a finished
run without matching metrics is evaluated again; an interrupted one resumes from its ``last.pt``
(``Trainer.fit(resume=True)``): ``reidkit.ablate.train_and_score``, the loop the ablation runs
too. ``train.epochs`` may grow between calls (every split then resumes) and ``eval`` may change
(every model is evaluated again); any other setting, or another dataset, is refused: that
``out_dir`` holds another experiment.

The paper fine-tunes a model trained on MARS for these datasets (Table 3): ``train.init`` (or
``--init CHECKPOINT``) starts every split from that checkpoint's weights with a fresh optimiser;
without it each split trains from ``config``'s initialisation. ``summary.md`` says which beside
the paper's numbers.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from reidkit.ablate import format_cell, read_run_record, summarize, train_and_score, write_csv
from reidkit.config import Config, EvalConfig
from reidkit.data import FrameCache, Manifest
from reidkit.evaluate import describe_convention, evaluate
from reidkit.files import folder_entries, write_json, write_text
from reidkit.metrics import METRICS
from reidkit.models import METHOD_NAMES
from reidkit.train import RESUMABLE_CHANGES, RunExistsError, config_changes, resolve_device

__all__ = ["PAPER_TABLE3", "METRICS", "run_splits", "check_dataset", "dataset_digest", "write_summary"]

# Zhou et al. (CVPR 2017), Table 3 (CMC in %; the paper reports no rank-10 or mAP for these datasets),
# keyed by the manifest's meta.json "source"
PAPER_TABLE3 = {"ilidsvid": {"rank1": 55.2, "rank5": 86.5, "rank20": 97.0},
                "prid2011": {"rank1": 79.4, "rank5": 94.4, "rank20": 99.3}}
COLUMNS = ("split", "method", "variant", *METRICS, "num_queries", "num_gallery", "epochs", "steps", "how",
           "train_s", "eval_s", "ranking")
RUN_FILE = "run.json"
# what may differ from the run.json of an earlier call: bookkeeping, the split (one per run) and eval
ALLOWED_CHANGES = RESUMABLE_CHANGES | {"data.split"} | {f"eval.{f.name}" for f in dataclasses.fields(EvalConfig)}


def dataset_digest(manifest: Manifest) -> str:
    """SHA-256 of what a split means: every tracklet's id, pid, camera and length, and every split's
    train/query/gallery ids (not where the files are: a moved dataset is the same dataset)."""
    h = hashlib.sha256()
    for arr in (manifest.tracklet_ids, manifest.pids, manifest.camids, manifest.lengths):
        h.update(np.ascontiguousarray(arr, dtype=np.int64).tobytes())
    h.update(json.dumps([dataclasses.asdict(s) for s in manifest.splits]).encode())
    return h.hexdigest()


def check_dataset(manifest: Manifest, splits: Sequence[int] | None = None) -> list[int]:
    """The split indices to run (default: all); refuses what the ten-split protocol cannot use: a
    dataset that is not two-camera, one with a single split, an index out of range or repeated."""
    if manifest.protocol != "two_camera":
        raise ValueError(f"{manifest.root / 'meta.json'}: protocol {manifest.protocol!r}; the ten-split protocol is "
                         f"for two-camera datasets (iLIDS-VID, PRID2011, the synthetic preset pairs): train and "
                         f"evaluate this one with `reidkit train` / `reidkit evaluate`")
    n = len(manifest.splits)
    if n < 2:
        raise ValueError(f"{manifest.root / 'splits.json'} has {n} split only; the ten-split protocol trains one "
                         f"model per split and averages them, so it needs at least 2 (iLIDS-VID and PRID2011 have "
                         f"10): use `reidkit train` for a single split")
    chosen = list(range(n)) if splits is None else [int(s) for s in splits]
    bad = [s for s in chosen if not 0 <= s < n]
    if not chosen or bad or len(set(chosen)) != len(chosen):
        raise ValueError(f"splits {chosen}: expected distinct indices in 0..{n - 1} "
                         f"({manifest.root / 'splits.json'} has {n} splits)")
    return chosen


def _claim(out_dir: Path, config: Config, manifest: Manifest) -> None:
    """Refuse an ``out_dir`` that holds anything but a ten-split run of this dataset and config;
    then record them in ``run.json``."""
    record = {"kind": "reidkit ten-split", "dataset": {"name": manifest.name, "path": str(manifest.root),
                                                       "digest": dataset_digest(manifest),
                                                       "fingerprint": manifest.fingerprint,
                                                       "num_splits": len(manifest.splits)},
              "config": config.to_dict()}
    path = out_dir / RUN_FILE
    if path.is_file():
        earlier = read_run_record(path, record["kind"], "a ten-split run")
        old = earlier.get("dataset") or {}
        other_files = old.get("fingerprint") and manifest.fingerprint and old["fingerprint"] != manifest.fingerprint
        if old.get("digest") != record["dataset"]["digest"] or other_files:
            raise RunExistsError(f"{out_dir} holds a ten-split run on another dataset ({old.get('name')} at "
                                 f"{old.get('path')}: other tracklets, splits or manifest files than {manifest.root}): "
                                 f"choose another --out")
        changes = config_changes(earlier.get("config", {}), record["config"], allowed=ALLOWED_CHANGES)
        if changes:
            raise RunExistsError(f"{out_dir} holds a ten-split run of other settings: " + "; ".join(changes)
                                 + " (only train.epochs and eval.* may change between calls): choose another --out")
    elif folder_entries(out_dir):
        raise RunExistsError(f"{out_dir} is not empty and holds no ten-split run ({RUN_FILE}): choose another --out")
    write_json(path, record, indent=1)


def _kept_metrics(path: Path, state: dict, eval_cfg: EvalConfig) -> dict | None:
    """The metrics an earlier call wrote for exactly this finished run and these eval settings, else None."""
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    final_loss = state["history"][-1]["loss"] if state.get("history") else None
    same = (metrics.get("epochs") == int(state["epoch"]) and metrics.get("steps") == int(state["step"])
            and metrics.get("final_loss") == final_loss and metrics.get("eval") == dataclasses.asdict(eval_cfg))
    return metrics if same else None


def run_splits(config: Config, out_dir, splits: Sequence[int] | None = None, progress: bool = True,
               callbacks=()) -> dict | None:
    """Train and evaluate one model per split of ``config.data.dataset`` (see the module docstring).

    Returns the summary (also in ``out_dir/summary.json``), whose ``rows`` are the per-split rows
    of ``splits.csv``; None if a callback stopped a split's training early (``trainer.should_stop``):
    rerun to resume it. ``callbacks`` go to every split's ``Trainer``.
    """
    out_dir = Path(out_dir)
    if not config.data.dataset:
        raise ValueError("data.dataset is not set: pass --dataset DIR")
    manifest = Manifest.load(config.data.dataset)
    chosen = check_dataset(manifest, splits)
    out_dir.mkdir(parents=True, exist_ok=True)
    _claim(out_dir, config, manifest)  # before the frame cache: decoding may take minutes
    cache = FrameCache.build(manifest, config.model.height, config.model.width, config.data.cache_dir,
                             progress=progress)
    device = resolve_device(config.train.device)
    method = METHOD_NAMES[config.model.variant]
    rows, cmcs = [], []

    def log(msg):
        if progress:
            print(msg, flush=True)

    for n, i in enumerate(chosen, start=1):
        run_dir = out_dir / f"split_{i}"
        run_config = Config.from_dict(config.to_dict(), settings={"data.split": i, "train.out_dir": str(run_dir)})
        metrics_path = run_dir / "metrics.json"
        start = time.perf_counter()

        def score(model, run, i=i, run_config=run_config, metrics_path=metrics_path):
            """Split i's metrics.json: the model on its own test half (none for a stopped run)."""
            if run.stopped:  # a callback stopped it: no metrics for half a run
                return None
            tick = time.perf_counter()
            result = evaluate(model, manifest, cache, run_config.eval, split=i, device=device, progress=progress)
            test_pids = sorted({int(p) for p in manifest.pids[manifest.positions(manifest.split(i).query)]})
            metrics = {"split": i, "variant": config.model.variant, "epochs": run_config.train.epochs,
                       "steps": run.steps, "final_loss": run.history[-1]["loss"], "test_pids": test_pids,
                       "eval": dataclasses.asdict(run_config.eval), "train_s": round(run.train_s, 1),
                       "eval_s": round(time.perf_counter() - tick, 1), **result.to_dict(per_query=False)}
            write_json(metrics_path, metrics, indent=1)
            return metrics

        # eval settings may change: evaluate again; a run of other settings or data is refused
        run = train_and_score(run_config, manifest, cache, score, allowed=ALLOWED_CHANGES, device=device,
                              callbacks=callbacks,
                              reuse=lambda state: _kept_metrics(metrics_path, state, run_config.eval))  # noqa: B023
        if run.stopped:
            log(f"[ten-split] split {i}: stopped at epoch {run.epochs} of {run_config.train.epochs}; "
                f"run again to resume it")
            return None
        metrics, how = run.scores, run.how
        rows.append({"split": i, "method": method, "variant": config.model.variant, "trained": True,
                     **{m: round(float(metrics[m]), 2) for m in METRICS},
                     "num_queries": metrics["num_queries"], "num_gallery": metrics["num_gallery"],
                     "epochs": metrics["epochs"], "steps": metrics["steps"], "how": how,
                     "train_s": metrics["train_s"], "eval_s": metrics["eval_s"],
                     "ranking": metrics["ranking"]})
        cmcs.append(np.asarray(metrics["cmc"], dtype=np.float64))
        log(f"[ten-split] split {i} ({n}/{len(chosen)}): rank-1 {metrics['rank1']:.1f} rank-5 {metrics['rank5']:.1f} "
            f"rank-20 {metrics['rank20']:.1f} mAP {metrics['mAP']:.1f} ({how}, {time.perf_counter() - start:.0f}s)")

    return write_summary(rows, cmcs, out_dir, config, manifest)


def write_summary(rows: list[dict], cmcs: list[np.ndarray], out_dir, config: Config, manifest: Manifest) -> dict:
    """splits.csv, summary.json and summary.md of the per-split ``rows`` (as ``run_splits`` makes them)."""
    out_dir = Path(out_dir)
    write_csv(out_dir / "splits.csv", COLUMNS, [{k: r[k] for k in COLUMNS} for r in rows])
    summary = summarize(rows, over="split", extra=())[0]  # the paper's numbers: paper_table3
    splits = summary["splits"]
    source = str(manifest.meta.get("source", ""))
    convention = describe_convention("two_camera", config.eval.convention, len(splits))
    width = min(len(c) for c in cmcs)  # ranks up to the smallest gallery
    summary.update({
        "dataset": manifest.name, "source": source, "num_splits_in_dataset": len(manifest.splits),
        "convention": convention, "ranking": rows[0]["ranking"],
        "std": "sample standard deviation over the splits (n − 1), as reidkit.ablate.summarize",
        "cmc": [round(float(v), 4) for v in np.mean([c[:width] for c in cmcs], axis=0)],
        "paper_table3": PAPER_TABLE3.get(source), "rows": rows})
    write_json(out_dir / "summary.json", summary, indent=1)

    m, t = config.model, config.train
    steps = max(r["steps"] for r in rows)
    lines = [
        f"# Ten-split protocol (Table 3 style) on {manifest.name}",
        "",
        f"- Protocol (Sec. 4): {convention}. One model per split, trained on the split's train persons and "
        f"evaluated on its test persons only; each cell is the mean"
        f"{' ± the standard deviation (n − 1)' if len(splits) > 2 else ''} over the splits, min–max in brackets.",
        f"- Splits: {', '.join(map(str, splits))} of the {len(manifest.splits)} in "
        f"{manifest.root / 'splits.json'}.",
        f"- Ranking: {rows[0]['ranking']}.",
        f"- Model: {METHOD_NAMES[m.variant]} ({m.variant}), {m.cnn} (width × {m.width_mult}, norm {m.norm}), "
        f"{m.height}×{m.width} frames, T = {m.seq_len}; per split {t.epochs} epoch{'s' if t.epochs != 1 else ''}, "
        f"{steps} steps of P={t.P} × K={t.K} clips, {t.optimizer} lr {t.lr}, seed {t.seed}, from the config's "
        f"initialisation.",
        "",
        "| Method | Splits | Rank@1 | Rank@5 | Rank@10 | Rank@20 | mAP |",
        "|---|---|---|---|---|---|---|",
        f"| {summary['method']} | {len(splits)} | "
        + " | ".join(format_cell(summary, k, over="split") for k in METRICS) + " |",
    ]
    paper = PAPER_TABLE3.get(source)
    if paper:
        lines.append("| Zhou et al., Table 3 | 10 | " + " | ".join(
            f"{paper[k]:.1f}" if k in paper else "—" for k in METRICS) + " |")
    lines += ["", "Per split:", "", "| Split | Rank@1 | Rank@5 | Rank@10 | Rank@20 | mAP | Queries | Gallery |",
              "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['split']} | " + " | ".join(f"{r[k]:.1f}" for k in METRICS)
              + f" | {r['num_queries']} | {r['num_gallery']} |" for r in rows]
    if paper:
        start = (f"these models start from `{t.init}` (train.init)" if t.init else
                 "these models start from the config's initialisation (fine-tune with train.init=CHECKPOINT or --init)")
        lines += ["", f"The paper's row fine-tunes a model trained on MARS (Sec. 4.4); {start}, so compare the trend, "
                      "not the digits."]
    write_text(out_dir / "summary.md", "\n".join(lines) + "\n")
    return summary
