"""`cubepipe explain fft`, `filter --explain` and `filter --json` (issue 18, items 6 and 7):
the explanation and its numbers, the path each filter reports, and the rfft path against
references that share none of its code (scipy.ndimage, numpy's full complex FFT)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from scipy import ndimage as ndi

from cubepipe.pipeline.cli.explain import BENCH, bench_numbers
from cubepipe.pipeline.filters import FILTER_ATTR, filter_cube, make_kernel
from cubepipe.storage import open_cube, write_cube

#: The keys of `filter --json` (docs/cli-json.md); keys may be added, never renamed.
FILTER_JSON_KEYS = {
    "command", "input", "output", "variable", "kernel", "kernel_shape", "separable",
    "method", "method_reason", "axis", "mode", "halo", "masked", "mask_nan",
    "min_support", "fill", "invalid", "nan_spread", "dims", "shape", "dtype", "seconds",
}  # fmt: skip


def _store(path: Path, *, nan: int = 0, dtype: type = np.float64) -> tuple[Path, np.ndarray]:
    rng = np.random.default_rng(18)
    a = rng.standard_normal((2, 96, 120)) * 3.0 - 1.0
    a[:, rng.integers(0, 96, nan), rng.integers(0, 120, nan)] = np.nan
    ds = xr.Dataset({"cube": (("band", "y", "x"), a.astype(dtype))})
    return write_cube(ds, path, op="fixture", chunks={"y": 48, "x": 64}), a


def _measured_rows(text: str) -> dict[str, tuple[float, float, float]]:
    rows = {}
    for lib, rfft, fft, ratio in re.findall(
        r"^\s+(scipy\.fft|numpy\.fft)\s+([\d.]+) ms\s+([\d.]+) ms\s+([\d.]+)x", text, re.M
    ):
        rows[lib] = (float(rfft), float(fft), float(ratio))
    return rows


def test_explain_fft_explains_and_measures_this_machine(cli, tmp_path: Path) -> None:
    args = ["explain", "fft", "--measure", "--size", "256", "--bench", str(tmp_path / "no.json")]
    proc = cli(*args)
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    assert "Hermitian" in text and "X[N-k] = conj(X[k])" in text and "N//2 + 1" in text
    assert "half the arithmetic" in text.replace("\n", " ")
    assert "half the memory" in text.replace("\n", " ")
    assert "No rfft-vs-fft benchmark" in text  # said, not hidden
    rows = _measured_rows(text)
    assert set(rows) == {"scipy.fft", "numpy.fft"}, text
    for rfft, fft, ratio in rows.values():
        assert rfft > 0 and fft > 0 and ratio > 0
        # The ratio comes from the unrounded timings; each printed timing is rounded to
        # 0.01 ms and the ratio to 0.01, so it must lie in the interval those roundings
        # allow (a fixed relative tolerance failed on sub-millisecond timings in CI).
        lo = (fft - 0.005) / (rfft + 0.005) - 0.005
        hi = (fft + 0.005) / max(rfft - 0.005, 1e-9) + 0.005
        assert lo <= ratio <= hi, (rfft, fft, ratio)
    assert "0.50 MiB (rfft2) vs 1.00 MiB (fft2)" in text  # 256 x 129 vs 256 x 256 complex128
    # Which path each example filter takes, from the code that chooses it.
    paths = dict(re.findall(r"^\s+(\S+)\s+spatial\s+.*\s(direct|rfft)$", text, re.M))
    assert paths["gaussian:1"] == "direct" and paths["gaussian:4"] == "rfft"
    assert paths["lowpass:0.1"] == paths["highpass:0.1"] == "rfft"

    proc = cli(*args, "--json", "--kernel", "box:3", "--kernel", "bandpass:0.1,0.3")
    assert proc.returncode == 0, proc.stderr
    d = json.loads(proc.stdout)
    assert d["topic"] == "fft" and d["benchmark"] is None and d["direct_max_cost"] == 64
    m = d["measured"]
    assert m["shape"] == [256, 256] and m["rfft_spectrum_mib"] * 2 > m["fft_spectrum_mib"]
    for lib in m["libraries"]:
        assert lib["rfft_seconds"] > 0 and lib["fft_seconds"] > 0 and lib["runs"] >= 3
        assert lib["speedup"] == pytest.approx(lib["fft_seconds"] / lib["rfft_seconds"])
        assert lib["max_abs_diff"] < 1e-12  # same result either way
    assert [(p["kernel"], p["method"]) for p in d["paths"]] == [
        ("box:3", "direct"),
        ("bandpass:0.1,0.3", "rfft"),
    ]
    assert cli("explain", "fft", "--kernel", "gauss:2").returncode == 2


def test_explain_fft_quotes_bench_filter(cli, tmp_path: Path) -> None:
    def row(case: str, seconds: float, spectrum: float) -> dict:
        return {"size": "1x", "case": case, "seconds": seconds + 1.0, "fft_seconds": seconds,
                "spectrum_mb": spectrum, "plane_shape": [2560, 2560], "planes": 15,
                "peak_anon_mb": 900.0}  # fmt: skip

    doc = {
        "machine": {"cpus": 2, "date": "2026-11-25"},
        "rows": [row("scipy_rfft2_plane", 2.0, 52.6), row("scipy_fft2_plane", 3.0, 104.9)],
    }
    path = tmp_path / "bench_filter.json"
    path.write_text(json.dumps(doc))
    proc = cli("explain", "fft", "--bench", str(path))
    assert proc.returncode == 0, proc.stderr
    assert "Measured on this machine now" not in proc.stdout  # the benchmark answers
    assert re.search(r"scipy\.fft\s+15 x 2560x2560\s+2\.00\s+3\.00\s+1\.50x", proc.stdout)
    assert "52.6/104.9" in proc.stdout
    # The repository's own table has the comparison (rerun with this change).
    if BENCH.exists():
        numbers = bench_numbers(BENCH)
        assert numbers is not None
        assert {lib["library"] for lib in numbers["libraries"]} == {"scipy.fft", "numpy.fft"}
        assert all(lib["speedup"] > 0 for lib in numbers["libraries"])


def test_filter_log_explain_and_json_name_the_path(cli, tmp_path: Path) -> None:
    src, a = _store(tmp_path / "in.zarr", nan=3, dtype=np.float32)
    runs = {"lowpass:0.1": "rfft", "gaussian:4": "rfft", "box:3": "direct", "gaussian:1": "direct"}
    for spec, expected in runs.items():
        out = tmp_path / f"{spec.replace(':', '-')}.zarr"
        proc = cli("filter", str(src), "-o", str(out), "-k", spec, "--json", "--explain")
        assert proc.returncode == 0, proc.stderr
        assert f"method {expected} (auto:" in proc.stderr
        assert f"path: {expected} (auto:" in proc.stderr
        assert ("Hermitian" in proc.stderr) == (expected == "rfft")
        d = json.loads(proc.stdout)  # stdout is the JSON alone
        assert set(d) == FILTER_JSON_KEYS
        assert d["method"] == expected == open_cube(out)["cube"].attrs[FILTER_ATTR]["method"]
        assert d["kernel"] == spec and d["output"] == str(out) and d["input"] == str(src)
        assert (d["axis"], d["mode"], d["masked"]) == ("spatial", "reflect", False)
        assert (d["shape"], d["dims"], d["dtype"]) == ([2, 96, 120], ["band", "y", "x"], "float32")
        assert d["seconds"] >= 0 and d["invalid"] is None
        n_nan = int(np.isnan(a).sum())
        assert (
            d["nan_spread"]["nonfinite_inputs"] == n_nan
            and d["nan_spread"]["nan_spread_pixels"] > 0
        )
    # Masked (no NaN spread to count: null); the old spelling --method fft is rfft.
    out = tmp_path / "m.zarr"
    proc = cli("-q", "filter", str(src), "-o", str(out), "-k", "box:3", "--mask-nan",
               "--method", "fft", "--invalid-value", "100", "--json")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""  # --quiet, and no --explain
    d = json.loads(proc.stdout)
    assert (d["method"], d["masked"], d["mask_nan"], d["nan_spread"]) == ("rfft", True, True, None)
    assert "requested" in d["method_reason"] and d["invalid"]["values"] == [100.0]
    # --explain and --json say how to print, not what: a resume with them still matches.
    proc = cli("-q", "filter", str(src), "-o", str(out), "-k", "box:3", "--mask-nan",
               "--method", "fft", "--invalid-value", "100", "--resume", "--explain")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "path: rfft (rfft as requested" in proc.stderr


def _complex_fft_reference(plane: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Convolution with reflect boundaries through numpy's full complex FFT."""
    r = [n // 2 for n in w.shape]
    p = np.pad(plane, [(r[0], r[0]), (r[1], r[1])], mode="symmetric")  # ndimage "reflect"
    full = np.fft.ifft2(np.fft.fft2(p) * np.fft.fft2(w, s=p.shape)).real
    return full[2 * r[0] : 2 * r[0] + plane.shape[0], 2 * r[1] : 2 * r[1] + plane.shape[1]]


@pytest.mark.parametrize("spec", ["gaussian:4.5", "lowpass:0.15", "highpass:0.2"])
def test_rfft_path_equals_full_complex_fft_and_ndimage(cli, tmp_path: Path, spec: str) -> None:
    src, a = _store(tmp_path / "in.zarr")
    out = tmp_path / "out.zarr"
    proc = cli("filter", str(src), "-o", str(out), "-k", spec, "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["method"] == "rfft"
    got = open_cube(out)["cube"].values
    assert got.dtype == np.float64
    w = make_kernel(spec, 2).taps.weights
    # Tiles smaller than the plane (the halo logic of the rfft path) give the same.
    tiled = filter_cube(open_cube(src), spec, fft_tile=40)["cube"]
    assert tiled.attrs[FILTER_ATTR]["method"] == "rfft"
    for b in range(a.shape[0]):
        refs = [_complex_fft_reference(a[b], w), ndi.convolve(a[b], w, mode="reflect")]
        if spec.startswith("gaussian"):  # the kernel built independently, too
            refs.append(ndi.gaussian_filter(a[b], 4.5, mode="reflect", truncate=4.0))
        for ref in refs:
            scale = np.abs(ref).max()
            np.testing.assert_allclose(got[b], ref, rtol=0, atol=1e-5 * scale)
            np.testing.assert_allclose(tiled.values[b], ref, rtol=0, atol=1e-5 * scale)
