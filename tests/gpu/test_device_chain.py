"""Every computing command with ``--device gpu``: it reaches the device, agrees with
``--device cpu`` and records the device it used.

Runs where CuPy imports and sees a GPU: on a real GPU (``make test-gpu``) and, in CI,
against the strict CuPy stand-in (``make test-standin``; tests/gpu_standin/README.md),
whose device arrays refuse every implicit conversion to NumPy. With the stand-in the
number of device routine calls and of host syncs is read from its counters.
"""

from __future__ import annotations

import importlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cubepipe.pipeline.synthetic import make_cube
from cubepipe.storage import history, open_cube, read_attrs, write_cube

from ..conftest import run_cli, run_cli_process

pytestmark = pytest.mark.gpu

RTOL = 1e-5


def _standin() -> Any:
    """The stand-in's bookkeeping module, or None on a real CuPy."""
    try:
        return importlib.import_module("cupy._standin")
    except ImportError:
        return None


@contextmanager
def _device_counts() -> Iterator[dict[str, int]]:
    """Device routine calls and host syncs (d2h copies, syncing indexing) made inside."""
    got = {"calls": -1, "syncs": -1}
    mod = _standin()
    if mod is None:
        yield got
        return
    calls0, events0 = sum(mod.CALLS.values()), dict(mod.EVENTS)
    yield got
    got["calls"] = sum(mod.CALLS.values()) - calls0
    got["syncs"] = sum(
        n - events0.get(k, 0) for k, n in mod.EVENTS.items() if k[0].startswith(("d2h", "sync"))
    )


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """15 bands, 4 x 3 chunks, NaN pixels and a mask: every kernel's masked path runs."""
    ds = make_cube("small", seed=3, chunks={"y": 64, "x": 96}).isel(y=slice(0, 192))
    mask = np.ones((192, 240), dtype=bool)
    mask[10:30, 200:230] = False
    ds["mask"] = (("y", "x"), mask)
    return write_cube(ds, tmp_path_factory.mktemp("scene") / "in.zarr", op="fixture")


def _run(device: str, *args: str, cwd: Path) -> tuple[str, dict[str, int]]:
    with _device_counts() as counts:
        res = run_cli("--device", device, "--quiet", *args, cwd=cwd)
    assert res.returncode == 0, res.stderr
    return res.stdout, counts


def _both(tmp_path: Path, args: list[str], out: str | None) -> tuple[Any, Any, dict[str, int]]:
    """Run ``args`` on each device (``{out}`` in an argument becomes cpu-/gpu-OUT)."""
    results = []
    counts: dict[str, int] = {}
    for device in ("cpu", "gpu"):
        argv = [a.replace("{dev}", device) for a in args]
        stdout, c = _run(device, *argv, cwd=tmp_path)
        if device == "gpu":
            counts = c
        if out is None:
            results.append(stdout)
            continue
        path = tmp_path / out.replace("{dev}", device)
        assert history(read_attrs(path))[-1]["device"] == device
        results.append(path)
    return results[0], results[1], counts


def _assert_same(cpu: Path, gpu: Path, variable: str) -> None:
    a = open_cube(cpu)[variable].values
    b = open_cube(gpu)[variable].values
    np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
    scale = float(np.nanmax(np.abs(a)))
    np.testing.assert_allclose(b, a, rtol=RTOL, atol=RTOL * scale, equal_nan=True)


def _assert_reached_device(counts: dict[str, int]) -> None:
    if counts["calls"] >= 0:  # the stand-in counts; a real GPU is checked by its results
        assert counts["calls"] > 0, "the command never reached the device"


def test_stats_on_the_device(scene: Path, tmp_path: Path) -> None:
    cpu, gpu, counts = _both(tmp_path, ["stats", str(scene), "--json", "--no-save"], None)
    _assert_reached_device(counts)
    a, b = json.loads(cpu)["bands"], json.loads(gpu)["bands"]
    for ra, rb in zip(a, b, strict=True):
        assert ra["count"] == rb["count"]
        for k in ("mean", "std", "min", "max"):
            assert rb[k] == pytest.approx(ra[k], rel=RTOL, abs=RTOL * abs(ra["std"]))


def test_standardize_destandardize_on_the_device(scene: Path, tmp_path: Path) -> None:
    z_cpu, z_gpu, counts = _both(
        tmp_path, ["standardize", str(scene), "-o", "z-{dev}.zarr"], "z-{dev}.zarr"
    )
    _assert_reached_device(counts)
    _assert_same(z_cpu, z_gpu, "cube")
    d_cpu, d_gpu, counts = _both(
        tmp_path, ["destandardize", "z-{dev}.zarr", "-o", "d-{dev}.zarr"], "d-{dev}.zarr"
    )
    _assert_reached_device(counts)
    _assert_same(d_cpu, d_gpu, "cube")
    _assert_same(scene, d_gpu, "cube")


def test_pca_compress_and_reconstruct_on_the_device(scene: Path, tmp_path: Path) -> None:
    c_cpu, c_gpu, counts = _both(
        tmp_path, ["compress", str(scene), "-k", "4", "-o", "c-{dev}.zarr"], "c-{dev}.zarr"
    )
    _assert_reached_device(counts)
    _assert_same(c_cpu, c_gpu, "scores")
    m_cpu = history(read_attrs(c_cpu))[-1]["results"]
    m_gpu = history(read_attrs(c_gpu))[-1]["results"]
    for k in ("rmse", "psnr_db", "sam_deg", "n_values", "data_range"):
        assert m_gpu[k] == pytest.approx(m_cpu[k], rel=RTOL), k
    r_cpu, r_gpu, counts = _both(
        tmp_path, ["reconstruct", "c-{dev}.zarr", "-o", "r-{dev}.zarr"], "r-{dev}.zarr"
    )
    _assert_reached_device(counts)
    _assert_same(r_cpu, r_gpu, "cube")


def test_autoencoder_compress_on_the_device(scene: Path, tmp_path: Path) -> None:
    pytest.importorskip("torch")
    args = ["compress", str(scene), "--method", "ae", "-k", "3", "--epochs", "1"]
    args += ["--train-pixels", "2000", "-o", "a-{dev}.zarr"]
    a_cpu, a_gpu, counts = _both(tmp_path, args, "a-{dev}.zarr")
    _assert_reached_device(counts)
    _assert_same(a_cpu, a_gpu, "scores")
    m_cpu = history(read_attrs(a_cpu))[-1]["results"]
    m_gpu = history(read_attrs(a_gpu))[-1]["results"]
    assert m_gpu["rmse"] == pytest.approx(m_cpu["rmse"], rel=RTOL)
    assert m_gpu["sam_deg"] == pytest.approx(m_cpu["sam_deg"], rel=RTOL)


@pytest.mark.parametrize("extra", [[], ["--mask-nan"]], ids=["plain", "masked"])
def test_filter_on_the_device(scene: Path, tmp_path: Path, extra: list[str]) -> None:
    args = ["filter", str(scene), "-k", "gaussian:1.5", *extra, "-o", "f-{dev}.zarr"]
    f_cpu, f_gpu, counts = _both(tmp_path, args, "f-{dev}.zarr")
    _assert_reached_device(counts)
    _assert_same(f_cpu, f_gpu, "cube")


def test_ingest_records_the_host_it_ran_on(tmp_path: Path) -> None:
    np.save(tmp_path / "a.npy", np.arange(2 * 8 * 8, dtype=np.float32).reshape(2, 8, 8) - 50)
    res = run_cli("--device", "gpu", "ingest", "a.npy", "-o", "a.zarr", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert history(read_attrs(tmp_path / "a.zarr"))[-1]["device"] == "cpu"


def test_the_console_script_reaches_the_device(scene: Path, tmp_path: Path) -> None:
    """The log the stand-in writes at exit (what `CUPY_STANDIN_LOG` documents)."""
    if _standin() is None:
        pytest.skip("the stand-in's log; a real GPU is checked by the results above")
    log = tmp_path / "log-%p.json"
    env = {"CUPY_STANDIN_LOG": str(log), "PYTHONPATH": os.environ.get("PYTHONPATH", "")}
    env.pop("CUPY_STANDIN_QUIET_LOG", None)
    proc = run_cli_process(
        "--device", "gpu", "standardize", str(scene), "-o", "z.zarr", cwd=tmp_path, env=env
    )
    assert proc.returncode == 0, proc.stderr
    (written,) = tmp_path.glob("log-*.json")
    assert json.loads(written.read_text())["total_device_calls"] > 0
    assert "device GPU" in proc.stderr


#: Host syncs a chunk may cost on the device (its result coming back to be written).
SYNCS_PER_CHUNK = 1


@pytest.mark.parametrize("op", ["stats", "standardize", "pca-encode"])
def test_host_syncs_per_chunk_do_not_grow_with_the_chunk(scene: Path, op: str) -> None:
    """Stated figure: at most SYNCS_PER_CHUNK host syncs per chunk plus a constant per
    run (the merged statistics or metrics), the same for 32 x 48 and 96 x 120 chunks."""
    if _standin() is None:
        pytest.skip("the stand-in counts syncs; a real GPU cannot report them")
    from cubepipe.pipeline import compress, fit_stats, standardize  # noqa: PLC0415
    from cubepipe.pipeline.backend import to_host  # noqa: PLC0415

    per_size = {}
    for chunks in ({"y": 32, "x": 48}, {"y": 96, "x": 120}):
        ds = open_cube(scene).chunk(chunks)
        nchunks = ds["cube"].data.npartitions
        with _device_counts() as counts:
            if op == "stats":
                fit_stats(ds, device="gpu").compute()
            elif op == "standardize":
                st = fit_stats(ds).compute()
                to_host(standardize(ds, st, device="gpu")["cube"]).compute()
            else:
                job = compress(ds, components=3, device="gpu")
                to_host(job["scores"]).compute()
        assert counts["calls"] > 0
        per_size[nchunks] = counts["syncs"]
        assert counts["syncs"] <= SYNCS_PER_CHUNK * nchunks + 2, (op, nchunks, counts)
    assert len(per_size) == 2


def test_the_python_api_keeps_chunks_on_the_device_and_fitted_arrays_on_the_host(
    scene: Path, tmp_path: Path
) -> None:
    import cupy  # noqa: PLC0415

    from cubepipe.pipeline import compress, filter_cube, fit_stats, standardize  # noqa: PLC0415

    ds = open_cube(scene)
    z = standardize(ds, device="gpu")
    assert isinstance(z["cube"].data._meta, cupy.ndarray)
    assert isinstance(z["stats_mean"].values, np.ndarray)  # host: no implicit conversion
    c = compress(ds, components=3, device="gpu")
    assert isinstance(c["scores"].data._meta, cupy.ndarray)
    assert isinstance(c["pca_components"].values, np.ndarray)
    f = filter_cube(ds, "gaussian:1", device="gpu")
    assert isinstance(f["cube"].data._meta, cupy.ndarray)
    st = fit_stats(ds, device="gpu").compute()
    ref = ds["cube"].where(ds["mask"]).values.astype(np.float64)
    np.testing.assert_allclose(st["stats_mean"].values, np.nanmean(ref, axis=(1, 2)), rtol=1e-12)
    np.testing.assert_allclose(st["stats_std"].values, np.nanstd(ref, axis=(1, 2)), rtol=1e-10)
    # the accessor writes device results through the host
    path = z.cubepipe.to_store(tmp_path / "z.zarr")
    cpu = standardize(ds)["cube"].values
    np.testing.assert_allclose(open_cube(path)["cube"].values, cpu, rtol=RTOL, atol=RTOL)


def test_a_yaml_pipeline_runs_its_steps_on_the_device(scene: Path, tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text(
        "device: gpu\n"
        "steps:\n"
        f"  - standardize: {{in: {scene}, out: z.zarr}}\n"
        "  - compress: {out: c.zarr, components: 3}\n"
        "  - reconstruct: {out: r.zarr}\n"
        "  - filter: {in: z.zarr, out: f.zarr, kernel: 'gaussian:1'}\n"
    )
    with _device_counts() as counts:
        res = run_cli("--quiet", "run", "p.yaml", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    _assert_reached_device(counts)
    for name in ("z", "c", "r", "f"):
        assert history(read_attrs(tmp_path / f"{name}.zarr"))[-1]["device"] == "gpu", name
    ref = run_cli("--device", "cpu", "-q", "standardize", str(scene), "-o", "zc.zarr", cwd=tmp_path)
    assert ref.returncode == 0, ref.stderr
    _assert_same(tmp_path / "zc.zarr", tmp_path / "z.zarr", "cube")


def test_iter_standardized_streams_device_frames(tmp_path: Path) -> None:
    import cupy  # noqa: PLC0415

    from cubepipe.pipeline import fit_stats, to_device  # noqa: PLC0415
    from cubepipe.pipeline.stats.standardize import iter_standardized  # noqa: PLC0415

    rng = np.random.default_rng(5)
    frames = rng.normal(-3, 2, size=(4, 3, 16, 20)).astype(np.float32)
    import xarray as xr  # noqa: PLC0415

    ds = xr.Dataset({"cube": (("frame", "band", "y", "x"), frames)}).chunk({"frame": 1})
    stats = fit_stats(ds).compute()
    got = list(iter_standardized(to_device(ds, "gpu"), stats))
    assert all(isinstance(f, cupy.ndarray) for f in got)
    ref = frames.astype(np.float64)
    mean = ref.mean(axis=(0, 2, 3), keepdims=True)[0]
    std = ref.std(axis=(0, 2, 3), keepdims=True)[0]
    for i, f in enumerate(got):
        np.testing.assert_allclose(f.get(), (ref[i] - mean) / std, rtol=1e-5, atol=1e-5)
