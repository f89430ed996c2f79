"""``cubepipe ingest`` over the corpus of hostile inputs (tests/reliability/corpus.py).

For every case: exit 0 with exactly the data an independent reader gets from the source,
or exit 2 with one line on stderr naming the file and no store marked complete. Never
exit 1 (a bug), never a signal, never a hang, never an unpickled payload.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from .corpus import CASES, Case, bits_of

#: Seconds a case that could hang (FIFO, character device) may take in its own process.
HANG_TIMEOUT = 60


def _process(*args: str) -> tuple[int, str]:
    exe = Path(sys.executable).with_name("cubepipe")
    env = {**os.environ, "CUBEPIPE_DEVICE": ""}
    try:
        r = subprocess.run(
            [str(exe), *args], capture_output=True, text=True, timeout=HANG_TIMEOUT, env=env
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"cubepipe {' '.join(args)} hung: no answer in {HANG_TIMEOUT} s")
    return r.returncode, r.stderr


def _complete(out: Path) -> bool:
    if not out.exists():
        return False
    try:
        attrs = xr.open_zarr(out).attrs
    except Exception:  # not even a readable store: certainly not a complete one
        return False
    return attrs.get("cubepipe", {}).get("complete") is True


@pytest.mark.parametrize(
    "case", [pytest.param(c, id=c.name, marks=[pytest.mark.slow] if c.slow else []) for c in CASES]
)
def test_ingest_input(case: Case, cli, tmp_path: Path) -> None:
    folder = tmp_path / "in"
    src = case.make(folder)
    out = tmp_path / "out.zarr"
    args = ("-q", "ingest", str(src), "-o", str(out), *case.args)
    if case.process:
        code, stderr = _process(*args)
    else:
        r = cli(*args)
        code, stderr = r.returncode, r.stderr
    assert not (folder / case.marker).exists(), "a pickle in the input was unpickled"
    assert code >= 0, f"killed by signal {-code}: {stderr}"
    assert code != 1, f"internal error (exit 1) instead of a clear message: {stderr}"
    if code == 0:
        assert case.expect in ("ok", "either"), f"accepted a bad input: {stderr}"
        assert _complete(out), "exit 0 but the store is not marked complete"
        expected = case.reference(Path(src))
        got = xr.open_zarr(out, mask_and_scale=False)["cube"].values
        assert got.dtype == np.dtype(case.dtype)
        assert got.shape == expected.shape
        np.testing.assert_array_equal(bits_of(got), bits_of(expected.astype(case.dtype)))
        return
    assert code == 2, f"exit {code}: {stderr}"
    assert case.expect in ("error", "either"), f"refused a good input: {stderr}"
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, f"expected a one-line error, got:\n{stderr}"
    assert lines[0].startswith("cubepipe: error: ")
    mention = case.mentions or Path(src).stem
    assert mention in lines[0], f"the message does not name {mention!r}: {lines[0]}"
    assert not _complete(out), "a failed ingest left a store marked complete"
