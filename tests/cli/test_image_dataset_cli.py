"""`cubepipe ingest DIR` of images of mixed sizes, then `stats` and `standardize`.

References: Pillow decodes each file, NumPy computes the float64 statistics over all
pixels of all images; cubepipe's own output is never the reference.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cubepipe.storage import open_cube, open_images, store_state
from tests.storage.test_image_dataset import make_mixed_dir, pillow_rgb


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    return make_mixed_dir(tmp_path / "photos")


def _numpy_stats(folder: Path) -> dict[str, np.ndarray]:
    pixels = np.concatenate(
        [pillow_rgb(f).reshape(3, -1) for f in sorted(folder.iterdir())], axis=1
    )
    return {
        "count": np.full(3, pixels.shape[1]),
        "mean": pixels.mean(axis=1),
        "std": pixels.std(axis=1),
        "min": pixels.min(axis=1),
        "max": pixels.max(axis=1),
    }


def test_ingest_stats_standardize_a_mixed_directory(cli, photos: Path, tmp_path: Path) -> None:
    ds, z = tmp_path / "ds.zarr", tmp_path / "z.zarr"
    r = cli("ingest", str(photos), "-o", str(ds), "--color", "rgb")
    assert r.returncode == 0, r.stderr
    n = len(list(photos.iterdir()))
    assert f"ingested {n} file(s)" in r.stdout and "padded to" in r.stdout

    r = cli("--quiet", "stats", str(ds), "--json")
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)["bands"]
    ref = _numpy_stats(photos)
    for key in ("count", "mean", "std", "min", "max"):
        np.testing.assert_allclose([b[key] for b in got], ref[key], rtol=1e-12, err_msg=key)

    r = cli("standardize", str(ds), "-o", str(z))
    assert r.returncode == 0, r.stderr
    mean, std = ref["mean"][:, None, None], ref["std"][:, None, None]
    images = list(open_images(z))
    assert [name for name, _ in images] == sorted(f.name for f in photos.iterdir())
    for name, image in images:
        expected = (pillow_rgb(photos / name) - mean) / std
        assert image.dtype == np.float32 and image.shape == expected.shape
        np.testing.assert_allclose(image.values, expected, rtol=0, atol=2e-6, err_msg=name)

    # --stats from the JSON of `stats`: the same images
    (tmp_path / "s.json").write_text(cli("--quiet", "stats", str(ds), "--json", "--no-save").stdout)
    r = cli(
        "standardize", str(ds), "-o", str(tmp_path / "z2.zarr"), "--stats", str(tmp_path / "s.json")
    )
    assert r.returncode == 0, r.stderr
    for (_, a), (_, b) in zip(images, open_images(tmp_path / "z2.zarr"), strict=True):
        np.testing.assert_array_equal(a.values, b.values)

    info = cli("info", str(z))
    assert f"images     {n} (height" in info.stdout and "padded to" in info.stdout
    assert json.loads(cli("info", str(z), "--json").stdout)["images"]["count"] == n


def _one_line_error(r, *words: str) -> None:
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert len(lines) == 1 and lines[0].startswith("cubepipe: error: "), r.stderr
    assert all(w in lines[0] for w in words), lines[0]


def test_hostile_directories_are_one_line_errors(cli, photos: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.zarr"
    whole = (photos / "rgb.jpg").read_bytes()
    (photos / "rgb.jpg").write_bytes(whole[: len(whole) // 2])  # a cut download
    _one_line_error(
        cli("ingest", str(photos), "-o", str(out), "--color", "rgb"), "rgb.jpg", "truncated"
    )
    assert not out.exists()
    (photos / "rgb.jpg").write_bytes(b"this is text, not a JPEG\n" * 10)  # a non-image named .jpg
    _one_line_error(
        cli("ingest", str(photos), "-o", str(out), "--color", "rgb"),
        "rgb.jpg",
        "not a readable JPEG",
    )
    assert not out.exists()
    (tmp_path / "empty").mkdir()
    _one_line_error(cli("ingest", str(tmp_path / "empty"), "-o", str(out)), "empty", "no file")
    (photos / "rgb.jpg").write_bytes(whole)
    _one_line_error(cli("ingest", str(photos), "-o", str(out)), "--color rgb")  # grey beside RGB
    assert not out.exists()

    (photos / "notes.txt").write_text("not an image")  # skipped, and said so
    r = cli("ingest", str(photos), "-o", str(out), "--color", "grey")
    assert r.returncode == 0, r.stderr
    assert "skipped 1 file(s) no reader recognises: notes.txt" in r.stdout
    _one_line_error(cli("ingest", str(photos), "-o", str(out), "--color", "grey"), "already exists")
    assert store_state(out) == "complete"


_SLOW_INGEST = """
import sys, time
from cubepipe.storage.readers import image

_read = image._read_image

def slow(*args, **kwargs):
    time.sleep(0.5)
    return _read(*args, **kwargs)

image._read_image = slow
from cubepipe.pipeline.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_killed_ingest_then_resume_gives_the_uninterrupted_store(
    cli, photos: Path, tmp_path: Path
) -> None:
    out, ref = tmp_path / "killed.zarr", tmp_path / "ref.zarr"
    script = tmp_path / "slow_ingest.py"
    script.write_text(_SLOW_INGEST)
    args = ["ingest", str(photos), "-o", str(out), "--color", "rgb"]
    env = {**os.environ, "CUBEPIPE_DEVICE": ""}
    proc = subprocess.Popen([sys.executable, str(script), *args], env=env)
    chunks = out / "cube" / "c"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if chunks.exists() and any(f.is_file() for f in chunks.rglob("*")):
            break
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert store_state(out) == "incomplete"  # never complete-looking
    _one_line_error(cli("ingest", *args[1:]), "incomplete", "--resume")

    r = cli("ingest", *args[1:], "--resume")
    assert r.returncode == 0, r.stderr
    assert cli("ingest", str(photos), "-o", str(ref), "--color", "rgb").returncode == 0
    a, b = open_cube(out), open_cube(ref)
    for name in ("cube", "height", "width"):
        np.testing.assert_array_equal(a[name].values, b[name].values, err_msg=name)
    assert list(a["source"].values) == list(b["source"].values)


def test_grey_images_forced_to_rgb_equal_pillow(cli, tmp_path: Path) -> None:
    d = tmp_path / "grey"
    d.mkdir()
    rng = np.random.default_rng(0)
    for i, shape in enumerate([(30, 40), (41, 17)]):
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(d / f"g{i}.jpg")
    out = tmp_path / "g.zarr"
    assert cli("ingest", str(d), "-o", str(out), "--color", "rgb").returncode == 0
    for name, image in open_images(out):
        assert list(image["band_name"].values) == ["R", "G", "B"]
        np.testing.assert_array_equal(image.values, pillow_rgb(d / name))


def test_export_of_an_image_data_set_writes_one_file_per_image(cli, tmp_path: Path) -> None:
    d = tmp_path / "imgs"
    d.mkdir()
    rng = np.random.default_rng(1)
    for i, shape in enumerate([(12, 9, 3), (7, 15, 3)]):
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(d / f"{i}.png")
    assert cli("ingest", str(d), "-o", str(tmp_path / "ds.zarr")).returncode == 0
    (tmp_path / "ex").mkdir()
    r = cli(
        "export",
        str(tmp_path / "ds.zarr"),
        "-o",
        str(tmp_path / "ex" / "a.png"),
        "--scale",
        "minmax",
    )
    assert r.returncode == 0, r.stderr
    assert len(list((tmp_path / "ex").glob("*.png"))) == 2
