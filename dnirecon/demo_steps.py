"""The steps of `dnirecon demo` after the data: each records what it made in `state` and is skipped
when that is still valid. Torch-side imports stay inside the functions."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

from dnirecon.fastmri_io import list_volumes


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine() -> str:
    return f"{_cpu_name()}, {os.cpu_count()} cores, {platform.system()} {platform.machine()}"


def _versions_key(state: dict, *names: str) -> str:
    return "|".join(f"{n}={state.get('versions', {}).get(n)}" for n in names)


def serve_step(steps, state: dict, work: Path, val_dir: Path, alphas) -> None:
    """Start `dnirecon serve` on models:/interpsn@production, stream one held-out volume at 4x and 8x
    at every alpha through the client library, then stop the server with SIGTERM (its drain path)."""
    from dnirecon.procs import ServerProcess
    from service.client import ReconClient, reconstruct_file, write_outputs

    t = steps.start("serve the promoted alias over gRPC and stream a held-out volume at each alpha")
    key = _versions_key(state, "interpsn-production")
    if state.get("serve", {}).get("key") == key:
        steps.done(t, "reused the streamed images of the same interpsn version")
        return
    volume = list_volumes(val_dir)[0]
    env = {"DNIRECON_MODEL_URI": "models:/interpsn@production", "DNIRECON_PROVIDERS": "cuda,cpu",
           "DNIRECON_CACHE_DIR": str((work / "model-cache").resolve()), "DNIRECON_DRAIN_SECONDS": "10"}
    server = ServerProcess([], env=env, log_path=work / "server.log")
    runs = []
    server.start(ready_timeout=600)
    try:
        with ReconClient(server.address) as client:
            info = client.server_info()
            for accel in (4, 8):
                for alpha in alphas:
                    t0 = time.perf_counter()
                    result = reconstruct_file(client, volume, accel=accel, alpha=alpha, timeout=600)
                    seconds = time.perf_counter() - t0
                    out_dir = work / "client" / f"x{accel}_alpha{alpha:.2f}"
                    h5_path, _ = write_outputs(result, volume, out_dir)
                    runs.append({"accel": accel, "alpha_requested": alpha, "alpha_used": result.alpha,
                                 "model": result.model, "slices": int(result.images.shape[0]),
                                 "failed": len(result.errors), "seconds": round(seconds, 3),
                                 "bytes_sent": result.bytes_sent, "h5": str(h5_path),
                                 "dc_residual_mean": float(result.dc_residual.mean())})
                    print(f"      x{accel} alpha {alpha:.2f}: {result.images.shape[0]} slices in {seconds:.1f} s "
                          f"from {result.model} (alpha used {result.alpha:.2f}), {len(result.errors)} failed",
                          flush=True)
    finally:
        code = server.stop()
    if code != 0:
        raise RuntimeError(f"the server exited with code {code} after SIGTERM (see {work / 'server.log'})")
    state["serve"] = {"key": key, "volume": volume.name, "runs": runs,
                      "providers": list(info.providers) if hasattr(info, "providers") else [],
                      "exit_code": code}
    steps.done(t, f"streamed {len(runs)} volume passes, server stopped cleanly (exit {code})")
