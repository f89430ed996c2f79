"""Named cases of bad input (issue 13): each is refused up front with one line naming the
file, before anything blocks, allocates what a header claims, or is unpickled; and what is
accepted is exact. The table-driven sweep is tests/reliability/test_inputs.py."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import tifffile
import xarray as xr
from PIL import Image

from cubepipe.storage.errors import CubepipeError, FormatError, InputError
from cubepipe.storage.ingest import ingest, open_input
from cubepipe.storage.readers import open_source
from cubepipe.storage.sidecar import read_sidecar

from ..reliability.corpus import Exploit, deflate_zeros, png_bytes, tiff_bytes


def _cubepipe(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("cubepipe")
    env = {**os.environ, "CUBEPIPE_DEVICE": ""}
    try:
        return subprocess.run(
            [str(exe), "-q", *args], capture_output=True, text=True, timeout=timeout, env=env
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"cubepipe {' '.join(args)} hung for {timeout} s")


def _one_line_error(stderr: str, *words: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cubepipe: error: "), stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def _npy_header(shape: tuple[int, ...], descr: str = "<f8") -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf, {"descr": descr, "fortran_order": False, "shape": shape}
    )
    return buf.getvalue()


# -- 1. non-regular files ------------------------------------------------------------------


@pytest.mark.parametrize("command", ["ingest", "filter"])
def test_fifo_input_is_refused_instead_of_waiting_forever(tmp_path: Path, command: str) -> None:
    fifo = tmp_path / "pipe.npy"
    os.mkfifo(fifo)
    extra = ["--kernel", "box:3"] if command == "filter" else []
    r = _cubepipe(command, str(fifo), "-o", str(tmp_path / "out.zarr"), *extra)
    assert r.returncode == 2
    _one_line_error(r.stderr, "pipe.npy", "FIFO", "not a regular file")


def test_character_device_is_refused_whatever_the_format(tmp_path: Path) -> None:
    for fmt in ("npy", "tiff", "envi", "video", "auto"):
        with pytest.raises(InputError, match="/dev/zero: is a character device"):
            open_input("/dev/zero", format=fmt)


def test_dangling_and_looping_symlinks_are_named(tmp_path: Path) -> None:
    (tmp_path / "gone.npy").symlink_to(tmp_path / "nowhere.npy")
    with pytest.raises(InputError, match="gone.npy: is a symbolic link to .*nowhere.npy"):
        open_input(tmp_path / "gone.npy")
    (tmp_path / "a.npy").symlink_to(tmp_path / "b.npy")
    (tmp_path / "b.npy").symlink_to(tmp_path / "a.npy")
    with pytest.raises(InputError, match="a.npy: cannot be opened"):
        open_input(tmp_path / "a.npy")


# -- 2. declared sizes against the file, before any allocation -----------------------------


def test_npy_shape_whose_size_wraps_int64_is_refused(tmp_path: Path) -> None:
    p = tmp_path / "wrap.npy"
    p.write_bytes(_npy_header((2**32, 2**32, 4), "<f4") + bytes(64))
    with pytest.raises(FormatError, match="wrap.npy: the file is truncated or its header"):
        open_source(p)


def test_kernel_file_with_lying_header_is_refused_before_allocating(cli, tmp_path: Path) -> None:
    np.save(tmp_path / "cube.npy", np.zeros((2, 8, 8), np.float32))
    kernel = tmp_path / "K.npy"
    kernel.write_bytes(_npy_header((100000, 100000)) + bytes(64))  # claims 74.5 GiB
    r = cli("-q", "filter", str(tmp_path / "cube.npy"), "-o", str(tmp_path / "f.zarr"),
            "--kernel", f"file:{kernel}")  # fmt: skip
    assert r.returncode == 2
    _one_line_error(r.stderr, "K.npy", "(100000, 100000)", "2201 taps per axis")
    small = tmp_path / "S.npy"
    small.write_bytes(_npy_header((5, 5)) + bytes(64))  # within limits, but truncated
    r = cli("-q", "filter", str(tmp_path / "cube.npy"), "-o", str(tmp_path / "g.zarr"),
            "--kernel", f"file:{small}")  # fmt: skip
    assert r.returncode == 2
    _one_line_error(r.stderr, "S.npy", "truncated")


def test_kernel_file_pickle_is_never_unpickled(cli, tmp_path: Path) -> None:
    np.save(tmp_path / "cube.npy", np.zeros((2, 8, 8), np.float32))
    payload = np.empty(3, dtype=object)
    payload[:] = [Exploit(tmp_path / "PWNED"), 1, 2]
    np.save(tmp_path / "K.npy", payload, allow_pickle=True)
    r = cli("-q", "filter", str(tmp_path / "cube.npy"), "-o", str(tmp_path / "f.zarr"),
            "--kernel", f"file:{tmp_path / 'K.npy'}")  # fmt: skip
    assert r.returncode == 2
    _one_line_error(r.stderr, "K.npy", "pickle")
    assert not (tmp_path / "PWNED").exists()


def test_tiff_strip_decoding_beyond_the_budget_is_refused_at_open(tmp_path: Path) -> None:
    p = tmp_path / "bomb.tif"  # one deflate strip of 20000 x 20000 float32, 4 KiB of data
    strip = zlib.compress(bytes(4096))
    p.write_bytes(tiff_bytes(20000, 20000, [strip], rows_per_strip=20000, compression=8))
    with pytest.raises(FormatError, match=r"bomb.tif: one strip .* decodes to 1526 MiB.*tiffcp"):
        open_source(p)


def test_png_over_the_pixel_limit_is_a_one_line_format_error(cli, tmp_path: Path) -> None:
    p = tmp_path / "bomb.png"  # 90 M pixels: Pillow only warns, then decodes it all
    p.write_bytes(png_bytes(9500, 9500, deflate_zeros(9500 * 9501)))
    r = cli("-q", "ingest", str(p), "-o", str(tmp_path / "b.zarr"))
    assert r.returncode == 2
    _one_line_error(r.stderr, "bomb.png", "decompression-bomb limit", "tiled TIFF")
    assert not (tmp_path / "b.zarr").exists()


def test_png_whose_data_stop_early_is_refused(tmp_path: Path) -> None:
    p = tmp_path / "short.png"  # Pillow fills the 2997 missing rows with zeros
    p.write_bytes(png_bytes(3000, 3000, zlib.compress(bytes(3001 * 3))))
    with pytest.raises(FormatError, match="short.png: damaged PNG"):
        open_source(p)["cube"].values  # noqa: B018


# -- 3. a compressed strip is decoded once per pass ----------------------------------------


def test_single_strip_tiff_is_decoded_once_per_pass(tmp_path: Path) -> None:
    a = np.random.default_rng(0).normal(size=(2, 1200, 1000)).astype(np.float32)
    p = tmp_path / "one-strip.tif"
    tifffile.imwrite(p, a, compression="zlib", rowsperstrip=1200, photometric="minisblack")
    data = open_source(p, chunks={"y": 256, "x": 256})["cube"].data
    assert data.numblocks == (1, 5, 4)  # the blocks asked for ...
    graph = dict(data.__dask_graph__())
    reads = [
        k for k in graph if k[0].startswith("cubepipe-ingest-read-tiff-") and "blocks" not in k[0]
    ]
    assert len(reads) == 1  # ... cut from one read of the two strips (one per page)
    np.testing.assert_array_equal(data.compute(), tifffile.imread(p))


def test_tiled_tiff_reads_whole_tiles_whatever_the_chunks(tmp_path: Path) -> None:
    a = np.random.default_rng(1).integers(0, 999, (3, 100, 90)).astype(np.uint16)
    p = tmp_path / "tiles.tif"
    tifffile.imwrite(p, a, compression="zlib", tile=(32, 48), photometric="minisblack")
    data = open_source(p, chunks={"y": 20, "x": 20, "band": 2})["cube"].data
    assert data.chunks == ((2, 1), (20,) * 5, (20,) * 4 + (10,))
    np.testing.assert_array_equal(data.compute(), a)


# -- 4. sidecars -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("scale", {}, "'scale' must be a finite number"),
        ("scale", "big", "'scale' must be a finite number"),
        ("offset", [1, [2]], "'offset' must be a finite number"),
        ("offset", None, "'offset' must be a finite number"),
        ("max_abs_error", -1, "'max_abs_error' must be a number >= 0"),
        ("bits", "8", "'bits' must be 8, 16 or 32"),
        ("bits", True, "'bits' must be 8, 16 or 32"),
        ("nan_value", 0.5, "'nan_value' must be an integer"),
    ],
)
def test_sidecar_field_of_wrong_type_is_a_format_error(
    tmp_path: Path, field: str, value: object, expected: str
) -> None:
    image = tmp_path / "img.png"
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(image)
    side = {"cubepipe_sidecar": 1, "scale": 1.0, "offset": 0.0, "max_abs_error": 0.5, "bits": 8}
    side[field] = value
    (tmp_path / "img.png.cubepipe.json").write_text(json.dumps(side))
    with pytest.raises(FormatError, match=f"img.png.cubepipe.json: sidecar field {expected}"):
        read_sidecar(image)


def test_sidecar_scale_mapping_exits_2_not_1(cli, tmp_path: Path) -> None:
    image = tmp_path / "img.png"
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(image)
    side = {"cubepipe_sidecar": 1, "scale": {}, "offset": 0.0, "max_abs_error": 0.5, "bits": 8}
    (tmp_path / "img.png.cubepipe.json").write_text(json.dumps(side))
    r = cli("-q", "ingest", str(image), "-o", str(tmp_path / "i.zarr"))
    assert r.returncode == 2
    _one_line_error(r.stderr, "img.png.cubepipe.json")


# -- 5. pipeline YAML ------------------------------------------------------------------------


def test_pipeline_nested_3000_deep_is_refused_in_one_line(cli, tmp_path: Path) -> None:
    p = tmp_path / "deep.yaml"
    p.write_text("steps: " + "[" * 3000 + "]" * 3000 + "\n")
    r = cli("run", str(p))
    assert r.returncode == 2
    _one_line_error(r.stderr, "deep.yaml", "more than 32 deep")


def test_pipeline_alias_bomb_and_huge_file_are_refused(cli, tmp_path: Path) -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 9)]
    (tmp_path / "lol.yaml").write_text("\n".join([*lines, "steps: [*a8]", ""]))
    r = cli("run", str(tmp_path / "lol.yaml"))
    assert r.returncode == 2
    _one_line_error(r.stderr, "lol.yaml", "expands to more than")
    (tmp_path / "big.yaml").write_text("# " + "x" * (5 * 2**20))
    r = cli("run", str(tmp_path / "big.yaml"))
    assert r.returncode == 2
    _one_line_error(r.stderr, "big.yaml", "at most 4 MiB")


# -- 6. numeric honesty ----------------------------------------------------------------------


def test_int64_beyond_2_53_stops_the_float64_ingest(tmp_path: Path) -> None:
    a = np.zeros((1, 4, 4), np.int64)
    a[0, 2, 3] = 2**53 + 1
    np.save(tmp_path / "big.npy", a)
    with pytest.raises(InputError, match=r"big.npy: 1 int64 value.* not exact in float64 "
                       r"\(the first: 9007199254740993.*--dtype float32"):  # fmt: skip
        ingest(tmp_path / "big.npy", tmp_path / "big.zarr", dtype="float64")
    meta = xr.open_zarr(tmp_path / "big.zarr").attrs["cubepipe"]
    assert meta["complete"] is False


def test_int64_refusal_does_not_promise_exactness(tmp_path: Path) -> None:
    np.save(tmp_path / "i.npy", np.zeros((1, 4, 4), np.int64))
    with pytest.raises(InputError) as info:
        open_input(tmp_path / "i.npy")
    assert "2**53" in str(info.value) and "keep them exact" not in str(info.value)


def test_long_double_becomes_float64_and_overflow_stops(tmp_path: Path) -> None:
    a = np.array([[[1e300, -2.5], [1e-310, -0.0]]], dtype=np.longdouble)
    np.save(tmp_path / "ld.npy", a)
    out = ingest(tmp_path / "ld.npy", tmp_path / "ld.zarr")
    got = xr.open_zarr(out)["cube"].values
    assert got.dtype == np.float64
    np.testing.assert_array_equal(got, a.astype(np.float64))
    if np.finfo(np.longdouble).max <= np.finfo(np.float64).max:
        pytest.skip("long double is float64 here: nothing can overflow")
    a[0, 0, 1] = np.longdouble(np.finfo(np.float64).max) * 4
    np.save(tmp_path / "over.npy", a)
    with pytest.raises(InputError, match="over.npy: 1 float128 value.* overflow float64"):
        ingest(tmp_path / "over.npy", tmp_path / "over.zarr")


def test_float64_that_overflows_the_asked_float32_stops(tmp_path: Path) -> None:
    np.save(tmp_path / "f.npy", np.array([[[1.0, 1e300, 3e38]]]))
    with pytest.raises(CubepipeError, match=r"f.npy: 1 float64 value.* overflow float32 "
                       r"\(the first: 1e\+300"):  # fmt: skip
        ingest(tmp_path / "f.npy", tmp_path / "f.zarr", dtype="float32")
