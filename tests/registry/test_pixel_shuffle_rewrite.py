"""The exported graph's pixel shuffles (DepthToSpace) as grouped ConvTransposes with one-hot weights."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from registry.export import depth_to_space_as_conv_transpose


def _conv_shuffle(channels: int, block: int, mode: str) -> onnx.ModelProto:
    """x (1, 3, 5, 7) -> 1x1 Conv to channels * block^2 -> DepthToSpace(block, mode)."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((channels * block * block, 3, 1, 1)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.standard_normal(channels * block * block).astype(np.float32), "b")]
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["y"]),
             helper.make_node("DepthToSpace", ["y"], ["out"], blocksize=block, mode=mode)]
    graph = helper.make_graph(nodes, "conv_shuffle", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 5, 7])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, channels, 5 * block, 7 * block])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


@pytest.mark.parametrize("channels, block", [(4, 2), (3, 3), (1, 2)])
def test_a_crd_pixel_shuffle_becomes_a_grouped_conv_transpose_with_the_same_output_bit_for_bit(channels, block):
    x = np.random.default_rng(1).standard_normal((1, 3, 5, 7)).astype(np.float32)
    model = _conv_shuffle(channels, block, "CRD")
    want = _run(model, x)
    assert depth_to_space_as_conv_transpose(model) == 1
    onnx.checker.check_model(model)
    ops = [n.op_type for n in model.graph.node]
    assert "DepthToSpace" not in ops and "ConvTranspose" in ops
    got = _run(model, x)
    assert got.shape == (1, channels, 5 * block, 7 * block)
    assert np.array_equal(got, want)


def test_a_dcr_pixel_shuffle_is_left_alone():
    # DCR interleaves the output channels across the blocks: not a grouped convolution
    model = _conv_shuffle(4, 2, "DCR")
    assert depth_to_space_as_conv_transpose(model) == 0
    assert "DepthToSpace" in {n.op_type for n in model.graph.node}
