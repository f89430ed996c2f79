"""`cubepipe run PIPELINE.yaml` through the real console script."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import tifffile
import yaml

from cubepipe.storage import describe, history, open_cube, read_attrs

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "pipeline.yaml"


def _files(d: Path) -> set[str]:
    return {str(p.relative_to(d)) for p in d.rglob("*")}


def test_the_worked_example_runs_from_a_checkout(cli, tmp_path: Path) -> None:
    # The example's paths are relative to the repository root: give it one whose tests/
    # is the real one and whose outputs land in tmp_path.
    (tmp_path / "tests").symlink_to(ROOT / "tests")
    shutil.copy(EXAMPLE, tmp_path / "pipeline.yaml")
    proc = cli("run", "pipeline.yaml", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "demo-output" / "pipeline"
    assert {p.name for p in out.iterdir()} >= {
        "corn.zarr", "corn-z.zarr", "corn-pca.zarr", "corn-rec.zarr", "corn-rec.tif",
        "report.html",
    }  # fmt: skip
    ops = [h["op"] for h in history(read_attrs(out / "corn-rec.zarr"))]
    assert ops == ["ingest", "stats", "standardize", "compress", "reconstruct"]
    assert tifffile.imread(out / "corn-rec.tif").shape == (3, 31, 43)
    assert "stats_mean" in open_cube(out / "corn.zarr")
    assert describe(out / "corn-z.zarr")["variables"]["cube"]["chunks"] == [580, 31, 32]
    for n, op in enumerate(
        ["ingest", "stats", "standardize", "compress", "reconstruct", "export", "report"], 1
    ):
        assert f"cubepipe run: step {n}/7 {op}: started" in proc.stderr
        assert f"cubepipe run: step {n}/7 {op}: done in " in proc.stderr
    # a second run needs --overwrite (the first step refuses to replace corn.zarr) ...
    again = cli("run", "pipeline.yaml", cwd=tmp_path)
    assert again.returncode == 2
    assert (
        again.stderr.strip()
        .splitlines()[-1]
        .startswith("cubepipe: error: step 1 (ingest) failed: ")
    )
    # ... and --dry-run prints the commands, runs nothing, and --quiet silences stderr
    dry = cli("-q", "run", "pipeline.yaml", "--dry-run", "--overwrite", cwd=tmp_path)
    assert dry.returncode == 0 and dry.stderr == ""
    lines = dry.stdout.splitlines()
    assert len(lines) == 7 and all(line.startswith("cubepipe --device ") for line in lines)
    assert (
        " ingest --output demo-output/pipeline/corn.zarr --chunks y=32,x=32 --overwrite "
        in (lines[0])
    )


def test_top_level_defaults_in_override_and_command_line_precedence(
    cli, small_store: Path, tmp_path: Path
) -> None:
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(
        yaml.safe_dump(
            {
                "device": "gpu",  # the command line's --device cpu wins
                "chunks": {"y": 50, "x": 60},
                "steps": [
                    {"standardize": {"in": str(small_store), "out": "z.zarr"}},
                    {"stats": {"no-save": True, "json": True}},  # reads z.zarr
                    {"compress": {"in": str(small_store), "out": "c.zarr", "components": 2}},
                    {"reconstruct": {"out": "r.zarr", "chunks": "y=100,x=120"}},
                ],
            }
        )
    )
    proc = cli("--device", "cpu", "run", str(pipeline), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "CPU (NumPy" in proc.stderr and "as requested" in proc.stderr
    assert describe(tmp_path / "z.zarr")["variables"]["cube"]["chunks"] == [15, 50, 60]
    assert describe(tmp_path / "r.zarr")["variables"]["cube"]["chunks"] == [15, 100, 120]
    assert history(read_attrs(tmp_path / "z.zarr"))[-1]["op"] == "standardize"
    means = [b["mean"] for b in json.loads(proc.stdout[: proc.stdout.rindex("}") + 1])["bands"]]
    assert len(means) == 15 and max(abs(m) for m in means) < 1e-5  # z-scores of z.zarr
    c_hist = history(read_attrs(tmp_path / "c.zarr"))
    assert c_hist[-1]["op"] == "compress" and c_hist[-1]["inputs"] == [str(small_store)]
    assert c_hist[-1]["device"] == "cpu"


@pytest.mark.parametrize(
    ("text", "needles"),
    [
        ("steps:\n  - stat: {in: IN}\n", ["step 1:", "unknown op 'stat'", "valid ops: ingest"]),
        (
            "steps:\n  - stats: {in: IN}\n  - standardize: {out: z.zarr, methd: minmax}\n",
            ["step 2 (standardize)", "unknown key 'methd'", "did you mean 'method'"],
        ),
        (
            "steps:\n  - compress: {in: IN, out: c.zarr, components: many}\n",
            ["step 1 (compress)", "key 'components'", "'many' is not a valid integer"],
        ),
        (
            "steps:\n  - stats: {in: IN}\n  - compress: {components: 2}\n",
            ["step 2 (compress)", "missing required key 'out'"],
        ),
        ("steps:\n  - stats: {in: IN\n  - compress: {}\n", ["not valid YAML", "line 3"]),
        ("device: cpu\n", ["'steps' must be a non-empty list"]),
    ],
)
def test_mistakes_exit_2_with_one_line_and_nothing_written(
    cli, small_store: Path, tmp_path: Path, text: str, needles: list[str]
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    pipeline = work / "p.yaml"
    pipeline.write_text(text.replace("IN", str(small_store)))
    before, store_before = _files(work), _files(small_store)
    proc = cli("run", "p.yaml", cwd=work)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cubepipe: error: p.yaml: "), lines
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert proc.stdout == ""
    assert _files(work) == before and _files(small_store) == store_before
