"""Model tests: reuse the physics test helpers (importlib import mode), one torch thread."""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent.parent / "physics"))
torch.set_num_threads(1)
