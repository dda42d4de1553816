"""Deterministic synthetic dataset for the demo and the tests: two-channel 3D phantoms.

Each case is a body (an ellipsoid, zero outside like a skull-stripped MRI) of smoothly
textured tissue under a bias field, with an organ-like inner ellipsoid of another intensity,
1-4 lesions (ellipsoids of random size, axes and orientation with a partial-volume rim,
brighter than tissue in both channels) and "distractor" blobs bright in one channel only,
plus noise. A lesion is recognisable only from both channels together, so a small network
can learn the task in about a minute of CPU training, yet small, faint lesions of unseen
cases are easy to under-segment: the paper's regime (foreground:background <= 1:100).

With ``multi_lesion`` (an option; the default phantoms stay as they are), a case has 4-8
lesions, at least one of each size bin of metrics.LESION_SIZE_BINS (``MULTI_LESION_VOLUMES_MM3``),
and no two lesions touch (not even at a corner): each is one 26-connected reference lesion,
the test case of lesion-wise evaluation and post-processing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk
from scipy.ndimage import binary_dilation, binary_erosion, gaussian_filter
from scipy.spatial.transform import Rotation

from .data import write_image
from .files import atomic_output
from .errors import InputError

GENERATOR = "AsymSegTrainer.phantoms"
CHANNELS = {"0": "t1", "1": "t2"}
LABELS = {"background": 0, "lesion": 1}
FILE_ENDING = ".nii.gz"
MAX_FOREGROUND_SHARE = 1 / 101  # foreground:background <= 1:100
# (body intensity, organ intensity) per channel, arbitrary MR-like units
TISSUE = ((400.0, 550.0), (300.0, 220.0))
MULTI_LESION_COUNT = (4, 8)
"""Lesions per case with ``multi_lesion`` (inclusive range)."""
MULTI_LESION_VOLUMES_MM3 = {"small": (3.0, 7.0), "medium": (20.0, 70.0), "large": (150.0, 400.0)}
"""Nominal volumes with ``multi_lesion``: one lesion drawn from each range (inside the bins of
metrics.LESION_SIZE_BINS with a margin for voxelisation), the others log-uniform from 3 to 150."""


def _ellipsoid_radius(points: np.ndarray, centre, semi_axes, rotation: Rotation) -> np.ndarray:
    """Normalised ellipsoid radius of each point (..., 3): <= 1 inside."""
    local = (points - centre) @ rotation.as_matrix()
    return np.sqrt(np.sum((local / semi_axes) ** 2, axis=-1))


def _blob_radii(rng: np.random.Generator, points: np.ndarray, candidates: np.ndarray, voxel_counts,
                voxel_volume: float) -> list:
    """Normalised radii of random ellipsoids of about the given voxel counts, centred on candidate points."""
    radii = []
    for count in voxel_counts:
        radius = np.cbrt(3 * count * voxel_volume / (4 * np.pi))
        aspect = np.exp(np.clip(rng.normal(0.0, 0.3, 3), -0.6, 0.6))
        centre = candidates[rng.integers(len(candidates))]
        radii.append(_ellipsoid_radius(points, centre, radius * aspect / np.cbrt(aspect.prod()),
                                       Rotation.random(random_state=rng)))
    return radii


def _rim(radius: np.ndarray) -> np.ndarray:
    """Partial-volume profile: 1 well inside, 0.5 on the surface (radius 1), 0 beyond 1.25."""
    return np.clip((1.25 - radius) / 0.5, 0.0, 1.0)


def _separate_lesions(rng: np.random.Generator, points: np.ndarray, candidates: np.ndarray, body: np.ndarray,
                      voxel_volume: float, budget: int) -> list:
    """Normalised radii of ``MULTI_LESION_COUNT`` lesions of every size, none touching another (26-connectivity).

    The nominal volumes are scaled down together when they would exceed 80% of the foreground
    ``budget`` (voxels). A lesion is redrawn elsewhere while it would touch an earlier one; one
    that finds no free place in 50 draws is left out.
    """
    count = int(rng.integers(MULTI_LESION_COUNT[0], MULTI_LESION_COUNT[1] + 1))
    volumes = [rng.uniform(low, high) for low, high in MULTI_LESION_VOLUMES_MM3.values()]
    volumes = np.array(volumes + list(np.exp(rng.uniform(np.log(3.0), np.log(150.0), count - len(volumes)))))
    volumes *= min(1.0, 0.8 * budget * voxel_volume / volumes.sum())
    radii, label = [], np.zeros(body.shape, bool)
    for volume in volumes:
        near = binary_dilation(label, np.ones((3, 3, 3), bool))
        for _ in range(50):
            (radius,) = _blob_radii(rng, points, candidates, [volume / voxel_volume], voxel_volume)
            inside = (radius <= 1) & body
            if not (inside & near).any():
                radii.append(radius)
                label |= inside
                break
    return radii


def phantom_case(rng: np.random.Generator, shape: Sequence[int] = (48, 48, 48),
                 spacing: Sequence[float] = (1.5, 1.0, 1.0),
                 multi_lesion: bool = False) -> Tuple[np.ndarray, np.ndarray]:
    """One phantom: image (2, z, y, x) float32 and label (z, y, x) uint8 (0 background, 1 lesion).

    ``spacing`` is (z, y, x) in mm; shapes are drawn in millimetres, so they stay round on
    anisotropic grids. ``multi_lesion``: 4-8 separate lesions of every size (module docstring).
    """
    shape, spacing = tuple(shape), np.asarray(spacing, float)
    points = np.stack(np.meshgrid(*[(np.arange(n) - (n - 1) / 2) * s for n, s in zip(shape, spacing)],
                                  indexing="ij"), axis=-1)
    half_extent = np.array(shape) * spacing / 2
    body_axes = half_extent * rng.uniform(0.8, 0.95, 3)
    body_radius = _ellipsoid_radius(points, rng.normal(0, 0.03, 3) * half_extent, body_axes,
                                    Rotation.random(random_state=rng))
    body = body_radius <= 1
    organ = _ellipsoid_radius(points, rng.normal(0, 0.1, 3) * body_axes, body_axes * rng.uniform(0.35, 0.55, 3),
                              Rotation.random(random_state=rng)) <= 1
    candidates = points[body_radius < 0.7]
    voxel_volume = float(spacing.prod())

    # Lesions: total size a random share of the volume, split unevenly, shrunk until within budget.
    budget = int(np.prod(shape) * MAX_FOREGROUND_SHARE)
    if multi_lesion:
        lesions = _separate_lesions(rng, points, candidates, body, voxel_volume, budget)
    else:
        count = int(rng.integers(1, 5))
        sizes = np.maximum(30, np.prod(shape) * rng.uniform(0.002, 0.008) * rng.dirichlet(np.full(count, 0.8)))
        lesions = _blob_radii(rng, points, candidates, sizes, voxel_volume)
    label = np.any([r <= 1 for r in lesions], axis=0) & body
    while label.sum() > budget:
        lesions = [r / 0.95 for r in lesions]  # scales every semi-axis by 0.95 (lesions only move apart)
        label = np.any([r <= 1 for r in lesions], axis=0) & body
    lesion_rim = np.max([_rim(r) for r in lesions], axis=0)

    sigma = 3.0 / spacing  # texture correlation length of 3 mm
    texture = [gaussian_filter(rng.standard_normal(shape), sigma) for _ in range(3)]
    texture = [t / t.std() for t in texture]
    gradient = rng.normal(size=3)
    bias = 1 + 0.15 * (points @ gradient) / np.abs(points @ gradient).max()
    image = np.zeros((2,) + shape, np.float32)
    for c, (tissue, organ_value) in enumerate(TISSUE):
        base = np.where(organ, organ_value, tissue) * (1 + 0.08 * texture[c])
        lesion = tissue * rng.uniform(0.25, 0.55) * lesion_rim * (1 + 0.15 * texture[2])
        distractor_sizes = np.prod(shape) * rng.uniform(0.001, 0.004, int(rng.integers(1, 4)))
        distractor = tissue * rng.uniform(0.25, 0.55) * np.max(
            [_rim(r) for r in _blob_radii(rng, points, candidates, distractor_sizes, voxel_volume)], axis=0)
        signal = (base + lesion + distractor) * bias + rng.normal(0, 0.06 * tissue, shape)
        image[c] = np.where(body, signal, 0.0)
    return image, label.astype(np.uint8)


def ct_like(image: np.ndarray) -> np.ndarray:
    """A one-channel CT-like version (1, z, y, x) of a phantom, in integer Hounsfield-like units.

    Air (-1000) outside the body, a 2-voxel bone-like shell (about 700) at its surface, soft
    tissue about 40 with the lesion (bright in both MR-like channels) about 50-110 brighter:
    the intensity ranges that make a CT scan recognisable, for tests and the plan's CT rule.
    """
    body = image[0] > 0
    tissue = 40.0 + 100.0 * (image[0] / TISSUE[0][0] - 1.0) + 100.0 * (image[1] / TISSUE[1][0] - 1.0)
    shell = body & ~binary_erosion(body, iterations=2)
    hu = np.where(body, np.where(shell, 700.0 + 0.2 * tissue, tissue), -1000.0)
    return np.round(hu)[None].astype(np.float32)


def make_phantom_dataset(folder, num_cases: int = 6, shape: Sequence[int] = (48, 48, 48),
                         spacing: Sequence[float] = (1.5, 1.0, 1.0), seed: int = 0,
                         direction: Optional[Sequence[float]] = None,
                         origin: Optional[Sequence[float]] = None, multi_lesion: bool = False,
                         modality: str = "mr") -> Path:
    """Write an nnU-Net v2 raw dataset of ``num_cases`` phantoms into ``folder``; return the folder.

    ``shape`` and ``spacing`` are (z, y, x); ``direction`` (9 numbers, row-major, as
    SimpleITK's SetDirection) and ``origin`` (physical x, y, z in mm) default to identity and
    zero; ``multi_lesion``: 4-8 separate lesions of every size per case; ``modality`` "ct":
    one CT-like channel (:func:`ct_like`) instead of the two MR-like ones. Same seed, same
    arrays. A non-empty folder is never overwritten: if it already holds a phantom dataset
    made with the same settings it is returned as it is, otherwise InputError.
    """
    folder = Path(folder)
    if modality not in ("mr", "ct"):
        raise InputError(f"Phantom modality {modality!r}", "Use 'mr' (two MR-like channels) or 'ct' (one CT-like).")
    if num_cases < 1 or len(shape) != 3 or min(shape) < 8 or len(spacing) != 3 or min(spacing) <= 0:
        raise InputError(f"Phantom settings: num_cases={num_cases}, shape={tuple(shape)}, spacing={tuple(spacing)}",
                         "Use num_cases >= 1, a (z, y, x) shape of at least 8 voxels per axis and positive spacing.")
    settings = json.loads(json.dumps({"num_cases": num_cases, "shape_zyx": list(shape), "spacing_zyx": list(spacing),
                                      "seed": seed, "direction": direction and list(direction),
                                      "origin": origin and list(origin),
                                      **({"multi_lesion": True} if multi_lesion else {}),
                                      **({"modality": modality} if modality != "mr" else {})}))
    if folder.is_dir() and any(folder.iterdir()):
        try:
            existing = json.loads((folder / "dataset.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            existing = {}
        if existing.get("generator") == GENERATOR and existing.get("settings") == settings:
            return folder
        raise InputError(f"{folder} is not empty and holds no phantom dataset made with these settings; "
                         f"it is left untouched", "Choose a new or empty folder for the phantom dataset.")
    reference = sitk.Image([int(n) for n in reversed(shape)], sitk.sitkUInt8)
    reference.SetSpacing([float(s) for s in reversed(spacing)])
    try:
        reference.SetDirection([float(d) for d in direction] if direction is not None else reference.GetDirection())
        reference.SetOrigin([float(o) for o in origin] if origin is not None else reference.GetOrigin())
    except (RuntimeError, TypeError) as exc:
        raise InputError(f"Phantom geometry: direction={direction}, origin={origin}: {exc}",
                         "Give a direction of 9 numbers (an invertible 3x3 matrix, row-major) and an origin "
                         "of 3 numbers.") from exc
    for i in range(num_cases):
        image, label = phantom_case(np.random.default_rng([seed, i]), shape, spacing, multi_lesion)
        if modality == "ct":
            image = ct_like(image)
        case_id = f"phantom_{i:03d}"
        for c, channel in enumerate(image):
            write_image(channel, reference, folder / "imagesTr" / f"{case_id}_{c:04d}{FILE_ENDING}")
        write_image(label, reference, folder / "labelsTr" / f"{case_id}{FILE_ENDING}")
    dataset = {"name": "AsymSeg phantoms", "description": f"Synthetic {'CT-like one' if modality == 'ct' else 'two'}"
               "-channel 3D phantoms with small lesions (foreground:background <= 1:100), made by " + GENERATOR,
               "channel_names": {"0": "ct"} if modality == "ct" else CHANNELS, "labels": LABELS,
               "numTraining": num_cases, "file_ending": FILE_ENDING, "generator": GENERATOR, "settings": settings}
    with atomic_output(folder / "dataset.json") as tmp:  # written last: its presence marks a complete dataset
        tmp.write_text(json.dumps(dataset, indent=1), encoding="utf-8")
    return folder
