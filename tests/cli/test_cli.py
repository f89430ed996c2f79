"""The command line contract: help, info, demo, one-line errors and exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cubepipe.pipeline.backend import gpu_status

GPU_OK, _ = gpu_status()


def _one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one stderr line, got: {proc.stderr!r}"
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert "Traceback" not in proc.stderr
    return lines[0]


def test_help_lists_commands_and_global_options(cli_process) -> None:
    proc = cli_process("--help")  # the installed console script, in its own process
    assert proc.returncode == 0
    for word in ("info", "demo", "--device", "--scheduler", "--debug"):
        assert word in proc.stdout


def test_version(cli) -> None:
    proc = cli("--version")
    assert proc.returncode == 0 and "cubepipe" in proc.stdout


def test_python_dash_m_entry_point() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "cubepipe.pipeline", "--help"], capture_output=True, text=True
    )
    assert proc.returncode == 0 and "info" in proc.stdout


def test_info_missing_store_is_one_line_exit_2(cli, tmp_path: Path) -> None:
    proc = cli("info", str(tmp_path / "missing.zarr"))
    assert proc.returncode == 2
    _one_line_error(proc, "missing.zarr", "not found")


def test_info_on_a_plain_file_is_one_line_exit_2(cli, tmp_path: Path) -> None:
    f = tmp_path / "notes.txt"
    f.write_text("not a store")
    proc = cli("info", str(f))
    assert proc.returncode == 2
    _one_line_error(proc, "notes.txt")


def test_debug_shows_the_traceback(cli, tmp_path: Path) -> None:
    proc = cli("--debug", "info", str(tmp_path / "missing.zarr"))
    assert proc.returncode == 2
    assert "Traceback" in proc.stderr and "missing.zarr" in proc.stderr


@pytest.mark.skipif(GPU_OK, reason="this machine has a GPU")
def test_gpu_without_a_gpu_exits_2_with_one_line(cli, cli_process, small_store: Path) -> None:
    proc = cli_process("--device", "gpu", "info", str(small_store))  # exit status of a process
    assert proc.returncode == 2
    _one_line_error(proc, "gpu", "--device cpu")
    proc = cli("info", str(small_store), env={"CUBEPIPE_DEVICE": "gpu"})
    assert proc.returncode == 2
    _one_line_error(proc, "CUBEPIPE_DEVICE")


def test_usage_errors_exit_2(cli) -> None:
    assert cli("frobnicate").returncode == 2
    assert cli("--device", "tpu", "info", "x").returncode == 2
    assert cli("info").returncode == 2


def test_info_human_and_json(cli, small_store: Path) -> None:
    human = cli("info", str(small_store))
    assert human.returncode == 0, human.stderr
    for word in ("complete", "band=15", "float32", "blosc", "on disk", "fixture"):
        assert word in human.stdout
    d = json.loads(cli("info", str(small_store), "--json").stdout)
    assert d["complete"] is True
    assert d["dims"] == {"band": 15, "y": 200, "x": 240}
    cube = d["variables"]["cube"]
    assert cube["dtype"] == "float32" and cube["chunks"] == [15, 64, 96]
    assert cube["bytes_in_memory"] == 15 * 200 * 240 * 4
    assert 0 < cube["bytes_on_disk"] < cube["bytes_in_memory"] * 1.2
    assert [h["op"] for h in d["history"]] == ["fixture"]
    assert set(d) >= {"path", "state", "variables", "fitted", "bytes_on_disk", "history"}


def test_bad_scheduler_is_one_line_exit_2(cli, tmp_path: Path) -> None:
    proc = cli("--scheduler", "bogus", "demo", "--size", "small", "-o", str(tmp_path))
    assert proc.returncode == 2
    _one_line_error(proc, "bogus")


def test_demo_small_writes_a_store_plain_xarray_opens(cli, tmp_path: Path) -> None:
    proc = cli("demo", "--size", "small", "-o", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr
    assert "demo summary" in proc.stdout
    assert "auto: using" in proc.stderr  # says which device auto chose
    out = tmp_path / "out"
    assert f"report: {out / 'demo-report.html'}" in proc.stdout
    for name in ("demo-z.zarr", "demo-pca.zarr", "demo-rec.zarr", "demo-smooth.zarr"):
        assert json.loads(cli("info", str(out / name), "--json").stdout)["complete"] is True
    assert (out / "demo-smooth.tif").stat().st_size > 3 * 200 * 240 * 4
    assert (out / "demo-preview.png.cubepipe.json").exists()
    assert "<img" in (out / "demo-report.html").read_text()
    code = (
        "import xarray as xr, numpy as np, sys;"
        f"ds = xr.open_zarr({str(tmp_path / 'out' / 'demo.zarr')!r});"
        "v = ds['cube'].values;"
        "print(v.shape, int((v < 0).sum()), int(np.isnan(v).sum()))"
    )
    out = subprocess.run(
        [sys.executable, "-W", "error", "-c", code], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    shape, neg, nan = out.stdout.rsplit(")", 1)[0] + ")", *out.stdout.split(")")[1].split()
    assert shape == "(15, 200, 240)" and int(neg) > 0 and int(nan) > 0
    # Running again replaces the demo's own output.
    assert cli("demo", "--size", "small", "-o", str(tmp_path / "out")).returncode == 0


def test_demo_on_a_local_cluster(cli, tmp_path: Path) -> None:
    pytest.importorskip("distributed")
    proc = cli(
        "--scheduler", "local", "--workers", "2", "demo", "--size", "small", "-o", str(tmp_path)
    )
    assert proc.returncode == 0, proc.stderr
    assert "dashboard at http" in proc.stderr
    d = json.loads(cli("info", str(tmp_path / "demo.zarr"), "--json").stdout)
    assert d["complete"] is True
    assert np.prod(list(d["dims"].values())) == 15 * 200 * 240
