"""``python -m data_prep mars|ilidsvid|prid2011|synthetic ...``: raw dataset folder → manifest.

For the real datasets no image is copied: ``--out`` receives ``tracklets.csv``, ``splits.json``
and ``meta.json`` whose frame paths point back into ``--src`` through relative paths (they may
start with ``..``). Keep the two folders where they are relative to each other, or rerun.
See data_prep/README.md for the layouts and the manifest format.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from reidkit.data.manifest import ManifestError
from reidkit.files import DiskFullError

from .common import CHECK_IMAGES, summary

CHECK_HELP = ("which frames to decode with PIL to catch unreadable files: 'ends' (default) the first "
              "and last frame of every tracklet, 'all' every frame (slow on MARS), 'none'")


def _parser(prog: str = "python -m data_prep") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Turn a raw re-id dataset folder into a reidkit manifest "
                    "(tracklets.csv, splits.json, meta.json). Real datasets are not copied: the "
                    "manifest's frame paths point into --src relative to --out.")
    sub = parser.add_subparsers(dest="dataset", required=True, metavar="DATASET")

    def real(name: str, help_: str, src_help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_)
        p.add_argument("--src", type=Path, required=True, help=src_help)
        p.add_argument("--out", type=Path, required=True, help="dataset folder to write the manifest into")
        p.add_argument("--check-images", choices=CHECK_IMAGES, default="ends", help=CHECK_HELP)
        p.add_argument("--no-progress", action="store_true", help="no progress bars")
        return p

    real("mars", "MARS (one split: train / query_IDX / the rest of the test tracks)",
         "folder holding bbox_train/, bbox_test/ and info/")
    real("ilidsvid", "iLIDS-VID (ten splits from train_test_splits_ilidsvid.mat)",
         "folder holding i-LIDS-VID/ and 'train-test people splits/'")
    prid = real("prid2011", "PRID2011 multi-shot (178 persons, ten random 50/50 splits)",
                "folder holding prid_2011/ (with multi_shot/cam_a and cam_b)")
    prid.add_argument("--seed", type=int, default=0, help="seed of the ten random splits (default 0)")

    syn = sub.add_parser("synthetic", help="generate the procedural synthetic benchmark",
                         description="Render the synthetic benchmark (frames and manifest) into --out.")
    syn.add_argument("--out", type=Path, required=True, help="dataset folder to create")
    syn.add_argument("--preset", choices=("tiny", "small", "medium", "large", "pairs", "pairs_tiny", "pretrain"),
                     default="small",
                     help="size of the benchmark (default small); tiny..large follow the MARS protocol, pairs and "
                          "pairs_tiny the iLIDS-VID one (two cameras, one tracklet per person and camera, ten random "
                          "person splits; pairs_tiny three); pretrain: 150 training people to pretrain the frame "
                          "CNN on (reidkit pretrain)")
    syn.add_argument("--seed", type=int, default=0, help="generator seed (default 0)")
    syn.add_argument("--occlusion", default="default", metavar="LEVEL",
                     help="how often and how badly frames are degraded (occluders, bad crops, blur): "
                          "none, default, heavy, or a number in [0, 1] (none = 0, default = 0.5, "
                          "heavy = 1)")
    return parser


def main(argv: list[str] | None = None, prog: str = "python -m data_prep") -> int:
    args = _parser(prog).parse_args(argv)
    try:
        if args.dataset == "synthetic":
            from .synthetic import generate  # lazy: the renderer is not needed for real datasets

            generate(args.out, preset=args.preset, seed=args.seed, progress=True, occlusion=args.occlusion)
        else:
            progress = not args.no_progress
            if args.dataset == "mars":
                from .mars import prepare
                prepare(args.src, args.out, check_images=args.check_images, progress=progress)
            elif args.dataset == "ilidsvid":
                from .ilidsvid import prepare
                prepare(args.src, args.out, check_images=args.check_images, progress=progress)
            else:
                from .prid2011 import prepare
                prepare(args.src, args.out, seed=args.seed, check_images=args.check_images, progress=progress)
    except (ManifestError, DiskFullError) as err:  # DataPrepError (the raw layout) is a ManifestError too
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:  # the generator says what it left (nothing half-written)
        print(f"{err or 'interrupted'}", file=sys.stderr)
        return 130
    meta = json.loads((args.out / "meta.json").read_text(encoding="utf-8"))
    splits = json.loads((args.out / "splits.json").read_text(encoding="utf-8"))
    print(summary(args.out, meta, splits))
    return 0


if __name__ == "__main__":
    sys.exit(main())
