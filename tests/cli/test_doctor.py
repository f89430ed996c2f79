"""`cubepipe doctor` on a machine without CuPy: it says so and exits 0 (a CPU-only
installation is a working one)."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest


@pytest.mark.skipif(importlib.util.find_spec("cupy") is not None, reason="CuPy is importable")
def test_doctor_without_cupy(cli) -> None:  # type: ignore[no-untyped-def]
    res = cli("doctor", "--json")
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    assert report["gpu"]["usable"] is False and "cupy" in report["gpu"]["why"]
    assert report["auto_device"]["device"] == "cpu"
    assert report["packages"]["numpy"] == np.__version__
    text = cli("doctor").stdout
    assert "GPU: not usable" in text and "--device auto picks: auto: using CPU" in text
