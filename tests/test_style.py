"""The code stays formatted and lint-free (ruff, configured in pyproject.toml)."""

import subprocess
import sys
from pathlib import Path

from conftest import REPO

RUFF = Path(sys.executable).parent / "ruff"
PATHS = ["sequifier", "tests", "benchmarks", "scripts"]


def test_ruff_lint_and_format():
    lint = subprocess.run([RUFF, "check", "--no-cache", *PATHS], cwd=REPO, capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout
    form = subprocess.run(
        [RUFF, "format", "--no-cache", "--check", *PATHS], cwd=REPO, capture_output=True, text=True
    )
    assert form.returncode == 0, form.stdout
