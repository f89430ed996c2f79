"""``cubepipe ingest`` through the real console script: results, and one-line errors."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from cubepipe.storage import describe, open_cube, store_state

DATA = Path(__file__).parents[1] / "data"


class _Exploit:
    """Unpickling this runs ``touch MARKER``: what a hostile .npy can do to np.load."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_ingest_real_png(cli, tmp_path: Path) -> None:
    out = tmp_path / "cam.zarr"
    r = cli("ingest", str(DATA / "images" / "camera.png"), "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"ingested 1 file(s) -> {out}: cube (band=1, y=512, x=512) float32")
    assert store_state(out) == "complete"
    with Image.open(DATA / "images" / "camera.png") as im:  # the reference: Pillow
        ref = np.asarray(im.convert("L"), dtype=np.float32)
    np.testing.assert_array_equal(open_cube(out)["cube"].values, ref[None])


def test_ingest_npy_with_options(cli, tmp_path: Path) -> None:
    a = np.random.default_rng(0).integers(0, 5000, (40, 30, 6)).astype("uint16")
    np.save(tmp_path / "a.npy", a)
    out = tmp_path / "a.zarr"
    args = ["--chunks", "y=16,x=16", "--dtype", "float64", "--layout", "yxb"]
    r = cli("-q", "ingest", str(tmp_path / "a.npy"), "-o", str(out), *args)
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    var = describe(out)["variables"]["cube"]
    assert var["dtype"] == "float64" and var["shape"] == [6, 40, 30]
    assert var["chunks"] == [6, 16, 16]
    np.testing.assert_array_equal(open_cube(out)["cube"].values, a.transpose(2, 0, 1))
    again = cli("-q", "ingest", str(tmp_path / "a.npy"), "-o", str(out))
    assert again.returncode == 2 and "--overwrite" in again.stderr


def test_ingest_directory_of_tiffs(cli, tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    for i in range(3):
        tifffile.imwrite(tmp_path / "d" / f"t{i}.tif", np.full((2, 8, 9), i, "int16"))
    r = cli("ingest", str(tmp_path / "d"), "-o", str(tmp_path / "d.zarr"))
    assert r.returncode == 0, r.stderr
    assert "ingested 3 file(s)" in r.stdout and "(image=3, band=2, y=8, x=9)" in r.stdout
    assert list(open_cube(tmp_path / "d.zarr")["source"].values) == ["t0.tif", "t1.tif", "t2.tif"]


def _truncated_tiff(d: Path) -> Path:
    data = (DATA / "landsat8" / "l8_B4.tif").read_bytes()
    (d / "cut.tif").write_bytes(data[: len(data) // 3])
    return d / "cut.tif"


def _garbage_tif(d: Path) -> Path:
    (d / "junk.tif").write_bytes(np.random.default_rng(1).bytes(4096))
    return d / "junk.tif"


def _empty(d: Path) -> Path:
    (d / "empty.npy").touch()
    return d / "empty.npy"


def _pickled_npy(d: Path) -> Path:
    np.save(d / "objects.npy", np.array([{"a": 1}, "text", None], dtype=object))  # pickles
    return d / "objects.npy"


def _mixed_dir(d: Path) -> Path:
    (d / "imgs").mkdir()
    # sizes may differ (padded); grey beside RGB needs --color
    for name, shape in [
        ("a.png", (8, 8)),
        ("b.png", (8, 8)),
        ("c.png", (9, 8, 3)),
        ("d.png", (9, 8)),
    ]:
        Image.fromarray(np.zeros(shape, "uint8")).save(d / "imgs" / name)
    return d / "imgs"


def _unknown(d: Path) -> Path:
    (d / "data.xyz").write_bytes(np.random.default_rng(2).bytes(1000))
    return d / "data.xyz"


def _missing(d: Path) -> Path:
    return d / "no-such-file.tif"


BAD_INPUTS: dict[str, tuple[Callable[[Path], Path], str, str]] = {
    # case: (make the input, the file named in the message, words of the problem)
    "truncated-tiff": (_truncated_tiff, "cut.tif", "truncated"),
    "garbage-tif": (_garbage_tif, "junk.tif", "not a TIFF file"),
    "empty-file": (_empty, "empty.npy", "empty"),
    "pickled-npy": (_pickled_npy, "objects.npy", "never unpickles"),
    "mixed-shapes": (_mixed_dir, "c.png", "--color rgb"),
    "unknown-format": (_unknown, "data.xyz", "unknown format"),
    "missing-path": (_missing, "no-such-file.tif", "not found"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_exits_2_with_one_line_naming_the_file(cli, tmp_path: Path, case: str) -> None:
    make, named, problem = BAD_INPUTS[case]
    out = tmp_path / "out.zarr"
    r = cli("ingest", str(make(tmp_path)), "-o", str(out))
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("cubepipe: error: ")
    assert named in lines[0] and problem in lines[0]
    assert store_state(out) != "complete"


def test_hostile_pickle_is_never_run(cli, tmp_path: Path) -> None:
    marker = tmp_path / "PWNED"
    np.save(tmp_path / "evil.npy", np.array([_Exploit(marker)], dtype=object))  # pickles
    assert b"system" in (tmp_path / "evil.npy").read_bytes()  # the payload is really there
    r = cli("ingest", str(tmp_path / "evil.npy"), "-o", str(tmp_path / "evil.zarr"))
    assert r.returncode == 2
    assert len(r.stderr.splitlines()) == 1 and "evil.npy" in r.stderr
    assert "Python objects" in r.stderr
    assert not marker.exists()
    assert store_state(tmp_path / "evil.zarr") == "missing"


def test_damaged_block_mid_write_exits_2_and_store_stays_incomplete(cli, tmp_path: Path) -> None:
    a = np.random.default_rng(3).normal(size=(64, 64)).astype("float32")
    tifffile.imwrite(tmp_path / "t.tif", a, compression="zlib", tile=(32, 32))
    with tifffile.TiffFile(tmp_path / "t.tif") as tif:
        offset, count = tif.pages[0].dataoffsets[-1], tif.pages[0].databytecounts[-1]
    with (tmp_path / "t.tif").open("r+b") as fh:
        fh.seek(offset)
        fh.write(b"\xff" * count)
    out = tmp_path / "t.zarr"
    r = cli("-q", "ingest", str(tmp_path / "t.tif"), "-o", str(out), "--chunks", "y=32,x=32")
    assert r.returncode == 2, r.stderr
    assert len(r.stderr.splitlines()) == 1 and "t.tif: reading a block" in r.stderr
    assert store_state(out) == "incomplete"
