"""Video reader: videos written here with PyAV, read back frame-exact or within codec error."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from cubepipe.storage.errors import CubepipeWarning, FormatError, MissingDependencyError
from cubepipe.storage.readers import READERS, detect_format, open_source
from cubepipe.storage.readers.video import _read_frames, _scan, open_video

try:
    import av
except ImportError:  # PyAV is the optional 'video' extra
    av = None
needs_av = pytest.mark.skipif(
    av is None, reason="PyAV is not installed (pip install 'cubepipe[video]')"
)

BUNNY = (
    Path(__file__).resolve().parents[2].parent / "shared" / "data" / "video" / "bigbuckbunny.mp4"
)
LOSSY = "libx264" if av is not None and "libx264" in av.codecs_available else "mpeg4"


def moving_pattern(n: int, h: int = 48, w: int = 64, *, smooth: bool = False) -> np.ndarray:
    """``(frame, y, x, 3)`` uint8 frames that change every frame (sharp or smooth)."""
    t = np.arange(n)[:, None, None]
    yy, xx = np.mgrid[0:h, 0:w]
    if smooth:
        r = 128 + 90 * np.sin(xx / 20.0 + t / 4.0)
        g = 128 + 90 * np.cos(yy / 16.0 - t / 5.0)
        b = 40 + (xx + yy) // 2 + 0 * t
    else:
        r, g, b = (xx * 4 + t * 3) % 256, (yy * 5 + t * 7) % 256, ((xx + yy) * 2 + t) % 256
    return np.stack(np.broadcast_arrays(r, g, b), axis=-1).astype(np.uint8)


def write_video(
    path: Path,
    frames: np.ndarray,
    *,
    codec: str,
    pix_fmt: str,
    src_fmt: str = "rgb24",
    gop: int | None = None,
    b_frames: int | None = None,
    bit_rate: int | None = None,
) -> Path:
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=25)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = pix_fmt
        if gop:
            stream.codec_context.gop_size = gop
        if bit_rate:
            stream.bit_rate = bit_rate
        if b_frames is not None:
            stream.codec_context.max_b_frames = b_frames
        for image in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format=src_fmt)))
        container.mux(stream.encode())
    return path


def decoded(frame) -> np.ndarray:
    """One PyAV frame as ``(band, y, x)`` RGB."""
    return frame.to_ndarray(format="rgb24").transpose(2, 0, 1)


def decode_all(path: Path) -> np.ndarray:
    """Plain sequential decoding with PyAV, as ``(frame, band, y, x)``."""
    with av.open(str(path)) as container:
        return np.stack([decoded(f) for f in container.decode(video=0)])


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / mse))


@needs_av
@pytest.mark.parametrize(
    ("name", "codec", "pix_fmt"),
    [("ffv1.mkv", "ffv1", "bgr0"), ("png.mov", "png", "rgb24"), ("ffv1.avi", "ffv1", "bgr0")],
)
def test_lossless_video_ingests_frame_exact(tmp_path, name, codec, pix_fmt):
    frames = moving_pattern(21)
    path = write_video(tmp_path / name, frames, codec=codec, pix_fmt=pix_fmt)
    assert detect_format(path).name == "video"
    ds = open_source(path, chunks={"frame": 4})
    cube = ds["cube"]
    assert cube.dims == ("frame", "band", "y", "x")
    assert cube.shape == (21, 3, 48, 64) and cube.dtype == np.uint8
    assert cube.data.chunks[0] == (4, 4, 4, 4, 4, 1)
    np.testing.assert_array_equal(cube.values, frames.transpose(0, 3, 1, 2))
    assert list(ds["band_name"].values) == ["R", "G", "B"]
    assert ds["band_name"].dtype == object  # variable-length strings: a zarr v3 "string"
    np.testing.assert_allclose(ds["time"].values, np.arange(21) / 25.0, atol=1e-3)
    assert ds["time"].dtype == np.float64 and ds["time"].attrs["units"] == "s"
    assert ds.attrs["source"] == str(path) and ds.attrs["format"] == "video"


@needs_av
def test_mkv_frame_count_needs_the_counting_pass(tmp_path):
    path = write_video(tmp_path / "c.mkv", moving_pattern(13), codec="ffv1", pix_fmt="bgr0")
    with av.open(str(path)) as container:
        assert container.streams.video[0].frames == 0  # Matroska does not store it
    assert open_video(path, chunks={})["cube"].sizes["frame"] == 13


@needs_av
@pytest.mark.parametrize(
    ("pix_fmt", "bits", "dtype"),
    [("gray", 8, np.uint8), ("gray10le", 10, np.uint16), ("gray16le", 16, np.uint16)],
)
def test_grey_video_has_one_band_exact_at_its_own_depth(tmp_path, pix_fmt, bits, dtype):
    grey = moving_pattern(9)[..., 0].astype(dtype) << (bits - 8)
    grey += (np.arange(grey.size) % (1 << (bits - 8))).reshape(grey.shape).astype(dtype)
    path = write_video(tmp_path / "g.mkv", grey, codec="ffv1", pix_fmt=pix_fmt, src_fmt=pix_fmt)
    ds = open_video(path, chunks={"frame": 2})
    assert ds["cube"].dtype == dtype and list(ds["band_name"].values) == ["grey"]
    assert ds["cube"].attrs["bit_depth"] == bits
    np.testing.assert_array_equal(ds["cube"].values, grey[:, None])


@needs_av
def test_16_bit_rgb_is_exact(tmp_path):
    rgb = moving_pattern(5).astype(np.uint16) * 257 + 1
    path = write_video(tmp_path / "d.mkv", rgb, codec="ffv1", pix_fmt="gbrp16le", src_fmt="rgb48le")
    ds = open_video(path, chunks={})
    assert ds["cube"].dtype == np.uint16 and ds["cube"].attrs["bit_depth"] == 16
    np.testing.assert_array_equal(ds["cube"].values, rgb.transpose(0, 3, 1, 2))


@needs_av
def test_lossy_h264_mp4_is_within_codec_tolerance(tmp_path):
    frames = moving_pattern(24, smooth=True)
    path = write_video(tmp_path / "h.mp4", frames, codec=LOSSY, pix_fmt="yuv420p", bit_rate=2**21)
    got = open_video(path, chunks={})["cube"].values
    ref = frames.transpose(0, 3, 1, 2)
    assert got.shape == ref.shape and got.dtype == np.uint8
    assert np.abs(got.astype(np.int16) - ref).mean() < 3
    assert psnr(got, ref) > 30


@needs_av
@pytest.mark.parametrize(
    ("name", "codec", "gop", "b_frames"),
    [("gop.mp4", LOSSY, 5, 2), ("gop.mkv", LOSSY, 7, 3), ("bframes.avi", "mpeg4", 6, 2)],
)
@pytest.mark.parametrize("per_block", [1, 3, 7])
def test_blocks_across_gops_equal_sequential_decoding(
    tmp_path, name, codec, gop, b_frames, per_block
):
    # B-frames make decode order differ from presentation order (and AVI stores no
    # presentation times at all), so frames are matched by the pts the decoder gives.
    path = write_video(
        tmp_path / name,
        moving_pattern(30),
        codec=codec,
        pix_fmt="yuv420p",
        gop=gop,
        b_frames=b_frames,
    )
    ref = decode_all(path)
    ds = open_video(path, chunks={"frame": per_block})
    np.testing.assert_array_equal(ds["cube"].values, ref)
    # single blocks out of order, each decoded on its own
    for start in (27, 11, 0, 16):
        np.testing.assert_array_equal(ds["cube"][start : start + 3].values, ref[start : start + 3])


@needs_av
def test_a_seek_that_lands_too_late_falls_back_to_decoding_from_the_start(tmp_path):
    path = write_video(
        tmp_path / "late.mp4", moving_pattern(20), codec=LOSSY, pix_fmt="yuv420p", gop=5
    )
    ref = decode_all(path)
    facts = _scan(av, path)
    plan = facts["plan"][6:9].copy()
    assert (plan[:, 1] <= plan[:, 0]).all()  # seek points: keyframes at or before the frame
    plan[:, 1] = facts["plan"][15, 1]  # pretend the index sent us to a later keyframe
    got = _read_frames(
        plan, path=str(path), index=facts["index"], pixels=facts["pixels"], shape=ref.shape[1:]
    )
    np.testing.assert_array_equal(got, ref[6:9])


@needs_av
def test_a_stream_cut_before_its_first_keyframe_reads_like_ffmpeg(tmp_path):
    full = write_video(
        tmp_path / "full.mkv", moving_pattern(30), codec=LOSSY, pix_fmt="yuv420p", gop=10
    )
    cut = tmp_path / "cut.mkv"
    with av.open(str(full)) as src, av.open(str(cut), "w") as dst:
        out = dst.add_stream_from_template(src.streams.video[0])
        packets = [p for p in src.demux(video=0) if p.dts is not None]
        for packet in packets[3:]:  # drop the first keyframe and two frames after it
            packet.stream = out
            dst.mux(packet)
    with av.open(str(cut)) as container:
        stream = container.streams.video[0]
        first_key = min(p.pts for p in container.demux(stream) if p.is_keyframe)
        container.seek(0)
        tb = float(stream.time_base)
        ref = {f.pts * tb: decoded(f) for f in container.decode(stream) if f.pts >= first_key}
    with pytest.warns(CubepipeWarning, match="before the first keyframe"):
        ds = open_video(cut, chunks={"frame": 4})
    assert list(ds["time"].values) == sorted(ref) and len(ref) >= 10
    np.testing.assert_array_equal(ds["cube"].values, np.stack([ref[t] for t in sorted(ref)]))


@needs_av
def test_spatial_chunks_come_from_one_decode_per_frame_block(tmp_path, no_compute):
    frames = moving_pattern(10)
    path = write_video(tmp_path / "s.mkv", frames, codec="ffv1", pix_fmt="bgr0")
    with no_compute:
        ds = open_video(path, chunks={"frame": 3, "y": 20, "x": 25})
        part = ds["cube"].isel(frame=slice(2, 9), y=slice(5, 40)).astype("float32") * 2
    chunks = ds["cube"].data.chunks
    assert chunks == ((3, 3, 3, 1), (3,), (20, 20, 8), (25, 25, 14))
    decode_layers = [n for n in ds["cube"].data.dask.layers if n.startswith("cubepipe-ingest")]
    assert len(decode_layers) == 1
    np.testing.assert_array_equal(ds["cube"].values, frames.transpose(0, 3, 1, 2))
    assert part.shape == (7, 3, 35, 64)


def test_missing_av_names_the_extra(tmp_path, monkeypatch):
    path = tmp_path / "m.mkv"
    path.write_bytes(b"\x1aE\xdf\xa3" + bytes(60))  # a Matroska start is enough here
    monkeypatch.setitem(sys.modules, "av", None)  # `import av` now raises ImportError
    assert detect_format(path).name == "video"  # sniffing needs no PyAV
    with pytest.raises(MissingDependencyError, match=r"pip install 'cubepipe\[video\]'") as err:
        open_video(path, chunks={})
    assert err.value.extra == "video" and err.value.module == "av"


@needs_av
def test_unreadable_or_videoless_files_are_refused(tmp_path):
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\0\0\0\x18ftypisom" + b"\x00garbage" * 20)
    with pytest.raises(FormatError, match=r"broken\.mp4: expected a video"):
        open_video(broken, chunks={})
    audio = tmp_path / "audio.mkv"
    with av.open(str(audio), "w") as container:
        stream = container.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(
            np.zeros((1, 800), np.int16), format="s16", layout="mono"
        )
        frame.sample_rate = 8000
        container.mux(stream.encode(frame))
        container.mux(stream.encode())
    with pytest.raises(FormatError, match=r"audio\.mkv: expected a video stream, found none"):
        open_video(audio, chunks={})


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (b"\0\0\0\x20ftypisom\0\0\2\0", True),
        (b"\0\0\0\x14ftypqt  \0\0\0\0", True),
        (b"\0\0\0\x18ftypheic\0\0\0\0", False),  # a HEIF still image
        (b"\x1aE\xdf\xa3\x9fB\x86\x81\x01", True),
        (b"RIFF\x10\0\0\0AVI LIST", True),
        (b"RIFF\x10\0\0\0WEBPVP8 ", False),
        (b"\x89PNG\r\n\x1a\n", False),
    ],
)
def test_sniff(head, expected):
    assert READERS["video"].sniff(head, Path("x")) is expected


@needs_av
@pytest.mark.skipif(not BUNNY.is_file(), reason=f"shared real video not found at {BUNNY}")
def test_real_big_buck_bunny(no_compute):
    with no_compute:
        ds = open_source(BUNNY)
    cube = ds["cube"]
    assert cube.shape == (132, 3, 720, 1280) and cube.dtype == np.uint8
    np.testing.assert_allclose(ds["time"].values, np.arange(132) * 0.04, atol=1e-9)
    assert ds.attrs["codec"] == "h264" and ds.attrs["fps"] == 25.0
    first, last = cube[:8].values, cube[-4:].values
    total, want = 0.0, {}
    with av.open(str(BUNNY)) as container:  # sequential reference, kept to two blocks
        for i, frame in enumerate(container.decode(video=0)):
            image = frame.to_ndarray(format="rgb24")
            total += image.mean(dtype=np.float64)
            if i < 8 or i >= 128:
                want[i] = image.transpose(2, 0, 1)
    assert total / 132 == pytest.approx(109.28, abs=0.005)
    np.testing.assert_array_equal(first, np.stack([want[i] for i in range(8)]))
    np.testing.assert_array_equal(last, np.stack([want[i] for i in range(128, 132)]))
