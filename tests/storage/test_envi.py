"""ENVI reader: header parsing, every interleave x byte order x data type, laziness, real files."""

from __future__ import annotations

from pathlib import Path

import dask
import numpy as np
import pytest

from cubepipe.storage.errors import CubepipeWarning, FormatError
from cubepipe.storage.readers import READERS, detect_format, open_source
from cubepipe.storage.readers.envi import DATA_TYPES, find_pair, open_envi, parse_header

HERE = Path(__file__).resolve()
CORN = HERE.parents[1] / "data" / "envi" / "corn-kernel-hyperspectral.hdr"
SHARED = HERE.parents[2].parent / "shared" / "data" / "envi"
needs_shared = pytest.mark.skipif(
    not SHARED.is_dir(), reason=f"shared real data not found at {SHARED} (clone ../shared beside)"
)
ODD = {"band": 2, "y": 3, "x": 4}
# File order of (band, y, x) per interleave: the transpose that writes the file.
TO_FILE = {"bsq": (0, 1, 2), "bil": (1, 0, 2), "bip": (1, 2, 0)}


def sample(code: int, shape: tuple[int, int, int] = (3, 5, 7), seed: int = 0) -> np.ndarray:
    """Values covering the dtype: extremes for integers, NaN/inf/-0/subnormal for floats."""
    dt = np.dtype(DATA_TYPES[code])
    rng = np.random.default_rng(seed)
    if dt.kind == "f":
        a = rng.normal(0, 1e3, size=shape).astype(dt)
        specials = [np.nan, np.inf, -np.inf, -0.0, np.finfo(dt).smallest_subnormal, -1.5]
        a.reshape(-1)[: len(specials)] = specials
        return a
    info = np.iinfo(dt)
    a = rng.integers(info.min, info.max, size=shape, dtype=dt, endpoint=True)
    a.reshape(-1)[:2] = [info.min, info.max]
    return a


def write_envi(
    folder: Path,
    cube: np.ndarray,
    *,
    code: int,
    interleave: str = "bsq",
    byte_order: int | None = 0,
    offset: int = 0,
    extra: str = "",
    name: str = "scene",
    binary_suffix: str = ".img",
) -> Path:
    """Write ``cube`` (band, y, x) as an ENVI pair; returns the header path."""
    bands, lines, samples = cube.shape
    dt = np.dtype(DATA_TYPES[code]).newbyteorder("<" if byte_order in (0, None) else ">")
    body = np.ascontiguousarray(cube.transpose(TO_FILE[interleave])).astype(dt).tobytes()
    (folder / f"{name}{binary_suffix}").write_bytes(b"\x5a" * offset + body)
    text = [
        "ENVI",
        f"samples = {samples}",
        f"lines = {lines}",
        f"bands = {bands}",
        f"data type = {code}",
        f"interleave = {interleave}",
    ]
    text += [f"header offset = {offset}"] if offset else []
    text += [] if byte_order is None else [f"byte order = {byte_order}"]
    hdr = folder / f"{name}.hdr"
    hdr.write_text("\n".join(text) + "\n" + extra)
    return hdr


def bits(a: np.ndarray) -> np.ndarray:
    """Bit patterns, so NaN and -0.0 compare exactly."""
    return a.view(f"u{a.dtype.itemsize}")


@pytest.mark.parametrize("code", sorted(DATA_TYPES))
@pytest.mark.parametrize("byte_order", [0, 1])
@pytest.mark.parametrize("interleave", ["bsq", "bil", "bip"])
def test_every_interleave_byte_order_and_type_reads_exactly(tmp_path, interleave, byte_order, code):
    cube = sample(code)
    hdr = write_envi(tmp_path, cube, code=code, interleave=interleave, byte_order=byte_order)
    ds = open_envi(hdr, chunks=ODD)
    out = ds["cube"]
    assert out.dims == ("band", "y", "x")
    assert out.dtype == np.dtype(DATA_TYPES[code])  # native dtype, native byte order
    assert out.dtype.isnative
    assert out.data.chunks == ((2, 1), (3, 2), (4, 3))
    got = out.values
    np.testing.assert_array_equal(bits(got), bits(cube))
    assert ds.attrs == {"source": str(hdr), "format": "envi"}


def test_header_offset_and_missing_byte_order(tmp_path):
    cube = sample(12, shape=(4, 6, 5))
    hdr = write_envi(tmp_path, cube, code=12, interleave="bil", byte_order=None, offset=137)
    np.testing.assert_array_equal(open_envi(hdr, chunks=ODD)["cube"].values, cube)


def test_header_parsing_is_robust():
    text = (
        "\ufeffENVI\n; a comment = not a field\n"
        "Description = {\n  multi-line\n  text}\n"
        "SAMPLES = 3\nByte  Order = 1\n"
        "Wavelength = {1.5,\n 2.5\n ,3.5}\n"
        "acquisition date = DATE(yyyy-mm-dd): 2019-01-29\n"
        "vendor junk without equals sign\n"
        "default bands = {1, 2, 3}\n"
    )
    fields = parse_header(text)
    assert fields["description"] == "multi-line text"
    assert fields["samples"] == "3"
    assert fields["byte order"] == "1"
    assert [float(v) for v in fields["wavelength"].split(",")] == [1.5, 2.5, 3.5]
    assert fields["acquisition date"] == "DATE(yyyy-mm-dd): 2019-01-29"
    assert fields["default bands"] == "1, 2, 3"
    with pytest.raises(FormatError, match="not an ENVI header"):
        parse_header("#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n", source="x.hdr")
    with pytest.raises(FormatError, match="never closes"):
        parse_header("ENVI\nwavelength = {1,\n2,\n", source="x.hdr")


def test_band_coordinates_and_unit_conversion(tmp_path):
    cube = sample(4, shape=(3, 2, 2))
    extra = (
        "wavelength units = Micrometers\n"
        "wavelength = {0.45, 0.55,\n 0.65}\nfwhm = {0.01, 0.01, 0.02}\n"
        "band names = {Blue, Green , Red}\n"
    )
    ds = open_envi(write_envi(tmp_path, cube, code=4, extra=extra), chunks={})
    np.testing.assert_allclose(ds["wavelength"].values, [450.0, 550.0, 650.0])
    assert ds["wavelength"].dtype == np.float64
    assert ds["wavelength"].attrs == {"units": "nm", "converted_from": "Micrometers"}
    np.testing.assert_allclose(ds["fwhm"].values, [10.0, 10.0, 20.0])
    assert list(ds["band_name"].values) == ["Blue", "Green", "Red"]
    assert ds["band_name"].dtype == object  # variable-length strings: a zarr v3 "string"
    assert ds["wavelength"].dims == ("band",)


@pytest.mark.parametrize(
    ("extra", "coord", "match"),
    [
        ("wavelength = {400, 500}", "wavelength", "expected 3 numbers"),
        ("fwhm = {10, ten, 10}", "fwhm", "expected 3 numbers"),
        ("band names = {a, b}", "band_name", "2 names for 3 bands"),
    ],
)
def test_per_band_lists_of_the_wrong_length_warn_and_are_dropped(tmp_path, extra, coord, match):
    hdr = write_envi(tmp_path, sample(1, shape=(3, 2, 2)), code=1, extra=extra + "\n")
    with pytest.warns(CubepipeWarning, match=match):
        ds = open_envi(hdr, chunks={})
    assert coord not in ds.coords


@pytest.mark.parametrize(
    ("code", "raw", "expected"), [(2, "-9999", -9999), (4, "-9999.5", -9999.5)]
)
def test_data_ignore_value_lands_in_nodata(tmp_path, code, raw, expected):
    hdr = write_envi(tmp_path, sample(code), code=code, extra=f"data ignore value = {raw}\n")
    nodata = open_envi(hdr, chunks={})["cube"].attrs["nodata"]
    assert nodata == expected
    assert type(nodata) is type(expected)


def test_size_mismatch_is_refused_naming_file_and_both_sizes(tmp_path):
    hdr = write_envi(tmp_path, sample(12, shape=(3, 5, 7)), code=12)
    hdr.write_text(hdr.read_text().replace("samples = 7", "samples = 8"))
    with pytest.raises(FormatError) as err:
        open_envi(hdr, chunks={})
    msg = str(err.value)
    assert "scene.img" in msg and "240 bytes" in msg and "210 bytes" in msg
    assert "\n" not in msg


@pytest.mark.parametrize(
    ("line", "match"),
    [
        ("data type = 6", "complex"),
        ("data type = 9", "complex"),
        ("interleave = bsx", "bsq, bil or bip"),
        ("byte order = 2", "byte order"),
        ("samples = seven", "integer"),
    ],
)
def test_bad_headers_are_refused_clearly(tmp_path, line, match):
    hdr = write_envi(tmp_path, sample(4), code=4)
    key = line.split(" = ")[0]
    lines = [ln for ln in hdr.read_text().splitlines() if not ln.startswith(key)]
    hdr.write_text("\n".join([*lines, line]) + "\n")
    with pytest.raises(FormatError, match=match):
        open_envi(hdr, chunks={})


def test_partner_files_are_found_from_either_side(tmp_path):
    cube = sample(2)
    for suffix in ("", ".dat", ".raw", ".bil"):
        sub = tmp_path / (suffix.strip(".") or "none")
        sub.mkdir()
        hdr = write_envi(sub, cube, code=2, binary_suffix=suffix)
        binary = sub / f"scene{suffix}"
        assert find_pair(hdr) == (hdr, binary)
        assert find_pair(binary) == (hdr, binary)
        assert detect_format(binary).name == "envi"
        assert detect_format(hdr).name == "envi"
        np.testing.assert_array_equal(open_source(binary)["cube"].values, cube)
    # name.ext.hdr beside name.ext
    sub = tmp_path / "double"
    sub.mkdir()
    hdr = write_envi(sub, cube, code=2)
    hdr.rename(sub / "scene.img.hdr")
    assert find_pair(sub / "scene.img") == (sub / "scene.img.hdr", sub / "scene.img")


def test_missing_partner_is_refused(tmp_path):
    hdr = write_envi(tmp_path, sample(2), code=2)
    binary = tmp_path / "scene.img"
    binary.rename(tmp_path / "elsewhere.bin")
    with pytest.raises(FormatError, match=r"scene\.hdr: no binary data file found.*scene\.img"):
        open_envi(hdr, chunks={})
    lone = tmp_path / "lonely.raw"
    lone.write_bytes(b"\0" * 8)
    with pytest.raises(FormatError, match=r"lonely\.raw: no ENVI header found.*lonely\.hdr"):
        open_envi(lone, chunks={})
    assert not READERS["envi"].sniff(b"\0" * 8, lone)


def test_opening_and_slicing_compute_nothing(tmp_path, no_compute):
    hdr = write_envi(tmp_path, sample(4, shape=(6, 9, 11)), code=4, interleave="bip")
    with no_compute:
        ds = open_envi(hdr, chunks=ODD)
        part = (ds["cube"].isel(band=slice(1, 5), y=slice(2, 8)) * 2).sum("band")
    assert ds["cube"].data.name.startswith("cubepipe-ingest-read-envi-")
    assert all(n.startswith("cubepipe-ingest") for n in ds["cube"].data.dask.layers)
    assert part.shape == (6, 11)


@pytest.mark.parametrize("interleave", ["bsq", "bil", "bip"])
def test_each_block_reads_its_own_box(tmp_path, interleave):
    cube = np.arange(5 * 13 * 11, dtype=np.int32).reshape(5, 13, 11)
    hdr = write_envi(tmp_path, cube, code=3, interleave=interleave, byte_order=1)
    arr = open_envi(hdr, chunks={"band": 3, "y": 5, "x": 4})["cube"].data
    blocks = dask.compute(*arr.to_delayed().ravel(), scheduler="sync")
    for block, index in zip(blocks, np.ndindex(arr.numblocks), strict=True):
        assert type(block) is np.ndarray and block.base is None  # a copy, not a mapped view
        box = tuple(
            slice(sum(c[:i]), sum(c[: i + 1])) for c, i in zip(arr.chunks, index, strict=True)
        )
        np.testing.assert_array_equal(block, cube[box])
    np.testing.assert_array_equal(arr.compute(), cube)


def _check_corn(ds) -> None:
    cube = ds["cube"]
    assert cube.shape == (580, 31, 43) and cube.dtype == np.uint16
    values = cube.values
    assert (values.min(), values.max()) == (0, 2887)
    assert values.mean(dtype=np.float64) == pytest.approx(601.54, abs=0.005)
    wl = ds["wavelength"]
    assert (wl[0].item(), wl[-1].item()) == (366.551, 1048.421)
    assert wl.attrs["units"] == "nm"


def test_real_corn_kernel_pair_in_tests_data():
    ds = open_envi(CORN, chunks={"band": 64, "y": 16, "x": 16})
    _check_corn(ds)
    raw = np.fromfile(CORN.with_suffix(".raw"), "<u2").reshape(31, 580, 43).transpose(1, 0, 2)
    np.testing.assert_array_equal(ds["cube"].values, raw)
    assert "nodata" not in ds["cube"].attrs


@needs_shared
def test_real_corn_kernel_from_shared_via_binary_path():
    _check_corn(open_source(SHARED / "plantcv" / "corn-kernel-hyperspectral.raw"))


@needs_shared
@pytest.mark.parametrize("name", ["darkReference", "darkReference.hdr"])
def test_real_headwall_dark_reference(name):
    ds = open_source(SHARED / "plantcv" / name)
    cube = ds["cube"]
    assert cube.shape == (978, 1, 1600) and cube.dtype == np.uint16
    values = cube.values
    assert (values.min(), values.max()) == (2, 47)
    assert values.mean(dtype=np.float64) == pytest.approx(13.97, abs=0.005)
    assert ds["wavelength"][0].item() == 379.027
    assert ds.attrs["description"] == "[HEADWALL Hyperspec III]"


@needs_shared
def test_real_specim_fenix_float32_mixed_case_header():
    ds = open_source(SHARED / "hylite_fenix" / "Radiometric_2x2_1x1.hdr", chunks={"x": 100})
    cube = ds["cube"]
    assert cube.shape == (624, 1, 384) and cube.dtype == np.float32
    values = cube.values
    assert values.min() == pytest.approx(0.00209, abs=5e-6)
    assert values.max() == pytest.approx(6.94156, abs=5e-6)
    assert values.mean(dtype=np.float64) == pytest.approx(0.2457, abs=5e-5)
    assert ds["wavelength"][0].item() == 377.35 and ds["fwhm"].size == 624
    assert "units" not in ds["wavelength"].attrs  # the header states no units
