"""fastMRI layout <-> ISMRMRD raw HDF5: the k-space survives bit for bit, fastMRI reads the result,
and the ismrmrd package reads what dnirecon writes."""

import shutil
import subprocess

import h5py
import numpy as np
import pytest
from fastmri.data import SliceDataset

from dnirecon.errors import DataError
from dnirecon.fastmri_io import FastMRIVolume
from dnirecon.ismrmrd_io import fastmri_to_ismrmrd, flag, ismrmrd_to_fastmri, read_ismrmrd, retrospective_masks


def test_round_trip_equals_the_original_kspace_bit_for_bit(pd_file, tmp_path):
    raw = fastmri_to_ismrmrd(pd_file, tmp_path / "raw.h5")
    back = ismrmrd_to_fastmri(raw, tmp_path / "back" / "pd.h5")
    with h5py.File(pd_file, "r") as a, h5py.File(back, "r") as b:
        ka, kb = a["kspace"][()], b["kspace"][()]
        assert kb.dtype == np.complex64 and kb.shape == ka.shape
        assert ka.tobytes() == kb.tobytes()
        assert a["ismrmrd_header"][()] == b["ismrmrd_header"][()]
        assert b.attrs["acquisition"] == a.attrs["acquisition"]
        # every line inside the encoding limits arrived: the RSS target is the fully sampled one's
        np.testing.assert_allclose(b["reconstruction_rss"][()], a["reconstruction_rss"][()], rtol=1e-4, atol=1e-6 * a["reconstruction_rss"][()].max())


def test_fastmri_slicedataset_reads_the_converted_file(pd_file, tmp_path):
    raw = fastmri_to_ismrmrd(pd_file, tmp_path / "raw.h5")
    back = ismrmrd_to_fastmri(raw, tmp_path / "back" / "pd.h5")
    ds = SliceDataset(back.parent, challenge="multicoil", use_dataset_cache=False)
    assert len(ds) == 3
    kspace, mask, target, attrs, fname, index = ds[1]
    with FastMRIVolume(pd_file) as vol:
        np.testing.assert_array_equal(kspace, vol.kspace(1))
        assert (attrs["padding_left"], attrs["padding_right"]) == (vol.header.padding_left, vol.header.padding_right)
    assert target.shape == (64, 64) and mask.shape == (kspace.shape[-1],)


def test_one_readout_per_line_with_encode_step_slice_and_slice_flags(pd_file, tmp_path):
    raw = fastmri_to_ismrmrd(pd_file, tmp_path / "raw.h5")
    with FastMRIVolume(pd_file) as vol:
        left, right = vol.header.padding_left, vol.header.padding_right
        coils, height = vol.num_coils, vol.header.enc_size[0]
    with h5py.File(raw, "r") as f:
        head = f["dataset/data"]["head"]
    lines = right - left
    assert len(head) == 3 * lines
    assert list(head["idx"]["kspace_encode_step_1"][:lines]) == list(range(lines))
    assert list(head["idx"]["slice"][:: lines]) == [0, 1, 2]
    assert (head["number_of_samples"] == height).all() and (head["active_channels"] == coils).all()
    last = (head["flags"] & np.uint64(flag("last_in_slice"))) != 0
    assert list(np.flatnonzero(last)) == [lines - 1, 2 * lines - 1, 3 * lines - 1]


def test_ismrmrd_package_reads_the_written_file(pd_file, tmp_path):
    import ismrmrd

    raw = fastmri_to_ismrmrd(pd_file, tmp_path / "raw.h5")
    with FastMRIVolume(pd_file) as vol:
        k0 = vol.kspace(0)
        left = vol.header.padding_left
    with ismrmrd.Dataset(str(raw), "dataset", create_if_needed=False) as dset:
        assert dset.number_of_acquisitions() > 0
        acq = dset.read_acquisition(5)
        assert acq.idx.kspace_encode_step_1 == 5 and acq.idx.slice == 0
        np.testing.assert_array_equal(acq.data, k0[:, :, left + 5])
        assert b"ismrmrdHeader" in dset.read_xml_header()


def test_an_undersampled_conversion_keeps_only_the_mask_lines_and_flags_calibration(pd_file, tmp_path):
    mask, calib = retrospective_masks(pd_file, 4)
    raw = fastmri_to_ismrmrd(pd_file, tmp_path / "raw4.h5", mask=mask, calibration=calib)
    vol = read_ismrmrd(raw)
    np.testing.assert_array_equal(vol.mask, mask)
    with FastMRIVolume(pd_file) as src:
        np.testing.assert_array_equal(vol.kspace[2], src.kspace(2) * mask)
    with h5py.File(raw, "r") as f:
        head = f["dataset/data"]["head"]
    cal = (head["flags"] & np.uint64(flag("calibration_and_imaging"))) != 0
    assert cal.sum() == 3 * int(calib.sum()) > 0
    back = ismrmrd_to_fastmri(raw, tmp_path / "back4.h5")
    with h5py.File(back, "r") as f:
        assert "reconstruction_rss" not in f  # an undersampled file has no fully sampled target
        np.testing.assert_array_equal(f["mask"][()], mask)


def test_noise_readouts_are_left_out_of_the_kspace(pd_file, tmp_path):
    raw = fastmri_to_ismrmrd(pd_file, tmp_path / "raw.h5")
    with h5py.File(raw, "r+") as f:
        rec = f["dataset/data"][0]
        rec["head"]["flags"] = flag("noise")
        rec["data"] = np.full_like(rec["data"], 7.0)
        f["dataset/data"][0] = rec
    vol = read_ismrmrd(raw)
    with FastMRIVolume(pd_file) as src:
        left = src.header.padding_left
    assert vol.mask[left] == 0  # the first line of slice 0 became a noise readout: not placed
    assert not np.any(vol.kspace[0, :, :, left])


def test_nonzero_kspace_outside_the_encoding_limits_is_refused(pd_file, tmp_path):
    src = tmp_path / "bad.h5"
    shutil.copy(pd_file, src)
    with h5py.File(src, "r+") as f:
        k = f["kspace"][()]
        k[0, 0, 0, 0] = 1 + 1j
        f["kspace"][...] = k
    with pytest.raises(DataError, match=r"kspace in bad.h5 slice 0 has nonzero values outside the phase columns"):
        fastmri_to_ismrmrd(src, tmp_path / "out.h5")
    assert not (tmp_path / "out.h5").exists()


def test_a_file_without_the_dataset_group_names_it(tmp_path):
    path = tmp_path / "empty.h5"
    with h5py.File(path, "w") as f:
        f.create_group("other")
    with pytest.raises(DataError, match=r"empty.h5 has no dataset/xml and dataset/data"):
        read_ismrmrd(path)


@pytest.mark.skipif(shutil.which("ismrmrd_generate_cartesian_shepp_logan") is None,
                    reason="ismrmrd-tools (ismrmrd_generate_cartesian_shepp_logan) is not installed")
def test_ismrmrd_tools_shepp_logan_is_read_into_the_fastmri_layout(tmp_path):
    out = tmp_path / "sl.h5"
    subprocess.run(["ismrmrd_generate_cartesian_shepp_logan", "-o", str(out), "-m", "64", "-c", "4", "-r", "1"],
                   check=True, capture_output=True, cwd=tmp_path)
    vol = read_ismrmrd(out)
    assert vol.kspace.shape[0] == 1 and vol.kspace.shape[1] == 4
    assert vol.mask.all() and np.abs(vol.kspace).max() > 0


def with_noise(src, dst, noise):
    shutil.copy(src, dst)
    with h5py.File(dst, "r+") as f:
        f.create_dataset("noise", data=noise)
    return dst


def test_round_trip_keeps_the_noise_dataset_bit_for_bit_as_noise_readouts_first(pd_file, tmp_path):
    with FastMRIVolume(pd_file) as vol:
        coils, height = vol.num_coils, vol.header.enc_size[0]
    rng = np.random.default_rng(3)
    n = 2 * height + 37  # not a multiple of the readout: the last noise readout is shorter
    noise = (rng.standard_normal((coils, n)) + 1j * rng.standard_normal((coils, n))).astype(np.complex64)
    src = with_noise(pd_file, tmp_path / "pd.h5", noise)
    raw = fastmri_to_ismrmrd(src, tmp_path / "raw.h5")
    with h5py.File(raw, "r") as f:
        head = f["dataset/data"]["head"]
    is_noise = (head["flags"] & np.uint64(flag("noise"))) != 0
    assert list(np.flatnonzero(is_noise)) == [0, 1, 2]
    assert list(head["number_of_samples"][:3]) == [height, height, 37]
    assert list(head["scan_counter"][:5]) == [1, 2, 3, 4, 5]  # image lines count on after the noise
    back = ismrmrd_to_fastmri(raw, tmp_path / "back" / "pd.h5")
    with h5py.File(src, "r") as a, h5py.File(back, "r") as b:
        assert b["noise"].dtype == np.complex64 and b["noise"][()].tobytes() == noise.tobytes()
        assert a["kspace"][()].tobytes() == b["kspace"][()].tobytes()


def test_a_noise_dataset_with_other_channels_than_kspace_is_refused_naming_the_file(pd_file, tmp_path):
    with FastMRIVolume(pd_file) as vol:
        coils = vol.num_coils
    src = with_noise(pd_file, tmp_path / "pd.h5", np.ones((coils + 1, 100), np.complex64))
    with pytest.raises(DataError, match=rf"noise in pd.h5 has {coils + 1} channels, expected {coils} \(kspace coils\)"):
        fastmri_to_ismrmrd(src, tmp_path / "raw.h5")
    assert not (tmp_path / "raw.h5").exists()


def test_a_noise_dataset_that_is_not_complex64_channels_by_samples_is_refused(pd_file, tmp_path):
    src = with_noise(pd_file, tmp_path / "pd.h5", np.ones((4, 100), np.float32))
    with pytest.raises(DataError, match=r"noise in pd.h5 is float32 of shape \(4, 100\), expected complex64"):
        fastmri_to_ismrmrd(src, tmp_path / "raw.h5")
