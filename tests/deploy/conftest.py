"""Deploy tests: make deploy_helpers importable (importlib import mode) and render once per session."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from deploy_helpers import is_component, kustomizations, render  # noqa: E402


@pytest.fixture(scope="session")
def rendered() -> dict[str, list[dict]]:
    """Rendered objects of every renderable kustomization (components render through overlays)."""
    return {name: render(d) for name, d in kustomizations().items() if not is_component(d)}
