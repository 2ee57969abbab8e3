"""reidkit.data: frame cache, sampling, P x K sampler, normalisation, loaders (the manifest: test_manifest.py)."""

import os

import numpy as np
import pytest
import torch
from PIL import Image

from reidkit.data import (
    MEAN, STD, FrameCache, erase_frames, Manifest, ManifestError, PKSampler, TrainClipLoader, decode_frame,
    denormalize_clips, even_clip, even_frame_indices, iter_test_clips, normalize_clips, num_test_clips,
    test_frame_indices, train_frame_indices,
)


# ------------------------------------------------------------------ frame cache

def test_cache_pixels_equal_direct_decode(make_manifest, tmp_path):
    root = make_manifest(num_ids=3, frame_size=(30, 14))
    m = Manifest.load(root)
    cache = FrameCache.build(m, 16, 8, progress=False)
    assert cache.built and cache.frames.shape == (m.total_frames, 16, 8, 3)
    assert cache.path == root / ".cache" / "frames_16x8.npy"
    for p in (0, len(m) - 1):
        for j, rel in enumerate(m.tracklets[p].frames):
            with Image.open(root / rel) as im:
                ref = np.asarray(im.convert("RGB").resize((8, 16), Image.BILINEAR))
            np.testing.assert_array_equal(cache.frames[cache.offsets[p] + j], ref)
    np.testing.assert_array_equal(cache.clip(1, [0, 2]), cache.frames[cache.offsets[1] + np.array([0, 2])])
    # a different cache_dir and serial decoding give the same pixels
    other = FrameCache.build(m, 16, 8, cache_dir=tmp_path / "elsewhere", progress=False, workers=1)
    np.testing.assert_array_equal(other.frames, cache.frames)


def test_cache_reused_then_rebuilt_when_a_frame_changes(make_manifest):
    root = make_manifest(num_ids=2)
    m = Manifest.load(root)
    first = FrameCache.build(m, 8, 4, progress=False)
    mtime = os.stat(first.path).st_mtime_ns
    again = FrameCache.build(m, 8, 4, progress=False)
    assert not again.built and os.stat(again.path).st_mtime_ns == mtime

    # overwrite one frame with a new colour: the cache must notice and show the new pixels
    rel = m.tracklets[1].frames[2]
    Image.fromarray(np.full((24, 12, 3), 200, np.uint8)).save(root / rel)
    os.utime(root / rel, ns=(mtime + 10**9, mtime + 10**9))
    rebuilt = FrameCache.build(m, 8, 4, progress=False)
    assert rebuilt.built
    assert (rebuilt.clip(1, [2]) == 200).all()
    assert not list((root / ".cache").glob("*.tmp*")), "temporary files left behind"


def test_missing_and_unreadable_frames_are_named(make_manifest):
    root = make_manifest(num_ids=2)
    m = Manifest.load(root)
    bad = m.tracklets[2]
    (root / bad.frames[1]).write_bytes(b"not a png")
    with pytest.raises(ManifestError) as e:
        FrameCache.build(m, 8, 4, progress=False)
    assert bad.frames[1] in str(e.value) and "cannot decode" in str(e.value)
    assert f"tracklet_id {bad.tracklet_id}" in str(e.value)
    assert not list((root / ".cache").glob("*.npy")), "no cache after a failed build"

    (root / bad.frames[1]).unlink()
    with pytest.raises(ManifestError) as e:
        FrameCache.build(m, 8, 4, progress=False)
    assert bad.frames[1] in str(e.value) and "not found" in str(e.value)
    assert f"tracklet_id {bad.tracklet_id}" in str(e.value)
    with pytest.raises(ManifestError, match="not found"):
        decode_frame(root / bad.frames[1], 8, 4)


# ------------------------------------------------------------------ frame sampling

def test_train_frame_indices_random_sorted_distinct():
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(200):
        idx = train_frame_indices(20, 6, rng)
        assert idx.shape == (6,) and idx.dtype == np.int64
        assert (np.diff(idx) > 0).all() and idx.min() >= 0 and idx.max() < 20
        seen.update(idx.tolist())
    assert seen == set(range(20)), "every frame is reachable"
    a = train_frame_indices(50, 6, np.random.default_rng(3))
    np.testing.assert_array_equal(a, train_frame_indices(50, 6, np.random.default_rng(3)))


@pytest.mark.parametrize("n, expected", [
    (3, [0, 0, 1, 1, 2, 2]), (1, [0] * 6), (4, [0, 0, 1, 2, 2, 3]), (6, None),
])
def test_short_tracklets_padded_in_order(n, expected):
    idx = train_frame_indices(n, 6, np.random.default_rng(0))
    if expected is None:
        expected = list(range(6))
    assert idx.tolist() == expected


def test_test_frame_indices_chunks_cover_every_frame_once():
    for n in (1, 5, 6, 7, 13, 36):
        chunks = test_frame_indices(n, 6, "chunks")
        assert len(chunks) == -(-n // 6)
        assert all(c.shape == (6,) and (np.diff(c) >= 0).all() for c in chunks)
        # every frame once, apart from the padding of the last chunk
        real = np.concatenate(chunks[:-1] + [np.unique(chunks[-1])])
        assert sorted(real.tolist()) == list(range(n))
    assert [c.tolist() for c in test_frame_indices(8, 6)] == [[0, 1, 2, 3, 4, 5], [6, 6, 6, 7, 7, 7]]


def test_test_frame_indices_even():
    (idx,) = test_frame_indices(60, 6, "even")
    assert idx.tolist() == [5, 15, 25, 35, 45, 55]
    assert test_frame_indices(3, 6, "even")[0].tolist() == [0, 0, 1, 1, 2, 2]
    with pytest.raises(ValueError):
        test_frame_indices(5, 6, "all")


# ------------------------------------------------------------------ P x K sampler

PIDS = np.array([1, 1, 1, 2, 2, 3, 3, 3, 3, 4, 5, 5, 6, 6, 0, 0, -1, 7, 7, 8])


def test_pk_sampler_composition():
    s = PKSampler(PIDS, P=4, K=3, seed=1)
    batches = s.global_batches()
    assert batches.shape == (len(s), 4, 3) and len(s) == -(-17 // 12)
    for _ in range(3):
        for batch in s:
            assert batch.shape == (12,)
            ids = PIDS[batch].reshape(4, 3)
            assert (ids > 0).all(), "junk and distractors never sampled"
            assert (ids == ids[:, :1]).all(), "K tracklets of one identity per row"
            assert len(set(ids[:, 0])) == 4, "P distinct identities"
            for row in batch.reshape(4, 3):
                if (PIDS == PIDS[row[0]]).sum() >= 3:
                    assert len(set(row)) == 3, "no repeats when an identity has >= K tracklets"
        s.set_epoch(s.epoch + 1)


def test_pk_sampler_never_repeats_an_identity_across_pass_boundaries():
    # 8 identities, P=3: batches straddle the end of one shuffled pass and the start of the next
    s = PKSampler(PIDS, P=3, K=1, seed=0, steps_per_epoch=200)
    ids = PIDS[s.global_batches(0)[:, :, 0]]
    assert all(len(set(row)) == 3 for row in ids)
    counts = np.bincount(ids.ravel(), minlength=9)[1:]
    assert counts.max() - counts.min() <= 2, "identities visited about equally often"


def test_pk_sampler_visits_all_identities_and_is_deterministic():
    s = PKSampler(PIDS, P=2, K=2, seed=5, steps_per_epoch=4)
    ids = PIDS[s.global_batches(0)[:, :, 0]]
    assert set(ids.ravel()) == {1, 2, 3, 4, 5, 6, 7, 8}, "one shuffled pass over 8 identities"
    np.testing.assert_array_equal(s.global_batches(0), PKSampler(PIDS, 2, 2, seed=5, steps_per_epoch=4).global_batches(0))
    assert not np.array_equal(s.global_batches(0), s.global_batches(1))
    positions = np.arange(100, 100 + len(PIDS))
    shifted = PKSampler(PIDS, 2, 2, seed=5, positions=positions, steps_per_epoch=4)
    np.testing.assert_array_equal(shifted.global_batches(0), s.global_batches(0) + 100)
    with pytest.raises(ValueError, match="only 8 identities"):
        PKSampler(PIDS, P=9, K=2)


def test_pk_sampler_ddp_shards_disjoint_and_cover_batch():
    world = 2
    full = PKSampler(PIDS, P=4, K=2, seed=3)
    shards = [list(PKSampler(PIDS, P=4, K=2, seed=3, rank=r, world_size=world)) for r in range(world)]
    for step, batch in enumerate(full):
        parts = [shards[r][step] for r in range(world)]
        assert all(p.shape == (4,) for p in parts)
        assert not set(PIDS[parts[0]]) & set(PIDS[parts[1]]), "ranks hold different identities"
        np.testing.assert_array_equal(np.concatenate(parts), batch)
    with pytest.raises(ValueError):
        PKSampler(PIDS, P=3, K=2, world_size=2)


# ------------------------------------------------------------------ normalisation

def test_normalize_clips_values_and_mirror():
    g = torch.Generator().manual_seed(0)
    raw = torch.randint(0, 256, (2, 3, 4, 5, 3), dtype=torch.uint8, generator=g)
    out = normalize_clips(raw, torch.tensor([False, True]))
    assert out.shape == (2, 3, 3, 4, 5) and out.dtype == torch.float32 and out.is_contiguous()
    n, t, c, y, x = 0, 2, 1, 3, 4
    expected = (raw[n, t, y, x, c].item() / 255 - MEAN[c]) / STD[c]
    assert out[n, t, c, y, x].item() == pytest.approx(expected, abs=1e-6)
    # clip 1 is flipped along W: its pixel x comes from W-1-x
    expected = (raw[1, t, y, 4 - x, c].item() / 255 - MEAN[c]) / STD[c]
    assert out[1, t, c, y, x].item() == pytest.approx(expected, abs=1e-6)
    torch.testing.assert_close(normalize_clips(raw)[0], out[0])
    back = denormalize_clips(normalize_clips(raw))
    torch.testing.assert_close(back, raw.permute(0, 1, 4, 2, 3).float() / 255, atol=1e-6, rtol=0)
    assert normalize_clips(raw, dtype=torch.bfloat16).dtype == torch.bfloat16


# ------------------------------------------------------------------ loaders

@pytest.fixture
def dataset(make_manifest):
    root = make_manifest(num_ids=8, tracklets_per_cam=2, distractors=2, junk=1, visibility=True,
                         length_range=(2, 14))
    m = Manifest.load(root)
    return m, FrameCache.build(m, 12, 6, progress=False)


def test_train_loader_batches(dataset):
    m, cache = dataset
    loader = TrainClipLoader(m, cache, P=2, K=3, T=5, seed=7)
    assert len(loader) == -(-16 // 6)
    batches = list(loader)
    assert len(batches) == len(loader) and loader.epoch == 1
    train_ids = set(m.split(0).train)
    for b in batches:
        assert b.clips.shape == (6, 5, 3, 12, 6) and b.clips.dtype == torch.float32
        pos = b.positions.numpy()
        assert set(b.tracklet_ids.tolist()) <= train_ids
        assert b.pids.tolist() == m.pids[pos].tolist() and b.camids.tolist() == m.camids[pos].tolist()
        assert b.visibility.shape == (6, 5)
        for n, p in enumerate(pos):
            fi = b.frame_idx[n].numpy()
            assert (np.diff(fi) >= 0).all() and fi.max() < m.lengths[p]
            raw = torch.from_numpy(cache.clip(p, fi))[None]
            torch.testing.assert_close(b.clips[n:n + 1], normalize_clips(raw, b.mirrored[n:n + 1]))
            np.testing.assert_allclose(b.visibility[n].numpy(), m.tracklets[p].visibility[fi])
    # deterministic for (seed, epoch); a new epoch differs
    loader.set_epoch(0)
    again = next(iter(loader))
    torch.testing.assert_close(again.clips, batches[0].clips)
    assert torch.equal(again.frame_idx, batches[0].frame_idx)
    loader.set_epoch(1)
    epoch1 = torch.cat([b.frame_idx for b in loader])
    assert not torch.equal(epoch1, torch.cat([b.frame_idx for b in batches]))
    moved = batches[0].to("cpu")
    assert torch.equal(moved.pids, batches[0].pids)


def test_erase_frames_occludes_single_frames_with_another_clips_pixels():
    rng = np.random.default_rng(0)
    clips = torch.from_numpy(np.stack([np.full((6, 16, 8, 3), 10 * (n + 1), np.uint8) for n in range(4)]))
    out, hit = erase_frames(clips, np.random.default_rng(1), p=0.5)
    assert hit.shape == (4, 6) and 0 < hit.sum() < 24
    assert torch.equal(clips[:, :, 0, 0, 0], torch.tensor([[10] * 6, [20] * 6, [30] * 6, [40] * 6], dtype=torch.uint8))
    for n in range(4):
        for t in range(6):
            changed = out[n, t] != clips[n, t]
            if not hit[n, t]:
                assert not changed.any()  # untouched frames stay bit-identical
                continue
            frac = changed.any(-1).float().mean().item()
            assert 0.15 < frac <= 0.75, frac  # 30-70 % of the frame (rounded to whole pixels)
            assert set(out[n, t][changed].unique().tolist()) <= {10, 20, 30, 40} - {10 * (n + 1)}
    again, hit_again = erase_frames(clips, np.random.default_rng(1), p=0.5)
    assert torch.equal(again, out) and (hit_again == hit).all()  # deterministic for the rng
    none, no_hit = erase_frames(clips, rng, p=0.0)
    assert none is clips and not no_hit.any()
    many = erase_frames(torch.zeros(200, 6, 16, 8, 3, dtype=torch.uint8), np.random.default_rng(2), p=0.15)[1]
    assert abs(many.mean() - 0.15) < 0.02


def test_train_loader_frame_erasing_changes_only_pixels(dataset):
    m, cache = dataset
    plain = next(iter(TrainClipLoader(m, cache, P=2, K=3, T=5, seed=7)))
    erased = next(iter(TrainClipLoader(m, cache, P=2, K=3, T=5, seed=7, frame_erasing=0.5)))
    assert torch.equal(plain.frame_idx, erased.frame_idx) and torch.equal(plain.mirrored, erased.mirrored)
    assert not torch.equal(plain.clips, erased.clips)
    with pytest.raises(ValueError, match="frame_erasing must be a probability"):
        TrainClipLoader(m, cache, P=2, K=3, T=5, frame_erasing=2.0)


def test_iter_test_clips_covers_all_frames_in_chunks(dataset):
    m, cache = dataset
    positions = m.positions(m.split(0).query + m.split(0).gallery)
    T = 4
    owners, clips = [], []
    for batch, own in iter_test_clips(m, cache, positions, T, batch_size=5):
        assert batch.shape[1:] == (T, 3, 12, 6) and batch.shape[0] <= 5 and len(own) == len(batch)
        owners.append(own)
        clips.append(batch)
    owners = np.concatenate(owners)
    clips = torch.cat(clips)
    assert len(owners) == num_test_clips(m, positions, T)
    for p in positions:
        expected = np.ceil(m.lengths[p] / T)
        assert (owners == p).sum() == expected, "one clip per chunk of T frames"
    first = int(np.flatnonzero(owners == positions[0])[0])
    idx = test_frame_indices(int(m.lengths[positions[0]]), T)[0]
    raw = torch.from_numpy(cache.clip(positions[0], idx))[None]
    torch.testing.assert_close(clips[first:first + 1], normalize_clips(raw))

    clip = even_clip(m, cache, int(positions[0]), 6)
    assert clip.shape == (1, 6, 3, 12, 6)
    idx = even_frame_indices(m, positions, 6)
    assert idx.shape == (len(positions), 6)
    for row, p in zip(idx, positions):
        np.testing.assert_array_equal(row, test_frame_indices(int(m.lengths[p]), 6, "even")[0])
    np.testing.assert_array_equal(even_frame_indices(m, int(positions[0]), 6), idx[0])
    raw = torch.from_numpy(cache.clip(int(positions[0]), idx[0]))[None]
    torch.testing.assert_close(clip, normalize_clips(raw))  # even_clip is that clip, normalised


def test_cache_tensor_shares_memory_and_gather_paths_agree(dataset):
    m, cache = dataset
    rows = cache.rows([0, 3], [[0, 1], [1, 1]])
    from_memmap = cache.gather(rows)  # no resident tensor yet: numpy fancy indexing
    t = cache.tensor()
    assert t.dtype == torch.uint8 and t.shape == (m.total_frames, 12, 6, 3)
    assert t.data_ptr() == cache.tensor().data_ptr(), "made once"
    assert np.shares_memory(t.numpy(), cache.frames)
    assert torch.equal(cache.gather(rows), from_memmap) and from_memmap.shape == (2, 2, 12, 6, 3)


def test_train_loader_ddp_ranks_split_the_global_batch(dataset):
    m, cache = dataset
    full = next(iter(TrainClipLoader(m, cache, P=4, K=2, T=3, seed=2)))
    parts = [next(iter(TrainClipLoader(m, cache, P=4, K=2, T=3, seed=2, rank=r, world_size=2)))
             for r in range(2)]
    assert [len(p) for p in parts] == [4, 4]
    assert torch.equal(torch.cat([p.positions for p in parts]), full.positions)
    assert not set(parts[0].pids.tolist()) & set(parts[1].pids.tolist())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_paths_match_cpu(dataset):
    m, cache = dataset
    cpu = next(iter(TrainClipLoader(m, cache, P=2, K=2, T=4, seed=1)))
    gpu = next(iter(TrainClipLoader(m, cache, P=2, K=2, T=4, seed=1, device="cuda")))
    assert gpu.clips.is_cuda and gpu.pids.is_cuda and "cuda:0" in cache._tensors
    torch.testing.assert_close(gpu.clips.cpu(), cpu.clips)
    assert torch.equal(gpu.positions.cpu(), cpu.positions)
    raw = torch.from_numpy(cache.clip(0, [0, 1]))[None].repeat(2, 1, 1, 1, 1)
    mirror = torch.tensor([True, False])
    torch.testing.assert_close(normalize_clips(raw.cuda(), mirror.cuda()).cpu(), normalize_clips(raw, mirror))
    positions = m.positions(m.split(0).query)
    got = [(c.cpu(), o) for c, o in iter_test_clips(m, cache, positions, 4, device="cuda")]
    ref = list(iter_test_clips(m, cache, positions, 4))
    for (a, oa), (b, ob) in zip(got, ref):
        torch.testing.assert_close(a, b)
        np.testing.assert_array_equal(oa, ob)


def test_corrupt_cache_file_is_rebuilt(make_manifest):
    m = Manifest.load(make_manifest(num_ids=2))
    cache = FrameCache.build(m, 8, 4, progress=False)
    expected = np.array(cache.frames)
    cache.path.write_bytes(b"\x93NUMPY garbage")
    rebuilt = FrameCache.build(m, 8, 4, progress=False)
    assert rebuilt.built
    np.testing.assert_array_equal(rebuilt.frames, expected)
