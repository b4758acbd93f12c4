"""The structure docs/architecture.md promises: no import cycle, no torch under the command
line, models that import only torch. Function lengths are printed, not checked."""

import subprocess
import sys

import pytest

from tests.conftest import REPO


def test_the_structure_keeps_its_promises(capsys):
    sys.path.insert(0, str(REPO / "tools"))
    try:
        import structure
    finally:
        sys.path.remove(str(REPO / "tools"))
    assert structure.check() == []
    assert "import cycles: none" in capsys.readouterr().out


@pytest.mark.slow
def test_help_imports_no_torch(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "cnnbench", "--help"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert proc.returncode == 0 and "cnnbench: train and compare" in proc.stdout
    imported = [line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines()]
    assert "cnnbench.cli" in imported
    assert not [m for m in imported if m == "torch" or m.startswith("torch.")]
