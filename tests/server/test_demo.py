"""``medseg demo`` against a running ``medseg serve``: a phantom goes out, its SEG comes back."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest

from medseg.cli import main
from medseg.dicom import load_series
from medseg.modelcard import ModelCard
from medseg.phantom import generate_phantom
from medseg.seg import write_seg
from medseg.server.demo import DEMO_SEED, DemoOptions, DemoResult, marked
from tests.dicom.series_factory import write_series
from tests.server.peers import REPO_ROOT, Processes, free_port
from tests.server.test_serve import serve


@pytest.mark.slow
def test_demo_prints_the_seg_that_came_back(
    procs: Processes, server_config: Callable, tmp_path: Path
) -> None:
    back = free_port()
    peer = {"ae_title": "MEDSEG-DEMO", "addresses": ["127.0.0.1"], "return_port": back}
    path, config = server_config(peers=[peer])
    serve(procs, path, config)
    series_uids = []
    for run in range(2):  # a second demo is a new study, not a re-send of the first
        out = tmp_path / f"back{run}.seg.dcm"
        args = [sys.executable, "-m", "medseg", "demo", "--port", str(config.listener.port)]
        args += ["--receive-port", str(back), "--timeout", "120", "-o", str(out)]
        result = subprocess.run(args, capture_output=True, text=True, cwd=REPO_ROOT, timeout=180)
        assert result.returncode == 0, result.stderr
        assert "received   SEG" in result.stdout
        assert "mask       " in result.stdout  # voxels marked, or plainly EMPTY
        seg = hd.seg.segread(out)
        assert seg.SOPInstanceUID in result.stdout
        assert seg.Modality == "SEG"
        sent = re.search(r"instances of series ([0-9.]+)", result.stdout)
        assert sent is not None, result.stdout
        assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == sent.group(1)
        series_uids.append((seg.StudyInstanceUID, sent.group(1)))
    assert series_uids[0][0] != series_uids[1][0], "same study UID sent twice"
    assert series_uids[0][1] != series_uids[1][1], "same series UID sent twice"


def test_demo_without_listener_fails_in_one_line(tmp_path: Path) -> None:
    args = [sys.executable, "-m", "medseg", "demo", "--port", str(free_port())]
    args += ["--receive-port", str(free_port()), "--timeout", "5"]
    result = subprocess.run(args, capture_output=True, text=True, cwd=REPO_ROOT, timeout=120)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert "cannot associate" in result.stderr


@pytest.mark.parametrize(
    ("option", "words"),
    [
        (["--called-ae", "WAY-TOO-LONG-AE-TITLE-X"], "--called-ae: 'WAY-TOO-LONG-AE-TITLE-X'"),
        (["--calling-ae", "BACK\\SLASH"], "--calling-ae"),
        (["--calling-ae", "TAB\tAE"], "--calling-ae"),
        (["--port", "99999"], "--port: must be 1..65535, got 99999"),
        (["--receive-port", "0"], "--receive-port: must be 1..65535"),
        (["--timeout", "-5"], "--timeout: must be a number of seconds > 0"),
        (["--timeout", "nan"], "--timeout"),
    ],
)
def test_demo_refuses_bad_options_up_front_in_one_line(option, words, capsys) -> None:
    assert main(["demo", *option]) == 3
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("medseg demo: error:") and words in err, err


def test_demo_default_seed_sends_a_phantom_with_a_lesion() -> None:
    assert DemoOptions().seed == DEMO_SEED
    assert len(generate_phantom(DEMO_SEED).lesion_list) >= 1


def _seg_of(tmp_path: Path, mask: np.ndarray) -> pydicom.Dataset:
    write_series(tmp_path / "ct", np.zeros(mask.shape))
    volume = load_series([tmp_path / "ct"]).volume
    write_seg(volume, mask[None], ModelCard(name="demo"), tmp_path / "seg.dcm")
    return pydicom.dcmread(tmp_path / "seg.dcm")  # as the demo's receiver decodes it


def test_marked_counts_the_voxels_of_a_seg_and_an_empty_seg_marks_none(tmp_path: Path) -> None:
    mask = np.zeros((4, 16, 16), bool)
    assert marked(_seg_of(tmp_path / "empty", mask)) == (0, 0)
    mask[1:3, 4:8, 5:10] = True
    assert marked(_seg_of(tmp_path / "block", mask)) == (40, 2)


def test_demo_summary_says_plainly_when_the_seg_is_empty() -> None:
    result = DemoResult("1.2", 40, "1.3", 40, ("Lesion",), 40, 2.0, None, 0, 0, 1)
    assert "EMPTY: nothing was segmented (the phantom has 1 lesion(s))" in result.summary()
    found = DemoResult("1.2", 40, "1.3", 3, ("Lesion",), 40, 2.0, None, 812, 3, 1)
    assert "812 voxel(s) marked on 3 frame(s)" in found.summary()
    assert "EMPTY" not in found.summary()
