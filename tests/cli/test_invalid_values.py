"""Masks from values (``--invalid-value/-below/-above``) and the NaN-spread warning of
``filter``, end to end through the CLI, checked against astropy, scipy and NumPy.

The asker's case: a non-rectangular image whose outside is black (0 = invalid). Here a
real photo (camera.png) with its lower triangle set to 0.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from astropy.convolution import Gaussian2DKernel, convolve
from PIL import Image
from scipy import ndimage

from cubepipe.storage import describe, open_cube

PHOTOS = Path("/work/shared/data/photos")
pytestmark = [
    pytest.mark.skipif(not PHOTOS.is_dir(), reason=f"no photos in {PHOTOS}"),
    # astropy says the black triangle (wider than the kernel) stays NaN: as it should.
    pytest.mark.filterwarnings("ignore:nan_treatment='interpolate', however"),
]

#: cubepipe's gaussian:2 is sampled at the pixel centres, truncated at 4 sigma (radius
#: 8) and normalized: astropy's Gaussian2DKernel(2) (x_size 8 * sigma -> 17, mode
#: "center"), which convolve normalizes (normalize_kernel=True), is the same kernel.
KERNEL = Gaussian2DKernel(x_stddev=2, x_size=17, y_size=17, mode="center")
#: Boundaries that compute the same thing: cubepipe's --mode nearest repeats the edge
#: pixel, validity included (astropy "extend"); --mode constant counts the outside as
#: invalid in masked filtering (astropy "fill" with NaN, which interpolate leaves out).
BOUNDARIES = {"nearest": {"boundary": "extend"}, "constant": {"boundary": "fill", "fill_value": np.nan}}  # fmt: skip


@pytest.fixture(scope="module")
def half_black(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    """camera.png with its lower triangle (below the diagonal) black, as a PNG."""
    img = np.asarray(Image.open(PHOTOS / "camera.png")).copy()
    img[np.tril(np.ones(img.shape, dtype=bool), -1)] = 0
    path = tmp_path_factory.mktemp("half") / "half_black.png"
    Image.fromarray(img).save(path)
    return path, img


def _astropy(img: np.ndarray, black: np.ndarray, mode: str) -> np.ndarray:
    return convolve(
        img.astype(np.float64), KERNEL, mask=black, nan_treatment="interpolate",
        normalize_kernel=True, preserve_nan=False, **BOUNDARIES[mode],
    )  # fmt: skip


def test_filter_invalid_value_0_matches_astropy_on_the_half_black_image(
    cli, half_black: tuple[Path, np.ndarray], tmp_path: Path
) -> None:
    png, img = half_black
    black = img == 0  # the triangle, and any black pixel of the photo itself
    store = tmp_path / "half.zarr"
    assert cli("ingest", str(png), "-o", str(store)).returncode == 0
    for mode in ("nearest", "constant"):
        out = tmp_path / f"f_{mode}.zarr"
        proc = cli("filter", str(store), "-o", str(out), "--invalid-value", "0",
                   "--kernel", "gaussian:2", "--mode", mode)  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        assert "normalized (masked)" in proc.stderr and "warning" not in proc.stderr
        ds = xr.open_zarr(out)  # plain xarray: the store contract
        got = ds["cube"].values[0]
        ref = _astropy(img, black, mode)
        assert got.dtype == np.float32
        # float32 output (float64 arithmetic): within its rounding, 6e-8 relative.
        np.testing.assert_allclose(got[~black], ref[~black], rtol=1e-6, atol=0, err_msg=mode)
        assert np.isnan(got[black]).all()  # invalid stays invalid
        np.testing.assert_array_equal(ds["mask"].values, ~black)
        entry = describe(out)["history"][-1]
        assert entry["params"]["invalid"]["values"] == [0.0]
        assert "any band == 0" in entry["params"]["invalid"]["rule"]
        assert entry["cli"]["options"]["invalid_value"] == [0.0]

    # Today's answer without the option: the black edge drags the valid pixels down.
    plain = tmp_path / "plain.zarr"
    args = ["--kernel", "gaussian:2", "--mode", "nearest"]
    assert cli("filter", str(store), "-o", str(plain), *args).returncode == 0
    bias = _astropy(img, black, "nearest") - open_cube(plain)["cube"].values[0]
    assert np.nanmax(bias[~black]) > 10

    # float64 all the way: agreement to float64 rounding.
    store64, out64 = tmp_path / "h64.zarr", tmp_path / "f64.zarr"
    assert cli("ingest", str(png), "-o", str(store64), "--dtype", "float64").returncode == 0
    proc = cli("filter", str(store64), "-o", str(out64), "--invalid-value", "0", *args)
    assert proc.returncode == 0, proc.stderr
    got = open_cube(out64)["cube"].values[0]
    assert got.dtype == np.float64
    ref = _astropy(img, black, "nearest")
    np.testing.assert_allclose(got[~black], ref[~black], rtol=1e-12, atol=1e-9)


def test_ingest_invalid_value_stores_the_mask_that_filter_then_uses(
    cli, half_black: tuple[Path, np.ndarray], tmp_path: Path
) -> None:
    png, img = half_black
    black = img == 0
    store = tmp_path / "masked.zarr"
    proc = cli("ingest", str(png), "-o", str(store), "--invalid-value", "0")
    assert proc.returncode == 0, proc.stderr
    ds = xr.open_zarr(store)
    np.testing.assert_array_equal(ds["mask"].values, ~black)
    np.testing.assert_array_equal(ds["cube"].values[0], img)  # values kept: the mask says
    entry = describe(store)["history"][-1]
    assert entry["op"] == "ingest" and entry["params"]["invalid"]["values"] == [0.0]
    assert ds["mask"].attrs["cubepipe_invalid"][0]["values"] == [0.0]

    out = tmp_path / "f.zarr"
    proc = cli("filter", str(store), "-o", str(out), "-k", "gaussian:2", "--mode", "nearest")
    assert proc.returncode == 0, proc.stderr
    got = open_cube(out)["cube"].values[0]
    ref = _astropy(img, black, "nearest")
    np.testing.assert_allclose(got[~black], ref[~black], rtol=1e-6, atol=0)


def test_filter_warns_once_with_the_count_of_pixels_nan_spread_into(cli, tmp_path: Path) -> None:
    img = np.asarray(Image.open(PHOTOS / "coins.png")).astype(np.float32)
    img[40:52, 100:107] = np.nan  # a hole
    img[[5, 150, 290], [380, 7, 200]] = np.nan  # single pixels, two by an edge
    nan = np.isnan(img)
    np.save(tmp_path / "holes.npy", img)
    store = tmp_path / "holes.zarr"
    assert cli("ingest", str(tmp_path / "holes.npy"), "-o", str(store)).returncode == 0
    # Independently: every pixel within the 17 x 17 footprint of a NaN, NaN itself aside.
    reach = ndimage.convolve(nan.astype(np.float64), np.ones((17, 17)), mode="reflect") > 0.5
    expected = int((reach & ~nan).sum())

    out = tmp_path / "f.zarr"
    proc = cli("filter", str(store), "-o", str(out), "-k", "gaussian:2")
    assert proc.returncode == 0, proc.stderr
    warnings = [ln for ln in proc.stderr.splitlines() if "warning" in ln]
    assert len(warnings) == 1, proc.stderr
    assert f"holds {int(nan.sum())} NaN" in warnings[0]
    assert f"{expected} output pixel(s)" in warnings[0] and "--mask-nan" in warnings[0]
    got = open_cube(out)["cube"].values[0]
    assert int((np.isnan(got) & ~nan).sum()) == expected
    results = describe(out)["history"][-1]["results"]
    assert results == {"nonfinite_inputs": int(nan.sum()), "nan_spread_pixels": expected}

    proc = cli("filter", str(store), "-o", str(tmp_path / "m.zarr"), "-k", "gaussian:2",
               "--mask-nan")  # fmt: skip
    assert proc.returncode == 0 and "warning" not in proc.stderr


def test_stats_standardize_and_compress_leave_out_the_pixels_the_rule_names(
    cli, tmp_path: Path
) -> None:
    rgb = np.asarray(Image.open(PHOTOS / "astronaut.png"))
    store = tmp_path / "a.zarr"
    assert cli("ingest", str(PHOTOS / "astronaut.png"), "-o", str(store)).returncode == 0
    rule = ["--invalid-below", "30", "--invalid-above", "250",
            "--invalid-value", "100", "--invalid-value", "101"]  # fmt: skip
    x = rgb.astype(np.float64)
    valid = ((x >= 30) & (x <= 250) & (x != 100) & (x != 101)).all(axis=-1)  # any band
    pix = x[valid]  # (n, band)

    proc = cli("stats", str(store), "--json", *rule)
    assert proc.returncode == 0, proc.stderr
    bands = json.loads(proc.stdout)["bands"]
    assert [b["count"] for b in bands] == [int(valid.sum())] * 3
    for key, want in (("mean", pix.mean(0)), ("std", pix.std(0)), ("min", pix.min(0)),
                      ("max", pix.max(0))):  # fmt: skip
        np.testing.assert_allclose([b[key] for b in bands], want, rtol=1e-12, err_msg=key)
    saved = describe(store)["history"][-1]
    assert saved["op"] == "stats" and saved["params"]["invalid"]["below"] == 30.0
    assert "mask" not in open_cube(store)  # stats does not change the store's mask

    std = tmp_path / "s.zarr"
    proc = cli("standardize", str(store), "-o", str(std), *rule)
    assert proc.returncode == 0, proc.stderr
    z = xr.open_zarr(std)
    np.testing.assert_array_equal(z["mask"].values, valid)
    zv = z["cube"].values.astype(np.float64)[:, valid]
    np.testing.assert_allclose(zv.mean(1), 0, atol=1e-6)
    np.testing.assert_allclose(zv.std(1), 1, rtol=1e-6)

    comp = tmp_path / "c.zarr"
    proc = cli("compress", str(store), "-o", str(comp), "-k", "2", *rule)
    assert proc.returncode == 0, proc.stderr
    c = xr.open_zarr(comp)
    np.testing.assert_array_equal(c["mask"].values, valid)
    np.testing.assert_allclose(c["pca_mean"].values, pix.mean(0), rtol=1e-10)
    w = np.linalg.eigvalsh(np.cov(pix.T))[::-1][:2]  # ddof 1, as scikit-learn's PCA
    np.testing.assert_allclose(c["pca_explained_variance"].values, w, rtol=1e-9)


def _one_line_error(proc, *words: str) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


def test_hostile_rules_are_one_line_errors_before_any_output(
    cli, half_black: tuple[Path, np.ndarray], tmp_path: Path
) -> None:
    png, _ = half_black
    store = tmp_path / "h.zarr"
    assert cli("ingest", str(png), "-o", str(store)).returncode == 0
    out = tmp_path / "out.zarr"
    filt = ["filter", str(store), "-o", str(out), "-k", "gaussian:2"]
    # A rule that masks every pixel (the photo is within 0..255).
    _one_line_error(cli(*filt, "--invalid-below", "1000"), "every pixel", "< 1000")
    _one_line_error(cli("ingest", str(png), "-o", str(out), "--invalid-above", "-1"),
                    "every pixel")  # fmt: skip
    _one_line_error(cli("stats", str(store), "--invalid-below", "256", "--no-save"),
                    "every pixel")  # fmt: skip
    # Contradictions: below > above leaves nothing valid.
    _one_line_error(cli(*filt, "--invalid-below", "200", "--invalid-above", "100"),
                    "--invalid-below 200", "--invalid-above 100", "leave no value valid")  # fmt: skip
    # NaN equals nothing; NaN is invalid already.
    line = _one_line_error(cli(*filt, "--invalid-value", "nan"), "--invalid-value nan")
    assert "--mask-nan" in line and "invalid already" in line
    _one_line_error(cli(*filt, "--invalid-above", "nan"), "--invalid-above nan")
    assert not out.exists()
    # below == above is a one-value valid range: allowed.
    proc = cli(*filt, "--invalid-below", "128", "--invalid-above", "128")
    assert proc.returncode == 0, proc.stderr
    img = np.asarray(Image.open(png))
    np.testing.assert_array_equal(open_cube(out)["mask"].values, img == 128)
