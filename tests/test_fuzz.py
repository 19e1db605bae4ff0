"""The fuzz script (benchmarks/fuzz_dicom.py) runs, briefly, so it cannot rot: both targets,
a real ``medseg serve`` on 127.0.0.1 for the PDU one; nothing may crash or hang."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_a_few_seconds_of_fuzzing_find_no_crash_and_no_hang(tmp_path: Path) -> None:
    report = tmp_path / "fuzz.json"
    script = REPO / "benchmarks" / "fuzz_dicom.py"
    args = [sys.executable, str(script), "--seconds", "8", "--seed", "7", "--json", str(report)]
    done = subprocess.run(args, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    targets = {r["target"]: r for r in json.loads(report.read_text())}
    assert set(targets) == {"dataset", "pdu"}
    for result in targets.values():
        assert result["iterations"] > 10 and result["crashes"] == {} and result["hangs"] == 0
        assert 0 < result["peak_rss_mb"] < 1024
