"""Small random multi-coil problems shared by the physics and model tests."""

from __future__ import annotations

import torch


def random_kspace(b: int, c: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.complex(torch.randn(b, c, h, w, generator=g), torch.randn(b, c, h, w, generator=g))


def random_mask(b: int, w: int, acs: int = 3, seed: int = 0) -> torch.Tensor:
    """Random columns plus a central run of `acs` sampled columns, (B, W) float32."""
    g = torch.Generator().manual_seed(seed)
    mask = (torch.rand(b, w, generator=g) < 0.3).float()
    c = w // 2
    mask[:, c - acs // 2 : c - acs // 2 + acs] = 1.0
    return mask


def smooth_maps(b: int, c: int, h: int, w: int, seed: int = 0, width: float = 2.0) -> torch.Tensor:
    """Smooth complex coil maps normalised to sum |S|^2 = 1 (a stand-in for true sensitivities)."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    maps = []
    for i in range(c):
        angle = 2 * torch.pi * i / c
        cy, cx = 1.5 * torch.sin(torch.tensor(angle)), 1.5 * torch.cos(torch.tensor(angle))
        mag = torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / width)
        phase = torch.rand(1, generator=g) * 6.28 + 0.5 * xx
        maps.append(mag * torch.exp(1j * phase))
    s = torch.stack(maps).to(torch.complex64)
    s = s / torch.sqrt((s.abs() ** 2).sum(0, keepdim=True))
    return s.expand(b, c, h, w).clone()


def phantom(h: int, w: int) -> torch.Tensor:
    """An ellipse with an inner structure and smooth phase, complex (H, W)."""
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    body = ((yy / 0.85) ** 2 + (xx / 0.7) ** 2 < 1).float()
    inner = 0.5 * (((yy - 0.2) / 0.3) ** 2 + ((xx + 0.1) / 0.25) ** 2 < 1).float()
    stripes = 0.2 * body * (torch.sin(9 * xx) > 0).float()
    return ((body + inner + stripes) * torch.exp(0.8j * (xx + yy))).to(torch.complex64)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a - b).abs().max() / b.abs().max()).detach())


def export_onnx(module: torch.nn.Module, kspace_ri: torch.Tensor, mask: torch.Tensor, path) -> "object":
    """Dynamo-export a module taking (kspace (B, C, H, W, 2) float32, mask (B, W)) with dynamic B/C/H/W.

    Returns (onnxruntime session, set of op types in the graph).
    """
    import onnx
    import onnxruntime as ort

    from training.physics.fft import onnx_translation_table

    dyn = torch.export.Dim.DYNAMIC
    torch.onnx.export(module, (kspace_ri, mask), str(path), dynamo=True, external_data=False,
                      input_names=["kspace", "mask"], output_names=["image"], verbose=False,
                      dynamic_shapes={"kspace": {0: dyn, 1: dyn, 2: dyn, 3: dyn}, "mask": {0: dyn, 1: dyn}},
                      custom_translation_table=onnx_translation_table())
    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session, ops
