"""The ``cubepipe`` command group, its global options and the error contract.

Errors a user can cause (:class:`~cubepipe.storage.errors.CubepipeError`) print one line
and exit 2; usage errors exit 2 (click's convention); anything else is a bug: one line,
exit 1, and ``--debug`` shows the traceback.
"""

from __future__ import annotations

import contextlib
import importlib
import sys
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import click

from cubepipe.storage.errors import CubepipeError
from cubepipe.storage.location import parse_storage_options, set_storage_options
from cubepipe.storage.oserrors import as_user_error

if TYPE_CHECKING:
    from ..backend import Device

# What `cubepipe --version` / `--help` import is this module, click and the standard
# library: the commands' modules (and dask, xarray, zarr, ...) are imported when a command
# runs or shows its own help. tests/test_startup.py checks it.

__all__ = ["COMMANDS", "CliState", "cli", "command", "main", "pass_state", "run"]

#: Every command: its name -> (its module under cubepipe.pipeline.cli, its help's first
#: sentence). ``cubepipe --help`` lists them from here without importing them; a command's
#: module is imported when the command is looked up. tests/test_startup.py checks this
#: table against the real commands.
COMMANDS: dict[str, tuple[str, str]] = {
    "compress": (
        "compress",
        "Compress the bands of IN to K components per pixel (scores) and store the model.",
    ),
    "demo": ("demo", "Run the whole chain on a synthetic signed-float cube and print a summary."),
    "destandardize": (
        "stats",
        "Invert `standardize`: IN must be a store it wrote (it carries the statistics).",
    ),
    "doctor": (
        "info",
        "Say what this installation can compute on: versions, CPUs, and for a GPU one tiny "
        "call of each CUDA library cubepipe uses (NVRTC kernels, cuBLAS, cuFFT, cuSOLVER) "
        "checked against NumPy.",
    ),
    "explain": ("explain", "Explain how cubepipe computes something, with this machine's numbers."),
    "export": ("export", "Export STORE to a file other tools read."),
    "filter": (
        "filter",
        "Convolve each band plane (--axis spatial) or each spectrum (--axis spectral) of IN.",
    ),
    "info": (
        "info",
        "Describe STORE: dims, dtypes, chunks, codecs, size on disk, completion, history.",
    ),
    "ingest": (
        "ingest",
        "Read SRC (files, a directory of images or a quoted glob) into the store OUT.",
    ),
    "reconstruct": (
        "compress",
        "Rebuild the bands from a store written by `compress` (scores + model).",
    ),
    "report": ("report", "Write one self-contained HTML page about STORE."),
    "run": (
        "run",
        "Run the steps of PIPELINE.yaml in order; each is the same as `cubepipe OP ...`.",
    ),
    "solve": (
        "solve",
        "Solve A x = b (A from A.npy, b from B.npy) without ever forming an inverse; print "
        "the method, the condition number, the relative residual and the error bound.",
    ),
    "standardize": (
        "stats",
        "Standardize IN per band (zscore: mean 0, std 1; minmax: [0, 1]) into OUT (float32, "
        "or the lossy --encoding asked for).",
    ),
    "stats": (
        "stats",
        "Fit per-band count/mean/std/min/max in one pass and save them into STORE.",
    ),
}

#: The default of ``--connect-timeout``: ``scheduling.DEFAULT_CONNECT_TIMEOUT``, written
#: out here so that the help needs no dask (tests/test_startup.py checks they agree).
DEFAULT_CONNECT_TIMEOUT = 30.0


@dataclass
class CliState:
    """What the global options said, handed to every command."""

    device: Device
    scheduler_spec: str = "threads"
    workers: int | None = None
    memory_limit: str | None = None
    debug: bool = False
    quiet: bool = False
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    durable: bool | None = None
    _device_said: bool = field(default=False, repr=False)

    def say(self, message: str) -> None:
        """Print a progress/status line to stderr unless ``--quiet``."""
        if not self.quiet:
            click.echo(message, err=True)

    @contextlib.contextmanager
    def compute(self) -> Iterator[Any]:
        """Context for a command that computes: announces the device, starts the scheduler
        and reports progress (bar on a terminal, plain lines otherwise; none if quiet)."""
        from ..progress import ClusterProgress, Progress  # noqa: PLC0415  (dask: on use)
        from ..scheduling import scheduler  # noqa: PLC0415
        from ._jobs import current_op, job_paths  # noqa: PLC0415

        if not self._device_said:  # once per command (a pipeline or the demo: once)
            self.say(f"cubepipe: device {self.device.reason}")
            self._device_said = True
        label = current_op() or "cubepipe"
        with contextlib.ExitStack() as stack:
            client = stack.enter_context(
                scheduler(
                    self.scheduler_spec,
                    workers=self.workers,
                    memory_limit=self.memory_limit,
                    quiet=self.quiet,
                    connect_timeout=self.connect_timeout,
                    paths=job_paths(),
                )
            )
            if not self.quiet and client is None:
                stack.enter_context(Progress(label))
            elif not self.quiet:
                stack.enter_context(ClusterProgress(client, label))
            yield client


pass_state = click.make_pass_decorator(CliState)
_debug_requested = False


class _Commands(dict[str, click.Command]):
    """The group's commands by name: one named in :data:`COMMANDS` and not loaded yet is
    loaded by importing its module (which registers it) when it is looked up. Listing them
    all (iteration, ``values()``, ...) loads them all."""

    def __missing__(self, name: str) -> click.Command:
        if name not in COMMANDS:
            raise KeyError(name)
        importlib.import_module(f"{__package__}.{COMMANDS[name][0]}")
        if not dict.__contains__(self, name):
            raise RuntimeError(f"{__package__}.{COMMANDS[name][0]} did not register {name!r}")
        return dict.__getitem__(self, name)

    def __contains__(self, name: object) -> bool:
        return name in COMMANDS or dict.__contains__(self, name)

    def get(self, name: str, default: Any = None) -> Any:  # type: ignore[override]
        try:
            return self[name]
        except KeyError:
            return default

    def load_all(self) -> None:
        for name in COMMANDS:
            self[name]  # loads it

    def __iter__(self) -> Iterator[str]:
        self.load_all()
        return dict.__iter__(self)

    def __len__(self) -> int:
        self.load_all()
        return dict.__len__(self)

    def keys(self) -> Any:
        self.load_all()
        return dict.keys(self)

    def values(self) -> Any:
        self.load_all()
        return dict.values(self)

    def items(self) -> Any:
        self.load_all()
        return dict.items(self)


class LazyGroup(click.Group):
    """A click group whose commands (:data:`COMMANDS`) are imported on use; its help lists
    them from the table, with the same short help as the loaded commands give."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._lazy = _Commands(self.commands)  # a plain dict here (click made it)
        self.commands = self._lazy

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(COMMANDS) | set(dict.keys(self._lazy)))

    def _listed(self, name: str) -> click.Command | None:
        """The command as its help lists it: the real one when loaded, else a stand-in
        with the help's first sentence from :data:`COMMANDS` (nothing imported)."""
        if dict.__contains__(self._lazy, name):
            return dict.__getitem__(self._lazy, name)
        entry = COMMANDS.get(name)
        return None if entry is None else click.Command(name, help=entry[1])

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        listed = [(n, self._listed(n)) for n in self.list_commands(ctx)]
        commands = [(n, c) for n, c in listed if c is not None and not c.hidden]
        if not commands:
            return
        limit = formatter.width - 6 - max(len(n) for n, _ in commands)  # as click does
        rows = [(n, c.get_short_help_str(limit)) for n, c in commands]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(
    cls=LazyGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(package_name="cubepipe", prog_name="cubepipe")
@click.option(
    "--device",
    type=click.Choice(["auto", "cpu", "gpu"], case_sensitive=False),
    default=None,
    help="Compute device (default: env CUBEPIPE_DEVICE, else auto: GPU if CuPy sees one).",
)
@click.option(
    "--scheduler",
    "scheduler_spec",
    default="threads",
    show_default=True,
    metavar="threads|local|ADDRESS",
    help="Dask scheduler: threads, a new LocalCluster, or tcp://HOST:PORT of a running one.",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    help="Worker processes for --scheduler local, one thread each (default: one per core).",
)
@click.option(
    "--memory-limit",
    metavar="SIZE",
    help="Memory limit of EACH worker process for --scheduler local, e.g. 1GB (10^9 bytes) "
    "or 1GiB (default: the machine's memory shared among the workers). dask semantics: a "
    "worker spills at 70%, pauses at 80% and is restarted at 95% of it; the cubepipe "
    "process (client, scheduler, nannies: under 400 MiB) comes on top.",
)
@click.option(
    "--connect-timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=DEFAULT_CONNECT_TIMEOUT,
    show_default=True,
    metavar="SECONDS",
    help="How long to wait for the dask scheduler of --scheduler ADDRESS to answer.",
)
@click.option(
    "--durable",
    is_flag=True,
    default=None,
    help="Flush every chunk to disk before a store is marked complete (survives a power "
    "loss; slower). Default: env CUBEPIPE_DURABLE=1, else off.",
)
@click.option(
    "--storage-option",
    "storage_option",
    multiple=True,
    metavar="KEY=VALUE",
    envvar="CUBEPIPE_STORAGE_OPTIONS",
    help="An option for the object storage backend (fsspec storage_options), repeatable: "
    "endpoint_url=http://127.0.0.1:9000, anon=true, client_kwargs.region_name=eu-west-1. "
    "VALUE is read as JSON when it parses. Credentials also come from the environment as "
    "the backend reads them (AWS_* for s3://). Env: CUBEPIPE_STORAGE_OPTIONS (space-separated).",
)
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
@click.option("--quiet", "-q", is_flag=True, help="Print results only, no status lines.")
@click.pass_context
def cli(
    ctx: click.Context,
    device: str | None,
    scheduler_spec: str,
    workers: int | None,
    memory_limit: str | None,
    connect_timeout: float,
    durable: bool | None,
    storage_option: tuple[str, ...],
    debug: bool,
    quiet: bool,
) -> None:
    """cubepipe: store, standardize, compress and filter large signed-float cubes.

    Data live in chunked zarr v3 stores that plain xarray opens; every command streams
    chunk by chunk through dask, on the CPU or a GPU.
    """
    from cubepipe.storage.chunkio import direct_io_enabled  # noqa: PLC0415  (on use: numpy)

    from ..backend import resolve_device  # noqa: PLC0415
    from ..scheduling import check_memory_limit, check_scheduler  # noqa: PLC0415  (dask)

    global _debug_requested
    _debug_requested = debug
    spec = check_scheduler(scheduler_spec)
    set_storage_options(parse_storage_options(storage_option))
    direct_io_enabled()  # a bad CUBEPIPE_DIRECT_IO is refused before any work
    ctx.obj = CliState(
        device=resolve_device(device),
        scheduler_spec=spec,
        workers=workers,
        memory_limit=check_memory_limit(memory_limit, scheduler=spec),
        debug=debug,
        quiet=quiet,
        connect_timeout=connect_timeout,
        durable=durable or None,
    )


def command(name: str, **kwargs: Any) -> Callable[[Callable[..., Any]], click.Command]:
    """Register a job (``fn(state, **params)``, see :mod:`~cubepipe.pipeline.cli._jobs`)
    and the ``cubepipe NAME`` command that parses its options and runs it.

    The click options are stacked on the job as usual; the command's callback only hands
    the parsed parameters to :func:`~cubepipe.pipeline.cli._jobs.run_job`, as the
    pipeline runner does for a YAML step.
    """

    from ._jobs import job, run_job  # noqa: PLC0415  (zarr: imported with the commands)

    def decorate(fn: Callable[..., Any]) -> click.Command:
        job(name)(fn)

        def callback(**params: Any) -> Any:
            state = click.get_current_context().find_object(CliState)
            return run_job(name, state, params)

        callback.__doc__ = fn.__doc__
        callback.__click_params__ = list(getattr(fn, "__click_params__", []))  # type: ignore[attr-defined]
        return cli.command(name, **kwargs)(callback)

    return decorate


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI and return its exit code (0 ok, 1 bug, 2 bad input or usage)."""
    global _debug_requested
    _debug_requested = False
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        cli.main(args=args, prog_name="cubepipe", standalone_mode=False)
    except click.exceptions.Exit as exc:
        return int(exc.exit_code)
    except click.Abort:
        click.echo("cubepipe: aborted", err=True)
        return 130
    except click.ClickException as exc:
        exc.show()
        return 2 if isinstance(exc, click.UsageError) else int(exc.exit_code or 1)
    except CubepipeError as exc:
        if _debug_requested or "--debug" in args:
            traceback.print_exc()
        click.echo(f"cubepipe: error: {exc}", err=True)
        return 2
    except KeyboardInterrupt:
        click.echo("cubepipe: interrupted", err=True)
        return 130
    except Exception as exc:
        user = as_user_error(exc)  # a full disk, a read-only mount, ... raised anywhere
        if user is not None:
            if _debug_requested or "--debug" in args:
                traceback.print_exc()
            click.echo(f"cubepipe: error: {user}", err=True)
            return 2
        if _debug_requested or "--debug" in args:
            traceback.print_exc()
        msg = " ".join(str(exc).split())
        click.echo(
            f"cubepipe: internal error: {type(exc).__name__}: {msg} "
            "(this is a bug; rerun with --debug and report the traceback)",
            err=True,
        )
        return 1
    return 0


def run() -> None:
    """Console-script entry point."""
    from cubepipe.pipeline.malloc import bound_heap_growth  # noqa: PLC0415

    bound_heap_growth()  # peak memory flat with the cube's size (see pipeline/malloc.py)
    sys.exit(main())
