"""The physics exports with the dynamo ONNX exporter: dynamic sizes, no DFT node, matches torch."""

import numpy as np
import pytest
import torch

from physics_helpers import export_onnx, random_kspace, random_mask
from training.physics.fft import MATMUL_FFT
from training.physics.sense import SenseOp
from training.physics.sensitivity import acs_maps


class PhysicsChain(torch.nn.Module):
    """Real-valued boundary around ifft -> ACS maps -> SENSE adjoint -> magnitude."""

    def forward(self, kspace: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        k = torch.complex(kspace[..., 0], kspace[..., 1])
        maps = acs_maps(k, mask, MATMUL_FFT)
        return SenseOp(maps, mask, MATMUL_FFT).adjoint(k).abs()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    k = torch.view_as_real(random_kspace(2, 3, 10, 8))
    return export_onnx(PhysicsChain(), k, random_mask(2, 8), tmp_path_factory.mktemp("onnx") / "physics.onnx")


def test_exported_physics_has_no_dft_node(exported):
    _, ops = exported
    assert "DFT" not in ops
    assert "MatMul" in ops


@pytest.mark.parametrize("b,c,h,w", [(2, 3, 10, 8), (1, 5, 13, 11), (3, 2, 16, 20)])
def test_exported_physics_matches_torch_for_any_size(exported, b, c, h, w):
    session, _ = exported
    k = torch.view_as_real(random_kspace(b, c, h, w, seed=h)).contiguous()
    mask = random_mask(b, w, seed=w)
    got = session.run(None, {"kspace": k.numpy(), "mask": mask.numpy()})[0]
    want = PhysicsChain()(k, mask).numpy()
    assert got.shape == (b, h, w)
    assert np.abs(got - want).max() / np.abs(want).max() < 1e-5
