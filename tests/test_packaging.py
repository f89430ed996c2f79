"""Packaging: the wheel installs cubepipe.storage/cubepipe.pipeline and no bare top-level
`storage` or `pipeline`; environment.yml lists what pyproject.toml does."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
import venv
import zipfile
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]

# pip name -> conda-forge name, where they differ.
CONDA_NAME = {
    "opencv-python-headless": "opencv",
    "build": "python-build",
}
# Extras that conda users install by hand (CUDA- and framework-specific builds).
NOT_IN_CONDA_ENV = {"gpu", "gpu13", "ae", "torch"}


def _name(req: str) -> str:
    return re.split(r"[\s\[<>=!~;]", req.strip(), maxsplit=1)[0].lower()


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_environment_yml_matches_pyproject() -> None:
    project = _pyproject()["project"]
    wanted = {_name(r) for r in project["dependencies"]}
    for extra, reqs in project["optional-dependencies"].items():
        if extra not in NOT_IN_CONDA_ENV:
            wanted |= {_name(r) for r in reqs}
    wanted = {CONDA_NAME.get(n, n) for n in wanted}
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    deps = env["dependencies"]
    from_pip = [r for d in deps if isinstance(d, dict) for r in d.get("pip", [])]
    listed = {_name(d) for d in [*deps, *from_pip] if isinstance(d, str)} - {"python", "pip"}
    assert "conda-forge" in env["channels"]
    assert wanted - listed == set(), "in pyproject.toml but not environment.yml"
    assert listed - wanted == set(), "in environment.yml but not pyproject.toml"


def test_every_source_package_is_listed_for_setuptools() -> None:
    listed = set(_pyproject()["tool"]["setuptools"]["packages"])
    found = set()
    for top, dotted in (("storage", "cubepipe.storage"), ("pipeline", "cubepipe.pipeline")):
        for init in (ROOT / top).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / top).parts
            found.add(".".join((dotted, *rel)))
    assert found == listed


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("setuptools")
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, src / name)
    for top in ("storage", "pipeline"):
        shutil.copytree(ROOT / top, src / top, ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(out),
            str(src),
        ],
        check=True,
        capture_output=True,
    )
    (whl,) = out.glob("cubepipe-*.whl")
    return whl


def test_wheel_has_only_the_cubepipe_namespace(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"cubepipe"}
    assert "cubepipe/storage/__init__.py" in names
    assert "cubepipe/pipeline/__init__.py" in names
    assert "cubepipe/pipeline/cli/__init__.py" in names
    assert "cubepipe/__init__.py" not in names  # an implicit namespace package
    shipped = {n for n in names if n.endswith(".py")}
    for top in ("storage", "pipeline"):
        for f in (ROOT / top).rglob("*.py"):
            assert f"cubepipe/{top}/{f.relative_to(ROOT / top).as_posix()}" in shipped
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "cubepipe = cubepipe.pipeline.cli:run" in zipfile.ZipFile(wheel).read(entry).decode()


def test_clean_venv_install_has_no_bare_top_level_packages(wheel: Path, tmp_path: Path) -> None:
    env = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env)
    py = env / "bin" / "python"
    subprocess.run(
        [str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
        check=True,
        capture_output=True,
    )
    probe = (
        "import importlib.util as u, json;"
        "print(json.dumps({m: u.find_spec(m) is not None for m in "
        "['cubepipe', 'cubepipe.storage', 'cubepipe.pipeline', 'storage', 'pipeline']}))"
    )
    out = subprocess.run(
        [str(py), "-I", "-c", probe], capture_output=True, text=True, check=True, cwd=tmp_path
    )
    assert out.stdout.strip() == (
        '{"cubepipe": true, "cubepipe.storage": true, "cubepipe.pipeline": true, '
        '"storage": false, "pipeline": false}'
    )
    assert (env / "bin" / "cubepipe").exists()
