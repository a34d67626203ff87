"""The image check's comparison of served images with onnxruntime in process (deploy/images/imagecheck.py)."""

from __future__ import annotations

import importlib.util

import h5py
import numpy as np
import pytest

from deploy_helpers import DEPLOY

spec = importlib.util.spec_from_file_location("imagecheck", DEPLOY / "images" / "imagecheck.py")
imagecheck = importlib.util.module_from_spec(spec)
spec.loader.exec_module(imagecheck)


def energy_model(path, gain: float):
    """An ONNX model of the artefact's interface: image = gain * sum over coils of |k|^2 (B, H, W)."""
    from onnx import TensorProto, helper, save

    graph = helper.make_graph(
        [helper.make_node("Mul", ["kspace", "kspace"], ["sq"]),
         helper.make_node("ReduceSum", ["sq", "axes"], ["energy"], keepdims=0),
         helper.make_node("Mul", ["energy", "gain"], ["image"])],
        "energy",
        [helper.make_tensor_value_info("kspace", TensorProto.FLOAT, ["B", "C", "H", "W", 2]),
         helper.make_tensor_value_info("mask", TensorProto.FLOAT, ["B", "W"])],
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["B", "H", "W"])],
        [helper.make_tensor("axes", TensorProto.INT64, [2], [1, 4]), helper.make_tensor("gain", TensorProto.FLOAT, [], [gain])],
    )
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9), str(path))
    return path


@pytest.fixture(scope="module")
def volume(tmp_path_factory):
    from training.synth import SynthConfig, synthesize

    (path,) = synthesize(tmp_path_factory.mktemp("vol"), SynthConfig(volumes_per_contrast=1, slices=2, coils=2,
                                                                      recon_size=(16, 16), contrasts=("pd",)))
    return path


def served(tmp_path, images):
    path = tmp_path / "served.recon.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("reconstruction", data=images)
    return path


def test_identical_images_differ_by_zero_and_a_control_model_is_told_apart(volume, tmp_path):
    one, two = energy_model(tmp_path / "one.onnx", 1.0), energy_model(tmp_path / "two.onnx", 2.0)
    reference = imagecheck.in_process(volume, one, accel=4)
    assert reference.shape == (2, 16, 16) and reference.max() > 0
    r = imagecheck.compare(volume, served(tmp_path, reference), one, 4, control=two)
    assert r["diff"] == 0.0 and r["max"] == pytest.approx(float(reference.max()))
    assert r["control"] == pytest.approx(r["max"], rel=1e-6)  # gain 2 - gain 1 = the image itself


def test_a_served_image_off_by_a_little_is_measured(volume, tmp_path):
    one = energy_model(tmp_path / "one.onnx", 1.0)
    reference = imagecheck.in_process(volume, one, accel=4)
    shifted = reference.copy()
    shifted[1, 3, 4] += 1e-3 * reference.max()
    r = imagecheck.compare(volume, served(tmp_path, shifted), one, 4)
    assert r["diff"] / r["max"] == pytest.approx(1e-3, rel=1e-3)
    assert imagecheck.main(["compare", "--volume", str(volume), "--recon", str(served(tmp_path, shifted)),
                            "--onnx", str(one)]) == 1


def test_a_served_volume_of_another_shape_is_named(volume, tmp_path):
    one = energy_model(tmp_path / "one.onnx", 1.0)
    recon = served(tmp_path, np.zeros((1, 16, 16), np.float32))
    with pytest.raises(SystemExit, match=r"served\.recon\.h5 'reconstruction' has shape \(1, 16, 16\), expected \(2, 16, 16\)"):
        imagecheck.compare(volume, recon, one, 4)
