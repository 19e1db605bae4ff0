"""Orthanc as the PACS: upload over REST, push to medseg, the SEG lands back in Orthanc."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.server.peers import Processes, free_port, port_open, wait_until, write_ct
from tests.server.test_serve import serve

ORTHANC = "/usr/sbin/Orthanc"


class OrthancRest:
    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"

    def request(self, method: str, path: str, body: bytes | None = None) -> object:
        req = urllib.request.Request(self.base + path, data=body, method=method)
        with urllib.request.urlopen(req, timeout=60) as response:
            return json.loads(response.read() or b"null")

    def get(self, path: str) -> object:
        return self.request("GET", path)

    def post(self, path: str, body: bytes) -> object:
        return self.request("POST", path, body)


@pytest.fixture
def orthanc(procs: Processes, tmp_path: Path) -> Callable[[int], tuple[OrthancRest, int]]:
    def start(medseg_port: int) -> tuple[OrthancRest, int]:
        http_port, dicom_port = free_port(), free_port()
        storage = tmp_path / "orthanc-db"
        config = {
            "Name": "medseg-test",
            "StorageDirectory": str(storage),
            "IndexDirectory": str(storage),
            "HttpPort": http_port,
            "DicomPort": dicom_port,
            "DicomAet": "ORTHANC",
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomModalities": {"medseg": ["MEDSEG", "127.0.0.1", medseg_port]},
            "Plugins": [],
            "SaveJobs": False,
        }
        path = tmp_path / "orthanc.json"
        path.write_text(json.dumps(config))
        procs.start([ORTHANC, str(path)], "orthanc")
        wait_until(lambda: port_open(http_port) and port_open(dicom_port), 60, "Orthanc")
        return OrthancRest(http_port), dicom_port

    return start


@pytest.mark.slow
def test_orthanc_pushes_series_and_gets_the_seg_back(
    orthanc: Callable, server_config: Callable, procs: Processes, tmp_path: Path
) -> None:
    medseg_port = free_port()
    rest, orthanc_dicom = orthanc(medseg_port)
    peer = {
        "ae_title": "ORTHANC",
        "addresses": ["127.0.0.1"],
        "return_port": orthanc_dicom,
        "return_host": "127.0.0.1",
    }
    path, config = server_config(peers=[peer], listener={"port": medseg_port})
    serve(procs, path, config)

    series = write_ct(tmp_path / "series")
    series_id = None
    for file in series.paths:
        uploaded = rest.post("/instances", file.read_bytes())
        series_id = uploaded["ParentSeries"]
    study_id = rest.get(f"/series/{series_id}")["ParentStudy"]
    answer = rest.post("/modalities/medseg/store", series_id.encode())
    assert answer is not None

    def seg_series() -> list[dict]:
        found = []
        for sid in rest.get(f"/studies/{study_id}")["Series"]:
            info = rest.get(f"/series/{sid}")
            if info["MainDicomTags"].get("Modality") == "SEG":
                found.append(info)
        return found

    (seg,) = wait_until(seg_series, 120, "the SEG in Orthanc")
    (instance_id,) = seg["Instances"]
    tags = rest.get(f"/instances/{instance_id}/tags?simplify")
    assert tags["StudyInstanceUID"] == series.study_uid
    assert tags["ReferencedSeriesSequence"][0]["SeriesInstanceUID"] == series.series_uid
    referenced = {
        item["ReferencedSOPInstanceUID"]
        for item in tags["ReferencedSeriesSequence"][0]["ReferencedInstanceSequence"]
    }
    assert referenced <= set(series.sop_uids) and referenced
    assert int(tags["NumberOfFrames"]) == 6  # the bright cube's slices
