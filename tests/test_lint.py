"""The code base stays ruff-clean (the rules live in pyproject.toml)."""

from __future__ import annotations

import shutil
import subprocess

from tests.conftest import REPO_ROOT


def _ruff(*args: str) -> subprocess.CompletedProcess[str]:
    ruff = shutil.which("ruff")
    assert ruff, "ruff is part of the [test] extra"
    return subprocess.run([ruff, *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)


def test_ruff_check_finds_nothing() -> None:
    result = _ruff("check", "medseg", "tests", "benchmarks")
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_format_leaves_everything_as_it_is() -> None:
    """Code and the python examples in docs/*.md alike (ruff formats Markdown code blocks)."""
    result = _ruff("format", "--check", ".")
    assert result.returncode == 0, result.stdout + result.stderr
