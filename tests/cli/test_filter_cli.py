"""`cubepipe filter` end to end through the real CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cubepipe.pipeline.filters import FILTER_ATTR, filter_cube
from cubepipe.storage import describe, open_cube


def test_filter_masked_gaussian_writes_reports_and_matches_the_api(
    cli, small_store: Path, tmp_path: Path
) -> None:
    out = tmp_path / "f.zarr"
    proc = cli("filter", str(small_store), "-o", str(out), "--kernel", "gaussian:2", "--mask-nan")
    assert proc.returncode == 0, proc.stderr
    assert "method direct (auto:" in proc.stderr and "normalized (masked)" in proc.stderr
    got = open_cube(out)["cube"]
    assert got.dtype == np.float32
    assert got.attrs[FILTER_ATTR]["method"] == "direct"
    ref = filter_cube(open_cube(small_store), "gaussian:2", mask_nan=True)["cube"].values
    np.testing.assert_array_equal(got.values, ref)
    # The NaN disc stays NaN (no --fill).
    assert np.isnan(got.values).sum() == np.isnan(open_cube(small_store)["cube"].values).sum()
    info = describe(out)
    assert info["complete"] is True
    entry = info["history"][-1]
    assert entry["op"] == "filter" and entry["params"]["kernel"] == "gaussian:2"

    # Overrides are honoured and reported; file kernels along the spectral axis.
    np.save(tmp_path / "k.npy", np.array([0.25, 0.5, 0.25]))
    out2 = tmp_path / "s.zarr"
    proc = cli(
        "filter", str(small_store), "-o", str(out2), "--kernel", f"file:{tmp_path / 'k.npy'}",
        "--axis", "spectral", "--method", "fft", "--mode", "constant",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "method rfft (rfft as requested" in proc.stderr and "spectral" in proc.stderr
    report = open_cube(out2)["cube"].attrs[FILTER_ATTR]
    assert (report["axis"], report["method"], report["mode"]) == ("spectral", "rfft", "constant")


def test_bad_kernel_exits_2_with_one_line(cli, small_store: Path, tmp_path: Path) -> None:
    np.save(tmp_path / "obj.npy", np.array([None, 1], dtype=object), allow_pickle=True)
    for spec in ("gauss:2", f"file:{tmp_path / 'obj.npy'}"):
        out = tmp_path / "bad.zarr"
        proc = cli("filter", str(small_store), "-o", str(out), "--kernel", spec)
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and spec in lines[0] and "gaussian:SIGMA" in lines[0], lines
        assert not out.exists()
    proc = cli("filter", str(small_store), "-o", str(tmp_path / "x.zarr"), "--kernel", "box:3",
               "--mode", "wrap")  # fmt: skip
    assert proc.returncode == 2


def test_lowpass_fill_resume_and_overwrite(cli, small_store: Path, tmp_path: Path) -> None:
    out = tmp_path / "lp.zarr"
    args = ["filter", str(small_store), "-o", str(out), "--kernel", "lowpass:0.1", "--mask-nan"]
    proc = cli(*args, "--fill", "--min-support", "0.3")
    assert proc.returncode == 0, proc.stderr
    assert "method rfft (auto:" in proc.stderr
    v = open_cube(out)["cube"].values
    n_in = np.isnan(open_cube(small_store)["cube"].values).sum()
    assert 0 < np.isnan(v).sum() < n_in  # the disc's rim was filled, its centre not
    assert cli(*args).returncode == 2  # exists
    assert cli(*args, "--fill", "--min-support", "0.3", "--resume").returncode == 0  # a no-op
    proc = cli(*args, "--resume")  # complete, but made with other options: refused
    assert proc.returncode == 2 and "fill, min_support" in proc.stderr
    proc = cli(*args, "--overwrite", "--chunks", "y=100,x=120")
    assert proc.returncode == 0, proc.stderr
    assert open_cube(out)["cube"].data.chunksize[1:] == (100, 120)
