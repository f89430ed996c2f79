"""The ``cubepipe`` command line. Each command lives in its own module and registers on
:data:`cli`, which imports it when the command is used (the table of commands,
:data:`~cubepipe.pipeline.cli._app.COMMANDS`, is what ``cubepipe --help`` lists);
:func:`main` maps errors to exit codes."""

from ._app import CliState, cli, main, pass_state, run

__all__ = ["CliState", "cli", "main", "pass_state", "run"]
