"""Architecture signature: a short hash of a state_dict's parameter names, shapes and dtypes."""

from __future__ import annotations

import hashlib
from typing import Mapping

from torch import Tensor

from dnirecon.errors import ModelError


def arch_signature(state_dict: Mapping[str, Tensor]) -> str:
    """16 hex digits of sha256 over the sorted (name, shape, dtype) triples; values do not enter."""
    lines = sorted(f"{name}|{tuple(t.shape)}|{t.dtype}" for name, t in state_dict.items())
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]


def check_signature(state_dict: Mapping[str, Tensor], expected: str, source: str) -> None:
    """Raise ModelError naming `source` when the state_dict's signature is not `expected`."""
    got = arch_signature(state_dict)
    if got != expected:
        raise ModelError(f"{source}: architecture signature {got} does not match the expected {expected} "
                         "(different preset, width, blocks or cascades?)")
