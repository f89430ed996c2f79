"""The cube store contract (DESIGN.md): plain readers, provenance, completion, resume."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import pytest
import xarray as xr
import zarr

from cubepipe.storage import (
    IncompleteStoreError,
    InputError,
    InvalidStoreError,
    StoreExistsError,
    StoreNotFoundError,
    describe,
    history,
    is_complete,
    open_cube,
    read_attrs,
    store_state,
    write_cube,
)
from cubepipe.storage.layout import MAX_CHUNK_BYTES, default_chunks, parse_chunks

from ..conftest import signed_float_block


def _cube(data: np.ndarray, chunks: tuple[int, ...]) -> xr.Dataset:
    return xr.Dataset(
        {"cube": (("band", "y", "x"), da.from_array(data, chunks=chunks))},
        coords={"wavelength": ("band", np.linspace(400, 900, data.shape[0]))},
    )


def test_plain_xarray_and_zarr_read_a_store_without_cubepipe(small_store: Path) -> None:
    code = textwrap.dedent(
        f"""
        import sys, json
        import numpy as np, xarray as xr, zarr
        ds = xr.open_zarr({str(small_store)!r})
        g = zarr.open_group({str(small_store)!r}, mode="r")
        assert zarr.open_group({str(small_store)!r}).metadata.zarr_format == 3
        a = g["cube"]
        assert not [m for m in sys.modules if m.split(".")[0] == "cubepipe"], "cubepipe imported"
        print(json.dumps({{"dims": list(ds["cube"].dims), "dtype": str(ds["cube"].dtype),
              "zarr_shape": list(a.shape), "sum": float(np.nansum(a[:]))}}))
        """
    )
    out = subprocess.run(
        [sys.executable, "-I", "-W", "error", "-c", code],
        capture_output=True,
        text=True,
        cwd=small_store.parent,
        check=True,
    )
    got = json.loads(out.stdout)
    assert got["dims"] == ["band", "y", "x"]
    assert got["dtype"] == "float32"
    assert got["zarr_shape"] == [15, 200, 240]
    expected = float(np.nansum(open_cube(small_store)["cube"].values))
    assert got["sum"] == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("chunks", [(3, 7, 5), (3, 16, 16), (1, 4, 16)])
def test_values_round_trip_bit_exact(tmp_path: Path, chunks: tuple[int, int, int]) -> None:
    data = signed_float_block((3, 16, 16), seed=7)
    path = write_cube(_cube(data, chunks), tmp_path / "s.zarr")
    back = open_cube(path)["cube"].values
    assert back.dtype == np.float32
    assert back.tobytes() == data.tobytes()  # bit-identical, NaN and -0.0 included


def test_float64_stays_float64(tmp_path: Path) -> None:
    data = np.linspace(-1, 1, 2 * 4 * 4).reshape(2, 4, 4)
    path = write_cube(_cube(data, (2, 4, 4)), tmp_path / "s.zarr")
    assert open_cube(path)["cube"].dtype == np.float64


def test_store_layout_chunks_and_codec(small_store: Path) -> None:
    arr = zarr.open_group(str(small_store), mode="r")["cube"]
    assert arr.chunks == (15, 64, 96)
    assert list(arr.metadata.dimension_names) == ["band", "y", "x"]
    d = describe(small_store)
    assert any(c.startswith("blosc") for c in d["variables"]["cube"]["codecs"])
    assert d["complete"] is True and d["state"] == "complete"
    assert d["bytes_in_memory"] > 0 and d["bytes_on_disk"] > 0


def test_provenance_is_appended(tmp_path: Path, small_store: Path) -> None:
    first = history(read_attrs(small_store))
    assert [h["op"] for h in first] == ["fixture"]
    assert first[0]["finished"] is not None
    ds = open_cube(small_store)
    out = write_cube(
        ds * 2, tmp_path / "twice.zarr", op="double", params={"k": 2}, inputs=[small_store]
    )
    hist = history(read_attrs(out))
    assert [h["op"] for h in hist] == ["fixture", "double"]
    assert hist[1]["params"] == {"k": 2}
    assert hist[1]["inputs"] == [str(small_store)]
    assert hist[1]["device"] == "cpu"
    assert hist[1]["started"] <= hist[1]["finished"]
    assert read_attrs(out)["cubepipe"]["version"]


class _Boom(RuntimeError):
    pass


def _fail_on_last_block(block: np.ndarray, block_info: dict | None = None) -> np.ndarray:
    info = block_info[0]
    if info["chunk-location"] == tuple(n - 1 for n in info["num-chunks"]):
        time.sleep(0.5)  # the other chunks are written meanwhile
        raise _Boom("simulated crash while computing the last chunk")
    return block


def _write_that_dies(data: np.ndarray, path: Path) -> None:
    arr = da.from_array(data, chunks=(2, 8, 8)).map_blocks(_fail_on_last_block, dtype=data.dtype)
    ds = xr.Dataset({"cube": (("band", "y", "x"), arr)})
    with (
        pytest.raises(_Boom, match="simulated crash while computing the last chunk"),
        dask.config.set(scheduler="threads", num_workers=2),
    ):
        write_cube(ds, path, op="crashy", chunks={"y": 8, "x": 8})
    assert sum(f.is_file() for f in (path / "cube" / "c").rglob("*")) >= 3


def test_interrupted_write_is_incomplete_and_refused(tmp_path: Path) -> None:
    data = signed_float_block((2, 16, 16))
    path = tmp_path / "crashed.zarr"
    _write_that_dies(data, path)
    assert store_state(path) == "incomplete"
    assert is_complete(path) is False
    with pytest.raises(IncompleteStoreError, match="--resume"):
        open_cube(path)
    partial = open_cube(path, allow_incomplete=True)
    assert partial["cube"].shape == (2, 16, 16)
    assert describe(path)["complete"] is False
    with pytest.raises(StoreExistsError, match="--resume"):
        write_cube(_cube(data, (2, 8, 8)), path)


def test_resume_computes_only_missing_chunks(tmp_path: Path) -> None:
    data = signed_float_block((2, 16, 16), seed=3)
    path = tmp_path / "resumed.zarr"
    _write_that_dies(data, path)

    computed: list[tuple[int, ...]] = []

    def counting(block: np.ndarray, block_info: dict | None = None) -> np.ndarray:
        computed.append(block_info[0]["chunk-location"])
        return block

    arr = da.from_array(data, chunks=(2, 8, 8)).map_blocks(counting, dtype=data.dtype)
    ds = xr.Dataset({"cube": (("band", "y", "x"), arr)})
    with dask.config.set(scheduler="synchronous"):
        write_cube(ds, path, op="crashy", chunks={"y": 8, "x": 8}, resume=True)
    assert computed == [(0, 1, 1)]  # the other three chunks were on disk already
    assert open_cube(path)["cube"].values.tobytes() == data.tobytes()
    assert "resumed" in history(read_attrs(path))[-1]


def test_resume_rewrites_a_corrupt_chunk(tmp_path: Path) -> None:
    data = signed_float_block((2, 16, 16), seed=4)
    path = tmp_path / "corrupt.zarr"
    _write_that_dies(data, path)
    chunk = path / "cube" / "c" / "0" / "0" / "0"
    chunk.write_bytes(chunk.read_bytes()[:-9])  # cut short, as a kill mid-write would
    write_cube(_cube(data, (2, 8, 8)), path, op="crashy", chunks={"y": 8, "x": 8}, resume=True)
    assert open_cube(path)["cube"].values.tobytes() == data.tobytes()


def test_resume_refuses_a_different_computation(tmp_path: Path) -> None:
    path = tmp_path / "crashed.zarr"
    _write_that_dies(signed_float_block((2, 16, 16)), path)
    other = _cube(np.zeros((3, 16, 16), np.float32), (3, 8, 8))
    with pytest.raises(InputError, match="--overwrite"):
        write_cube(other, path, resume=True)


def test_existing_output_needs_overwrite(tmp_path: Path, small_store: Path) -> None:
    ds = open_cube(small_store)
    with pytest.raises(StoreExistsError, match="--overwrite"):
        write_cube(ds, small_store)
    write_cube(ds * 0, small_store.with_name("copy.zarr"))
    out = write_cube(ds * 0, small_store.with_name("copy.zarr"), overwrite=True)
    assert float(np.nanmax(np.abs(open_cube(out)["cube"].values))) == 0.0
    precious = tmp_path / "not_a_store"
    precious.mkdir()
    (precious / "thesis.tex").write_text("do not delete")
    with pytest.raises(StoreExistsError, match="not a zarr store"):
        write_cube(ds, precious, overwrite=True)
    assert (precious / "thesis.tex").exists()


def test_open_errors_name_the_path(tmp_path: Path) -> None:
    with pytest.raises(StoreNotFoundError, match="missing.zarr"):
        open_cube(tmp_path / "missing.zarr")
    f = tmp_path / "plain.txt"
    f.write_text("hello")
    with pytest.raises(InvalidStoreError, match="plain.txt"):
        open_cube(f)
    empty = tmp_path / "empty_dir"
    empty.mkdir()
    with pytest.raises(InvalidStoreError, match="empty_dir"):
        open_cube(empty)


def test_foreign_zarr_group_opens(tmp_path: Path) -> None:
    path = tmp_path / "foreign.zarr"
    xr.Dataset({"cube": (("band", "y", "x"), np.ones((2, 3, 4), np.float32))}).to_zarr(
        path, zarr_format=3, consolidated=False
    )
    assert store_state(path) == "foreign"
    assert is_complete(path) is None
    assert open_cube(path)["cube"].shape == (2, 3, 4)


def test_default_chunks_follow_the_contract() -> None:
    c = default_chunks({"band": 15, "y": 2500, "x": 2500}, 4)
    assert c == {"band": 15, "y": 512, "x": 512}
    c = default_chunks({"frame": 100, "band": 3, "y": 720, "x": 1280}, 4)
    assert c == {"frame": 1, "band": 3, "y": 512, "x": 512}
    c = default_chunks({"band": 224, "y": 4096, "x": 4096}, 8)
    assert c["band"] == 224
    assert 224 * c["y"] * c["x"] * 8 <= MAX_CHUNK_BYTES
    assert default_chunks({"band": 2, "y": 10, "x": 10}, 4, overrides={"y": 4}) == {
        "band": 2,
        "y": 4,
        "x": 10,
    }


def test_parse_chunks() -> None:
    assert parse_chunks("y=256,x=128") == {"y": 256, "x": 128}
    assert parse_chunks(None) == {}
    for bad in ("y", "y=0", "y=abc", "=4"):
        with pytest.raises(InputError, match="--chunks"):
            parse_chunks(bad)


def test_opening_and_building_graphs_computes_nothing(small_store: Path, no_compute) -> None:
    with no_compute:
        ds = open_cube(small_store)
        lazy = (ds["cube"] - ds["cube"].mean("band")) * 2
        assert isinstance(lazy.data, da.Array)


_KILL_SCRIPT = """
import sys, time
import dask.array as da, numpy as np, xarray as xr
from cubepipe.storage import write_cube

def slow(block, block_info=None):
    time.sleep(0.25)
    return block

data = da.arange(4 * 32 * 32, dtype="float32").reshape(4, 32, 32).rechunk((4, 8, 8)) - 5000
ds = xr.Dataset({"cube": (("band", "y", "x"), data.map_blocks(slow, dtype="float32"))})
write_cube(ds, sys.argv[1], op="slow", chunks={"y": 8, "x": 8}, resume="--resume" in sys.argv)
"""


def test_sigkill_mid_write_leaves_incomplete_store_then_resume(tmp_path: Path, cli) -> None:
    script = tmp_path / "writer.py"
    script.write_text(_KILL_SCRIPT)
    path = tmp_path / "killed.zarr"
    proc = subprocess.Popen([sys.executable, str(script), str(path)])
    chunk_dir = path / "cube" / "c"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if chunk_dir.exists() and sum(1 for _ in chunk_dir.rglob("*") if _.is_file()) >= 3:
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert store_state(path) == "incomplete"
    with pytest.raises(IncompleteStoreError, match=f"store {re.escape(str(path))} is incomplete"):
        open_cube(path)
    info = cli("info", str(path), "--json")
    assert info.returncode == 0, info.stderr
    assert json.loads(info.stdout)["complete"] is False
    assert "INCOMPLETE" in cli("info", str(path)).stdout

    subprocess.run([sys.executable, str(script), str(path), "--resume"], check=True, timeout=120)
    expected = np.arange(4 * 32 * 32, dtype="float32").reshape(4, 32, 32) - 5000
    assert open_cube(path)["cube"].values.tobytes() == expected.tobytes()
