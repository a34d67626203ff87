"""What gRPC adds to one slice for each client chunk size: an alternating A/B on one server.

    python experiments/chunk_ab.py --chunks 4000000,1000000,262144,131072 --rounds 8 --size 15x640x368

Builds the untrained cpu-preset SN (as `dnirecon bench` does), starts one server on loopback, and
streams one slice at a time, cycling through the chunk sizes, so every size sees the same load.
Prints, per size, the median of (round trip - the server's compute time) over the rounds.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from pathlib import Path


def main() -> int:
    from commands.bench import build_untrained, parse_sizes, test_slice
    from commands.procs import ServerProcess, free_port
    from dnirecon import wire
    from service.client import ReconClient

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--chunks", default="4000000,1000000,262144,131072", help="comma list of chunk sizes in bytes")
    p.add_argument("--rounds", type=int, default=8, help="slices per chunk size")
    p.add_argument("--size", default="15x640x368", help="COILSxREADOUTxPHASE")
    p.add_argument("--spinning", default="true", help="the server's onnxruntime idle-thread spinning (true|false)")
    args = p.parse_args()
    sizes = [int(c) for c in args.chunks.split(",")]
    (shape,) = parse_sizes(args.size)

    work = Path(tempfile.mkdtemp(prefix="chunk_ab-"))
    _model, model_dir = build_untrained("cpu", work / "model")
    port = free_port()
    server_args = ["--model-dir", str(model_dir), "--host", "127.0.0.1", "--providers", "cpu", "--warmup-shapes",
                   args.size, "--drain-seconds", "5", "--intra-op-spinning", args.spinning]
    kspace, mask = test_slice(*shape)
    plan = [sizes[0]] + [c for _ in range(args.rounds) for c in sizes]  # the first slice warms the path
    added: dict[int, list[float]] = {c: [] for c in sizes}
    with ServerProcess(server_args, log_path=work / "server.log", port=port, ready_timeout=1800):
        with ReconClient(f"127.0.0.1:{port}") as client:
            gate, start = threading.Semaphore(0), {}

            def requests():
                for i, chunk in enumerate(plan):
                    start[i] = time.perf_counter()
                    yield from wire.slice_messages(i, kspace, mask, shape[1:], chunk_bytes=chunk)
                    gate.acquire()  # one slice at a time

            for r in client.stub.ReconstructStream(requests(), timeout=3600):
                if r.HasField("error"):
                    raise RuntimeError(f"slice {r.slice_index}: {r.error.reason}")
                if r.slice_index > 0:
                    added[plan[r.slice_index]].append(1e3 * (time.perf_counter() - start[r.slice_index]) - r.compute_ms)
                gate.release()
    for chunk in sizes:
        v = added[chunk]
        print(f"chunk {chunk:>9,} bytes: gRPC adds {statistics.median(v):6.1f} ms (min {min(v):.1f}, max {max(v):.1f}, n={len(v)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
