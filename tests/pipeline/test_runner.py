"""The pipeline runner: validation against the real click commands, chaining, running."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
import numpy as np
import pytest
import tifffile

from cubepipe.pipeline.backend import resolve_device
from cubepipe.pipeline.cli import CliState, cli
from cubepipe.pipeline.cli.runner.pipeline import (
    StepError,
    load_pipeline,
    plan_pipeline,
    run_pipeline,
)
from cubepipe.pipeline.stats.fit import STAT_VARS
from cubepipe.storage import InputError, history, open_cube, read_attrs


def _plan(doc: Any, **kw: Any):
    return plan_pipeline(doc, cli, source="p.yaml", **kw)


def test_steps_chain_and_map_keys_onto_the_commands(small_store: Path, tmp_path: Path) -> None:
    z, c = str(tmp_path / "z.zarr"), str(tmp_path / "c.zarr")
    p = _plan(
        {
            "device": "cpu",
            "scheduler": "threads",
            "chunks": {"y": 64, "x": 96},
            "steps": [
                {"stats": {"in": str(small_store), "split-every": 4}},
                {"standardize": {"out": z, "method": "minmax", "chunks": "y=32,x=32"}},
                {"compress": {"out": c, "components": 3, "standardize": True, "whiten": False}},
                {"export": {"out": str(tmp_path / "z.tif"), "in": z, "bands": [0, 3]}},
                {"report": {"in": c, "out": str(tmp_path / "r.html"), "original": z}},
            ],
        },
        overwrite=True,
    )
    assert p.options == {"device": "cpu", "scheduler_spec": "threads"}
    stats, std, comp, exp, rep = p.steps
    assert [s.number for s in p.steps] == [1, 2, 3, 4, 5]
    # stats writes into its input: the next step reads the same store
    assert stats.args == ("--split-every", "4", str(small_store))
    assert std.inputs == (str(small_store),)
    # the step's own chunks win over the top-level default; --overwrite from run
    assert std.args == (
        "--output", z, "--overwrite", "--chunks", "y=32,x=32", "--method", "minmax",
        str(small_store),
    )  # fmt: skip
    assert comp.inputs == (z,)
    assert comp.args == (
        "--output", c, "--overwrite", "--chunks", "y=64,x=96", "--components", "3",
        "--standardize", z,
    )  # fmt: skip
    # export has no --chunks: the top-level default does not apply; lists become CSV
    assert exp.args == ("--output", str(tmp_path / "z.tif"), "--bands", "0,3", "--overwrite", z)
    assert exp.output_is_file and rep.output_is_file
    assert "--original" in rep.args
    assert rep.command_line(["--device", "cpu"]).startswith("cubepipe --device cpu report ")


def _doc(*steps: Any, **top: Any) -> dict:
    return {**top, "steps": list(steps)}


@pytest.mark.parametrize(
    ("doc", "needles"),
    [
        (None, ["p.yaml", "expected a mapping", "empty document"]),
        ([1, 2], ["expected a mapping", "got a list"]),
        ({"device": "cpu"}, ["'steps' must be a non-empty list", "missing"]),
        ({"steps": []}, ["'steps'", "empty list"]),
        ({"steps": "stats"}, ["'steps'", "got a string"]),
        (_doc({"stats": {}}, step=1), ["unknown top-level key 'step'", "did you mean 'steps'"]),
        (_doc({"stats": {}}, device="tpu"), ["top-level key 'device'", "'tpu' is not one of"]),
        (_doc({"stats": {}}, chunks="y=0"), ["'chunks'", "DIM=SIZE"]),
        (_doc("stats"), ["step 1:", "one key, the op", "got a string"]),
        (_doc({"stats": {}, "compress": {}}), ["step 1:", "2 keys"]),
        (_doc({"stat": {"in": "IN"}}), ["step 1:", "unknown op 'stat'", "did you mean 'stats'"]),
        (_doc({"stats": [1]}), ["step 1 (stats)", "mapping of key: value"]),
        (_doc({"stats": {"in": "IN", "split_every": 2, "split-every": 3}}), ["given twice"]),
        (
            _doc({"stats": {"in": "IN"}}, {"compress": {"out": "c.zarr", "componets": 3}}),
            ["step 2 (compress)", "unknown key 'componets'", "did you mean 'components'"],
        ),
        (
            _doc({"compress": {"in": "IN", "out": "c.zarr", "components": "five"}}),
            ["step 1 (compress)", "key 'components'", "'five' is not a valid integer"],
        ),
        (
            _doc({"compress": {"in": "IN", "out": "c.zarr", "components": 2.5}}),
            ["key 'components'", "'2.5' is not a valid integer"],
        ),
        (
            _doc({"compress": {"in": "IN", "out": "c.zarr", "variance": 1.5}}),
            ["key 'variance'", "1.5"],
        ),
        (
            _doc({"standardize": {"in": "IN", "out": "z.zarr", "method": "zcore"}}),
            ["step 1 (standardize)", "key 'method'", "'zcore' is not one of"],
        ),
        (
            _doc({"standardize": {"in": "IN", "out": "z.zarr", "overwrite": "please"}}),
            ["key 'overwrite'", "expected true or false"],
        ),
        (
            _doc({"standardize": {"in": "IN", "out": "z.zarr", "method": True}}),
            ["key 'method'", "boolean true"],
        ),
        (
            _doc({"standardize": {"in": "IN", "out": "z.zarr", "chunks": "y:5"}}),
            ["step 1 (standardize)", "key 'chunks'", "DIM=SIZE"],
        ),
        (_doc({"standardize": {"in": "IN"}}), ["step 1 (standardize)", "required key 'out'"]),
        (_doc({"stats": {}}), ["step 1 (stats)", "required key 'in'", "no earlier step"]),
        (_doc({"stats": {"in": "nope.zarr"}}), ["key 'in'", "nope.zarr does not exist"]),
        (
            _doc({"export": {"in": "IN", "out": "x.tif"}}, {"stats": {}}),
            ["step 2 (stats)", "required key 'in'", "step 1 (export) writes a file"],
        ),
    ],
)
def test_every_mistake_is_one_line_naming_step_and_key(
    small_store: Path, doc: Any, needles: list[str]
) -> None:
    doc = json.loads(json.dumps(doc).replace('"IN"', json.dumps(str(small_store))))
    with pytest.raises(InputError) as info:
        _plan(doc)
    msg = str(info.value)
    assert "\n" not in msg
    assert msg.startswith("p.yaml: ")
    for needle in needles:
        assert needle in msg, (needle, msg)


def test_a_later_step_is_checked_before_the_first_runs(small_store: Path, tmp_path: Path) -> None:
    doc = _doc(
        {"standardize": {"in": str(small_store), "out": str(tmp_path / "z.zarr")}},
        {"compress": {"out": str(tmp_path / "c.zarr"), "components": 0}},
    )
    with pytest.raises(InputError, match=r"step 2 \(compress\): key 'components'"):
        _plan(doc)
    assert list(tmp_path.iterdir()) == [small_store]


def test_load_pipeline_reports_yaml_errors_with_their_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("steps:\n  - stats: {in: a.zarr\n  - compress: {}\n")
    with pytest.raises(InputError, match=r"bad.yaml: not valid YAML: .* at line 3") as info:
        load_pipeline(bad, cli)
    assert "\n" not in str(info.value)
    with pytest.raises(InputError, match="pipeline file not found"):
        load_pipeline(tmp_path / "missing.yaml", cli)


# A stand-in for commands not written yet: real click commands (so the runner's generic
# handling of keys, flags and types is exercised) and the plain jobs the runner runs.
@click.group()
def _toy() -> None:
    pass


def _toy_filter(obj: list, source: str, output: str, kernel: str, **kw: Any) -> None:
    if kernel == "fail":
        raise InputError("the kernel failed")
    obj.append(("filter", source, output, kernel, kw))


def _toy_stats(obj: list, store: str) -> None:
    obj.append(("stats", store))


def _never_called(**_kw: Any) -> None:
    raise AssertionError("the runner invoked a click command")


_toy_jobs = {"filter": _toy_filter, "stats": _toy_stats}
_toy.command("filter")(
    click.argument("source", metavar="IN")(
        click.option("-o", "--output", required=True, type=click.Path())(
            click.option("--kernel", required=True)(
                click.option("--mask-nan", is_flag=True)(
                    click.option("--min-support", type=click.FloatRange(0, 1), default=0.5)(
                        click.option("--chunks")(_never_called)
                    )
                )
            )
        )
    )
)
_toy.command("stats")(click.argument("store")(_never_called))


def test_any_registered_op_is_planned_from_its_click_params(tmp_path: Path) -> None:
    src = tmp_path / "a.zarr"
    src.mkdir()
    doc = _doc(
        {"filter": {"in": str(src), "out": "f.zarr", "kernel": "gaussian:2", "mask_nan": True}},
        {"stats": {}},
        {"filter": {"out": "g.zarr", "kernel": "box:3", "mask-nan": False, "min-support": 0.25}},
        chunks="y=8",
    )
    p = plan_pipeline(doc, _toy, source="t.yaml")
    assert p.steps[0].args == (
        "--output", "f.zarr", "--kernel", "gaussian:2", "--mask-nan", "--chunks", "y=8", str(src),
    )  # fmt: skip
    assert p.steps[1].args == ("f.zarr",)
    assert p.steps[2].inputs == ("f.zarr",)
    seen: list = []
    times = run_pipeline(p, _toy, seen, jobs=_toy_jobs)
    assert len(times) == 3
    assert [s[0] for s in seen] == ["filter", "stats", "filter"]
    assert seen[2][1:4] == ("f.zarr", "g.zarr", "box:3")
    assert seen[2][4] == {"mask_nan": False, "min_support": 0.25, "chunks": "y=8"}

    with pytest.raises(
        InputError, match=r"step 1 \(filter\): key 'min_support': 2.0 is not in the range"
    ):
        plan_pipeline(_doc({"filter": {**doc["steps"][0]["filter"], "min_support": 2}}), _toy)
    failing = plan_pipeline(
        _doc({"stats": {"in": str(src)}}, {"filter": {"out": "h", "kernel": "fail"}}), _toy
    )
    lines: list[str] = []
    with pytest.raises(StepError, match=r"step 2 \(filter\) failed: the kernel failed"):
        run_pipeline(failing, _toy, [], say=lines.append, jobs=_toy_jobs)
    assert lines[-1].startswith("cubepipe run: step 2/2 filter: FAILED")
    # `filter` is a valid op, but only once its command is registered
    with pytest.raises(InputError, match="'filter' is not installed in this cubepipe"):
        plan_pipeline(_doc({"filter": {"in": str(src)}}), click.Group())


def test_a_real_pipeline_runs_every_step_in_order(small_store: Path, tmp_path: Path) -> None:
    out = {k: tmp_path / f"{k}.zarr" for k in ("z", "c", "r")}
    doc = _doc(
        {"stats": {"in": str(small_store)}},
        {"standardize": {"out": str(out["z"])}},
        {"compress": {"out": str(out["c"]), "components": 4}},
        {"reconstruct": {"out": str(out["r"])}},
        {"export": {"out": str(tmp_path / "r.tif"), "bands": [0, 14]}},
        {
            "report": {
                "in": str(out["c"]),
                "out": str(tmp_path / "r.html"),
                "original": str(out["z"]),
            }
        },
        chunks={"y": 100, "x": 120},
    )
    state = CliState(device=resolve_device("cpu"), quiet=True)
    lines: list[str] = []
    run_pipeline(_plan(doc), cli, state, say=lines.append)
    assert len(lines) == 12 and all(line.startswith("cubepipe run: step ") for line in lines)
    assert all(v in open_cube(small_store) for v in STAT_VARS)
    assert [h["op"] for h in history(read_attrs(out["r"]))] == [
        "fixture", "stats", "standardize", "compress", "reconstruct",
    ]  # fmt: skip
    r = open_cube(out["r"])
    assert r["cube"].shape == (15, 200, 240) and r["cube"].data.chunksize == (15, 100, 120)
    tif = tifffile.imread(tmp_path / "r.tif")
    np.testing.assert_array_equal(tif, r["cube"].values[[0, 14]])
    page = (tmp_path / "r.html").read_text()
    assert page.count("<img ") == 4 + 4 + 1 + 1  # components, histograms, scree, error map


def test_the_real_filter_command_is_planned_from_the_design_spellings(small_store: Path) -> None:
    if "filter" not in cli.commands:
        pytest.skip("`cubepipe filter` is not registered in this checkout")
    doc = _doc(
        {
            "filter": {
                "in": str(small_store),
                "out": "f.zarr",
                "kernel": "gaussian:1.5",
                "axis": "spatial",
                "mask-nan": True,
                "min_support": 0.5,
            }
        },
        {"stats": {}},
    )
    f, st = _plan(doc).steps
    assert f.args[:4] == ("--output", "f.zarr", "--kernel", "gaussian:1.5")
    assert "--mask-nan" in f.args and f.args[-1] == str(small_store)
    assert st.args == ("f.zarr",)
    with pytest.raises(InputError, match=r"step 1 \(filter\): key 'axis'"):
        _plan(_doc({"filter": {**doc["steps"][0]["filter"], "axis": "sideways"}}))


def test_the_runner_runs_the_jobs_not_the_click_commands(
    small_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every real command's click callback is replaced by one that fails: a pipeline still
    # runs, because the runner calls the jobs behind the commands.
    for cmd in cli.commands.values():
        monkeypatch.setattr(cmd, "callback", _never_called)
    z = tmp_path / "z.zarr"
    doc = _doc({"stats": {"in": str(small_store)}}, {"standardize": {"out": str(z)}})
    state = CliState(device=resolve_device("cpu"), quiet=True)
    run_pipeline(plan_pipeline(doc, cli), cli, state)
    ref = open_cube(small_store)["cube"].values.astype(np.float64)
    mean = np.nanmean(ref, axis=(1, 2), keepdims=True)
    std = np.nanstd(ref, axis=(1, 2), keepdims=True)
    np.testing.assert_allclose(open_cube(z)["cube"].values, (ref - mean) / std, atol=1e-5)
