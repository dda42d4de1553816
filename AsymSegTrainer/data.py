"""Cases on disk -> arrays in memory, and predictions back to disk.

Reads NIfTI / NRRD / MHA volumes with SimpleITK, checks that a case's channels, label and
ROI mask share one geometry, maps raw label values to class indices, normalises intensities,
optionally resamples to a target spacing, and writes outputs in the input geometry.

Array conventions shared by the whole engine (SimpleITK's numpy order):

- image ``(C, z, y, x)`` float32, label ``(z, y, x)`` uint8 of CLASS INDICES (after the
  class map), mask ``(z, y, x)`` bool. A 2D input is held with ``z = 1``.
- every ``spacing`` / ``spacing_zyx`` tuple is in ARRAY axis order (z, y, x), the reverse of
  SimpleITK's ``GetSpacing()`` (x, y, z). Origin and direction stay physical (SimpleITK's).
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from .errors import AsymSegError, InputError
from .files import atomic_output
from .imagefiles import check_before_reading, check_finite

SUPPORTED_EXTENSIONS = (".nii.gz", ".nii", ".nrrd", ".mha")
FORMAT_HINT = "Check that the file is a NIfTI (.nii/.nii.gz), NRRD (.nrrd) or MetaImage (.mha) volume."
_UNLISTED = 255  # lookup-table mark of a raw value outside the class map (so at most 255 classes)
_MAX_LABEL_RANGE = 1 << 16  # wider raw value ranges are intensities, not a label map


# ---------------------------------------------------------------------------- file I/O

def _extension(path: Path) -> Optional[str]:
    name = path.name.lower()
    return next((ext for ext in SUPPORTED_EXTENSIONS if name.endswith(ext)), None)


def read_image(path) -> sitk.Image:
    """Read a volume; InputError naming the file when it is missing, unreadable, truncated or holds NaN/inf.

    The payload is checked against the header before reading (imagefiles.py): ITK would fill a
    short file with zeros.
    """
    path = Path(path)
    try:
        str(path).encode("utf-8")  # SimpleITK takes UTF-8 paths: other bytes would abort in its C++
    except UnicodeEncodeError:
        raise InputError(f"The path {str(path)!r} contains bytes that are not valid UTF-8.",
                         "Rename the file or folder with plain UTF-8 characters.") from None
    if not path.is_file():
        raise InputError(f"Image file not found: {path}", "Check the path (relative paths are resolved against "
                                                          "the dataset folder).")
    try:
        check_before_reading(path)
        image = sitk.ReadImage(str(path))
    except AsymSegError:
        raise
    except RuntimeError as exc:
        # SimpleITK prefixes the reader's reason with its C++ source location: keep the reason.
        reason = str(exc).strip().splitlines()[-1].replace("sitk::ERROR: ", "")
        raise InputError(f"Cannot read image {path}: {reason}", FORMAT_HINT) from exc
    check_finite(image, path)
    return image


def write_image(array: np.ndarray, reference: sitk.Image, path) -> Path:
    """Write ``array`` with the reference's size, spacing, origin and direction, atomically.

    ``array`` is (z, y, x) or (C, z, y, x) (written as a C-component vector image, e.g.
    probabilities); bool is written as uint8. The format follows the extension
    (.nii.gz/.nii/.nrrd/.mha); anything else is an InputError. Returns the path.
    """
    path = Path(path)
    if _extension(path) is None:
        raise InputError(f"Cannot write {path}: unsupported file extension",
                         f"Use one of {', '.join(SUPPORTED_EXTENSIONS)}.")
    array = np.asarray(array)
    if array.dtype == bool:
        array = array.astype(np.uint8)
    shape = array_shape(reference)
    if array.shape not in (shape, (array.shape[0],) + shape):
        raise ValueError(f"array of shape {array.shape} does not fit the reference's (z, y, x) shape {shape}")
    vector = array.ndim == 4
    if vector:
        array = np.moveaxis(array, 0, -1)
    if reference.GetDimension() == 2:
        array = array[0]
    image = sitk.GetImageFromArray(array, isVector=vector)
    image.CopyInformation(reference)
    with atomic_output(path) as tmp:
        sitk.WriteImage(image, str(tmp), useCompression=True)
    return path


# ---------------------------------------------------------------------------- geometry

def array_shape(image: sitk.Image) -> Tuple[int, int, int]:
    """The (z, y, x) shape of the image's array (z = 1 for a 2D image)."""
    shape = tuple(reversed(image.GetSize()))
    return shape if len(shape) == 3 else (1,) + shape


def spacing_zyx(image: sitk.Image) -> Tuple[float, float, float]:
    """Voxel spacing in ARRAY order (z, y, x); a 2D image gets z spacing 1.0."""
    spacing = tuple(reversed(image.GetSpacing()))
    return spacing if len(spacing) == 3 else (1.0,) + spacing


def _to_zyx(image: sitk.Image) -> np.ndarray:
    array = sitk.GetArrayFromImage(image)
    return array[None] if image.GetDimension() == 2 else array


def _from_zyx(array: np.ndarray, like: sitk.Image) -> sitk.Image:
    image = sitk.GetImageFromArray(array[0] if like.GetDimension() == 2 else array)
    image.CopyInformation(like)
    return image


def _fmt(values) -> str:
    return "(" + ", ".join(f"{v:.6g}" for v in values) + ")"


def _geometry_difference(a: sitk.Image, b: sitk.Image, tolerance: float) -> Optional[Tuple[str, str, str]]:
    """First differing field as (name, value of a, value of b), or None when they match.

    Spacing and origin are compared with ``tolerance`` times the largest voxel size of ``a`` (as
    ITK does, so the test is in voxels, not millimetres); direction cosines with ``tolerance``.
    """
    if a.GetSize() != b.GetSize():
        return "size", str(a.GetSize()), str(b.GetSize())
    coordinate_tolerance = tolerance * max(a.GetSpacing())
    for name, tol in (("spacing", coordinate_tolerance), ("origin", coordinate_tolerance), ("direction", tolerance)):
        va, vb = getattr(a, "Get" + name.capitalize())(), getattr(b, "Get" + name.capitalize())()
        if not np.allclose(va, vb, rtol=0.0, atol=tol):
            return name, _fmt(va), _fmt(vb)
    return None


def check_same_geometry(ref: sitk.Image, ref_path, other: sitk.Image, other_path, tolerance: float = 1e-3) -> None:
    """InputError naming both files and the differing field when two volumes are not on one grid."""
    difference = _geometry_difference(ref, other, tolerance)
    if difference is not None:
        field, a, b = difference
        raise InputError(f"Geometry mismatch: {field} differs between {ref_path} {a} and {other_path} {b} "
                         f"(SimpleITK order x, y, z)",
                         "All channels, the label and the mask of a case must share size, spacing, origin and "
                         "direction; resample them onto the first channel (e.g. in 3D Slicer).")


def _check_spacing(spacing: Sequence[float]) -> Tuple[float, float, float]:
    try:
        values = tuple(float(v) for v in spacing)
    except (TypeError, ValueError):
        values = ()
    if len(values) != 3 or not all(np.isfinite(v) and v > 0 for v in values):
        raise InputError(f"target_spacing must be three positive numbers (z, y, x) in mm; got {spacing!r}",
                         "For example 1.0,1.0,1.0 for 1 mm isotropic voxels.")
    return values


def _spacing_grid(image: sitk.Image, target_zyx: Sequence[float]) -> sitk.Image:
    """Geometry-only grid of the target (z, y, x) spacing covering ``image``'s physical extent.

    It keeps the direction and the physical centre; the size is rounded. A 2D image uses the
    (y, x) entries only.
    """
    new_spacing = np.array(tuple(reversed(_check_spacing(target_zyx)))[:image.GetDimension()])
    old_spacing = np.array(image.GetSpacing())
    old_size = np.array(image.GetSize())
    new_size = np.maximum(1, np.round(old_size * old_spacing / new_spacing)).astype(int)
    first_index = (old_size - 1) / 2 - (new_size - 1) / 2 * new_spacing / old_spacing
    grid = sitk.Image([int(n) for n in new_size], sitk.sitkUInt8)
    grid.SetSpacing(new_spacing.tolist())
    grid.SetOrigin(image.TransformContinuousIndexToPhysicalPoint(first_index.tolist()))
    grid.SetDirection(image.GetDirection())
    return grid


def resample_to_spacing(image: sitk.Image, spacing_zyx_: Sequence[float], interpolator) -> sitk.Image:
    """Resample onto a grid of the given (z, y, x) spacing with the same direction and centre."""
    return _resample_onto(image, _spacing_grid(image, spacing_zyx_), interpolator)


def _resample_onto(image: sitk.Image, grid: sitk.Image, interpolator) -> sitk.Image:
    """Resample ``image`` onto ``grid``'s geometry (identity transform; outside the image -> 0)."""
    return sitk.Resample(image, grid, sitk.Transform(), interpolator, 0.0)


def to_reference(array: np.ndarray, grid: sitk.Image, reference: sitk.Image, nearest: bool) -> np.ndarray:
    """Bring an array on ``grid`` ((z, y, x) or (C, z, y, x)) back to the input geometry.

    Nearest neighbour for label maps, linear for probabilities/intensities. Returns the array
    unchanged when the two geometries already match.
    """
    array = np.asarray(array)
    if array.shape[-3:] != array_shape(grid):
        raise ValueError(f"array of shape {array.shape} is not on the grid of (z, y, x) shape {array_shape(grid)}")
    if _geometry_difference(grid, reference, 1e-6) is None:
        return array
    interpolator = sitk.sitkNearestNeighbor if nearest else sitk.sitkLinear
    channels = array if array.ndim == 4 else array[None]
    out = np.stack([_to_zyx(_resample_onto(_from_zyx(c, grid), reference, interpolator)) for c in channels])
    return out if array.ndim == 4 else out[0]


def _geometry_only(image: sitk.Image) -> sitk.Image:
    """A uint8 image with ``image``'s geometry: outputs need the grid, not a second copy of the voxels."""
    geometry = sitk.Image(image.GetSize(), sitk.sitkUInt8)
    geometry.CopyInformation(image)
    return geometry


# ---------------------------------------------------------------------------- class map

def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


@dataclass
class ClassMap:
    """Raw label values -> class indices. ``classes`` maps class names, in order, to raw values.

    Index 0 (the first class) is the background. ``unlisted`` says what happens to a raw
    value listed in no class: "error" (InputError listing the values) or "background"
    (mapped to class 0). An empty value list is allowed only for the background class when
    ``unlisted == "background"``.
    """

    classes: Dict[str, List[int]]
    unlisted: str = "error"

    def __post_init__(self):
        hint = "Give each class its raw label values, e.g. {\"background\": [0], \"tumor_core\": [1, 3, 4]}."
        if self.unlisted not in ("error", "background"):
            raise InputError(f"classes: unlisted must be 'error' or 'background', got {self.unlisted!r}", hint)
        if not isinstance(self.classes, dict) or len(self.classes) < 2:
            raise InputError(f"classes: need at least 2 classes (background first), got {self.classes!r}", hint)
        if len(self.classes) > _UNLISTED:
            raise InputError(f"classes: at most {_UNLISTED} classes are supported, got {len(self.classes)}", hint)
        owner: Dict[int, str] = {}
        for index, (name, values) in enumerate(self.classes.items()):
            if not isinstance(name, str) or not name.strip():
                raise InputError(f"classes: class names must be non-empty strings, got {name!r}", hint)
            if not isinstance(values, (list, tuple)) or not all(_is_int(v) and v >= 0 for v in values):
                raise InputError(f"classes: class {name!r} must list non-negative integer label values, "
                                 f"got {values!r}", hint)
            if not values and not (index == 0 and self.unlisted == "background"):
                raise InputError(f"classes: class {name!r} has no label values", hint)
            for v in values:
                if v in owner:
                    raise InputError(f"classes: label value {v} is in both {owner[v]!r} and {name!r}", hint)
                owner[int(v)] = name
        self.classes = {name: [int(v) for v in values] for name, values in self.classes.items()}

    @property
    def names(self) -> List[str]:
        return list(self.classes)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def lookup(self, label: np.ndarray, source="label") -> np.ndarray:
        """Map a raw label array to uint8 class indices with one lookup table (vectorised)."""
        raw = np.asarray(label)
        hint = ("Add the values to a class of the class map, or map unlisted values to background."
                if self.unlisted == "error" else "Check that this file is a label map.")
        if raw.dtype == bool:
            raw = raw.astype(np.uint8)
        elif raw.dtype.kind == "f":
            bad = ~np.isfinite(raw) | (raw != np.round(raw))
            if bad.any():
                raise InputError(f"{source}: label values must be integers; found {_listing(raw[bad])}", hint)
            raw = raw.astype(np.int64)
        elif raw.dtype.kind not in "iu":
            raise InputError(f"{source}: label voxels must be integers, got type {raw.dtype}", hint)
        low, high = min(int(raw.min()), 0), int(raw.max())
        if high - low > _MAX_LABEL_RANGE:
            raise InputError(f"{source}: label values span {low}..{high}; this does not look like a label map", hint)
        table = np.full(high - low + 1, _UNLISTED if self.unlisted == "error" else 0, np.uint8)
        for index, values in enumerate(self.classes.values()):
            table[[v - low for v in values if v <= high]] = index
        mapped = table[raw] if low == 0 else table[raw.astype(np.int64) - low]
        if self.unlisted == "error":
            unlisted = mapped == _UNLISTED
            if unlisted.any():
                raise InputError(f"{source}: label values {_listing(raw[unlisted])} are not in the class map "
                                 f"{self.classes}", hint)
        return mapped

    def to_dict(self) -> dict:
        return {"classes": {k: list(v) for k, v in self.classes.items()}, "unlisted": self.unlisted}

    @classmethod
    def from_dict(cls, data: dict) -> "ClassMap":
        return _from_dict(cls, data, "class map")

    @classmethod
    def parse(cls, strings: Sequence[str]) -> "ClassMap":
        """Class map from command-line strings ``NAME=V1,V2,...``, e.g. ``tumor_core=1,3,4``.

        Without a ``background=...`` string, class 0 is an implied "background" holding every
        unlisted value; with one, background comes first and unlisted values are an error.
        """
        hint = "Write each class as NAME=V1,V2,... with integer label values, e.g. tumor_core=1,3,4."
        classes: Dict[str, List[int]] = {}
        for text in strings:
            name, sep, values = text.partition("=")
            name = name.strip()
            if not sep or not name:
                raise InputError(f"classes: {text!r} is not NAME=VALUES", hint)
            if name in classes:
                raise InputError(f"classes: class {name!r} is given twice", hint)
            try:
                classes[name] = [int(v) for v in values.split(",") if v.strip()]
            except ValueError:
                raise InputError(f"classes: {text!r} has a value that is not an integer", hint) from None
        if "background" in classes:
            return cls({"background": classes.pop("background"), **classes}, unlisted="error")
        return cls({"background": [], **classes}, unlisted="background")

    @classmethod
    def from_nnunet_labels(cls, labels: dict) -> "ClassMap":
        """One class per entry of a dataset.json ``labels`` field, ordered by value (background = 0)."""
        hint = "dataset.json 'labels' must map names to integer values, with background = 0."
        groups = {name: list(v) if isinstance(v, (list, tuple)) else [v] for name, v in labels.items()}
        if not any(values == [0] for values in groups.values()):
            raise InputError(f"dataset.json labels: no class has value 0 (background): {labels}", hint)
        try:
            ordered = dict(sorted(groups.items(), key=lambda item: min(item[1])))
        except TypeError:
            raise InputError(f"dataset.json labels: values must be integers: {labels}", hint) from None
        return cls(ordered, unlisted="error")


def _listing(values: np.ndarray, limit: int = 20) -> str:
    unique = np.unique(values)
    shown = ", ".join(f"{v:g}" for v in unique[:limit].tolist())
    return f"[{shown}{', ...' if unique.size > limit else ''}]"


def _from_dict(cls, data, what: str):
    """Build a dataclass from a dict; InputError naming missing or unknown fields."""
    names = {f.name for f in dataclasses.fields(cls)}
    required = {f.name for f in dataclasses.fields(cls)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
    if not isinstance(data, dict):
        raise InputError(f"{what}: expected a JSON object, got {data!r}", f"Fields: {', '.join(sorted(names))}.")
    missing, unknown = sorted(required - set(data)), sorted(set(data) - names)
    if missing or unknown:
        raise InputError(f"{what}: " + "; ".join(filter(None, [missing and f"missing field(s) {missing}",
                                                               unknown and f"unknown field(s) {unknown}"])),
                         f"Fields: {', '.join(sorted(names))}.")
    return cls(**data)


# ---------------------------------------------------------------------------- normalisation

NORMALIZATION_MODES = ("zscore", "ct", "none")
STATISTICS_REGIONS = ("foreground", "mask")


@dataclass
class Normalization:
    """Intensity normalisation of every channel.

    - ``zscore``: per channel, subtract the mean and divide by the standard deviation computed
      over the voxels ``statistics`` selects: ``foreground`` (the default) the voxels that are
      not a constant background (:func:`estimated_foreground`), with or without an ROI mask,
      so a case read from its image files alone is normalised exactly as in training; ``mask``
      the ROI mask (the foreground without one). Over all voxels if the selection is empty.
      Every voxel, inside or outside, gets the same affine transform, so the outside is not
      zeroed. A constant channel becomes 0.
    - ``ct``: clip to ``window`` = (low, high) (e.g. Hounsfield units), then scale linearly to
      [-1, 1].
    - ``none``: unchanged (cast to float32).
    """

    mode: str = "zscore"
    window: Optional[Tuple[float, float]] = None
    statistics: str = "foreground"

    def __post_init__(self):
        if self.statistics not in STATISTICS_REGIONS:
            raise InputError(f"normalization.statistics must be one of {STATISTICS_REGIONS}, got {self.statistics!r}",
                             "Use foreground (the same with or without an ROI mask) or mask (inside the ROI mask).")
        if self.mode not in NORMALIZATION_MODES:
            raise InputError(f"normalization.mode must be one of {NORMALIZATION_MODES}, got {self.mode!r}",
                             "Use zscore for MRI, ct (with a window) for CT.")
        if self.mode == "ct":
            try:
                low, high = (float(v) for v in self.window)
            except (TypeError, ValueError):
                low = high = float("nan")
            if not low < high:
                raise InputError(f"normalization.window must be (low, high) with low < high for mode 'ct', "
                                 f"got {self.window!r}", "For example [-100, 240] for soft tissue in HU.")
            self.window = (low, high)
        elif self.window is not None:
            raise InputError(f"normalization.window is only used with mode 'ct' (mode is {self.mode!r})",
                             "Remove the window or set mode to 'ct'.")

    def to_dict(self) -> dict:
        return {"mode": self.mode, "window": None if self.window is None else list(self.window),
                "statistics": self.statistics}

    @classmethod
    def from_dict(cls, data: dict) -> "Normalization":
        return _from_dict(cls, data, "normalization")


BACKGROUND_SHARE = 0.1


def estimated_foreground(channel: np.ndarray) -> np.ndarray:
    """Boolean array of the voxels that are not a constant background (all True when there is none).

    A background is the channel's minimum when it fills at least BACKGROUND_SHARE of the
    volume: 0 outside the head in raw or skull-stripped MRI, but also e.g. -3.6 in
    pre-normalised BRATS scans or -1024 (air) in CT. A "non-zero voxels" rule would take the
    whole of such a volume and shift every intensity of a case without its ROI mask.
    """
    outside = channel == channel.min()
    return ~outside if outside.mean() >= BACKGROUND_SHARE else np.ones(channel.shape, bool)


def normalize(image: np.ndarray, mask: Optional[np.ndarray], normalization: Normalization) -> np.ndarray:
    """Normalise a (C, ...) image as ``normalization`` says (see Normalization); returns float32."""
    image = np.asarray(image)
    if normalization.mode == "none":
        return image.astype(np.float32)
    if normalization.mode == "ct":
        low, high = normalization.window
        return ((np.clip(image, low, high) - low) * (2.0 / (high - low)) - 1.0).astype(np.float32)
    out = np.empty(image.shape, np.float32)
    for c, channel in enumerate(image):
        use_mask = mask is not None and normalization.statistics == "mask"
        selected = channel[mask if use_mask else estimated_foreground(channel)]
        if selected.size == 0:
            selected = channel
        mean, std = float(np.mean(selected, dtype=np.float64)), float(np.std(selected, dtype=np.float64))
        out[c] = (channel - mean) / (std if std > 0 else 1.0)
    return out


# ---------------------------------------------------------------------------- cases

@dataclass
class CaseSpec:
    """One case on disk: channel files in order, optional label and ROI mask, its role."""

    id: str
    images: List[str]
    label: Optional[str] = None
    mask: Optional[str] = None
    role: str = "train"

    def __post_init__(self):
        if not isinstance(self.images, (list, tuple)) or not self.images:
            raise InputError(f"case {self.id!r}: images must list at least one channel file, got {self.images!r}",
                             "Give one file per channel, in the same channel order for every case.")
        self.images = [str(p) for p in self.images]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "CaseSpec":
        return _from_dict(cls, data, "case")


@dataclass
class LoadedCase:
    """A case in memory. ``reference``/``grid`` carry geometry only (uint8 zeros, no voxel copy).

    ``reference`` is the input geometry of the first channel (for outputs); ``grid`` is the
    geometry of the arrays, the same object as ``reference`` when not resampled. ``spacing``
    is the arrays' spacing in (z, y, x) order.
    """

    id: str
    image: np.ndarray
    label: Optional[np.ndarray]
    mask: Optional[np.ndarray]
    spacing: Tuple[float, float, float]
    reference: sitk.Image
    grid: sitk.Image
    role: str = "train"


def _read_volume(path: Path) -> sitk.Image:
    """read_image, restricted to single-component 2D/3D volumes."""
    image = read_image(path)
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{path} has {image.GetNumberOfComponentsPerPixel()} components per voxel",
                         "Give one single-component file per channel.")
    if image.GetDimension() not in (2, 3):
        raise InputError(f"{path} is {image.GetDimension()}D; expected a 2D or 3D volume", FORMAT_HINT)
    return image


def load_case(spec: CaseSpec, class_map: Optional[ClassMap], normalization: Normalization,
              target_spacing: Optional[Sequence[float]] = None, base_dir=None) -> LoadedCase:
    """Read, check, resample, normalise and map one case.

    Every file's geometry is checked against the first channel. With ``target_spacing``
    (z, y, x) the arrays are resampled (linear for images, nearest for label and mask).
    Labels are mapped through ``class_map`` on the input grid (so every raw value is
    checked); pass ``class_map=None`` to leave the label unread (prediction only).
    Relative paths are resolved against ``base_dir``.
    """
    base = Path(base_dir) if base_dir is not None else Path()

    def resolve(path) -> Path:  # pathlib keeps an absolute path as it is
        return base / Path(path).expanduser()

    def read(path) -> sitk.Image:
        image = _read_volume(resolve(path))
        check_same_geometry(first, first_path, image, resolve(path))
        return image

    first_path = resolve(spec.images[0])
    first = _read_volume(first_path)
    reference = _geometry_only(first)
    resampled = target_spacing is not None and not np.allclose(
        first.GetSpacing(), tuple(reversed(_check_spacing(target_spacing)))[:first.GetDimension()], rtol=1e-3)
    grid = _spacing_grid(reference, target_spacing) if resampled else reference

    def on_grid(image: sitk.Image, interpolator) -> np.ndarray:
        return _to_zyx(_resample_onto(image, grid, interpolator) if resampled else image)

    image = np.empty((len(spec.images),) + array_shape(grid), np.float32)
    for c, path in enumerate(spec.images):
        image[c] = on_grid(sitk.Cast(first if c == 0 else read(path), sitk.sitkFloat32), sitk.sitkLinear)
    mask = None
    if spec.mask:
        mask = on_grid(read(spec.mask) != 0, sitk.sitkNearestNeighbor).astype(bool)
    label = None
    if spec.label and class_map is not None:
        raw = read(spec.label)
        mapped = class_map.lookup(_to_zyx(raw), source=resolve(spec.label))
        label = on_grid(_from_zyx(mapped, raw), sitk.sitkNearestNeighbor)
    return LoadedCase(id=spec.id, image=normalize(image, mask, normalization), label=label, mask=mask,
                      spacing=spacing_zyx(grid), reference=reference, grid=grid, role=spec.role)


# ---------------------------------------------------------------------------- nnU-Net layout

def read_nnunet_dataset(folder, subset: str = "Tr") -> Tuple[dict, List[CaseSpec]]:
    """Read an nnU-Net v2 raw dataset: dataset.json, images<subset>/, labels<subset>/, masks<subset>/.

    ``subset`` "Tr" (training cases, the default) or "Ts" (test cases). Cases are the
    identifiers found in images<subset> (``<case>_<XXXX><file_ending>``); each needs every
    channel of ``channel_names``; training cases need ``labelsTr/<case><file_ending>``, test
    cases have a label only when ``labelsTs`` holds one; an ROI mask
    ``masks<subset>/<case><file_ending>`` is used when present. Paths in the specs are absolute.
    """
    if subset not in ("Tr", "Ts"):
        raise InputError(f"Unknown nnU-Net subset {subset!r}.", "Use 'Tr' (imagesTr) or 'Ts' (imagesTs).")
    folder = Path(folder)
    layout = "An nnU-Net v2 raw dataset holds dataset.json, imagesTr/<case>_<XXXX><ending> and labelsTr/<case><ending>."
    json_path = folder / "dataset.json"
    if not json_path.is_file():
        raise InputError(f"{json_path} not found: {folder} is not an nnU-Net v2 raw dataset", layout)
    try:
        dataset = json.loads(json_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"Cannot read {json_path}: {exc}", "Check that dataset.json is valid JSON.") from exc
    for key in ("channel_names", "labels", "file_ending"):
        if key not in dataset:
            raise InputError(f"{json_path}: field {key!r} is missing", layout)
    try:
        channels = sorted(int(k) for k in dataset["channel_names"])
    except (TypeError, ValueError):
        channels = None
    if not channels or channels != list(range(len(channels))):
        raise InputError(f"{json_path}: channel_names must have keys \"0\", \"1\", ...; "
                         f"got {dataset['channel_names']!r}", layout)
    ending = dataset["file_ending"]
    pattern = re.compile(r"(.+)_\d{4}" + re.escape(ending) + "$")
    images_dir, labels_dir, masks_dir = (folder / f"{kind}{subset}" for kind in ("images", "labels", "masks"))
    ids = sorted({m.group(1) for p in (images_dir.iterdir() if images_dir.is_dir() else [])
                  if (m := pattern.match(p.name))})
    if not ids:
        raise InputError(f"No images in {images_dir} (expected <case>_0000{ending})", layout)
    expected = dataset.get("numTraining") if subset == "Tr" else None
    if expected is not None and expected != len(ids):
        raise InputError(f"{json_path}: numTraining is {expected} but {images_dir} holds {len(ids)} cases",
                         "Restore the missing cases or correct numTraining.")
    cases = []
    for case_id in ids:
        images = [images_dir / f"{case_id}_{c:04d}{ending}" for c in channels]
        label = labels_dir / f"{case_id}{ending}"
        for path in images + ([label] if subset == "Tr" else []):
            if not path.is_file():
                raise InputError(f"Missing file {path} of case {case_id!r}", layout)
        mask = masks_dir / f"{case_id}{ending}"
        cases.append(CaseSpec(id=case_id, images=[str(p.resolve()) for p in images],
                              label=str(label.resolve()) if label.is_file() else None,
                              mask=str(mask.resolve()) if mask.is_file() else None))
    return dataset, cases
