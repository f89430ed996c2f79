"""PCA of a stored cube (fit, project, write K = 5 score bands) beside what users do instead.

Every case reads the same cubepipe store (a synthetic signed float32 cube with correlated
bands and a NaN disc), fits a 5-component PCA over the band axis, projects every pixel and
writes the ``(5, y, x)`` float32 scores to a zarr v3 store with cubepipe's default codec,
each in its own process:

- ``floor``: the codecs alone (:func:`_common.floor_case`): decode every chunk of the
  input once and encode the bytes of the 5 score bands, one thread per core: what any
  PCA case here costs at least (issue 19); ``x_floor`` of every PCA case is over it;
- ``floor_copy``: the same for a copy (decode the cube, encode all of it): the floor of
  ``copy_floor``, ``io_floor_2read`` (that one reads twice: its x_floor is over one read)
  and ``cubepipe_copy``;
- ``kernel_floor``: cubepipe's own chunk kernels with nothing around them (no dask, no
  xarray, no store writer): read + decode every chunk and take its co-moments
  (``block_comoments``), merge, ``eigh``; read + decode every chunk again, project it and
  gather its error partials (``_encode_rows``, what ``compress`` runs per chunk) and encode
  the scores with the default codecs (nothing written); one thread per core, BLAS on one
  thread. What this method's arithmetic and codecs cost on this machine: cubepipe over
  it is the orchestration's share, and it over ``floor`` is why ``floor`` is out of reach;
- ``copy_floor``: plain dask zarr-to-zarr copy of the whole cube, same codec and chunks
  (one read, one write of the cube): baseline;
- ``io_floor_2read``: read the cube once (``sum().compute()``), then that copy: the least
  any fit-then-project method without caching can do;
- ``cubepipe``: what ``cubepipe compress IN -o OUT -k 5`` runs, through the Python API
  (``prepare_compress`` fits, then ``.write`` stores the scores with the reconstruction
  metrics computed in the projection's own tasks), on dask's threaded scheduler;
- ``sklearn_pca``: load the cube, keep the pixels valid in every band as an
  ``(N, band)`` float32 array, ``sklearn.decomposition.PCA(5)`` fit then transform
  (``svd_solver="covariance_eigh"`` where scikit-learn has it, else ``"full"``; the row
  ``solver`` says which), scatter the scores back into the image, write;
- ``sklearn_incremental``: ``IncrementalPCA(5, batch_size=<one chunk's pixels>)``,
  ``partial_fit`` over the store's chunks (valid pixels), then ``transform`` chunk by
  chunk into the output store (serial, as its API is);
- ``dask_ml_pca``: ``dask_ml.decomposition.PCA(5, random_state=0)`` (default
  ``svd_solver="auto"``) on the ``(pixels, band)`` dask array of valid pixels
  (``transpose`` + ``reshape``, boolean mask, ``compute_chunk_sizes``), ``transform`` of all
  pixels (NaN rows stay NaN), reshaped back and stored. Left out, with a note in the
  table, where dask-ml does not import (so are the scikit-learn cases without it);
- ``float64_gram_dask``: a hand-written float64 Gram in dask: ``n``, the band sums and
  ``G = X^T X`` over the pixels valid in every band in one pass (``tensordot`` over y, x
  of the cube, the same sums as ``X.T @ X`` of the ``(pixels, band)`` matrix without its
  reshape/rechunk), ``cov = (G - n mu mu^T) / (n - 1)``, ``numpy.linalg.eigh``, then
  ``tensordot`` of the components with ``x - mu`` and ``da.store``.

Imports are not timed, in any case: the script imports cubepipe, dask and zarr before
the cases run, and a child process imports what its case needs from scikit-learn or dask-ml
first (start-up is issue 19 item 5's benchmark). Each fitting case reports its phase times (``fit_s``: everything up to a fitted model,
loading included; ``transform_write_s``: the rest) and its explained variances and
components. After a full run the script adds an accuracy table to ``results/bench_pca.md``:
each case against a float64 reference, ``numpy.linalg.eigh`` of the covariance computed
from the store chunk by chunk in float64 with two passes (mean first, then centred
cross-products), made with the inputs. ``ev_max_rel_err`` is the largest relative error of
the 5 explained variances (``n - 1`` normalisation everywhere), ``max_angle_deg`` the
largest angle between a component and the reference's (sign ignored). With ``--quick`` the
``cubepipe`` case checks itself against that reference and fails beyond 1e-9.

Inputs (the store and the reference, ``_common.INPUTS/pca-<size>.*``) are made once per
size, in a separate process, outside every timed case. Sizes: ``1x`` = 15 x 2500 x 2500
float32 (357 MiB, chunks 15 x 512 x 512), ``4x`` = 15 x 5000 x 5000 (1.4 GiB, same
chunks), ``224b`` = 224 x 1024 x 1024 (896 MiB, chunks 224 x 256 x 256: cubepipe's
default keeps a chunk at most 128 MiB), ``tiny`` = 15 x 200 x 240 for ``--quick``. The
baselines write scores in the input's y/x chunks; cubepipe writes its default (5 x 512 x
512). Run ``python benchmarks/bench_pca.py`` (``--size 1x`` for one size, ``--repeat 1``,
``--quick`` for a smoke run).

Goals: (issue 5) cubepipe at most 1.25x ``copy_floor``, exact to float64, peak RSS under
600 MB and flat with cube size; (issue 19) cubepipe at most 1.5x ``floor`` and at least
1.5x faster than ``sklearn_pca`` (wall time, same run). The goal table says, per size,
how close each is.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np
import zarr

from cubepipe.pipeline import prepare_compress
from cubepipe.pipeline.scheduling import keep_between_passes, scheduler
from cubepipe.pipeline.synthetic import make_cube
from cubepipe.storage import open_cube, store_state, write_cube
from cubepipe.storage.store import default_compressors

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    DEFAULT_CODECS,
    INPUTS,
    RESULTS,
    _bytes_codecs,
    _cpu_s,
    chunk_reader,
    floor_case,
    main,
    zarr_copy,
)

warnings.filterwarnings("ignore", message="Consolidated metadata")

NAME = "bench_pca"
SIZES = {
    "tiny": (15, 200, 240),
    "1x": (15, 2500, 2500),
    "4x": (15, 5000, 5000),
    "224b": (224, 1024, 1024),
}
RUN_SIZES = ("1x", "4x", "224b")
QUICK_SIZE = "tiny"
K = 5
BASELINE = "copy_floor"
TIME_GOAL = 1.25  # cubepipe seconds / copy_floor seconds (issue 5)
FLOOR_GOAL = 1.5  # cubepipe seconds / floor seconds (issue 19)
PEER_GOAL = 1.5  # sklearn_pca seconds / cubepipe seconds (issue 19)
RSS_GOAL_MB = 600
QUICK_TOL = 1e-9  # cubepipe vs the float64 reference, --quick (relative EV; radians)


# -- inputs (made once per size, outside every timed case) --------------------------------


def _store(size: str) -> Path:
    return INPUTS / f"pca-{size}.zarr"


def _src(size: str) -> str:
    return str(_store(size) / "cube")


def _ref_path(size: str) -> Path:
    return INPUTS / f"pca-{size}-ref.npz"


def prepare(size: str) -> None:
    """Make the store and its float64 reference (see :func:`make_inputs`), if missing, in
    a separate process so that this one stays small."""
    if store_state(_store(size)) == "complete" and _ref_path(size).exists():
        return
    subprocess.run([sys.executable, __file__, "--make-inputs", size], check=True)


def make_inputs(size: str) -> None:
    INPUTS.mkdir(parents=True, exist_ok=True)
    store = _store(size)
    if store_state(store) != "complete":
        write_cube(make_cube(SIZES[size], seed=0), store, op="bench-input", overwrite=True)
    ref = _ref_path(size)
    if not ref.exists():
        tmp = ref.with_name(ref.stem + ".partial.npz")
        np.savez(tmp, **reference(size))
        os.replace(tmp, ref)


def _blocks(shape: tuple[int, ...], chunks: tuple[int, ...]) -> list[tuple[slice, slice]]:
    _, ny, nx = shape
    _, cy, cx = chunks
    return [
        (slice(y0, min(y0 + cy, ny)), slice(x0, min(x0 + cx, nx)))
        for y0 in range(0, ny, cy)
        for x0 in range(0, nx, cx)
    ]


def _valid_pixels(block: np.ndarray) -> np.ndarray:
    """``(pixels valid in every band, band)`` of a ``(band, y, x)`` block."""
    x = block.reshape(block.shape[0], -1).T
    return x[~np.isnan(x).any(axis=1)]


def reference(size: str) -> dict[str, np.ndarray]:
    """Float64 PCA of the stored cube, independent of cubepipe: two passes over the
    chunks (float64 band sums -> mean; then the sum of centred cross-products), then
    ``numpy.linalg.eigh`` of ``C / (n - 1)``, descending."""
    z = zarr.open_array(_src(size), mode="r")
    nb = z.shape[0]
    n, s = 0, np.zeros(nb)
    for sy, sx in _blocks(z.shape, z.chunks):
        x = _valid_pixels(z[:, sy, sx]).astype(np.float64)
        n += x.shape[0]
        s += x.sum(axis=0)
    mean = s / n
    c = np.zeros((nb, nb))
    for sy, sx in _blocks(z.shape, z.chunks):
        d = _valid_pixels(z[:, sy, sx]).astype(np.float64) - mean
        c += d.T @ d
    values, vectors = np.linalg.eigh(c / (n - 1))
    order = np.argsort(values)[::-1]
    return {
        "n": np.array(n),
        "mean": mean,
        "explained_variance": values[order],
        "components": vectors[:, order].T,
    }


# -- accuracy -----------------------------------------------------------------------------


def accuracy(ev: Any, components: Any, ref: Any) -> dict[str, Any]:
    """Relative errors of the explained variances and the angles (degrees, sign ignored)
    between each component and the reference's, computed from the sine (exact for tiny
    angles, where ``arccos`` of a cosine near 1 is not)."""
    ev = np.asarray(ev, dtype=np.float64)
    v = np.asarray(components, dtype=np.float64)
    k = ev.size
    rev = np.asarray(ref["explained_variance"], dtype=np.float64)[:k]
    r = np.asarray(ref["components"], dtype=np.float64)[:k]
    v = v / np.linalg.norm(v, axis=1, keepdims=True)
    r = r / np.linalg.norm(r, axis=1, keepdims=True)
    cos = np.sum(v * r, axis=1)
    sin = np.linalg.norm(v - cos[:, None] * r, axis=1)
    angles = np.degrees(np.arctan2(sin, np.abs(cos)))
    rel = np.abs(ev - rev) / np.abs(rev)
    return {
        "ev_rel_err": [float(e) for e in rel],
        "ev_max_rel_err": float(rel.max()),
        "angle_deg": [float(a) for a in angles],
        "max_angle_deg": float(angles.max()),
    }


def _load_ref(size: str) -> dict[str, np.ndarray]:
    with np.load(_ref_path(size)) as f:
        return {k: f[k] for k in f.files}


def _fitted(ev: Any, components: Any, **extra: Any) -> dict[str, Any]:
    """What a fitting case returns: its model (for the accuracy table) and its timings."""
    return {
        "explained_variance": [float(e) for e in np.asarray(ev, dtype=np.float64)],
        "components": np.asarray(components, dtype=np.float64).tolist(),
        **extra,
    }


# -- helpers ------------------------------------------------------------------------------


def _scores_array(out: Path, ny: int, nx: int, chunks_yx: tuple[int, int]) -> zarr.Array:
    return zarr.create_array(
        str(out),
        shape=(K, ny, nx),
        chunks=(K, *chunks_yx),
        dtype=np.float32,
        compressors=default_compressors(),
    )


# -- floors -------------------------------------------------------------------------------


def _scores_bytes(size: str) -> int:
    _, ny, nx = SIZES[size]
    return K * ny * nx * 4


def _cube_bytes(size: str) -> int:
    return int(np.prod(SIZES[size])) * 4


#: The codecs alone: decode the input once, encode the 5 score bands (or the whole cube).
floor = floor_case(lambda size: [Path(_src(size))], _scores_bytes)
floor_copy = floor_case(lambda size: [Path(_src(size))], _cube_bytes)


def kernel_floor(size: str, workdir: Path) -> dict[str, Any]:
    """cubepipe's fit and encode chunk kernels, read + decode included, on a thread pool
    (see the module docstring); edge chunks trimmed to the array, as cubepipe reads them."""
    from concurrent.futures import ThreadPoolExecutor  # noqa: PLC0415
    from functools import reduce  # noqa: PLC0415

    from threadpoolctl import threadpool_limits  # noqa: PLC0415

    from cubepipe.pipeline.compression.pca_kernels import _encode_rows  # noqa: PLC0415
    from cubepipe.pipeline.stats.moments import block_comoments, merge_comoments  # noqa: PLC0415

    files, read = chunk_reader(Path(_src(size)))
    enc = _bytes_codecs(DEFAULT_CODECS, "cubepipe's default codec chain")
    threads = len(os.sched_getaffinity(0))

    cpu0 = _cpu_s()
    t0 = time.perf_counter()
    with threadpool_limits(1, user_api="blas"), ThreadPoolExecutor(threads) as pool:
        parts = list(pool.map(lambda f: block_comoments(read(f), band_axis=0), files))
        total = reduce(merge_comoments, parts)
        nb = total.shape[0]
        cov = total[:, 7:] / (total[0, 5] - 1.0)
        evals, evecs = np.linalg.eigh(cov)
        order = np.argsort(evals)[::-1][:K]
        m = {
            "scale": np.ones(nb),
            "factor": np.ones(K),
            "w": np.ascontiguousarray(evecs[:, order].T),
            "mean": total[:, 6].copy(),
        }
        fitted = time.perf_counter()

        def encode(f: Path) -> list[float]:
            x = read(f).reshape(nb, -1)
            scores, partial = _encode_rows(np, x, None, m, metrics=True)
            buf: Any = scores
            for codec in enc:
                buf = codec.encode(buf)
            return partial

        partials = list(pool.map(encode, files))
    done = time.perf_counter()
    sse = sum(p[0] for p in partials)
    return _fitted(
        evals[order],
        evecs[:, order].T,
        solver="cubepipe's chunk kernels, no dask",
        fit_s=fitted - t0,
        transform_write_s=done - fitted,
        seconds=done - t0,
        cpu_s=round(_cpu_s() - cpu0, 3),
        chunks=len(files),
        sse=sse,
    )


def copy_floor(size: str, workdir: Path) -> dict[str, Any]:
    zarr_copy(da.from_zarr(_src(size)), workdir / "copy.zarr")
    return {}


def cubepipe_copy(size: str, workdir: Path) -> dict[str, Any]:
    """cubepipe's own copy, ``write_cube(open_cube(IN), OUT)``: its direct chunk I/O
    (storage/chunkio.py), with no computation. Not a goal; shows how much of cubepipe's
    lead over the zarr floors is I/O."""
    write_cube(open_cube(_store(size)), workdir / "copy.zarr", op="copy")
    return {}


def io_floor_2read(size: str, workdir: Path) -> dict[str, Any]:
    arr = da.from_zarr(_src(size))
    arr.sum().compute()
    zarr_copy(arr, workdir / "copy.zarr")
    return {}


# -- cubepipe -----------------------------------------------------------------------------


def cubepipe(size: str, workdir: Path) -> dict[str, Any]:
    """``cubepipe compress IN -o OUT -k 5`` as the library call it makes
    (:func:`cubepipe.pipeline.prepare_compress`, then writing scores and metrics in one
    pass)."""
    source = str(_store(size))
    t0 = time.perf_counter()
    with scheduler("threads"):
        ds = open_cube(source, keep_bytes=keep_between_passes("threads", source))
        job = prepare_compress(ds, components=K)  # the fit: one read
        fitted = time.perf_counter()
        job.write(workdir / "scores.zarr", inputs=[source], device="cpu")
    done = time.perf_counter()
    ev = job.dataset["pca_explained_variance"].values
    comps = job.dataset["pca_components"].values
    if size == QUICK_SIZE:
        # cubepipe's fit stands beside the independent float64 reference: fail loudly.
        acc = accuracy(ev, comps, _load_ref(size))
        if acc["ev_max_rel_err"] > QUICK_TOL or np.radians(acc["max_angle_deg"]) > QUICK_TOL:
            raise SystemExit(
                f"cubepipe's PCA disagrees with the float64 reference beyond {QUICK_TOL}: "
                f"explained variance rel. err. {acc['ev_max_rel_err']:.3g}, "
                f"angle {np.radians(acc['max_angle_deg']):.3g} rad"
            )
    return _fitted(
        ev,
        comps,
        solver="float64 co-moments (Chan)",
        fit_s=fitted - t0,
        transform_write_s=done - fitted,
    )


# -- what users do instead ----------------------------------------------------------------


def sklearn_pca(size: str, workdir: Path) -> dict[str, Any]:
    from sklearn.decomposition import PCA  # noqa: PLC0415

    t0 = time.perf_counter()
    src = zarr.open_array(_src(size), mode="r")
    cube = src[...]  # (band, y, x) float32, in memory
    nb, ny, nx = cube.shape
    x = cube.reshape(nb, -1).T  # (pixels, band), a view
    valid = ~np.isnan(x).any(axis=1)
    xv = x[valid]  # (valid pixels, band) float32, C-contiguous copy
    loaded = time.perf_counter()
    solver = "covariance_eigh"
    try:
        pca = PCA(K, svd_solver=solver).fit(xv)
    except ValueError:  # scikit-learn < 1.5 has no covariance_eigh
        solver = "full"
        pca = PCA(K, svd_solver=solver).fit(xv)
    fitted = time.perf_counter()
    scores = np.full((K, ny * nx), np.nan, dtype=np.float32)
    scores[:, valid] = pca.transform(xv).T
    del cube, x, xv
    z = _scores_array(workdir / "scores.zarr", ny, nx, src.chunks[1:])
    z[...] = scores.reshape(K, ny, nx)
    done = time.perf_counter()
    return _fitted(
        pca.explained_variance_,
        pca.components_,
        solver=solver,
        load_s=loaded - t0,
        fit_s=fitted - t0,
        transform_write_s=done - fitted,
    )


def sklearn_incremental(size: str, workdir: Path) -> dict[str, Any]:
    from sklearn.decomposition import IncrementalPCA  # noqa: PLC0415

    t0 = time.perf_counter()
    z = zarr.open_array(_src(size), mode="r")
    nb, ny, nx = z.shape
    _, cy, cx = z.chunks
    ipca = IncrementalPCA(K, batch_size=cy * cx)
    for sy, sx in _blocks(z.shape, z.chunks):
        xv = _valid_pixels(z[:, sy, sx])
        if xv.shape[0] >= K:  # partial_fit needs at least K samples per batch
            ipca.partial_fit(xv)
    fitted = time.perf_counter()
    out = _scores_array(workdir / "scores.zarr", ny, nx, (cy, cx))
    for sy, sx in _blocks(z.shape, z.chunks):
        block = z[:, sy, sx]
        x = block.reshape(nb, -1).T
        valid = ~np.isnan(x).any(axis=1)
        s = np.full((K, x.shape[0]), np.nan, dtype=np.float32)
        if valid.any():
            s[:, valid] = ipca.transform(x[valid]).T
        out[:, sy, sx] = s.reshape(K, *block.shape[1:])
    done = time.perf_counter()
    return _fitted(
        ipca.explained_variance_,
        ipca.components_,
        solver="incremental SVD (float32 input)",
        fit_s=fitted - t0,
        transform_write_s=done - fitted,
    )


def dask_ml_pca(size: str, workdir: Path) -> dict[str, Any]:
    from dask_ml.decomposition import PCA  # noqa: PLC0415

    t0 = time.perf_counter()
    arr = da.from_zarr(_src(size))
    nb, ny, nx = arr.shape
    _, cy, cx = arr.chunksize
    x = arr.transpose(1, 2, 0).reshape(ny * nx, nb)  # (pixels, band)
    xv = x[~da.isnan(x).any(axis=1)]
    xv.compute_chunk_sizes()  # dask-ml's solver choice needs known shapes
    pca = PCA(K, random_state=0).fit(xv)
    try:  # what svd_solver="auto" picked (private API; the setting itself if it moved)
        solver = pca._get_solver(xv, K)
    except Exception:
        solver = pca.svd_solver
    fitted = time.perf_counter()
    s = pca.transform(x)  # (pixels, K): NaN where the pixel is invalid
    s = s.reshape(ny, nx, K).transpose(2, 0, 1).astype(np.float32).rechunk((K, cy, cx))
    da.store(s, _scores_array(workdir / "scores.zarr", ny, nx, (cy, cx)), lock=False)
    done = time.perf_counter()
    return _fitted(
        pca.explained_variance_,
        pca.components_,
        solver=f"dask-ml {solver}",
        fit_s=fitted - t0,
        transform_write_s=done - fitted,
    )


def float64_gram_dask(size: str, workdir: Path) -> dict[str, Any]:
    t0 = time.perf_counter()
    arr = da.from_zarr(_src(size))
    _, ny, nx = arr.shape
    _, cy, cx = arr.chunksize
    x = arr.astype(np.float64)
    valid = ~da.isnan(x).any(axis=0)
    xz = da.where(valid, x, 0.0)
    n, s, g = dask.compute(
        valid.sum(), xz.sum(axis=(1, 2)), da.tensordot(xz, xz, axes=([1, 2], [1, 2]))
    )
    mu = s / n
    cov = (g - n * np.outer(mu, mu)) / (n - 1)
    values, vectors = np.linalg.eigh(cov)
    order = np.argsort(values)[::-1][:K]
    w = vectors[:, order].T  # (K, band)
    fitted = time.perf_counter()
    scores = da.tensordot(w, x - mu[:, None, None], axes=(1, 0)).astype(np.float32)
    da.store(scores, _scores_array(workdir / "scores.zarr", ny, nx, (cy, cx)), lock=False)
    done = time.perf_counter()
    return _fitted(
        values[order],
        w,
        solver="float64 raw Gram + eigh",
        fit_s=fitted - t0,
        transform_write_s=done - fitted,
    )


CASES = {
    "floor": floor,
    "floor_copy": floor_copy,
    "kernel_floor": kernel_floor,
    "copy_floor": copy_floor,
    "io_floor_2read": io_floor_2read,
    "cubepipe_copy": cubepipe_copy,
    "cubepipe": cubepipe,
    "sklearn_pca": sklearn_pca,
    "sklearn_incremental": sklearn_incremental,
    "dask_ml_pca": dask_ml_pca,
    "float64_gram_dask": float64_gram_dask,
}


#: case -> its floor (the codec work of the same reads and writes; see the docstring).
FLOORS = {
    **{c: "floor_copy" for c in ("copy_floor", "io_floor_2read", "cubepipe_copy")},
    **{c: "floor" for c in ("kernel_floor", "cubepipe", "sklearn_pca")},
    **{c: "floor" for c in ("sklearn_incremental",)},
    **{c: "floor" for c in ("dask_ml_pca", "float64_gram_dask")},
}

#: case -> the optional module it needs (scikit-learn is a dev extra; dask-ml is not one).
OPTIONAL = {
    "sklearn_pca": "sklearn.decomposition",
    "sklearn_incremental": "sklearn.decomposition",
    "dask_ml_pca": "dask_ml.decomposition",
}


def _import_problems() -> dict[str, str]:
    """module -> why it does not import here, for each module of :data:`OPTIONAL` that
    fails (probed in a child: dask-ml pulls in numba and pyarrow)."""
    problems = {}
    for module in sorted(set(OPTIONAL.values())):
        proc = subprocess.run(
            [sys.executable, "-c", f"import {module}"], capture_output=True, text=True
        )
        if proc.returncode:
            lines = proc.stderr.strip().splitlines()
            problems[module] = lines[-1] if lines else f"exit {proc.returncode}"
    return problems


def notes(problems: dict[str, str]) -> str:
    skipped = "".join(
        f" **Skipped** {', '.join(c for c, m in OPTIONAL.items() if m == module)}: "
        f"`import {module}` fails here ({why})."
        for module, why in problems.items()
    )
    return (
        f"Input: synthetic signed float32 cube (NaN disc) in a cubepipe store with "
        f"cubepipe's default codec chain ({_codec_names()}), band-whole chunks (15 x 512 x "
        f"512; 224 x 256 x 256). Every case but the copies fits K = {K} components and "
        f"writes the (5, y, x) float32 scores with the same codec; the copies copy the whole "
        f"cube. Inputs are read from the page cache; imports are not timed (every case's "
        f"modules are imported before its clock starts). `floor`: decode the input once + "
        f"encode the 5 score bands, both cores (`floor_copy`: decode + encode the cube); "
        f"`x_floor`: seconds over the case's floor. Goals: (issue 5) cubepipe at most "
        f"{TIME_GOAL}x copy_floor, exact to float64, peak RSS under {RSS_GOAL_MB} MB and flat "
        f"with cube size; (issue 19) cubepipe at most {FLOOR_GOAL}x floor and at least "
        f"{PEER_GOAL}x faster than sklearn_pca. `kernel_floor`: cubepipe's own fit and "
        f"encode chunk kernels with the reads and codecs, on a thread pool, no dask: the "
        f"arithmetic this method needs (cubepipe / kernel_floor is what orchestration "
        f"adds; kernel_floor / floor why `floor` is out of reach). Fit/transform times and accuracy against a "
        f"float64 reference: see below.{skipped}"
    )


def _codec_names() -> str:
    return " -> ".join(str(c["name"]).replace("numcodecs.", "") for c in DEFAULT_CODECS)


def goals(rows: list[dict[str, Any]]) -> str:
    """The issue-19 goal rows, per size: cubepipe over its floor (at most FLOOR_GOAL) and
    sklearn_pca over cubepipe (at least PEER_GOAL), with the seconds cubepipe would need
    to meet each; printed after every run (``--case`` ones too)."""
    by = {(r["size"], r["case"]): r for r in rows}
    lines = [
        f"Goals (issue 19): cubepipe at most {FLOOR_GOAL}x `floor` (decode the input once + "
        f"encode the {K} score bands, both cores) and at least {PEER_GOAL}x faster than "
        "`sklearn_pca` (wall seconds, same run, imports untimed).",
        "",
        "| size | floor s | floor cpu s | cubepipe s | cubepipe cpu s | cubepipe / floor | "
        f"within {FLOOR_GOAL}x (needs s) | kernel_floor s | kernel_floor / floor | "
        "cubepipe / kernel_floor | sklearn_pca s | sklearn_pca / cubepipe | "
        f"at least {PEER_GOAL}x (needs s) |",
        "|" + "---|" * 13,
    ]
    for size in dict.fromkeys(r["size"] for r in rows):
        c, f, sk = (by.get((size, k)) for k in ("cubepipe", "floor", "sklearn_pca"))
        if c is None or f is None:
            continue
        ratio = c["seconds"] / f["seconds"]
        cells = [
            size,
            f"{f['seconds']:.2f}",
            str(f.get("cpu_s", "-")),
            f"{c['seconds']:.2f}",
            str(c.get("cpu_s", "-")),
            f"{ratio:.2f}",
            f"{'yes' if ratio <= FLOOR_GOAL else '**no**'} ({FLOOR_GOAL * f['seconds']:.2f})",
        ]
        kf = by.get((size, "kernel_floor"))
        if kf is None:
            cells += ["-", "-", "-"]
        else:
            cells += [
                f"{kf['seconds']:.2f}",
                f"{kf['seconds'] / f['seconds']:.2f}",
                f"{c['seconds'] / kf['seconds']:.2f}",
            ]
        if sk is None:
            cells += ["-", "-", "-"]
        else:
            peer = sk["seconds"] / c["seconds"]
            cells += [
                f"{sk['seconds']:.2f}",
                f"{peer:.2f}",
                f"{'yes' if peer >= PEER_GOAL else '**no**'} ({sk['seconds'] / PEER_GOAL:.2f})",
            ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) if len(lines) > 4 else ""


# -- accuracy table (added to the result files after a full run) -------------------------


def _mb(r: dict[str, Any], key: str) -> str:
    return str(r[key]) if key in r else "-"


def accuracy_tables(rows: list[dict[str, Any]]) -> list[str]:
    """Replace each row's components by its errors against the reference (in place);
    return the markdown: accuracy and phase times, the goal check, RSS 224b / 1x."""
    refs: dict[str, dict[str, np.ndarray]] = {}
    lines = [
        "## Fit, transform and accuracy",
        "",
        f"Against a float64 reference (two-pass float64 covariance of the stored cube, "
        f"`numpy.linalg.eigh`): `ev max rel err` over the {K} explained variances "
        f"(`n - 1` everywhere), angles between each component and the reference's, sign "
        f"ignored. The reference is itself float64: differences near "
        f"`1e-16 * ev[0] / ev[k]` are its rounding, not the case's. `fit s` includes loading.",
        "",
        "| size | case | solver | fit s | transform + write s | ev max rel err | "
        f"max angle deg | component {K} angle deg |",
        "|" + "---|" * 8,
    ]
    for r in rows:
        comps = r.pop("components", None)
        if comps is None:
            continue
        size = r["size"]
        if size not in refs:
            refs[size] = _load_ref(size)
        acc = accuracy(r["explained_variance"], comps, refs[size])
        r.update(acc)
        lines.append(
            f"| {size} | {r['case']} | {r.get('solver', '')} | {r['fit_s']:.2f} | "
            f"{r['transform_write_s']:.2f} | {acc['ev_max_rel_err']:.2e} | "
            f"{acc['max_angle_deg']:.2e} | {acc['angle_deg'][-1]:.2e} |"
        )
    by = {(r["size"], r["case"]): r for r in rows}
    sizes = list(dict.fromkeys(r["size"] for r in rows))
    lines += [
        "",
        f"Goal check (issue 5): cubepipe at most {TIME_GOAL}x {BASELINE}, peak RSS under "
        f"{RSS_GOAL_MB} MB.",
        "",
        f"| size | cubepipe / {BASELINE} | within {TIME_GOAL}x | peak RSS MB | "
        f"under {RSS_GOAL_MB} MB | peak anon MB |",
        "|" + "---|" * 6,
    ]
    for size in sizes:
        c = by.get((size, "cubepipe"))
        if c is None:
            continue
        ratio = c["ratio_to_" + BASELINE]
        lines.append(
            f"| {size} | {ratio:.2f} | {'yes' if ratio <= TIME_GOAL else '**no**'} | "
            f"{c['peak_rss_mb']} | {'yes' if c['peak_rss_mb'] < RSS_GOAL_MB else '**no**'} | "
            f"{_mb(c, 'peak_anon_mb')} |"
        )
    for big, note in (("4x", "4x the bytes"), ("224b", "2.5x the bytes")):
        if "1x" not in sizes or big not in sizes:
            continue
        lines += [
            "",
            f"Peak RSS at {big} over 1x (the {big} cube holds {note}).",
            "",
            f"| case | peak RSS 1x MB | peak RSS {big} MB | {big} / 1x | peak anon 1x MB | "
            f"peak anon {big} MB |",
            "|" + "---|" * 6,
        ]
        for case in CASES:
            a, b = by.get(("1x", case)), by.get((big, case))
            if a and b:
                lines.append(
                    f"| {case} | {a['peak_rss_mb']} | {b['peak_rss_mb']} | "
                    f"{b['peak_rss_mb'] / a['peak_rss_mb']:.2f} | {_mb(a, 'peak_anon_mb')} | "
                    f"{_mb(b, 'peak_anon_mb')} |"
                )
    return lines


def _post(started: float) -> None:
    """After a full run (``main`` wrote this run's JSON): accuracy into JSON and markdown."""
    if "--quick" in sys.argv:
        return
    js, md = RESULTS / f"{NAME}.json", RESULTS / f"{NAME}.md"
    if not js.exists() or js.stat().st_mtime < started or not md.exists():
        return
    doc = json.loads(js.read_text())
    lines = accuracy_tables(doc["rows"])
    js.write_text(json.dumps(doc, indent=2))
    with md.open("a") as fh:
        fh.write("\n" + "\n".join(lines) + "\n")
    print("\n".join(line for line in lines if line.startswith("| ")))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--make-inputs"]:
        make_inputs(sys.argv[2])
        sys.exit()
    if "--child" in sys.argv:
        child_case = sys.argv[sys.argv.index("--child") + 1]
        if child_case in OPTIONAL:  # imported before the clock starts, as cubepipe is
            importlib.import_module(OPTIONAL[child_case])
        main(NAME, CASES, baseline=BASELINE, sizes=RUN_SIZES, quick_size=QUICK_SIZE)
        sys.exit()
    started = time.time()
    problems = _import_problems()
    cases = {k: f for k, f in CASES.items() if OPTIONAL.get(k) not in problems}
    for module, why in problems.items():
        print(f"skipping the cases that need {module}: {why}", flush=True)
    main(
        NAME,
        cases,
        baseline=BASELINE,
        sizes=RUN_SIZES,
        quick_size=QUICK_SIZE,
        prepare=prepare,
        notes=notes(problems),
        summary=goals,
        floor=FLOORS,
    )
    _post(started)
