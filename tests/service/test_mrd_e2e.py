"""The MRD endpoint end to end over loopback: a real `dnirecon serve` with its gRPC and MRD ports."""

from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pytest

from dnirecon.fastmri_io import center_crop
from dnirecon.ismrmrd_io import fastmri_to_ismrmrd, flag, slice_geometry
from dnirecon import wire
from service.client import ReconClient
from service.mrd_client import acquisition_bytes, read_raw, stream, stream_file, write_outputs

from .conftest import ROOT, free_port, launch, ort_reference, test_mask, write_baked_set, write_volume_file

INSIDE = slice(1, 23)  # the phase columns the test header's encoding limits allow


def start_mrd_server(baked_dir, log_dir, *extra: str):
    """A server with an MRD port; started again on other ports if one was taken meanwhile."""
    for attempt in range(3):
        port = free_port()
        try:
            s = launch(["--model-dir", str(baked_dir), "--drain-seconds", "2", "--warmup-shapes", "3x32x24",
                        "--mrd-port", str(port), *extra], {}, log_dir / f"server{attempt}.log", attempts=1)
        except RuntimeError:
            if attempt == 2:
                raise
            continue
        s.mrd_target = f"127.0.0.1:{port}"
        return s
    raise AssertionError("unreachable")


@pytest.fixture(scope="module")
def mrd_server(baked_dir, tmp_path_factory):
    s = start_mrd_server(baked_dir, tmp_path_factory.mktemp("mrdsrv"))
    try:
        yield s
    finally:
        s.stop()


def undersampled_mask() -> np.ndarray:
    m = test_mask()
    out = np.zeros_like(m)
    out[INSIDE] = m[INSIDE]
    return out


@pytest.fixture(scope="module")
def raw_file(tmp_path_factory):
    """(ISMRMRD raw file of 3 undersampled slices, the fastMRI k-space it came from, the mask)."""
    d = tmp_path_factory.mktemp("mrdvol")
    path, k = write_volume_file(d / "vol.h5", 3, seed=4)
    mask = undersampled_mask()
    calib = np.zeros_like(mask)
    calib[10:14] = 1
    raw = fastmri_to_ismrmrd(path, d / "vol.mrd.h5", mask=mask, calibration=calib)
    return raw, k, mask


def test_mrd_images_equal_the_grpc_path_with_the_input_geometry(mrd_server, raw_file):
    raw, k, mask = raw_file
    result = stream_file(mrd_server.mrd_target, raw, timeout=60)
    assert result.errors == [] and result.closed
    assert [im.head.slice for im in result.images] == [0, 1, 2]
    with ReconClient(mrd_server.target) as client:
        grpc_images = {r.slice_index: wire.image_from_result(r)
                       for r in client.stream(((i, k[i], mask) for i in range(3)), (16, 16), timeout=60)}
    top = max(float(np.abs(g).max()) for g in grpc_images.values())
    for im in result.images:
        assert im.image.shape == (16, 16)
        np.testing.assert_allclose(im.image, grpc_images[im.head.slice], atol=1e-5 * top, rtol=0)
    xml, records = read_raw(raw)
    for im in result.images:
        acq = records["head"][records["head"]["idx"]["slice"] == im.head.slice][0]
        for name in ("position", "read_dir", "phase_dir", "slice_dir", "patient_table_position"):
            np.testing.assert_array_equal(np.array(getattr(im.head, name)[:]), acq[name], err_msg=name)
        assert tuple(im.head.position) == pytest.approx(slice_geometry(im.head.slice, 3, 1.0).position)
    assert [im.head.image_index for im in result.images] == [1, 2, 3]


def test_a_model_with_a_set_of_cascades_per_acceleration_serves_mrd_slices_by_their_mask(
        onnx_models, raw_file, tmp_path):
    """Two sets whose graphs differ: each MRD slice runs the set its received lines route it to, as the
    gRPC path does on the same server."""
    sets = {4.0: {0.0: onnx_models[0.0], 1.0: onnx_models[1.0]}, 8.0: {0.0: onnx_models[1.0], 1.0: onnx_models[0.0]}}
    two = write_baked_set(tmp_path / "two-sets", {}, sets=sets)
    (tmp_path / "log").mkdir()
    s = start_mrd_server(two, tmp_path / "log")
    try:
        raw, k, mask = raw_file
        result = stream_file(s.mrd_target, raw, params={"alpha": 0.0}, timeout=60)
        assert result.errors == [] and len(result.images) == 3
        with ReconClient(s.target) as client:
            grpc_images = {r.slice_index: wire.image_from_result(r) for r in
                           client.stream(((i, k[i], mask) for i in range(3)), (16, 16), alpha=0.0, timeout=60)}
    finally:
        s.stop()
    top = max(float(np.abs(g).max()) for g in grpc_images.values())
    for im in result.images:
        np.testing.assert_allclose(im.image, grpc_images[im.head.slice], atol=1e-5 * top, rtol=0)


def test_images_carry_model_version_alpha_residual_and_processing_history(mrd_server, raw_file, baked_dir):
    raw, k, mask = raw_file
    result = stream_file(mrd_server.mrd_target, raw, timeout=60)
    _ref, ref_dc = ort_reference(baked_dir / "alpha_0.00.onnx", k, mask)
    for im in result.images:
        meta = im.meta
        assert meta["DnireconModel"] == baked_dir.name  # a --model-dir set without a name in its manifest
        assert meta["DnireconModelVersion"] == "local"
        assert float(meta["DnireconAlpha"]) == 0.0
        assert float(meta["DnireconDcResidual"]) == pytest.approx(float(ref_dc[im.head.slice]), abs=1e-6)
        assert meta["DataRole"] == "Image" and "DNIRECON" in meta["ImageProcessingHistory"]
        assert "research use only" in meta["ImageComments"]
        assert im.head.image_type == 1 and im.head.data_type == 5  # magnitude, float32


def test_config_text_parameters_select_the_alpha(mrd_server, raw_file, baked_dir):
    raw, k, mask = raw_file
    ref, _ = ort_reference(baked_dir / "alpha_1.00.onnx", k, mask)
    result = stream_file(mrd_server.mrd_target, raw, params={"alpha": 1.0}, timeout=60)
    assert result.errors == [] and len(result.images) == 3
    for im in result.images:
        assert float(im.meta["DnireconAlpha"]) == 1.0
        np.testing.assert_allclose(im.image, center_crop(ref[im.head.slice], (16, 16)), atol=1e-5 * ref.max(), rtol=0)


def test_uint16_images_carry_their_scale_in_the_meta(mrd_server, raw_file, baked_dir):
    raw, k, mask = raw_file
    ref, _ = ort_reference(baked_dir / "alpha_0.00.onnx", k, mask)
    result = stream_file(mrd_server.mrd_target, raw, params={"datatype": "uint16"}, timeout=60)
    assert result.errors == [] and len(result.images) == 3
    for im in result.images:
        assert im.head.data_type == 1 and im.pixels.dtype == np.uint16 and im.pixels.max() == 4095
        expected = center_crop(ref[im.head.slice], (16, 16))
        np.testing.assert_allclose(im.image, expected, atol=expected.max() / 4095, rtol=0)


def test_slices_close_on_a_change_of_counters_without_last_in_slice(mrd_server, raw_file):
    raw, _k, _mask = raw_file
    xml, records = read_raw(raw)
    records["head"]["flags"] &= ~np.uint64(flag("last_in_slice"))
    result = stream(mrd_server.mrd_target, xml, (acquisition_bytes(r) for r in records), timeout=60)
    assert result.errors == [] and [im.head.slice for im in result.images] == [0, 1, 2]


def test_unknown_config_name_gets_err_naming_the_known_ones(mrd_server, raw_file):
    raw, _k, _mask = raw_file
    result = stream_file(mrd_server.mrd_target, raw, config="gadgetron_default", timeout=60)
    assert result.images == [] and result.closed
    assert len(result.errors) == 1
    assert result.errors[0].startswith("ERR unknown config 'gadgetron_default'; known: ") and "dnirecon" in result.errors[0]


def test_client_command_writes_ismrmrd_images_and_pngs(mrd_server, raw_file, tmp_path):
    raw, _k, _mask = raw_file
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-c", "import sys; sys.modules['torch'] = None; from commands.cli import main; "
                           "sys.exit(main(sys.argv[1:]))", "client", "mrd", str(raw), "--server", mrd_server.mrd_target,
                           "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    import ismrmrd

    with ismrmrd.Dataset(str(out / "vol.mrd.mrd.h5"), "dataset", create_if_needed=False) as dset:
        assert dset.number_of_images("image_1") == 3
        assert dset.read_image("image_1", 2).data.shape == (1, 1, 16, 16)
    assert len(list((out / "vol.mrd").glob("*.png"))) == 3


def test_written_images_read_back_equal(mrd_server, raw_file, tmp_path):
    import ismrmrd

    raw, _k, _mask = raw_file
    result = stream_file(mrd_server.mrd_target, raw, timeout=60)
    h5, pngs = write_outputs(result, raw, tmp_path)
    with ismrmrd.Dataset(str(h5), "dataset", create_if_needed=False) as dset:
        for i, im in enumerate(result.images):
            back = dset.read_image("image_1", i)
            np.testing.assert_array_equal(back.data, im.pixels)
            assert tuple(back.position) == tuple(im.head.position)
    assert len(pngs) == 3


@pytest.mark.skipif(shutil.which("ismrmrd_generate_cartesian_shepp_logan") is None,
                    reason="ismrmrd-tools (ismrmrd_generate_cartesian_shepp_logan) is not installed")
def test_ismrmrd_tools_acquisition_with_lines_dropped_comes_back_as_images(mrd_server, tmp_path):
    sl = tmp_path / "sl.h5"
    subprocess.run(["ismrmrd_generate_cartesian_shepp_logan", "-o", str(sl), "-m", "32", "-c", "3", "-r", "2"],
                   check=True, capture_output=True, cwd=tmp_path)
    xml, records = read_raw(sl)
    step = records["head"]["idx"]["kspace_encode_step_1"]
    keep = (step % 3 == 0) | ((step >= 12) & (step < 20))  # 3x with a fully sampled centre
    result = stream(mrd_server.mrd_target, xml, (acquisition_bytes(r) for r in records[keep]), timeout=60)
    assert result.errors == [] and result.closed
    assert len(result.images) == 2  # two repetitions: the counters close each slice
    assert all(im.image.shape == (32, 32) and np.isfinite(im.image).all() and im.image.max() > 0 for im in result.images)
