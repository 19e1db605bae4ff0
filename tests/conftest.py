"""Fixtures shared by every test package."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """``../shared`` beside the repository: real DICOM and fidelity fixtures (read-only)."""
    if not SHARED.is_dir():
        pytest.fail(f"{SHARED} is missing: the tests need ../shared beside the checkout")
    return SHARED


@pytest.fixture
def bright_model(tmp_path: Path) -> Path:
    """A tiny ONNX model (SAM2-UNet I/O contract) that segments bright pixels."""
    from tests.tiny_models import make_bright_model

    path = tmp_path / "models" / "bright.onnx"
    make_bright_model(path)
    return path


@pytest.fixture
def prompted_bright_model(tmp_path: Path) -> Path:
    """A tiny promptable ONNX model: bright pixels connected to the prompt (64 x 64 input)."""
    from tests.tiny_models import make_prompted_bright_model

    path = tmp_path / "models" / "prompted.onnx"
    make_prompted_bright_model(path, (64, 64))
    return path
