import h5py
import numpy as np
import pytest
import torch

from fastmri.data import SliceDataset
from fastmri.data.transforms import center_crop as fm_center_crop

from dnirecon.errors import DataError
from dnirecon.fastmri_io import FastMRIVolume, center_crop, list_volumes, read_header
from training.synth import ismrmrd_header


def test_padding_and_sizes_equal_fastmri_slicedataset(tiny_dir):
    ds = SliceDataset(tiny_dir, challenge="multicoil", use_dataset_cache=False)
    for fname, _, meta in ds.raw_samples:
        hdr = read_header(fname)
        assert (hdr.padding_left, hdr.padding_right) == (meta["padding_left"], meta["padding_right"])
        assert hdr.enc_size == meta["encoding_size"][:2]
        assert hdr.recon_size == meta["recon_size"][:2]


def test_fastmri_arithmetic_for_a_real_knee_header(tmp_path):
    # 368 columns, 334 acquired with centre 167 -> fastMRI gives padding [17, 351)
    path = tmp_path / "k.h5"
    xml = ismrmrd_header((320, 320), 368, 2, 15, "pd", (17, 351))
    with h5py.File(path, "w") as f:
        f["ismrmrd_header"] = np.bytes_(xml.encode())
    hdr = read_header(path)
    assert hdr.enc_size == (640, 368) and hdr.recon_size == (320, 320)
    assert (hdr.padding_left, hdr.padding_right) == (17, 351)


def test_volume_reads_slices_targets_and_maps(pd_file):
    with FastMRIVolume(pd_file) as vol:
        assert vol.num_slices == 3 and vol.header.acquisition == "CORPD_FBK"
        k = vol.kspace(1)
        assert k.dtype == np.complex64 and k.shape == (4, 128, vol.header.enc_size[1])
        assert vol.target(0, "sense").shape == (64, 64) and vol.target(0, "rss").dtype == np.float32
        assert vol.maps(2).shape == k.shape
        assert vol.attrs["acquisition"] == "CORPD_FBK"


def test_target_is_none_when_missing(tmp_path, pd_file):
    path = tmp_path / "real_like.h5"
    with h5py.File(pd_file) as src, h5py.File(path, "w") as dst:
        for key in ("kspace", "ismrmrd_header", "reconstruction_rss"):
            src.copy(key, dst)
    with FastMRIVolume(path) as vol:
        assert vol.target(0, "sense") is None and vol.target(0, "rss") is not None
        with pytest.raises(DataError, match="sensitivity_maps"):
            vol.maps(0)


def _write(path, kspace=None, header=True, limits=True):
    xml = ismrmrd_header((16, 16), 18, 1, 2, "pd", (1, 17))
    if not limits:
        start = xml.index("<encodingLimits>")
        xml = xml[:start] + xml[xml.index("</encodingLimits>") + len("</encodingLimits>"):]
    with h5py.File(path, "w") as f:
        if kspace is not None:
            f["kspace"] = kspace
        if header:
            f["ismrmrd_header"] = np.bytes_(xml.encode())
    return path


GOOD = np.zeros((1, 2, 32, 18), np.complex64)


def test_missing_kspace_is_named(tmp_path):
    with pytest.raises(DataError, match=r"nokspace\.h5 has no kspace dataset"):
        FastMRIVolume(_write(tmp_path / "nokspace.h5"))


def test_wrong_rank_is_named(tmp_path):
    with pytest.raises(DataError, match=r"kspace in knee_003\.h5 has rank 3, expected 4 \(slices, coils, readout, phase\)"):
        FastMRIVolume(_write(tmp_path / "knee_003.h5", GOOD[0]))


def test_wrong_dtype_is_named(tmp_path):
    with pytest.raises(DataError, match=r"kspace in real\.h5 has dtype float32, expected complex64"):
        FastMRIVolume(_write(tmp_path / "real.h5", GOOD.real.copy()))


def test_header_without_encoding_limits_is_named(tmp_path):
    with pytest.raises(DataError, match=r"ismrmrd_header in nolim\.h5 has no encoding/encodingLimits"):
        FastMRIVolume(_write(tmp_path / "nolim.h5", GOOD, limits=False))


def test_missing_header_is_named(tmp_path):
    with pytest.raises(DataError, match=r"nohdr\.h5 has no ismrmrd_header"):
        FastMRIVolume(_write(tmp_path / "nohdr.h5", GOOD, header=False))


def test_phase_width_must_match_header(tmp_path):
    with pytest.raises(DataError, match=r"has 20 phase columns, expected 18"):
        FastMRIVolume(_write(tmp_path / "w.h5", np.zeros((1, 2, 32, 20), np.complex64)))


def test_missing_file_and_non_hdf5(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        FastMRIVolume(tmp_path / "absent.h5")
    (tmp_path / "text.h5").write_text("not hdf5")
    with pytest.raises(DataError, match="not a readable HDF5"):
        FastMRIVolume(tmp_path / "text.h5")


def test_list_volumes(tmp_path, tiny_dir):
    assert [p.name for p in list_volumes(tiny_dir)] == ["synth_pd_000.h5", "synth_pdfs_000.h5"]
    with pytest.raises(DataError, match="holds no .h5 files"):
        list_volumes(tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        list_volumes(tmp_path / "nope")


@pytest.mark.parametrize("shape,crop", [((40, 37), (32, 32)), ((3, 41, 36), (21, 35))])
def test_center_crop_equals_fastmri(shape, crop, rng):
    x = rng.standard_normal(shape)
    np.testing.assert_array_equal(center_crop(x, crop), fm_center_crop(torch.from_numpy(x), crop).numpy())
    with pytest.raises(DataError, match="cannot centre-crop"):
        center_crop(x, (shape[-2] + 1, 4))
