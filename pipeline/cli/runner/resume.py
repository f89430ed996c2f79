"""``cubepipe run --resume``: what to do with a step whose output already exists.

Every command that writes a store records how it was invoked in the store's new history
entry, under ``cli`` (:func:`~cubepipe.pipeline.cli._jobs.invocation`: the command, its
options as parsed -- defaults included -- and the directory it ran in). With ``--resume`` the runner asks
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

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import click

from cubepipe.pipeline.cli._jobs import invocation
from cubepipe.pipeline.cli.runner.keys import key_table
from cubepipe.storage import history, read_attrs, store_state
from cubepipe.storage.errors import InputError
from cubepipe.storage.store import same_option

if TYPE_CHECKING:
    from cubepipe.pipeline.cli.runner.plan import Step

__all__ = ["ResumeAction", "resume_action"]


@dataclass(frozen=True)
class ResumeAction:
    """What the runner does with a step under ``--resume``."""

    kind: str  # "run", "resume" or "skip"
    args: tuple[str, ...] = ()  # the command line (for --dry-run)
    note: str = ""
    params: Mapping[str, Any] = field(default_factory=dict)  # what the job runs with


def resume_action(step: Step, group: click.Group) -> ResumeAction:
    """Decide whether ``step`` is skipped, resumed or run (see the module docstring).

    Raises
    ------
    InputError
        The step's output store exists but was made (or started) by a different command
        and the step does not set ``overwrite``; the message says what differs.
    """
    cmd = group.commands[step.op]
    expected = invocation(step.op, step.params)
    if step.output is None:  # writes into its input, or nothing at all
        if len(step.inputs) == 1 and store_state(step.inputs[0]) == "complete":
            same, _ = _compare(_last_entry(step.inputs[0]), expected)
            if same:
                return ResumeAction(
                    "skip", note=f"{step.inputs[0]} already holds its result from the same command"
                )
        return ResumeAction("run", step.args, params=step.params)
    out = step.output
    takes_overwrite = "overwrite" in key_table(cmd)
    overwrite = "--overwrite" in step.args
    if step.output_is_file:
        if os.path.exists(out) and takes_overwrite and not overwrite:
            return ResumeAction(
                "run",
                ("--overwrite", *step.args),
                f"re-making {out} (a file is written whole)",
                {**step.params, "overwrite": True},
            )
        return ResumeAction("run", step.args, params=step.params)
    state = store_state(out)
    if state not in ("complete", "incomplete"):
        # missing (or not ours: the job says so)
        return ResumeAction("run", step.args, params=step.params)
    same, why = _compare(_last_entry(out), expected)
    if same and state == "complete":
        return ResumeAction("skip", note=f"{out} is complete and was made by the same command")
    if same:
        return ResumeAction(
            "resume",
            ("--resume", *step.args),
            f"resuming {out} (incomplete: chunks already written are checked and kept)",
            {**step.params, "resume": True},
        )
    if overwrite:
        return ResumeAction(
            "run", step.args, f"replacing {out} ({why}; the step sets overwrite)", step.params
        )
    if state == "complete":
        raise InputError(
            f"{out} is complete but was not made by this step ({why}); to replace it, set "
            "`overwrite: true` on the step or rerun without --resume with --overwrite"
        )
    raise InputError(
        f"cannot resume {out}: it was started by a different command ({why}); to start "
        "over, set `overwrite: true` on the step or rerun without --resume with --overwrite"
    )


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
