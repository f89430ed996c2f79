"""Every store kind cubepipe writes opens in a second, independent zarr v3 reader
(tensorstore, C++): every array of every store, with the values zarr-python reads. Text
coordinates (``band_name``, ``source``) live in the root attributes, since tensorstore
reads none of zarr v3's text data types; ``open_cube`` gives them back as coordinates."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import zarr
from PIL import Image

from cubepipe.storage import open_cube
from cubepipe.storage.errors import InvalidStoreError

ts = pytest.importorskip("tensorstore")


def _arrays(store: Path) -> list[Path]:
    return sorted(
        p.parent
        for p in store.rglob("zarr.json")
        if json.loads(p.read_text()).get("node_type") == "array"
    )


def _check_every_array(store: Path) -> int:
    arrays = _arrays(store)
    assert arrays, store
    for path in arrays:
        spec = {"driver": "zarr3", "kvstore": {"driver": "file", "path": str(path)}}
        try:
            got = ts.open(spec).result().read().result()
        except Exception as exc:  # the message names the data type tensorstore refused
            pytest.fail(f"tensorstore cannot read {path.relative_to(store.parent)}: {exc}")
        want = zarr.open_array(str(path), mode="r")[...]
        np.testing.assert_array_equal(got, want, err_msg=str(path))
    return len(arrays)


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One store of each kind, made by the CLI as a user would."""
    from ..conftest import run_cli  # noqa: PLC0415

    tmp = tmp_path_factory.mktemp("kinds")
    rng = np.random.default_rng(0)
    np.save(tmp / "x.npy", rng.normal(-3, 2, size=(6, 40, 48)).astype(np.float32))
    if importlib.util.find_spec("av") is not None:
        from .test_video import write_video  # noqa: PLC0415

        frames = rng.integers(0, 255, size=(5, 16, 24, 3), dtype=np.uint8)
        write_video(tmp / "v.mkv", frames, codec="ffv1", pix_fmt="bgr0")
    for i, size in enumerate([(20, 16), (20, 16), (20, 16)]):
        Image.fromarray(rng.integers(0, 255, size=(*size, 3), dtype=np.uint8)).save(
            tmp / f"im{i}.png"
        )
    steps = {
        "cube": ["ingest", "x.npy", "-o", "cube.zarr", "--chunks", "y=16,x=16"],
        "images": ["ingest", "im0.png", "im1.png", "im2.png", "-o", "images.zarr"],
        "quantized": ["ingest", "x.npy", "-o", "quantized.zarr", "--encoding", "int16-quantized"],
        "half": ["ingest", "x.npy", "-o", "half.zarr", "--encoding", "float16"],
        "sharded": ["ingest", "im0.png", "im1.png", "im2.png", "-o", "sharded.zarr", "--shards", "auto"],
        "standardized": ["standardize", "cube.zarr", "-o", "standardized.zarr"],
        "images_z": ["standardize", "images.zarr", "-o", "images_z.zarr"],
        "pca": ["compress", "standardized.zarr", "-k", "3", "-o", "pca.zarr"],
        "reconstructed": ["reconstruct", "pca.zarr", "-o", "reconstructed.zarr"],
        "filtered": ["filter", "cube.zarr", "-k", "gaussian:1", "-o", "filtered.zarr"],
        "fft": ["filter", "cube.zarr", "-k", "lowpass:0.2", "-o", "fft.zarr"],
    }  # fmt: skip
    if importlib.util.find_spec("av") is not None:
        steps["video"] = ["ingest", "v.mkv", "-o", "video.zarr"]
    if importlib.util.find_spec("torch") is not None:
        steps["ae"] = ["compress", "standardized.zarr", "-k", "2", "--method", "ae",
                       "--epochs", "2", "-o", "ae.zarr"]  # fmt: skip
    for name, args in steps.items():
        res = run_cli("-q", *args, cwd=tmp)
        assert res.returncode == 0, (name, res.stderr)
    res = run_cli("-q", "stats", "cube.zarr", cwd=tmp)  # saved into the store
    assert res.returncode == 0, res.stderr
    return {name: tmp / f"{name}.zarr" for name in steps}


def test_tensorstore_reads_every_array_of_every_store_kind(stores: dict[str, Path]) -> None:
    total = sum(_check_every_array(store) for store in stores.values())
    assert total >= 3 * len(stores)


def test_text_coordinates_come_back_as_coordinates(stores: dict[str, Path]) -> None:
    images = open_cube(stores["images"])
    assert list(images["band_name"].values) == ["R", "G", "B"]
    assert list(images["source"].values) == ["im0.png", "im1.png", "im2.png"]
    plain = xr.open_zarr(stores["images"])  # plain xarray: the text in the attributes
    assert "band_name" not in plain.coords
    assert plain.attrs["cubepipe_text_coords"]["band_name"]["values"] == ["R", "G", "B"]
    assert "cubepipe_text_coords" not in images.attrs
    # carried through an operation into its output, again as attributes on disk
    standardized = open_cube(stores["images_z"])
    assert list(standardized["band_name"].values) == ["R", "G", "B"]
    assert list(standardized["source"].values) == ["im0.png", "im1.png", "im2.png"]
    assert "band_name" not in zarr.open_group(str(stores["images_z"])).array_keys()


def test_damaged_text_attributes_are_refused(stores: dict[str, Path], tmp_path: Path) -> None:
    import shutil  # noqa: PLC0415

    copy = tmp_path / "images.zarr"
    shutil.copytree(stores["images"], copy)
    group = zarr.open_group(str(copy), mode="r+")
    text = dict(group.attrs["cubepipe_text_coords"])
    text["band_name"] = {"dims": ["band"], "values": ["R", "G"]}  # 2 names for 3 bands
    group.attrs["cubepipe_text_coords"] = text
    zarr.consolidate_metadata(str(copy))
    with pytest.raises(InvalidStoreError, match="cubepipe_text_coords attribute is damaged"):
        open_cube(copy)
