"""``medseg demo`` against a running ``medseg serve``: a phantom goes out, its SEG comes back."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import highdicom as hd
import pytest

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
