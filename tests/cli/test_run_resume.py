"""`cubepipe run --resume`: a pipeline killed mid-write finishes with identical data."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from cubepipe.pipeline.synthetic import make_cube
from cubepipe.storage import history, open_cube, read_attrs, store_state, write_cube

from ..conftest import cubepipe_exe

_PIPELINE = {
    "device": "cpu",
    "chunks": {"y": 150, "x": 150},
    "steps": [
        {"stats": {"in": "src.zarr"}},
        {"standardize": {"out": "z.zarr"}},
        {"destandardize": {"out": "r.zarr"}},
    ],
}


def _workdir(root: Path, name: str) -> Path:
    """A directory holding the source store and the pipeline (relative paths)."""
    d = root / name
    d.mkdir()
    write_cube(make_cube((15, 1200, 1200), seed=3), d / "src.zarr", chunks={"y": 150, "x": 150})
    (d / "p.yaml").write_text(yaml.safe_dump(_PIPELINE))
    return d


def _digest(path: Path) -> str:
    return hashlib.sha256(open_cube(path)["cube"].values.tobytes()).hexdigest()


def _chunk_files(store: Path) -> int:
    chunks = store / "cube" / "c"
    return sum(f.is_file() for f in chunks.rglob("*")) if chunks.exists() else 0


def test_run_killed_mid_write_resumes_to_identical_data(tmp_path: Path, cli) -> None:
    clean = _workdir(tmp_path, "clean")
    assert cli("-q", "run", "p.yaml", cwd=clean).returncode == 0

    work = _workdir(tmp_path, "killed")
    proc = subprocess.Popen(
        [cubepipe_exe(), "-q", "--scheduler", "synchronous", "run", "p.yaml"],
        cwd=work,
        env={**os.environ, "CUBEPIPE_DEVICE": "cpu"},
    )
    out = work / "r.zarr"  # step 3 of 3: killed after a few of its 64 chunks
    seen_complete = False
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if out.exists():
            seen_complete |= store_state(out) == "complete"
            if _chunk_files(out) >= 5:
                break
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not seen_complete and store_state(out) == "incomplete"
    assert 0 < _chunk_files(out) < 64
    assert store_state(work / "z.zarr") == "complete"

    # Without --resume: the finished step's output is refused, and the message says how.
    again = cli("run", "p.yaml", cwd=work)
    assert again.returncode == 2
    assert "z.zarr already exists" in again.stderr and "run --resume" in again.stderr
    alone = cli("destandardize", "z.zarr", "-o", "r.zarr", cwd=work)
    assert alone.returncode == 2 and "incomplete" in alone.stderr and "--resume" in alone.stderr
    assert store_state(out) == "incomplete"

    resumed = cli("run", "p.yaml", "--resume", cwd=work)
    assert resumed.returncode == 0, resumed.stderr
    err = resumed.stderr
    assert "step 1/3 stats: skipped: src.zarr already holds its result" in err
    assert "step 2/3 standardize: skipped: z.zarr is complete" in err
    assert "step 3/3 destandardize: resuming r.zarr" in err
    assert store_state(out) == "complete"
    assert "resumed" in history(read_attrs(out))[-1]
    for name in ("z.zarr", "r.zarr"):
        assert _digest(work / name) == _digest(clean / name), name


@pytest.fixture
def finished(tmp_path: Path, cli, small_store: Path) -> Path:
    """A directory where a stats -> standardize -> export pipeline has run."""
    (tmp_path / "src.zarr").symlink_to(small_store)
    doc = {
        "steps": [
            {"stats": {"in": "src.zarr"}},
            {"standardize": {"out": "z.zarr", "method": "zscore"}},
            {"export": {"out": "z.tif", "bands": [0]}},
        ]
    }
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(doc))
    assert cli("-q", "--device", "cpu", "run", "p.yaml", cwd=tmp_path).returncode == 0
    return tmp_path


def test_resume_of_a_finished_run_skips_stores_and_remakes_files(finished: Path, cli) -> None:
    proc = cli("--device", "cpu", "run", "p.yaml", "--resume", cwd=finished)
    assert proc.returncode == 0, proc.stderr
    assert "step 2/3 standardize: skipped: z.zarr is complete and was made by the same" in (
        proc.stderr
    )
    assert "step 3/3 export: re-making z.tif" in proc.stderr
    assert [h["op"] for h in history(read_attrs(finished / "z.zarr"))][-1] == "standardize"
    # the same paths spelled differently are the same inputs
    absolute = yaml.safe_load((finished / "p.yaml").read_text())
    absolute["steps"][0]["stats"]["in"] = str(finished / "src.zarr")
    (finished / "abs.yaml").write_text(yaml.safe_dump(absolute))
    dry = cli("--device", "cpu", "run", "abs.yaml", "--resume", "--dry-run", cwd=finished)
    assert dry.returncode == 0, dry.stderr
    lines = dry.stdout.splitlines()
    assert lines[0].startswith("# step 1 (stats) skipped: ")
    assert lines[1].startswith("# step 2 (standardize) skipped: z.zarr is complete")
    assert " export --overwrite --output z.tif " in lines[2]


def test_resume_refuses_an_output_made_by_different_options(finished: Path, cli) -> None:
    doc = yaml.safe_load((finished / "p.yaml").read_text())
    doc["steps"][1]["standardize"]["method"] = "minmax"
    (finished / "p.yaml").write_text(yaml.safe_dump(doc))
    proc = cli("run", "p.yaml", "--resume", cwd=finished)
    assert proc.returncode == 2
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("cubepipe: error: step 2 (standardize) failed: z.zarr is complete ")
    assert "method was 'zscore' there, 'minmax' in this step" in line
    assert "--overwrite" in line
    # the step's own `overwrite: true` says what to do with it: it is replaced
    doc["steps"][1]["standardize"]["overwrite"] = True
    (finished / "p.yaml").write_text(yaml.safe_dump(doc))
    proc = cli("run", "p.yaml", "--resume", cwd=finished)
    assert proc.returncode == 0, proc.stderr
    assert "replacing z.zarr (method was 'zscore' there" in proc.stderr
    assert history(read_attrs(finished / "z.zarr"))[-1]["params"]["method"] == "minmax"


def test_resume_and_overwrite_together_exit_2(finished: Path, cli) -> None:
    proc = cli("run", "p.yaml", "--resume", "--overwrite", cwd=finished)
    assert proc.returncode == 2
    assert "not both" in proc.stderr and proc.stderr.count("\n") == 1
