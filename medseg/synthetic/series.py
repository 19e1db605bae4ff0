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
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from pydicom.uid import generate_uid
from scipy import ndimage

from medseg.errors import OutputError
from medseg.synthetic.dicomfile import SyntheticSeries, write_slice
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
    series = SyntheticSeries(
        patient_name=f"SYNTHETIC^{scene.family}{seed}",
        patient_id=f"SYN-{scene.family[:3].upper()}-{seed}",
        study_uid=_uid(key, "study"),
        series_uid=_uid(key, "series"),
        frame_uid=_uid(key, "for"),
        study_id=f"S{seed}",
        study_description="medseg synthetic scene (not a patient)",
        series_description=f"synthetic {scene.family} {scene.modality} seed {seed}",
        model_name="medseg synthetic",
        modality=scene.modality,
    )
    if scene.modality == "MR":  # keep the signal inside uint16
        top = max(float(image.max()), 1.0)
        image = image * (4000.0 / top if top > 4000 else 1.0)
    origin = -scene.fov_mm / 2 + spacing / 2
    for k in range(len(zs)):
        write_slice(
            folder / f"IM{k + 1:04d}.dcm",
            series,
            sop_instance_uid=_uid(key, "image", k),
            instance_number=k + 1,
            position=(origin, origin, float(zs[k])),
            pixel_spacing=spacing,
            thickness=thickness,
            values=image[k],
        )
