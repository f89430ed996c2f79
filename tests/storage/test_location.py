"""URLs given where a path is expected: file:// is a local path; object storage URLs are
refused in one line and nothing is written (they used to become a local directory
``./s3:/bucket/...``, exit 0)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cubepipe.storage import InputError, open_cube, storage_options, store_state, write_cube
from cubepipe.storage.errors import MissingDependencyError
from cubepipe.storage.location import is_url, local_path, options_for, parse_storage_options

URLS = ["s3://bucket/x.zarr", "gs://b/x.zarr", "az://c/x.zarr", "memory://x.zarr",
        "https://example.org/x.zarr", "S3://Bucket/X.zarr"]  # fmt: skip


@pytest.mark.parametrize("url", URLS)
def test_object_storage_urls_are_refused_by_name(url: str) -> None:
    assert is_url(url)
    with pytest.raises(InputError, match=r"on object storage \(\w+://\) is not supported yet"):
        local_path(url)


def test_file_urls_and_plain_paths() -> None:
    assert local_path("file:///data/a%20b.zarr") == Path("/data/a b.zarr")
    assert local_path("file://localhost/data/x") == Path("/data/x")
    assert local_path("rel/x.zarr") == Path("rel/x.zarr")
    assert local_path("C:/data/x.zarr") == Path("C:/data/x.zarr")  # a drive, not a URL
    assert not is_url("s3:/bucket/x.zarr") and not is_url("x://")  # no scheme://
    with pytest.raises(InputError, match="another host"):
        local_path("file://server/share/x.zarr")


def test_the_library_refuses_urls_and_takes_file_urls(tmp_path: Path, small_cube) -> None:
    # Reading a store on object storage goes through its fsspec backend (a real S3 server
    # in test_object_storage.py); without the backend, one line naming the package.
    with pytest.raises(MissingDependencyError, match="'gcsfs'"):
        open_cube("gs://bucket/in.zarr")
    with pytest.raises(MissingDependencyError, match="'adlfs'"):
        store_state("az://container/in.zarr")
    with pytest.raises(MissingDependencyError, match="'gcsfs'"):
        write_cube(small_cube, "gs://bucket/out.zarr")
    out = write_cube(small_cube, f"file://{tmp_path}/f.zarr")
    assert out == tmp_path / "f.zarr" and store_state(out) == "complete"
    a = open_cube(f"file://{out}")["cube"].values
    np.testing.assert_array_equal(a, small_cube["cube"].values)


@pytest.mark.parametrize(
    "args",
    [
        ["ingest", "x.npy", "-o", "gs://bucket/x.zarr"],
        ["ingest", "gs://bucket/x.npy", "-o", "x2.zarr"],
        ["standardize", "gs://bucket/in.zarr", "-o", "z.zarr"],
        ["standardize", "x.zarr", "-o", "az://bucket/z.zarr"],
        ["stats", "gs://bucket/in.zarr"],
        ["export", "az://b/x.zarr", "-o", "a.tif"],
        ["export", "x.zarr", "-o", "gs://b/a.tif"],
        ["compress", "x.zarr", "-k", "2", "--model", "gs://b/m.zarr", "-o", "c.zarr"],
        ["info", "az://c/x.zarr"],
    ],
    ids=lambda a: "-".join(a[:1] + [x.split(":")[0] for x in a if "://" in x]),
)
def test_the_cli_refuses_object_storage_and_writes_nothing(cli, tmp_path: Path, args) -> None:
    np.save(tmp_path / "x.npy", np.arange(2 * 8 * 8, dtype=np.float32).reshape(2, 8, 8) - 9)
    assert cli("-q", "ingest", "x.npy", "-o", "x.zarr", cwd=tmp_path).returncode == 0
    before = sorted(p.name for p in tmp_path.iterdir())
    res = cli(*args, cwd=tmp_path)
    assert res.returncode == 2, res.stderr
    # writing there, or reading without the backend (gcsfs, adlfs: not installed here)
    assert "is not supported yet" in res.stderr or "needs the Python package" in res.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no ./s3: directory


def test_file_urls_work_through_the_cli_and_pipelines(cli, tmp_path: Path) -> None:
    x = np.arange(2 * 8 * 8, dtype=np.float32).reshape(2, 8, 8) - 9
    np.save(tmp_path / "x.npy", x)
    res = cli("-q", "ingest", f"file://{tmp_path}/x.npy", "-o", f"file://{tmp_path}/x.zarr")
    assert res.returncode == 0, res.stderr
    np.testing.assert_array_equal(open_cube(tmp_path / "x.zarr")["cube"].values, x)
    (tmp_path / "p.yaml").write_text(
        f"steps:\n  - standardize: {{in: 'file://{tmp_path}/x.zarr', out: z.zarr}}\n"
        "  - reconstruct: {in: 'gs://b/c.zarr', out: r.zarr}\n"
    )
    res = cli("run", "p.yaml", cwd=tmp_path)
    assert res.returncode == 2
    assert "step 2 (reconstruct) failed: reading gs:// stores needs the Python package" in (
        res.stderr
    )
    (tmp_path / "p.yaml").write_text(
        f"steps:\n  - standardize: {{in: 'file://{tmp_path}/x.zarr', out: z2.zarr}}\n"
    )
    res = cli("-q", "run", "p.yaml", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    z = open_cube(tmp_path / "z2.zarr")["cube"].values.astype(np.float64)
    ref = x.astype(np.float64)
    mean, std = ref.mean(axis=(1, 2), keepdims=True), ref.std(axis=(1, 2), keepdims=True)
    np.testing.assert_allclose(z, (ref - mean) / std, rtol=1e-6, atol=1e-6)


def test_storage_options_parse_json_values_and_dotted_keys() -> None:
    assert parse_storage_options(
        [
            "endpoint_url=http://127.0.0.1:9000",
            "anon=true",
            "client_kwargs.region_name=eu-west-1",
            "client_kwargs.verify=false",
            "retries=3",
            "profile=a=b",
        ]
    ) == {
        "endpoint_url": "http://127.0.0.1:9000",
        "anon": True,
        "client_kwargs": {"region_name": "eu-west-1", "verify": False},
        "retries": 3,
        "profile": "a=b",
    }
    for bad in ("anon", "=1", "a..b=1", ".a=1"):
        with pytest.raises(InputError, match="expected KEY=VALUE"):
            parse_storage_options([bad])
    with pytest.raises(InputError, match="already given a value"):
        parse_storage_options(["a=1", "a.b=2"])


def test_storage_options_in_a_with_block_are_restored() -> None:
    assert options_for("s3://b/x") == {}
    with storage_options(anon=True):
        assert options_for("s3://b/x") == {"anon": True}
        with storage_options(endpoint_url="http://h"):
            assert options_for("s3://b/x") == {"anon": True, "endpoint_url": "http://h"}
        assert options_for("s3://b/x") == {"anon": True}
    assert options_for("s3://b/x") == {}
