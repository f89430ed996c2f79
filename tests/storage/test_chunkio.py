"""Direct chunk I/O (storage/chunkio.py) reads and writes the very bytes zarr-python does."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import xarray as xr
import zarr
from zarr.codecs import BloscCodec, Crc32cCodec, ZstdCodec

from cubepipe.storage import InvalidStoreError, open_cube, write_cube
from cubepipe.storage.chunkio import ChunkLayout, DirectChunkArray, direct_layout
from cubepipe.storage.store import default_compressors

from ..conftest import signed_float_block

SHAPE, CHUNKS = (3, 37, 50), (3, 16, 16)  # edge chunks along y and x
#: The chains chunkio reads and writes itself: today's default and every older store's.
CHAINS = {
    "default": default_compressors,
    "zstd-old": lambda: [ZstdCodec(level=1, checksum=True)],
    "zstd-crc32c": lambda: [ZstdCodec(level=3), Crc32cCodec()],
}


@pytest.fixture(params=list(CHAINS))
def chain(request: pytest.FixtureRequest) -> list:
    return CHAINS[request.param]()


def _zarr_array(path: Path, data: np.ndarray, **kw) -> zarr.Array:
    kw.setdefault("compressors", default_compressors())
    arr = zarr.create_array(
        str(path), shape=data.shape, chunks=CHUNKS, dtype=data.dtype, fill_value=np.nan, **kw
    )
    arr[...] = data
    return arr


def _data(seed: int = 0) -> np.ndarray:
    data = signed_float_block(SHAPE, seed=seed).astype(np.float32)
    data[1, 3:9, 40:47] = np.nan
    return data


def _chunk_of(data: np.ndarray, idx: tuple[int, ...]) -> np.ndarray:
    return data[tuple(slice(i * c, (i + 1) * c) for i, c in zip(idx, CHUNKS, strict=True))]


def test_reads_every_chunk_zarr_wrote(tmp_path: Path, chain: list) -> None:
    data = _data()
    _zarr_array(tmp_path / "a", data, compressors=chain)
    layout = direct_layout(tmp_path / "a")
    assert layout is not None and layout.chunks == CHUNKS
    assert layout.checksum or layout.crc32c  # damage is detectable
    for idx in np.ndindex(*layout.grid):
        np.testing.assert_array_equal(layout.read_chunk(idx), _chunk_of(data, idx))


@pytest.mark.parametrize(
    "key",
    [
        (slice(None),),
        (slice(1, 3), slice(5, 33), slice(7, 49)),  # straddles chunks, ends in edge ones
        (slice(None), slice(32, 37), slice(48, 50)),  # the corner edge chunk exactly
        (slice(0, 3, 2), slice(None, None, 3), slice(1, 40, 7)),  # steps
        (1, slice(2, 20), 4),  # integers
        (slice(0, 3), slice(10, 10), slice(None)),  # empty
    ],
)
def test_any_basic_slice_matches_numpy(tmp_path: Path, key: tuple) -> None:
    data = _data()
    _zarr_array(tmp_path / "a", data)
    arr = DirectChunkArray(direct_layout(tmp_path / "a"))
    np.testing.assert_array_equal(arr[key], data[key])


def test_zarr_reads_every_chunk_written_directly(tmp_path: Path, chain: list) -> None:
    data = _data(seed=3)
    _zarr_array(tmp_path / "a", np.zeros_like(data), compressors=chain)  # zero chunks
    layout = direct_layout(tmp_path / "a")
    for idx in np.ndindex(*layout.grid):
        layout.write_chunk(idx, _chunk_of(data, idx))
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "a"), mode="r")[...], data)
    assert not list((tmp_path / "a").rglob("*.partial"))


def test_written_chunk_file_is_byte_identical_to_zarrs(tmp_path: Path, chain: list) -> None:
    data = _data(seed=5)
    _zarr_array(tmp_path / "z", data, compressors=chain)
    _zarr_array(tmp_path / "d", np.zeros_like(data), compressors=chain)
    layout = direct_layout(tmp_path / "d")
    for idx in [(0, 0, 0), (0, 2, 3)]:  # an inner and the padded corner chunk
        layout.write_chunk(idx, _chunk_of(data, idx))
        key = Path("c", *map(str, idx))
        assert (tmp_path / "d" / key).read_bytes() == (tmp_path / "z" / key).read_bytes()


def test_missing_chunk_reads_as_fill_value_like_zarr(tmp_path: Path) -> None:
    arr = zarr.create_array(
        str(tmp_path / "a"), shape=SHAPE, chunks=CHUNKS, dtype="f4", fill_value=np.nan,
        compressors=default_compressors(),
    )  # fmt: skip
    arr[:, :16, :16] = 1.0
    direct = DirectChunkArray(direct_layout(tmp_path / "a"))[...]
    np.testing.assert_array_equal(direct, arr[...])
    assert np.isnan(direct[:, 16:, :]).all()


def test_damaged_chunk_is_a_clear_error_naming_the_file(tmp_path: Path, chain: list) -> None:
    _zarr_array(tmp_path / "a", _data(), compressors=chain)
    chunk = tmp_path / "a" / "c" / "0" / "1" / "1"
    raw = bytearray(chunk.read_bytes())
    chunk.write_bytes(bytes(raw[: len(raw) // 2]))  # cut short, as a kill would leave it
    with pytest.raises(InvalidStoreError, match=str(chunk)):
        direct_layout(tmp_path / "a").read_chunk((0, 1, 1))


def test_dot_separated_chunk_keys(tmp_path: Path) -> None:
    data = _data()
    _zarr_array(tmp_path / "a", data, chunk_key_encoding={"name": "default", "separator": "."})
    layout = direct_layout(tmp_path / "a")
    assert layout is not None and Path(layout.chunk_path((0, 1, 2))).name == "c.0.1.2"
    np.testing.assert_array_equal(DirectChunkArray(layout)[...], data)


@pytest.mark.parametrize(
    "kw",
    [
        {"compressors": [BloscCodec()]},  # no checksum: zarr-python's semantics
        {"compressors": [BloscCodec(), Crc32cCodec(), Crc32cCodec()]},
        {"compressors": [Crc32cCodec(), BloscCodec()]},
        {"compressors": None},
        {"compressors": [ZstdCodec(level=1)], "shards": (3, 32, 32)},
        {"compressors": [ZstdCodec(level=1)], "zarr_format": 2},
    ],
    ids=["blosc", "blosc-crc-crc", "crc-blosc", "uncompressed", "sharded", "zarr-v2"],
)
def test_other_layouts_fall_back_to_zarr(tmp_path: Path, kw: dict) -> None:
    data = _data()
    if kw.get("zarr_format") == 2:
        kw = {**kw, "compressors": None}
    _zarr_array(tmp_path / "a", data, **kw)
    assert direct_layout(tmp_path / "a") is None


def test_big_endian_chunks_fall_back_to_zarr(tmp_path: Path) -> None:
    from zarr.codecs import BytesCodec  # noqa: PLC0415

    _zarr_array(tmp_path / "a", _data(), serializer=BytesCodec(endian="big"))
    assert direct_layout(tmp_path / "a") is None


def _store(tmp_path: Path, data: np.ndarray) -> Path:
    ds = xr.Dataset(
        {
            "cube": (("band", "y", "x"), da.from_array(data, chunks=CHUNKS)),
            "mask": (("y", "x"), np.isfinite(data).all(axis=0)),
        },
        coords={"wavelength": ("band", np.linspace(400.0, 900.0, data.shape[0]))},
    )
    return write_cube(ds, tmp_path / "s.zarr", chunks={"y": CHUNKS[1], "x": CHUNKS[2]})


def test_open_cube_reads_cubepipe_stores_directly_with_zarrs_values(
    tmp_path: Path, direct_reads: Counter
) -> None:
    data = _data()
    path = _store(tmp_path, data)
    ds = open_cube(path)
    assert ds["cube"].chunks == xr.open_zarr(path)["cube"].chunks
    assert all(
        str(k[0]).startswith("cubepipe-read-cube")
        for k in ds["cube"].data.dask
        if isinstance(k, tuple)
    )
    plain = xr.open_zarr(path)
    for name in ("cube", "mask", "wavelength"):
        np.testing.assert_array_equal(ds[name].values, plain[name].values)
        assert ds[name].dtype == plain[name].dtype
    n_chunks = int(np.prod(direct_layout(path / "cube").grid))
    assert sum(v for k, v in direct_reads.items() if k.startswith("cube/")) == n_chunks
    assert any(k.startswith("mask/") for k in direct_reads)
    assert not list(path.rglob("*.partial"))


def test_open_cube_falls_back_for_encoded_variables(tmp_path: Path, direct_reads: Counter) -> None:
    from cubepipe.storage.encodings import encode  # noqa: PLC0415

    data = np.random.default_rng(1).normal(0, 2, SHAPE).astype(np.float32)
    ds = xr.Dataset({"cube": (("band", "y", "x"), da.from_array(data, chunks=CHUNKS))})
    path = write_cube(encode(ds, "int16-quantized"), tmp_path / "q.zarr", chunks={"y": 16, "x": 16})
    got = open_cube(path)
    assert got["cube"].dtype.kind == "f"  # xarray applied scale_factor/add_offset
    bound = float(got["cube"].attrs["max_abs_error"])
    np.testing.assert_allclose(got["cube"].values, data, rtol=0, atol=bound * 1.0001)
    assert not [k for k in direct_reads if k.startswith("cube/")]


def test_resume_removes_chunk_files_a_killed_writer_left(tmp_path: Path) -> None:
    data = _data()
    path = _store(tmp_path, data)
    leftover = path / "cube" / "c" / "0" / "0" / "0.123.partial"
    leftover.write_bytes(b"half a chunk")
    ds = open_cube(path)
    g = zarr.open_group(str(path), mode="r+")  # as if killed: incomplete, a .partial left
    meta = dict(g.attrs["cubepipe"])
    g.attrs["cubepipe"] = {**meta, "complete": False}
    write_cube(ds.load(), path, resume=True, chunks={"y": 16, "x": 16})
    assert not leftover.exists()
    np.testing.assert_array_equal(open_cube(path)["cube"].values, data)


def test_layout_is_picklable_for_distributed_workers(tmp_path: Path) -> None:
    import pickle  # noqa: PLC0415

    _zarr_array(tmp_path / "a", _data())
    layout = direct_layout(tmp_path / "a")
    again = pickle.loads(pickle.dumps(layout))
    assert isinstance(again, ChunkLayout) and repr(again) == repr(layout)  # NaN fill != itself
    np.testing.assert_array_equal(again.read_chunk((0, 1, 2)), layout.read_chunk((0, 1, 2)))


def test_kept_chunks_save_the_second_read_and_change_no_value(
    tmp_path: Path, direct_reads: Counter
) -> None:
    data = _data()
    path = _store(tmp_path, data)
    n_chunks = int(np.prod(direct_layout(path / "cube").grid))  # 12
    chunk_bytes = int(np.prod(CHUNKS)) * 4
    ds = open_cube(path, keep_bytes=5 * chunk_bytes)
    first = ds["cube"].max(dim=("y", "x")).compute()
    second = ds["cube"].compute()
    reads = sum(v for k, v in direct_reads.items() if k.startswith("cube/"))
    assert (
        n_chunks < reads <= 2 * n_chunks - 5
    )  # >= 5 chunks came from memory (edge ones are smaller)
    np.testing.assert_array_equal(second.values, data)
    np.testing.assert_array_equal(first.values, np.nanmax(data, axis=(1, 2)))


def test_kept_chunks_are_read_only_and_released_when_taken(tmp_path: Path) -> None:
    from cubepipe.storage.chunkio import KeptChunks  # noqa: PLC0415

    _zarr_array(tmp_path / "a", _data())
    kept = KeptChunks(10**9)
    arr = DirectChunkArray(direct_layout(tmp_path / "a"), kept)
    block = arr[:, :16, :16]
    with pytest.raises(ValueError, match="read-only"):
        block[0, 0, 0] = 1.0  # a kernel writing into its input fails loudly
    assert kept.used == block.nbytes
    assert arr[:, :16, :16] is block and kept.used == 0 and kept.hits == 1
    import pickle  # noqa: PLC0415

    assert pickle.loads(pickle.dumps(kept)).budget == 0  # other processes keep nothing


def test_the_off_switch_sends_every_chunk_through_zarr(
    tmp_path: Path, direct_reads: Counter, monkeypatch: pytest.MonkeyPatch, cli
) -> None:
    """``CUBEPIPE_DIRECT_IO=0``: no chunk file is read or written by chunkio, and the
    store's bytes and values are what the direct path gives."""
    from cubepipe.storage.errors import InputError  # noqa: PLC0415

    data = _data()
    direct = _store(tmp_path / "on", data)
    written: list[tuple] = []
    monkeypatch.setattr(ChunkLayout, "write_chunk", lambda self, idx, block: written.append(idx))
    monkeypatch.setenv("CUBEPIPE_DIRECT_IO", "0")
    assert direct_layout(direct / "cube") is None
    via_zarr = _store(tmp_path / "off", data)
    got = open_cube(via_zarr)
    np.testing.assert_array_equal(got["cube"].values, open_cube(direct)["cube"].values)
    np.testing.assert_array_equal(got["cube"].values, data)
    assert not written and not direct_reads
    for f in sorted((direct / "cube" / "c").rglob("*")):  # the same chunk files, byte for byte
        if f.is_file():
            assert (via_zarr / f.relative_to(direct)).read_bytes() == f.read_bytes()
    monkeypatch.setenv("CUBEPIPE_DIRECT_IO", "maybe")
    with pytest.raises(InputError, match="CUBEPIPE_DIRECT_IO='maybe'"):
        open_cube(direct)
    res = cli("info", str(direct))
    assert res.returncode == 2 and "CUBEPIPE_DIRECT_IO" in res.stderr
