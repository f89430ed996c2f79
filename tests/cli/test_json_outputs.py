"""``--json`` on the commands that print a summary: one JSON object on stdout, nothing
else there, keys as docs/cli-json.md documents them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import tifffile


def _npy(tmp_path: Path) -> np.ndarray:
    x = np.random.default_rng(5).normal(-1, 3, size=(3, 16, 20)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    return x


def test_export_json(cli, tmp_path: Path) -> None:
    x = _npy(tmp_path)
    assert cli("-q", "ingest", "x.npy", "-o", "x.zarr", cwd=tmp_path).returncode == 0
    res = cli("export", "x.zarr", "-o", "x.tif", "--json", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    d = json.loads(res.stdout)  # nothing but the object on stdout
    assert d["variable"] == "cube" and d["format"] == "tiff" and d["dtype"] == "float32"
    assert d["max_abs_error"] == 0.0 and d["clipped"] == 0 and d["sidecars"] == []
    (written,) = d["files"]
    np.testing.assert_array_equal(tifffile.imread(tmp_path / written), x)
    res = cli("export", "x.zarr", "-o", "p.png", "--bands", "0", "--scale", "minmax", "--json",
              cwd=tmp_path)  # fmt: skip
    d = json.loads(res.stdout)
    assert d["dtype"] == "uint8" and len(d["sidecars"]) == 1
    assert 0 < d["max_abs_error"] <= (x[0].max() - x[0].min()) / 254 / 2 * 1.0001  # code 0 is NaN


def test_compress_json_agrees_with_scikit_learn(cli, tmp_path: Path) -> None:
    from sklearn.decomposition import PCA  # noqa: PLC0415

    x = _npy(tmp_path)
    assert cli("-q", "ingest", "x.npy", "-o", "x.zarr", cwd=tmp_path).returncode == 0
    res = cli("compress", "x.zarr", "-k", "2", "-o", "c.zarr", "--json", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    d = json.loads(res.stdout)
    pixels = x.reshape(3, -1).T.astype(np.float64)
    ref = PCA(2).fit(pixels)
    np.testing.assert_allclose(d["explained_variance_ratio"], ref.explained_variance_ratio_,
                               rtol=1e-9)  # fmt: skip
    rebuilt = ref.inverse_transform(ref.transform(pixels))
    rmse = np.sqrt(np.mean((rebuilt - pixels) ** 2))
    assert d["method"] == "pca" and d["components"] == 2 and d["training"] is None
    np.testing.assert_allclose(d["metrics"]["rmse"], rmse, rtol=1e-6)
    assert set(d["seconds"]) == {"fit", "write"}


def test_ingest_json(cli, tmp_path: Path) -> None:
    x = _npy(tmp_path)
    res = cli("ingest", "x.npy", "-o", "x.zarr", "--json", "--encoding", "float16", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    d = json.loads(res.stdout)
    assert d["shape"] == list(x.shape) and d["dims"] == ["band", "y", "x"]
    assert d["dtype"] == "float16" and d["files"] == 1 and d["georef"] is None
    err = np.abs(x.astype(np.float16).astype(np.float64) - x).max()
    assert d["encoding"]["max_abs_error"] == float(err)
