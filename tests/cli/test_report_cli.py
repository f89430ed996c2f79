"""`cubepipe report` through the real console script, and the page in headless Chromium."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cubepipe.pipeline.report.write import write_report
from cubepipe.pipeline.stats.fit import fit_stats
from cubepipe.storage import open_cube
from cubepipe.storage.update import add_variables

ROOT = Path(__file__).resolve().parents[2]
#: Screenshots land here (git-ignored) so a person or CI can look at them.
ARTIFACTS = ROOT / "tests" / "artifacts"
CHROMIUM = Path("/usr/bin/chromium")


def _install_chromium() -> str:
    """Debian's chromium: found, or installed with apt-get when allowed, else a skip."""
    found = CHROMIUM if CHROMIUM.exists() else shutil.which("chromium")
    if found:
        return str(found)
    asked = os.environ.get("CI") == "true" or os.environ.get("CUBEPIPE_INSTALL_CHROMIUM") == "1"
    if not asked:
        pytest.skip(
            "headless check needs Debian's chromium (/usr/bin/chromium); install it, or set "
            "CUBEPIPE_INSTALL_CHROMIUM=1 (or CI=true) to let the test apt-get install it"
        )
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip("chromium is missing and installing it needs root and apt-get")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update"], capture_output=True, env=env, timeout=900)
    proc = subprocess.run(
        ["apt-get", "install", "-y", "--no-install-recommends", "chromium"],
        capture_output=True,
        text=True,
        env=env,
        timeout=1800,
    )
    if proc.returncode != 0 or not CHROMIUM.exists():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["?"]
        pytest.skip(f"apt-get install chromium failed: {tail[0]}")
    return str(CHROMIUM)


@pytest.fixture(scope="session")
def chromium() -> str:
    return _install_chromium()


def _headless(chromium: str, page: Path, shot: Path, profile: Path) -> subprocess.CompletedProcess:
    """Open ``page`` in headless Chromium, screenshot it, log the console to stderr."""
    return subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            f"--screenshot={shot}",
            "--window-size=1280,2000",
            "--enable-logging=stderr",
            "--v=0",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


def _console_errors(stderr: str) -> list[str]:
    """Lines of Chromium's log that come from the page's console.

    Chromium logs an uncaught exception as ``...:INFO:CONSOLE:1] "Uncaught Error: ..."``
    and (in Debian's Chromium 15x) ``console.error`` at INFO level too, so the level cannot
    tell errors apart: as the report has no scripts, *any* console line is a failure, and
    so is any "Uncaught" or "ERROR:CONSOLE" line. (Resources that fail to load are not
    logged; test_report.py checks that the page references none.)
    """
    needles = (":CONSOLE", "Uncaught", "ERROR:CONSOLE")
    return [line for line in stderr.splitlines() if any(n in line for n in needles)]


def test_report_command_writes_one_page_and_refuses_to_overwrite(
    cli, small_store: Path, tmp_path: Path
) -> None:
    out = tmp_path / "r.html"
    proc = cli("report", str(small_store), "-o", str(out), "--max-bands", "3", "--bins", "16")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"report: {small_store} -> {out} (")
    text = out.read_text()
    assert text.count("<img ") == 6 and text.count('data-kind="quicklook"') == 3
    again = cli("report", str(small_store), "-o", str(out), "--original", "nope.zarr")
    assert again.returncode == 2
    assert again.stderr.strip().splitlines()[-1] == (
        f"cubepipe: error: {out} exists; pass --overwrite to replace it"
    )
    proc = cli("report", str(small_store), "-o", str(out), "--original", "nope", "--overwrite")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        "cubepipe: error: --original nope: no such store or file"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.html", "small.zarr"]
    assert out.read_text() == text


def test_report_opens_in_headless_chromium_without_console_errors(
    cli, chromium: str, small_store: Path, tmp_path: Path
) -> None:
    add_variables(small_store, fit_stats(open_cube(small_store)).compute(), op="stats")
    comp = tmp_path / "c.zarr"
    assert cli("compress", str(small_store), "-o", str(comp), "-k", "4").returncode == 0
    page = write_report(small_store, tmp_path / "report.html", title="small <cube>")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "report.png"
    shot.unlink(missing_ok=True)
    run = _headless(chromium, page, shot, tmp_path / "profile")
    assert run.returncode == 0, run.stderr[-2000:]
    assert _console_errors(run.stderr) == []
    img = np.asarray(Image.open(shot).convert("RGB"))
    assert img.shape == (2000, 1280, 3)
    # drawn, not blank: many colours, blue (< 0) and red (> 0) quick-look pixels
    packed = (
        (img[..., 0].astype(np.int32) << 16) | (img[..., 1].astype(np.int32) << 8) | img[..., 2]
    )
    assert np.unique(packed).size > 500
    r, b = img[..., 0].astype(int), img[..., 2].astype(int)
    assert ((b - r > 80) & (b > 120)).sum() > 1000 and ((r - b > 80) & (r > 120)).sum() > 1000

    # the PCA page too, and a positive control: the log scan does see a page error
    pca_page = write_report(comp, tmp_path / "pca.html", original=small_store)
    run = _headless(chromium, pca_page, ARTIFACTS / "report-pca.png", tmp_path / "profile")
    assert run.returncode == 0 and _console_errors(run.stderr) == []
    bad = tmp_path / "bad.html"
    bad.write_text(
        "<!DOCTYPE html><title>x</title>"
        "<script>console.error('oops'); throw new Error('boom')</script>"
    )
    run = _headless(chromium, bad, tmp_path / "bad.png", tmp_path / "profile")
    found = " ".join(_console_errors(run.stderr))
    assert "oops" in found and "Uncaught Error: boom" in found, run.stderr[-2000:]
