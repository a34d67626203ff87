"""ONNX export of the whole reconstruction (contract 2): k-space and mask in, magnitude image out.

The exported graph is the SN with MATMUL_FFT swapped in (same weights) behind a boundary that turns
the real-view k-space into complex and returns |x| and the data-consistency residual
||M F S x - y|| / ||y||. The continuous variant holds both weight sets and interpolates every float
parameter inside the graph from an `alpha` input.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from dnirecon.errors import ModelError
from training.physics.fft import MATMUL_FFT, TORCH_FFT, FourierPair, onnx_translation_table

log = logging.getLogger(__name__)

OPSET = 18
INPUT_NAMES = ["kspace", "mask"]
OUTPUT_NAMES = ["image", "dc_residual"]
# Example shapes for tracing: all different and > 1, so no dynamic dim gets specialised or unified.
EXAMPLE_SHAPE = (2, 3, 20, 18)


class ReconstructionBoundary(nn.Module):
    """The ONNX boundary: kspace (B,C,H,W,2) float32, mask (B,W) float32 -> image (B,H,W), dc_residual (B,)."""

    def __init__(self, sn: nn.Module, fourier: FourierPair):
        super().__init__()
        self.sn = sn
        self.fourier = fourier

    def forward(self, kspace: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        y = torch.view_as_complex(kspace.contiguous())  # in the graph: no split into re and im and stack back
        # On the model's grid (readout oversampling removed when the config says so): the residual is
        # that of the data the model was consistent with; the image goes back on the input's rows.
        x, residual = self.sn.reconstruct_with_residual(y, mask)
        return self.sn.pad_readout(x.abs(), kspace.shape[-3]), residual


def with_fourier(model: nn.Module, fourier: FourierPair, config=None) -> nn.Module:
    """A copy of the SN built with another FFT implementation and the same weights, in eval mode."""
    config = config if config is not None else getattr(model, "config", None)
    if config is None:
        raise ModelError(f"{type(model).__name__} has no .config; pass config= to rebuild it with another FFT")
    twin = type(model)(config, fourier=fourier)
    twin.load_state_dict(model.state_dict(), strict=True)
    return twin.eval()


def _example_inputs(dtype=torch.float32) -> tuple[Tensor, Tensor]:
    b, c, h, w = EXAMPLE_SHAPE
    g = torch.Generator().manual_seed(0)
    mask = torch.zeros(b, w)
    mask[:, w // 2 - 2: w // 2 + 2] = 1.0  # a contiguous centre (ACS) run
    mask[:, ::3] = 1.0
    k = torch.randn(b, c, h, w, 2, generator=g, dtype=dtype) * mask[:, None, None, :, None]
    return k, mask


def _dynamic_shapes():
    from torch.export import Dim

    # Dim.DYNAMIC hints, not named Dims: the ACS-run slicing makes the named-Dim constraint solver
    # fail (torch 2.13) while the hints export with all four sizes symbolic (mask W tied to kspace W).
    d = Dim.DYNAMIC
    return {"kspace": {0: d, 1: d, 2: d, 3: d}, "mask": {0: d, 1: d}}


def check_onnx_file(path: Path | str) -> None:
    """The contract checks: ONNX checker passes, no DFT node anywhere, no external-data tensors."""
    import onnx

    path = Path(path)
    model = onnx.load(str(path), load_external_data=False)
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        raise ModelError(f"{path}: ONNX checker failed: {exc}") from None
    graphs = [model.graph] + [f for f in model.functions]
    while graphs:
        g = graphs.pop()
        for node in g.node:
            if node.op_type == "DFT":
                raise ModelError(f"{path}: graph has a DFT node ({node.name!r}); onnxruntime's CUDA provider "
                                 "has no DFT kernel: export with MATMUL_FFT")
            for attr in node.attribute:
                if attr.g is not None and attr.g.node:
                    graphs.append(attr.g)
                graphs.extend(attr.graphs)
    for init in model.graph.initializer:
        if init.data_location == onnx.TensorProto.EXTERNAL:
            raise ModelError(f"{path}: initializer {init.name!r} is stored as external data; "
                             "the artefact must be one self-contained file")


# Exported graphs by architecture: the graph of an SN depends only on its config, its weights are
# initializers named after the module's parameters (optimize=False keeps them unfolded), so a second
# alpha of the same architecture swaps initializers instead of re-tracing (~30 s CPU per trace).
_GRAPH_CACHE: dict[tuple, bytes] = {}


def _graph_key(module: nn.Module, config, opset: int) -> tuple:
    return (type(module).__qualname__, type(module.sn).__qualname__, repr(config), opset, torch.__version__)


def _weights_by_initializer(module: nn.Module) -> dict[str, np.ndarray]:
    """The module's float state as ONNX initializer names (the exporter uses state_dict names)."""
    return {k: v.detach().cpu().numpy() for k, v in module.state_dict().items() if v.is_floating_point()}


def _name_dynamic_axes(model) -> None:
    """Rename the exporter's symbolic sizes (s31, s87, ...) to B, C, H, W everywhere in the graph."""
    kspace = next(i for i in model.graph.input if i.name == "kspace")
    mapping = {d.dim_param: n for d, n in zip(kspace.type.tensor_type.shape.dim, "BCHW") if d.dim_param}
    for vi in [*model.graph.input, *model.graph.output, *model.graph.value_info]:
        for d in vi.type.tensor_type.shape.dim:
            if d.dim_param in mapping:
                d.dim_param = mapping[d.dim_param]


def _trace(module: nn.Module, args: tuple, tmp: Path, opset: int):
    import onnx

    input_names = INPUT_NAMES
    with torch.no_grad():
        torch.onnx.export(
            module, args, str(tmp), dynamo=True, external_data=False, opset_version=opset,
            input_names=input_names, output_names=OUTPUT_NAMES,
            dynamic_shapes=_dynamic_shapes(), verbose=False, optimize=False,
            custom_translation_table=onnx_translation_table(),
        )
    if Path(str(tmp) + ".data").exists():
        raise ModelError(f"{tmp}: the exporter wrote an external-data sidecar despite external_data=False")
    model = onnx.load(str(tmp))
    _name_dynamic_axes(model)
    return model


def _swap_weights(model, weights: Mapping[str, np.ndarray]) -> bool:
    """Set the initializers named in `weights`; False if one is missing or has another shape/dtype."""
    from onnx import numpy_helper

    by_name = {init.name: init for init in model.graph.initializer}
    for name, value in weights.items():
        init = by_name.get(name)
        if init is None or tuple(init.dims) != value.shape or \
                numpy_helper.to_array(init).dtype != value.dtype:
            return False
        init.CopyFrom(numpy_helper.from_array(np.array(value, order="C"), name))  # keeps 0-d shapes
    return True


def _graph_with_weights(module: nn.Module, args: tuple, tmp: Path, opset: int, config):
    """The exported graph of `module` carrying its current weights (traced, or a cached trace)."""
    import onnx

    key = _graph_key(module, config, opset)
    weights = _weights_by_initializer(module)
    if key in _GRAPH_CACHE:
        model = onnx.load_from_string(_GRAPH_CACHE[key])
        if _swap_weights(model, weights):
            return model
    model = _trace(module, args, tmp, opset)
    if _swap_weights(model, weights):  # every float weight is a named initializer: reusable
        _GRAPH_CACHE[key] = model.SerializeToString()
    return model


def _constant_of(name: str, inits: dict, producers: dict) -> np.ndarray | None:
    """The value of `name` if it is an initializer or a Constant node, possibly through Reshape,
    Unsqueeze and Identity nodes with constant operands (the exporter writes a PReLU slope as
    Reshape(weight, shape)); None if it depends on a graph input."""
    from onnx import numpy_helper

    if name in inits:
        return numpy_helper.to_array(inits[name])
    node = producers.get(name)
    if node is None:
        return None
    if node.op_type == "Constant":
        value = next((a for a in node.attribute if a.name == "value"), None)
        return None if value is None else numpy_helper.to_array(value.t)
    args = [_constant_of(i, inits, producers) for i in node.input]
    if any(a is None for a in args):
        return None
    if node.op_type == "Identity":
        return args[0]
    if node.op_type == "Reshape":
        shape = [d if d != 0 else args[0].shape[i] for i, d in enumerate(args[1].tolist())]
        return args[0].reshape(shape)
    if node.op_type == "Unsqueeze" and len(args) == 2:
        return np.expand_dims(args[0], tuple(int(a) for a in args[1]))
    return None


def prelu_as_nchwc_ops(model) -> int:
    """Rewrite each PRelu with a constant per-channel slope a into operators onnxruntime's CPU provider
    keeps in its blocked NCHWc layout; returns how many were rewritten.

    onnxruntime runs PRelu on one thread and outside NCHWc, so each one costs a reorder out of the layout
    and one back in around it. A per-channel scale is a BatchNormalization (mean 0, variance 1), which
    onnxruntime turns into an NCHWc depthwise convolution and fuses with a following Relu:
      all a <= 1:  y + Relu((a - 1) y)                (y < 0: y + (a - 1) y = a y; y >= 0: y)
      otherwise:   a y + (1 - a) Relu(y)
    Exact algebra; the float rounding differs from PRelu by ~1e-7 of the image (the bake's parity
    gate checks the result). Slopes computed in the graph (the continuous model's) are left alone.
    """
    from onnx import helper, numpy_helper

    g = model.graph
    inits = {i.name: i for i in g.initializer}
    producers = {o: n for n in g.node for o in n.output}
    eps = 1e-5  # cuDNN's smallest BatchNormalization epsilon; variance 1 - eps makes the divisor 1.0 in float32
    nodes, done = [], 0
    for node in g.node:
        slope = _constant_of(node.input[1], inits, producers) if node.op_type == "PRelu" else None
        per_channel = slope is not None and slope.ndim in (3, 4) and slope.shape[-2:] == (1, 1) and \
            slope.size == slope.shape[-3] >= 2  # (C, 1, 1) or (1, C, 1, 1): one slope per channel
        if not per_channel:
            nodes.append(node)
            continue
        a = slope.reshape(-1).astype(np.float32)
        y, out, pre = node.input[0], node.output[0], f"dni_prelu{done}_"

        def const(tag: str, value) -> str:
            g.initializer.append(numpy_helper.from_array(np.asarray(value, np.float32), pre + tag))
            return pre + tag

        zero, var = const("mean", np.zeros_like(a)), const("var", np.full_like(a, 1.0 - eps))

        def scale(x: str, s: np.ndarray, tag: str) -> str:
            nodes.append(helper.make_node("BatchNormalization", [x, const(tag, s), zero, zero, var], [pre + tag + "_out"],
                                          epsilon=eps, name=pre + tag))
            return pre + tag + "_out"

        if np.all(a <= 1.0):
            neg = scale(y, a - 1.0, "slope_minus_one")
            nodes.append(helper.make_node("Relu", [neg], [pre + "relu"], name=pre + "relu"))
            nodes.append(helper.make_node("Add", [y, pre + "relu"], [out], name=pre + "add"))
        else:
            nodes.append(helper.make_node("Relu", [y], [pre + "relu"], name=pre + "relu"))
            pos = scale(pre + "relu", 1.0 - a, "one_minus_slope")
            lin = scale(y, a, "slope")
            nodes.append(helper.make_node("Add", [lin, pos], [out], name=pre + "add"))
        done += 1
    del g.node[:]
    g.node.extend(nodes)
    return done


def depth_to_space_as_conv_transpose(model) -> int:
    """Rewrite each DepthToSpace (mode CRD, what torch's PixelShuffle exports) whose input comes from a
    Conv with a constant weight into a grouped ConvTranspose with one-hot weights; returns how many.

    With blocksize b and C output channels, out[c, b y + i, b x + j] = in[c b^2 + i b + j, y, x]: a
    ConvTranspose of stride b, a b x b kernel and C groups of b^2 input channels, weight 1 at tap (i, j)
    of input channel c b^2 + i b + j and 0 elsewhere. Exact (each output is one input times 1);
    onnxruntime runs it as a multi-threaded product where its DepthToSpace moves the data on one thread.
    The channel count is read from the producing Conv's weight (shapes are symbolic in the graph).
    """
    from onnx import helper, numpy_helper

    g = model.graph
    inits = {i.name: i for i in g.initializer}
    producers = {o: n for n in g.node for o in n.output}
    nodes, done = [], 0
    for node in g.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute} if node.op_type == "DepthToSpace" else {}
        source = producers.get(node.input[0]) if attrs.get("mode", b"DCR") == b"CRD" else None
        weight = _constant_of(source.input[1], inits, producers) if source is not None and source.op_type == "Conv" else None
        if weight is None:
            nodes.append(node)
            continue
        b = int(attrs["blocksize"])
        channels = weight.shape[0] // (b * b)
        one_hot = np.zeros((channels * b * b, 1, b, b), np.float32)
        for i in range(b):
            for j in range(b):
                one_hot[i * b + j:: b * b, 0, i, j] = 1.0
        name = f"dni_pixel_shuffle{done}_weight"
        g.initializer.append(numpy_helper.from_array(one_hot, name))
        nodes.append(helper.make_node("ConvTranspose", [node.input[0], name], list(node.output), name=f"dni_pixel_shuffle{done}",
                                      group=channels, kernel_shape=[b, b], strides=[b, b]))
        done += 1
    del g.node[:]
    g.node.extend(nodes)
    return done


def make_continuous(model, sn_weights: Mapping[str, np.ndarray], gan_weights: Mapping[str, np.ndarray]):
    """Turn a baked graph into the continuous one: each float weight initializer W becomes
    W = (1 - alpha) * W_SN + alpha * W_SN-GAN computed in the graph from a new input `alpha` (1,).

    Graph surgery instead of a second trace: same graph, so the continuous model is the baked one
    at every alpha by construction (and the bake checks it numerically).
    """
    from onnx import TensorProto, helper, numpy_helper

    g = model.graph
    present = {init.name for init in g.initializer}
    missing = [k for k in sn_weights if k not in present]
    if missing:
        raise ModelError(f"continuous export: weight {missing[0]!r} is not an initializer of the exported graph")
    g.input.append(helper.make_tensor_value_info("alpha", TensorProto.FLOAT, [1]))
    nodes = [
        helper.make_node("Constant", [], ["dni_alpha_shape"], value=numpy_helper.from_array(np.zeros(0, np.int64))),
        helper.make_node("Reshape", ["alpha", "dni_alpha_shape"], ["dni_alpha"]),  # (1,) -> scalar
        helper.make_node("Constant", [], ["dni_one"], value=numpy_helper.from_array(np.array(1.0, np.float32))),
        helper.make_node("Sub", ["dni_one", "dni_alpha"], ["dni_one_minus_alpha"]),
    ]
    new_inits = []
    for i, (name, a) in enumerate(sn_weights.items()):
        b = gan_weights[name]
        sa, sb = f"{name}__theta_sn", f"{name}__theta_sn_gan"
        new_inits += [numpy_helper.from_array(np.array(a, order="C"), sa),
                      numpy_helper.from_array(np.array(b, order="C"), sb)]
        w0, w1 = f"dni_w0_{i}", f"dni_w1_{i}"
        nodes += [
            helper.make_node("CastLike", ["dni_one_minus_alpha", sa], [w0]),
            helper.make_node("CastLike", ["dni_alpha", sa], [w1]),
            helper.make_node("Mul", [w0, sa], [f"dni_a_{i}"]),
            helper.make_node("Mul", [w1, sb], [f"dni_b_{i}"]),
            helper.make_node("Add", [f"dni_a_{i}", f"dni_b_{i}"], [name]),
        ]
    keep = [init for init in g.initializer if init.name not in sn_weights]
    del g.initializer[:]
    g.initializer.extend(keep + new_inits)
    rest = list(g.node)
    del g.node[:]
    g.node.extend(nodes + rest)  # the weights are computed before any node that reads them
    return model


def export_reconstruction(model: nn.Module, path: Path | str, alpha_input: bool = False, *,
                          gan_state: Mapping[str, Tensor] | None = None, config=None,
                          opset: int = OPSET) -> Path:
    """Export `model` (a one-set SN: `SensitivityNetwork.cascade_set(i)` of one with accel_branches)
    as the whole reconstruction to one self-contained ONNX file at `path`.

    alpha_input=True exports the continuous model: `model`'s weights are theta_SN and `gan_state`
    the SN-GAN state_dict; the graph gets a third input `alpha` (float32 (1,)).
    The result is checked (ONNX checker, no DFT node, no external data) before it replaces `path`.
    """
    import onnx

    config = config if config is not None else getattr(model, "config", None)
    if getattr(config, "accel_branches", ()):
        raise ModelError(f"{path}: the SN has a set of cascades per acceleration {list(config.accel_branches)}; "
                         "export each set on its own (SensitivityNetwork.cascade_set(i)): a slice runs one set")
    net = with_fourier(model, MATMUL_FFT, config)
    boundary = ReconstructionBoundary(net, MATMUL_FFT).eval()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        graph = _graph_with_weights(boundary, _example_inputs(), tmp, opset, config)
        depth_to_space_as_conv_transpose(graph)
        if alpha_input:
            if gan_state is None:
                raise ModelError("the continuous export needs gan_state (the SN-GAN state_dict)")
            from registry.interpolate import check_same_structure

            check_same_structure([net.state_dict(), gan_state], ["sn", "sn-gan"])
            sn_w = _weights_by_initializer(boundary)
            gan_w = {f"sn.{k}": v.detach().cpu().numpy() for k, v in gan_state.items() if v.is_floating_point()}
            graph = make_continuous(graph, sn_w, gan_w)
        else:
            prelu_as_nchwc_ops(graph)
        onnx.save(graph, str(tmp))
        check_onnx_file(tmp)
        os.replace(tmp, path)  # atomic: a reader never sees a half-written model
    finally:
        for leftover in (tmp, Path(str(tmp) + ".data")):
            if leftover.exists():
                leftover.unlink()
    return path


# ---------------------------------------------------------------- running and parity
def to_real_view(kspace) -> np.ndarray:
    """complex (…, C, H, W) -> float32 (…, C, H, W, 2)."""
    k = np.asarray(kspace)
    return np.stack([k.real, k.imag], axis=-1).astype(np.float32)


def ort_session(path: Path | str, threads: int | None = None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def run_onnx(session, kspace, mask, alpha: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One slice or a batch: kspace complex (C,H,W) or (B,C,H,W), mask (W,) or (B,W)."""
    k = np.asarray(kspace)
    m = np.asarray(mask, dtype=np.float32)
    single = k.ndim == 3
    if single:
        k, m = k[None], m[None]
    feed = {"kspace": to_real_view(k), "mask": m}
    if alpha is not None:
        feed["alpha"] = np.asarray([alpha], dtype=np.float32)
    image, residual = session.run(OUTPUT_NAMES, feed)
    return (image[0], residual[0]) if single else (image, residual)


def run_torch(model: nn.Module, kspace, mask, fourier: FourierPair = TORCH_FFT) -> tuple[np.ndarray, np.ndarray]:
    """The torch reference through the same boundary (TORCH_FFT by default)."""
    k = torch.as_tensor(np.asarray(kspace))
    m = torch.as_tensor(np.asarray(mask, dtype=np.float32))
    single = k.ndim == 3
    if single:
        k, m = k[None], m[None]
    kr = torch.stack([k.real, k.imag], dim=-1).to(torch.float32)
    with torch.no_grad():
        image, residual = ReconstructionBoundary(model.eval(), fourier)(kr, m)
    image, residual = image.numpy(), residual.numpy()
    return (image[0], residual[0]) if single else (image, residual)


def relative_max_error(reference: np.ndarray, other: np.ndarray) -> float:
    """max|other - reference| / max|reference|; infinite when either holds a non-finite value (a NaN
    output must fail parity, never compare as 0)."""
    reference, other = np.asarray(reference), np.asarray(other)
    if not (np.all(np.isfinite(reference)) and np.all(np.isfinite(other))):
        return float("inf")
    scale = float(np.max(np.abs(reference)))
    return float(np.max(np.abs(other - reference))) / (scale if scale > 0 else 1.0)


def check_parity(model: nn.Module, onnx_path: Path | str, slices: Iterable[Sequence], session=None,
                 alpha: float | None = None) -> float:
    """max over slices of max|onnx - torch| / max|torch| (images), onnxruntime CPU vs torch (TORCH_FFT).

    slices: (kspace complex (C,H,W), mask (W,), ...) items; extra fields are ignored.
    alpha: for the continuous model, the alpha fed to the graph (model is then theta(alpha)).
    """
    session = session or ort_session(onnx_path)
    worst = 0.0
    for item in slices:
        kspace, mask = item[0], item[1]
        ref, _ = run_torch(model, kspace, mask)
        out, _ = run_onnx(session, kspace, mask, alpha)
        worst = max(worst, relative_max_error(ref, out))  # never NaN: non-finite outputs give inf
    return worst
