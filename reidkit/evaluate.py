"""Test-time evaluation: features of every test tracklet, the ranking, CMC/mAP per protocol.

The pipeline (``evaluate``):

1. **Features** (``extract_features``). Every frame of every test tracklet goes through the
   model, T frames at a time (``reidkit.data.iter_test_clips``: consecutive chunks of T, the last
   one padded in order), batched across tracklets; a tracklet's feature is the mean of its chunk
   features. A long tracklet (MARS has tracklets of hundreds of frames) is never one tensor.
   For variants with a metric branch, the pool5 maps of one evenly spaced T-frame clip per
   tracklet are kept as well, so M can score any pair later without running the CNN again.
   Memory: ``T × C × h × w`` values per tracklet: at the paper's size (256 × 6 × 6, T = 6) that
   is 55k values, 1.35 GB in bf16 for MARS's 12,180 test tracklets, kept on the device.
   Runs under ``torch.no_grad()`` in ``model.eval()`` (``eval_mode``: the training mode is restored after),
   with bf16 autocast on CUDA (the fp32 regions in true fp32: ``disable_cudnn_tf32``). Frames
   are gathered as uint8 on a background thread, a couple of batches ahead, and normalised on
   the device (``iter_test_clips``). With ``feature_cache_dir`` the result is saved to disk, keyed by a
   hash of the model's weights, variant and config, the frame cache, the tracklets and T: a
   re-run with the same checkpoint skips extraction.

2. **Ranking** (``rank_gallery``): every gallery entry by F of Eq. 2, the Euclidean distance of
   the L2-normalised features (``reidkit.models.similarity.feature_distance_matrix``), ascending.
   That is the whole ranking of the feature-only variants (CNN, CNN+RNN, CNN+TAM). For variants
   with a metric branch, M is pairwise, so the model's ``pair_score`` re-scores the top-K of
   that ranking (K = ``rerank_top_k``): M = σ(logits) for CNN+DIFF and CNN+SRM (whose shortlist
   comes from ``features``, the time- and space-averaged pool5 descriptor), S = 1/(1 + F) + λ·M
   of Eq. 2 for ALL. ``model.ranking`` names which.

   Re-scored entries come first, by descending score; the rest of the gallery keeps its
   feature order below them. ``exact=True`` scores every query × gallery pair (small galleries;
   K ≥ gallery size gives the same ranking). Ties keep the feature order (stable sorts), and
   feature-distance ties keep the gallery order. Entries that the metric ignores (junk,
   same pid and camera) still take shortlist slots: the shortlist does not look at labels.

3. **Metrics** (``reidkit.metrics``): CMC and mAP in the chosen convention.

Protocols (``manifest.protocol``):

- ``"mars"``: one split. ``convention="common"`` (default, what other toolkits report): gallery =
  the split's gallery without the queries. ``convention="official"``: the MARS MATLAB evaluation,
  gallery = queries ∪ gallery (all test tracklets). See ``reidkit.metrics`` for the rules and why
  the two differ by about a point.
- ``"two_camera"`` (iLIDS-VID, PRID2011): ten splits; features are extracted once for all
  tracklets of all splits, then per split query = the camera-1 test tracklets and gallery = the
  camera-2 ones (as listed by the manifest); results are the mean ± std (n − 1) over the splits.
  Mind what the model has seen: the paper trains one model per split and averages the ten
  results. A model trained on split k's train persons must be evaluated with ``split=k``
  (the other splits' test persons overlap its training persons); ``split=None`` (all splits,
  one model) is meaningful only for a model that saw none of the dataset's persons.

Values in ``EvalResult`` are percentages, like the paper's tables.
"""

from __future__ import annotations

import hashlib
import math
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, NamedTuple, Sequence

import numpy as np
import torch

from tqdm.auto import tqdm

from .config import EvalConfig
from .data import even_frame_indices, iter_test_clips, num_test_clips
from .files import DiskFullError, atomic_write, jsonable
from .metrics import FLAG_IGNORED, METRICS, evaluate_order, match_flags, sample_std
from .models import eval_mode, feature_distance_matrix, model_device
from .models.caffenet import disable_cudnn_tf32

__all__ = [
    "TrackletFeatures", "extract_features", "Ranking", "rank_gallery",
    "PerQuery", "EvalResult", "evaluate", "evaluate_features", "evaluation_positions",
    "describe_convention", "describe_ranking", "EvenClipOutputs", "even_clip_outputs", "eq2_breakdown",
]

FEATURE_CACHE_VERSION = 1
RANKS = (1, 5, 10, 20)
# exact M on the CPU above this many pairs warns (the cpu config's 170 × 224 pairs are ~38k;
# MARS-sized galleries are ~20M, hours on a CPU)
EXACT_CPU_PAIRS = 2_000_000


# --------------------------------------------------------------------------------------------
# Features
# --------------------------------------------------------------------------------------------

@dataclass
class TrackletFeatures:
    """Features of a set of tracklets.

    ``positions`` (N,) manifest positions; ``features`` (N, D) float32, the mean of the chunk
    features (not normalised); ``pool5`` (N, T, C, h, w) of one evenly spaced clip per tracklet,
    or None for variants without a metric branch; ``key`` the cache key; ``from_cache`` whether
    they were read from ``feature_cache_dir``; ``seconds`` the extraction (or load) time.
    """

    positions: np.ndarray
    features: torch.Tensor
    pool5: torch.Tensor | None
    T: int
    key: str = ""
    from_cache: bool = False
    seconds: float = 0.0

    def rows(self, positions) -> np.ndarray:
        """Row of each manifest position in ``features``/``pool5``."""
        lookup = {int(p): i for i, p in enumerate(self.positions)}
        try:
            return np.array([lookup[int(p)] for p in positions], dtype=np.int64)
        except KeyError as e:
            raise KeyError(f"manifest position {e.args[0]} has no extracted features") from None


def _needs_pool5(model) -> bool:
    return bool(getattr(model, "has_metric_branch", False))  # M re-scores from cached pool5


def _autocast(device: torch.device):
    return torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")


def _cuda_precision(device: torch.device) -> None:
    """On CUDA, cuDNN's fp32 convolutions and RNNs in true fp32, as in training."""
    if device.type == "cuda":
        disable_cudnn_tf32()


def feature_cache_key(model, manifest, cache, positions, T: int, with_pool5: bool, device) -> str:
    """SHA-256 over what determines the features: weights, variant, config, frames, tracklets, T."""
    h = hashlib.sha256()
    h.update(f"v{FEATURE_CACHE_VERSION} T={T} pool5={with_pool5} "
             f"amp={'bf16' if torch.device(device).type == 'cuda' else 'fp32'}\n".encode())
    h.update(f"{getattr(model, 'variant', type(model).__name__)}\n".encode())
    config = getattr(model, "config", None)
    h.update(repr(asdict(config) if hasattr(config, "__dataclass_fields__") else config).encode())
    for name, t in model.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name} {t.dtype} {tuple(t.shape)}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    h.update(f"cache {cache.height}x{cache.width} {getattr(cache, 'fingerprint', '')}\n".encode())
    positions = np.asarray(positions, dtype=np.int64)
    for arr in (positions, manifest.tracklet_ids[positions], manifest.pids[positions],
                manifest.camids[positions], manifest.lengths[positions]):
        h.update(np.ascontiguousarray(arr).tobytes())
    if not getattr(cache, "fingerprint", ""):  # no frame fingerprint: fall back on the frame paths
        for p in positions:
            h.update("|".join(manifest.tracklets[p].frames).encode())
    return h.hexdigest()


@torch.no_grad()
def extract_features(model, manifest, cache, positions, T: int | None = None, batch_size: int = 64,
                     device=None, progress: bool = True, feature_cache_dir=None,
                     with_pool5: bool | None = None) -> TrackletFeatures:
    """Features of the tracklets at manifest ``positions`` (see the module docstring, step 1).

    ``T`` defaults to ``model.config.seq_len``; ``batch_size`` is in clips of T frames;
    ``device`` defaults to the model's. ``with_pool5`` defaults to whether the model ranks with
    its metric branch. With ``feature_cache_dir``, a cached result is loaded if its key matches,
    otherwise the result is computed and saved there (``features_<key>.pt``).
    """

    start = time.perf_counter()
    device = torch.device(device) if device is not None else model_device(model)
    T = int(T or getattr(getattr(model, "config", None), "seq_len", 6))
    positions = np.asarray(positions, dtype=np.int64)
    with_pool5 = _needs_pool5(model) if with_pool5 is None else with_pool5
    _cuda_precision(device)

    path = key = None
    if feature_cache_dir is not None:
        key = feature_cache_key(model, manifest, cache, positions, T, with_pool5, device)
        path = Path(feature_cache_dir) / f"features_{key[:24]}.pt"
        if path.is_file():
            try:
                saved = torch.load(path, map_location="cpu", weights_only=True)
            except Exception:  # truncated or damaged: extract again (and overwrite it) below
                saved = {}
            if isinstance(saved, dict) and saved.get("key") == key:
                pool5 = saved["pool5"].to(device) if saved["pool5"] is not None else None
                return TrackletFeatures(positions, saved["features"].to(device), pool5, T, key, True,
                                    time.perf_counter() - start)

    with eval_mode(model):
        row_of = np.full(len(manifest.tracklets), -1, dtype=np.int64)
        row_of[positions] = np.arange(len(positions))
        sums = counts = None
        bar = tqdm(total=num_test_clips(manifest, positions, T, "chunks"), unit="clip",
                   disable=not progress, desc=f"test features ({T}-frame chunks)")
        with bar:
            for clips, owners in iter_test_clips(manifest, cache, positions, T, "chunks", batch_size, device):
                with _autocast(device):
                    feats = model.features(clips).features.float()
                if sums is None:
                    sums = torch.zeros(len(positions), feats.shape[1], device=device)
                    counts = torch.zeros(len(positions), device=device)
                rows = torch.from_numpy(row_of[owners]).to(device)
                sums.index_add_(0, rows, feats)
                counts.index_add_(0, rows, torch.ones_like(rows, dtype=counts.dtype))
                bar.update(len(owners))
        features = sums / counts[:, None]  # every tracklet has >= 1 chunk

        pool5 = None
        if with_pool5:
            # one evenly spaced clip per tracklet, in the order of `positions`
            parts = []
            for clips, _ in tqdm(iter_test_clips(manifest, cache, positions, T, "even", batch_size, device),
                                 total=math.ceil(len(positions) / batch_size), disable=not progress,
                                 desc="pool5 maps for M", unit="batch"):
                with _autocast(device):
                    maps = model.features(clips).pool5
                # bf16 on CUDA halves the memory (1.35 GB for MARS at the paper's size); M runs
                # under bf16 autocast anyway
                parts.append(maps.to(torch.bfloat16) if device.type == "cuda" else maps.float())
            pool5 = torch.cat(parts)

    if path is not None:
        try:
            with atomic_write(path, suffix=".pt") as tmp:  # never a half-written file under the final name
                torch.save({"key": key, "T": T, "positions": torch.from_numpy(positions),
                            "features": features.cpu(), "pool5": None if pool5 is None else pool5.cpu()}, tmp)
        except DiskFullError as e:  # a cache only: the features in hand are scored all the same
            warnings.warn(f"{e} (the test features are not cached; the evaluation goes on)", stacklevel=2)
    return TrackletFeatures(positions, features, pool5, T, key or "", False, time.perf_counter() - start)


@dataclass
class EvenClipOutputs:
    """What the model computes on one clip of T evenly spaced frames per tracklet (on the CPU).

    ``frame_idx`` (N, T) are the frames' indices inside each tracklet; ``features`` (N, D);
    ``attention`` (N, T, T) TAM weights ω or None; ``pool5`` (N, T, C, h, w) or None.
    """

    positions: np.ndarray
    frame_idx: np.ndarray
    features: torch.Tensor
    attention: torch.Tensor | None
    pool5: torch.Tensor | None


def even_clip_outputs(model, manifest, cache, positions, batch_size: int = 64, device=None,
                      with_pool5: bool = True) -> EvenClipOutputs:
    """Features, TAM weights and pool5 of one evenly spaced T-frame clip per tracklet.

    The per-tracklet view the attention and SRM lessons plot (Fig. 3, Fig. 8): unlike
    ``extract_features`` nothing is averaged over chunks, so ω and pool5 belong to known frames.
    Runs in ``model.eval()`` under ``torch.no_grad()``; the training mode is restored after.
    """

    positions = np.asarray(positions, dtype=np.int64)
    if positions.ndim != 1 or len(positions) == 0:
        raise ValueError(f"positions must be a non-empty 1-D list of manifest positions, got shape {positions.shape}")
    T = model.config.seq_len
    device = torch.device(device) if device is not None else model_device(model)
    idx = even_frame_indices(manifest, positions, T)
    feats, att, pool5 = [], [], []
    with eval_mode(model), _autocast(device):
        for clips, _ in iter_test_clips(manifest, cache, positions, T, "even", batch_size, device):
            out = model.features(clips)
            feats.append(out.features.float().cpu())
            if out.attention is not None:
                att.append(out.attention.float().cpu())
            if with_pool5:
                pool5.append(out.pool5.float().cpu())
    return EvenClipOutputs(positions, idx, torch.cat(feats), torch.cat(att) if att else None,
                           torch.cat(pool5) if pool5 else None)


# --------------------------------------------------------------------------------------------
# Ranking
# --------------------------------------------------------------------------------------------

@dataclass
class Ranking:
    """Each query's gallery order, best first: ``order`` (Q, G) int64 on the CPU.

    ``scores`` (Q, K): the re-scores (M or S, higher = better) of the first K entries of
    ``order`` (K = 0 for a pure distance ranking); ``distances`` (Q, G): the feature distance
    matrix F the shortlist came from (gallery-indexed, not in ranked order).
    """

    order: np.ndarray
    scores: np.ndarray
    distances: torch.Tensor


def rank_gallery(distances: torch.Tensor, score_pairs: Callable | None = None, top_k: int = 100,
                 exact: bool = False, pair_batch: int = 4096, progress: bool = False) -> Ranking:
    """Rank a gallery by feature distance, optionally re-scoring the top-K with a pair scorer.

    ``distances`` (Q, G): lower = better. ``score_pairs(q_idx, g_idx) -> scores`` (1-D tensors
    of query and gallery indices, higher = better) is called on at most ``pair_batch`` pairs at
    a time. Without it, the order is the stable sort of the distances. With it, the first
    ``top_k`` (all, with ``exact``) entries of that order are scored and re-sorted by
    descending score (stable: ties keep the feature order); the rest follow in feature order.
    """

    num_q, num_g = distances.shape
    base = torch.sort(distances, dim=1, stable=True).indices
    if score_pairs is None or num_g == 0:
        return Ranking(base.cpu().numpy(), np.zeros((num_q, 0), np.float32), distances)
    k = num_g if exact else min(int(top_k), num_g)
    cand = base[:, :k]
    q_idx = torch.arange(num_q, device=cand.device).repeat_interleave(k)
    g_idx = cand.reshape(-1)
    scores = torch.empty(num_q * k, device=cand.device, dtype=torch.float32)
    for s in tqdm(range(0, len(g_idx), pair_batch), disable=not progress, unit="batch",
                  desc=f"scoring {len(g_idx)} pairs"):
        scores[s:s + pair_batch] = score_pairs(q_idx[s:s + pair_batch], g_idx[s:s + pair_batch]).float()
    scores = scores.view(num_q, k)
    scores, perm = torch.sort(scores, dim=1, descending=True, stable=True)
    order = torch.cat([cand.gather(1, perm), base[:, k:]], dim=1)
    return Ranking(order.cpu().numpy(), scores.cpu().numpy(), distances)


def describe_ranking(model, rerank_top_k: int, exact: bool, gallery_size: int | None = None,
                     score: str | None = None, lam: float | None = None) -> str:
    """One sentence saying what scored the ranking (goes into every result)."""
    ranking = score or model.ranking
    if ranking == "distance":
        return "Euclidean distance of L2-normalised features F(x)"
    lam = lam if lam is not None else getattr(getattr(model, "config", None), "lam", 1.0)
    what = (f"similarity S (Eq. 2, λ={lam:g}: 1/(1+F) + λ·M)" if ranking == "similarity"
            else "metric M (σ of the metric branch's logit)")
    if exact or (gallery_size is not None and rerank_top_k >= gallery_size):
        return f"{what}, exact: every query × gallery pair scored"
    feature_branch = getattr(model, "has_feature_branch", model.ranking == "similarity")
    shortlist = "feature ranking" if feature_branch else "ranking by the averaged pool5 descriptor"
    return f"{what}, top-{rerank_top_k} of the {shortlist} re-scored, the rest in feature order"


def describe_convention(protocol: str, convention: str, num_splits: int = 1) -> str:
    """One sentence saying how queries, gallery and averages were defined."""
    if protocol == "two_camera":
        return (f"two-camera: query = camera-1 tracklets of the test persons, gallery = camera-2 "
                f"tracklets; distractors wrong, junk ignored; mean ± std (n − 1) over {num_splits} split(s)")
    if convention == "official":
        return ("MARS official (MATLAB): gallery = all test tracklets incl. the queries; same pid "
                "& same camera (the query itself included) and junk (pid -1) removed; "
                "distractors (pid 0) wrong; trapezoidal AP; averaged over all queries")
    return ("MARS common: gallery = test tracklets without the queries; same pid & same camera "
            "and junk (pid -1) ignored; distractors (pid 0) wrong; queries with no correct "
            "match skipped")


# --------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------

@dataclass
class PerQuery:
    """The retrieval of every query, for figures: the top ``keep_top`` gallery entries that count.

    Entries the metric ignores (junk, same pid and camera) are left out, so column c is rank c+1
    as CMC counts it. ``flags``: 1 correct, 0 wrong, 2 distractor (pid 0), -1 padding (gallery
    shorter than ``keep_top``); ``gallery_ids`` -1 for padding. ``distances``: feature distance
    F; ``scores``: M or S where the entry was re-scored, NaN otherwise. ``first_hit``: 1-based
    rank of the first correct match (0: none); ``ap``: AP in [0, 1] (NaN: skipped).
    """

    query_ids: np.ndarray
    query_pids: np.ndarray
    query_camids: np.ndarray
    gallery_ids: np.ndarray
    flags: np.ndarray
    distances: np.ndarray
    scores: np.ndarray
    first_hit: np.ndarray
    ap: np.ndarray

    def to_dict(self) -> dict:
        return jsonable({k: getattr(self, k) for k in self.__dataclass_fields__})


@dataclass
class EvalResult:
    """CMC/mAP of one evaluation, in percent, with what produced them.

    ``cmc``: percent at ranks 1..len(cmc). For ``two_camera`` the headline values are means over
    ``splits`` (one ``EvalResult`` each), ``std`` holds the standard deviations (n − 1), ``per_query``
    is split 0's, and ``num_queries``/``num_skipped`` are totals over the splits.
    """

    rank1: float
    rank5: float
    rank10: float
    rank20: float
    mAP: float
    cmc: np.ndarray
    convention: str
    ranking: str
    num_queries: int
    num_skipped: int
    num_gallery: int
    protocol: str = "mars"
    convention_name: str = "common"
    dataset: str = ""
    per_query: PerQuery | None = None
    splits: list = field(default_factory=list)
    std: dict = field(default_factory=dict)
    seconds: dict = field(default_factory=dict)

    def to_dict(self, per_query: bool = True) -> dict:
        """Everything as JSON-serialisable values (NaN → None)."""
        d = {k: getattr(self, k) for k in (*METRICS, "cmc", "convention", "ranking", "num_queries", "num_skipped",
                                           "num_gallery", "protocol", "convention_name", "dataset", "std",
                                           "seconds")}
        d["splits"] = [s.to_dict(per_query=False) for s in self.splits]
        d["per_query"] = self.per_query.to_dict() if per_query and self.per_query is not None else None
        return jsonable(d)

    def _fmt(self, name: str) -> str:
        value = getattr(self, name)
        return f"{value:.1f} ± {self.std[name]:.1f}" if name in self.std else f"{value:.1f}"

    def summary(self) -> str:
        """One line: the numbers, the protocol and what scored the ranking."""
        nums = " ".join(f"{label} {self._fmt(name)}" for label, name in
                        (("rank-1", "rank1"), ("rank-5", "rank5"), ("rank-10", "rank10"),
                         ("rank-20", "rank20"), ("mAP", "mAP")))
        extra = f", {len(self.splits)} splits" if self.splits else ""
        return (f"{self.dataset or 'dataset'} [{self.protocol}/{self.convention_name}{extra}]: {nums} "
                f"({self.num_queries} queries, {self.num_skipped} skipped; {self.ranking})")

    @staticmethod
    def table_header() -> str:
        return "| model | rank-1 | rank-5 | rank-10 | rank-20 | mAP |\n|---|---|---|---|---|---|"

    def table_row(self, label: str = "") -> str:
        """A Markdown table row (see ``table_header``), e.g. for Table 2."""
        cells = [self._fmt(n) for n in METRICS]
        return f"| {label or self.dataset} | " + " | ".join(cells) + " |"


# --------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------

def _pair_scorer(model, feats: TrackletFeatures, q_rows: np.ndarray, g_rows: np.ndarray, device, score=None,
                 lam=None):
    """score_pairs for rank_gallery: ``model.pair_score`` (M or S) of query/gallery index pairs,
    M's logits from the cached pool5 maps."""
    if feats.pool5 is None:
        raise ValueError(f"ranking {model.ranking!r} needs pool5 maps; extract with with_pool5=True")
    options = {k: v for k, v in (("kind", score), ("lam", lam)) if v is not None}
    qr = torch.from_numpy(q_rows).to(feats.pool5.device)
    gr = torch.from_numpy(g_rows).to(feats.pool5.device)

    def score(qi, gi):
        a, b = qr[qi.to(qr.device)], gr[gi.to(gr.device)]
        with _autocast(device):
            logits = model.metric(feats.pool5[a], feats.pool5[b]).float()
        fa, fb = feats.features[a.to(feats.features.device)], feats.features[b.to(feats.features.device)]
        return model.pair_score(fa, fb, logits.to(fa.device), **options)

    return score


@dataclass(frozen=True)
class _Scoring:
    """How ``evaluate_features`` ranks and reports each split, beside its ``EvalConfig``: the
    score and λ to rank by (None: the variant's), M's pairs per call, the CMC's length, the
    entries kept per query, a progress bar, the device M runs on."""

    device: torch.device
    score: str | None = None
    lam: float | None = None
    pair_batch: int = 4096
    max_rank: int = 20
    keep_top: int = 50
    progress: bool = True


class _SplitSides(NamedTuple):
    """A split's queries and gallery: manifest positions, feature rows, labels, F between them."""

    q_pos: np.ndarray
    g_pos: np.ndarray
    q_rows: np.ndarray
    g_rows: np.ndarray
    q_pids: np.ndarray
    g_pids: np.ndarray
    q_cams: np.ndarray
    g_cams: np.ndarray
    dist: torch.Tensor  # (queries, gallery) feature distance F, on the features' device


def _split_sides(manifest, feats: TrackletFeatures, query_ids, gallery_ids) -> _SplitSides:
    q_pos, g_pos = manifest.positions(query_ids), manifest.positions(gallery_ids)
    q_rows, g_rows = feats.rows(q_pos), feats.rows(g_pos)
    dev = feats.features.device
    dist = feature_distance_matrix(feats.features[torch.from_numpy(q_rows).to(dev)],
                                   feats.features[torch.from_numpy(g_rows).to(dev)])
    return _SplitSides(q_pos, g_pos, q_rows, g_rows, manifest.pids[q_pos], manifest.pids[g_pos],
                       manifest.camids[q_pos], manifest.camids[g_pos], dist)


def _evaluate_split(model, manifest, feats: TrackletFeatures, query_ids, gallery_ids, e: EvalConfig,
                    how: _Scoring) -> EvalResult:
    """One split's ranking and metrics (``evaluate_features`` step by step)."""
    t0 = time.perf_counter()
    sides = _split_sides(manifest, feats, query_ids, gallery_ids)
    rescore = model.has_metric_branch and (how.score or model.ranking) != "distance"
    scorer = (_pair_scorer(model, feats, sides.q_rows, sides.g_rows, how.device, how.score, how.lam)
              if rescore else None)
    with eval_mode(model):
        ranking = rank_gallery(sides.dist, scorer, e.rerank_top_k, e.exact, how.pair_batch, how.progress)
    t1 = time.perf_counter()

    m = evaluate_order(ranking.order, sides.q_pids, sides.g_pids, sides.q_cams, sides.g_cams, e.convention,
                       how.max_rank)
    per_query = _per_query(ranking, m, np.asarray(query_ids), np.asarray(gallery_ids), sides, how.keep_top)
    t2 = time.perf_counter()
    cmc = 100.0 * m.cmc
    at = lambda r: float(cmc[min(r, len(cmc)) - 1])  # noqa: E731
    protocol = manifest.protocol
    return EvalResult(
        rank1=at(1), rank5=at(5), rank10=at(10), rank20=at(20), mAP=100.0 * m.mAP, cmc=cmc,
        convention=describe_convention(protocol, e.convention), ranking=describe_ranking(
            model, e.rerank_top_k, e.exact, len(gallery_ids), how.score, how.lam),
        num_queries=m.num_queries, num_skipped=m.num_skipped, num_gallery=len(gallery_ids),
        protocol=protocol, convention_name=e.convention, dataset=getattr(manifest, "name", ""),
        per_query=per_query,
        seconds={"ranking": t1 - t0, "metrics": t2 - t1})


def _per_query(ranking: Ranking, m, query_ids, gallery_ids, sides: _SplitSides, keep_top) -> PerQuery:
    q_pids, g_pids, q_cams, g_cams = sides.q_pids, sides.g_pids, sides.q_cams, sides.g_cams
    num_q, num_g = ranking.order.shape
    # Ignored entries are dropped, so look far enough down to still find keep_top that count.
    ignored = (g_pids[None, :] == -1) | ((g_pids[None, :] == q_pids[:, None])
                                         & (g_cams[None, :] == q_cams[:, None]))
    width = min(num_g, keep_top + int(ignored.sum(1).max(initial=0)))
    order = ranking.order[:, :width]
    flags = match_flags(order, q_pids, g_pids, q_cams, g_cams)
    dist = ranking.distances.gather(1, torch.from_numpy(order).to(ranking.distances.device)).cpu().numpy()
    rescored = np.full(order.shape, np.nan, dtype=np.float32)
    k = min(ranking.scores.shape[1], width)
    rescored[:, :k] = ranking.scores[:, :k]
    out = dict(gallery_ids=np.full((num_q, keep_top), -1, np.int64),
               flags=np.full((num_q, keep_top), -1, np.int8),
               distances=np.full((num_q, keep_top), np.nan, np.float32),
               scores=np.full((num_q, keep_top), np.nan, np.float32))
    for i in range(num_q):
        keep = np.flatnonzero(flags[i] != FLAG_IGNORED)[:keep_top]
        n = len(keep)
        out["gallery_ids"][i, :n] = gallery_ids[order[i, keep]]
        out["flags"][i, :n] = flags[i, keep]
        out["distances"][i, :n] = dist[i, keep]
        out["scores"][i, :n] = rescored[i, keep]
    return PerQuery(query_ids=query_ids, query_pids=q_pids, query_camids=q_cams,
                    first_hit=m.first_hit, ap=m.ap, **out)


def _resolve_splits(manifest, split) -> list[int]:
    if split is None:
        return list(range(len(manifest.splits))) if manifest.protocol == "two_camera" else [0]
    if isinstance(split, (int, np.integer)):
        return [int(split)]
    return [int(s) for s in split]


def _split_sets(manifest, indices, convention) -> list[tuple[list[int], list[int]]]:
    """(query ids, gallery ids) per split, the gallery as the convention defines it."""
    sets = []
    for i in indices:
        s = manifest.split(i)
        query = list(s.query)
        qset = set(query)
        if convention == "official":  # all test tracklets, the queries included
            gallery = query + [t for t in s.gallery if t not in qset]
        else:  # the common convention's gallery never holds a query
            gallery = [t for t in s.gallery if t not in qset]
        sets.append((query, gallery))
    return sets


def _check(manifest, convention):
    if convention not in ("common", "official"):
        raise ValueError(f"convention must be 'common' or 'official', got {convention!r}")
    if manifest.protocol == "two_camera" and convention == "official":
        raise ValueError("convention='official' is the MARS MATLAB evaluation; two_camera datasets "
                         "use query = camera 1, gallery = camera 2 (convention='common')")


def evaluation_positions(manifest, split: int | Sequence[int] | None = None,
                         convention: str = "common") -> np.ndarray:
    """Manifest positions of every tracklet that ``evaluate`` needs features for (sorted)."""
    sets = _split_sets(manifest, _resolve_splits(manifest, split), convention)
    return manifest.positions(sorted({t for q, g in sets for t in (*q, *g)}))


def evaluate_features(model, manifest, feats: TrackletFeatures, eval_cfg: EvalConfig | None = None, *,
                      split: int | Sequence[int] | None = None, device=None, progress: bool = True,
                      keep_top: int = 50, pair_batch: int = 4096, max_rank: int = 20, score: str | None = None,
                      lam: float | None = None) -> EvalResult:
    """Steps 2–3 of ``evaluate`` on features already extracted (``extract_features``).

    Useful to compare rankings (K, exact, convention of ``eval_cfg``) without extracting again, and
    to isolate the parts of Eq. 2: ``score`` ranks by another score than the variant's
    ("distance": F only, "metric": M only, "similarity": S) and ``lam`` sets λ for S.
    ``model`` only needs ``ranking`` and ``has_metric_branch``, and for re-scoring ``metric`` and
    ``pair_score``.
    """
    e = eval_cfg if eval_cfg is not None else EvalConfig()
    convention = e.convention
    _check(manifest, convention)
    device = torch.device(device) if device is not None else feats.features.device
    _cuda_precision(device)
    sets = _split_sets(manifest, _resolve_splits(manifest, split), convention)
    protocol = manifest.protocol
    pairs = sum(len(q) * len(g) for q, g in sets)
    if e.exact and model.has_metric_branch and device.type == "cpu" and pairs > EXACT_CPU_PAIRS:
        warnings.warn(f"eval.exact: M scores all {pairs:,} query × gallery pairs on the CPU (a MARS-sized gallery "
                      f"takes hours there; a few thousand pairs/s); eval.exact=false re-scores the top "
                      f"eval.rerank_top_k = {e.rerank_top_k} per query instead", stacklevel=2)
    how = _Scoring(device, score, lam, pair_batch, max_rank, keep_top, progress)
    results = []
    for index, (q, g) in zip(_resolve_splits(manifest, split), sets):
        try:
            results.append(_evaluate_split(model, manifest, feats, q, g, e, how))
        except ValueError as err:  # e.g. no query with a correct match: name the split it comes from
            raise ValueError(f"{Path(manifest.root) / 'splits.json'}, split {index}: {err}") from None
    for r in results:
        r.seconds["features"] = feats.seconds
        r.seconds["features_from_cache"] = float(feats.from_cache)
    if len(results) == 1 and (protocol != "two_camera" or isinstance(split, (int, np.integer))):
        return results[0]  # one split asked for: its own result, no mean ± std

    mean = {n: float(np.mean([getattr(r, n) for r in results])) for n in METRICS}
    std = {n: sample_std([getattr(r, n) for r in results]) for n in METRICS}  # n − 1, as over seeds
    return EvalResult(
        **mean, cmc=np.mean([r.cmc for r in results], axis=0),
        convention=describe_convention(protocol, convention, len(results)),
        ranking=results[0].ranking, num_queries=sum(r.num_queries for r in results),
        num_skipped=sum(r.num_skipped for r in results),
        num_gallery=int(round(np.mean([r.num_gallery for r in results]))),
        protocol=protocol, convention_name=convention, dataset=getattr(manifest, "name", ""),
        per_query=results[0].per_query, splits=results, std=std,
        seconds={"features": feats.seconds, "features_from_cache": float(feats.from_cache),
                 "ranking": sum(r.seconds["ranking"] for r in results),
                 "metrics": sum(r.seconds["metrics"] for r in results)})


def eq2_breakdown(model, manifest, feats: TrackletFeatures, eval_cfg: EvalConfig | None = None, *,
                  split: int | None = None, lambdas: Sequence[float] = (0.25, 1.0, 4.0), device=None,
                  pair_batch: int = 4096, max_rank: int = 20, keep_top: int = 0) -> list[dict]:
    """Eq. 2 taken apart on one model with both branches: rank the gallery by F only, by M only
    and by S at each λ of ``lambdas``, each scored exactly (every pair) and on the top-K of the
    feature ranking (``eval_cfg.rerank_top_k``). M's logits are computed once for every query ×
    gallery pair and looked up, so the table costs one exact evaluation; each row equals what
    ``evaluate_features(..., score=..., lam=...)`` gives. One split (``split``, default the
    protocol's first). Returns rows ``{"ranking", "score", "lam", "mode", "rank1", "mAP", "per_query"}``;
    ``per_query`` is the row's ``PerQuery`` (first-hit rank and AP of every query, the same queries
    in the same order in every row, so two rows compare query by query, e.g. with
    ``reidkit.significance.paired_bootstrap``; its retrieval lists hold ``keep_top`` entries).
    """
    if not (model.has_feature_branch and model.has_metric_branch):
        raise ValueError(f"variant {model.variant!r} has a single branch: Eq. 2 has nothing to take apart")
    e = eval_cfg if eval_cfg is not None else EvalConfig()
    device = torch.device(device) if device is not None else feats.features.device
    query_ids, gallery_ids = _split_sets(manifest, _resolve_splits(manifest, split)[:1], e.convention)[0]
    sides = _split_sides(manifest, feats, query_ids, gallery_ids)
    q_rows, g_rows, dist, dev = sides.q_rows, sides.g_rows, sides.dist, feats.features.device
    num_q, num_g = dist.shape
    logit_of = _pair_scorer(model, feats, q_rows, g_rows, device, "logit")
    qi, gi = torch.arange(num_q).repeat_interleave(num_g), torch.arange(num_g).repeat(num_q)
    with eval_mode(model):
        logits = torch.cat([logit_of(qi[a:a + pair_batch], gi[a:a + pair_batch]).float().cpu()
                            for a in range(0, len(qi), pair_batch)]).view(num_q, num_g)
    fq = feats.features[torch.from_numpy(q_rows).to(dev)]
    fg = feats.features[torch.from_numpy(g_rows).to(dev)]

    def lookup(kind, lam):
        def score(q, g):
            q, g = q.cpu(), g.cpu()
            return model.pair_score(fq[q.to(dev)], fg[g.to(dev)], logits[q, g].to(dev), kind=kind, lam=lam)
        return score

    rows = []
    plans = [("F only", "distance", None), ("M only", "metric", None)] + [
        (f"S, λ = {lam:g}", "similarity", float(lam)) for lam in lambdas]
    for label, kind, lam in plans:
        modes = [("exact", None)] if kind == "distance" else [("exact", True), (f"top-{e.rerank_top_k}", False)]
        for mode, exact in modes:
            scorer = None if kind == "distance" else lookup(kind, lam)
            ranking = rank_gallery(dist, scorer, e.rerank_top_k, bool(exact), pair_batch)
            m = evaluate_order(ranking.order, sides.q_pids, sides.g_pids, sides.q_cams, sides.g_cams, e.convention,
                               max_rank)
            per_query = _per_query(ranking, m, np.asarray(query_ids), np.asarray(gallery_ids), sides, keep_top)
            rows.append({"ranking": label, "score": kind, "lam": lam, "mode": mode,
                         "rank1": 100.0 * float(m.cmc[0]), "mAP": 100.0 * float(m.mAP), "per_query": per_query})
    return rows


def evaluate(model, manifest, cache, eval_cfg: EvalConfig | None = None, *,
             split: int | Sequence[int] | None = None, T: int | None = None, device=None,
             feature_cache_dir=None, progress: bool = True, keep_top: int = 50, pair_batch: int = 4096,
             max_rank: int = 20) -> EvalResult:
    """Evaluate ``model`` on the test tracklets of ``manifest`` (see the module docstring).

    ``eval_cfg`` (a run's ``config.eval``; None = the ``EvalConfig`` defaults): ``convention``
    "common" or "official" (MARS protocol only); ``rerank_top_k``/``exact``: how far M re-scores
    (ignored by distance-ranked variants); ``batch_size``: clips per forward pass. Change one
    for a call with ``dataclasses.replace(config.eval, convention="official")``.

    ``split``: None = the protocol's default (MARS: split 0; two_camera: all splits, averaged),
    an int (that split alone, no mean ± std) or a list of split indices (averaged). ``T``: frames
    per test chunk (default ``model.config.seq_len``). ``device``: default the model's (the model
    is not moved; ``cache.tensor(device)`` beforehand makes frame gathering GPU-resident).
    ``feature_cache_dir``: reuse features saved by an earlier run with the same weights.
    ``keep_top``: retrieval entries kept per query in ``per_query``. ``pair_batch``: pairs per
    call of M. The model's train/eval mode is restored on return.
    """
    e = eval_cfg if eval_cfg is not None else EvalConfig()
    _check(manifest, e.convention)
    device = torch.device(device) if device is not None else model_device(model)
    positions = evaluation_positions(manifest, split, e.convention)
    feats = extract_features(model, manifest, cache, positions, T, e.batch_size, device, progress,
                             feature_cache_dir)
    return evaluate_features(model, manifest, feats, e, split=split, device=device, progress=progress,
                             keep_top=keep_top, pair_batch=pair_batch, max_rank=max_rank)
