"""Small things a user sees on every run (issue 18, item 7): the device line once per
command, fill values as numbers."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np

from cubepipe.storage import open_cube


def test_a_pipeline_says_its_device_once(cli, tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", np.random.default_rng(0).normal(size=(4, 24, 24)).astype("f4"))
    (tmp_path / "p.yaml").write_text(
        "steps:\n"
        "  - ingest: {in: x.npy, out: x.zarr}\n"
        "  - standardize: {out: z.zarr}\n"
        "  - compress: {out: c.zarr, components: 2}\n"
        "  - reconstruct: {out: r.zarr}\n"
    )
    res = cli("run", "p.yaml", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.stderr.count("cubepipe: device") == 1, res.stderr


def test_info_prints_fill_values_as_numbers(cli, tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", np.random.default_rng(1).normal(size=(2, 8, 8)).astype("f4"))
    for enc in ("float32", "int16-quantized"):
        res = cli("-q", "ingest", "x.npy", "-o", f"{enc}.zarr", "--encoding", enc, cwd=tmp_path)
        assert res.returncode == 0, res.stderr
    # what xarray wrote into the float store's attrs: the base64 of a float64 NaN
    raw = json.loads((tmp_path / "float32.zarr" / "cube" / "zarr.json").read_text())
    stored = raw["attributes"]["_FillValue"]
    assert np.isnan(np.frombuffer(base64.b64decode(stored), "<f8")[0])
    human = cli("info", "float32.zarr", cwd=tmp_path).stdout
    assert "_FillValue = NaN" in human and stored not in human
    as_json = json.loads(cli("info", "float32.zarr", "--json", cwd=tmp_path).stdout)
    assert as_json["variables"]["cube"]["encoding"]["_FillValue"] == "NaN"
    quantized = json.loads(cli("info", "int16-quantized.zarr", "--json", cwd=tmp_path).stdout)
    fill = quantized["variables"]["cube"]["encoding"]["_FillValue"]
    assert fill == int(np.iinfo(np.int16).min)
    assert open_cube(tmp_path / "int16-quantized.zarr")["cube"].dtype.kind == "f"
