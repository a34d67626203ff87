"""Architecture signature: a short hash of a state_dict's parameter names, shapes and dtypes; and a
weights digest, which takes the values in too."""

from __future__ import annotations

import hashlib
from typing import Mapping

import torch
from torch import Tensor

from dnirecon.errors import ModelError


def arch_signature(state_dict: Mapping[str, Tensor]) -> str:
    """16 hex digits of sha256 over the sorted (name, shape, dtype) triples; values do not enter."""
    lines = sorted(f"{name}|{tuple(t.shape)}|{t.dtype}" for name, t in state_dict.items())
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]


def weights_digest(state_dict: Mapping[str, Tensor]) -> str:
    """16 hex digits of sha256 over the sorted names, shapes, dtypes and values: which weights these are,
    wherever they were loaded from (a registered version, a checkpoint, a model directory)."""
    h = hashlib.sha256(b"dnirecon.weights/1\n")
    for name in sorted(state_dict):
        t = state_dict[name].detach().cpu().contiguous()
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype}\n".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def check_signature(state_dict: Mapping[str, Tensor], expected: str, source: str) -> None:
    """Raise ModelError naming `source` when the state_dict's signature is not `expected`."""
    got = arch_signature(state_dict)
    if got != expected:
        raise ModelError(f"{source}: architecture signature {got} does not match the expected {expected} "
                         "(different preset, width, blocks or cascades?)")
