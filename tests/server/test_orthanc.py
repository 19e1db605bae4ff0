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


def orthanc_retrieve(port: int, method: str = "move", **settings: object) -> dict:
    """A ``[retrieve]`` table naming the test Orthanc, with short backoffs and timeouts."""
    return {
        "method": method,
        "ae_title": "ORTHANC",
        "host": "127.0.0.1",
        "port": port,
        "initial_backoff_seconds": 0.2,
        "max_backoff_seconds": 0.5,
        "timeout_seconds": 20.0,
        **settings,
    }


def upload(rest: OrthancRest, files: list[Path]) -> str:
    """REST-upload files to Orthanc; returns the Orthanc id of the (last) series."""
    series_id = ""
    for file in files:
        series_id = rest.post("/instances", file.read_bytes())["ParentSeries"]
    return series_id


@pytest.mark.slow
@pytest.mark.parametrize("method", ["move", "get"])
def test_a_series_retrieved_from_orthanc_lands_in_the_spool_like_a_received_one(
    method: str,
    orthanc: Callable,
    server_config: Callable,
    running: Callable,
    tmp_path: Path,
) -> None:
    medseg_port = free_port()
    rest, orthanc_dicom = orthanc(medseg_port)
    series = write_ct(tmp_path / "series")
    upload(rest, list(series.paths))
    peer = {"ae_title": "ORTHANC", "addresses": ["127.0.0.1"]}
    _, config = server_config(
        peers=[peer],
        listener={"port": medseg_port},
        retrieve=orthanc_retrieve(orthanc_dicom, method, max_tries=2),
    )
    service = running(config, workers=0)
    book = service.retriever.book
    book.request(series.study_uid, series.series_uid)
    absent = "1.2.826.0.1.3680043.8.498.1"  # a series Orthanc does not hold
    book.request(series.study_uid, absent)
    service.retriever.wake()

    def settled() -> bool:
        return all(book.get(uid).state in ("done", "failed") for uid in (series.series_uid, absent))

    wait_until(settled, 60, "both retrievals settled")
    got = book.get(series.series_uid)
    assert (got.state, got.instances, got.attempts) == ("done", len(series.sop_uids), 1)
    spooled = service.spool.series_files(series.study_uid, series.series_uid)
    assert sorted(p.stem for p in spooled) == sorted(series.sop_uids)
    tracked = service.tracker.get(series.series_uid)
    assert tracked.calling_ae == "ORTHANC" and tracked.is_image
    # Orthanc answers 0xC000 for a series it does not hold (others: success, 0 sent)
    missing = book.get(absent)
    assert (missing.state, missing.attempts) == ("failed", 2), "tried max_tries times"
    assert "0xC000, unable to process" in missing.error
    assert service.tracker.get(absent) is None


@pytest.mark.slow
def test_a_mark_pushed_from_orthanc_gets_its_series_by_c_move_and_seg_and_sr_land_in_orthanc(
    orthanc: Callable,
    server_config: Callable,
    procs: Processes,
    prompted_bright_model: Path,
    tmp_path: Path,
) -> None:
    from tests.server.test_mark_jobs import MARKS_RULE, gsps_line
    from tests.server.test_serve import status

    medseg_port = free_port()
    rest, orthanc_dicom = orthanc(medseg_port)
    peer = {"ae_title": "ORTHANC", "addresses": ["127.0.0.1"], "return_port": orthanc_dicom}
    path, config = server_config(
        peers=[peer],
        rules=[MARKS_RULE],
        listener={"port": medseg_port},
        model={"path": str(prompted_bright_model)},
        retrieve=orthanc_retrieve(orthanc_dicom),
    )
    serve(procs, path, config)
    series = write_ct(tmp_path / "series")
    upload(rest, list(series.paths))
    mark = gsps_line(series, tmp_path / "marks")
    mark_series = upload(rest, [mark])
    study_id = rest.get(f"/series/{mark_series}")["ParentStudy"]
    # only the mark goes to medseg: the series it is drawn on stays in Orthanc
    rest.post("/modalities/medseg/store", mark_series.encode())

    def results() -> dict[str, dict] | None:
        found = {}
        for sid in rest.get(f"/studies/{study_id}")["Series"]:
            info = rest.get(f"/series/{sid}")
            modality = info["MainDicomTags"].get("Modality")
            if modality in ("SEG", "SR"):
                found[modality] = info
        return found if len(found) == 2 else None

    found = wait_until(results, 180, "the SEG and the SR in Orthanc")
    (seg_id,) = found["SEG"]["Instances"]
    seg = rest.get(f"/instances/{seg_id}/tags?simplify")
    assert seg["ReferencedSeriesSequence"][0]["SeriesInstanceUID"] == series.series_uid
    assert seg["SegmentSequence"][0]["SegmentAlgorithmType"] == "SEMIAUTOMATIC"
    (sr_id,) = found["SR"]["Instances"]
    sr = rest.get(f"/instances/{sr_id}/tags?simplify")
    evidence = {
        (item["SeriesInstanceUID"], ref["ReferencedSOPInstanceUID"])
        for study in sr["CurrentRequestedProcedureEvidenceSequence"]
        for item in study["ReferencedSeriesSequence"]
        for ref in item["ReferencedSOPSequence"]
    }
    assert {uid for s, uid in evidence if s == series.series_uid} == set(series.sop_uids)
    assert seg["SOPInstanceUID"] in {uid for _, uid in evidence}
    state = status(path)
    assert state["retrieve"]["counts"] == {"done": 1}
    assert state["marks"]["counts"] == {"submitted": 1}
