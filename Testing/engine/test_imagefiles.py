"""Image files: a short payload, an impossible size or NaN/inf voxels are refused with the file named."""

import gzip

import numpy as np
import pytest
import SimpleITK as sitk

from AsymSegTrainer import imagefiles
from AsymSegTrainer.data import read_image
from AsymSegTrainer.errors import InputError, ResourceError


def volume(dtype=np.float32, shape=(6, 7, 8)):
    array = np.arange(np.prod(shape), dtype=dtype).reshape(shape)
    return sitk.GetImageFromArray(array), array


@pytest.mark.parametrize("name", ["v.nii", "v.nii.gz", "v.nrrd", "v.mha"])
def test_whole_files_read_back_exactly_and_their_payload_is_measured(tmp_path, name):
    image, array = volume()
    path = tmp_path / name
    sitk.WriteImage(image, str(path), useCompression=name != "v.nii.gz" and name.endswith("mha"))
    assert imagefiles.present_payload(path)[0] >= array.nbytes
    np.testing.assert_array_equal(sitk.GetArrayFromImage(read_image(path)), array)


def test_half_an_uncompressed_nifti_is_refused(tmp_path):
    image, array = volume()
    whole = tmp_path / "whole.nii"
    sitk.WriteImage(image, str(whole))
    cut = tmp_path / "cut.nii"
    data = whole.read_bytes()
    cut.write_bytes(data[: len(data) - array.nbytes // 2])
    assert sitk.GetArrayFromImage(sitk.ReadImage(str(cut)))[-1].max() == 0  # ITK alone: zeros, no error
    with pytest.raises(InputError, match=r"cut.nii: its header declares 8 x 7 x 6 voxels \(1,344 bytes\) but the "
                                         r"file holds only 672 bytes"):
        read_image(cut)


def test_a_complete_gzip_holding_a_short_payload_is_refused(tmp_path):
    image, array = volume()
    raw = tmp_path / "raw.nii"
    sitk.WriteImage(image, str(raw))
    short = tmp_path / "short.nii.gz"
    short.write_bytes(gzip.compress(raw.read_bytes()[:-100]))  # a valid gzip stream, 100 bytes short
    with pytest.raises(InputError, match="short.nii.gz: its header declares .* holds only 1,244 bytes"):
        read_image(short)


def test_truncated_gzip_stream_is_refused(tmp_path):
    image, _ = volume()
    whole = tmp_path / "whole.nii.gz"
    sitk.WriteImage(image, str(whole), useCompression=True)
    cut = tmp_path / "cut.nii.gz"
    cut.write_bytes(whole.read_bytes()[:-20])
    with pytest.raises(InputError, match="cut.nii.gz: the compressed file is truncated or corrupt"):
        read_image(cut)


@pytest.mark.parametrize("name, compress", [("v.nrrd", False), ("v.nrrd", True), ("v.mha", False), ("v.mha", True)])
def test_truncated_nrrd_and_metaimage_are_refused(tmp_path, name, compress):
    image, _ = volume(shape=(20, 20, 20))
    whole = tmp_path / name
    sitk.WriteImage(image, str(whole), useCompression=compress)
    cut = tmp_path / f"cut_{name}"
    data = whole.read_bytes()
    cut.write_bytes(data[: len(data) - len(data) // 3])
    with pytest.raises(InputError, match=f"cut_{name}"):
        read_image(cut)


def test_a_tiny_file_declaring_a_huge_volume_is_refused_before_any_allocation(tmp_path):
    path = tmp_path / "huge.nrrd"
    path.write_bytes(b"NRRD0004\ntype: float\ndimension: 3\nsizes: 1000 1000 1000\nencoding: raw\nendian: little\n\n")
    assert path.stat().st_size < 100
    with pytest.raises(InputError, match=r"1000 x 1000 x 1000 voxels \(4,000,000,000 bytes\) but the file holds only 0"):
        read_image(path)


def test_a_volume_larger_than_free_memory_is_a_resource_error(tmp_path, monkeypatch):
    image, _ = volume()
    path = tmp_path / "v.nii.gz"
    sitk.WriteImage(image, str(path), useCompression=True)
    import psutil

    class Tight:
        available = 1000
    monkeypatch.setattr(psutil, "virtual_memory", lambda: Tight())
    with pytest.raises(ResourceError, match=r"v.nii.gz declares 336 voxels: reading it needs about 2.6 KiB of memory, 1000 B are free"):
        read_image(path)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("name, dtype", [("nan.nii.gz", np.float32), ("nan.nii", np.float64), ("nan.nrrd", np.float32),
                                         ("nan.mha", np.float64)])
def test_non_finite_voxels_are_counted_and_refused(tmp_path, bad, name, dtype):
    _, array = volume(dtype)
    array[0, 0, :3] = bad
    path = tmp_path / name
    sitk.WriteImage(sitk.GetImageFromArray(array), str(path), useCompression=name.endswith(".gz"))
    with pytest.raises(InputError, match=rf"{name} has 3 NaN or infinite voxel\(s\) of 336"):
        read_image(path)
