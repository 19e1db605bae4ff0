"""A random scene written as a CT or MR-like DICOM series with its lesion truth.

Held-out evaluation runs ``medseg segment`` on these files exactly as on a scanner's
series. The grid is drawn per seed too: field of view 150-500 mm, pixel spacing chosen so
the matrix stays at most ``max_matrix`` pixels across (0.5-1.5 mm where the field allows),
slice thickness 0.6-5 mm over 60-100 mm. The truth is a DICOM-SEG (every lesion in one
segment, as ``medseg eval`` reads it) and, per lesion, the values a reader would use to
prompt it: the centre voxel of its largest cross-section and the tight box around it,
in ``truth.json``; ``labels.npz`` holds the lesion labels (one number per lesion).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage, generate_uid
from scipy import ndimage

from medseg.errors import OutputError
from medseg.synthetic.scene import Scene, random_scene, render


@dataclass(frozen=True)
class LesionTruth:
    """One lesion of a written series, in voxel indices (slice k from the first file)."""

    number: int
    kind: str
    volume_ml: float
    key_slice: int
    centre: tuple[int, int]  # row, col: the deepest pixel of the largest cross-section
    box: tuple[int, int, int, int]  # r0, c0, r1, c1 (inclusive) on the key slice


@dataclass(frozen=True)
class SeriesTruth:
    folder: Path
    series_dir: Path
    seg_path: Path
    family: str
    modality: str
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    lesions: tuple[LesionTruth, ...]


def _uid(*parts: object) -> str:
    return generate_uid(entropy_srcs=["medseg-synthetic", *[str(p) for p in parts]])


def _grid(seed: int, scene: Scene, max_matrix: int) -> tuple[int, float, int, float]:
    rng = np.random.default_rng([seed, 99])
    spacing = max(float(rng.uniform(0.5, 1.5)), scene.fov_mm / max_matrix)
    matrix = round(scene.fov_mm / spacing)
    thickness = float(np.exp(rng.uniform(np.log(0.6), np.log(5.0))))
    span = float(rng.uniform(60, 100))
    slices = max(8, min(round(span / thickness), 160))
    return matrix, scene.fov_mm / matrix, slices, thickness


def lesion_truths(
    labels: np.ndarray, kinds: tuple[str, ...], voxel_ml: float
) -> tuple[LesionTruth, ...]:
    """Per lesion number 1..len(kinds) present in ``labels``: where a reader would prompt it."""
    out = []
    for number in range(1, len(kinds) + 1):
        mask = labels == number
        if not mask.any():
            continue
        areas = mask.sum(axis=(1, 2))
        k = int(areas.argmax())
        depth = ndimage.distance_transform_edt(mask[k])
        r, c = np.unravel_index(int(depth.argmax()), depth.shape)
        rows, cols = np.nonzero(mask[k])
        box = (int(rows.min()), int(cols.min()), int(rows.max()), int(cols.max()))
        out.append(
            LesionTruth(
                number,
                kinds[number - 1],
                float(mask.sum() * voxel_ml),
                k,
                (int(r), int(c)),
                box,
            )
        )
    return tuple(out)


def read_scene_truth(folder: Path) -> tuple[SeriesTruth, np.ndarray]:
    """What ``write_scene_series`` wrote below ``folder``: its truth and lesion labels."""
    record = json.loads((Path(folder) / "truth.json").read_text())
    lesions = tuple(
        LesionTruth(**{**item, "centre": tuple(item["centre"]), "box": tuple(item["box"])})
        for item in record.pop("lesions")
    )
    truth = SeriesTruth(
        **{
            **record,
            "folder": Path(record["folder"]),
            "series_dir": Path(record["series_dir"]),
            "seg_path": Path(record["seg_path"]),
            "shape": tuple(record["shape"]),
            "spacing": tuple(record["spacing"]),
            "lesions": lesions,
        }
    )
    return truth, np.load(Path(folder) / "labels.npz")["labels"]


def write_scene_series(
    out_dir: Path,
    seed: int,
    family: str,
    modality: str,
    *,
    max_matrix: int = 512,
    lesion_free: float = 0.2,
) -> tuple[SeriesTruth, np.ndarray]:
    """Write seed's scene as a series below ``out_dir``; returns the truth and the lesion
    labels (slices, rows, cols) in the order the files load (slice k = InstanceNumber k+1)."""
    from medseg.dicom import load_series
    from medseg.phantom import TRUTH_CARD, TRUTH_FAMILY
    from medseg.seg import write_seg

    scene = random_scene(seed, family, modality, lesion_free=lesion_free)
    matrix, spacing, slices, thickness = _grid(seed, scene, max_matrix)
    zs = (np.arange(slices) - (slices - 1) / 2) * thickness
    image, labels = render(scene, zs, matrix, matrix)
    folder = Path(out_dir)
    series_dir = folder / modality.lower()
    try:
        _write_files(series_dir, seed, scene, image, spacing, thickness, zs)
    except OSError as exc:
        raise OutputError(f"cannot write series to {series_dir}: {exc}") from exc
    volume = load_series(series_dir).volume
    seg_path = folder / "truth.seg.dcm"
    write_seg(
        volume,
        (labels > 0)[None],
        TRUTH_CARD,
        seg_path,
        series_number=2,
        series_description="synthetic lesion truth",
        algorithm_family=TRUTH_FAMILY,
    )
    voxel_ml = spacing * spacing * thickness / 1000.0
    truth = SeriesTruth(
        folder,
        series_dir,
        seg_path,
        family,
        modality,
        labels.shape,
        (thickness, spacing, spacing),
        lesion_truths(labels, tuple(lesion.kind for lesion in scene.lesions), voxel_ml),
    )
    np.savez_compressed(folder / "labels.npz", labels=labels)  # one number per lesion
    record = asdict(truth) | {"folder": str(folder), "series_dir": str(series_dir)}
    record["seg_path"] = str(seg_path)
    (folder / "truth.json").write_text(json.dumps(record, indent=1) + "\n")
    return truth, labels


def _write_files(
    folder: Path,
    seed: int,
    scene: Scene,
    image: np.ndarray,
    spacing: float,
    thickness: float,
    zs: np.ndarray,
) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    key = (seed, scene.family, scene.modality)
    study, series, frame = _uid(key, "study"), _uid(key, "series"), _uid(key, "for")
    ct = scene.modality == "CT"
    origin = -scene.fov_mm / 2 + spacing / 2
    if ct:
        stored = np.clip(np.rint(image) + 1024, -32768, 32767).astype(np.int16)
    else:
        top = max(float(image.max()), 1.0)
        scale = min(1.0, 4000.0 / top) if top > 4000 else 1.0
        stored = np.clip(np.rint(image * scale), 0, 65535).astype(np.uint16)
    for k in range(len(zs)):
        ds = Dataset()
        ds.SOPClassUID = CTImageStorage if ct else MRImageStorage
        ds.SOPInstanceUID = _uid(key, "image", k)
        ds.PatientName = f"SYNTHETIC^{scene.family}{seed}"
        ds.PatientID = f"SYN-{scene.family[:3].upper()}-{seed}"
        ds.PatientBirthDate = "19000101"
        ds.PatientSex = "O"
        ds.PatientIdentityRemoved = "YES"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = "20000101"
        ds.StudyTime = ds.SeriesTime = ds.ContentTime = "120000"
        ds.StudyID = f"S{seed}"[:16]
        ds.AccessionNumber = f"S{seed}"[:16]
        ds.ReferringPhysicianName = ""
        ds.StudyDescription = "medseg synthetic scene (not a patient)"
        ds.SeriesDescription = f"synthetic {scene.family} {scene.modality} seed {seed}"
        ds.Modality = scene.modality
        ds.Manufacturer = "medseg"
        ds.SeriesNumber = 1
        ds.InstanceNumber = k + 1
        ds.PositionReferenceIndicator = ""
        ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
        ds.PatientPosition = "FFS"
        ds.ImagePositionPatient = [origin, origin, float(zs[k])]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [spacing, spacing]
        ds.SliceThickness = thickness
        ds.SpacingBetweenSlices = thickness
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = image.shape[1:]
        ds.BitsAllocated = ds.BitsStored = 16
        ds.HighBit = 15
        if ct:
            ds.PixelRepresentation = 1
            ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = -1024, 1, "HU"
            ds.WindowCenter, ds.WindowWidth = 40, 400
        else:
            ds.PixelRepresentation = 0
            ds.ScanningSequence, ds.SequenceVariant, ds.MRAcquisitionType = "SE", "NONE", "2D"
            ds.MagneticFieldStrength = 1.5
        ds.PixelData = stored[k].tobytes()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = ds.SOPClassUID
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta = meta
        ds.save_as(folder / f"IM{k + 1:04d}.dcm", enforce_file_format=True)


def voxel_volume_ml(spacing: tuple[float, float, float]) -> float:
    return math.prod(spacing) / 1000.0
