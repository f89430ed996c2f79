"""cubepipe on the GPU beside cubepipe on the CPU of the same machine, in the same run.

Four capabilities, each run twice, once per device (``*_cpu``, ``*_gpu``), through the
public API on dask's threaded scheduler, each case in its own process:

- ``standardize``: ``standardize(ds, device=...)``: per-band statistics fitted (one read,
  float64 moments) then the z-score applied (a second read), written;
- ``pca``: ``prepare_compress(ds, components=5, device=...)``: the fit (co-moments, one
  read), then the K = 5 scores written with the reconstruction metrics (RMSE, PSNR,
  spectral angle) computed in the same pass, as ``cubepipe compress IN -o OUT -k 5``;
- ``filter_fft``: ``filter_cube(..., "gaussian:3.75", method="fft")`` (31 x 31, real FFT
  per chunk with halos) of the cube with NaN set to 0 first, as bench_filter's
  ``cubepipe_rfft``;
- ``filter_masked``: the same kernel with ``mask_nan=True`` (normalized convolution,
  method chosen by cubepipe: the row's ``method``);
- ``ae_encode``: ``compress(ds, model=STORE, device=...)``: a fitted per-pixel
  autoencoder (MLP, K = 5) applied to every pixel, scores written (no training, no
  metrics). The model is trained once per size in ``prepare``, on the CPU, small
  (``epochs=1``, ``train_pixels=5000``, on the top-left <= 1024 x 1024 pixels of the
  input), and saved to a store; its quality does not matter here, only the encode.

Every case reads the same input store (``make_cube(SIZE, seed=0)``: synthetic signed
float32, NaN disc, chunks 15 x 512 x 512, written once per size in ``prepare``) and writes
its result with ``write_cube(to_host(out), ...)``, as the CLI does: a GPU case's time
includes the host-to-device copies of the input chunks, the device-to-host copies of the
output, creating the CUDA context (``gpu_init_s``, also reported on its own) and, on the
first run of a machine, compiling CuPy's kernels (the next runs find them in CuPy's cache;
hence the median of ``--repeat`` runs).

Agreement: in the same pass as the write, every case sums its (host) output over the
finite values in float64 (``checksum``: count, sum, sum of ``|x|``, sum of squares); the
summary compares each GPU case with the CPU case of the same run: the count difference
and the largest relative difference of the three sums (the sum's difference relative to
the sum of ``|x|``, as outputs such as z-scores sum to about 0). This adds the same small
host work to both devices. It is stated, not asserted.

Floors (issue 19, ``_common.floor_case``: the codec work alone, on the CPU, one thread
per core, as both devices' runs decode and encode on the host): ``floor_standardize``
(two reads of the input, the cube's bytes encoded), ``floor_pca`` (two reads, 5/15 of
them: the scores), ``floor_filter`` (one read, the cube), ``floor_ae`` (one read, the
scores). ``x_floor``: each case over its capability's floor. Where cubepipe keeps
decoded chunks between the two passes (``keep_between_passes``) a case can beat its
floor's second read.

GPU cases are registered only where CuPy sees a GPU (``gpu_status()``); the
autoencoder cases only where PyTorch imports (it trains the model in ``prepare``).

Sizes: ``1x`` = 15 x 2500 x 2500 (357 MiB), ``4x`` = 15 x 5000 x 5000, ``tiny`` = 15 x 256
x 256 for ``--quick``. Run ``python benchmarks/bench_gpu.py`` (``--size 1x`` for one
size; ``--quick`` for a smoke run, e.g. against the CuPy stand-in:
``PYTHONPATH=tests/gpu_standin/site``). ``benchmarks/gpu_device_run.sh`` runs it on the
lent GPU machine.
"""

from __future__ import annotations

import importlib.util
import sys
import time
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr

from cubepipe.pipeline import compress, filter_cube, prepare_compress, standardize
from cubepipe.pipeline.backend import Device, gpu_status, resolve_device, to_device, to_host
from cubepipe.pipeline.scheduling import keep_between_passes, scheduler
from cubepipe.pipeline.synthetic import make_cube
from cubepipe.storage import open_cube, store_state, write_cube

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import INPUTS, cube_bytes, floor_case, main

warnings.filterwarnings("ignore", message="Consolidated metadata")

NAME = "bench_gpu"
SIZES = {"tiny": (15, 256, 256), "1x": (15, 2500, 2500), "4x": (15, 5000, 5000)}
QUICK_SIZE = "tiny"
K = 5
SPEC = "gaussian:3.75"  # 31 x 31, as bench_filter
#: The autoencoder trained in ``prepare`` (small: only its encode is timed).
AE_FIT = {"epochs": 1, "train_pixels": 5000, "seed": 0}
AE_FIT_CROP = 1024  # trained on the top-left <= 1024 x 1024 pixels of the input
CAPABILITIES = ("standardize", "pca", "filter_fft", "filter_masked", "ae_encode")
BASELINE = "standardize_cpu"

GPU_OK, GPU_DETAIL = gpu_status()
HAVE_TORCH = importlib.util.find_spec("torch") is not None


# -- inputs (made once per size, outside every timed case) --------------------------------


def _input(size: str) -> Path:
    return INPUTS / f"gpu-{size}.zarr"


def _model(size: str) -> Path:
    return INPUTS / f"gpu-{size}-ae-model.zarr"


def prepare(size: str) -> None:
    INPUTS.mkdir(parents=True, exist_ok=True)
    source = _input(size)
    if store_state(source) != "complete":
        write_cube(make_cube(SIZES[size], seed=0), source, op="bench-input", overwrite=True)
    if HAVE_TORCH and store_state(_model(size)) != "complete":
        with scheduler("threads"):
            ds = open_cube(source)
            ds = ds.isel(y=slice(0, AE_FIT_CROP), x=slice(0, AE_FIT_CROP))
            job = prepare_compress(ds, components=K, method="ae", device="cpu", **AE_FIT)
            job.write(_model(size), inputs=[str(source)], overwrite=True)


# -- helpers ------------------------------------------------------------------------------


def _device(name: str) -> tuple[Device, float]:
    """The device, and the seconds it took to get it ready (on the GPU: CuPy's first
    allocation, which creates the CUDA context; part of every GPU case's time)."""
    t0 = time.perf_counter()
    dev = resolve_device(name)
    if dev.name == "gpu":
        xp = dev.xp
        xp.zeros(1, dtype=xp.float32)
        xp.cuda.runtime.deviceSynchronize()
    return dev, time.perf_counter() - t0


def _checksum_block(block: np.ndarray) -> np.ndarray:
    v = block[np.isfinite(block)].astype(np.float64)
    sums = np.array([v.size, v.sum(), np.abs(v).sum(), v @ v], dtype=np.float64)
    return sums.reshape((1,) * block.ndim + (4,))


def _checksum(data: da.Array) -> da.Array:
    """Lazy float64 ``[count, sum, sum |x|, sum x^2]`` over the finite values of ``data``
    (host chunks), one task per chunk reading the chunk the write reads."""
    parts = da.map_blocks(
        _checksum_block,
        data,
        new_axis=data.ndim,
        chunks=tuple((1,) * len(c) for c in data.chunks) + ((4,),),
        dtype=np.float64,
        meta=np.empty((0,) * (data.ndim + 1), dtype=np.float64),
    )
    return parts.sum(axis=tuple(range(data.ndim)))


def _write(
    out: xr.Dataset,
    path: Path,
    variable: str,
    dev: Device,
    *,
    results: Mapping[str, Any] | None = None,
    summarize: Callable[[dict[str, Any]], Mapping[str, Any]] | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """``write_cube(to_host(out), path)`` as the CLI writes (chunks come to the host as
    they are written), with the checksum of ``variable`` (and ``results``) computed in
    the same pass. Returns the checksum and what ``summarize`` made of ``results``."""
    host = to_host(out)
    got: dict[str, Any] = {}

    def summarize_all(values: dict[str, Any]) -> dict[str, Any]:
        got["checksum"] = [float(x) for x in np.asarray(values.pop("checksum"))]
        if summarize is not None:
            got.update(summarize(values))
        return dict(got)

    write_cube(
        host,
        path,
        device=dev.name,
        results={"checksum": _checksum(host[variable].data), **(results or {})},
        summarize=summarize_all,
        **kwargs,
    )
    return got


def _fields(got: Mapping[str, Any], dev: Device, init_s: float, **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"device": dev.name, "checksum": got["checksum"]}
    out["n_finite"] = int(got["checksum"][0])
    if dev.name == "gpu":
        out["gpu_init_s"] = round(init_s, 3)
    return {**out, **extra}


# -- the cases ----------------------------------------------------------------------------


def _standardize(size: str, workdir: Path, device: str) -> dict[str, Any]:
    """``cubepipe standardize IN -o OUT --device D``: fit, then apply, then write."""
    source = _input(size)
    with scheduler("threads"):
        dev, init_s = _device(device)
        ds = open_cube(source, keep_bytes=keep_between_passes("threads", source))
        out = standardize(ds, device=dev)  # the fit runs now, on the device
        got = _write(out, workdir / "z.zarr", "cube", dev, op="standardize", inputs=[str(source)])
    return _fields(got, dev, init_s)


def _pca(size: str, workdir: Path, device: str) -> dict[str, Any]:
    """``cubepipe compress IN -o OUT -k 5 --device D``: fit, then scores + metrics."""
    source = _input(size)
    t0 = time.perf_counter()
    with scheduler("threads"):
        dev, init_s = _device(device)
        ds = open_cube(source, keep_bytes=keep_between_passes("threads", source))
        job = prepare_compress(ds, components=K, device=dev)  # the fit: one read
        fitted = time.perf_counter()
        got = _write(
            job.dataset,
            workdir / "scores.zarr",
            "scores",
            dev,
            op="compress",
            params=job.params,
            inputs=[str(source)],
            chunks={"component": job.components},
            results=job.results,
            summarize=job.summarize,
        )
    done = time.perf_counter()
    return _fields(
        got,
        dev,
        init_s,
        fit_s=round(fitted - t0, 3),
        encode_write_s=round(done - fitted, 3),
        rmse=float(got["rmse"]),
        psnr_db=round(float(got["psnr_db"]), 4),
    )


def _filter(size: str, workdir: Path, device: str, **opts: Any) -> dict[str, Any]:
    """``cubepipe filter IN -o OUT --kernel gaussian:3.75 [...] --device D``."""
    source = _input(size)
    with scheduler("threads"):
        dev, init_s = _device(device)
        ds = open_cube(source)
        if not opts.get("mask_nan"):
            ds = ds.fillna(0)  # unmasked: NaN would spread over the FFT's whole chunk
        out = filter_cube(to_device(ds, dev), SPEC, **opts)
        report = out["cube"].attrs["cubepipe_filter"]
        got = _write(
            out,
            workdir / "filtered.zarr",
            "cube",
            dev,
            op="filter",
            params={k: v for k, v in report.items() if k != "method_reason"},
            inputs=[str(source)],
        )
    return _fields(got, dev, init_s, method=report["method"])


def _ae_encode(size: str, workdir: Path, device: str) -> dict[str, Any]:
    """``cubepipe compress IN -o OUT --model STORE --device D`` without the metrics."""
    source, model = _input(size), _model(size)
    with scheduler("threads"):
        dev, init_s = _device(device)
        out = compress(open_cube(source), model=model, device=dev)
        got = _write(
            out,
            workdir / "scores.zarr",
            "scores",
            dev,
            op="compress",
            inputs=[str(source), str(model)],
            chunks={"component": K},
        )
    return _fields(got, dev, init_s)


def standardize_cpu(size: str, workdir: Path) -> dict[str, Any]:
    return _standardize(size, workdir, "cpu")


def standardize_gpu(size: str, workdir: Path) -> dict[str, Any]:
    return _standardize(size, workdir, "gpu")


def pca_cpu(size: str, workdir: Path) -> dict[str, Any]:
    return _pca(size, workdir, "cpu")


def pca_gpu(size: str, workdir: Path) -> dict[str, Any]:
    return _pca(size, workdir, "gpu")


def filter_fft_cpu(size: str, workdir: Path) -> dict[str, Any]:
    return _filter(size, workdir, "cpu", method="fft")


def filter_fft_gpu(size: str, workdir: Path) -> dict[str, Any]:
    return _filter(size, workdir, "gpu", method="fft")


def filter_masked_cpu(size: str, workdir: Path) -> dict[str, Any]:
    return _filter(size, workdir, "cpu", mask_nan=True)


def filter_masked_gpu(size: str, workdir: Path) -> dict[str, Any]:
    return _filter(size, workdir, "gpu", mask_nan=True)


def ae_encode_cpu(size: str, workdir: Path) -> dict[str, Any]:
    return _ae_encode(size, workdir, "cpu")


def ae_encode_gpu(size: str, workdir: Path) -> dict[str, Any]:
    return _ae_encode(size, workdir, "gpu")


def _cases() -> dict[str, Callable[[str, Path], dict[str, Any]]]:
    cases = {}
    for cap in CAPABILITIES:
        if cap == "ae_encode" and not HAVE_TORCH:
            continue  # the model is trained in prepare, with PyTorch
        cases[f"{cap}_cpu"] = globals()[f"{cap}_cpu"]
        if GPU_OK:
            cases[f"{cap}_gpu"] = globals()[f"{cap}_gpu"]
    return cases


def _floor(reads: int, bands: int | None) -> Callable[[str, Path], dict[str, Any]]:
    return floor_case(
        lambda size: [_input(size)], lambda size: cube_bytes(_input(size), bands=bands), reads=reads
    )


#: Each capability's floor case: (reads of the input, bands written; None: all).
FLOOR_OF = {
    "standardize": ("floor_standardize", 2, None),
    "pca": ("floor_pca", 2, K),
    "filter_fft": ("floor_filter", 1, None),
    "filter_masked": ("floor_filter", 1, None),
    "ae_encode": ("floor_ae", 1, K),
}
CASES = _cases()
FLOORS = {case: FLOOR_OF[case.rsplit("_", 1)[0]][0] for case in CASES}
CASES |= {
    name: _floor(reads, bands)
    for name, reads, bands in FLOOR_OF.values()
    if name in FLOORS.values()  # the autoencoder's only where its cases run
}


# -- summary: speed-up and agreement per pair ---------------------------------------------


def agreement(cpu: list[float], gpu: list[float]) -> tuple[int, float]:
    """(GPU minus CPU count of finite values, largest relative difference of the sums:
    sum and sum |x| relative to the CPU's sum |x|, sum x^2 relative to the CPU's)."""
    n_c, s_c, a_c, q_c = cpu
    n_g, s_g, a_g, q_g = gpu
    rel = [
        abs(s_g - s_c) / a_c if a_c else abs(s_g - s_c),
        abs(a_g - a_c) / a_c if a_c else abs(a_g - a_c),
        abs(q_g - q_c) / q_c if q_c else abs(q_g - q_c),
    ]
    return int(n_g - n_c), max(rel)


def summary(rows: list[dict[str, Any]]) -> str:
    by = {(r["size"], r["case"]): r for r in rows}
    sizes = list(dict.fromkeys(r["size"] for r in rows))
    lines = [
        "## GPU vs CPU (same run)",
        "",
        "speed-up: CPU seconds / GPU seconds (median of the runs, whole case: read, "
        "compute, transfers, write). Agreement: the GPU output against the CPU output of "
        "the same run, by float64 sums over the finite values (count, sum, sum |x|, "
        "sum x^2); `max rel diff` is the largest relative difference of the three sums.",
        "",
    ]
    if not GPU_OK:
        return "\n".join([*lines, f"No GPU case ran: {GPU_DETAIL}."])
    lines += [
        f"GPU: {GPU_DETAIL}.",
        "",
        "| size | capability | cpu s | gpu s | speed-up | gpu init s | method cpu / gpu | "
        "finite values (gpu - cpu) | max rel diff | note |",
        "|" + "---|" * 10,
    ]
    for size in sizes:
        for cap in CAPABILITIES:
            c, g = by.get((size, f"{cap}_cpu")), by.get((size, f"{cap}_gpu"))
            if c is None or g is None:
                continue
            dn, rel = agreement(c["checksum"], g["checksum"])
            method = f"{c['method']} / {g['method']}" if "method" in c else ""
            note = f"RMSE cpu {c['rmse']:.6g}, gpu {g['rmse']:.6g}" if "rmse" in c else ""
            lines.append(
                f"| {size} | {cap} | {c['seconds']:.3f} | {g['seconds']:.3f} | "
                f"{c['seconds'] / g['seconds']:.2f}x | {g.get('gpu_init_s', '')} | {method} | "
                f"{dn} of {c['n_finite']} | {rel:.2e} | {note} |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    if not HAVE_TORCH and "--child" not in sys.argv:
        print("skipping ae_encode_*: PyTorch does not import here (it trains the model)")
    main(
        NAME,
        CASES,
        baseline=BASELINE,
        sizes=("1x", "4x"),
        quick_size=QUICK_SIZE,
        prepare=prepare,
        columns=("device", "gpu_init_s", "method", "fit_s", "encode_write_s"),
        summary=summary,
        floor=FLOORS,
        notes="Input: synthetic signed float32 cube (make_cube, seed 0, NaN disc) in a "
        "cubepipe store (its default codec chain), chunks 15 x 512 x 512. Each capability "
        "runs once per device through the public API (threaded dask scheduler) and writes "
        "its output with write_cube(to_host(...)): GPU times include the transfers and "
        f"the CUDA context (gpu_init_s). K = {K}; filters: {SPEC} (31 x 31); the "
        "autoencoder (MLP, trained in prepare on the CPU, 1 epoch, 5000 pixels) is only "
        "applied. floor_*: the codec work of each capability alone on the CPU (reads of the "
        "input: standardize and pca 2, filters and ae 1; written: the cube, or the 5 "
        "scores), one thread per core; x_floor: each case over its capability's floor. GPU: "
        + (GPU_DETAIL if GPU_OK else f"none ({GPU_DETAIL}); only the CPU cases ran."),
    )
