"""`cubepipe doctor` and the device choice check the CUDA libraries with a tiny call of
each, so a GPU whose cuFFT (say) is missing is reported before any work, never at the
first FFT after `--device auto` said GPU."""

from __future__ import annotations

import json

import pytest

from cubepipe.pipeline import backend
from cubepipe.storage.errors import DeviceError

from ..conftest import run_cli

pytestmark = pytest.mark.gpu


@pytest.fixture
def fresh_probe(monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    monkeypatch.setattr(backend, "_LIBRARIES", None)
    yield
    backend._LIBRARIES = None


def test_doctor_says_every_library_works(fresh_probe) -> None:  # type: ignore[no-untyped-def]
    res = run_cli("doctor", "--json")
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    assert report["gpu"]["usable"] is True
    assert report["gpu"]["libraries"] == {"kernels": "", "cuBLAS": "", "cuFFT": "", "cuSOLVER": ""}
    assert report["auto_device"]["device"] == "gpu"


def test_a_missing_cufft_is_reported_before_any_work(
    fresh_probe, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    import cupy  # noqa: PLC0415

    def no_cufft(*_a, **_k):  # type: ignore[no-untyped-def]
        raise OSError("libcufft.so.11: cannot open shared object file: No such file")

    monkeypatch.setattr(cupy.fft, "rfft", no_cufft)
    auto = backend.resolve_device("auto")
    assert auto.name == "cpu" and "cuFFT failed" in auto.reason and "cubepipe[gpu]" in auto.reason
    with pytest.raises(DeviceError, match=r"cuFFT failed \(cuFFT: OSError: libcufft"):
        backend.resolve_device("gpu")
    res = run_cli("doctor")
    assert res.returncode == 2
    assert "cuFFT     FAILED: OSError: libcufft.so.11" in res.stdout
    assert "cuBLAS    ok" in res.stdout
    res = run_cli("--device", "gpu", "doctor")
    assert res.returncode == 2 and "cuFFT failed" in res.stderr
