"""`cubepipe standardize VIDEO --stats S -o OUT`: streamed, with an explicit lossy output."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from cubepipe.pipeline.cli import stats as stats_cli
from cubepipe.pipeline.stats.fit import stats_to_json

from ..storage.test_video import decode_all, moving_pattern, write_video

pytest.importorskip("av")

MEAN, STD = np.array([120.0, 100.0, 90.0]), np.array([60.0, 50.0, 40.0])


@pytest.fixture
def clip(tmp_path: Path) -> tuple[Path, Path]:
    """A 20-frame lossless video and a statistics JSON file for it."""
    video = write_video(tmp_path / "clip.mkv", moving_pattern(20), codec="ffv1", pix_fmt="bgr0")
    values = {
        "stats_mean": MEAN,
        "stats_std": STD,
        "stats_min": np.zeros(3),
        "stats_max": np.full(3, 255.0),
        "stats_count": np.full(3, 1000, dtype=np.int64),
    }
    st = xr.Dataset({k: ("band", v) for k, v in values.items()})
    stats = tmp_path / "stats.json"
    stats.write_text(json.dumps(stats_to_json(st)))
    return video, stats


def _zscores(video: Path) -> np.ndarray:
    x = decode_all(video).astype(np.float64)
    return (x - MEAN[:, None, None]) / STD[:, None, None]


@pytest.mark.parametrize("encoding", ["float16", "int16-quantized"])
def test_lossy_encodings_record_their_error(cli, clip, tmp_path, encoding):
    video, stats = clip
    out = tmp_path / "z.zarr"
    proc = cli(
        "standardize", str(video), "--stats", str(stats), "-o", str(out), "--encoding", encoding
    )
    assert proc.returncode == 0, proc.stderr
    assert "note:" not in proc.stderr
    raw = xr.open_zarr(out, mask_and_scale=False)["cube"]
    assert raw.dtype == (np.float16 if encoding == "float16" else np.int16)
    cube = xr.open_zarr(out)["cube"]  # decoded by xarray, no cubepipe
    err = float(cube.attrs["max_abs_error"])
    assert cube.attrs["cubepipe_encoding"] == encoding and 0 < err < 0.01
    got = cube.values.astype(np.float64)
    float32 = _zscores(video).astype(np.float32)  # the lossless output, which it bounds
    assert np.max(np.abs(got - float32)) <= err
    history = xr.open_zarr(out).attrs["cubepipe"]["history"][-1]
    assert history["params"]["encoding"] == encoding


def test_float32_stays_the_default_and_a_large_output_names_the_option(
    cli, clip, tmp_path, monkeypatch
):
    video, stats = clip
    monkeypatch.setattr(stats_cli, "_NOTE_MIN_BYTES", 0)  # the clip's output is small
    out = tmp_path / "z.zarr"
    proc = cli("standardize", str(video), "--stats", str(stats), "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    notes = [line for line in proc.stderr.splitlines() if "note:" in line]
    assert len(notes) == 1 and "--encoding float16 or int16-quantized" in notes[0]
    cube = xr.open_zarr(out)["cube"]
    assert cube.dtype == np.float32 and "cubepipe_encoding" not in cube.attrs
    want = _zscores(video).astype(np.float32)
    np.testing.assert_array_equal(cube.values, want)


def test_the_note_compares_the_output_with_the_input_file(tmp_path):
    mp4 = tmp_path / "v.mp4"
    mp4.write_bytes(bytes(1_055_736))  # the size of the real 1 MB video
    note = stats_cli._size_note(str(mp4), 132 * 3 * 720 * 1280 * 4)
    assert note is not None and "1.4 GiB" in note and "1.0 MiB" in note
    assert "\n" not in note
    assert stats_cli._size_note(str(mp4), 16 * 2**20) is None  # small: no note
    assert stats_cli._size_note(str(tmp_path), 2**40) is None  # a store: no file size
    big = tmp_path / "big.npy"
    big.write_bytes(bytes(2**20))
    assert stats_cli._size_note(str(big), 4 * 2**20) is None  # not large relative to it
