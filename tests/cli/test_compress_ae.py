"""`cubepipe compress --method ae|vae`, `reconstruct` and `compress --model` through the
real CLI, with PyTorch and without it (decoding and re-applying a stored model need no
PyTorch; training without it is a one-line error naming the extra)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from cubepipe.pipeline.cli import main
from cubepipe.pipeline.synthetic import make_cube
from cubepipe.storage import history, open_cube, read_attrs, write_cube

needs_torch = pytest.mark.skipif(
    importlib.util.find_spec("torch") is None, reason="PyTorch (extra 'ae') is not installed"
)
TINY = ("--hidden", "16,8", "--epochs", "2", "--train-pixels", "2000", "--batch-size", "256")
_NO_TORCH = (
    "import sys; sys.modules['torch'] = None; "  # `import torch` now raises ImportError
    "from cubepipe.pipeline.cli import run; sys.argv[0] = 'cubepipe'; run()"
)


def run_without_torch(*args: str) -> subprocess.CompletedProcess:
    """The CLI in a fresh interpreter where PyTorch cannot be imported."""
    return subprocess.run(
        [sys.executable, "-c", _NO_TORCH, *args],
        capture_output=True,
        text=True,
        env={**os.environ, "CUBEPIPE_DEVICE": ""},
        timeout=300,
    )


@pytest.fixture
def cube_store(tmp_path: Path) -> Path:
    """10 bands x 48 x 56 with a NaN disc, chunks 24 x 28."""
    ds = make_cube((10, 48, 56), seed=4, chunks={"y": 24, "x": 28})
    return write_cube(ds, tmp_path / "in.zarr", chunks={"y": 24, "x": 28})


def test_training_without_torch_is_a_one_line_error_naming_the_extra(
    cube_store: Path, tmp_path: Path
) -> None:
    out = tmp_path / "x.zarr"
    proc = run_without_torch(
        "compress", str(cube_store), "-o", str(out), "-k", "2", "--method", "ae"
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        "cubepipe: error: --method ae|vae (training an autoencoder) needs the Python package "
        "'torch', which is not installed; install it with: pip install 'cubepipe[ae]'"
    )
    assert not out.exists()


@needs_torch
def test_ae_compress_reconstruct_and_reuse_the_model(
    cli, cube_store: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "ae.zarr"
    proc = cli("compress", str(cube_store), "-o", str(out), "-k", "3", "--method", "ae", *TINY)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("compress: ae (mlp) with 3 latent components; reconstruction")
    assert "PSNR" in proc.stdout and "spectral angle" in proc.stdout
    assert "ae epoch 1/2: train loss" in proc.stderr and "held-out" in proc.stderr
    c = open_cube(out)
    assert c["scores"].dims == ("component", "y", "x") and c["scores"].dtype == np.float32
    assert c["scores"].shape == (3, 48, 56)
    fitted = [v for v in c.data_vars if v.startswith("ae_")]
    assert {"ae_mean", "ae_scale", "ae_enc_skip_weight", "ae_dec_out_bias"} <= set(fitted)
    assert all(c[v].dtype == np.float64 for v in fitted) and "stats_mean" in c
    spec = c["ae_mean"].attrs["cubepipe_model"]
    assert spec["kind"] == "ae" and spec["hidden"] == [16, 8] and spec["init"] == "pca"
    entry = history(read_attrs(out))[-1]
    assert entry["params"]["method"] == "ae" and entry["params"]["architecture"] == "mlp"
    res = entry["results"]
    assert res["rmse"] > 0 and res["training"]["epochs_run"] == 2
    assert res["training"]["heldout_mse"] <= res["training"]["heldout_mse_initial"]
    info = json.loads(cli("info", str(out), "--json").stdout)
    assert "ae_enc_skip_weight" in info["fitted"]

    # Decoding and re-applying the stored model need nothing but the store: no PyTorch.
    rec = tmp_path / "r.zarr"
    proc = run_without_torch("reconstruct", str(out), "-o", str(rec))
    assert proc.returncode == 0, proc.stderr
    x = open_cube(cube_store)["cube"].values
    xr_ = open_cube(rec)["cube"].values
    ok = ~np.isnan(x).any(0)
    rmse = float(np.sqrt(np.mean((xr_[:, ok].astype(np.float64) - x[:, ok]) ** 2)))
    assert rmse == pytest.approx(res["rmse"], rel=1e-5)
    assert np.isnan(xr_[:, ~ok]).all() and np.isnan(c["scores"].values[:, ~ok]).all()

    again = tmp_path / "again.zarr"
    proc = run_without_torch(
        "-q", "compress", str(cube_store), "-o", str(again), "--model", str(out)
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "" and proc.stdout.startswith("compress: ae (mlp)")
    np.testing.assert_array_equal(open_cube(again)["scores"].values, c["scores"].values)
    assert history(read_attrs(again))[-1]["results"]["rmse"] == res["rmse"]

    for args, needle in (
        (("--model", str(out), "--method", "pca"), "does not match the ae model"),
        (("-k", "2", "--method", "ae", "--variance", "0.5"), "--variance chooses K for PCA"),
        (("-k", "2", "--method", "vae", "--whiten"), "--whiten applies to --method pca"),
        (("--method", "ae"), "give --components K"),
        (("-k", "2", "--method", "ae", "--sample", "0.5"), "use --train-pixels"),
        (("-k", "2", "--method", "ae", "--hidden", "8,x"), "positive widths"),
    ):
        code = main(["compress", str(cube_store), "-o", str(tmp_path / "bad.zarr"), *args])
        assert code == 2, args
        err = capsys.readouterr().err.strip().splitlines()
        assert needle in err[-1], (needle, err)  # one line: ours, or click's usage error
        assert not (tmp_path / "bad.zarr").exists()


@needs_torch
def test_vae_with_convolutions_reports_its_kl_term(
    cube_store: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "vae.zarr"
    args = ["compress", str(cube_store), "-o", str(out), "-k", "2", "--method", "vae"]
    assert main([*args, "--architecture", "conv", "--seed", "1", *TINY]) == 0
    printed = capsys.readouterr()
    assert "compress: vae (conv) with 2 latent components" in printed.out
    assert "mean KL" in printed.out and "vae epoch 2/2" in printed.err
    c = open_cube(out)
    res = history(read_attrs(out))[-1]["results"]
    assert res["kl_nats"] > 0 and res["training"]["heldout_kl"] > 0
    assert "vae_logvar_weight" in c and "vae_enc_conv_0_weight" in c
    assert c["vae_enc_conv_0_weight"].dims == (
        "vae_enc_conv_0_out",
        "vae_enc_conv_0_in",
        "vae_enc_conv_0_tap",
    )
    assert main(["-q", "reconstruct", str(out), "-o", str(tmp_path / "r.zarr")]) == 0
    assert open_cube(tmp_path / "r.zarr")["cube"].shape == (10, 48, 56)


@needs_torch
def test_a_pipeline_step_trains_an_autoencoder(cli, cube_store: Path, tmp_path: Path) -> None:
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(
        yaml.safe_dump(
            {
                "steps": [
                    {
                        "compress": {
                            "in": str(cube_store),
                            "out": "c.zarr",
                            "method": "ae",
                            "components": 2,
                            "hidden": [8, 4],
                            "epochs": 1,
                            "train-pixels": 500,
                            "seed": 2,
                        }
                    },
                    {"reconstruct": {"out": "r.zarr"}},
                ]
            }
        )
    )
    proc = cli("--device", "cpu", "run", str(pipeline), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    entry = history(read_attrs(tmp_path / "c.zarr"))[-1]
    assert entry["params"]["method"] == "ae" and entry["params"]["hidden"] == [8, 4]
    assert entry["params"]["train_pixels"] == 500 and entry["params"]["seed"] == 2
    assert open_cube(tmp_path / "c.zarr")["ae_mean"].attrs["cubepipe_model"]["n_samples"] == 500
    ops = [h["op"] for h in history(read_attrs(tmp_path / "r.zarr"))]
    assert ops[-2:] == ["compress", "reconstruct"]


def test_report_of_an_autoencoder_store_maps_its_reconstruction_error(
    cli, cube_store: Path, tmp_path: Path
) -> None:
    out = tmp_path / "ae.zarr"
    proc = cli("compress", str(cube_store), "-o", str(out), "-k", "3", "--method", "ae", *TINY)
    assert proc.returncode == 0, proc.stderr
    page = tmp_path / "ae.html"
    proc = cli("report", str(out), "-o", str(page), "--original", str(cube_store))
    assert proc.returncode == 0, proc.stderr
    text = page.read_text()
    assert text.count('data-kind="error-map"') == 1
    # the map's RMS agrees with the decoder's reconstruction written by `reconstruct`
    rec = tmp_path / "rec.zarr"
    assert cli("reconstruct", str(out), "-o", str(rec)).returncode == 0
    x = open_cube(cube_store)["cube"].values.astype(np.float64)
    r = open_cube(rec)["cube"].values.astype(np.float64)
    ok = ~np.isnan(x).any(0)
    res = history(read_attrs(out))[-1]["results"]
    assert np.sqrt(np.mean((r - x)[:, ok] ** 2)) == pytest.approx(res["rmse"], rel=1e-4)
    xv, rv = x[:, ok], r[:, ok]  # the spectral angle, by the textbook formula
    cos = np.sum(xv * rv, 0) / np.linalg.norm(xv, axis=0) / np.linalg.norm(rv, axis=0)
    assert np.degrees(np.mean(np.arccos(np.clip(cos, -1, 1)))) == pytest.approx(
        res["sam_deg"], rel=1e-3
    )
