"""Image files checked before and after reading: truncated payloads, sizes beyond memory, NaN/inf voxels.

ITK's readers fill a short payload with zeros without a word (an uncompressed ``.nii`` cut in
half, or a complete gzip stream holding too few bytes), and allocate whatever a header
declares. So before the voxels are read, the payload a file really holds is compared with
what its header declares (NIfTI-1/2, NRRD and MetaImage with attached data; other layouts are
left to the reader), and the declared size with the memory available. SimpleITK's
``ReadImageInformation`` reads the header only.
"""

from __future__ import annotations

import gzip
import math
import re
import struct
import zlib
from pathlib import Path
from typing import Optional

import numpy as np
import SimpleITK as sitk

from .errors import InputError, ResourceError

_CHUNK = 1 << 24
_HEADER_LIMIT = 1 << 16  # NRRD / MetaImage headers are text; more than this is not a header
READ_HINT = "Copy or export the file again; a file cut short (interrupted copy, full disk) cannot be used."


def _stream_length(stream) -> int:
    total = 0
    while True:
        chunk = stream.read(_CHUNK)
        if not chunk:
            return total
        total += len(chunk)


def _gzip_length(path: Path, skip: int = 0) -> int:
    """Decompressed length of a gzip file (or of the gzip stream starting at byte ``skip``)."""
    try:
        with open(path, "rb") as raw:
            raw.seek(skip)
            with gzip.GzipFile(fileobj=raw) as stream:
                return _stream_length(stream)
    except (OSError, EOFError, zlib.error) as exc:
        raise InputError(f"Cannot read image {path}: the compressed file is truncated or corrupt ({exc})",
                         READ_HINT) from exc


def _zlib_length(path: Path, skip: int) -> int:
    decompressor, total = zlib.decompressobj(), 0
    try:
        with open(path, "rb") as raw:
            raw.seek(skip)
            for chunk in iter(lambda: raw.read(_CHUNK), b""):
                total += len(decompressor.decompress(chunk))
            total += len(decompressor.flush())
    except zlib.error as exc:
        raise InputError(f"Cannot read image {path}: the compressed data is corrupt ({exc})", READ_HINT) from exc
    if not decompressor.eof:
        raise InputError(f"Cannot read image {path}: the compressed data is truncated", READ_HINT)
    return total


_NIFTI_FLOATS = {16: "f4", 64: "f8"}  # NIfTI datatype codes of float32 / float64


def _nifti_layout(header: bytes) -> Optional[tuple]:
    """(``vox_offset``, float dtype or None) of a NIfTI-1 (348-byte) or NIfTI-2 (540-byte) header, either byte order."""
    for order in "<>":
        if len(header) < 4:
            return None
        sizeof_hdr = struct.unpack(order + "i", header[:4])[0]
        if sizeof_hdr == 348 and len(header) >= 112:
            offset, code = struct.unpack(order + "f", header[108:112])[0], struct.unpack(order + "h", header[70:72])[0]
        elif sizeof_hdr == 540 and len(header) >= 176:
            offset, code = struct.unpack(order + "q", header[168:176])[0], struct.unpack(order + "h", header[12:14])[0]
        else:
            continue
        dtype = _NIFTI_FLOATS.get(code)
        return int(offset), np.dtype(order + dtype) if dtype else None
    return None


def _scan_nifti(path: Path, compressed: bool) -> Optional[tuple]:
    """(payload bytes, NaN/inf voxel count) of a NIfTI file, read once as a stream.

    ITK's NIfTI reader turns NaN and inf into 0 without a word, so they are counted here, in
    the raw payload.
    """
    opener = gzip.open if compressed else open
    try:
        with opener(path, "rb") as stream:
            head = stream.read(544)
            layout = _nifti_layout(head)
            if layout is None:
                return None
            offset, dtype = layout
            skip = offset - len(head)  # header extensions can reach beyond the first 544 bytes
            while skip > 0:
                skipped = len(stream.read(min(skip, _CHUNK)))
                if not skipped:
                    return 0, 0
                skip -= skipped
            carry = head[offset:]
            total, bad = len(carry), 0
            while True:
                if dtype is not None:
                    usable = len(carry) - len(carry) % dtype.itemsize
                    values = np.frombuffer(carry[:usable], dtype=dtype)
                    bad += values.size - int(np.count_nonzero(np.isfinite(values)))
                    carry = carry[usable:]
                else:
                    carry = b""
                chunk = stream.read(_CHUNK)
                if not chunk:
                    return total, bad
                total += len(chunk)
                carry += chunk
    except (OSError, EOFError, zlib.error) as exc:
        raise InputError(f"Cannot read image {path}: the compressed file is truncated or corrupt ({exc})",
                         READ_HINT) from exc


def _text_header(path: Path, end: re.Pattern) -> Optional[tuple]:
    """(header text, its length in bytes) of a NRRD / MetaImage file; None when the end mark is missing."""
    with open(path, "rb") as f:
        head = f.read(_HEADER_LIMIT)
    match = end.search(head)
    if not match:
        return None
    return head[:match.end()].decode("latin-1"), match.end()


def _field(header: str, *names: str) -> Optional[str]:
    for name in names:
        match = re.search(rf"^{name}\s*[:=]\s*(.*?)\s*$", header, re.M | re.I)
        if match:
            return match.group(1)
    return None


def present_payload(path: Path) -> Optional[tuple]:
    """(bytes of voxel data the file really holds, NaN/inf voxels counted in it or None when not counted);
    None for layouts this does not know (detached data)."""
    name, size = path.name.lower(), path.stat().st_size
    if name.endswith((".nii", ".nii.gz")):
        return _scan_nifti(path, compressed=name.endswith(".gz"))
    if name.endswith(".nrrd"):
        found = _text_header(path, re.compile(rb"\r?\n\r?\n"))
        if found is None or _field(found[0], "data file", "datafile"):
            return None
        encoding = (_field(found[0], "encoding") or "raw").lower()
        if encoding == "raw":
            return size - found[1], None
        if encoding in ("gzip", "gz"):
            return _gzip_length(path, skip=found[1]), None
        return None  # text / hex / bzip2: the reader checks those itself
    if name.endswith(".mha"):
        found = _text_header(path, re.compile(rb"ElementDataFile\s*=\s*LOCAL\r?\n", re.I))
        if found is None:
            return None
        if (_field(found[0], "CompressedData") or "false").lower() == "true":
            return _zlib_length(path, skip=found[1]), None
        return size - found[1], None
    return None


def _size(nbytes: float) -> str:
    """A byte count for a message: B below 1 KiB, else KiB, MiB or GiB with one decimal."""
    if nbytes < 1024:
        return f"{nbytes:.0f} B"
    unit = min(int(math.log(nbytes, 1024)), 3)
    return f"{nbytes / 1024 ** unit:.1f} {('B', 'KiB', 'MiB', 'GiB')[unit]}"


def _bytes_per_component(pixel_id: int) -> int:
    return sitk.Image([1] * 2, pixel_id).GetSizeOfPixelComponent()


def check_before_reading(path: Path) -> None:
    """InputError when the payload is shorter than the header declares or (NIfTI) holds NaN/inf voxels;
    ResourceError when the volume cannot fit in memory."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    voxels = math.prod(reader.GetSize()) * reader.GetNumberOfComponents()
    declared = voxels * _bytes_per_component(reader.GetPixelID())
    present, non_finite = present_payload(path) or (None, None)
    if present is not None and present < declared:
        size = " x ".join(map(str, reader.GetSize()))
        raise InputError(f"Cannot read image {path}: its header declares {size} voxels ({declared:,} bytes) but the "
                         f"file holds only {max(present, 0):,} bytes of voxel data (truncated).", READ_HINT)
    if non_finite:
        raise _non_finite_error(path, non_finite, voxels)
    import psutil

    needed = declared + voxels * 4  # the file's voxels and a float32 copy of them
    available = psutil.virtual_memory().available
    if needed > available:
        raise ResourceError(f"Image {path} declares {voxels:,} voxels: reading it needs about {_size(needed)} of "
                            f"memory, {_size(available)} are free.",
                            "Check that the file is the image you meant; crop or downsample it, or free memory.")


def check_finite(image: sitk.Image, path: Path) -> None:
    """InputError naming the file and the count when a floating-point image holds NaN or infinite voxels."""
    if image.GetPixelID() not in (sitk.sitkFloat32, sitk.sitkFloat64, sitk.sitkVectorFloat32,
                                  sitk.sitkVectorFloat64):
        return
    values = sitk.GetArrayViewFromImage(image)
    bad = values.size - int(np.count_nonzero(np.isfinite(values)))
    if bad:
        raise _non_finite_error(path, bad, values.size)


def _non_finite_error(path: Path, bad: int, total: int) -> InputError:
    return InputError(f"Image {path} has {bad:,} NaN or infinite voxel(s) of {total:,}.",
                      "Replace them in the file (e.g. with 0 or the background value) and start again: "
                      "AsymSeg never guesses a value for them.")
