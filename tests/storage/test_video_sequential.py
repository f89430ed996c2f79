"""Video read at decoding speed: decoders kept open and positioned, seeking only backwards
or past a keyframe; frames bit-identical to plain PyAV, in any order, from any thread."""

from __future__ import annotations

import multiprocessing
import os
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import dask
import numpy as np
import pytest
import xarray as xr

from cubepipe.storage.readers import video
from cubepipe.storage.readers.video import MAX_IDLE_DECODERS, close_decoders, open_video

from .test_video import BUNNY, LOSSY, decode_all, decoded, moving_pattern, write_video

av = pytest.importorskip("av")


@pytest.fixture(autouse=True)
def no_decoders_left():
    close_decoders()
    yield
    assert not [d for d in video._DECODERS if d.busy], "a decoder was never given back"
    close_decoders()


@pytest.fixture
def decoding(monkeypatch):
    """Counts decoders opened and frames they decoded (``{"opens": n, "frames": n}``)."""
    counts = {"opens": 0, "frames": 0}
    original = video._Decoder.open

    def counting_open(self, *args):
        original(self, *args)
        counts["opens"] += 1
        frames = self._frames

        def counted():
            for frame in frames:
                counts["frames"] += 1
                yield frame

        self._frames = counted()

    monkeypatch.setattr(video._Decoder, "open", counting_open)
    return counts


def one_gop(path: Path, n: int = 40) -> Path:
    """H.264 (or MPEG-4) with a single keyframe and B-frames: any frame read costs a
    decode from frame 0 unless a decoder is already there."""
    return write_video(
        path, moving_pattern(n), codec=LOSSY, pix_fmt="yuv420p", gop=10 * n, b_frames=2
    )


def test_blocks_read_in_order_decode_each_frame_once(tmp_path, decoding):
    path = one_gop(tmp_path / "one.mp4")
    ref = decode_all(path)
    with av.open(str(path)) as container:
        keys = [p.is_keyframe for p in container.demux(video=0) if p.size]
    assert sum(keys) == 1
    cube = open_video(path, chunks={"frame": 4})["cube"]
    for start in range(0, 40, 4):  # one compute per block, as iter_standardized does
        np.testing.assert_array_equal(cube[start : start + 4].values, ref[start : start + 4])
    assert decoding == {"opens": 1, "frames": 40}


def test_random_order_reads_seek_only_backwards(tmp_path, decoding):
    path = one_gop(tmp_path / "one.mp4")
    ref = decode_all(path)
    cube = open_video(path, chunks={"frame": 1})["cube"]
    np.testing.assert_array_equal(cube[30].values, ref[30])
    assert decoding == {"opens": 1, "frames": 31}
    np.testing.assert_array_equal(cube[10].values, ref[10])  # earlier: a new decoder
    assert decoding == {"opens": 2, "frames": 31 + 11}
    np.testing.assert_array_equal(cube[31].values, ref[31])  # the first one continues
    assert decoding == {"opens": 2, "frames": 31 + 11 + 1}
    for i in (11, 39, 0, 20, 21, 5):
        np.testing.assert_array_equal(cube[i].values, ref[i], err_msg=f"frame {i}")


def test_a_frame_past_the_next_keyframe_seeks_to_it(tmp_path, decoding):
    path = write_video(
        tmp_path / "gop.mkv", moving_pattern(30), codec=LOSSY, pix_fmt="yuv420p", gop=5
    )
    ref = decode_all(path)
    cube = open_video(path, chunks={"frame": 1})["cube"]
    np.testing.assert_array_equal(cube[2].values, ref[2])
    np.testing.assert_array_equal(cube[3].values, ref[3])
    assert decoding["opens"] == 1
    before = decoding["frames"]
    np.testing.assert_array_equal(cube[27].values, ref[27])  # 24 frames on, 2 past a key
    assert decoding["opens"] == 2
    assert decoding["frames"] - before < 10  # from the keyframe, not through 4..26


def test_two_threads_reading_at_once_get_the_right_frames(tmp_path):
    path = one_gop(tmp_path / "one.mp4", n=48)
    ref = decode_all(path)
    cube = open_video(path, chunks={"frame": 3})["cube"]
    starts = list(range(0, 48, 3))
    rng = np.random.default_rng(0)
    orders = [starts, starts[::-1], list(rng.permutation(starts)), starts]
    barrier = threading.Barrier(2)

    def read(order):
        barrier.wait()  # this thread decodes
        return [(s, cube[s : s + 3].compute(scheduler="synchronous").values) for s in order]

    for pair in (orders[:2], orders[2:]):
        with ThreadPoolExecutor(2) as pool:
            for result in pool.map(read, pair):
                for s, got in result:
                    np.testing.assert_array_equal(got, ref[s : s + 3], err_msg=f"block {s}")
    with dask.config.set(scheduler="threads", num_workers=2):
        np.testing.assert_array_equal(cube.values, ref)


def test_two_threads_reading_blocks_in_order_share_the_decoding(tmp_path, decoding):
    """Two threads taking consecutive blocks: a thread waits for (or continues) the
    decoder nearest its block instead of decoding from the keyframe again, which would
    decode 4 + 8 + ... + 64 = 544 frames."""
    path = one_gop(tmp_path / "one.mp4", n=64)
    ref = decode_all(path)
    cube = open_video(path, chunks={"frame": 4})["cube"]
    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(_block, cube, s, 4) for s in range(0, 64, 4)]
        got = np.concatenate([f.result() for f in futures])
    np.testing.assert_array_equal(got, ref)
    assert decoding["frames"] <= 2 * 64  # about once each; the threads' start is a race


def test_iter_standardized_is_plain_pyav_then_numpy(tmp_path, decoding):
    from cubepipe.pipeline.stats.standardize import iter_standardized  # noqa: PLC0415
    from cubepipe.storage.ingest import open_input  # noqa: PLC0415

    path = one_gop(tmp_path / "one.mp4", n=30)
    mean, std = np.array([120.0, 100.0, 90.0]), np.array([60.0, 50.0, 40.0])
    stats = _stats(mean, std)
    got = list(iter_standardized(open_input(path, chunks={"frame": 4}), stats))
    assert decoding == {"opens": 1, "frames": 30}
    with av.open(str(path)) as container:
        want = [_by_hand(decoded(f), mean, std) for f in container.decode(video=0)]
    assert len(got) == len(want) == 30
    for i, (a, b) in enumerate(zip(got, want, strict=True)):
        assert a.dtype == np.float32
        np.testing.assert_array_equal(a, b, err_msg=f"frame {i}")


@pytest.mark.skipif(not BUNNY.is_file(), reason=f"shared real video not found at {BUNNY}")
def test_iter_standardized_on_the_real_video_is_bit_identical(decoding):
    from cubepipe.pipeline.stats.standardize import iter_standardized  # noqa: PLC0415
    from cubepipe.storage.ingest import open_input  # noqa: PLC0415

    mean, std = np.array([110.0, 105.0, 100.0]), np.array([70.0, 65.0, 60.0])
    got = []
    for frame in iter_standardized(open_input(BUNNY), _stats(mean, std)):
        got.append(frame)
        if len(got) == 20:
            break
    assert decoding == {"opens": 1, "frames": 24}  # three blocks of 8, each decoded once
    with av.open(str(BUNNY)) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i == 20:
                break
            np.testing.assert_array_equal(got[i], _by_hand(decoded(frame), mean, std))


def test_a_replaced_file_is_never_read_from_a_stale_decoder(tmp_path):
    path = one_gop(tmp_path / "v.mp4", n=12)
    np.testing.assert_array_equal(open_video(path)["cube"][:4].values, decode_all(path)[:4])
    other = write_video(
        tmp_path / "w.mp4", moving_pattern(12)[::-1].copy(), codec=LOSSY, pix_fmt="yuv420p"
    )
    os.replace(other, path)
    np.testing.assert_array_equal(open_video(path)["cube"][4:8].values, decode_all(path)[4:8])


def test_idle_decoders_are_capped(tmp_path):
    paths = [
        write_video(tmp_path / f"v{i}.mkv", moving_pattern(3), codec="ffv1", pix_fmt="bgr0")
        for i in range(MAX_IDLE_DECODERS + 3)
    ]
    for p in paths:
        assert open_video(p)["cube"][:1].values.shape == (1, 3, 48, 64)
    assert len(video._DECODERS) == MAX_IDLE_DECODERS
    assert {d.key[0] for d in video._DECODERS} == {str(p) for p in paths[3:]}


def test_a_failed_read_does_not_keep_its_decoder(tmp_path, monkeypatch):
    path = one_gop(tmp_path / "one.mp4", n=12)
    cube = open_video(path, chunks={"frame": 4})["cube"]
    original = video._Pixels.array

    def broken(self, frame, height, width):
        raise RuntimeError("boom")

    monkeypatch.setattr(video._Pixels, "array", broken)
    with pytest.raises(RuntimeError, match="boom"):
        cube[:4].compute()
    assert video._DECODERS == []
    monkeypatch.setattr(video._Pixels, "array", original)
    np.testing.assert_array_equal(cube[4:8].values, decode_all(path)[4:8])


def _read_in_child(path: str, queue) -> None:
    try:
        inherited = len(video._DECODERS)  # forgotten at fork: they share the parent's files
        ref = decode_all(Path(path))
        cube = open_video(path, chunks={"frame": 4})["cube"]
        queue.put((inherited, bool(np.array_equal(_block(cube, 4, 8), ref[4:12]))))
    except BaseException as exc:  # report, do not hang the parent
        queue.put(repr(exc))


@pytest.mark.skipif(
    "fork" not in multiprocessing.get_all_start_methods(), reason="no fork on this platform"
)
def test_a_forked_child_does_not_use_the_parents_decoders(tmp_path):
    path = one_gop(tmp_path / "one.mp4", n=16)
    open_video(path, chunks={"frame": 4})["cube"][:4].compute()  # the parent keeps a decoder
    assert len(video._DECODERS) == 1
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    with warnings.catch_warnings():  # "multi-threaded, use of fork() may lead to deadlocks"
        warnings.simplefilter("ignore", DeprecationWarning)
        child = ctx.Process(target=_read_in_child, args=(str(path), queue))
        child.start()
    assert queue.get(timeout=60) == (0, True)
    child.join(timeout=60)
    assert child.exitcode == 0
    assert len(video._DECODERS) == 1  # the parent's is still there, still usable
    np.testing.assert_array_equal(
        open_video(path, chunks={"frame": 4})["cube"][4:8].values, decode_all(path)[4:8]
    )


def _block(cube: xr.DataArray, start: int, n: int) -> np.ndarray:
    """Frames ``start:start + n`` decoded in the calling thread."""
    return cube[start : start + n].compute(scheduler="synchronous").values


def _stats(mean: np.ndarray, std: np.ndarray) -> xr.Dataset:
    n = len(mean)
    values = {
        "stats_mean": mean,
        "stats_std": std,
        "stats_min": np.zeros(n),
        "stats_max": np.full(n, 255.0),
        "stats_count": np.full(n, 1000, dtype=np.int64),
    }
    return xr.Dataset({k: ("band", v) for k, v in values.items()})


def _by_hand(image: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """``(band, y, x)`` uint8 -> float32 z-scores, float64 arithmetic (the reference)."""
    x = image.astype(np.float32).astype(np.float64)
    return ((x - mean[:, None, None]) / std[:, None, None]).astype(np.float32)


def _written(block: np.ndarray) -> np.ndarray:
    """Stands for a chunk write: one int per chunk."""
    return np.ones((1,) * block.ndim, dtype=np.int64)


def test_a_whole_video_job_decodes_forward(tmp_path, decoding):
    """dask orders a graph's independent blocks by their keys as strings ("10" before "2",
    and here backwards), which would decode a one-keyframe video from the start for
    nearly every block; the reader's ticket chain makes the job decode forward."""
    path = one_gop(tmp_path / "one.mp4", n=96)
    cube = open_video(path, chunks={"frame": 4, "y": 16, "x": 32})["cube"]  # 24 x 3 x 2
    scaled = (cube.data.astype(np.float32) - 128) / 64
    one_per_chunk = tuple((1,) * len(c) for c in scaled.chunks)
    done = scaled.map_blocks(_written, chunks=one_per_chunk, dtype=np.int64)
    with dask.config.set(scheduler="threads", num_workers=2):
        assert int(done.sum().compute()) == 24 * 3 * 2
    assert decoding["frames"] <= 96 + 8 and decoding["opens"] <= 2
