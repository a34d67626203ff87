"""Physics tests: make physics_helpers importable (importlib import mode), one torch thread."""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
torch.set_num_threads(1)
