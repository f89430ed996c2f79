"""Start-up (issue 19, item 5): ``cubepipe --version`` / ``--help`` import neither the
array stack nor the commands; the lazy package attributes and command table give exactly
what the eager ones gave. Times are measured in benchmarks/bench_startup.py, not here."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import textwrap

import click
import pytest

import cubepipe.pipeline
import cubepipe.storage
from cubepipe.pipeline.cli import _app

#: Imported by no start-up path that does not compute (the array stack, the optional
#: extras, the benchmark extra's sparse/numba).
HEAVY = (
    "dask.array",
    "xarray",
    "zarr",
    "pandas",
    "torch",
    "matplotlib",
    "distributed",
    "numba",
    "sparse",
)


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def _imported_after(code: str) -> dict[str, object]:
    """Run ``code`` in a new interpreter; which of :data:`HEAVY` it imported, and the
    ``cubepipe.pipeline.cli`` commands it loaded."""
    proc = _run(
        code
        + textwrap.dedent(
            f"""
            import json, sys
            from cubepipe.pipeline.cli import cli
            print("RESULT " + json.dumps({{
                "heavy": [m for m in {HEAVY!r} if m in sys.modules],
                "loaded": sorted(dict.keys(cli.commands)),
            }}))
            """
        )
    )
    assert proc.returncode == 0, proc.stderr
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    result: dict[str, object] = json.loads(line.removeprefix("RESULT "))
    return result


@pytest.mark.parametrize(
    "argv",
    [None, ["--version"], ["--help"], ["-h"]],
    ids=["import", "--version", "--help", "-h"],
)
def test_start_up_imports_no_array_stack_and_no_command(argv: list[str] | None) -> None:
    code = "import cubepipe.pipeline.cli\n"
    if argv is not None:
        code += (
            "import contextlib, io\n"
            "from cubepipe.pipeline.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()) as out:\n"
            f"    assert main({argv!r}) == 0\n"
            "assert out.getvalue().strip()\n"
        )
    got = _imported_after(code)
    assert got == {"heavy": [], "loaded": []}


#: Commands whose ``--help`` imports no array stack (the others' modules import the library
#: for constants their options offer: filter, ingest, export, run, demo, explain).
LIGHT_HELP = (
    "compress",
    "reconstruct",
    "stats",
    "standardize",
    "destandardize",
    "info",
    "doctor",
    "report",
    "solve",
)


def test_these_commands_help_imports_no_array_stack() -> None:
    proc = _run(
        f"""
        import contextlib, io, json, sys
        from cubepipe.pipeline.cli import main
        for cmd in {LIGHT_HELP!r}:
            with contextlib.redirect_stdout(io.StringIO()) as out:
                assert main([cmd, "--help"]) == 0, cmd
            assert out.getvalue().startswith("Usage: cubepipe " + cmd), cmd
        print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == []


def test_the_console_script_says_its_version_without_the_array_stack() -> None:
    proc = _run(
        """
        import runpy, sys
        sys.argv = ["cubepipe", "--version"]
        try:
            runpy.run_module("cubepipe.pipeline", run_name="__main__")
        except SystemExit as exc:
            assert exc.code == 0, exc.code
        heavy = [m for m in ("dask.array", "xarray", "zarr", "pandas") if m in sys.modules]
        assert not heavy, heavy
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("cubepipe, version ")


_HELP = """
def _help(group):
    with click.Context(group, info_name="cubepipe", max_content_width=100) as ctx:
        formatter = ctx.make_formatter()
        group.format_commands(ctx, formatter)
        return formatter.getvalue()
"""


def test_the_lazy_help_lists_the_real_commands_with_their_real_short_help() -> None:
    """The table that ``cubepipe --help`` lists (nothing imported) against the commands
    themselves: the same names, modules and help text, at every width."""
    proc = _run(
        "import click\n"
        "from cubepipe.pipeline.cli import cli\n" + _HELP + "lazy = _help(cli)\n"
        "cli.commands.load_all()\n"
        "print(lazy == _help(cli), 'Commands:' in lazy, lazy.count('\\n'))\n"
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["True", "True", str(len(_app.COMMANDS) + 1)]
    cli = _app.cli
    real = dict(cli.commands.items())  # loads them all
    assert sorted(real) == sorted(_app.COMMANDS)
    for name, cmd in real.items():
        module, first_sentence = _app.COMMANDS[name]
        assert cmd.callback is not None
        # jobs register through _app.command(): their click callbacks live in _app
        assert cmd.callback.__module__ in (f"cubepipe.pipeline.cli.{module}", _app.__name__)
        stand_in = click.Command(name, help=first_sentence)
        for limit in (20, 45, 60, 94, 10_000):
            assert stand_in.get_short_help_str(limit) == cmd.get_short_help_str(limit), name
        assert not cmd.hidden and not cmd.deprecated and cmd.short_help is None, name


def test_each_command_module_registers_the_commands_the_table_says() -> None:
    by_module: dict[str, list[str]] = {}
    for name, (module, _) in _app.COMMANDS.items():
        by_module.setdefault(module, []).append(name)
    proc = _run(
        f"""
        import importlib, json
        from cubepipe.pipeline.cli import cli
        got = {{}}
        for module in {sorted(by_module)!r}:
            before = set(dict.keys(cli.commands))
            importlib.import_module("cubepipe.pipeline.cli." + module)
            got[module] = sorted(set(dict.keys(cli.commands)) - before)
        print(json.dumps(got))
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {m: sorted(n) for m, n in by_module.items()}


def test_a_command_is_loaded_on_lookup_and_unknown_ones_are_not_found() -> None:
    cli = _app.cli
    assert "stats" in cli.commands and "nope" not in cli.commands
    assert cli.get_command(click.Context(cli), "stats") is cli.commands["stats"]
    assert cli.get_command(click.Context(cli), "nope") is None
    with pytest.raises(KeyError):
        cli.commands["nope"]


def test_the_help_defaults_written_out_agree_with_their_sources() -> None:
    from cubepipe.pipeline import scheduling  # noqa: PLC0415
    from cubepipe.pipeline.cli import stats as stats_cli  # noqa: PLC0415
    from cubepipe.storage import encodings  # noqa: PLC0415

    assert _app.DEFAULT_CONNECT_TIMEOUT == scheduling.DEFAULT_CONNECT_TIMEOUT
    # (the module: cubepipe.pipeline.stats.standardize is also the function's name)
    standardize = importlib.import_module("cubepipe.pipeline.stats.standardize")
    assert stats_cli.METHODS == standardize.METHODS
    assert stats_cli.ENCODINGS == encodings.ENCODINGS


@pytest.mark.parametrize("package", [cubepipe.pipeline, cubepipe.storage], ids=lambda m: m.__name__)
def test_every_public_name_resolves_and_is_listed(package: object) -> None:
    names = package.__all__  # type: ignore[attr-defined]
    assert len(names) == len(set(names))
    for name in names:
        assert getattr(package, name) is not None, name
        assert name in dir(package), name
    with pytest.raises(AttributeError, match="no attribute 'no_such_name'"):
        package.no_such_name  # type: ignore[attr-defined]  # noqa: B018
    with pytest.raises(AttributeError):
        package._private_nothing  # type: ignore[attr-defined]  # noqa: B018


def test_the_lazy_names_are_the_defining_modules_objects() -> None:
    from cubepipe.pipeline.compression.api import compress  # noqa: PLC0415
    from cubepipe.storage.store import open_cube  # noqa: PLC0415

    assert cubepipe.pipeline.compress is compress
    assert cubepipe.storage.open_cube is open_cube
    assert cubepipe.storage.store.open_cube is open_cube  # submodules as attributes


def test_importing_the_packages_imports_no_array_stack() -> None:
    got = _run(
        f"""
        import sys
        import cubepipe.pipeline, cubepipe.storage
        from cubepipe.storage import InputError, parse_chunks, __version__
        print([m for m in {HEAVY!r} if m in sys.modules])
        """
    )
    assert got.returncode == 0, got.stderr
    assert got.stdout.split() == ["[]"]


@pytest.mark.parametrize("order", ["xarray-first", "cubepipe-first"])
def test_the_accessor_is_registered_whatever_the_import_order(order: str) -> None:
    """``ds.cubepipe`` works whether xarray is imported before or after cubepipe.pipeline
    (xarray's own accessor warnings are errors here), and only its use imports the
    operations."""
    first, second = "import xarray", "import cubepipe.pipeline"
    if order == "cubepipe-first":
        first, second = second, first
    proc = _run(
        f"""
        import sys, warnings
        warnings.simplefilter("error")
        {first}
        {second}
        import xarray as xr
        import numpy as np
        assert "cubepipe.pipeline.accessor" not in sys.modules
        rng = np.random.default_rng(0)
        ds = xr.Dataset({{"cube": (("band", "y", "x"), rng.random((3, 4, 5), np.float32))}})
        acc = ds.cubepipe
        from cubepipe.pipeline.accessor import CubepipeAccessor
        assert isinstance(acc, CubepipeAccessor)
        assert xr.Dataset.cubepipe is CubepipeAccessor
        assert ds.cubepipe.standardize()["cube"].dtype == np.float32
        """
    )
    assert proc.returncode == 0, proc.stderr
