"""The baked graph's PReLUs as operators onnxruntime's CPU provider keeps in its NCHWc layout."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from registry import export
from registry.export import export_reconstruction, prelu_as_nchwc_ops, relative_max_error, run_onnx, run_torch
from training.models.sn import SensitivityNetwork
from training.presets import SNConfig


def _conv_prelu(slopes: np.ndarray) -> onnx.ModelProto:
    """x (1, 3, 9, 7) -> Conv 3x3 to len(slopes) channels -> PRelu(Reshape(slopes, (C, 1, 1)))."""
    rng = np.random.default_rng(0)
    c = len(slopes)
    inits = [numpy_helper.from_array(rng.standard_normal((c, 3, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.standard_normal(c).astype(np.float32), "b"),
             numpy_helper.from_array(slopes.astype(np.float32), "slope"),
             numpy_helper.from_array(np.array([c, 1, 1], np.int64), "slope_shape")]
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["y"], pads=[1, 1, 1, 1]),
             helper.make_node("Reshape", ["slope", "slope_shape"], ["slope3"]),
             helper.make_node("PRelu", ["y", "slope3"], ["out"])]
    graph = helper.make_graph(nodes, "conv_prelu", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 9, 7])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, c, 9, 7])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


@pytest.mark.parametrize("slopes", [np.array([-0.3, 0.0, 0.25, 1.0]), np.array([0.2, 1.5, -2.0, 0.9])],
                         ids=["all-at-most-one", "some-above-one"])
def test_the_rewrite_computes_prelu_for_any_per_channel_slopes(slopes):
    x = np.random.default_rng(1).standard_normal((1, 3, 9, 7)).astype(np.float32)
    model = _conv_prelu(slopes)
    want = _run(model, x)
    assert prelu_as_nchwc_ops(model) == 1
    onnx.checker.check_model(model)
    assert "PRelu" not in {n.op_type for n in model.graph.node}
    got = _run(model, x)
    assert np.abs(got - want).max() <= 1e-6 * np.abs(want).max()
    assert (want < 0).any() and (want > 0).any()  # both branches of PReLU were exercised


def test_a_slope_computed_in_the_graph_is_left_alone():
    model = _conv_prelu(np.array([0.1, 0.2]))
    # the slope now comes from an input-dependent node, as in the continuous (alpha) model
    model.graph.node[1].op_type = "Neg"
    del model.graph.node[1].input[1:]
    assert prelu_as_nchwc_ops(model) == 0
    assert "PRelu" in {n.op_type for n in model.graph.node}


def _optimised_ops(path, tmp_path) -> list[str]:
    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(tmp_path / "optimised.onnx")
    ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return [n.op_type for n in onnx.load(opts.optimized_model_filepath).graph.node]


def test_a_baked_sn_graph_has_no_prelu_matches_torch_and_needs_fewer_layout_reorders(tmp_path, monkeypatch):
    torch.manual_seed(0)
    model = SensitivityNetwork(SNConfig(cascades=2, width=8, blocks=1)).eval()
    with torch.no_grad():  # slopes on both sides of 1, as trained ones may be
        for i, p in enumerate(m.weight for m in model.modules() if isinstance(m, torch.nn.PReLU)):
            p.copy_(torch.linspace(-0.5, 1.5 if i % 2 else 0.9, p.numel()))
    baked = export_reconstruction(model, tmp_path / "baked.onnx")
    ops = [n.op_type for n in onnx.load(str(baked)).graph.node]
    assert "PRelu" not in ops and ops.count("BatchNormalization") > 0

    rng = np.random.default_rng(2)
    kspace = (rng.standard_normal((4, 32, 24)) + 1j * rng.standard_normal((4, 32, 24))).astype(np.complex64)
    mask = np.zeros(24, np.float32)
    mask[::3] = 1
    mask[10:14] = 1
    sess = ort.InferenceSession(str(baked), providers=["CPUExecutionProvider"])
    assert relative_max_error(run_torch(model, kspace, mask)[0], run_onnx(sess, kspace, mask)[0]) <= 1e-5

    monkeypatch.setattr(export, "prelu_as_nchwc_ops", lambda graph: 0)
    plain = export_reconstruction(model, tmp_path / "plain.onnx")
    before = _optimised_ops(plain, tmp_path)
    if "ReorderInput" not in before:
        pytest.skip("onnxruntime uses no NCHWc layout on this CPU")
    after = _optimised_ops(baked, tmp_path)
    reorders = lambda ops: sum(op in ("ReorderInput", "ReorderOutput") for op in ops)  # noqa: E731
    assert reorders(after) < reorders(before) / 2
    assert "PRelu" in before and "PRelu" not in after
