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


def session(path: Path, profile_prefix: str | None = None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if profile_prefix:
        opts.enable_profiling = True
        opts.profile_file_prefix = profile_prefix
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def median_ms(fn, runs: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def ort_profile(path: Path, feeds: dict, runs: int, work: Path) -> dict[str, float]:
    """ms per run summed by op type (node events of the last `runs` runs)."""
    sess = session(path, str(work / "ort"))
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
    p.add_argument("--top", type=int, default=14, help="rows of each profile printed")
    a = p.parse_args()

    import logging

    import numpy as np
    import torch

    from registry.export import relative_max_error, run_onnx, run_torch

    logging.getLogger("onnx_ir").setLevel(logging.WARNING)
    torch.set_num_threads(1)
    size = tuple(int(s) for s in a.size.lower().split("x"))
    with tempfile.TemporaryDirectory(prefix="graph-speed-") as tmp:
        work = Path(tmp)
        model, path, kspace, mask = build(a.preset, size, work)
        sess = session(path)
        ref, _ = run_torch(model, kspace, mask)
        out, _ = run_onnx(sess, kspace, mask)
        parity = relative_max_error(ref, out)
        feeds = {"kspace": np.stack([kspace.real, kspace.imag], -1)[None].astype(np.float32), "mask": mask[None]}
        # alternate the two so both see the same machine load
        t_ort, t_torch = [], []
        for _ in range(a.runs):
            t_ort.append(median_ms(lambda: sess.run(None, feeds), 1))
            t_torch.append(median_ms(lambda: run_torch(model, kspace, mask), 1))
        ms_ort, ms_torch = statistics.median(t_ort), statistics.median(t_torch)
        print(f"size {a.size} preset {a.preset}, 1 thread, median of {a.runs}: onnxruntime {ms_ort:.1f} ms "
              f"(runs {', '.join(f'{t:.0f}' for t in t_ort)}), torch eager {ms_torch:.1f} ms "
              f"(runs {', '.join(f'{t:.0f}' for t in t_torch)}), ratio {ms_ort / ms_torch:.2f}; "
              f"parity {parity:.2e}")
        if a.profile:
            prof = ort_profile(path, feeds, 2, work)
            total = sum(prof.values())
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
