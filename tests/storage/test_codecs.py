"""The store's codec chain (issue 19): ``bytes -> blosc(lz4, shuffle) -> crc32c`` by
default, ``bytes -> zstd(checksum)`` in every older store. Whichever a store holds, a chunk
cut short, with a flipped byte or empty is detected by every reader (cubepipe's direct
path, zarr-python, tensorstore) and rewritten by ``--resume``; old stores keep working."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import xarray as xr
import zarr
from numcodecs import Blosc
from zarr.codecs import ZstdCodec

from cubepipe.storage import InvalidStoreError, open_cube, write_cube
from cubepipe.storage import store as store_mod
from cubepipe.storage.chunkio import _crc32c, direct_layout

from ..conftest import signed_float_block

CHUNKS = (2, 8, 8)
OLD = [ZstdCodec(level=1, checksum=True)]  # what cubepipe wrote before issue 19


def _ds(data: np.ndarray) -> xr.Dataset:
    return xr.Dataset({"cube": (("band", "y", "x"), da.from_array(data, chunks=CHUNKS))})


def _write(path: Path, data: np.ndarray, chain: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    if chain == "old":
        with monkeypatch.context() as m:
            m.setattr(store_mod, "default_compressors", lambda: list(OLD))
            return write_cube(_ds(data), path, op="t", chunks={"y": 8, "x": 8})
    return write_cube(_ds(data), path, op="t", chunks={"y": 8, "x": 8})


def _codec_names(path: Path) -> list[str]:
    return [c["name"] for c in json.loads((path / "cube" / "zarr.json").read_text())["codecs"]]


def _damage(chunk: Path, how: str) -> None:
    raw = bytearray(chunk.read_bytes())
    if how == "truncated":
        chunk.write_bytes(bytes(raw[: len(raw) // 2]))
    elif how == "flipped":
        raw[len(raw) // 2] ^= 0x10
        chunk.write_bytes(bytes(raw))
    elif how == "checksum":  # the data intact: only a reader that checks the sum sees it
        raw[-1] ^= 0x01
        chunk.write_bytes(bytes(raw))
    else:
        chunk.write_bytes(b"")


DAMAGE = ["truncated", "flipped", "checksum", "empty"]


@pytest.fixture
def data() -> np.ndarray:
    out = signed_float_block((2, 16, 24), seed=7).astype(np.float32)
    out[1, 2:5, 3:9] = np.nan
    return out


@pytest.mark.parametrize("chain", ["default", "old"])
def test_the_chain_is_what_was_chosen_and_old_stores_read_directly(
    tmp_path: Path, data: np.ndarray, chain: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _write(tmp_path / "s.zarr", data, chain, monkeypatch)
    want = ["bytes", "blosc", "crc32c"] if chain == "default" else ["bytes", "zstd"]
    assert _codec_names(path) == want
    assert direct_layout(path / "cube") is not None
    np.testing.assert_array_equal(open_cube(path)["cube"].values, data)
    np.testing.assert_array_equal(zarr.open_array(str(path / "cube"), mode="r")[...], data)


@pytest.mark.parametrize("how", DAMAGE)
@pytest.mark.parametrize("chain", ["default", "old"])
def test_every_reader_detects_a_damaged_chunk(
    tmp_path: Path, data: np.ndarray, chain: str, how: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _write(tmp_path / "s.zarr", data, chain, monkeypatch)
    chunk = path / "cube" / "c" / "0" / "1" / "2"
    _damage(chunk, how)
    with pytest.raises(InvalidStoreError, match=str(chunk)):  # direct path, one line
        open_cube(path)["cube"].compute()
    with pytest.raises((ValueError, RuntimeError)):  # zarr-python's own check
        zarr.open_array(str(path / "cube"), mode="r")[...]
    monkeypatch.setenv("CUBEPIPE_DIRECT_IO", "0")
    with pytest.raises(InvalidStoreError):  # through zarr-python in cubepipe
        open_cube(path)["cube"].compute()
    ts = pytest.importorskip("tensorstore")
    spec = {"driver": "zarr3", "kvstore": {"driver": "file", "path": str(path / "cube")}}
    with pytest.raises(ValueError, match="DATA_LOSS|FAILED_PRECONDITION"):
        ts.open(spec).result().read().result()


@pytest.mark.parametrize("how", DAMAGE)
@pytest.mark.parametrize("chain", ["default", "old"])
def test_resume_rewrites_a_damaged_chunk(
    tmp_path: Path, data: np.ndarray, chain: str, how: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _write(tmp_path / "s.zarr", data, chain, monkeypatch)
    g = zarr.open_group(str(path), mode="r+")  # as if killed before the marker
    g.attrs["cubepipe"] = {**dict(g.attrs["cubepipe"]), "complete": False}
    chunk = path / "cube" / "c" / "0" / "1" / "0"
    whole = chunk.read_bytes()
    _damage(chunk, how)
    write_cube(_ds(data), path, op="t", chunks={"y": 8, "x": 8}, resume=True)
    assert chunk.read_bytes() == whole  # rewritten with the store's own chain
    assert _codec_names(path) == (
        ["bytes", "blosc", "crc32c"] if chain == "default" else ["bytes", "zstd"]
    )
    np.testing.assert_array_equal(open_cube(path)["cube"].values, data)


def test_a_blosc_header_stating_another_size_is_refused(tmp_path: Path, data: np.ndarray) -> None:
    """A chunk whose CRC matches but whose blosc buffer holds fewer bytes than the chunk
    (hostile, or another writer's bug) is an error, never a partly filled chunk."""
    path = write_cube(_ds(data), tmp_path / "s.zarr", op="t", chunks={"y": 8, "x": 8})
    chunk = path / "cube" / "c" / "0" / "0" / "0"
    body = Blosc(cname="lz4", clevel=5, shuffle=Blosc.SHUFFLE).encode(data[:, :4, :8].copy())
    chunk.write_bytes(body + _crc32c(body))
    with pytest.raises(InvalidStoreError, match="blosc header states"):
        open_cube(path)["cube"].compute()


@pytest.mark.parametrize(
    "change",
    [
        {"cname": "snappy"},
        {"shuffle": "auto"},
        {"typesize": None},  # key dropped below
    ],
    ids=["unknown-cname", "unknown-shuffle", "missing-key"],
)
def test_unusual_blosc_metadata_falls_back_to_zarr(
    tmp_path: Path, data: np.ndarray, change: dict
) -> None:
    path = write_cube(_ds(data), tmp_path / "s.zarr", op="t", chunks={"y": 8, "x": 8})
    meta_path = path / "cube" / "zarr.json"
    meta = json.loads(meta_path.read_text())
    cfg = meta["codecs"][1]["configuration"]
    cfg.update(change)
    meta["codecs"][1]["configuration"] = {k: v for k, v in cfg.items() if v is not None}
    meta_path.write_text(json.dumps(meta))
    assert direct_layout(path / "cube") is None


@pytest.mark.parametrize("dtype", ["uint8", "int16", "float16", "float64", "bool"])
def test_other_dtypes_are_byte_identical_to_zarr(tmp_path: Path, dtype: str) -> None:
    rng = np.random.default_rng(3)
    data = rng.normal(0, 40, (3, 20, 20)) if dtype != "bool" else rng.random((3, 20, 20)) > 0.5
    data = data.astype(dtype)
    kw = {"shape": data.shape, "chunks": (3, 8, 8), "dtype": dtype}
    kw["compressors"] = store_mod.default_compressors()
    zarr.create_array(str(tmp_path / "z"), **kw)[...] = data
    zarr.create_array(str(tmp_path / "d"), **kw)
    layout = direct_layout(tmp_path / "d")
    assert layout is not None and layout.typesize == np.dtype(dtype).itemsize
    for idx in np.ndindex(*layout.grid):
        sl = tuple(slice(i * c, (i + 1) * c) for i, c in zip(idx, layout.chunks, strict=True))
        layout.write_chunk(idx, data[sl])
        key = Path("c", *map(str, idx))
        assert (tmp_path / "d" / key).read_bytes() == (tmp_path / "z" / key).read_bytes()
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "d"), mode="r")[...], data)


def test_concurrent_direct_writes_and_reads(tmp_path: Path) -> None:
    """Blosc from worker threads (its context API): 4 threads write and read chunks at
    once; zarr-python reads back exactly the numpy reference."""
    data = np.random.default_rng(5).normal(size=(3, 64, 64)).astype(np.float32)
    kw = {"shape": data.shape, "chunks": (3, 8, 8), "dtype": "f4"}
    zarr.create_array(
        str(tmp_path / "a"), compressors=store_mod.default_compressors(), fill_value=0.0, **kw
    )
    layout = direct_layout(tmp_path / "a")
    assert layout is not None
    idxs = list(np.ndindex(*layout.grid))

    def sl(idx: tuple[int, ...]) -> tuple[slice, ...]:
        return tuple(slice(i * c, (i + 1) * c) for i, c in zip(idx, layout.chunks, strict=True))

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda i: layout.write_chunk(i, data[sl(i)]), idxs))
        got = list(pool.map(layout.read_chunk, idxs))
    for idx, block in zip(idxs, got, strict=True):
        np.testing.assert_array_equal(block, data[sl(idx)])
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "a"), mode="r")[...], data)


def test_multi_block_chunks_are_byte_identical_from_the_main_thread(tmp_path: Path) -> None:
    """Blosc's global context (the main thread's, with internal threads) places blocks in
    the order they finish: chunkio must write what zarr-python writes (one thread) anyway,
    so a store's bytes do not depend on the scheduler."""
    data = np.random.default_rng(9).normal(size=(15, 256, 256)).astype(np.float32)  # 3.9 MB
    kw = {"shape": data.shape, "chunks": data.shape, "dtype": "f4"}
    kw["compressors"] = store_mod.default_compressors()
    zarr.create_array(str(tmp_path / "z"), **kw)[...] = data
    zarr.create_array(str(tmp_path / "d"), **kw)
    layout = direct_layout(tmp_path / "d")
    assert layout is not None
    want = (tmp_path / "z" / "c" / "0" / "0" / "0").read_bytes()
    assert len(want) > 16 and int.from_bytes(want[8:12], "little") < data.nbytes  # >1 block
    for _ in range(5):  # thread timing varies: several tries
        layout.write_chunk((0, 0, 0), data)
        assert (tmp_path / "d" / "c" / "0" / "0" / "0").read_bytes() == want


def test_an_old_store_takes_new_variables_and_standardizes(
    tmp_path: Path, data: np.ndarray, monkeypatch: pytest.MonkeyPatch, cli
) -> None:
    """``stats`` adds blosc variables to a zstd store (one store, two chains); standardize
    reads it and writes a new one; every value is what numpy computes (float64)."""
    data = np.random.default_rng(2).normal(3, 2, size=data.shape).astype(np.float32)
    data[1, 2:5, 3:9] = np.nan
    old = _write(tmp_path / "old.zarr", data, "old", monkeypatch)
    assert cli("-q", "stats", str(old)).returncode == 0
    names = {
        p.parent.name: [c["name"] for c in json.loads(p.read_text())["codecs"]]
        for p in old.glob("*/zarr.json")
    }
    assert names["cube"] == ["bytes", "zstd"] and names["stats_mean"][-1] == "crc32c"
    ds = open_cube(old)
    np.testing.assert_array_equal(ds["cube"].values, data)
    want = np.nanmean(data.astype(np.float64), axis=(1, 2))
    np.testing.assert_allclose(ds["stats_mean"].values, want, rtol=1e-6)
    out = tmp_path / "z.zarr"
    assert cli("-q", "standardize", str(old), "-o", str(out)).returncode == 0
    assert _codec_names(out) == ["bytes", "blosc", "crc32c"]
    mean = np.nanmean(data.astype(np.float64), axis=(1, 2), keepdims=True)
    std = np.nanstd(data.astype(np.float64), axis=(1, 2), keepdims=True)
    np.testing.assert_allclose(
        open_cube(out)["cube"].values, (data - mean) / std, rtol=1e-4, atol=1e-5
    )
