"""The ``reidkit`` command line: pretrain, train, evaluate, ablate, ten-split, stats, prepare, report, convert-caffemodel.

    reidkit pretrain --config configs/cpu.yaml --out runs/pretrain              (the kit's ImageNet)
    reidkit train --config configs/cpu.yaml --dataset data/synthetic_small [train.lr=3e-4 ...]
    reidkit evaluate --checkpoint runs/cpu/last.pt --dataset data/synthetic_small
    reidkit ablate --config configs/cpu.yaml --dataset data/synthetic_small --out runs/ablation
    reidkit ten-split --config configs/cpu.yaml --dataset data/synthetic_pairs --out runs/ten_split
    reidkit stats data/synthetic_small
    reidkit prepare synthetic --out data/synthetic_small --preset small     (= python -m data_prep)
    reidkit report --profile smoke                                          (executed notebooks)
    reidkit convert-caffemodel bvlc_reference_caffenet.caffemodel weights/caffenet_imagenet.pt

Every option is in ``reidkit CMD --help``. A user error (a bad config value, a missing file, an
unreadable manifest, a full disk, an output folder another command is writing) prints one line
``reidkit: error: ...`` and exits with status 2; set ``REIDKIT_TRACEBACK=1`` to see the full
traceback instead.

train, ablate and ten-split claim their output folder (``reidkit.files.hold_folder``) before
any work: a second command on the same folder is refused while the first runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import sys
from pathlib import Path

from reidkit.pretrain import POPULATION_SEED

OVERRIDES_HELP = ("config overrides section.key=value, e.g. train.lr=3e-4 train.epochs=5 model.dropout=0.3 "
                  "(see configs/default.yaml for every key)")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _int_list(what: str, negative: bool):
    """An argparse type: distinct integers separated by commas (``negative``: may be < 0) → a list."""
    def parse(text: str) -> list[int]:
        parts = [p.strip() for p in text.split(",")]
        digits = all((p.lstrip("-") if negative else p).isdigit() for p in parts)
        if not digits or len(set(map(int, parts))) != len(parts):
            raise argparse.ArgumentTypeError(f"expected distinct {what} separated by commas, e.g. 0,1,2; got {text!r}")
        return [int(p) for p in parts]
    return parse


def _override(text: str) -> str:
    if "=" not in text or text.startswith("="):
        raise argparse.ArgumentTypeError(f"expected section.key=value, got {text!r}")
    return text


def _add_runs_options(p: argparse.ArgumentParser, run: str, dataset: str) -> None:
    """--config, --dataset, --out and --device of the commands that train one run per ``run``
    (ablate: per variant and seed, ten-split: per split) into sub-folders of OUT."""
    p.add_argument("--config", type=Path, default=None,
                   help=f"YAML config shared by all {run}s (e.g. configs/cpu.yaml)")
    p.add_argument("--dataset", required=True, help=dataset)
    p.add_argument("--out", required=True, help=f"output folder (one sub-folder per {run})")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), help="train.device")


def _add_overrides(p: argparse.ArgumentParser, func, quiet: str | None = None) -> None:
    """The end of a training command's options: --quiet (its help ``quiet``, if given), the
    key=value overrides, and the function that runs it."""
    if quiet is not None:
        p.add_argument("--quiet", action="store_true", help=quiet)
    p.add_argument("overrides", nargs="*", type=_override, metavar="key=value", help=OVERRIDES_HELP)
    p.set_defaults(func=func)


def _load_config(args):
    """--config, then the command's options (--dataset, --variant, --out, --device), then key=value."""
    from reidkit.config import Config  # noqa: PLC0415

    settings = {"data.dataset": getattr(args, "dataset", None), "model.variant": getattr(args, "variant", None),
                "model.pretrained": getattr(args, "pretrained", None),
                "train.out_dir": args.out if args.command == "train" else None,
                "train.device": getattr(args, "device", None), "train.init": getattr(args, "init", None)}
    return Config.from_yaml(args.config, list(args.overrides), settings=settings)


# ---------------------------------------------------------------------- subcommands
def _main_process() -> bool:
    """Not a torchrun worker of rank > 0 (rank 0 alone claims the output folder)."""
    return os.environ.get("RANK", "0") == "0"


def cmd_train(args) -> int:
    from reidkit.files import hold_folder  # noqa: PLC0415

    config = _load_config(args)
    if not _main_process():
        return _train(args, config)
    with hold_folder(config.train.out_dir, "reidkit train"):  # before any work: one command per run folder
        return _train(args, config)


def _train(args, config) -> int:
    from reidkit.models.caffenet import check_weights_file  # noqa: PLC0415
    from reidkit.train import Trainer, check_out_dir  # noqa: PLC0415

    check_out_dir(Path(config.train.out_dir), args.resume, args.force, config)  # before the frame cache is built
    if config.model.pretrained:  # likewise
        check_weights_file(config.model.pretrained)
    trainer = Trainer(config)
    if trainer.is_main:
        print(f"[train] {config.model.variant} on {config.data.dataset} → {config.train.out_dir} "
              f"({trainer.device}, {trainer.steps_per_epoch} steps/epoch × {config.train.epochs} epochs)")
    try:
        history = trainer.fit(resume=args.resume, force=args.force)
    finally:
        trainer.close()
    if trainer.is_main and history:
        last = history[-1]
        print(f"[train] done: epoch {last['epoch']}, loss {last['loss']:.4f}; checkpoint "
              f"{Path(config.train.out_dir) / 'last.pt'}, history {Path(config.train.out_dir) / 'history.csv'}")
    return 0


def cmd_pretrain(args) -> int:
    from reidkit.config import Config  # noqa: PLC0415
    from reidkit.pretrain import population, pretrain  # noqa: PLC0415

    config = Config.from_yaml(args.config, list(args.overrides), settings={"train.device": args.device})
    out = Path(args.out)
    people = population(args.population or out / "population", preset=args.preset, seed=args.seed)
    print(f"[pretrain] cnn on {people} ({args.preset} preset, seed {args.seed}) → {out}")
    weights = pretrain(config, people, out, progress=config.train.progress, force=args.force)
    print(f"[pretrain] done: frame CNN in {weights}; fine-tune any variant from it with --pretrained {weights}")
    return 0


def _check_result_path(out: Path, checkpoint: Path) -> None:
    """``evaluate --out`` may only replace an earlier result of ``reidkit evaluate``, never the
    checkpoint or any other file."""
    if not out.exists():
        return
    if out.resolve() == checkpoint.resolve():
        raise ValueError(f"--out {out} is the checkpoint being evaluated: refusing to overwrite it")
    try:
        previous = json.loads(out.read_text(encoding="utf-8"))
        ours = isinstance(previous, dict) and {"checkpoint", "rank1", "mAP"} <= set(previous)
    except (OSError, UnicodeDecodeError, ValueError):
        ours = False
    if not ours:
        raise ValueError(f"--out {out} exists and is not a result of `reidkit evaluate`: refusing to overwrite it")


def _check_trained_on(checkpoint: Path, state: dict, manifest, explicit: bool) -> None:
    """The checkpoint records the dataset it was trained on (``train.dataset_record``): evaluating on
    other data found at the recorded path is refused; on a ``--dataset`` the user named, it is said."""
    saved = state.get("dataset") or {}
    if not saved.get("fingerprint") or saved["fingerprint"] == manifest.fingerprint:
        return
    if not explicit:
        raise ValueError(f"{checkpoint} was trained on {saved.get('name')} at {saved.get('path')}, but the manifest "
                         f"there has changed since (regenerated or re-converted): its test persons may be ones "
                         f"the model trained on. Pass --dataset {manifest.root} to evaluate on it anyway")
    print(f"[evaluate] note: {manifest.root} is not the dataset {checkpoint} was trained on ({saved.get('name')} "
          f"at {saved.get('path')})", file=sys.stderr)


def _result_bytes(manifest, split: int, conventions: int) -> int:
    """A generous size of ``evaluate --out``'s JSON: per query, 50 ranked entries of 4 values each."""
    queries = sum(len(s.query) for s in manifest.splits) if manifest.protocol == "two_camera" else \
        len(manifest.split(split).query)
    return conventions * queries * 50 * 4 * 40 + (1 << 20)


def cmd_evaluate(args) -> int:
    from reidkit.data import FrameCache, Manifest  # noqa: PLC0415
    import numpy as np  # noqa: PLC0415

    from reidkit.evaluate import evaluate, evaluate_features, evaluation_positions, extract_features  # noqa: PLC0415
    from reidkit.checkpoint import load_checkpoint, load_model  # noqa: PLC0415
    from reidkit.files import check_free_space, write_json  # noqa: PLC0415
    from reidkit.train import resolve_device  # noqa: PLC0415

    if args.out:
        _check_result_path(Path(args.out), Path(args.checkpoint))  # before minutes of evaluation
    device = resolve_device(args.device or "auto")
    state = load_checkpoint(args.checkpoint)
    model, config = load_model(args.checkpoint, device, state)
    dataset = args.dataset or config.data.dataset
    if not dataset:
        raise ValueError("no dataset: pass --dataset DIR (the checkpoint does not name one)")
    manifest = Manifest.load(dataset)
    _check_trained_on(Path(args.checkpoint), state, manifest, explicit=bool(args.dataset))
    split = args.split if args.split is not None else config.data.split  # the split the model did not train on
    if args.out:  # the result must not be lost to a full disk after the evaluation
        check_free_space(Path(args.out).parent, _result_bytes(manifest, split, 2 if args.convention == "both" else 1),
                         f"the result --out {args.out}")
    cache = FrameCache.build(manifest, config.model.height, config.model.width,
                             args.cache_dir or config.data.cache_dir, progress=not args.quiet)
    e = config.eval
    e = dataclasses.replace(e, convention=args.convention or e.convention, exact=args.exact or e.exact,
                            rerank_top_k=args.rerank_top_k if args.rerank_top_k is not None else e.rerank_top_k,
                            batch_size=args.batch_size or e.batch_size)
    if args.convention != "both":
        result = evaluate(model, manifest, cache, e, split=split, device=device, progress=not args.quiet)
        print(result.summary())
        record = {"checkpoint": str(args.checkpoint), "variant": config.model.variant, **result.to_dict()}
    else:  # the features of every test tracklet once (the minutes at MARS scale), then each convention's ranking
        positions = np.union1d(evaluation_positions(manifest, split, "common"),
                               evaluation_positions(manifest, split, "official"))
        feats = extract_features(model, manifest, cache, positions, None, e.batch_size, device, not args.quiet)
        record = {"checkpoint": str(args.checkpoint), "variant": config.model.variant}
        for convention in ("common", "official"):
            result = evaluate_features(model, manifest, feats, dataclasses.replace(e, convention=convention),
                                       split=split, device=device, progress=not args.quiet)
            print(result.summary())
            record[convention] = result.to_dict()
    if args.out:
        write_json(args.out, record, indent=1)
        print(f"[evaluate] wrote {args.out}")
    return 0


def cmd_verify_cache(args) -> int:
    from reidkit.data import FrameCache  # noqa: PLC0415

    files = []
    for p in args.paths:
        p = Path(p)
        found = sorted(p.glob("frames_*.npy")) if p.is_dir() else [p]
        if not found or not all(f.is_file() for f in found):
            raise FileNotFoundError(f"{p}: no frame cache (frames_HxW.npy) there")
        files += found
    damaged_any = False
    for f in files:
        damaged = FrameCache.verify(f, progress=not args.quiet)
        if not damaged:
            print(f"{f}: intact")
            continue
        damaged_any = True
        index = json.loads(f.with_suffix(".json").read_text())
        offsets, lengths, ids = index["offsets"], index["lengths"], index["tracklet_ids"]
        hit = sorted({ids[i] for a, b in damaged for i, (o, n) in enumerate(zip(offsets, lengths)) if o < b and o + n > a})
        ranges = ", ".join(f"{a}–{b - 1}" for a, b in damaged)
        print(f"{f}: DAMAGED frame rows {ranges} (tracklet ids {hit[:20]}{' …' if len(hit) > 20 else ''}); "
              f"delete it to have it rebuilt")
    return 1 if damaged_any else 0


def cmd_ablate(args) -> int:
    from reidkit.ablate import run_ablation  # noqa: PLC0415
    from reidkit.files import hold_folder  # noqa: PLC0415
    from reidkit.models import VARIANTS  # noqa: PLC0415

    config = _load_config(args)
    variants = tuple(v.strip() for v in args.variants.split(",") if v.strip()) if args.variants else VARIANTS
    bad = [v for v in variants if v not in VARIANTS]
    if bad:
        raise ValueError(f"--variants: unknown variant {bad[0]!r} (expected some of {', '.join(VARIANTS)})")
    baselines = () if args.no_baselines else ("cnn", "all")
    with hold_folder(args.out, "reidkit ablate"):
        run_ablation(config, args.out, variants=variants, baselines=baselines, seeds=args.seeds,
                     progress=not args.quiet, on_curves=_draw_cmc if args.plot else None)
    print((Path(args.out) / "ablation.md").read_text())
    return 0


def cmd_ten_split(args) -> int:
    from reidkit.files import hold_folder  # noqa: PLC0415
    from reidkit.protocol import run_splits  # noqa: PLC0415

    config = _load_config(args)
    with hold_folder(args.out, "reidkit ten-split"):
        summary = run_splits(config, args.out, splits=args.splits, progress=not args.quiet)
    if summary is None:
        return 1  # a split stopped early (it resumes on the next call)
    print((Path(args.out) / "summary.md").read_text())
    return 0


def _draw_cmc(curves: dict, out_dir: Path) -> None:
    """``ablate --plot``: Fig. 9 as OUT/cmc.png (matplotlib is a notebook extra, imported here)."""
    from reidkit.viz import cmc_curves  # noqa: PLC0415

    cmc_curves(curves, title="CMC (ablation)").savefig(out_dir / "cmc.png", dpi=120)


def _mean_bgr(text: str) -> tuple[float, float, float]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or not all(math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(f"expected three numbers B,G,R, e.g. 104,117,123; got {text!r}")
    return values


def cmd_convert_caffemodel(args) -> int:
    from reidkit.caffemodel import convert_caffemodel  # noqa: PLC0415

    meta = convert_caffemodel(args.src, args.out, mean_bgr=args.mean, force=args.force)
    mean = ",".join(f"{m:g}" for m in meta["mean_bgr"])
    print(f"[convert-caffemodel] {args.src} ({meta['format']}, sha256 {meta['sha256'][:12]}…) → {args.out}: "
          f"conv1-conv5, fc6, fc7 (fc_dim {meta['fc_dim']}); dropped {', '.join(meta['dropped']) or 'nothing'}; "
          f"conv1 now takes ImageNet-normalised RGB (folded from BGR 0-255 minus mean {mean})")
    return 0


def _passthrough(module: str, name: str):
    """Hand ``argv`` to the module's own ``main``, which names itself ``reidkit NAME`` in usage lines."""
    def run(argv: list[str]) -> int:
        import importlib  # noqa: PLC0415

        main_ = importlib.import_module(module).main
        return (main_(argv, prog=f"reidkit {name}") if name != "report" else main_(argv)) or 0

    return run


# subcommands whose own parser lives elsewhere: everything after the name is handed over as is
PASSTHROUGH = {
    "stats": ("reidkit.stats", "Table 1 statistics of a manifest (reidkit stats DATASET [--json]); "
                               "see `reidkit stats --help`"),
    "prepare": ("data_prep.__main__", "convert a raw dataset or generate the synthetic benchmark "
                                      "(= python -m data_prep); see `reidkit prepare --help`"),
    "report": ("reidkit.report", "execute the lesson notebooks and write an HTML report "
                                 "(needs the notebook extras); see `reidkit report --help`"),
}


def build_parser() -> argparse.ArgumentParser:
    from reidkit import __version__  # noqa: PLC0415
    from reidkit.caffemodel import CAFFE_MEAN_BGR  # noqa: PLC0415

    parser = argparse.ArgumentParser(
        prog="reidkit",
        description="Video person re-identification with joint spatial and temporal RNNs "
                    "(Zhou et al., CVPR 2017): train, evaluate, ablate, ten-split.",
        epilog="Run `reidkit COMMAND --help` for a command's options. "
               "REIDKIT_TRACEBACK=1 shows full tracebacks on errors.")
    parser.add_argument("--version", action="version", version=f"reidkit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    from reidkit.models import VARIANTS  # noqa: PLC0415

    p = sub.add_parser("train", help="train one variant (checkpoints and history in --out)",
                       description="Train one model variant. Settings come from --config, then the "
                                   "options below, then key=value overrides (later wins).")
    p.add_argument("--config", type=Path, default=None,
                   help="YAML config (configs/default.yaml: the paper's 227×227 GPU setting; "
                        "configs/cpu.yaml: the CPU-sized setting; configs/smoke.yaml: seconds). "
                        "Default: the built-in defaults (= configs/default.yaml)")
    p.add_argument("--dataset", help="manifest folder (data.dataset)")
    p.add_argument("--variant", choices=VARIANTS, help="model.variant (Table 2 row)")
    p.add_argument("--out", help="output folder for checkpoints and history (train.out_dir)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), help="train.device")
    p.add_argument("--pretrained", metavar="PATH",
                   help="model.pretrained: a frame CNN to start from: OUT/cnn.pt of `reidkit pretrain`, any run's "
                        "checkpoint, or ImageNet CaffeNet converted by `reidkit convert-caffemodel` (model.norm=lrn); "
                        "the convolutions must fit, fc6/fc7 of another width start fresh")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt (exact at epoch boundaries)")
    p.add_argument("--init", metavar="CHECKPOINT",
                   help="start from another run's weights (train.init): a fresh optimiser and schedule, not a "
                        "resume; e.g. a MARS model fine-tuned on iLIDS-VID (Table 3)")
    p.add_argument("--force", action="store_true",
                   help="replace the run already in OUT (without --resume), or resume although the config changed")
    _add_overrides(p, cmd_train)

    p = sub.add_parser("pretrain", help="pretrain the frame CNN on a synthetic population of other people",
                       description="The kit's ImageNet: generate (once) a synthetic population that shares no "
                                   "identity with the lessons' datasets, train the cnn variant on it, and write its "
                                   "frame CNN to OUT/cnn.pt for --pretrained / model.pretrained.")
    p.add_argument("--out", required=True, help="run folder (checkpoints, history, cnn.pt)")
    p.add_argument("--config", help="YAML config of the frame CNN and the training (e.g. configs/cpu.yaml)")
    p.add_argument("--population", type=Path, help="the population's dataset folder (default OUT/population)")
    p.add_argument("--preset", default="pretrain", choices=("pretrain", "small", "medium", "large"),
                   help="synthetic preset of the population (default pretrain: 150 people; large: MARS-sized)")
    p.add_argument("--seed", type=int, default=POPULATION_SEED,
                   help=f"generator seed of the population (default {POPULATION_SEED}; the lessons' datasets use 0)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), help="train.device")
    p.add_argument("--force", action="store_true", help="replace another run already in OUT")
    _add_overrides(p, cmd_pretrain)

    p = sub.add_parser("evaluate", help="CMC/mAP of a checkpoint on a dataset",
                       description="Evaluate a training checkpoint; defaults come from the checkpoint's config.")
    p.add_argument("--checkpoint", required=True, type=Path, help="a .pt written by `reidkit train`")
    p.add_argument("--dataset", help="manifest folder (default: the one the checkpoint was trained on)")
    p.add_argument("--convention", choices=("common", "official", "both"),
                   help="MARS protocol: common (gallery without queries, what other toolkits report), "
                        "official (MARS MATLAB evaluation) or both (features extracted once); default: the "
                        "checkpoint's eval.convention")
    p.add_argument("--rerank-top-k", type=_positive_int, metavar="K",
                   help="M re-scores the top-K of the feature ranking (default: eval.rerank_top_k)")
    p.add_argument("--exact", action="store_true", help="score every query × gallery pair with M (small galleries)")
    p.add_argument("--split", type=int, default=None,
                   help="protocol split index (default: the checkpoint's data.split, i.e. the split whose "
                        "test persons the model never saw during training)")
    p.add_argument("--batch-size", type=_positive_int, help="clips per forward pass (default: eval.batch_size)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), help="default auto")
    p.add_argument("--cache-dir", help="frame cache folder (default: DATASET/.cache)")
    p.add_argument("--out", help="write the full result (metrics, CMC, per-query rankings) to this JSON file")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("ablate", help="Table 2: train and evaluate the six variants",
                       description="Train and evaluate every variant (once per --seeds seed), plus floors: untrained "
                                   "CNN and ALL, and with model.pretrained the pretrained CNN alone; writes "
                                   "OUT/ablation.csv, summary.csv, ablation.md (the paper's conclusions judged by a 95 % "
                                   "bootstrap interval), cmc.json, hits.json, learning_curves.json (with data.val_ids "
                                   "and train.eval_every) and conclusions.json. Run "
                                   "again to resume: finished runs are kept, an interrupted one continues; only "
                                   "train.epochs (growing) and eval.* may change, other settings or another dataset "
                                   "are refused (OUT/run.json records them).")
    _add_runs_options(p, "variant", "manifest folder")
    p.add_argument("--variants", help=f"comma-separated subset of {','.join(VARIANTS)} (default: all six)")
    p.add_argument("--seeds", type=_int_list("integers", negative=True),
                   help="comma-separated training seeds, e.g. 0,1,2: every variant is trained once per seed "
                        "and the table shows the spread (default: train.seed only)")
    p.add_argument("--no-baselines", action="store_true", help="skip the untrained CNN/ALL rows")
    p.add_argument("--plot", action="store_true", help="also draw OUT/cmc.png (needs matplotlib)")
    _add_overrides(p, cmd_ablate, quiet="no progress bars or per-variant lines")

    p = sub.add_parser("ten-split",
                       help="Table 3: one model per split of iLIDS-VID/PRID2011, mean ± std (n − 1) over splits",
                       description="The iLIDS-VID / PRID2011 protocol (Sec. 4): for each split i of a two-camera "
                                   "dataset, train the config with data.split=i into OUT/split_<i>/ and evaluate it on "
                                   "split i's test persons; writes OUT/split_<i>/metrics.json, splits.csv, "
                                   "summary.json and summary.md (mean ± std (n − 1) over the splits). Run again to "
                                   "resume: finished splits are kept, an interrupted one continues from its last.pt.")
    _add_runs_options(p, "split", "manifest folder of a two-camera dataset with several splits")
    p.add_argument("--splits", type=_int_list("split indices", negative=False),
                   help="comma-separated split indices, e.g. 0,1,2 (default: every split in the dataset's "
                        "splits.json)")
    p.add_argument("--variant", choices=VARIANTS, help="model.variant (default: the config's)")
    p.add_argument("--init", metavar="CHECKPOINT",
                   help="start every split from this run's weights (train.init), e.g. a MARS model, as Table 3 does")
    _add_overrides(p, cmd_ten_split, quiet="no progress bars or per-split lines")

    p = sub.add_parser("verify-cache", help="check frame caches against the checksums written when they were built",
                       description="Re-hash frame caches (DATASET/.cache/frames_HxW.npy, or a folder of them) and "
                                   "compare with the checksums recorded at build time; exit status 1 if any is damaged. "
                                   "(Training rebuilds a cache written to since its build by itself.) A frame file "
                                   "changed after the build with its modification time set back is not seen: delete "
                                   "the cache to have it rebuilt from the files.")
    p.add_argument("paths", nargs="+", help="cache .npy files or folders holding them (e.g. DATASET/.cache)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_verify_cache)

    p = sub.add_parser("convert-caffemodel", help="convert BVLC's ImageNet CaffeNet weights for model.pretrained",
                       description="Read bvlc_reference_caffenet.caffemodel (Caffe's binary NetParameter, old or "
                                   "current layout), check it is CaffeNet, and write conv1-conv5, fc6, fc7 (fc8 "
                                   "dropped) for CaffeNet.load_pretrained. Caffe's input convention (BGR, 0-255, "
                                   "minus a per-channel mean) is folded into conv1, so the weights take reidkit's "
                                   "ImageNet-normalised RGB frames.")
    p.add_argument("src", type=Path, help="the .caffemodel file")
    p.add_argument("out", type=Path, help="the .pt file to write (e.g. weights/caffenet_imagenet.pt)")
    p.add_argument("--mean", type=_mean_bgr, default=CAFFE_MEAN_BGR, metavar="B,G,R",
                   help="the per-channel mean Caffe subtracted, in B,G,R order on the 0-255 scale "
                        "(default 104,117,123)")
    p.add_argument("--force", action="store_true",
                   help="replace OUT although it is not an earlier output of convert-caffemodel")
    p.set_defaults(func=cmd_convert_caffemodel)

    for name, (_, text) in PASSTHROUGH.items():
        sub.add_parser(name, help=text, add_help=False, description=text)
    return parser


def _user_errors() -> tuple[type[BaseException], ...]:
    from reidkit.checkpoint import CheckpointError  # noqa: PLC0415
    from reidkit.config import ConfigError  # noqa: PLC0415
    from reidkit.data import ManifestError  # noqa: PLC0415
    from reidkit.files import DiskFullError, FolderBusyError  # noqa: PLC0415
    from reidkit.train import RunExistsError, TrainingDiverged  # noqa: PLC0415

    errors = [ConfigError, CheckpointError, ManifestError, RunExistsError, TrainingDiverged, ValueError,
              FileNotFoundError, KeyError, IndexError, DiskFullError, FolderBusyError]
    return tuple(errors)


_OVERRIDE = re.compile(r"^(data|model|train|eval)\.\w+=")


def _overrides_last(argv: list[str]) -> list[str]:
    """``key=value`` overrides may come before or between options (``train.lr=0.01 --resume``):
    argparse takes positionals only after the options, so move them to the end."""
    overrides = [a for a in argv[1:] if _OVERRIDE.match(a)]
    return argv[:1] + [a for a in argv[1:] if not _OVERRIDE.match(a)] + overrides


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = os.environ.get("REIDKIT_TRACEBACK", "") not in ("", "0")
    try:
        if argv and argv[0] in PASSTHROUGH:
            module, _ = PASSTHROUGH[argv[0]]
            return int(_passthrough(module, argv[0])(argv[1:]) or 0)
        args = build_parser().parse_args(_overrides_last(argv))
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("reidkit: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # user errors: one line, no traceback
        from reidkit.files import DiskFullError, is_disk_full  # noqa: PLC0415

        if not debug and is_disk_full(e) and not isinstance(e, DiskFullError):  # a write not through files.py
            where = f" writing {e.filename}" if getattr(e, "filename", None) else ""
            print(f"reidkit: error: out of disk space{where} ({type(e).__name__}: {str(e).splitlines()[0]})",
                  file=sys.stderr)
            return 2
        if debug or not isinstance(e, _user_errors()):
            raise
        message = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
        print(f"reidkit: error: {message.splitlines()[0] if message else type(e).__name__}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
