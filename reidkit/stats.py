"""Dataset statistics: the paper's Table 1 and the tracklet-length distribution.

Zhou et al. (CVPR 2017), Table 1 lists per dataset: #identities, #track-lets, #boxes,
#distractors, #cameras, #resolution, #detection and #evaluation. ``table1`` computes the same
rows from a manifest (plus junk tracklets and the split sizes, which the paper leaves out), so a
reader can check a prepared dataset against the paper's numbers.

    python -m reidkit.stats DATASET [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from .data import Manifest

__all__ = ["PAPER_TABLE1", "table1", "length_distribution", "format_table1", "format_length_distribution", "main"]

# How the boxes were obtained, per source (Table 1's "#detection" row).
DETECTION = {"mars": "algorithm", "ilidsvid": "hand", "prid2011": "hand", "synthetic": "rendered"}


# Zhou et al. (CVPR 2017), Table 1, as printed (rounded there: "21K" tracklets, "1M" boxes), in
# the shape of ``table1``'s dicts so the paper's columns sit beside any computed one.
PAPER_TABLE1 = [
    {"name": f"{name} (paper)", "identities": ids, "tracklets": tracklets, "boxes": boxes, "distractors": distractors,
     "junk": "—", "cameras": cameras, "resolution": resolution, "detection": detection, "evaluation": evaluation,
     "protocol": protocol, "num_splits": splits}
    for name, ids, tracklets, boxes, distractors, cameras, resolution, detection, evaluation, protocol, splits in (
        ("iLIDS-VID", "300", "600", "44K", "0", "2", [128, 64], "hand", "CMC", "two_camera", 10),
        ("PRID2011", "200", "400", "40K", "0", "2", [128, 64], "hand", "CMC", "two_camera", 10),
        ("MARS", "1,261", "21K", "1M", "3K", "6", [256, 128], "algorithm", "CMC & mAP", "mars", 1))
]


def _median_resolution(manifest: Manifest, sample: int) -> tuple[int, int] | None:
    """Median (H, W) of up to ``sample`` frames spread evenly over the dataset.

    Only image headers are read (``PIL.Image.open`` is lazy; ``.size`` does not decode pixels).
    Unreadable files are skipped; None when none could be read.
    """
    paths = [f for t in manifest.tracklets for f in t.frames]
    if not paths:
        return None
    picks = np.unique(np.linspace(0, len(paths) - 1, num=min(sample, len(paths))).astype(int))
    sizes = []
    for i in picks:
        try:
            with Image.open(manifest.root / paths[i]) as im:
                w, h = im.size
            sizes.append((h, w))
        except OSError:
            continue
    if not sizes:
        return None
    hs, ws = zip(*sizes)
    return int(np.median(hs)), int(np.median(ws))


def table1(manifest: Manifest, sample: int = 200) -> dict:
    """The paper's Table 1 for one dataset, as a dict.

    identities: distinct pids >= 1; tracklets: all rows (distractors and junk included, as MARS's
    20,715 does); boxes: all frames; distractors: pid 0 tracklets; junk: pid -1 tracklets;
    cameras: distinct camids; resolution: median [H, W] of ``sample`` source frames (headers
    only); detection: from ``meta["detection"]`` or the source; evaluation: "CMC & mAP" for the
    MARS protocol, "CMC" for two-camera datasets (one true match per query, so mAP = CMC).
    """
    pids = manifest.pids
    resolution = _median_resolution(manifest, sample)
    source = manifest.meta.get("source", "")
    split0 = manifest.splits[0]
    return {
        "name": manifest.name,
        "source": source,
        "identities": int(np.unique(pids[pids >= 1]).size),
        "tracklets": len(manifest.tracklets),
        "boxes": manifest.total_frames,
        "distractors": int((pids == 0).sum()),
        "junk": int((pids == -1).sum()),
        "cameras": int(np.unique(manifest.camids).size),
        "resolution": list(resolution) if resolution else None,
        "detection": manifest.meta.get("detection", DETECTION.get(source, "unknown")),
        "evaluation": "CMC & mAP" if manifest.protocol == "mars" else "CMC",
        "protocol": manifest.protocol,
        "num_splits": len(manifest.splits),
        "split0_sizes": {"train": len(split0.train), "query": len(split0.query),
                         "gallery": len(split0.gallery)},
    }


def length_distribution(manifest: Manifest, positions=None, bins: int = 20) -> dict:
    """Tracklet lengths (frames): min, max, mean, median, std, percentiles and a histogram.

    ``positions`` restricts it to some tracklets (e.g. a split's train set). The histogram has
    at most ``bins`` equal-width bins over [min, max + 1) (one bin per length when the range is
    narrower than that); ``histogram`` holds the counts, ``bin_edges`` one more edge than counts.
    """
    lengths = manifest.lengths if positions is None else manifest.lengths[np.asarray(positions, np.int64)]
    if lengths.size == 0:
        raise ValueError("no tracklets to describe")
    lo, hi = int(lengths.min()), int(lengths.max()) + 1
    edges = np.arange(lo, hi + 1) if hi - lo <= bins else np.linspace(lo, hi, bins + 1)
    counts, edges = np.histogram(lengths, bins=edges)
    pct = (5, 25, 50, 75, 95)
    return {
        "count": int(lengths.size),
        "min": int(lengths.min()),
        "max": int(lengths.max()),
        "mean": float(lengths.mean()),
        "median": float(np.median(lengths)),
        "std": float(lengths.std()),
        "percentiles": {str(p): float(v) for p, v in zip(pct, np.percentile(lengths, pct))},
        "histogram": counts.tolist(),
        "bin_edges": edges.tolist(),
    }


def _fmt(v) -> str:
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def format_table1(stats) -> str:
    """Markdown table of one ``table1`` dict or a list of them (one column per dataset).

    Resolution is written W x H, as the paper does (e.g. 64 x 128 for iLIDS-VID).
    """
    cols = [stats] if isinstance(stats, dict) else list(stats)
    rows = [("#identities", "identities"), ("#track-lets", "tracklets"), ("#boxes", "boxes"),
            ("#distractors", "distractors"), ("#junk", "junk"), ("#cameras", "cameras"),
            ("#resolution (W×H)", "resolution"), ("#detection", "detection"),
            ("#evaluation", "evaluation"), ("protocol (splits)", "protocol")]
    lines = ["| Datasets | " + " | ".join(c["name"] for c in cols) + " |",
             "|---|" + "---:|" * len(cols)]
    for label, key in rows:
        cells = []
        for c in cols:
            v = c.get(key)
            if key == "resolution":
                v = f"{v[1]} × {v[0]}" if v else "?"
            elif key == "protocol":
                v = f"{v} ({c.get('num_splits', '?')})"
            cells.append(_fmt(v))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_length_distribution(dist: dict) -> str:
    """A few plain-text lines: summary numbers and a text histogram."""
    p = dist["percentiles"]
    out = [f"tracklet length (frames), {dist['count']:,} tracklets: min {dist['min']}, "
           f"max {dist['max']}, mean {dist['mean']:.1f}, median {dist['median']:.0f}, "
           f"std {dist['std']:.1f}",
           "percentiles: " + ", ".join(f"p{k} {v:.0f}" for k, v in p.items())]
    peak = max(dist["histogram"]) or 1
    edges = dist["bin_edges"]
    for n, lo, hi in zip(dist["histogram"], edges[:-1], edges[1:]):
        out.append(f"  {lo:7.1f} - {hi:7.1f} | {'#' * round(40 * n / peak):<40} {n}")
    return "\n".join(out)


def main(argv=None, prog: str = "python -m reidkit.stats") -> int:
    parser = argparse.ArgumentParser(prog=prog,
                                     description="Table 1 statistics and tracklet lengths of a manifest.")
    parser.add_argument("dataset", type=Path, help="dataset folder holding tracklets.csv")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    parser.add_argument("--sample", type=int, default=200, help="frames read for the resolution")
    parser.add_argument("--bins", type=int, default=20, help="histogram bins (>= 1)")
    args = parser.parse_args(argv)
    for name in ("bins", "sample"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    manifest = Manifest.load(args.dataset)
    stats = table1(manifest, sample=args.sample)
    dist = length_distribution(manifest, bins=args.bins)
    if args.json:
        print(json.dumps({"table1": stats, "length_distribution": dist}, indent=2))
    else:
        print(format_table1(stats))
        print()
        print(format_length_distribution(dist))
    return 0


if __name__ == "__main__":
    sys.exit(main())
