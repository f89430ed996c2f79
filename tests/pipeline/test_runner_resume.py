"""What `run --resume` does with each step, decided from the outputs' recorded commands."""

from __future__ import annotations

from pathlib import Path

import pytest
import zarr

from cubepipe.pipeline.backend import resolve_device
from cubepipe.pipeline.cli import CliState, cli
from cubepipe.pipeline.cli.runner.pipeline import plan_pipeline, resume_action, run_pipeline
from cubepipe.storage import (
    ATTR,
    InputError,
    StepError,
    history,
    open_cube,
    read_attrs,
    write_cube,
)
from cubepipe.storage.errors import CubepipeError


def _mark_incomplete(path: Path) -> None:
    group = zarr.open_group(str(path), mode="r+")
    meta = dict(group.attrs[ATTR])
    meta["complete"] = False
    group.attrs[ATTR] = meta


def _plan(small_store: Path, out: Path, **std: object):
    doc = {"steps": [{"standardize": {"in": str(small_store), "out": str(out), **std}}]}
    return plan_pipeline(doc, cli, source="p.yaml")


def test_each_kind_of_output_gets_its_action(small_store: Path, tmp_path: Path) -> None:
    out = tmp_path / "z.zarr"
    p = _plan(small_store, out)
    (step,) = p.steps
    assert resume_action(step, cli).kind == "run"  # nothing there yet
    state = CliState(device=resolve_device("cpu"), quiet=True)
    run_pipeline(p, cli, state)
    cli_record = history(read_attrs(out))[-1]["cli"]
    assert cli_record["command"] == "standardize"
    assert cli_record["options"] == {
        "source": str(small_store), "chunks": None, "shards": None, "method": "zscore",
        "stats_from": None, "allow_nonfinite": False, "encoding": "float32",
        "invalid_value": [], "invalid_below": None, "invalid_above": None,
    }  # fmt: skip
    assert resume_action(step, cli).kind == "skip"

    _mark_incomplete(out)
    action = resume_action(step, cli)
    assert action.kind == "resume" and action.args[0] == "--resume"
    lines: list[str] = []
    run_pipeline(p, cli, state, say=lines.append, resume=True)
    assert any("resuming" in line for line in lines)
    assert "resumed" in history(read_attrs(out))[-1]

    other = _plan(small_store, out, method="minmax").steps[0]
    with pytest.raises(InputError, match=r"complete but was not made by this step \(method was"):
        resume_action(other, cli)
    _mark_incomplete(out)
    with pytest.raises(InputError, match="cannot resume .* started by a different command"):
        resume_action(other, cli)


def test_a_store_without_a_recorded_command_is_not_trusted(
    small_store: Path, tmp_path: Path
) -> None:
    out = write_cube(open_cube(small_store), tmp_path / "z.zarr")  # op "write", no command
    (step,) = _plan(small_store, out).steps
    with pytest.raises(InputError, match="records no cubepipe command, last op: write"):
        resume_action(step, cli)
    state = CliState(device=resolve_device("cpu"), quiet=True)
    with pytest.raises(StepError, match=r"^step 1 \(standardize\) failed: .*--overwrite"):
        run_pipeline(_plan(small_store, out), cli, state, resume=True)


def test_step_error_lives_in_the_storage_hierarchy() -> None:
    from cubepipe.pipeline.cli.runner import pipeline as runner  # noqa: PLC0415
    from cubepipe.storage import errors  # noqa: PLC0415

    assert runner.StepError is errors.StepError
    assert issubclass(errors.StepError, CubepipeError)
