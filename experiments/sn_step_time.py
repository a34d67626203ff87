"""Median time of one SN training step (forward, backward, RMSProp) on random 8-coil k-space.

    python experiments/sn_step_time.py --cascades 6 --width 16 --oversampling 2 --height 192 --width-k 110
"""

from __future__ import annotations

import argparse
import statistics
import time


def main() -> int:
    import torch

    from training import losses
    from training.models.sn import SensitivityNetwork
    from training.presets import SNConfig

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cascades", type=int, default=6)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--blocks", type=int, default=1)
    p.add_argument("--oversampling", type=int, default=2, help="SNConfig.readout_oversampling")
    p.add_argument("--coils", type=int, default=8)
    p.add_argument("--height", type=int, default=192)
    p.add_argument("--width-k", type=int, default=110)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    cfg = SNConfig(cascades=a.cascades, width=a.width, blocks=a.blocks, readout_oversampling=a.oversampling)
    model = SensitivityNetwork(cfg)
    k = torch.randn(1, a.coils, a.height, a.width_k, dtype=torch.complex64)
    mask = (torch.rand(1, a.width_k) > 0.7).float()
    mask[:, a.width_k // 2 - 5: a.width_k // 2 + 5] = 1
    h, w = a.height // 2, min(a.width_k, a.height // 2)
    target, fg = torch.rand(1, h, w), torch.ones(1, h, w)
    opt = torch.optim.RMSprop(model.parameters(), 1e-4)
    top, left = (a.height - h) // 2, (a.width_k - w) // 2

    def step():
        x = model(k * mask[:, None, None, :], mask).abs()[:, top:top + h, left:left + w]
        loss = losses.sn_loss(x, target, fg, losses.L1_WEIGHT)
        opt.zero_grad()
        loss.backward()
        opt.step()

    for _ in range(3):
        step()
    times = []
    for _ in range(a.steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    print(f"{cfg}: median {statistics.median(times):.3f} s/step over {a.steps} steps "
          f"({sum(p.numel() for p in model.parameters()):,} parameters)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
