"""Training patches: a fixed share centred on rare-class voxels, the rest on background.

METHOD.md §5: the paper draws 50% of the patches of every batch centred on foreground and
50% on background (DeepMedic's fore/background sampling). Centre candidates are computed
once per case as flat voxel indices: the rare-class voxels, and the background candidates
(ROI-mask voxels when the case has a mask, else every voxel) that are not rare, so a
patch flagged "not centred on rare" really is centred on background. Written here because
MONAI's ``RandCropByPosNegLabel`` draws foreground/background per sample (no exact count
per batch) and moves centres inwards at the borders instead of padding.
"""

from __future__ import annotations

from typing import List, Sequence, Tuple

import numpy as np

from .data import LoadedCase
from .errors import InputError


def _flat_indices(selected: np.ndarray) -> np.ndarray:
    """Flat indices of the True voxels, as int32 when they fit (a BRATS case has ~9M voxels)."""
    indices = np.flatnonzero(selected)
    return indices.astype(np.int32) if selected.size <= np.iinfo(np.int32).max else indices


class PatchSampler:
    """Draws batches of (z, y, x) patches from labelled cases held in memory.

    ``rare_classes`` are class indices; ``foreground_fraction`` the share of each batch
    centred on a rare voxel. Patches reaching past the border are padded with 0 (image) and
    class 0 (label). Deterministic given ``seed``.
    """

    def __init__(self, cases: Sequence[LoadedCase], patch_size: Sequence[int], rare_classes: Sequence[int],
                 foreground_fraction: float = 0.5, seed: int = 0):
        if not cases:
            raise InputError("No training cases to sample patches from", "Give at least one case with role 'train'.")
        if len(patch_size) != 3 or not all(int(p) == p and p >= 1 for p in patch_size):
            raise InputError(f"patch_size must be three positive integers (z, y, x), got {tuple(patch_size)}",
                             "For example 37,37,37 (DeepMedic) or 1,128,128 for 2D images.")
        if not 0.0 <= foreground_fraction <= 1.0:
            raise InputError(f"foreground_fraction must lie in [0, 1], got {foreground_fraction}",
                             "0.5 = half of every batch centred on rare classes, as in the paper.")
        self.cases: List[LoadedCase] = list(cases)
        self.patch_size: Tuple[int, int, int] = tuple(int(p) for p in patch_size)
        self.foreground_fraction = float(foreground_fraction)
        self._rare: List[np.ndarray] = []
        self._background: List[np.ndarray] = []
        for case in self.cases:
            if case.label is None:
                raise InputError(f"Case {case.id!r} has no label", "Every training case needs a label file.")
            rare = np.isin(case.label, list(rare_classes))
            self._rare.append(_flat_indices(rare))
            self._background.append(_flat_indices(~rare if case.mask is None else case.mask & ~rare))
        self._rare_cases = [k for k, idx in enumerate(self._rare) if idx.size]
        self._background_cases = [k for k, idx in enumerate(self._background) if idx.size]
        if not self._rare_cases and not self._background_cases:
            raise InputError("No voxel to centre patches on: the ROI masks of all training cases are empty",
                             "Check the mask files.")
        self._rng = np.random.default_rng(seed)

    @property
    def has_rare(self) -> bool:
        """False when no training case has any rare-class voxel."""
        return bool(self._rare_cases)

    def rare_count(self, batch_size: int) -> int:
        """Number of rare-centred patches in a batch: round(fraction * B), 0 without rare voxels,
        all of them when no case has a background candidate."""
        if not self.has_rare:
            return 0
        return round(self.foreground_fraction * batch_size) if self._background_cases else batch_size

    def sample(self, batch_size: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(image (B, C, *patch) float32, label (B, *patch) int64, centred_on_rare (B,) bool)."""
        channels = self.cases[0].image.shape[0]
        image = np.zeros((batch_size, channels) + self.patch_size, np.float32)
        label = np.zeros((batch_size,) + self.patch_size, np.int64)
        on_rare = np.zeros(batch_size, bool)
        on_rare[: self.rare_count(batch_size)] = True
        self._rng.shuffle(on_rare)
        for b, rare in enumerate(on_rare):
            pool_cases, pools = (self._rare_cases, self._rare) if rare else (self._background_cases, self._background)
            k = pool_cases[self._rng.integers(len(pool_cases))]
            flat = pools[k][self._rng.integers(pools[k].size)]
            self._crop(self.cases[k], np.unravel_index(flat, self.cases[k].label.shape), image[b], label[b])
        return image, label, on_rare

    def _crop(self, case: LoadedCase, centre, image_out: np.ndarray, label_out: np.ndarray) -> None:
        """Copy the patch centred on ``centre`` (voxel at index size // 2) into zeroed outputs."""
        source, target = [], []
        for c, size, extent in zip(centre, self.patch_size, case.label.shape):
            start = int(c) - size // 2
            low, high = max(start, 0), min(start + size, extent)
            source.append(slice(low, high))
            target.append(slice(low - start, high - start))
        source, target = tuple(source), tuple(target)
        image_out[(slice(None),) + target] = case.image[(slice(None),) + source]
        label_out[target] = case.label[source]
