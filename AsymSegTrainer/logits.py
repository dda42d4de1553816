"""Per-class logit distributions on training vs unseen cases: the paper's overfitting diagnostic.

METHOD.md §1: for each ground-truth class g and each logit channel c, the distribution of
z_c over the voxels labelled g. A network that memorises a rare class keeps that class's
logits far from the decision boundary on training cases, while on unseen cases they shift
towards it; ``logit_shift`` measures this as dz = |mean z_unseen| - |mean z_train|.

``LogitStatistics`` accumulates these distributions over many volumes with bounded memory:
histograms on fixed bin edges shared by every instance (so train and unseen histograms
compare bin for bin, and partial results merge), plus exact count, mean, std, min and max.
It saves to and loads from JSON, for the engine's inference and the Slicer module's plots.

dz understates a logit that crosses the boundary (METHOD.md §1), so when the logit channels
are the classes (``channel_names == class_names``, at least two) the accumulator also keeps
the distribution of the TRUE-CLASS MARGIN ``m = z_g - max_{k != g} z_k`` over the voxels of
each true class g: m < 0 puts the voxel on the wrong side of the decision boundary (argmax
gives another class), so ``crossing_rate(g)`` is the voxel miss rate of g. Margins use the
logits' bin edges with 0 added (the crossing rate is exact from the histogram) and carry the
same exact count, mean, std, min and max. With ``voxel_volume_ml`` given to every update, the
volume of each class (and of its voxels with m < 0) is summed in mL across cases of any spacing.

JSON record (``to_dict``; version 1, keys added later are optional so older files still load):

- ``format``, ``version``, ``class_names``, ``channel_names``, ``bin_edges``, ``count`` (G),
  ``histogram`` (G, C, B), ``underflow``/``overflow`` (G, C), ``mean``/``m2``/``min``/``max``
  (G, C; min/max null for classes without voxels), optional ``metadata``.
- ``margins`` (absent when not collected: channels are not the classes, or a file written
  before margins, or merged with one): a nested record of the same format with the one channel
  ``"margin"``, the same class names and counts, and the margin bin edges.
- ``volume_ml`` (G): mL of each class's voxels; null when an update had no voxel volume (or the
  file predates it). ``missed_volume_ml`` (G): mL of those with margin < 0; null when either
  the volume or the margins are unknown.
"""

from __future__ import annotations

import json
import os
from typing import Optional, Sequence, Union

import numpy as np
import torch

from .files import write_json

FORMAT = "asymseg-logit-statistics"
VERSION = 1

DEFAULT_BIN_EDGES = np.linspace(-20.0, 20.0, 161)
"""160 bins of width 0.25 on [-20, 20]: trained segmentation networks' logits lie well inside
this range, and a quarter unit resolves the shift of a class's mean. Values outside are counted
in the underflow/overflow counters and still enter count, mean, std, min and max exactly."""
DEFAULT_BIN_EDGES.setflags(write=False)

MARGIN = "margin"  # the one channel of the margin statistics

SUMMARY_QUANTILES = (5, 25, 50, 75, 95)  # percent, the keys of summary()'s "quantiles"

_CHUNK = 1 << 20  # voxels processed at once: bounds update()'s working memory to a few x 8 MiB

Key = Union[int, str]
ArrayLike = Union[np.ndarray, torch.Tensor]


class LogitStatistics:
    """Histograms and moments of each logit channel, per ground-truth class, over many cases.

    ``class_names`` name the label values 0..G-1; ``channel_names`` name the logit channels
    (default: the class names, since channel c is the logit of class c). Methods take a class
    ``g`` and a channel ``c`` as an index or a name. ``metadata`` is an optional JSON-ready dict
    of provenance (e.g. the case, the model, ``grouped_by``) carried through to_dict/from_dict
    and save/load; it does not take part in merging or comparisons of the statistics. Margins
    and volumes: see the module docstring.
    """

    def __init__(self, class_names: Sequence[str], channel_names: Optional[Sequence[str]] = None,
                 bin_edges: Sequence[float] = DEFAULT_BIN_EDGES, metadata: Optional[dict] = None):
        if metadata is not None and not isinstance(metadata, dict):
            raise ValueError(f"metadata must be a dict (JSON object) or None; got {type(metadata).__name__}.")
        self.metadata = dict(metadata or {})
        self.class_names = _names(class_names, "class_names")
        self.channel_names = list(self.class_names) if channel_names is None else _names(channel_names,
                                                                                        "channel_names")
        self.bin_edges = _bin_edges(bin_edges)
        shape = (len(self.class_names), len(self.channel_names))
        self._count = np.zeros(shape[0], np.int64)
        # Last axis: [underflow, bin 1, ..., bin B, overflow]; bins are [e_k, e_k+1), the last one closed.
        self._hist = np.zeros(shape + (len(self.bin_edges) + 1,), np.int64)
        self._mean = np.zeros(shape)
        self._m2 = np.zeros(shape)  # sum of squared deviations from the mean
        self._min = np.full(shape, np.inf)
        self._max = np.full(shape, -np.inf)
        # Margins need a true-class logit and at least one other: channels must be the classes.
        margins = self.channel_names == self.class_names and len(self.class_names) > 1
        self._margins = LogitStatistics(self.class_names, [MARGIN], _margin_edges(self.bin_edges)) if margins else None
        self._volume: Optional[np.ndarray] = np.zeros(shape[0])  # mL per class; None once a case lacked it
        self._missed_volume: Optional[np.ndarray] = np.zeros(shape[0]) if margins else None  # mL with margin < 0

    # ------------------------------------------------------------------ accumulation

    def update(self, logits: ArrayLike, labels: ArrayLike, mask: Optional[ArrayLike] = None,
               voxel_volume_ml: Optional[float] = None) -> None:
        """Add one case: logits (C, *spatial) or (1, C, *spatial), labels (*spatial) or (1, *spatial).

        Labels are class indices 0..G-1 (integer, bool, or float holding whole numbers). Only
        voxels where ``mask`` (bool or integer, nonzero = inside) is set count. Torch logits are
        moved to the CPU once (float64 stays float64, other dtypes become float32). The volume is
        processed in chunks, so memory stays bounded whatever the number of classes.
        ``voxel_volume_ml`` (``np.prod(spacing_mm) / 1000``) adds the case's class volumes; without
        it volume_ml() is None from now on. On bad input nothing is added.
        """
        voxel_ml = _voxel_volume_ml(voxel_volume_ml)
        volume = _logits_volume(logits, self.channel_names)
        spatial = volume.shape[1:]
        flat_labels = _voxel_map(labels, spatial, "labels", "biuf", "an integer label map of class indices")
        inside = None if mask is None else _voxel_map(mask, spatial, "mask", "biu", "a bool or integer mask")
        if inside is not None and inside.dtype != bool:
            inside = inside != 0
        flat = volume.reshape(len(self.channel_names), -1)
        case = self._empty_copy()
        for start in range(0, flat.shape[1], _CHUNK):
            part = slice(start, start + _CHUNK)
            state, margin_state = self._chunk_state(flat[:, part], flat_labels[part],
                                                    None if inside is None else inside[part])
            case._absorb(*state)
            if margin_state is not None:
                case._margins._absorb(*margin_state)
        if voxel_ml is None:
            case._volume = case._missed_volume = None
        else:
            case._volume = case._count * voxel_ml
            if case._margins is not None:
                case._missed_volume = case._margins._below_zero() * voxel_ml
        self._add(case)

    def merge(self, other: "LogitStatistics") -> "LogitStatistics":
        """Add another accumulator's cases (same names and bin edges); returns self.

        Margins and volumes survive only if both sides have them (else they become absent/None).
        """
        self._check_compatible(other, "other", same_edges=True)
        self._add(other)
        return self

    def _add(self, other: "LogitStatistics") -> None:
        """Add a compatible accumulator's whole state: moments, histograms, margins and volumes."""
        self._absorb(*other._state())
        if self._margins is not None and other._margins is not None:
            self._margins._absorb(*other._margins._state())
        else:
            self._margins = None
        self._volume = _sum_or_none(self._volume, other._volume)
        self._missed_volume = _sum_or_none(self._missed_volume, other._missed_volume)

    def _chunk_state(self, values: np.ndarray, labels: np.ndarray, inside: Optional[np.ndarray]) -> tuple:
        """(state arrays, margin state arrays or None) of one chunk: values (C, V), labels (V,), inside (V,) or None."""
        if inside is not None:
            labels = labels[inside]
        labels = self._class_indices(labels)
        num_classes, num_channels, width = self._hist.shape
        count = np.bincount(labels, minlength=num_classes)
        hist = np.zeros_like(self._hist)
        mean, m2 = np.zeros_like(self._mean), np.zeros_like(self._m2)
        low, high = np.full_like(self._min, np.inf), np.full_like(self._max, -np.inf)
        members = {g: labels == g for g in np.flatnonzero(count)}
        offset = labels * width
        if self._margins is not None:  # channel c is the logit of class c
            true_logit, other_max = np.empty(labels.size), np.full(labels.size, -np.inf)
        for c in range(num_channels):
            x = (values[c] if inside is None else values[c][inside]).astype(np.float64)
            sums = np.bincount(labels, weights=x, minlength=num_classes)
            if not np.isfinite(sums).all():
                raise ValueError(f"logits contain NaN or infinite values (channel {self.channel_names[c]!r}); "
                                 f"check the network output before collecting statistics.")
            mean[:, c] = sums / np.maximum(count, 1)
            deviation = x - mean[labels, c]  # two-pass within the chunk; chunks merge with Chan et al.
            deviation *= deviation
            m2[:, c] = np.bincount(labels, weights=deviation, minlength=num_classes)
            bins = np.searchsorted(self.bin_edges, x, side="right")
            bins[x == self.bin_edges[-1]] = width - 2  # the last bin is closed, as in np.histogram
            bins += offset
            hist[:, c] = np.bincount(bins, minlength=num_classes * width).reshape(num_classes, width)
            for g, member in members.items():
                low[g, c] = np.min(x, where=member, initial=np.inf)
                high[g, c] = np.max(x, where=member, initial=-np.inf)
            if self._margins is not None:
                own = members.get(c)
                if own is None:
                    np.maximum(other_max, x, out=other_max)
                else:
                    true_logit[own] = x[own]
                    np.maximum(other_max, x, out=other_max, where=~own)
        margin_state = None
        if self._margins is not None:
            margin_state = self._margins._chunk_state((true_logit - other_max)[None], labels, None)[0]
        return (count, hist, mean, m2, low, high), margin_state

    def _class_indices(self, labels: np.ndarray) -> np.ndarray:
        num_classes = len(self.class_names)
        if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
            bad = np.unique(labels[(labels < 0) | (labels >= num_classes)])[:10].tolist()
            raise ValueError(f"labels hold values {bad} outside 0..{num_classes - 1} for the {num_classes} classes "
                             f"{self.class_names}; map the labels to class indices first (or mask those voxels out).")
        if labels.dtype.kind == "f" and not np.array_equal(labels, np.round(labels)):
            raise ValueError("labels is a float array with non-integer values or NaN; pass integer class indices.")
        return labels.astype(np.intp)

    def _state(self) -> tuple:
        return self._count, self._hist, self._mean, self._m2, self._min, self._max

    def _absorb(self, count, hist, mean, m2, low, high) -> None:
        """Merge another state into this one (Chan et al.'s parallel mean/variance update)."""
        n_self = self._count[:, None].astype(np.float64)
        n_other = count[:, None].astype(np.float64)
        share = n_other / np.maximum(n_self + n_other, 1.0)
        delta = mean - self._mean
        self._mean = self._mean + delta * share
        self._m2 = self._m2 + m2 + delta * delta * n_self * share
        self._count = self._count + count
        self._hist = self._hist + hist
        self._min = np.minimum(self._min, low)
        self._max = np.maximum(self._max, high)

    def _empty_copy(self) -> "LogitStatistics":
        return LogitStatistics(self.class_names, self.channel_names, self.bin_edges)

    def _below_zero(self) -> np.ndarray:
        """Per class, the voxels of channel 0 below 0; exact for the margin statistics, whose edges hold 0."""
        zero = int(np.searchsorted(self.bin_edges, 0.0))
        return self._hist[:, 0, :zero + 1].sum(axis=1)  # underflow and the bins [e_k, e_k+1) with e_k+1 <= 0

    def _check_compatible(self, other: "LogitStatistics", name: str, same_edges: bool) -> None:
        if not isinstance(other, LogitStatistics):
            raise ValueError(f"{name} must be a LogitStatistics; got {type(other).__name__}.")
        if other.class_names != self.class_names or other.channel_names != self.channel_names:
            raise ValueError(f"{name} has classes {other.class_names} and channels {other.channel_names}, but "
                             f"these statistics have {self.class_names} and {self.channel_names}; collect both "
                             f"with the same class and channel names.")
        if same_edges and not np.array_equal(other.bin_edges, self.bin_edges):
            raise ValueError(f"{name} uses different bin edges ({len(other.bin_edges) - 1} bins on "
                             f"[{other.bin_edges[0]}, {other.bin_edges[-1]}] vs {len(self.bin_edges) - 1} on "
                             f"[{self.bin_edges[0]}, {self.bin_edges[-1]}]); collect both with the same bin_edges.")

    # ------------------------------------------------------------------ queries

    def count(self, g: Key) -> int:
        """Number of voxels of class g seen so far (the same for every channel)."""
        return int(self._count[self._class(g)])

    def mean(self, g: Key, c: Key) -> Optional[float]:
        """Mean of channel c over the voxels of class g; None if there are none."""
        g, c = self._class(g), self._channel(c)
        return float(self._mean[g, c]) if self._count[g] else None

    def std(self, g: Key, c: Key) -> Optional[float]:
        """Population standard deviation of channel c over class g; None if there are no voxels."""
        g, c = self._class(g), self._channel(c)
        return float(np.sqrt(self._m2[g, c] / self._count[g])) if self._count[g] else None

    def minimum(self, g: Key, c: Key) -> Optional[float]:
        """Smallest value of channel c over class g (exact); None if there are no voxels."""
        g, c = self._class(g), self._channel(c)
        return float(self._min[g, c]) if self._count[g] else None

    def maximum(self, g: Key, c: Key) -> Optional[float]:
        """Largest value of channel c over class g (exact); None if there are no voxels."""
        g, c = self._class(g), self._channel(c)
        return float(self._max[g, c]) if self._count[g] else None

    def underflow(self, g: Key, c: Key) -> int:
        """Number of class-g voxels whose channel-c logit lies below the first bin edge."""
        return int(self._hist[self._class(g), self._channel(c), 0])

    def overflow(self, g: Key, c: Key) -> int:
        """Number of class-g voxels whose channel-c logit lies above the last bin edge."""
        return int(self._hist[self._class(g), self._channel(c), -1])

    def histogram(self, g: Key, c: Key) -> tuple[np.ndarray, np.ndarray]:
        """(bin edges, counts) of channel c over class g, as np.histogram returns them (copies)."""
        return self.bin_edges.copy(), self._hist[self._class(g), self._channel(c), 1:-1].copy()

    def quantile(self, g: Key, c: Key, q: float) -> Optional[float]:
        """The q-quantile (0 <= q <= 1) of channel c over class g, estimated from the histogram.

        Linear interpolation of the cumulative count within a bin: the resolution is one bin
        width. Underflow and overflow are treated as bins reaching to the exact min and max, so
        q = 0 and q = 1 give the min and max. None if class g has no voxels.
        """
        q = float(q)
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"q must be a fraction in [0, 1] (e.g. 0.5 for the median); got {q}.")
        g, c = self._class(g), self._channel(c)
        total = self._count[g]
        if not total:
            return None
        counts = self._hist[g, c]
        lower = np.concatenate(([self._min[g, c]], self.bin_edges))
        upper = np.concatenate((self.bin_edges, [self._max[g, c]]))
        cumulative = np.cumsum(counts)
        rank = q * total
        k = min(int(np.searchsorted(cumulative, rank, side="right")), int(np.flatnonzero(counts)[-1]))
        fraction = (rank - (cumulative[k] - counts[k])) / counts[k]
        value = lower[k] + fraction * (upper[k] - lower[k])
        return float(np.clip(value, self._min[g, c], self._max[g, c]))

    def summary(self) -> dict:
        """{class: {channel: {count, mean, std, min, max, quantiles}}}, None for classes without voxels.

        Quantile keys are percents as strings ("5", "25", "50", "75", "95").
        """
        return {
            name: None if not self._count[g] else {
                channel: {
                    "count": self.count(g),
                    "mean": self.mean(g, c),
                    "std": self.std(g, c),
                    "min": self.minimum(g, c),
                    "max": self.maximum(g, c),
                    "quantiles": {str(p): self.quantile(g, c, p / 100) for p in SUMMARY_QUANTILES},
                } for c, channel in enumerate(self.channel_names)
            } for g, name in enumerate(self.class_names)
        }

    @property
    def has_margins(self) -> bool:
        """Whether the true-class margins were collected (see the module docstring)."""
        return self._margins is not None

    def margin_histogram(self, g: Key) -> Optional[tuple[np.ndarray, np.ndarray]]:
        """(bin edges, counts) of the margin over class g, like histogram(); None without margins."""
        g = self._class(g)
        return None if self._margins is None else self._margins.histogram(g, 0)

    def margin_mean(self, g: Key) -> Optional[float]:
        """Mean margin z_g - max_{k != g} z_k over class g (exact); None without margins or voxels."""
        g = self._class(g)
        return None if self._margins is None else self._margins.mean(g, 0)

    def margin_quantile(self, g: Key, q: float) -> Optional[float]:
        """The q-quantile of the margin over class g, as quantile(); None without margins or voxels."""
        g = self._class(g)
        return None if self._margins is None else self._margins.quantile(g, 0, q)

    def crossing_rate(self, g: Key) -> Optional[float]:
        """Fraction of class-g voxels with margin < 0, on the wrong side of the decision boundary.

        That is the voxel miss rate, 1 - voxel sensitivity of the argmax (exact ties count as
        correct). None without margins or voxels.
        """
        g = self._class(g)
        if self._margins is None or not self._count[g]:
            return None
        return float(self._margins._below_zero()[g] / self._count[g])

    def volume_ml(self, g: Key) -> Optional[float]:
        """Volume of the class-g voxels in mL, summed over the cases; None if an update lacked voxel_volume_ml."""
        g = self._class(g)
        return None if self._volume is None else float(self._volume[g])

    def missed_volume_ml(self, g: Key) -> Optional[float]:
        """Volume in mL of the class-g voxels with margin < 0; None without margins or volumes."""
        g = self._class(g)
        return None if self._missed_volume is None else float(self._missed_volume[g])

    def _class(self, g: Key) -> int:
        return _index(g, self.class_names, "g", "class")

    def _channel(self, c: Key) -> int:
        return _index(c, self.channel_names, "c", "channel")

    # ------------------------------------------------------------------ persistence

    def to_dict(self) -> dict:
        """A JSON-ready dict that from_dict restores exactly (counts, edges, float64 moments, margins, volumes)."""
        return {
            **self._record(),
            **({"margins": self._margins._record()} if self._margins is not None else {}),
            "volume_ml": None if self._volume is None else self._volume.tolist(),
            "missed_volume_ml": None if self._missed_volume is None else self._missed_volume.tolist(),
            **({"metadata": dict(self.metadata)} if self.metadata else {}),
        }

    def _record(self) -> dict:
        """The histograms and moments of to_dict()."""
        empty = self._count == 0
        return {
            "format": FORMAT,
            "version": VERSION,
            "class_names": list(self.class_names),
            "channel_names": list(self.channel_names),
            "bin_edges": self.bin_edges.tolist(),
            "count": self._count.tolist(),
            "histogram": self._hist[:, :, 1:-1].tolist(),
            "underflow": self._hist[:, :, 0].tolist(),
            "overflow": self._hist[:, :, -1].tolist(),
            "mean": self._mean.tolist(),
            "m2": self._m2.tolist(),
            "min": [[None if empty[g] else v for v in row] for g, row in enumerate(self._min.tolist())],
            "max": [[None if empty[g] else v for v in row] for g, row in enumerate(self._max.tolist())],
        }

    @classmethod
    def from_dict(cls, d: dict) -> "LogitStatistics":
        """Rebuild from to_dict()'s output; ValueError if it is not a consistent version-1 record.

        A record without ``margins`` / ``volume_ml`` (written before they existed) loads without them.
        """
        stats = cls._from_record(d)
        stats._margins = stats._margins_from(d)
        shape = stats._count.shape
        stats._volume = _volume_field(d, "volume_ml", shape)
        stats._missed_volume = _volume_field(d, "missed_volume_ml", shape)
        if stats._missed_volume is not None and (stats._margins is None or stats._volume is None
                                                 or (stats._missed_volume > stats._volume).any()):
            raise ValueError("logit-statistics record is inconsistent: missed_volume_ml needs margins and "
                             "volume_ml, and may not exceed volume_ml.")
        return stats

    @classmethod
    def _from_record(cls, d: dict) -> "LogitStatistics":
        """The histograms and moments of a to_dict() record (margins and volumes not read)."""
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            found = d.get("format") if isinstance(d, dict) else type(d).__name__
            raise ValueError(f"not a logit-statistics record: format is {found!r}, expected {FORMAT!r}.")
        if d.get("version") != VERSION:
            raise ValueError(f"unsupported logit-statistics version {d.get('version')!r}; this AsymSeg reads "
                             f"version {VERSION}.")
        try:
            stats = cls(d["class_names"], d["channel_names"], d["bin_edges"], d.get("metadata"))
        except KeyError as exc:
            raise ValueError(f"logit-statistics record lacks the field {exc}.") from None
        shape = stats._mean.shape
        count = _field(d, "count", shape[:1], True)
        hist = _field(d, "histogram", shape + (len(stats.bin_edges) - 1,), True)
        under, over = _field(d, "underflow", shape, True), _field(d, "overflow", shape, True)
        empty = np.broadcast_to((count == 0)[:, None], shape)
        low, high = _field(d, "min", shape, False, empty), _field(d, "max", shape, False, empty)
        stats._count = count
        stats._hist = np.concatenate((under[..., None], hist, over[..., None]), axis=-1)
        stats._mean, stats._m2 = _field(d, "mean", shape, False), _field(d, "m2", shape, False)
        if (stats._hist < 0).any() or (stats._hist.sum(axis=-1) != count[:, None]).any():
            raise ValueError("logit-statistics record is inconsistent: each histogram (with underflow and "
                             "overflow) must be non-negative and sum to its class's count.")
        if (stats._m2 < 0).any() or (low > high).any():
            raise ValueError("logit-statistics record is inconsistent: m2 must be >= 0 and min <= max.")
        stats._min, stats._max = np.where(empty, np.inf, low), np.where(empty, -np.inf, high)
        return stats

    def _margins_from(self, d: dict) -> Optional["LogitStatistics"]:
        """The margin statistics of record ``d``, checked against these; None when it has none."""
        if d.get("margins") is None:
            return None
        if self._margins is None:
            raise ValueError("logit-statistics record has margins, but margins are defined only when the channels "
                             "are the classes (channel c the logit of class c) and there are at least two.")
        try:
            margins = LogitStatistics._from_record(d["margins"])
        except ValueError as exc:
            raise ValueError(f"field 'margins': {exc}") from None
        if (margins.class_names != self.class_names or margins.channel_names != [MARGIN]
                or not np.array_equal(margins.bin_edges, self._margins.bin_edges)
                or not np.array_equal(margins._count, self._count)):
            raise ValueError(f"field 'margins' must have the classes {self.class_names}, their counts, the one "
                             f"channel {MARGIN!r} and the bin edges with 0 added.")
        return margins

    def save(self, path: Union[str, os.PathLike]) -> None:
        """Write JSON atomically (files.write_json)."""
        write_json(path, self.to_dict(), indent=None)

    @classmethod
    def load(cls, path: Union[str, os.PathLike]) -> "LogitStatistics":
        """Read a file written by save(); ValueError naming the file if it is not one."""
        try:
            with open(path, encoding="utf-8") as stream:
                return cls.from_dict(json.load(stream))
        except ValueError as exc:  # includes JSONDecodeError and UnicodeDecodeError
            raise ValueError(f"{os.fspath(path)} is not a valid AsymSeg logit-statistics file: {exc}") from exc


def logit_shift(train: LogitStatistics, unseen: LogitStatistics) -> dict[str, dict[str, Optional[float]]]:
    """The paper's dz = |mean z_unseen| - |mean z_train|, per class name and channel name.

    Positive: the logit moved away from zero on unseen cases; negative: towards the decision
    boundary (the overfitting signature for a rare class). None where either side has no voxels
    of that class. Bin edges may differ: only the exact means are used.
    """
    if not isinstance(train, LogitStatistics):
        raise ValueError(f"train must be a LogitStatistics; got {type(train).__name__}.")
    train._check_compatible(unseen, "unseen", same_edges=False)
    shift = {}
    for g, name in enumerate(train.class_names):
        shift[name] = {}
        for c, channel in enumerate(train.channel_names):
            before, after = train.mean(g, c), unseen.mean(g, c)
            shift[name][channel] = None if before is None or after is None else abs(after) - abs(before)
    return shift


def margin_shift(train: LogitStatistics, unseen: LogitStatistics) -> dict[str, dict[str, Optional[float]]]:
    """Per class name: crossing rate and mean margin, training vs unseen.

    ``{"train_crossing", "unseen_crossing", "train_mean", "unseen_mean"}``; a crossing rate
    rising on unseen cases is the share of the class the model now misses. None where a side
    has no margins or no voxels of that class. Bin edges may differ.
    """
    if not isinstance(train, LogitStatistics):
        raise ValueError(f"train must be a LogitStatistics; got {type(train).__name__}.")
    train._check_compatible(unseen, "unseen", same_edges=False)
    return {name: {"train_crossing": train.crossing_rate(g), "unseen_crossing": unseen.crossing_rate(g),
                   "train_mean": train.margin_mean(g), "unseen_mean": unseen.margin_mean(g)}
            for g, name in enumerate(train.class_names)}


def _margin_edges(edges: np.ndarray) -> np.ndarray:
    """The logits' bin edges with 0 added, never as the last edge (the last bin is closed)."""
    return _bin_edges(np.union1d(edges, [0.0] if edges[-1] > 0 else [0.0, 1.0]))


def _voxel_volume_ml(value) -> Optional[float]:
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not np.isfinite(value) or value <= 0:
        raise ValueError(f"voxel_volume_ml must be a positive number of millilitres, np.prod(spacing_mm) / 1000, "
                         f"or None; got {value!r}.")
    return float(value)


def _sum_or_none(a: Optional[np.ndarray], b: Optional[np.ndarray]) -> Optional[np.ndarray]:
    return None if a is None or b is None else a + b


def _volume_field(d: dict, key: str, shape: tuple) -> Optional[np.ndarray]:
    """A per-class volume of a record, or None when it is null or absent (unknown)."""
    if d.get(key) is None:
        return None
    volume = _field(d, key, shape, False)
    if (volume < 0).any():
        raise ValueError(f"field {key!r} must hold volumes >= 0.")
    return volume


def _names(names: Sequence[str], argument: str) -> list[str]:
    if isinstance(names, str) or not all(isinstance(n, str) for n in names):
        raise ValueError(f"{argument} must be a list of strings, e.g. ['background', 'tumour']; got {names!r}.")
    names = list(names)
    if not names or len(set(names)) != len(names):
        raise ValueError(f"{argument} must be a non-empty list of distinct names; got {names!r}.")
    return names


def _bin_edges(edges: Sequence[float]) -> np.ndarray:
    try:
        edges = np.array(edges, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"bin_edges must be a sequence of numbers; got {edges!r}.") from exc
    if edges.ndim != 1 or edges.size < 2 or not np.isfinite(edges).all() or (np.diff(edges) <= 0).any():
        raise ValueError(f"bin_edges must be a 1-D, finite, strictly increasing sequence of at least 2 edges, "
                         f"e.g. np.linspace(-20, 20, 161); got shape {edges.shape}.")
    edges.setflags(write=False)
    return edges


def _index(key: Key, names: list[str], argument: str, kind: str) -> int:
    if isinstance(key, str):
        if key in names:
            return names.index(key)
    elif isinstance(key, (int, np.integer)) and not isinstance(key, bool) and 0 <= key < len(names):
        return int(key)
    raise ValueError(f"{argument} must be a {kind} index 0..{len(names) - 1} or one of the names {names}; "
                     f"got {key!r}.")


def _logits_volume(logits: ArrayLike, channel_names: list[str]) -> np.ndarray:
    """Logits as a NumPy (C, *spatial) array, moved to the CPU once."""
    if isinstance(logits, torch.Tensor):
        if not logits.is_floating_point():
            raise ValueError(f"logits must be floating point; got a tensor of dtype {logits.dtype}.")
        dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
        volume = logits.detach().to(device="cpu", dtype=dtype).numpy()
    else:
        volume = np.asarray(logits)
        if volume.dtype.kind != "f":
            raise ValueError(f"logits must be floating point; got an array of dtype {volume.dtype}.")
    num_channels = len(channel_names)
    if volume.ndim >= 3 and volume.shape[0] == 1 and volume.shape[1] == num_channels:
        volume = volume[0]
    if volume.ndim < 2 or volume.shape[0] != num_channels:
        raise ValueError(f"logits has shape {volume.shape}; expected (C, *spatial) or (1, C, *spatial) with "
                         f"C = {num_channels} channels {channel_names}.")
    return volume


def _voxel_map(value: ArrayLike, spatial: tuple, argument: str, kinds: str, expected: str) -> np.ndarray:
    """A label map or mask of shape (*spatial) or (1, *spatial), flattened (a view when possible)."""
    array = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
    if array.dtype.kind not in kinds:
        raise ValueError(f"{argument} must be {expected}; got dtype {array.dtype}.")
    if array.shape == (1,) + spatial:
        array = array[0]
    if array.shape != spatial:
        raise ValueError(f"{argument} has shape {array.shape} but the logits' spatial shape is {spatial}; pass "
                         f"{argument} as (*spatial) or (1, *spatial), voxel for voxel with the logits.")
    return array.reshape(-1)


def _field(d: dict, key: str, shape: tuple, integer: bool, nulls: Optional[np.ndarray] = None) -> np.ndarray:
    """A numeric field of a to_dict() record, checked for shape and type; null exactly where ``nulls``."""
    if key not in d:
        raise ValueError(f"logit-statistics record lacks the field {key!r}.")
    try:
        array = np.array(d[key], dtype=object)
    except ValueError:
        array = np.empty(0, dtype=object)  # ragged nesting: reported as a shape error below
    if array.shape != shape:
        raise ValueError(f"field {key!r} must have shape {shape}; got {array.shape}.")
    is_null = np.equal(array, None)
    if not np.array_equal(is_null, np.zeros(shape, bool) if nulls is None else nulls):
        raise ValueError(f"field {key!r} may be null only for the classes without voxels.")
    array[is_null] = 0
    allowed = int if integer else (int, float)
    if any(isinstance(v, bool) or not isinstance(v, allowed) for v in array.flat):
        raise ValueError(f"field {key!r} must hold {'integers' if integer else 'numbers'}.")
    try:
        array = array.astype(np.int64 if integer else np.float64)
    except OverflowError:
        raise ValueError(f"field {key!r} holds a count too large for int64.") from None
    if not np.isfinite(array).all():
        raise ValueError(f"field {key!r} holds non-finite values.")
    return array
