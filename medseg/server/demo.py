"""``medseg demo``: prove a running listener works end to end, as a PACS would see it.

Generates a phantom CT series, starts a temporary C-STORE receiver on ``receive_port``
(the listener's configuration must name it as the calling AE's return port; the default
configuration does, for AE ``MEDSEG-DEMO`` and port 11113), sends the series, and waits for
the SEG that references it.
"""

from __future__ import annotations

import io
import logging
import math
import queue
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pynetdicom import AE, Association, evt
from pynetdicom.sop_class import CTImageStorage, SegmentationStorage

from medseg.durable import write_bytes
from medseg.errors import ConfigError, MedsegError, OutputError
from medseg.server.config import check_ae_title, check_port
from medseg.server.listener import TRANSFER_SYNTAXES

logger = logging.getLogger(__name__)


class DemoError(MedsegError):
    """The listener could not be reached, refused the series, or sent nothing back in time."""


# The phantom of seed 0 has no lesion, so its SEG is empty and proves little; seed 1 has
# one liver lesion of 39 mm (medseg.phantom.generate_phantom(1).lesion_list).
DEMO_SEED = 1


@dataclass(frozen=True)
class DemoOptions:
    """Where to send the phantom and wait for its SEG; checked here, before any socket
    opens, so a typo is one line (exit 3) rather than a traceback from pynetdicom."""

    host: str = "127.0.0.1"
    port: int = 11112
    called_ae: str = "MEDSEG"
    calling_ae: str = "MEDSEG-DEMO"
    receive_port: int = 11113
    timeout: float = 300.0
    seed: int = DEMO_SEED
    output: Path | None = None

    def __post_init__(self) -> None:
        check_ae_title("--called-ae", self.called_ae)
        check_ae_title("--calling-ae", self.calling_ae)
        check_port("--port", self.port)
        check_port("--receive-port", self.receive_port)
        if not math.isfinite(self.timeout) or self.timeout <= 0:
            raise ConfigError(f"--timeout: must be a number of seconds > 0, got {self.timeout}")


@dataclass(frozen=True)
class DemoResult:
    """What came back: the SEG's identity and content, and how long the round trip took."""

    series_uid: str
    instances_sent: int
    seg_uid: str
    frames: int
    segments: tuple[str, ...]
    referenced: int
    seconds: float
    output: Path | None
    marked_voxels: int = 0
    marked_frames: int = 0
    phantom_lesions: int = 0

    def summary(self) -> str:
        if self.marked_voxels:
            mask = f"{self.marked_voxels} voxel(s) marked on {self.marked_frames} frame(s)"
        else:
            mask = (
                f"EMPTY: nothing was segmented (the phantom has {self.phantom_lesions} lesion(s))"
            )
        lines = [
            f"sent       {self.instances_sent} CT instances of series {self.series_uid} "
            f"(a phantom with {self.phantom_lesions} lesion(s))",
            f"received   SEG {self.seg_uid} after {self.seconds:.1f} s",
            f"content    {self.frames} frame(s), segment(s): {', '.join(self.segments)}, "
            f"referencing {self.referenced} of the sent instances",
            f"mask       {mask}",
        ]
        if self.output:
            lines.append(f"saved      {self.output}")
        return "\n".join(lines)


def _associate(options: DemoOptions) -> Association:
    ae = AE(ae_title=options.calling_ae)
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate(options.host, options.port, ae_title=options.called_ae)
    if not assoc.is_established:
        raise DemoError(
            f"cannot associate with {options.called_ae} at {options.host}:{options.port} "
            f"as {options.calling_ae} (is `medseg serve` running, is the AE allowed?)"
        )
    return assoc


def _send(assoc: Association, files: list[Path]) -> None:
    try:
        for path in files:
            status = getattr(assoc.send_c_store(path), "Status", None)
            if status != 0:
                code = "no response" if status is None else f"status 0x{status:04X}"
                raise DemoError(f"the listener refused {path.name}: {code}")
    finally:
        if assoc.is_established:
            assoc.release()


def run_demo(options: DemoOptions) -> DemoResult:
    """Send a phantom, wait for its SEG; ``DemoError`` if none arrives within the timeout."""
    from medseg.phantom import write_phantom

    received: queue.Queue[bytes] = queue.Queue()

    def on_store(event: Any) -> int:
        received.put(event.encoded_dataset(include_meta=True))
        return 0x0000

    receiver = AE(ae_title=options.calling_ae)
    receiver.add_supported_context(SegmentationStorage, TRANSFER_SYNTAXES)
    try:
        server = receiver.start_server(
            ("0.0.0.0", options.receive_port),
            block=False,
            evt_handlers=[(evt.EVT_C_STORE, on_store)],
        )
    except OSError as exc:
        raise DemoError(f"cannot receive on port {options.receive_port}: {exc.strerror}") from exc
    try:
        with tempfile.TemporaryDirectory(prefix="medseg-demo-") as tmp:
            _associate(options).release()  # fail fast, before making the phantom
            # Fresh study/series/instance UIDs on every run: a PACS or a listener that skips
            # series it has already processed would otherwise ignore a second demo.
            phantom = write_phantom(Path(tmp), options.seed, unique_uids=True)
            files = sorted(phantom.series_dir.glob("*.dcm"))
            started = time.monotonic()
            _send(_associate(options), files)
            encoded, seg = _wait_for_seg(received, phantom.series_instance_uid, options.timeout)
            seconds = time.monotonic() - started
    finally:
        server.shutdown()
    if options.output is not None:
        try:
            write_bytes(Path(options.output), encoded)
        except OSError as exc:
            raise OutputError(f"cannot save the SEG to {options.output}: {exc}") from exc
    refs = seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence
    marked_voxels, marked_frames = marked(seg)
    return DemoResult(
        series_uid=phantom.series_instance_uid,
        instances_sent=len(files),
        seg_uid=str(seg.SOPInstanceUID),
        frames=int(seg.get("NumberOfFrames", 0)),
        segments=tuple(str(s.SegmentLabel) for s in seg.SegmentSequence),
        referenced=len(refs),
        seconds=seconds,
        output=options.output,
        marked_voxels=marked_voxels,
        marked_frames=marked_frames,
        phantom_lesions=len(phantom.phantom.lesion_list),
    )


def marked(seg: pydicom.Dataset) -> tuple[int, int]:
    """(non-zero voxels, frames holding any) of a SEG: an all-empty SEG is valid DICOM (it
    lists every frame, blank) and must not read as a finding."""
    frames = np.asarray(seg.pixel_array).reshape(int(seg.get("NumberOfFrames", 1)), -1)
    per_frame = np.count_nonzero(frames, axis=1)
    return int(per_frame.sum()), int(np.count_nonzero(per_frame))


def _wait_for_seg(
    received: queue.Queue[bytes], series_uid: str, timeout: float
) -> tuple[bytes, pydicom.Dataset]:
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        try:
            encoded = received.get(timeout=left)
        except queue.Empty:
            break
        ds = pydicom.dcmread(io.BytesIO(encoded))
        refs = ds.get("ReferencedSeriesSequence") or []
        if any(item.SeriesInstanceUID == series_uid for item in refs):
            return encoded, ds
        logger.info("ignoring a SEG for another series")
    raise DemoError(
        f"no SEG for series {series_uid} came back within {timeout:.0f} s "
        "(see `medseg status` on the listener)"
    )
