"""reidkit.data: frame cache, sampling, P x K sampler, normalisation, loaders (the manifest: test_manifest.py)."""

import gc
import os
import threading

import numpy as np
import pytest
import torch
from PIL import Image

from reidkit.config import ConfigError
from reidkit.data import (
    MEAN, STD, FrameCache, erase_frames, Manifest, ManifestError, PKSampler, Prefetcher, TrainClipLoader,
    check_disk_space, decode_frame, denormalize_clips, even_clip, even_frame_indices, iter_test_clips,
    normalize_clips, num_test_clips, plan_gpu_cache, test_frame_indices, train_frame_indices,
)
from reidkit.data import cache as cache_module


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


def test_disk_check_refuses_naming_folder_sizes_and_setting(make_manifest, monkeypatch):
    check_disk_space("/x", needed=10, free=10)  # exactly enough is enough
    with pytest.raises(ManifestError) as e:
        check_disk_space("/data/cache", needed=184_113_580_761, free=60_000_000_000)
    msg = str(e.value)
    assert "/data/cache" in msg and "184.1 GB" in msg and "60.0 GB" in msg and "data.cache_dir=" in msg

    root = make_manifest(num_ids=2)
    m = Manifest.load(root)
    need = m.total_frames * 8 * 4 * 3 + cache_module.INDEX_BYTES
    usage = type(cache_module.shutil.disk_usage(root))
    monkeypatch.setattr(cache_module.shutil, "disk_usage", lambda path: usage(10**12, 10**12 - need + 1, need - 1))
    with pytest.raises(ManifestError, match=r"in .*\.cache.*data\.cache_dir=") as e:
        FrameCache.build(m, 8, 4, progress=False)
    assert str(need) in str(e.value)  # the bytes needed, exactly
    assert not list((root / ".cache").glob("*.npy*")), "refused before writing anything"
    monkeypatch.setattr(cache_module.shutil, "disk_usage", lambda path: usage(10**12, 10**12, 10**12))
    assert FrameCache.build(m, 8, 4, progress=False).built


def test_open_reads_a_built_cache_without_decoding(make_manifest, monkeypatch):
    m = Manifest.load(make_manifest(num_ids=2))
    with pytest.raises(ManifestError, match="no up-to-date frame cache"):
        FrameCache.open(m, 8, 4)
    built = FrameCache.build(m, 8, 4, progress=False)
    monkeypatch.setattr(FrameCache, "_decode_all", staticmethod(lambda *a: pytest.fail("decoded again")))
    opened = FrameCache.open(m, 8, 4)
    assert not opened.built and opened.fingerprint == built.fingerprint
    np.testing.assert_array_equal(opened.frames, built.frames)
    with pytest.raises(ManifestError, match="frames_8x6.npy"):
        FrameCache.open(m, 8, 6)  # another size was never built


def test_plan_gpu_cache_fits_falls_back_or_refuses():
    GB = 10**9
    mars_train = 509_914 * 227 * 227 * 3  # 78.8 GB: the H200's ~140 GB hold it with headroom
    assert plan_gpu_cache("auto", mars_train, 140 * GB) == (True, "")
    assert plan_gpu_cache("always", mars_train, 140 * GB) == (True, "")
    assert plan_gpu_cache("never", mars_train, 140 * GB) == (False, "")
    resident, why = plan_gpu_cache("auto", mars_train, 80 * GB)  # fits, but not with the headroom
    assert not resident and "78.8 GB" in why and "80.0 GB" in why and "host" in why
    with pytest.raises(ConfigError, match=r"train.gpu_cache=always.*train.gpu_cache=auto.*train.gpu_cache=never"):
        plan_gpu_cache("always", mars_train, 80 * GB)
    assert plan_gpu_cache("auto", 10, 20, headroom=10) == (True, "")
    assert not plan_gpu_cache("auto", 10, 19, headroom=10)[0]
    with pytest.raises(ConfigError, match="train.gpu_cache"):
        plan_gpu_cache("sometimes", 1, 1)


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


def test_normalize_clips_16_bit_is_the_float32_result_rounded_once():
    raw = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16, 1).repeat(2, 3, 1, 1, 3)  # every value
    mirror = torch.tensor([True, False])
    ref = normalize_clips(raw, mirror)
    for dtype in (torch.bfloat16, torch.float16):
        out = normalize_clips(raw, mirror, dtype)
        assert out.dtype == dtype and out.shape == ref.shape and out.is_contiguous()
        assert torch.equal(out, ref.to(dtype))


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


def _reference_draws(m, P, K, T, seed, epoch, steps=None):
    """The loader's sampling order, spelled out: PKSampler, then per step T frames per clip and
    the mirror flags from one rng seeded (seed, epoch, rank, 1). Batches must keep following it."""
    train = m.positions(m.split(0).train)
    sampler = PKSampler(m.pids[train], P, K, seed=seed, positions=train, steps_per_epoch=steps)
    sampler.set_epoch(epoch)
    rng = np.random.default_rng([seed, epoch, 0, 1])
    for positions in sampler:
        frame_idx = np.stack([train_frame_indices(int(m.lengths[p]), T, rng) for p in positions])
        yield positions, frame_idx, rng.random(len(positions)) < 0.5


def _fields(b):
    return [b.clips, b.pids, b.camids, b.tracklet_ids, b.positions, b.frame_idx, b.visibility, b.mirrored]


@pytest.mark.parametrize("erasing", [0.0, 0.3])
def test_train_loader_batches_bit_identical_with_and_without_prefetch(dataset, erasing):
    m, cache = dataset
    make = lambda **kw: TrainClipLoader(m, cache, P=2, K=3, T=5, seed=4, frame_erasing=erasing,  # noqa: E731
                                        steps_per_epoch=5, **kw)
    serial = make(prefetch=0)
    serial.set_epoch(2)
    expected = list(serial)
    reference = list(_reference_draws(m, 2, 3, 5, 4, 2, 5))
    assert len(expected) == len(reference) == 5
    for b, (positions, frame_idx, flips) in zip(expected, reference):
        assert b.positions.tolist() == positions.tolist() and (b.frame_idx.numpy() == frame_idx).all()
        assert (b.mirrored.numpy() == flips).all()
        for n, p in enumerate(positions):
            raw = torch.from_numpy(cache.clip(p, frame_idx[n]))[None]
            if not erasing:
                assert torch.equal(b.clips[n:n + 1], normalize_clips(raw, b.mirrored[n:n + 1]))
    for kw in ({"prefetch": 1}, {"prefetch": 2}, {"prefetch": 2, "resident": True}, {"prefetch": 0, "resident": True}):
        loader = make(**kw)
        loader.set_epoch(2)
        got = list(loader)
        assert len(got) == len(expected) and loader.epoch == 3, kw
        for a, b in zip(got, expected):
            for x, y in zip(_fields(a), _fields(b)):
                torch.testing.assert_close(x, y, rtol=0, atol=0, equal_nan=True, msg=lambda e: f"{kw}: {e}")


def _prefetch_threads():
    return [t for t in threading.enumerate() if t.name == "reidkit-prefetch"]


def test_train_loader_prefetch_thread_stops_when_the_loop_ends_early(dataset):
    m, cache = dataset
    before = len(_prefetch_threads())
    loader = TrainClipLoader(m, cache, P=2, K=3, T=5, steps_per_epoch=6, prefetch=2)
    for i, _ in enumerate(loader):
        assert len(_prefetch_threads()) == before + 1
        if i == 1:
            break
    gc.collect()
    assert len(_prefetch_threads()) == before, "break leaves no thread behind"
    with pytest.raises(RuntimeError, match="step failed"):
        for _ in loader:
            raise RuntimeError("step failed")
    gc.collect()
    assert len(_prefetch_threads()) == before, "an exception in the loop leaves no thread behind"
    assert loader.epoch == 0, "an unfinished pass does not count as an epoch"
    assert len(list(loader)) == 6 and len(_prefetch_threads()) == before


def test_prefetcher_reraises_errors_and_never_refills_a_held_slot():
    def work(item, slot):
        if item == 5:
            raise KeyError("frame 5")
        return item, slot

    with Prefetcher(range(10), work, slots=2) as ahead:
        seen = []
        with pytest.raises(KeyError, match="frame 5"):
            for (item, slot), s in ahead:
                assert slot == s
                seen.append(item)
                ahead.release(s)
        assert seen == [0, 1, 2, 3, 4]
    assert not ahead.alive

    held, order = set(), []
    with Prefetcher(range(8), lambda item, slot: (assert_free(slot, held), slot)[1], slots=3) as ahead:
        for slot, s in ahead:
            held.add(s)
            order.append(s)
            if len(held) == 2:  # keep two slots; hand back the oldest
                held.discard(order[-2])
                ahead.release(order[-2])
        assert len(order) == 8
    with pytest.raises(ValueError, match="slots"):
        Prefetcher([], lambda i, s: i, slots=0)


def _closes_promptly(ahead: Prefetcher) -> bool:
    closer = threading.Thread(target=ahead.close)  # a hang becomes a failed assertion, not a stuck run
    closer.start()
    closer.join(timeout=20)
    return not closer.is_alive() and not ahead.alive


def test_prefetcher_close_stops_a_thread_waiting_for_a_slot_or_mid_work():
    ahead = Prefetcher(range(100), lambda item, slot: item, slots=1)
    assert next(iter(ahead)) == (0, 0)  # slot 0 is never released: the thread waits for it
    assert _closes_promptly(ahead)
    started = threading.Event()

    def slow(item, slot):
        started.set()
        threading.Event().wait(0.3)
        return item

    ahead = Prefetcher(range(100), slow, slots=2)
    started.wait(5)
    assert _closes_promptly(ahead)  # waits for the one call in progress, starts no other


def assert_free(slot, held):
    assert slot not in held, f"slot {slot} refilled while the consumer still holds it"


def test_upload_keeps_training_rows_and_test_rows_come_from_the_map(dataset):
    m, cache = dataset
    train, test = m.positions(m.split(0).train), m.positions(m.split(0).query + m.split(0).gallery)
    rows = cache.tracklet_rows(train)
    assert len(rows) == m.lengths[train].sum() and len(set(rows.tolist())) == len(rows)
    copy = cache.upload("cpu", rows)  # a real copy on the CPU: the same bookkeeping as on a GPU
    assert copy.shape == (len(rows), 12, 6, 3) and not np.shares_memory(copy.numpy(), cache.frames)
    assert cache.upload("cpu", rows[::2]).data_ptr() == copy.data_ptr(), "a copy holding the rows is reused"
    assert cache.upload_bytes("cpu", rows) == 0, "another Trainer on this cache needs no new memory"
    some = cache.rows(train[:2], [[0, 1], [1, 0]])
    assert cache.resident_rows(some, "cpu") is not None
    test_rows = cache.rows(test[:2], [[0, 1], [1, 0]])
    assert cache.resident_rows(test_rows, "cpu") is None, "test frames are not in the copy"
    copy[:] = 0  # show which path served each gather
    assert (cache.gather(some, "cpu") == 0).all()
    np.testing.assert_array_equal(cache.gather(test_rows, "cpu").numpy(), cache.frames[test_rows])
    both = np.concatenate([some, test_rows])
    np.testing.assert_array_equal(cache.gather(both, "cpu").numpy(), cache.frames[both])  # a mix: the map
    assert cache.upload_bytes("cpu", cache.tracklet_rows(test)) == m.lengths[test].sum() * 12 * 6 * 3
    assert cache.upload("cpu", cache.tracklet_rows(test)).shape[0] == m.lengths[test].sum()  # replaced
    with pytest.raises(IndexError, match="out of range"):
        cache.upload("cpu", [len(cache)])
    buf = torch.empty(test_rows.shape + (12, 6, 3), dtype=torch.uint8)
    assert cache.host_gather(test_rows, out=buf) is buf
    with pytest.raises(ValueError, match="out must be uint8"):
        cache.host_gather(test_rows[:1], out=buf)


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
    assert gpu.clips.is_cuda and gpu.pids.is_cuda and "cuda:0" in cache._resident
    train_rows = cache.tracklet_rows(m.positions(m.split(0).train))
    assert cache._resident["cuda:0"][0].shape[0] == len(train_rows), "only the training frames are uploaded"
    for prefetch in (0, 2):  # the host path (pinned buffers, async copies) gives the same batches
        host = next(iter(TrainClipLoader(m, cache, P=2, K=2, T=4, seed=1, device="cuda", resident=False,
                                         prefetch=prefetch)))
        assert torch.equal(host.clips, gpu.clips) and torch.equal(host.frame_idx, gpu.frame_idx)
    bf16 = next(iter(TrainClipLoader(m, cache, P=2, K=2, T=4, seed=1, device="cuda", dtype=torch.bfloat16)))
    torch.testing.assert_close(bf16.clips.float().cpu(), cpu.clips, atol=0.02, rtol=0.01)
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


def test_prefetch_thread_only_where_a_core_is_spare(dataset, monkeypatch):
    """On a CPU whose cores all compute, a prefetch thread only competes with training."""
    m, cache = dataset
    threads = torch.get_num_threads()
    for cores, expected in ((threads, 0), (threads + 1, 2)):
        monkeypatch.setattr("os.cpu_count", lambda cores=cores: cores)
        assert TrainClipLoader(m, cache, P=2, K=3, T=5).prefetch == expected
    assert TrainClipLoader(m, cache, P=2, K=3, T=5, prefetch=1).prefetch == 1  # an explicit choice stays
