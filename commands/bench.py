"""`dnirecon bench` (`make bench`): the service measured against in-process onnxruntime and torch eager.

Per-slice latency through gRPC vs in-process onnxruntime on the same model and input, throughput with
concurrent streams, server time from last chunk to image, bytes on the wire, server RSS growth,
torch eager and FLOPs per slice vs the machine's peak. Writes docs/benchmarks.md.
torch is imported only here (to build an untrained SN and time it), never by the server it starts.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shlex
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[1]


def register(subparsers) -> None:
    p = subparsers.add_parser("bench", help="service benchmarks (gRPC vs in-process onnxruntime), writes docs/benchmarks.md")
    p.add_argument("--model-dir", type=Path, default=None, help="baked-set directory; default: an untrained SN of --preset")
    p.add_argument("--preset", default="cpu", help="cpu or paper: the untrained SN built when no --model-dir is given")
    p.add_argument("--sizes", default="15x640x368,4x128x96", help="COILSxREADOUTxPHASE list; the last is 'small'")
    p.add_argument("--slices", type=int, default=10, help="slices timed per size and path")
    p.add_argument("--streams", default="1,4,16", help="concurrent streams for throughput")
    p.add_argument("--throughput-slices", type=int, default=32, help="slices per throughput run (small size)")
    p.add_argument("--rss-slices", default="50,1000", help="server RSS after this many slices (small size)")
    p.add_argument("--providers", default="cpu", help="onnxruntime providers, as DNIRECON_PROVIDERS")
    p.add_argument("--threads", type=int, default=0, help="intra-op threads for both server and in-process (0: default)")
    p.add_argument("--spinning", default="true", help="onnxruntime idle-thread spinning, server and in-process (true|false)")
    p.add_argument("--cpu-mem-arena", default="true", help="onnxruntime's CPU memory arena, server and in-process (true|false)")
    p.add_argument("--ready-timeout", type=float, default=1800.0,
                   help="seconds to wait for each server to warm up and report SERVING (the paper preset on a CPU "
                        "warms every size at batch 1 and at the max batch: several minutes)")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    p.add_argument("--append", action="store_true",
                   help="add this run as a section of --out instead of replacing the file")
    p.set_defaults(func=run_bench)


def parse_sizes(text: str) -> list[tuple[int, int, int]]:
    from service.config import parse_shapes

    return list(parse_shapes(text))


def cpu_description() -> tuple[str, int, float | None]:
    """(CPU model, logical cores usable, estimated fp32 peak GFLOP/s or None)."""
    model, flags, mhz = platform.processor() or "unknown CPU", "", None
    try:
        text = Path("/proc/cpuinfo").read_text()
        for line in text.splitlines():
            key, _, value = line.partition(":")
            key, value = key.strip(), value.strip()
            if key == "model name":
                model = value
            elif key == "flags" and not flags:
                flags = value
            elif key == "cpu MHz" and mhz is None:
                mhz = float(value)
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0))
    # fp32 FLOPs per cycle per core: 2 FMA units x vector width x 2 (multiply-add)
    per_cycle = 64 if "avx512f" in flags else 32 if "avx2" in flags and "fma" in flags else 8
    peak = cores * (mhz or 0) / 1e3 * per_cycle if mhz else None
    return model, cores, peak


# GFLOP per slice of the `cpu` graph when every transform was a dense DFT matrix (docs/benchmarks.md as this
# bench wrote it at d3a3079): the reference today's transforms are compared with.
DENSE_DFT_GFLOP = {"15x640x368": 100.968, "8x192x110": 4.492}


def _median_ms(times: list[float]) -> float:
    return 1e3 * statistics.median(times)


def test_slice(coils: int, h: int, w: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    from dnirecon.subsample import mask_for

    rng = np.random.default_rng(seed)
    k = (rng.standard_normal((coils, h, w)) + 1j * rng.standard_normal((coils, h, w))).astype(np.complex64)
    mask = np.asarray(mask_for(4, seed=seed, width=w), np.float32).reshape(-1)
    return (k * mask).astype(np.complex64), mask


test_slice.__test__ = False  # pytest: not a test


def build_untrained(preset: str, out_dir: Path):
    """An untrained SN of the preset, exported as a one-alpha baked set (a graph per set of cascades);
    returns (model, directory)."""
    import torch

    from registry.bake import cascade_sets, graph_file
    from dnirecon.files import sha256_file
    from registry.export import export_reconstruction
    from registry.store import MANIFEST_FORMAT
    from training.models.sn import SensitivityNetwork
    from training.presets import get_preset

    torch.manual_seed(0)
    model = SensitivityNetwork(get_preset(preset).sn).eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    sets = cascade_sets(model.config)
    graphs = []
    for i, cascade_set in enumerate(sets):
        path = export_reconstruction(model.cascade_set(i), out_dir / graph_file("alpha_0.00", cascade_set["accel"]))
        graphs.append({"file": path.name, "sha256": sha256_file(path)})
    manifest = {"format": MANIFEST_FORMAT, "preset": preset, "name": f"untrained-sn-{preset}", "version": "bench",
                "sources": {}, "cascade_sets": sets, "alphas": [{"alpha": 0.0, "graphs": graphs}]}
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return model, out_dir


def eager_vs_onnx_ms(model, onnx_run, kspace: np.ndarray, mask: np.ndarray, n: int,
                     threads: int) -> tuple[float, float, float]:
    """(median ms of the in-process onnxruntime run, median ms of the eager SN, GFLOP per slice from
    torch.utils.flop_counter), the two timed alternately, so that both see the same machine load."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from registry.export import run_torch

    if threads:
        torch.set_num_threads(threads)
    run_torch(model, kspace, mask)
    onnx_run()
    t_onnx, t_torch = [], []
    for _ in range(n):
        t0 = time.perf_counter()
        onnx_run()
        t1 = time.perf_counter()
        run_torch(model, kspace, mask)
        t_onnx.append(t1 - t0)
        t_torch.append(time.perf_counter() - t1)
    counter = FlopCounterMode(display=False)
    with counter:
        run_torch(model, kspace, mask)
    return _median_ms(t_onnx), _median_ms(t_torch), counter.get_total_flops() / 1e9


def onnx_gflop(path: Path, kspace: np.ndarray, mask: np.ndarray) -> float:
    """GFLOP of one slice counted from the graph's MatMul/Gemm/Conv/ConvTranspose nodes (2 per
    multiply-add), with the operand shapes taken from one onnxruntime run that exposes them as
    outputs (the shapes hang on the input sizes, which static inference cannot resolve here)."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    model = onnx.load(str(path))
    init = {i.name: list(i.dims) for i in model.graph.initializer}
    nodes = [n for n in model.graph.node if n.op_type in ("MatMul", "Gemm", "Conv", "ConvTranspose")]
    outputs = {o.name for o in model.graph.output}
    want = list(dict.fromkeys(x for n in nodes for x in (n.input[0], n.input[1], n.output[0]) if x not in init and x not in outputs))
    for name in want:
        model.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    feeds = {"kspace": np.stack([kspace.real, kspace.imag], -1)[None].astype(np.float32), "mask": mask[None]}
    if "alpha" in [i.name for i in session.get_inputs()]:
        feeds["alpha"] = np.array([0.5], np.float32)
    shape = {**init, **{n: list(v.shape) for n, v in zip(want, session.run(want, feeds))}}
    flops = 0.0
    for n in nodes:
        a, b, o = shape[n.input[0]], shape[n.input[1]], shape[n.output[0]]
        if n.op_type in ("MatMul", "Gemm"):
            flops += 2.0 * np.prod(o) * a[-1]
        elif n.op_type == "Conv":  # weight (Cout, Cin/group, kh, kw)
            flops += 2.0 * np.prod(o) * np.prod(b[1:])
        else:  # ConvTranspose weight (Cin, Cout/group, kh, kw), every input pixel scattered
            flops += 2.0 * np.prod(a) * np.prod(b[1:])
    return flops / 1e9


def graph_gflop(model, onnx_path: Path, kspace: np.ndarray, mask: np.ndarray) -> float:
    """GFLOP of the exported graph for one slice. With the torch SN (the one-set SN the graph was
    exported from) at hand: torch's flop_counter on its MATMUL_FFT twin, the same transform
    products and convolutions the ONNX graph holds, in eager
    no-grad memory. Without it: onnx_gflop, which materialises every MatMul/Conv operand at once (at
    the paper preset and 15x640x368 that is ~20 GB: the OOM kill of the first paper-preset bench)."""
    if model is None:
        return onnx_gflop(onnx_path, kspace, mask)
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from registry.export import ReconstructionBoundary, to_real_view, with_fourier
    from training.physics.fft import MATMUL_FFT

    # the exported module itself: reconstruction plus the dc_residual output
    twin = ReconstructionBoundary(with_fourier(model, MATMUL_FFT), MATMUL_FFT).eval()
    k = torch.from_numpy(to_real_view(kspace))[None]
    m = torch.from_numpy(np.asarray(mask, np.float32))[None]
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        twin(k, m)
    del twin
    return counter.get_total_flops() / 1e9


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _grpc_sequential(client, kspace, mask, n: int, inproc) -> dict:
    """One stream, one slice at a time: round trip, server time, bytes both ways per slice. The
    in-process run (inproc()) is timed between the gRPC slices, so both see the same machine load."""
    from dnirecon import wire

    rtt, server_ms, compute_ms, local = [], [], [], []
    sent = sum(m.ByteSize() for m in wire.slice_messages(0, kspace, mask, kspace.shape[-2:]))
    received = 0
    gate = threading.Semaphore(0)
    done = []

    def requests():
        for i in range(n + 1):
            t0 = time.perf_counter()
            inproc()
            local.append(time.perf_counter() - t0)
            done.append(time.perf_counter())
            yield i, kspace, mask
            gate.acquire()  # wait for this slice's answer before sending the next

    for r in client.stream(requests(), kspace.shape[-2:], timeout=3600):
        t = time.perf_counter() - done[r.slice_index]
        if r.HasField("error"):
            raise RuntimeError(f"slice {r.slice_index}: {r.error.reason}")
        if r.slice_index > 0:  # slice 0 warms the path
            rtt.append(t)
            server_ms.append(r.server_ms)
            compute_ms.append(r.compute_ms)
            received = r.ByteSize()
        gate.release()
    return {"inproc_ms": _median_ms(local[1:]), "rtt_ms": _median_ms(rtt), "server_ms": statistics.median(server_ms), "compute_ms": statistics.median(compute_ms),
            "sent_bytes": sent, "received_bytes": received}


def _mrd_sequential(target: str, kspace, mask, n: int) -> dict:
    """One MRD session, one slice at a time, as a scanner sends it: the slice's acquired lines as readouts,
    then its image back. Server time (last readout -> image built and sent) comes from the image's meta."""
    from dnirecon.ismrmrd_io import header_xml, slice_geometry, slice_records
    from service.mrd_client import Connection, acquisition_bytes

    _c, h, w = kspace.shape
    cols = np.flatnonzero(mask)
    conn = Connection(target, header_xml(h, w, (h, w), center=w // 2, maximum=w - 1).encode())
    rtt, server_ms, sent, received = [], [], 0, 0
    try:
        for i in range(n + 1):
            records = slice_records(kspace, cols, 0, i, slice_geometry(i, n + 1, 1.0), counter=i * cols.size)
            data = b"".join(acquisition_bytes(r) for r in records)
            t0 = time.perf_counter()
            conn.send(data)
            image, nbytes = conn.next_image()
            if i > 0:  # slice 0 warms the path
                rtt.append(time.perf_counter() - t0)
                server_ms.append(float(image.meta["DnireconServerMs"]))
                sent, received = len(data), nbytes
    finally:
        conn.close()
    return {"mrd_rtt_ms": _median_ms(rtt), "mrd_server_ms": statistics.median(server_ms), "mrd_sent_bytes": sent,
            "mrd_received_bytes": received}


def _throughput(target: str, kspace, mask, streams: int, total: int) -> float:
    from service.client import ReconClient

    per = max(1, total // streams)
    errors = []

    def one(s):
        with ReconClient(target) as client:
            res = list(client.stream(((i, kspace, mask) for i in range(per)), kspace.shape[-2:], timeout=3600))
            if len(res) != per or any(r.HasField("error") for r in res):
                errors.append(s)

    threads = [threading.Thread(target=one, args=(s,)) for s in range(streams)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if errors:
        raise RuntimeError(f"throughput run with {streams} streams lost slices on streams {errors}")
    return per * streams / wall


def run_bench(args) -> int:
    from commands.procs import ServerProcess, free_port
    from service.client import ReconClient
    from service.config import PROVIDER_NAMES, parse_providers
    from service.engine import OnnxModel
    from service.model_store import read_baked_set

    logging.getLogger("onnx_ir").setLevel(logging.WARNING)  # the exporter's per-initializer chatter
    sizes = parse_sizes(args.sizes)
    streams = [int(s) for s in args.streams.split(",") if s.strip()]
    rss_points = [int(s) for s in args.rss_slices.split(",") if s.strip()]
    providers = [PROVIDER_NAMES[p] for p in parse_providers(args.providers)]
    work = Path(tempfile.mkdtemp(prefix="dnirecon-bench-"))
    model = None
    if args.model_dir is None:
        log.info("building an untrained SN (preset %s) and exporting it", args.preset)
        model, model_dir = build_untrained(args.preset, work / "baked")
    else:
        model_dir = args.model_dir
    baked = read_baked_set(model_dir)
    graphs = baked.baked[0][1] if baked.baked else baked.continuous
    accels = [a for a, _p in graphs if a is not None]
    cpu, cores, peak = cpu_description()

    from dnirecon.routing import nearest_set, sampled_fraction
    from service.config import parse_bool

    spinning, arena = parse_bool(args.spinning), parse_bool(args.cpu_mem_arena)

    def graph_for(mask) -> int:  # the set of cascades the server runs for this mask
        return int(nearest_set(sampled_fraction(mask), accels))
    rows = []
    port = free_port()

    def server_args(warmup_sizes) -> list[str]:
        shapes = ",".join(f"{c}x{h}x{w}" for c, h, w in warmup_sizes)
        out = ["--model-dir", str(model_dir), "--host", "127.0.0.1", "--providers", args.providers,
               "--warmup-shapes", shapes, "--drain-seconds", "5", "--intra-op-spinning", str(spinning).lower(),
               "--cpu-mem-arena", str(arena).lower()]
        return out + (["--intra-op-threads", str(args.threads)] if args.threads else [])

    with ServerProcess(server_args(sizes), log_path=work / "server.log", port=port, ready_timeout=args.ready_timeout) as server:
        target = f"127.0.0.1:{port}"
        with ReconClient(target) as client:
            info = client.server_info()
            for c, h, w in sizes:
                kspace, mask = test_slice(c, h, w)
                ri = np.stack([kspace.real, kspace.imag], -1)[None].astype(np.float32)
                index = graph_for(mask)
                onnx_path = graphs[index][1]
                inproc = OnnxModel(onnx_path, providers, intra_op_threads=args.threads, spinning=spinning,
                                   cpu_mem_arena=arena)
                row = {"size": f"{c}x{h}x{w}", "graph": onnx_path.name, "graph_path": onnx_path}
                row.update(_grpc_sequential(client, kspace, mask, args.slices, lambda: inproc.run(ri, mask[None])))
                row.update(_mrd_sequential(f"127.0.0.1:{server.mrd_port}", kspace, mask, args.slices))
                del inproc
                row["zero_filled_bytes"] = kspace.nbytes
                row["onnx_gflop"] = graph_gflop(None if model is None else model.cascade_set(index), onnx_path,
                                                kspace, mask)
                rows.append(row)
                log.info("%s", row)
        small = sizes[-1]
        kspace, mask = test_slice(*small)
        throughput = {s: _throughput(target, kspace, mask, s, args.throughput_slices) for s in streams}
    rss = {}
    if rss_points:
        # a fresh server that serves only this stream: the first one's RSS still holds the arena of the
        # large slices, which glibc hands back over the next slices and which would read as a fall
        port = free_port()
        with ServerProcess(server_args([small]), log_path=work / "server-rss.log", port=port,
                           ready_timeout=args.ready_timeout) as server, \
                ReconClient(f"127.0.0.1:{port}") as client:
            done = 0
            for point in sorted(rss_points):
                for r in client.stream(((i, kspace, mask) for i in range(done, point)), kspace.shape[-2:], timeout=3600):
                    if r.HasField("error"):
                        raise RuntimeError(r.error.reason)
                done = point
                rss[point] = _rss_mb(server.proc.pid)
    if model is not None:
        # torch eager after the server has exited and the in-process session is freed: at the paper
        # size the three together do not fit in 24 GB
        import gc

        gc.collect()
        for row, (c, h, w) in zip(rows, sizes):
            kspace, mask = test_slice(c, h, w)
            ri = np.stack([kspace.real, kspace.imag], -1)[None].astype(np.float32)
            # no spinning here: idle onnxruntime threads that spin would take the cores from the torch run
            # that follows each onnxruntime run (which then looks slower than it is)
            inproc = OnnxModel(row["graph_path"], providers, intra_op_threads=args.threads, spinning=False,
                               cpu_mem_arena=arena)
            row["alt_onnx_ms"], row["torch_ms"], row["gflop"] = eager_vs_onnx_ms(
                model, lambda: inproc.run(ri, mask[None]), kspace, mask, max(3, min(args.slices, 7)), args.threads)
            del inproc
            gc.collect()
            log.info("%s alternating: onnxruntime %.1f ms, torch eager %.1f ms", row["size"], row["alt_onnx_ms"],
                     row["torch_ms"])
    report = render(rows, throughput, rss, info, cpu, cores, peak, args, small, model is not None, baked)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if getattr(args, "append", False) and args.out.exists():
        body = report.split("\n", 2)[2]  # drop the file title: this run is a section of the same file
        report = args.out.read_text().rstrip("\n") + "\n\n" + body
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(report)
    os.replace(tmp, args.out)
    print(report)
    import shutil

    shutil.rmtree(work, ignore_errors=True)  # kept only when the bench fails, for its server.log
    return 0


def render(rows, throughput, rss, info, cpu, cores, peak, args, small, have_torch, baked) -> str:
    gpu = "CUDAExecutionProvider" in info.providers
    lines = [
        "# Service benchmarks",
        "",
        f"## Preset {baked.preset or args.preset}: {', '.join(r['size'] for r in rows)}",
        "",
        f"Written by `dnirecon bench` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; reproduce with "
        f"`dnirecon {' '.join(shlex.quote(a) for a in sys.argv[1:])}`" if sys.argv[1:2] == ["bench"] else
        f"Written by `dnirecon bench` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
        f"Machine: {cpu}, {cores} logical cores usable; onnxruntime {info.onnxruntime_version}; "
        f"providers requested {list(info.requested_providers)}, in use {list(info.providers)}"
        + (" (FALLBACK: a requested provider is not in use)" if info.provider_fallback else "") + ".",
        f"Model: {baked.name} version {baked.version} (preset {baked.preset or '?'}), "
        f"{'an untrained SN built by the bench' if have_torch else 'from ' + str(args.model_dir)}. "
        f"Threads: {args.threads or 'onnxruntime default'}, spinning {args.spinning}, CPU memory arena {args.cpu_mem_arena}. Medians over {args.slices} slices.",
        "",
    ]
    if not gpu:
        lines += ["No GPU machine was at hand: every figure is on the CPU provider; the CUDA-provider run "
                  "(every node on CUDA, IOBinding, parity with TF32 on and off) is still to be measured. The CUDA "
                  "sessions' settings (TF32 off unless `--use-tf32`, HEURISTIC conv-algorithm search) are covered by "
                  "unit tests of the provider options the sessions are built with (docs/service.md).", ""]
    if not gpu and (baked.preset or args.preset) == "paper":
        lines += ["Training step: one `paper`-preset SN training step (GPU memory and step time) was not "
                  "measured: no GPU machine was at hand. `dnirecon train sn --preset paper` runs it on a GPU "
                  "(bfloat16 autocast); on this CPU box it is not attempted.", ""]
    lines += [
        "### Per-slice latency: gRPC round trip vs in-process onnxruntime (same model, same input, 4x mask)",
        "",
        "| slice (CxHxW) | in-process ms | gRPC round trip ms | round trip / in-process | server: last chunk -> image sent ms | "
        "compute ms | added by gRPC (round trip - compute) | bytes sent / slice | bytes back / slice | zero-filled bytes | "
        "in-process ms, alternating with torch | torch eager ms | in-process / torch eager | GFLOP / slice, ONNX graph | "
        "GFLOP / slice, torch flop_counter | graph |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in rows:
        over = 100 * (r["rtt_ms"] / r["inproc_ms"] - 1)
        added = r["rtt_ms"] - r["compute_ms"]
        lines.append(
            f"| {r['size']} | {r['inproc_ms']:.2f} | {r['rtt_ms']:.2f} | {over:+.1f}% | {r['server_ms']:.2f} | {r['compute_ms']:.2f} | "
            f"{added:.2f} ms ({100 * added / r['compute_ms']:.1f}%) | "
            f"{r['sent_bytes']:,} | {r['received_bytes']:,} | {r['zero_filled_bytes']:,} | "
            f"{r.get('alt_onnx_ms', float('nan')):.2f} | {r.get('torch_ms', float('nan')):.2f} | "
            f"{r.get('alt_onnx_ms', float('nan')) / r.get('torch_ms', float('nan')):.2f} | "
            f"{r['onnx_gflop']:.4g} | {r.get('gflop', float('nan')):.4g} | {r['graph']} |"
        )
    lines += ["", "The first in-process column is timed between the gRPC slices (same load as the round trips); the "
              "in-process / torch eager ratio comes from a second in-process session timed alternately with torch "
              "eager after the server has exited (same process, same load, threads as above, onnxruntime's idle "
              "threads not spinning: they would take the cores from each torch run that follows). On a shared machine "
              "the timings are noisy, the 'added by gRPC' column (same slice, same server) less so. "
              "Bytes are protobuf message sizes (HTTP/2 and TLS framing not counted). "
              "Each slice runs the graph of the set of cascades its mask routes it to (the graph column); "
              "torch eager runs the whole SN, which routes the same way.", ""]
    lines += [
        "### MRD (ISMRMRD streaming) next to gRPC, same server, same slices",
        "",
        "| slice (CxHxW) | MRD: last readout -> image sent ms | gRPC: last chunk -> image sent ms | MRD round trip ms | "
        "gRPC round trip ms | MRD bytes sent / slice | gRPC bytes sent / slice | MRD bytes back / slice | gRPC bytes back / slice |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(f"| {r['size']} | {r['mrd_server_ms']:.2f} | {r['server_ms']:.2f} | {r['mrd_rtt_ms']:.2f} | {r['rtt_ms']:.2f} | "
                     f"{r['mrd_sent_bytes']:,} | {r['sent_bytes']:,} | {r['mrd_received_bytes']:,} | {r['received_bytes']:,} |")
    lines += ["", "MRD: one session, one readout message per acquired line (340-byte header each), the image back as "
              "float32 magnitude at the recon size with its meta XML; round trip from the slice's first readout "
              "sent to its image received. Medians over the same slices as above.", ""]
    if peak:
        lines += ["### FLOPs vs the machine's peak", ""]
        for r in rows:
            achieved = r["onnx_gflop"] / (r["inproc_ms"] / 1e3)
            lines.append(f"- {r['size']}: {r['onnx_gflop']:.3f} GFLOP per slice (ONNX MatMul/Conv nodes, the "
                         f"transforms' products included; counted on the torch MATMUL_FFT twin when the bench built the model), {achieved:.1f} GFLOP/s in onnxruntime = {100 * achieved / peak:.1f}% of an "
                         f"estimated fp32 peak of {peak:.0f} GFLOP/s (cores x clock x FMA width)")
        before = [f"{DENSE_DFT_GFLOP[r['size']]:.3f} at {r['size']}" for r in rows if r["size"] in DENSE_DFT_GFLOP]
        if (baked.preset or args.preset) == "cpu" and before:
            lines.append(f"- the `cpu` graph with dense DFT matrices (before the thin transforms through the sampled "
                         f"columns; this bench at d3a3079): {', '.join(before)} GFLOP per slice")
        lines += ["", "torch's flop_counter does not count torch.fft, so its figure omits the Fourier transforms "
                  "that the ONNX graph does as matrix products.", ""]
    c, h, w = small
    if throughput:
        lines += [f"### Throughput, {c}x{h}x{w} slices, concurrent streams", "", "| streams | slices/s |", "| ---: | ---: |"]
        lines += [f"| {s} | {v:.1f} |" for s, v in throughput.items()]
    if rss:
        lines += ["", f"### Server resident memory, {c}x{h}x{w} slices", "",
                  "A fresh server, warmed on this size only, serving one stream of these slices.", "",
                  "| slices served | RSS MiB |", "| ---: | ---: |"]
        lines += [f"| {n} | {v:.0f} |" for n, v in rss.items()]
    if len(rss) >= 2:
        (n0, r0), (n1, r1) = sorted(rss.items())[0], sorted(rss.items())[-1]
        lines += ["", f"RSS ratio after {n1} vs {n0} slices: {r1 / r0:.3f}."]
    return "\n".join(lines) + "\n"
