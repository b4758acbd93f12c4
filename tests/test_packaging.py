"""A non-editable install ships the configs: build the wheel, install it apart, run it."""

import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow

NOT_SOURCE = shutil.ignore_patterns(
    ".git",
    "build",
    "*.egg-info",
    "outputs",
    "multirun",
    "data",
    ".venv",
    "__pycache__",
    ".pytest_cache",
    ".ruff_cache",
)


def run(*args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, **kwargs)


def test_wheel_ships_configs_and_runs_from_anywhere(tmp_path):
    # built from a copy: a build inside the checkout leaves build/ behind, and the next
    # build would ship the stale files in it
    source = tmp_path / "source"
    shutil.copytree(REPO, source, ignore=NOT_SOURCE)
    pip_wheel = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
    run(*pip_wheel, "-w", tmp_path, source, check=True)
    [wheel] = tmp_path.glob("cnnbench-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    shipped = {n.removeprefix("cnnbench/") for n in names if n.startswith("cnnbench/conf/")}
    expected = {str(p.relative_to(REPO)) for p in (REPO / "conf").rglob("*.yaml")}
    assert shipped == expected

    # a venv that sees this interpreter's torch and hydra, with cnnbench only from the wheel.
    # Not --system-site-packages: made from a venv's Python, that would see the base
    # interpreter's packages rather than this venv's; a .pth file names this one's instead
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", venv, check=True)
    python = venv / "bin" / "python"
    purelib = run(
        python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", check=True
    ).stdout.strip()
    (Path(purelib) / "outer.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    run(python, "-m", "pip", "install", "-q", "--no-deps", wheel, check=True)  # this venv's pip
    proc = run(python, "-P", "-m", "cnnbench", "--cfg", "job", "model=mlp", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "cnnbench.models.MLP" in proc.stdout
    where = run(
        python,
        "-P",
        "-c",
        "import cnnbench.config as c; print(c.CONFIG_DIR)",
        cwd=tmp_path,
        check=True,
    ).stdout
    assert str(venv) in where
