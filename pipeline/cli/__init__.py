"""The ``cubepipe`` command line. Each command lives in its own module and registers on
:data:`cli`; :func:`main` maps errors to exit codes."""

from . import compress as _compress  # noqa: F401  (registers the command)
from . import demo as _demo  # noqa: F401
from . import explain as _explain  # noqa: F401
from . import export as _export  # noqa: F401
from . import filter as _filter  # noqa: F401
from . import info as _info  # noqa: F401
from . import ingest as _ingest  # noqa: F401
from . import report as _report  # noqa: F401
from . import run as _run  # noqa: F401
from . import solve as _solve  # noqa: F401
from . import stats as _stats  # noqa: F401
from ._app import CliState, cli, main, pass_state, run

__all__ = ["CliState", "cli", "main", "pass_state", "run"]
