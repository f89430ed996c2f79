"""zarr v3 sharding: many chunks per file, written one shard per task, read by plain
zarr/xarray (and tensorstore when installed); completion, damage and resume per shard."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import pytest
import xarray as xr
import zarr

from cubepipe.storage import InputError, open_cube, store_state, write_cube
from cubepipe.storage.errors import InvalidStoreError
from cubepipe.storage.layout import parse_shards, shard_shape


def _frames(n: int = 40, seed: int = 0) -> xr.Dataset:
    rng = np.random.default_rng(seed)
    data = rng.normal(-1, 3, size=(n, 3, 64, 80)).astype(np.float32)
    data[5, :, 10:20, 10:20] = np.nan
    return xr.Dataset(
        {"cube": (("frame", "band", "y", "x"), da.from_array(data, chunks=(1, 3, 64, 80)))}
    )


def _files(path: Path) -> int:
    return sum(len(f) for _, _, f in os.walk(path))


def test_shard_shape_rounds_to_whole_chunks_and_refuses_what_it_cannot_do() -> None:
    sizes = {"frame": 1000, "band": 3, "y": 1000, "x": 1000}
    chunks = {"frame": 1, "band": 3, "y": 512, "x": 512}
    assert shard_shape(sizes, chunks, 4, {"y": 1500}) == {**chunks, "y": 1024}  # 2 chunks
    assert shard_shape(sizes, chunks, 4, {"y": 5000})["y"] == 1024  # at most the dim
    assert shard_shape(sizes, chunks, 4, None) is None  # 4000 chunks: under the default's
    assert shard_shape(sizes, chunks, 4, "none") is None
    assert shard_shape(sizes, chunks, 4, {}) is None
    many = {**sizes, "frame": 1024}  # 4096 chunks: the default shards as auto does
    assert shard_shape(many, chunks, 4, None) == shard_shape(many, chunks, 4, "auto")
    cube = {"band": 3, "y": 100_000, "x": 100_000}  # 38k chunks, but no image/frame dim
    assert shard_shape(cube, {"band": 3, "y": 512, "x": 512}, 4, None) is None
    assert shard_shape(sizes, chunks, 4, {"y": 100}) is None  # one chunk a shard
    auto = shard_shape(sizes, chunks, 4, "auto")
    assert auto is not None and auto["frame"] == 256 * 2**20 // (3 * 512 * 512 * 4)
    assert shard_shape({"band": 3, "y": 9, "x": 9}, {"band": 3, "y": 9, "x": 9}, 4, "auto") is None
    with pytest.raises(InputError, match="no dim 'z'"):
        shard_shape(sizes, chunks, 4, {"z": 2})
    with pytest.raises(InputError, match=r"holds \d+ MiB; a shard is encoded in memory whole"):
        shard_shape(sizes, chunks, 4, {"frame": 1000})
    assert parse_shards("none") == "none" and parse_shards(None) is None
    assert parse_shards("auto") == "auto" and parse_shards("y=4096,x=4096") == {
        "y": 4096,
        "x": 4096,
    }
    with pytest.raises(InputError, match="--shards"):
        parse_shards("y=big")


def test_a_sharded_store_holds_far_fewer_files_and_reads_everywhere(tmp_path: Path) -> None:
    ds = _frames()
    sharded = write_cube(ds, tmp_path / "s.zarr", shards={"frame": 16})
    plain = write_cube(ds, tmp_path / "p.zarr")
    assert _files(plain) - _files(sharded) == 40 - 3  # 40 chunk files -> 3 shard files
    meta = json.loads((sharded / "cube" / "zarr.json").read_text())
    assert [c["name"] for c in meta["codecs"]] == ["sharding_indexed"]
    ref = ds["cube"].values
    np.testing.assert_array_equal(open_cube(sharded)["cube"].values, ref)
    np.testing.assert_array_equal(xr.open_zarr(str(sharded))["cube"].values, ref)
    np.testing.assert_array_equal(zarr.open_array(str(sharded / "cube"))[:], ref)
    assert zarr.open_array(str(sharded / "cube")).shards == (16, 3, 64, 80)


def test_tensorstore_reads_a_sharded_store(tmp_path: Path) -> None:
    ts = pytest.importorskip("tensorstore")
    ds = _frames(20)
    path = write_cube(ds, tmp_path / "s.zarr", shards="auto")
    arr = ts.open(
        {"driver": "zarr3", "kvstore": {"driver": "file", "path": str(path / "cube")}}
    ).result()
    np.testing.assert_array_equal(arr.read().result(), ds["cube"].values)


def test_a_missing_shard_in_a_complete_store_is_an_error(tmp_path: Path) -> None:
    path = write_cube(_frames(), tmp_path / "s.zarr", shards={"frame": 16})
    (path / "cube" / "c" / "1" / "0" / "0" / "0").unlink()
    with pytest.raises(InvalidStoreError, match=r"chunk \(1, 0, 0, 0\) of variable 'cube'"):
        open_cube(path)


class _Boom(RuntimeError):
    pass


def _die_on_last(block: np.ndarray, block_info: dict | None = None) -> np.ndarray:
    info = block_info[0]
    if info["chunk-location"][0] == info["num-chunks"][0] - 1:
        time.sleep(0.5)
        raise _Boom("simulated crash in the last shard")
    return block


def test_resume_rewrites_only_the_missing_shards(tmp_path: Path) -> None:
    ds = _frames()
    data = ds["cube"].data.rechunk((16, 3, 64, 80))
    dying = ds.assign(cube=(ds["cube"].dims, data.map_blocks(_die_on_last, dtype=data.dtype)))
    path = tmp_path / "s.zarr"
    with pytest.raises(_Boom), dask.config.set(scheduler="threads", num_workers=2):
        write_cube(dying, path, op="x", shards={"frame": 16})
    assert store_state(path) == "incomplete"
    computed: list[int] = []

    def counting(block: np.ndarray, block_info: dict | None = None) -> np.ndarray:
        computed.append(block_info[0]["chunk-location"][0])
        return block

    again = ds.assign(cube=(ds["cube"].dims, data.map_blocks(counting, dtype=data.dtype)))
    with dask.config.set(scheduler="synchronous"):
        write_cube(again, path, op="x", shards={"frame": 16}, resume=True)
    assert computed == [2]  # shards 0 and 1 were on disk, whole
    np.testing.assert_array_equal(open_cube(path)["cube"].values, ds["cube"].values)
    # resuming with other shards would index other blocks: refused
    other = tmp_path / "o.zarr"
    with pytest.raises(_Boom), dask.config.set(scheduler="threads", num_workers=2):
        write_cube(dying, other, op="x", shards={"frame": 16})
    with pytest.raises(InputError, match=r"written in shards of \(16, 3, 64, 80\)"):
        write_cube(ds, other, op="x", shards={"frame": 8}, resume=True)


def test_the_cli_writes_shards(cli, tmp_path: Path) -> None:
    frames = np.random.default_rng(1).normal(size=(24, 3, 32, 32)).astype(np.float32)
    for i, f in enumerate(frames):
        np.save(tmp_path / f"f{i:02d}.npy", f)
    res = cli("-q", "ingest", str(tmp_path / "f*.npy"), "-o", "s.zarr", "--shards", "auto",
              cwd=tmp_path)  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert zarr.open_array(str(tmp_path / "s.zarr" / "cube")).shards == (24, 3, 32, 32)
    res = cli("-q", "standardize", "s.zarr", "-o", "z.zarr", "--shards", "image=8", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    z = open_cube(tmp_path / "z.zarr")["cube"].values.astype(np.float64)
    ref = frames.astype(np.float64)
    mean = ref.mean(axis=(0, 2, 3), keepdims=True)
    std = ref.std(axis=(0, 2, 3), keepdims=True)
    np.testing.assert_allclose(z, (ref - mean) / std, rtol=1e-5, atol=1e-5)
    res = cli("standardize", "s.zarr", "-o", "y.zarr", "--shards", "y=lots", cwd=tmp_path)
    assert res.returncode == 2 and "--shards" in res.stderr
    assert store_state(tmp_path / "y.zarr") == "missing"


def test_a_store_of_many_small_frames_is_sharded_by_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Frames of one chunk each, more than the default's threshold (lowered here from 4096
    to 50, so the test writes 80 files, not 5000; the threshold itself is tested above):
    a single shard file by default, a file per frame with ``--shards none``; both read back
    exactly by cubepipe and plain xarray."""
    import cubepipe.storage.layout as layout  # noqa: PLC0415

    monkeypatch.setattr(layout, "AUTO_SHARD_MIN_CHUNKS", 50)
    rng = np.random.default_rng(4)
    data = rng.normal(-2, 1, size=(80, 1, 8, 8)).astype(np.float32)
    ds = xr.Dataset(
        {"cube": (("frame", "band", "y", "x"), da.from_array(data, chunks=(40, 1, 8, 8)))}
    )
    default = write_cube(ds, tmp_path / "d.zarr", chunks={"frame": 1})
    plain = write_cube(ds, tmp_path / "p.zarr", chunks={"frame": 1}, shards="none")
    assert _files(plain / "cube") == 80 + 1  # a file per chunk, and zarr.json
    assert _files(default / "cube") == 1 + 1  # one shard
    for store in (default, plain):
        np.testing.assert_array_equal(open_cube(store)["cube"].values, data)
        np.testing.assert_array_equal(xr.open_zarr(str(store))["cube"].values, data)
