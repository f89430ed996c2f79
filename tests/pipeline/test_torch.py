"""cubepipe.pipeline.torch: samples against NumPy references read with plain xarray, the
store's saved statistics applied as `cubepipe standardize` applies them, patches that tile
the cube, DataLoader workers (fork and spawn) after the parent read the store, and the
stores and options it refuses."""

from __future__ import annotations

import importlib
import math
import pickle
import subprocess
import sys
from pathlib import Path

import dask
import dask.array as da
import dask.threaded
import numpy as np
import pytest
import xarray as xr

import cubepipe.pipeline
from cubepipe.storage import IncompleteStoreError, InputError, MissingDependencyError, write_cube

from ..conftest import cube_chunk_reads, run_cli

torch = pytest.importorskip("torch")

from cubepipe.pipeline.torch import CubeDataset  # noqa: E402  (after the importorskip)

TIMEOUT = 60  # s a DataLoader waits for a batch: a hung worker fails the test


def _data(shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Signed floats with per-band offsets and spreads far apart, and a NaN block."""
    rng = np.random.default_rng(seed)
    bands = shape[-3]
    spread = np.geomspace(0.01, 300.0, bands)[:, None, None]
    offset = np.linspace(-4000.0, 1000.0, bands)[:, None, None]
    a = (rng.normal(size=shape) * spread + offset).astype(np.float32)
    a[..., 3:7, 5:11] = np.nan
    return a


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``images``: (image, band, y, x) with saved stats and its `cubepipe standardize`
    output ``images_z``; ``scene``: (band, y, x) of 50 x 70 with a ``mask`` and saved
    stats; ``bare``: the same scene without stats."""
    root = tmp_path_factory.mktemp("torch")
    images = _data((3, 4, 20, 24), seed=1)
    ds = xr.Dataset({"cube": (("image", "band", "y", "x"), images)})
    write_cube(ds, root / "images.zarr", op="test", chunks={"y": 10, "x": 12})
    scene = _data((3, 50, 70), seed=2)
    mask = np.ones((50, 70), dtype=bool)
    mask[40:45, :] = False
    ds = xr.Dataset({"cube": (("band", "y", "x"), scene), "mask": (("y", "x"), mask)})
    write_cube(ds, root / "scene.zarr", op="test", chunks={"y": 16, "x": 32})
    write_cube(ds, root / "bare.zarr", op="test", chunks={"y": 16, "x": 32})
    for name in ("images", "scene"):
        proc = run_cli("stats", str(root / f"{name}.zarr"))
        assert proc.returncode == 0, proc.stderr
    z = run_cli("standardize", str(root / "images.zarr"), "-o", str(root / "images_z.zarr"))
    assert z.returncode == 0, z.stderr
    return {k: root / f"{k}.zarr" for k in ("images", "images_z", "scene", "bare")}


def _reference(path: Path, method: str | None) -> tuple[np.ndarray, np.ndarray | None]:
    """The cube (and mask) read with plain xarray, standardized in NumPy with the float64
    statistics saved in the store, cast to float32."""
    ds = xr.open_zarr(path)
    x = ds["cube"].values
    mask = ds["mask"].values if "mask" in ds else None
    if method is None:
        return x.astype(np.float32), mask
    st = {k: ds[f"stats_{k}"].values.astype(np.float64) for k in ("mean", "std", "min", "max")}
    center, scale = (
        (st["mean"], st["std"]) if method == "zscore" else (st["min"], st["max"] - st["min"])
    )
    shape = (-1, 1, 1)
    z = (x.astype(np.float64) - center.reshape(shape)) / scale.reshape(shape)
    return z.astype(np.float32), mask


@pytest.mark.parametrize("method", [None, "zscore", "minmax"])
def test_one_sample_per_image_equals_numpy(stores: dict[str, Path], method: str | None) -> None:
    ref, _ = _reference(stores["images"], method)
    ds = CubeDataset(stores["images"], standardize=method)
    assert len(ds) == 3 and ds.channels == 4
    for i in range(3):
        t = ds[i]
        assert isinstance(t, torch.Tensor) and t.dtype == torch.float32
        assert tuple(t.shape) == (4, 20, 24)
        assert np.array_equal(t.numpy(), ref[i], equal_nan=True)  # bit for bit, NaN kept
    assert np.array_equal(ds[-1].numpy(), ref[2], equal_nan=True)
    with pytest.raises(IndexError):
        ds[3]


def test_samples_equal_the_cubepipe_standardize_output(stores: dict[str, Path]) -> None:
    written = xr.open_zarr(stores["images_z"])["cube"].values
    ds = CubeDataset(stores["images"], standardize="zscore")
    got = np.stack([ds[i].numpy() for i in range(len(ds))])
    assert np.array_equal(got, written, equal_nan=True)


def test_patches_with_stride_patch_cover_the_cube_once(stores: dict[str, Path]) -> None:
    ref, mask = _reference(stores["scene"], "zscore")
    assert mask is not None
    ref = np.where(mask, ref, np.nan)  # the mask's invalid pixels are NaN in a sample
    ds = CubeDataset(stores["scene"], patch=16, standardize="zscore", mask_channel=True)
    assert len(ds) == math.ceil(50 / 16) * math.ceil(70 / 16)
    seen = np.zeros((50, 70), dtype=int)
    for i in range(len(ds)):
        t = ds[i].numpy()
        assert t.shape == (4, 16, 16) and t.dtype == np.float32
        w = ds.window(i)
        assert w.item is None
        seen[w.y, w.x] += 1
        h, wd = w.y.stop - w.y.start, w.x.stop - w.x.start
        part = ref[:, w.y, w.x]
        assert np.array_equal(t[:3, :h, :wd], part, equal_nan=True)
        assert np.array_equal(t[3, :h, :wd], np.isfinite(part).all(axis=0))
        # Past the edge: invalid (NaN, mask channel 0).
        assert np.isnan(t[:3, h:, :]).all() and np.isnan(t[:3, :, wd:]).all()
        assert not t[3, h:, :].any() and not t[3, :, wd:].any()
    assert (seen == 1).all()


def test_overlapping_and_dropped_edge_windows(stores: dict[str, Path]) -> None:
    pad = CubeDataset(stores["scene"], patch=(16, 16), stride=10)
    # Starts 0, 10, .., until the last row/column is inside a window.
    assert len(pad) == 5 * 7
    assert pad.window(len(pad) - 1).y == slice(40, 50)
    drop = CubeDataset(stores["scene"], patch=(16, 16), stride=(10, 10), edge="drop")
    assert len(drop) == (34 // 10 + 1) * (54 // 10 + 1)
    for i in range(len(drop)):
        w = drop.window(i)
        assert w.y.stop - w.y.start == 16 and w.x.stop - w.x.start == 16
    images = CubeDataset(stores["images"], patch=(10, 12))
    assert len(images) == 3 * 2 * 2
    assert images.window(5) == (1, slice(0, 10), slice(12, 24))


def test_a_stride_larger_than_patch_never_starts_outside(
    stores: dict[str, Path],
) -> None:
    ds = CubeDataset(stores["scene"], patch=(1, 70), stride=(8, 1))
    starts = sorted(ds.window(i).y.start for i in range(len(ds)))
    assert starts == list(range(0, 50, 8))  # 0 .. 48; none at 56, outside the 50 rows


def test_patches_are_numbered_chunk_by_chunk_and_each_chunk_decoded_once(
    stores: dict[str, Path], direct_reads
) -> None:
    ds = CubeDataset(stores["scene"], patch=8)  # chunks of 16 x 32: 2 x 4 patches each
    chunk_of = [(ds.window(i).y.start // 16, ds.window(i).x.start // 32) for i in range(len(ds))]
    assert chunk_of == sorted(chunk_of)  # consecutive samples share a chunk
    for i in range(len(ds)):
        ds[i]
    reads = cube_chunk_reads(direct_reads)
    assert len(reads) == 4 * 3 and set(reads.values()) == {1}
    direct_reads.clear()
    uncached = CubeDataset(stores["scene"], patch=8, cache_bytes=0)
    for i in range(len(uncached)):
        uncached[i]
    assert sum(cube_chunk_reads(direct_reads).values()) == len(uncached)


def test_fill_and_mask_channel(stores: dict[str, Path]) -> None:
    ref, mask = _reference(stores["scene"], None)
    assert mask is not None
    t = CubeDataset(stores["scene"], fill=-1.5, mask_channel=True)[0].numpy()
    valid = np.isfinite(ref) & mask
    assert t.shape == (4, 50, 70)
    assert np.array_equal(t[:3], np.where(valid, ref, np.float32(-1.5)))
    assert np.array_equal(t[3], valid.all(axis=0).astype(np.float32))
    assert not np.isnan(t).any()


@pytest.mark.parametrize("mask_dims", [("image", "y", "x"), ("y", "x")])
def test_a_mask_over_images_or_shared_by_them(tmp_path: Path, mask_dims: tuple[str, ...]) -> None:
    data = _data((2, 3, 12, 10), seed=5)
    mask = np.random.default_rng(6).random((2, 12, 10)) > 0.3
    mask = mask if len(mask_dims) == 3 else mask[0]
    ds = xr.Dataset({"cube": (("image", "band", "y", "x"), data), "mask": (mask_dims, mask)})
    path = write_cube(ds, tmp_path / "m.zarr", op="test", chunks={"y": 6, "x": 5})
    expected = np.where(mask if mask.ndim == 2 else mask[:, None], data, np.nan)
    dataset = CubeDataset(path, patch=(4, 4), mask_channel=True)
    for i in range(len(dataset)):
        t, w = dataset[i].numpy(), dataset.window(i)
        part = expected[w.item, :, w.y, w.x]
        h, wd = part.shape[1:]
        assert np.array_equal(t[:3, :h, :wd], part, equal_nan=True)
        assert np.array_equal(t[3, :h, :wd], np.isfinite(part).all(axis=0))


@pytest.mark.parametrize("start", ["fork", "spawn"])
def test_dataloader_workers_after_the_parent_read_the_store(
    stores: dict[str, Path], start: str
) -> None:
    # The parent reads the stores with dask's thread pool: the state that hangs forked
    # workers that compute with it.
    written = xr.open_zarr(stores["images_z"])["cube"].values
    assert float(xr.open_zarr(stores["images"])["cube"].sum().compute(scheduler="threads")) != 0
    assert dask.threaded.default_pool is not None
    ds = CubeDataset(stores["images"], standardize="zscore")
    ds[0]  # the parent has its own open store too
    assert pickle.loads(pickle.dumps(ds))._ds is None  # what a spawned worker gets
    loader = torch.utils.data.DataLoader(
        ds, batch_size=2, num_workers=2, multiprocessing_context=start, timeout=TIMEOUT
    )
    got = torch.cat(list(loader)).numpy()
    assert np.array_equal(got, written, equal_nan=True)


def _incomplete(path: Path) -> None:
    def die(block: np.ndarray, block_info: dict | None = None) -> np.ndarray:
        if block_info is not None and block_info[0]["chunk-location"] == (1, 1, 1):
            raise RuntimeError("killed mid-write")
        return block

    a = da.from_array(_data((4, 16, 16), seed=3), chunks=(2, 8, 8))
    ds = xr.Dataset({"cube": (("band", "y", "x"), a.map_blocks(die, dtype=a.dtype))})
    with pytest.raises(RuntimeError, match="killed"), dask.config.set(scheduler="sync"):
        write_cube(ds, path, op="test", chunks={"y": 8, "x": 8})


def test_an_incomplete_store_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "crashed.zarr"
    _incomplete(path)
    with pytest.raises(IncompleteStoreError, match="--resume"):
        CubeDataset(path)
    assert tuple(CubeDataset(path, allow_incomplete=True)[0].shape) == (4, 16, 16)


def test_refusals_are_one_clear_error(stores: dict[str, Path]) -> None:
    with pytest.raises(InputError, match=r"needs the statistics that `cubepipe stats .*bare"):
        CubeDataset(stores["bare"], standardize="zscore")
    CubeDataset(stores["bare"])  # as stored: no statistics needed
    with pytest.raises(InputError, match=r"patch \(64, 16\) is larger than the cube's"):
        CubeDataset(stores["scene"], patch=(64, 16))
    with pytest.raises(InputError, match="already standardized"):
        CubeDataset(stores["images_z"], standardize="zscore")
    with pytest.raises(InputError, match="unknown standardize"):
        CubeDataset(stores["scene"], standardize="z")
    with pytest.raises(InputError, match="patch must be"):
        CubeDataset(stores["scene"], patch=(0, 4))
    with pytest.raises(InputError, match="stats are used only to standardize"):
        CubeDataset(stores["bare"], stats=stores["scene"])


def test_statistics_from_another_store_or_json(stores: dict[str, Path], tmp_path: Path) -> None:
    ref, mask = _reference(stores["scene"], "minmax")
    assert mask is not None
    expected = np.where(mask, ref, np.nan)
    proc = run_cli("stats", str(stores["scene"]), "--json", "--no-save")
    assert proc.returncode == 0, proc.stderr
    (tmp_path / "stats.json").write_text(proc.stdout)
    for source in (stores["scene"], tmp_path / "stats.json"):
        t = CubeDataset(stores["bare"], standardize="minmax", stats=source)[0].numpy()
        assert np.array_equal(t, expected, equal_nan=True)


def test_without_torch_one_error_naming_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)
    monkeypatch.delitem(sys.modules, "cubepipe.pipeline.torch")
    with pytest.raises(MissingDependencyError, match=r"cubepipe\[torch\]"):
        importlib.import_module("cubepipe.pipeline.torch")
    with pytest.raises(MissingDependencyError):
        cubepipe.pipeline.CubeDataset  # noqa: B018


def test_importing_the_pipeline_package_does_not_import_torch() -> None:
    # A new interpreter where torch cannot be imported: the package imports all the same,
    # and only CubeDataset asks for the extra.
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import cubepipe.pipeline as p\n"
        "from cubepipe.storage import MissingDependencyError\n"
        "try:\n    p.CubeDataset\n"
        "except MissingDependencyError as e:\n    assert 'cubepipe[torch]' in str(e), e\n"
        "else:\n    raise SystemExit('CubeDataset imported without torch')\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
