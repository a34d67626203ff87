"""The exported SN graph against torch eager at one thread each, and where their time goes.

Builds the model as `dnirecon bench` does (an untrained SN of the preset, the set of cascades a 4x
mask routes to, exported like registry/export.py), then times in-process onnxruntime and torch eager
(`registry.export.run_torch`, torch.fft) in the same run, one thread on both sides, and prints the
medians and their ratio. `--profile` adds onnxruntime's profile summed by op type and torch's
profile summed by operator.

    python experiments/graph_speed.py --size 15x640x368 --runs 5 --profile
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path


def build(preset: str, size: tuple[int, int, int], out: Path):
    """(one-set torch SN, onnx path, kspace, mask) as the bench builds them."""
    import torch

    from commands.bench import test_slice
    from dnirecon.routing import nearest_set, sampled_fraction
    from registry.bake import cascade_sets
    from registry.export import export_reconstruction
    from training.models.sn import SensitivityNetwork
    from training.presets import get_preset

    torch.manual_seed(0)
    model = SensitivityNetwork(get_preset(preset).sn).eval()
    kspace, mask = test_slice(*size)
    accels = [s["accel"] for s in cascade_sets(model.config)]
    index = int(nearest_set(sampled_fraction(mask), accels)) if model.cascade_sets > 1 else 0
    one = model.cascade_set(index) if model.cascade_sets > 1 else model
    path = export_reconstruction(one, out / "graph.onnx")
    return one, path, kspace, mask


LEVELS = {"all": "ORT_ENABLE_ALL", "extended": "ORT_ENABLE_EXTENDED", "basic": "ORT_ENABLE_BASIC"}


def session(path: Path, profile_prefix: str | None = None, level: str = "all", threads: int = 1):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, LEVELS[level])
    if profile_prefix:
        opts.enable_profiling = True
        opts.profile_file_prefix = profile_prefix
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def timed_ms(fn) -> tuple[float, float]:
    """(wall ms, this process's CPU ms) of one call: at one thread the CPU time leaves out the waits for
    a core that other jobs on a shared machine cause."""
    w0, c0 = time.perf_counter(), time.process_time()
    fn()
    return 1e3 * (time.perf_counter() - w0), 1e3 * (time.process_time() - c0)


def ort_profile(path: Path, feeds: dict, runs: int, work: Path, level: str, threads: int = 1) -> dict[str, float]:
    """ms per run summed by op type (node events of the last `runs` runs)."""
    sess = session(path, str(work / "ort"), level, threads)
    sess.run(None, feeds)
    for _ in range(runs):
        sess.run(None, feeds)
    events = json.loads(Path(sess.end_profiling()).read_text())
    runs_seen = [e for e in events if e.get("name") == "model_run"]
    by_op: dict[str, float] = defaultdict(float)
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            by_op[e["args"]["op_name"]] += e["dur"] / 1e3
    n = len(runs_seen)
    by_op["(run total, nodes and between them)"] = sum(e["dur"] for e in runs_seen) / 1e3
    return {k: v / n for k, v in sorted(by_op.items(), key=lambda kv: -kv[1])}


def torch_profile(model, kspace, mask, runs: int) -> dict[str, float]:
    """ms per run summed by aten operator (self CPU time)."""
    from torch.profiler import ProfilerActivity, profile

    from registry.export import run_torch

    run_torch(model, kspace, mask)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(runs):
            run_torch(model, kspace, mask)
    out = {e.key: e.self_cpu_time_total / 1e3 / runs for e in prof.key_averages()}
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="cpu")
    p.add_argument("--size", default="15x640x368", help="COILSxREADOUTxPHASE")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--profile", action="store_true")
    p.add_argument("--level", default="all", choices=sorted(LEVELS), help="onnxruntime graph optimisation level")
    p.add_argument("--threads", type=int, default=1, help="threads on each side (onnxruntime intra-op, torch)")
    p.add_argument("--top", type=int, default=14, help="rows of each profile printed")
    a = p.parse_args()

    import logging

    import numpy as np
    import torch

    from registry.export import relative_max_error, run_onnx, run_torch

    logging.getLogger("onnx_ir").setLevel(logging.WARNING)
    torch.set_num_threads(a.threads)
    size = tuple(int(s) for s in a.size.lower().split("x"))
    with tempfile.TemporaryDirectory(prefix="graph-speed-") as tmp:
        work = Path(tmp)
        model, path, kspace, mask = build(a.preset, size, work)
        sess = session(path, level=a.level, threads=a.threads)
        ref, _ = run_torch(model, kspace, mask)
        out, _ = run_onnx(sess, kspace, mask)
        parity = relative_max_error(ref, out)
        feeds = {"kspace": np.stack([kspace.real, kspace.imag], -1)[None].astype(np.float32), "mask": mask[None]}
        sess.run(None, feeds)
        run_torch(model, kspace, mask)
        # alternate the two so both see the same machine load
        t_ort, t_torch = [], []
        for _ in range(a.runs):
            t_ort.append(timed_ms(lambda: sess.run(None, feeds)))
            t_torch.append(timed_ms(lambda: run_torch(model, kspace, mask)))
        print(f"size {a.size} preset {a.preset}, level {a.level}, 1 thread, {a.runs} runs each; parity {parity:.2e}")
        for i, what in enumerate(("wall", "CPU")):
            o, t = [x[i] for x in t_ort], [x[i] for x in t_torch]
            mo, mt = statistics.median(o), statistics.median(t)
            print(f"  {what:4s} median: onnxruntime {mo:7.1f} ms, torch eager {mt:7.1f} ms, ratio {mo / mt:.2f}  "
                  f"(onnxruntime {' '.join(f'{x:.0f}' for x in o)}; torch {' '.join(f'{x:.0f}' for x in t)})")
        if a.profile:
            prof = ort_profile(path, feeds, 2, work, a.level, a.threads)
            total = sum(v for k, v in prof.items() if not k.startswith("("))
            print(f"onnxruntime by op type (ms per run, node total {total:.0f}):")
            for k, v in list(prof.items())[:a.top]:
                print(f"  {k:24s} {v:8.1f}  {100 * v / total:5.1f}%")
            tprof = torch_profile(model, kspace, mask, 2)
            total = sum(tprof.values())
            print(f"torch eager by operator (self ms per run, total {total:.0f}):")
            for k, v in list(tprof.items())[:a.top]:
                print(f"  {k:32s} {v:8.1f}  {100 * v / total:5.1f}%")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
