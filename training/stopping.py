"""Stop a training loop cleanly on SIGINT (Ctrl-C) or SIGTERM (a Kubernetes eviction, a preempted node).

The first signal only asks: the loop finishes the optimiser step it is in, saves a checkpoint at that
step and ends its MLflow run KILLED, so `--resume` loses nothing. A second signal interrupts at once
(KeyboardInterrupt), for a step that hangs. Under torchrun every rank must stop at the same step, or the
ranks still running would wait for ever in their next all-reduce: `requested()` agrees across ranks.
"""

from __future__ import annotations

import logging
import signal
import threading

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)
SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopOnSignal:
    """Context manager: while inside, SIGINT/SIGTERM set `signum` instead of killing the process.

    Handlers can only be installed from the main thread; elsewhere (a library caller's worker thread)
    the process keeps its own handlers and `signum` stays None.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "StopOnSignal":
        if threading.current_thread() is threading.main_thread():
            for s in SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)
        self._previous.clear()

    def _handle(self, signum: int, frame) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt(f"{signal.Signals(signum).name} again: stopping at once")
        self.signum = signum
        log.warning("%s: stopping after this step and saving a checkpoint (send it again to stop at once)",
                    signal.Signals(signum).name)

    def requested(self, world: int = 1, device: torch.device | None = None) -> int | None:
        """The signal that asked to stop, agreed across the `world` ranks (max of their signal numbers)."""
        if world <= 1:
            return self.signum
        flag = torch.tensor([self.signum or 0], dtype=torch.int64, device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return int(flag.item()) or None
