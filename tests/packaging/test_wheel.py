"""The wheel as a user gets it: built from the checkout, installed into a fresh venv, run
from a folder outside the checkout. The bundled model and PACS config must come from the
installed package, not from the source tree."""

from __future__ import annotations

import json
import os
import site
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pytest

from tests.conftest import REPO_ROOT
from tests.dicom.series_factory import write_series
from tests.tiny_models import make_bright_model

pytestmark = pytest.mark.slow

DEFAULT_MODEL = "sam2unet_phantom.onnx"  # medseg.modelcard.DEFAULT_MODEL_NAME


def _run(argv: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    return subprocess.run(
        argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def _checked(proc: subprocess.CompletedProcess[str], what: str) -> str:
    if proc.returncode != 0:
        pytest.fail(
            f"{what} failed ({proc.returncode}):\n{proc.stdout[-2000:]}{proc.stderr[-3000:]}"
        )
    return proc.stdout


def _tree(folder: Path) -> dict[str, Path]:
    """Relative POSIX name -> file, for every file under ``folder``."""
    return {p.relative_to(folder).as_posix(): p for p in folder.rglob("*") if p.is_file()}


def _crc32(path: Path) -> int:
    crc = 0
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            crc = zlib.crc32(chunk, crc)
    return crc


@pytest.fixture(scope="module")
def outside(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A working folder outside the checkout."""
    folder = tmp_path_factory.mktemp("outside")
    assert REPO_ROOT not in folder.resolve().parents
    return folder


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory, outside: Path) -> Path:
    """``pip wheel`` of the checkout (build isolation fetches hatchling)."""
    out = tmp_path_factory.mktemp("wheelhouse")
    argv = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(REPO_ROOT)]
    _checked(_run(argv, outside), "pip wheel")
    wheels = sorted(out.glob("medseg-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory, wheel: Path, outside: Path) -> Path:
    """A fresh venv seeing this interpreter's packages, with only medseg installed into it."""
    root = tmp_path_factory.mktemp("venv") / "env"
    cmd = [sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(root)]
    _checked(_run(cmd, outside), "venv")
    python = root / "bin" / "python"
    purelib = Path(_checked(_run([str(python), "-c", _PURELIB], outside), "purelib").strip())
    if sys.prefix != sys.base_prefix:
        # pytest runs in a venv: --system-site-packages reaches only the *base* interpreter's
        # packages, so chain this venv's site-packages in (after the new venv's own).
        lines = [f"import site; site.addsitedir({p!r})" for p in site.getsitepackages()]
        (purelib / "zz_medseg_test_outer.pth").write_text("\n".join(lines) + "\n")
    install = [str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index"]
    # --ignore-installed: an editable medseg in the outer environment must not count
    _checked(_run([*install, "--ignore-installed", str(wheel)], outside), "pip install")
    return root


_PURELIB = "import sysconfig; print(sysconfig.get_paths()['purelib'])"

_PROBE = """
import json, sysconfig
import medseg, medseg.modelcard as card, medseg.server.config as config
models = card.bundled_models_dir()
print(json.dumps({
    "purelib": sysconfig.get_paths()["purelib"],
    "package": medseg.__file__,
    "version": medseg.__version__,
    "models": str(models),
    "files": sorted(p.relative_to(models).as_posix() for p in models.rglob("*") if p.is_file()),
    "config": str(config.default_config_path()),
}))
"""


def test_wheel_holds_the_package_models_and_config_but_no_tests(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        infos = {info.filename: info for info in archive.infolist()}
    dist, version = wheel.name.split("-")[:2]
    assert {name.split("/", 1)[0] for name in infos} == {"medseg", f"{dist}-{version}.dist-info"}
    assert not [n for n in infos if n.startswith("tests/") or "/tests/" in n]
    assert "medseg/cli/segment.py" in infos and "medseg/pipeline.py" in infos
    for name, path in _tree(REPO_ROOT / "pacs_config").items():
        info = infos[f"medseg/bundled_config/{name}"]
        assert info.file_size == path.stat().st_size and _crc32(path) == info.CRC, name
    models = _tree(REPO_ROOT / "models")
    bundled = {
        n.removeprefix("medseg/bundled_models/"): info
        for n, info in infos.items()
        if n.startswith("medseg/bundled_models/")
    }
    assert models, "models/ is empty: hatchling then leaves bundled_models out of the wheel"
    assert set(bundled) == set(models)
    for name, path in models.items():
        assert bundled[name].file_size == path.stat().st_size, name
        assert _crc32(path) == bundled[name].CRC, name


def test_installed_package_finds_its_bundled_files(venv: Path, wheel: Path, outside: Path) -> None:
    version = wheel.name.split("-")[1]
    out = _checked(_run([str(venv / "bin" / "medseg"), "--version"], outside), "--version")
    assert out.strip() == f"medseg {version}"
    probe = json.loads(
        _checked(_run([str(venv / "bin" / "python"), "-c", _PROBE], outside), "probe")
    )
    purelib = Path(probe["purelib"]).resolve()
    assert purelib.is_relative_to(venv.resolve())
    assert Path(probe["package"]).resolve() == purelib / "medseg" / "__init__.py"
    assert probe["version"] == version
    assert Path(probe["models"]).resolve() == purelib / "medseg" / "bundled_models"
    assert probe["files"] == sorted(_tree(REPO_ROOT / "models"))
    config = Path(probe["config"]).resolve()
    assert config == purelib / "medseg" / "bundled_config" / "default.toml"
    assert config.read_bytes() == (REPO_ROOT / "pacs_config" / "default.toml").read_bytes()


def _series(folder: Path) -> Path:
    values = np.zeros((4, 40, 48))
    values[1:3, 10:30, 12:36] = 200.0  # a bright block the tiny model marks
    write_series(folder, values)
    return folder


def test_installed_cli_segments_with_a_given_model(venv: Path, outside: Path) -> None:
    series = _series(outside / "ct_given")
    model = outside / "models" / "bright.onnx"
    make_bright_model(model, size=(64, 64))
    out = outside / "given.seg.dcm"
    argv = [str(venv / "bin" / "medseg"), "segment", str(series), "-o", str(out)]
    proc = _run([*argv, "--model", str(model), "--no-progress"], outside)
    summary = _checked(proc, "medseg segment --model")
    assert "4 slices" in summary and "Traceback" not in proc.stderr
    seg = pydicom.dcmread(out)
    assert seg.Modality == "SEG" and seg.SegmentationType == "BINARY"
    frames = seg.pixel_array.reshape(-1, 40, 48)
    assert frames.shape[0] == 2  # empty frames are omitted: the block is on slices 1 and 2
    block = 2 * 20 * 24
    assert 0.9 * block <= int(frames.sum()) <= 1.1 * block


def test_installed_cli_with_the_bundled_model(venv: Path, outside: Path) -> None:
    """No --model: the bundled model if the checkout has one, else a clear one-line error."""
    series = _series(outside / "ct_bundled")
    out = outside / "bundled.seg.dcm"
    argv = [str(venv / "bin" / "medseg"), "segment", str(series), "-o", str(out), "--no-progress"]
    proc = _run(argv, outside, timeout=240)
    if (REPO_ROOT / "models" / DEFAULT_MODEL).is_file():
        _checked(proc, "medseg segment with the bundled model")
        seg = pydicom.dcmread(out)
        assert seg.Modality == "SEG"
        assert str(seg.StudyInstanceUID) == str(
            pydicom.dcmread(next(series.iterdir())).StudyInstanceUID
        )
    else:
        assert proc.returncode != 0
        err = proc.stderr.strip()
        assert len(err.splitlines()) == 1 and "Traceback" not in err, err
        assert DEFAULT_MODEL in err and "bundled_models" in err, err
        assert str(venv.resolve()) in err or str(venv) in err, err  # looked in the venv
        assert not out.exists()
