"""``cubepipe run --resume``: what to do with a step whose output already exists.

Every command that writes a store records how it was invoked in the store's new history
entry, under ``cli`` (:func:`invocation`: the command, its options as click resolved them
-- defaults included -- and the directory it ran in). With ``--resume`` the runner asks
:func:`resume_action` for each step:

- an output store that is complete and whose last history entry records the same command
  and options (paths compared as the files they name) is **skipped**;
- an incomplete one started by the same command is **resumed** (``--resume`` is passed:
  chunks already on disk are checked and kept);
- one made or started by anything else is refused (one line saying what differs), unless
  the step itself sets ``overwrite``;
- a step that writes into its input (``stats``) is skipped when the input's last history
  entry is that same command, and run otherwise (it only replaces its own variables);
- a step that writes a file (``export``, ``report``) is run again: files have no chunks to
  resume, so an existing one is replaced (``--overwrite``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import click

from cubepipe.pipeline.cli.runner.keys import key_table
from cubepipe.storage import history, read_attrs, store_state
from cubepipe.storage.errors import InputError
from cubepipe.storage.store import same_option

if TYPE_CHECKING:
    from cubepipe.pipeline.cli.runner.pipeline import Step

__all__ = ["ResumeAction", "invocation", "resume_action"]

#: Options that say how to write, not what: never compared.
_NOT_COMPARED = ("output", "resume", "overwrite", "as_json")


def invocation(ctx: click.Context) -> dict[str, Any]:
    """How the command of ``ctx`` was invoked, JSON-ready, for its history entry.

    ``{"command": "standardize", "options": {"source": "a.zarr", "method": "zscore", ...},
    "cwd": "/data"}``: every parameter as click resolved it (defaults included) except
    ``output``, ``resume`` and ``overwrite``.
    """
    options = {k: v for k, v in ctx.params.items() if k not in _NOT_COMPARED}
    return {
        "command": ctx.info_name,
        "options": json.loads(json.dumps(options, default=str)),
        "cwd": os.getcwd(),
    }


@dataclass(frozen=True)
class ResumeAction:
    """What the runner does with a step under ``--resume``."""

    kind: str  # "run", "resume" or "skip"
    args: tuple[str, ...] = ()
    note: str = ""


def resume_action(step: Step, group: click.Group) -> ResumeAction:
    """Decide whether ``step`` is skipped, resumed or run (see the module docstring).

    Raises
    ------
    InputError
        The step's output store exists but was made (or started) by a different command
        and the step does not set ``overwrite``; the message says what differs.
    """
    cmd = group.commands[step.op]
    expected = _expected(step, cmd, group)
    if step.output is None:  # writes into its input, or nothing at all
        if len(step.inputs) == 1 and store_state(step.inputs[0]) == "complete":
            same, _ = _compare(_last_entry(step.inputs[0]), expected)
            if same:
                return ResumeAction(
                    "skip", note=f"{step.inputs[0]} already holds its result from the same command"
                )
        return ResumeAction("run", step.args)
    out = step.output
    takes_overwrite = "overwrite" in key_table(cmd)
    overwrite = "--overwrite" in step.args
    if step.output_is_file:
        if os.path.exists(out) and takes_overwrite and not overwrite:
            return ResumeAction(
                "run", ("--overwrite", *step.args), f"re-making {out} (a file is written whole)"
            )
        return ResumeAction("run", step.args)
    state = store_state(out)
    if state not in ("complete", "incomplete"):
        return ResumeAction("run", step.args)  # missing (or not ours: the command says so)
    same, why = _compare(_last_entry(out), expected)
    if same and state == "complete":
        return ResumeAction("skip", note=f"{out} is complete and was made by the same command")
    if same:
        return ResumeAction(
            "resume",
            ("--resume", *step.args),
            f"resuming {out} (incomplete: chunks already written are checked and kept)",
        )
    if overwrite:
        return ResumeAction("run", step.args, f"replacing {out} ({why}; the step sets overwrite)")
    if state == "complete":
        raise InputError(
            f"{out} is complete but was not made by this step ({why}); to replace it, set "
            "`overwrite: true` on the step or rerun without --resume with --overwrite"
        )
    raise InputError(
        f"cannot resume {out}: it was started by a different command ({why}); to start "
        "over, set `overwrite: true` on the step or rerun without --resume with --overwrite"
    )


def _expected(step: Step, cmd: click.Command, group: click.Group) -> dict[str, Any]:
    """The :func:`invocation` the step's command will record, from its argument list."""
    root = click.Context(group, info_name="cubepipe")
    with root:
        sub = cmd.make_context(step.op, list(step.args), parent=root)
        return invocation(sub)


def _last_entry(path: str) -> Mapping[str, Any]:
    entries = history(read_attrs(path))
    return entries[-1] if entries else {}


def _compare(entry: Mapping[str, Any], expected: Mapping[str, Any]) -> tuple[bool, str]:
    """(same, what differs) between a history entry and the step's invocation."""
    rec = entry.get("cli")
    if not isinstance(rec, Mapping):
        op = entry.get("op", "nothing")
        return False, f"its history records no cubepipe command, last op: {op}"
    if rec.get("command") != expected["command"]:
        return False, f"it was made by `{rec.get('command')}`, not `{expected['command']}`"
    old, new = rec.get("options") or {}, expected["options"]
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if not same_option(a, b, str(rec.get("cwd") or ""), expected["cwd"]):
            name = "in" if key in ("source", "sources", "store") else key.replace("_", "-")
            return False, f"{name} was {a!r} there, {b!r} in this step"
    return True, ""
