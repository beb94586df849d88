"""The code base stays clean under the project's ruff and mypy configurations."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_ruff_check_passes():
    ruff = shutil.which("ruff")
    assert ruff, "ruff is a test dependency (pip install -e '.[test]')"
    result = subprocess.run([ruff, "check", str(ROOT)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_reports_no_errors():
    mypy = shutil.which("mypy")
    if not mypy:
        pytest.skip("mypy is not installed (a test dependency: pip install -e '.[test]')")
    # [tool.mypy] in pyproject.toml names the files (the package); the packages it reads
    # are those of the environment running the tests
    result = subprocess.run(
        [mypy, "--python-executable", sys.executable],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
