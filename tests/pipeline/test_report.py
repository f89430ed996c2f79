"""The HTML report: self-contained, the images it promises, honest colour scales and tables."""

from __future__ import annotations

import re
import shutil
import sys
from html.parser import HTMLParser
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import pytest
import xarray as xr

from cubepipe.pipeline.compression.api import prepare_compress
from cubepipe.pipeline.report.build import band_histograms, build_report
from cubepipe.pipeline.report.plots import DIVERGING, image_scale
from cubepipe.pipeline.report.write import write_report
from cubepipe.pipeline.stats.fit import fit_stats
from cubepipe.pipeline.synthetic import make_cube
from cubepipe.storage import InputError, StoreExistsError, open_cube, write_cube
from cubepipe.storage.update import add_variables


class _Page(HTMLParser):
    """Collects <img> attributes, every src/href, and statistics table cells."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.images: list[dict[str, str]] = []
        self.links: list[str] = []
        self.tags: set[str] = set()
        self.tables: list[list[list[dict[str, str]]]] = []
        self._cls: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list) -> None:
        a = {k: v or "" for k, v in attrs}
        self.tags.add(tag)
        self.links += [a[k] for k in ("src", "href") if k in a]
        if tag == "img":
            self.images.append(a)
        elif tag == "table":
            self._cls.append(a.get("class", ""))
            self.tables.append([]) if a.get("class") == "stats" else None
        elif tag == "tr" and self._cls and self._cls[-1] == "stats":
            self.tables[-1].append([])
        elif tag == "td" and self._cls and self._cls[-1] == "stats":
            self.tables[-1][-1].append(a)

    def stats_rows(self) -> list[list[list[dict[str, str]]]]:
        """Body rows of each statistics table (the header row has no <td>)."""
        return [[row for row in table if row] for table in self.tables]

    def handle_endtag(self, tag: str) -> None:
        if tag == "table":
            self._cls.pop()

    def kinds(self) -> dict[str, list[dict[str, str]]]:
        out: dict[str, list[dict[str, str]]] = {}
        for img in self.images:
            out.setdefault(img["data-kind"], []).append(img)
        return out


def _assert_self_contained(page: _Page, text: str) -> None:
    assert all(link.startswith(("data:", "#")) for link in page.links), page.links
    assert not re.search(r"https?://|url\(|@import", text)
    assert "script" not in page.tags and "iframe" not in page.tags
    assert all(img["src"].startswith("data:image/png;base64,") for img in page.images)


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A cube with saved stats, its PCA (compress-like) store, and a 2-image store."""
    d = tmp_path_factory.mktemp("report")
    ds = make_cube("small", seed=3, chunks={"y": 64, "x": 96})
    cube = write_cube(ds, d / "cube.zarr", op="fixture", chunks={"y": 64, "x": 96})
    add_variables(cube, fit_stats(open_cube(cube)).compute(), op="stats", params={})
    job = prepare_compress(open_cube(cube), components=3)  # what `cubepipe compress` writes
    comp = job.write(d / "pca.zarr")
    two = xr.concat([ds["cube"], -ds["cube"]], dim="image").to_dataset(name="cube")
    stack = write_cube(two, d / "stack.zarr", op="fixture")
    return {"cube": cube, "pca": comp, "stack": stack}


def test_histograms_are_chunkwise_float64_and_match_numpy() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 4, 37, 29))
    x[0, 1, :5] = np.nan
    x[1, 2, 3, 4] = np.inf
    arr = xr.DataArray(da.from_array(x, chunks=(1, 2, 10, 8)), dims=("image", "band", "y", "x"))
    edges = np.linspace(np.nanmin(x, axis=(0, 2, 3)), 3.0, 12, axis=1)
    with dask.config.set(scheduler="sync"):
        lazy = band_histograms(arr, edges)
    assert isinstance(lazy, da.Array) and lazy.dtype == np.float64 and lazy.shape == (4, 11)
    counts = lazy.compute()
    for b in range(4):
        v = x[:, b].ravel()
        want = np.histogram(v[np.isfinite(v)], bins=11, range=(edges[b, 0], edges[b, -1]))[0]
        np.testing.assert_array_equal(counts[b], want)


def test_building_the_histogram_graph_reads_nothing(no_compute) -> None:
    arr = xr.DataArray(da.ones((3, 40, 40), chunks=(3, 16, 16)), dims=("band", "y", "x"))
    with no_compute:
        band_histograms(arr, np.tile(np.linspace(0, 2, 5), (3, 1)))


def test_signed_quicklooks_use_a_diverging_map_centred_at_zero() -> None:
    s = image_scale(np.array([[-5.0, 1.0], [np.nan, 2.0]]))
    assert (s.cmap, s.vcenter) == (DIVERGING, 0.0) and s.vmin == -s.vmax and s.vmax > 0
    norm = s.norm()
    assert norm(0.0) == pytest.approx(0.5) and norm(-1.0) < 0.5 < norm(1.0)
    assert not np.allclose(s.colormap().get_bad()[:3], s.colormap()(0.5)[:3])  # NaN not white
    positive = image_scale(np.arange(10.0).reshape(2, 5))
    assert positive.vcenter is None and positive.cmap != DIVERGING


def test_report_of_a_cube_store(stores: dict[str, Path]) -> None:
    pyplot_before = "matplotlib.pyplot" in sys.modules
    text = build_report(stores["cube"], title="<b>Scene</b> & more")
    assert ("matplotlib.pyplot" in sys.modules) == pyplot_before  # no pyplot, no global state
    page = _Page(text)
    _assert_self_contained(page, text)
    kinds = page.kinds()
    assert set(kinds) == {"quicklook", "histogram"}
    assert len(kinds["quicklook"]) == len(kinds["histogram"]) == 15
    assert kinds["quicklook"][0]["alt"] == "quick-look of band 0 (400 nm)"
    assert kinds["histogram"][14]["alt"] == "histogram of band 14 (2500 nm)"
    saved = open_cube(stores["cube"])
    for i, img in enumerate(kinds["quicklook"]):
        # the synthetic bands are signed: diverging colours, symmetric, centred at 0
        assert saved["stats_min"].values[i] < 0 < saved["stats_max"].values[i]
        assert img["data-cmap"] == DIVERGING and float(img["data-vcenter"]) == 0.0
        assert float(img["data-vmin"]) == -float(img["data-vmax"]) < 0
    for i, img in enumerate(kinds["histogram"]):
        assert int(img["data-count"]) == saved["stats_count"].values[i]
        assert float(img["data-min"]) == saved["stats_min"].values[i]
    # one table: the saved statistics (they describe the cube), values exactly as stored
    assert "saved by `cubepipe stats`" in text and "computed for this report" not in text
    (table,) = page.stats_rows()
    assert len(table) == 15
    for i, row in enumerate(table):
        cells = [float(c["data-value"]) for c in row if "data-value" in c]
        want = [saved["wavelength"].values[i]] + [
            saved[f"stats_{k}"].values[i] for k in ("mean", "std", "min", "max")
        ]
        assert cells == want
    assert "&lt;b&gt;Scene&lt;/b&gt; &amp; more" in text and "<b>Scene" not in text
    assert "<h2>History</h2>" in text and ">stats<" in text and ">fixture<" in text


def test_report_of_a_pca_store_with_its_original(stores: dict[str, Path]) -> None:
    text = build_report(stores["pca"], original=stores["cube"], bins=32, size=100)
    page = _Page(text)
    _assert_self_contained(page, text)
    kinds = page.kinds()
    assert {k: len(v) for k, v in kinds.items()} == {
        "component": 3,
        "histogram": 3,
        "scree": 1,
        "error-map": 1,
    }
    assert kinds["component"][2]["alt"] == "component 2 image (scores)"
    assert kinds["scree"][0]["alt"].startswith("scree plot")
    assert kinds["error-map"][0]["alt"].startswith("reconstruction error map")
    # the saved stats are the input's (labelled so); the scores' are computed
    assert "statistics of the compressed input" in text
    assert "Statistics of &#x27;scores&#x27;, computed for this report" in text
    assert [len(t) for t in page.stats_rows()] == [15, 3]
    # error map at every 3rd pixel (size 100 < 240): a NumPy reconstruction agrees
    p = open_cube(stores["pca"])
    x = open_cube(stores["cube"])["cube"].values[:, ::3, ::3].astype(np.float64)
    s = p["scores"].values[:, ::3, ::3].astype(np.float64)
    w = p["pca_components"].values
    xhat = np.einsum("kb,kyx->byx", w, s) * p["pca_scale"].values[:, None, None]
    xhat = (xhat + p["pca_mean"].values[:, None, None]).astype(np.float32)
    want = np.sqrt(np.nanmean(np.mean((xhat - x) ** 2, axis=0)))
    assert float(kinds["error-map"][0]["data-rmse"]) == pytest.approx(want, rel=1e-9)
    with pytest.raises(InputError, match="does not match the reconstruction"):
        build_report(stores["pca"], original=stores["stack"])


def test_error_map_of_a_cube_against_its_original(stores: dict[str, Path]) -> None:
    # a cube compared with itself (as a `reconstruct` output with --original): zero error
    kinds = _Page(build_report(stores["cube"], original=stores["cube"], max_bands=1)).kinds()
    assert float(kinds["error-map"][0]["data-rmse"]) == 0.0


def test_stores_with_a_leading_image_dim_show_the_first_image(stores: dict[str, Path]) -> None:
    text = build_report(stores["stack"], max_bands=4)
    kinds = _Page(text).kinds()
    assert len(kinds["quicklook"]) == 4 and "image 0 of 2" in text
    assert [img["alt"] for img in kinds["quicklook"]] == [
        f"quick-look of band {i}" + f" ({400 + 150 * i:g} nm)" for i in (0, 5, 9, 14)
    ]
    # no saved stats: computed over both images (the second is the negated first)
    assert "computed for this report" in text
    counts = [int(img["data-count"]) for img in kinds["histogram"]]
    one = int(open_cube(stores["cube"])["stats_count"].values[0])
    assert counts == [2 * one] * 4
    assert float(kinds["histogram"][0]["data-min"]) == -float(kinds["histogram"][0]["data-max"])


def test_write_is_atomic_refuses_to_overwrite_and_escapes_paths(
    stores: dict[str, Path], tmp_path: Path
) -> None:
    odd = shutil.copytree(stores["cube"], tmp_path / 'a<b>&"c.zarr')
    out = write_report(odd, tmp_path / "r.html", max_bands=2)
    text = out.read_text()
    assert text.startswith("<!DOCTYPE html>")
    assert "a&lt;b&gt;&amp;&quot;c.zarr" in text and "a<b>" not in text
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([odd.name, "r.html"])
    with pytest.raises(StoreExistsError, match="--overwrite"):
        write_report(stores["cube"], out)
    with pytest.raises(InputError, match="directory .*no does not exist"):
        write_report(stores["cube"], tmp_path / "no" / "r.html")
    with pytest.raises(InputError, match="no variable 'nope'"):
        write_report(stores["cube"], out, overwrite=True, variable="nope")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([odd.name, "r.html"])  # no temp
    write_report(stores["pca"], out, overwrite=True, max_bands=1)
    assert 'data-kind="scree"' in out.read_text()
